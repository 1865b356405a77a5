"""Throughput of the metadata-only driver (intrinsics + tracks + publish, forked warm workers) on
full-size synthetic episodes (T=300, N=480, 3 cameras), with 1 and with 2 workers, with the npz
writer's default deflate (isal level 3) and with zlib level 1, and optionally the same
runs of another checkout (``--before DIR``, e.g. ``git worktree add /tmp/before <commit>``) taken
in turn with these, so both sides see the same load of a shared machine.

One 300-step episode is rendered (or reused with --keep DIR) and cloned K times under new ids and
folders (its files hard-linked; its metadata and the calibration files' entries rewritten), so
every episode costs the same. Each combination runs the whole set a few times through the real
driver, all combinations in turn per round; the figures are medians.

    .venv/bin/python bench/bench_driver.py [--episodes 24] [--repeats 3] [--keep DIR] [--set KEY=VALUE]
                                           [--engines default,zlib] [--before DIR] [--json FILE]

Prints per checkout, engine and worker count the wall time, episodes per hour, seconds per
episode per worker (= wall x workers / episodes), CPU seconds per episode (all the run's
processes, start-up and the npz writer's threads included; on a shared machine the CPU seconds,
not the wall time, are what compares) and the median of each step's seconds from timing.csv,
then the scaling ratio of 2 workers to 1 (1.0 is linear). ``--json FILE`` writes the same rows
as a list of objects (``version``, ``workers``, ``engine``, ``wall_s``, ``cpu_s_per_episode``,
``episodes``, ``s_per_episode_per_worker`` and the step medians). Extra --set options go to
every run.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import itertools
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from droid_pipeline.synthetic.generator import generate_dataset, load_dataset_info  # noqa: E402

DRIVER_NAME = "run_pipeline_metadata_only.sh"
STEPS = ("intrinsics_s", "tracks_s", "publish_s", "total_s")
# "default": the checkout's own default (isal level 3 now; zlib level 1 before it was).
ENGINES = {"default": [], "isal": ["npz.engine=isal", "npz.level=3"], "zlib": ["npz.engine=zlib", "npz.level=1"]}
RunFigures = tuple[float, float, list[dict[str, str]]]


def cloned_dataset(root: Path, count: int) -> Path:
    """``root`` (a generated one-episode set) with ``count`` episodes; returns its config."""
    info = load_dataset_info(root)
    source = info.episodes[0]
    source_dir = info.episode_dir(source)
    lab, user, stamp = source.episode_id.split("+")
    started = dt.datetime.strptime(stamp, "%Y-%m-%d-%Hh-%Mm-%Ss")
    calibration_files = [p for p in (info.cam2base_path, info.cam2cam_path, info.intrinsics_path) if p.is_file()]
    tables = {path: json.loads(path.read_text()) for path in calibration_files}
    for number in range(1, count):
        recorded = started + dt.timedelta(minutes=number)
        episode_id = f"{lab}+{user}+{recorded:%Y-%m-%d}-{recorded.hour}h-{recorded.minute}m-{recorded.second}s"
        folder = source_dir.parent / time.asctime(recorded.timetuple()).replace(" ", "_")
        if not folder.exists():
            shutil.copytree(source_dir, folder, copy_function=os.link)
            old = folder / f"metadata_{source.episode_id}.json"
            metadata = json.loads(old.read_text())
            metadata["uuid"] = episode_id
            old.unlink()
            (folder / f"metadata_{episode_id}.json").write_text(json.dumps(metadata))
        for table in tables.values():
            table[episode_id] = table[source.episode_id]
    for path, table in tables.items():
        path.write_text(json.dumps(table))
    return info.config_path


def run(checkout: Path, config: Path, work: Path, workers: int, count: int, settings: list[str]) -> RunFigures:
    """One run of ``checkout``'s driver (its package first on PYTHONPATH, this interpreter): its
    wall seconds, the CPU seconds of all its processes, its timing rows."""
    shutil.rmtree(work, ignore_errors=True)
    environment = {**os.environ, "DROID_PYTHON": sys.executable,
                   "PYTHONPATH": os.pathsep.join([str(checkout), os.environ.get("PYTHONPATH", "")])}
    command = [str(checkout / DRIVER_NAME), "--config", str(config), "--out", str(work / "out"),
               "--set", f"run_root={work / 'runs'}", "--set", f"episode_index_path={work / 'index.json'}",
               "--workers", str(workers), "--no-upload",
               *(item for setting in settings for item in ("--set", setting)), str(count)]
    start, before = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    result = subprocess.run(command, capture_output=True, text=True, env=environment, cwd=checkout)
    wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    if result.returncode != 0:
        raise SystemExit(f"driver failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    run_dir = next((work / "runs").glob("metadata-*"))
    with open(run_dir / "timing.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    if len(rows) != count or any(row["status"] != "done" for row in rows):
        raise SystemExit(f"expected {count} done episodes in {run_dir / 'timing.csv'}")
    return wall, cpu, rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=24)
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", default="1,2", help="worker counts, comma separated (default 1,2)")
    parser.add_argument("--engines", default="default,zlib",
                        help="npz deflate engines, comma separated: default (the checkout's), isal (level 3), "
                             "zlib (level 1)")
    parser.add_argument("--before", type=Path, help="another checkout whose driver runs in turn with this one")
    parser.add_argument("--json", type=Path, help="also write the rows to this file as JSON")
    parser.add_argument("--keep", type=Path, help="render the episode here (or reuse it) and keep it")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="settings",
                        help="a config override for every run, e.g. --set occlusion.enabled=false")
    args = parser.parse_args()
    engines = [e for e in args.engines.split(",") if e]
    unknown = set(engines) - set(ENGINES)
    if unknown:
        parser.error(f"unknown engine {', '.join(sorted(unknown))}; choose from {', '.join(ENGINES)}")
    worker_counts = [int(w) for w in args.workers.split(",")]
    checkouts = {"now": REPO_ROOT} | ({"before": args.before.resolve()} if args.before else {})
    combinations = list(itertools.product(checkouts, engines, worker_counts))
    with tempfile.TemporaryDirectory() as scratch:
        root = args.keep or Path(scratch) / "data"
        if not (root / "ground_truth" / "dataset.json").is_file():
            started = time.perf_counter()
            generate_dataset(root, episodes=1, frames=args.frames, size=(320, 180))
            print(f"setup: one {args.frames}-step episode rendered in {time.perf_counter() - started:.1f} s")
        config = cloned_dataset(root, args.episodes)
        figures: dict[tuple[str, str, int], list[RunFigures]] = {key: [] for key in combinations}
        for _ in range(args.repeats):  # every combination once per round, so all see the same load
            for version, engine, workers in combinations:
                figures[version, engine, workers].append(
                    run(checkouts[version], config, Path(scratch) / "work", workers, args.episodes,
                        [*ENGINES[engine], *args.settings]))
        print(f"{args.episodes} episodes of {args.frames} steps, N=480, 3 cameras; medians of {args.repeats} runs"
              + (f"; {' '.join(args.settings)}" if args.settings else "") + f"; {os.cpu_count()} CPUs here")
        print(f"{'version':>7s} {'engine':>7s} {'workers':>7s} {'wall s':>8s} {'ep/h':>8s} {'s/ep/worker':>12s} "
              f"{'cpu s/ep':>9s}  " + "  ".join(f"{s:>12s}" for s in STEPS))
        rows = []
        for version, engine, workers in combinations:
            runs = figures[version, engine, workers]
            wall = statistics.median(r[0] for r in runs)
            timing = [row for r in runs for row in r[2]]
            steps = {s: statistics.median(float(r[s]) for r in timing) for s in STEPS}
            rows.append({"version": version, "engine": engine, "workers": workers, "episodes": args.episodes,
                         "wall_s": wall, "cpu_s_per_episode": statistics.median(r[1] for r in runs) / args.episodes,
                         "s_per_episode_per_worker": wall * workers / args.episodes, **steps})
            row = rows[-1]
            print(f"{version:>7s} {engine:>7s} {workers:7d} {wall:8.2f} {args.episodes / wall * 3600:8.0f} "
                  f"{row['s_per_episode_per_worker']:12.3f} {row['cpu_s_per_episode']:9.3f}  "
                  + "  ".join(f"{steps[s]:12.3f}" for s in STEPS))
        for version, engine in itertools.product(checkouts, engines):
            per = {r["workers"]: r["s_per_episode_per_worker"] for r in rows
                   if r["version"] == version and r["engine"] == engine}
            if 1 in per and 2 in per:
                print(f"scaling {version} {engine}, 2 workers against 1: throughput x{per[1] / per[2]:.2f} of linear")
        if args.json:
            args.json.write_text(json.dumps(rows, indent=1) + "\n")
            print(f"rows written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
