"""What the fault suite checks after every run: good episodes finished and verified, every damaged
one failed alone at its step with its cause, nothing unfinished or duplicated published, no
leftovers, one timing row per attempt, memory within bounds. Also the drivers and the processes
the suite kills."""

from __future__ import annotations

import collections
import csv
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from corpus import DISCOVERY, KINDS, Corpus

from droid_pipeline.publish.staging import LEFTOVER_PATTERN, finished_state, read_manifest

REPO = Path(__file__).resolve().parents[2]
DRIVERS = {"metadata": REPO / "run_pipeline_metadata_only.sh", "full": REPO / "run_pipeline_compressed_depth.sh"}
# An episode process's peak RSS may exceed the smallest of its run (the warm worker it was forked
# from, plus what every attempt allocates) by this much plus MEMORY_FACTOR x the bytes of the
# arrays it wrote (docs/reliability.md).
MEMORY_SLACK_MIB = 160.0
MEMORY_FACTOR = 4.0


def driver_command(pipeline: str, corpus: Corpus, *args: str) -> list[str]:
    extra = ["--depth-backend", "stereo", "--gpus", "none"] if pipeline == "full" else []
    return [str(DRIVERS[pipeline]), "--config", str(corpus.config_path), *extra, *args]


def run_driver(pipeline: str, corpus: Corpus, *args: str, env: dict[str, str] | None = None,
               timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(driver_command(pipeline, corpus, *args), cwd=corpus.root, capture_output=True, text=True,
                          timeout=timeout, env=env)


def run_dirs(run_root: Path, pipeline: str) -> list[Path]:
    return sorted(run_root.glob(f"{pipeline}-*"), key=lambda p: p.stat().st_mtime_ns)


def csv_rows(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with open(path, newline="") as fh:
        return [r for r in csv.DictReader(fh) if r.get("status")]


def published(output_root: Path) -> dict[str, Path]:
    """episode id -> its published folder, every manifest under output_root (none may repeat)."""
    found: dict[str, list[Path]] = collections.defaultdict(list)
    for manifest in output_root.glob("*/*/*/*/manifest.json"):
        found[read_manifest(manifest.parent).episode_id].append(manifest.parent)
    repeated = {k: v for k, v in found.items() if len(v) > 1}
    assert not repeated, f"published twice: {repeated}"
    return {k: v[0] for k, v in found.items()}


def leftovers(output_root: Path) -> list[Path]:
    """What no finished run may leave in output_root: incoming or replaced copies, work folders,
    temporary files, episode folders without a valid manifest."""
    left = [p for p in output_root.glob("*/*/*/*") if LEFTOVER_PATTERN.match(p.name)]
    left += [p for p in output_root.rglob("*.tmp*") if p.is_file()]
    left += [p for p in output_root.glob("*/*/*/*") if p.is_dir() and not p.name.startswith(".")
             and finished_state(p)[0] != "finished"]
    work = output_root / ".work"
    if work.exists():
        left.append(work)
    return left


def verify(output_root: Path) -> None:
    """Every published episode through ``python -m droid_pipeline.verify`` (exit 0 or no episode at all)."""
    if not published(output_root):
        return
    result = subprocess.run([sys.executable, "-m", "droid_pipeline.verify", str(output_root), "--no-progress"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def array_bytes(folder: Path) -> int:
    """Bytes of the arrays an episode wrote (tracks.npz and extrinsics.npz, uncompressed)."""
    total = 0
    for name in ("tracks.npz", "extrinsics.npz"):
        with np.load(folder / name, allow_pickle=False) as data:
            total += sum(data[key].nbytes for key in data.files)
    return total


@dataclass
class MemoryFigures:
    baseline_mib: float
    worst_ratio: float          # (peak - baseline) / array MiB over finished attempts
    worst_failed_mib: float     # largest peak above the baseline of a failed attempt
    attempts: int


def within_memory_bound(peak_mib: float, baseline_mib: float, written_mib: float) -> bool:
    return peak_mib - baseline_mib <= MEMORY_SLACK_MIB + MEMORY_FACTOR * written_mib


def check_memory(run_dir: Path, output_root: Path) -> MemoryFigures:
    """Every attempt's peak RSS within MEMORY_SLACK_MIB + MEMORY_FACTOR x the arrays it wrote of the
    run's smallest peak (an episode process forked from the warm worker that did almost nothing)."""
    peaks = csv_rows(run_dir / "peak_rss.csv")
    assert peaks, f"no peak_rss.csv rows in {run_dir}"
    baseline = min(float(r["peak_rss_mib"]) for r in peaks)
    folders = published(output_root)
    worst_ratio, worst_failed = 0.0, 0.0
    for row in peaks:
        above = float(row["peak_rss_mib"]) - baseline
        written = array_bytes(folders[row["episode_id"]]) / 2 ** 20 if row["status"] == "done" else 0.0
        assert within_memory_bound(float(row["peak_rss_mib"]), baseline, written), (
            f"{row['episode_id']} ({row['status']}): peak RSS {row['peak_rss_mib']} MiB is {above:.0f} MiB above "
            f"the run's smallest ({baseline:.0f} MiB) for {written:.1f} MiB of arrays written")
        if written:
            worst_ratio = max(worst_ratio, above / written)
        else:
            worst_failed = max(worst_failed, above)
    return MemoryFigures(baseline, worst_ratio, worst_failed, len(peaks))


def one_row_per_attempt(run_dir: Path) -> list[dict[str, str]]:
    rows = csv_rows(run_dir / "timing.csv")
    attempts = collections.Counter((r["episode_id"], r["start_time"]) for r in rows)
    assert max(attempts.values(), default=1) == 1, f"two rows for one attempt: {attempts.most_common(3)}"
    peaks = collections.Counter((r["episode_id"], r["start_time"]) for r in csv_rows(run_dir / "peak_rss.csv"))
    assert peaks == attempts, "peak_rss.csv and timing.csv disagree"
    return rows


def check_corpus_run(corpus: Corpus, pipeline: str, run_dir: Path, output_root: Path) -> None:
    """The corpus's run: goods done and verified, each damaged one failed alone where its kind says."""
    rows = {r["episode_id"]: r for r in one_row_per_attempt(run_dir)}
    summary = json.loads((run_dir / "summary.json").read_text())
    plan = json.loads((run_dir / "plan.json").read_text())
    discovery = {f["path"]: f for f in plan.get("discovery_failures", [])}
    failed_text = (run_dir / "failed.txt").read_text() if (run_dir / "failed.txt").exists() else ""
    failed_lines = [line.split("\t") for line in failed_text.splitlines()]
    folders = published(output_root)
    expected_done = set(corpus.good)
    problems = []
    for name, victim in corpus.victims.items():
        kind = KINDS[name]
        step = kind.step(pipeline)
        if step == DISCOVERY:
            for path in victim.discovery_paths:
                failure = discovery.get(path)
                if failure is None or kind.phrase not in failure["cause"]:
                    problems.append(f"{name}: no discovery failure at {path} with {kind.phrase!r}: {failure}")
                elif [path, "discovery"] != [line[:2] for line in failed_lines if line[0] == path][0]:
                    problems.append(f"{name}: {path} not in failed.txt as a discovery failure")
            if victim.episode_id in rows or victim.episode_id in folders:
                problems.append(f"{name}: a discovery failure was run or published")
        elif step is None:
            expected_done.add(victim.episode_id)
            warning = kind.warning(pipeline)
            if warning is not None and victim.episode_id in folders:
                quality = json.loads((folders[victim.episode_id] / "quality.json").read_text())
                if not any(warning in w for w in quality["warnings"]):
                    problems.append(f"{name}: no warning {warning!r} in quality.json: {quality['warnings']}")
        else:
            row = rows.get(victim.episode_id)
            outcome = None if row is None else (row["status"], row["failed_step"])
            if outcome != ("failed", step) or kind.phrase not in row["error"]:
                problems.append(f"{name}: expected to fail at {step} with {kind.phrase!r}, got "
                                f"{None if row is None else (row['status'], row['failed_step'], row['error'][:300])}")
            elif not any(line[:2] == [victim.episode_id, step] for line in failed_lines):
                problems.append(f"{name}: not in failed.txt")
            if victim.episode_id in folders:
                problems.append(f"{name}: a failed episode was published")
    for episode_id in expected_done:
        row = rows.get(episode_id)
        if row is None or row["status"] != "done" or episode_id not in folders:
            problems.append(f"{episode_id}: expected done, got {row and (row['status'], row['error'][:300])}")
    unexpected = set(folders) - expected_done
    if unexpected:
        problems.append(f"published but not expected to finish: {sorted(unexpected)}")
    assert not problems, "\n".join(problems)
    assert summary["exit_code"] == (1 if summary.get("discovery_failed") or summary["failed"] else 0)
    assert leftovers(output_root) == []
    verify(output_root)


# ---------------------------------------------------------------- processes

def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def descendants(pid: int) -> Iterable[int]:
    for child in children(pid):
        yield child
        yield from descendants(child)


def argv(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return []


def cmdline(pid: int) -> str:
    return " ".join(argv(pid))


def is_worker(pid: int) -> bool:
    """A ``python -m droid_pipeline.execution.runner worker`` process (not the xargs naming it)."""
    args = argv(pid)
    return bool(args) and "python" in Path(args[0]).name and "droid_pipeline.execution.runner" in args \
        and args[args.index("droid_pipeline.execution.runner") + 1:][:1] == ["worker"]


def worker_processes(driver_pid: int) -> dict[str, list[int]]:
    """The driver's live worker processes by role: ``supervisor`` (started by xargs), ``warm``
    (its child) and ``episode`` (the warm worker's children)."""
    roles: dict[str, list[int]] = {"supervisor": [], "warm": [], "episode": []}
    for pid in descendants(driver_pid):
        if not is_worker(pid):
            continue
        depth, ancestor = 0, parent_of(pid)
        while is_worker(ancestor):
            depth, ancestor = depth + 1, parent_of(ancestor)
        roles[("supervisor", "warm", "episode")[min(depth, 2)]].append(pid)
    return roles


def parent_of(pid: int) -> int:
    try:
        return int(re.search(r"^PPid:\s+(\d+)", Path(f"/proc/{pid}/status").read_text(), re.M).group(1))
    except (OSError, AttributeError):
        return 0


def uploader_processes(driver_pid: int) -> list[int]:
    return [pid for pid in descendants(driver_pid) if "droid_pipeline.upload" in argv(pid)]


def wait_until(predicate, limit_s: float = 120.0) -> bool:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update({"HF_HOME": "/nonexistent-hf-home", "HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
                "PYTHONUNBUFFERED": "1", **extra})
    return env
