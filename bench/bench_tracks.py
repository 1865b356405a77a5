"""Benchmark the tracks step on a full-size synthetic episode: T=300 steps, N=480 points,
3 cameras, about 2 m of contact-centroid travel. Times the step in-process and through its
command line, and prints the bytes written per file and per array.

    .venv/bin/python bench/bench_tracks.py [--frames 300] [--repeats 5] [--keep DIR]
"""

from __future__ import annotations

import argparse
import io
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from droid_pipeline.core.config import load_config  # noqa: E402
from droid_pipeline.core.schema import TRACKS  # noqa: E402
from droid_pipeline.raw.discovery import build_index  # noqa: E402
from droid_pipeline.steps.intrinsics import extract_intrinsics  # noqa: E402
from droid_pipeline.steps.tracks import generate_tracks  # noqa: E402
from droid_pipeline.synthetic.generator import generate_dataset  # noqa: E402


def timed(function, repeats: int) -> list[float]:
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        seconds.append(time.perf_counter() - start)
    return seconds


def describe(seconds: list[float]) -> str:
    return f"min {min(seconds):.3f} s, median {statistics.median(seconds):.3f} s over {len(seconds)}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--keep", type=Path, help="generate the episode here and keep it")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = args.keep or Path(scratch)
        start = time.perf_counter()
        info = generate_dataset(root, episodes=1, frames=args.frames, size=(320, 180))
        print(f"setup: synthetic episode of {args.frames} steps rendered in {time.perf_counter() - start:.1f} s")
        config = load_config([info.config_path])
        episode = build_index(config.droid_root, config.index_path).get(info.episodes[0].episode_id)
        output_dir = config.output_root / episode.relative_path
        extract_intrinsics(config, episode, output_dir)

        summary = generate_tracks(config, episode, output_dir)  # warm: gripper model built once per process
        print(f"episode: T={summary['num_frames']} N={summary['num_points']} "
              f"cameras={len(summary['cameras_with_2d_tracks'])} path={summary['path_length_mm']:.0f} mm "
              f"-> M={summary['num_normalized_steps']} normalized samples")

        with np.load(output_dir / TRACKS.path, allow_pickle=False) as data:
            arrays = dict(data)
        in_process, writing = [], []
        for _ in range(args.repeats):  # interleaved, so both see the same machine load
            in_process += timed(lambda: generate_tracks(config, episode, output_dir), 1)
            writing += timed(lambda: np.savez_compressed(io.BytesIO(), **arrays), 1)
        command = [sys.executable, str(REPO_ROOT / "generate_tracks_and_metadata.py"), "--config",
                   str(info.config_path), "--episode_id", episode.episode_id]
        cli = timed(lambda: subprocess.run(command, check=True, capture_output=True), max(2, args.repeats // 2))

        print(f"in-process, whole step:          {describe(in_process)}")
        print(f"  np.savez_compressed of its tracks.npz arrays alone, to memory: {describe(writing)}")
        print(f"command line, whole step:        {describe(cli)} (interpreter start and imports included)")
        total_bytes = sum(summary["files"].values())
        for name, size in summary["files"].items():
            print(f"bytes {name:15s} {size:>11,d}")
        print(f"bytes total           {total_bytes:>11,d}")
        with zipfile.ZipFile(output_dir / TRACKS.path) as archive:
            members = sorted(archive.infolist(), key=lambda m: -m.compress_size)
        print("largest tracks.npz arrays (stored / raw bytes):")
        for member in members[:8]:
            print(f"  {member.filename[:-4]:28s} {member.compress_size:>11,d} / {member.file_size:>11,d}")
        print(f"command line / in-process, fastest of each: {min(cli) / min(in_process):.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
