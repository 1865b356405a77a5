"""Throughput of the metadata-only driver (intrinsics + tracks + publish, forked warm workers) on
full-size synthetic episodes (T=300, N=480, 3 cameras), with 1 and with 2 workers.

One 300-step episode is rendered (or reused with --keep DIR) and cloned K times under new ids and
folders (its files hard-linked; its metadata and the calibration files' entries rewritten), so
every episode costs the same. Each worker count runs the whole set a few times through the real
driver; the figures are medians.

    .venv/bin/python bench/bench_driver.py [--episodes 24] [--repeats 3] [--keep DIR] [--set KEY=VALUE]

Prints per worker count the wall time, episodes per hour, seconds per episode per worker
(= wall x workers / episodes), CPU seconds per episode (all the run's processes, start-up and
the npz writer's threads included) and the median of each step's seconds from timing.csv, then
the scaling ratio of 2 workers to 1 (1.0 is linear). Extra --set options go to every run.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
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

DRIVER = REPO_ROOT / "run_pipeline_metadata_only.sh"
STEPS = ("intrinsics_s", "tracks_s", "publish_s", "total_s")
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


def run(config: Path, work: Path, workers: int, count: int, settings: list[str]) -> RunFigures:
    """One driver run: its wall seconds, the CPU seconds of all its processes, its timing rows."""
    shutil.rmtree(work, ignore_errors=True)
    command = [str(DRIVER), "--config", str(config), "--out", str(work / "out"), "--set", f"run_root={work / 'runs'}",
               "--set", f"episode_index_path={work / 'index.json'}", "--workers", str(workers), "--no-upload",
               *(item for setting in settings for item in ("--set", setting)), str(count)]
    start, before = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    result = subprocess.run(command, capture_output=True, text=True)
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
    parser.add_argument("--keep", type=Path, help="render the episode here (or reuse it) and keep it")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="settings",
                        help="a config override for every run, e.g. --set npz.engine=isal")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = args.keep or Path(scratch) / "data"
        if not (root / "ground_truth" / "dataset.json").is_file():
            started = time.perf_counter()
            generate_dataset(root, episodes=1, frames=args.frames, size=(320, 180))
            print(f"setup: one {args.frames}-step episode rendered in {time.perf_counter() - started:.1f} s")
        config = cloned_dataset(root, args.episodes)
        per_episode = {}
        print(f"{args.episodes} episodes of {args.frames} steps, N=480, 3 cameras; medians of {args.repeats} runs"
              + (f"; {' '.join(args.settings)}" if args.settings else ""))
        print(f"{'workers':>7s} {'wall s':>8s} {'ep/h':>8s} {'s/ep/worker':>12s} {'cpu s/ep':>9s}  " +
              "  ".join(f"{s:>12s}" for s in STEPS))
        for workers in (1, 2):
            walls, cpus, rows = [], [], []
            for _ in range(args.repeats):
                wall, cpu, timing = run(config, Path(scratch) / "work", workers, args.episodes, args.settings)
                walls.append(wall)
                cpus.append(cpu)
                rows += timing
            wall = statistics.median(walls)
            per_episode[workers] = wall * workers / args.episodes
            steps = "  ".join(f"{statistics.median(float(r[s]) for r in rows):12.3f}" for s in STEPS)
            print(f"{workers:7d} {wall:8.2f} {args.episodes / wall * 3600:8.0f} {per_episode[workers]:12.3f} "
                  f"{statistics.median(cpus) / args.episodes:9.3f}  {steps}")
        print(f"scaling, 2 workers against 1: throughput x{per_episode[1] * 2 / per_episode[2] / 2:.2f} of linear "
              f"({os.cpu_count()} CPUs here)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
