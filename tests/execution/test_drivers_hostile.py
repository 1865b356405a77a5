"""The drivers against hostile input and kills, as real subprocesses with real signals: a killed
warm worker's episode is recorded with the signal and its batch goes on, discovery failures are
counted everywhere, a corrupt published file stops the run once, leftovers of killed runs go."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from fifo_episodes import episode_pid, pausing_env, wait_for_reader

from droid_pipeline.publish.staging import finished_state
from droid_pipeline.synthetic.generator import generate_dataset

REPO = Path(__file__).resolve().parents[2]
METADATA = REPO / "run_pipeline_metadata_only.sh"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return generate_dataset(tmp_path_factory.mktemp("synthetic"), episodes=4, frames=12)


def run_driver(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(METADATA), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def common_args(dataset, work: Path, droid_root: Path | None = None) -> list[str]:
    return ["--config", str(dataset.config_path), "--out", str(work / "out"), "--set", f"run_root={work / 'runs'}",
            "--droid-root", str(droid_root or dataset.droid_root), "--set", "outcomes=[success,failure]"]


def run_dir_of(work: Path) -> Path:
    (run_dir,) = sorted((work / "runs").glob("metadata-*"))
    return run_dir


def rows(run_dir: Path, name: str = "timing.csv") -> list[dict[str, str]]:
    with open(run_dir / name, newline="") as fh:
        return list(csv.DictReader(fh))


def parent_pid(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^PPid:\s+(\d+)", status, re.M).group(1))


def blocking_metadata(dataset, tmp_path: Path, args: list[str], episode) -> tuple[Path, dict[str, str]]:
    """A FIFO and the environment of a driver whose process reading ``episode``'s metadata blocks
    on it (fifo_episodes.pausing_env): with the index cached first, that is its episode process in
    its first step, until the test, the FIFO's writer, says otherwise."""
    assert run_driver(*args, "--dry-run", cwd=tmp_path).returncode == 0  # caches the index
    (metadata,) = (tmp_path / "droid_raw" / episode.relative_path).glob("metadata_*.json")
    fifo = tmp_path / "pause.fifo"
    return fifo, pausing_env(metadata, fifo)


def test_a_killed_warm_worker_records_its_episode_with_the_signal_and_the_batch_goes_on(dataset, tmp_path):
    shutil.copytree(dataset.droid_root, tmp_path / "droid_raw")
    episodes = sorted(dataset.episodes, key=lambda e: e.relative_path)
    stuck = episodes[1]
    args = [*common_args(dataset, tmp_path, tmp_path / "droid_raw"), "--workers", "1", "--episodes-per-worker", "4"]
    fifo, env = blocking_metadata(dataset, tmp_path, args, stuck)
    driver = subprocess.Popen([str(METADATA), *args], cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, env=env)
    try:
        writer = wait_for_reader(fifo)
        stuck_pid = episode_pid(run_dir_of(tmp_path) / "logs" / f"{stuck.episode_id}.log")
        worker_pid = parent_pid(stuck_pid)  # the warm worker
        supervisor_pid = parent_pid(worker_pid)
        assert "runner" in Path(f"/proc/{supervisor_pid}/cmdline").read_text()
        os.kill(worker_pid, signal.SIGKILL)
        out, _ = driver.communicate(timeout=180)
        writer.close()
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 1, out
    run_dir = run_dir_of(tmp_path)
    by_id = {r["episode_id"]: r for r in rows(run_dir)}
    assert len(rows(run_dir)) == len(episodes)  # one row per attempt
    row = by_id[stuck.episode_id]
    assert (row["status"], row["failed_step"]) == ("failed", "intrinsics")
    assert row["error"] == (f"worker process {worker_pid} killed by SIGKILL during step intrinsics "
                            f"(episode process {stuck_pid} stopped with it)")
    # The rest of the batch ran in a fresh warm worker of the same slot.
    assert [by_id[e.episode_id]["status"] for e in episodes if e is not stuck] == ["done"] * 3
    assert {r["slot"] for r in by_id.values()} == {"0"}
    assert "BrokenPipe" not in out and "BrokenPipe" not in (run_dir / "timing.csv").read_text()
    peaks = rows(run_dir, "peak_rss.csv")
    assert sorted(r["episode_id"] for r in peaks) == sorted(e.episode_id for e in episodes)
    assert all(float(r["peak_rss_mib"]) > 10 for r in peaks)
    assert not [p for p in (tmp_path / "out" / ".work").rglob("*") if p.is_file()]
    assert f"failed: episode {stuck.episode_id}: step intrinsics: worker process {worker_pid} killed by SIGKILL" in out


def test_discovery_failures_fail_the_run_and_are_listed_everywhere(dataset, tmp_path):
    droid_root = tmp_path / "droid_raw"
    shutil.copytree(dataset.droid_root, droid_root)
    first = sorted(dataset.episodes, key=lambda e: e.relative_path)[0]
    date_dir = (droid_root / first.relative_path).parent
    (date_dir / "loop").symlink_to("loop")
    (date_dir / "Sat_Apr__1_09:00:00_2023").mkdir()  # no metadata
    dotted = date_dir / "Sat_Apr__1_10:00:00_2023"
    dotted.mkdir()
    (dotted / "metadata_...json").write_text(json.dumps({"uuid": ".."}))
    copy = date_dir / "Sat_Apr__1_11:00:00_2023"
    shutil.copytree(droid_root / first.relative_path, copy)  # the same uuid twice
    result = run_driver(*common_args(dataset, tmp_path, droid_root), "--workers", "2", cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    run_dir = run_dir_of(tmp_path)
    plan = json.loads((run_dir / "plan.json").read_text())
    failures = {f["path"]: f for f in plan["discovery_failures"]}
    rel = date_dir.relative_to(droid_root).as_posix()
    assert set(failures) == {f"{rel}/loop", f"{rel}/Sat_Apr__1_09:00:00_2023", f"{rel}/Sat_Apr__1_10:00:00_2023",
                             f"{rel}/Sat_Apr__1_11:00:00_2023", first.relative_path}
    assert "Too many levels of symbolic links" in failures[f"{rel}/loop"]["cause"]
    assert "grammar" in failures[f"{rel}/Sat_Apr__1_10:00:00_2023"]["cause"]
    assert failures[first.relative_path]["episode_id"] == first.episode_id
    failed = [line.split("\t") for line in (run_dir / "failed.txt").read_text().splitlines()]
    assert sorted(path for path, step, _ in failed if step == "discovery") == sorted(failures)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["discovery_failed"] == 5 and summary["exit_code"] == 1
    assert summary["done"] == len(dataset.episodes) - 1 and summary["failed"] == 0
    assert "discovery: 5 folder(s) of the selection cannot be run" in result.stdout
    assert (run_dir / "summary.txt").read_text().count(f"{rel}/") >= 4
    # The duplicated id's original is not run, the other episodes are.
    assert finished_state(tmp_path / "out" / first.relative_path)[0] == "missing"


def test_a_corrupt_published_intrinsics_file_stops_the_run_once(dataset, tmp_path):
    published = tmp_path / "intrinsics.json"
    published.write_bytes(dataset.intrinsics_path.read_bytes()[:-40])
    result = run_driver(*common_args(dataset, tmp_path), "--set", f"intrinsics_path={published}", cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    assert f"intrinsics_path: cannot read intrinsics file {published}: " in errors[0]
    assert "Expecting" in errors[0] and "episode not in" not in result.stderr
    assert not (tmp_path / "runs").exists()


def test_leftovers_of_killed_runs_are_removed_at_the_next_start(dataset, tmp_path):
    episode = sorted(dataset.episodes, key=lambda e: e.relative_path)[0]
    parent = (tmp_path / "out" / episode.relative_path).parent
    incoming = parent / f".{Path(episode.relative_path).name}.incoming-0123456789ab"
    (incoming / "recordings").mkdir(parents=True)
    (incoming / "tracks.npz").write_bytes(os.urandom(1000))
    dead_work = tmp_path / "out" / ".work" / "metadata-20260101-000000-99" / episode.episode_id
    dead_work.mkdir(parents=True)
    (dead_work / "tracks.npz").write_bytes(b"x")
    result = run_driver(*common_args(dataset, tmp_path), "--workers", "2", "1", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "removed 2 folder(s) left in" in result.stdout
    assert not incoming.exists() and not (tmp_path / "out" / ".work").exists()
    assert finished_state(tmp_path / "out" / episode.relative_path)[0] == "finished"
