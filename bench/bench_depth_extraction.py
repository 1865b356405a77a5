"""Benchmark the stereo depth backend: accuracy against ground truth, and throughput.

Generates synthetic episodes (droid_pipeline.synthetic.generator) at 320x180, 640x360 and DROID's
1280x720 per eye, runs the whole depth step (decode, SGBM, left-right check, uint16 conversion,
FFV1 encode and verification) with and without the left-right check, and compares each
depth.mkv with the ray-cast ground truth on pixels valid in both. Prints figures and ratios;
exits 0.

Usage: python bench/bench_depth_extraction.py [--frames N] [--keep DIR]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from droid_pipeline.core.config import load_config
from droid_pipeline.formats.depth_codec import DepthReader
from droid_pipeline.raw.discovery import build_index
from droid_pipeline.steps.depth import extract_depth
from droid_pipeline.synthetic.generator import DatasetInfo, generate_dataset

SIZES = ((320, 180), (640, 360), (1280, 720))  # DROID records 1280x720 per eye


def run_episode(dataset: DatasetInfo, output: Path, lr_check: bool) -> list[dict]:
    """Depth step on a synthetic episode; per-camera accuracy and speed."""
    config = load_config([dataset.config_path], [f"stereo.lr_check={str(lr_check).lower()}"])
    episode = build_index(config.droid_root, None).episodes[0]
    truth_dir = dataset.ground_truth_path(dataset.episodes[0])
    frames, size = dataset.episodes[0].num_frames, (dataset.episodes[0].width, dataset.episodes[0].height)
    rows = []
    for role, serial in episode.serials.items():
        start = time.perf_counter()
        summary = extract_depth(config, episode, output, backend="stereo", cameras=[serial])
        seconds = time.perf_counter() - start
        depth = DepthReader(output / "recordings" / serial / "depth.mkv").read_all().astype(np.float64)
        truth = np.load(truth_dir / f"{serial}_depth_mm.npy").astype(np.float64)
        both = (depth > 0) & (truth > 0)
        error = np.abs(depth - truth)[both]
        rows.append({"size": f"{size[0]}x{size[1]}", "role": role, "lr": lr_check,
                     "valid": summary.cameras[serial].valid_fraction,
                     "median_mm": float(np.median(error)), "p90_mm": float(np.percentile(error, 90)),
                     "median_rel": float(np.median(error / truth[both])),
                     "range_m": (truth[truth > 0].min() / 1000, truth.max() / 1000),
                     "fps": frames / seconds})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=6, help="steps per synthetic episode")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = args.keep or Path(scratch)
        root.mkdir(parents=True, exist_ok=True)
        print(f"stereo depth step on synthetic episodes, {args.frames} steps, {cv2.getNumThreads()} "
              "OpenCV threads")
        print(f"{'size':>8} {'camera':>6} {'LR':>5} {'valid':>6} {'median mm':>10} {'p90 mm':>7} "
              f"{'median rel':>10} {'depth range m':>14} {'fps':>6}")
        results = {}
        datasets = {size: generate_dataset(root / f"synthetic_{size[0]}x{size[1]}", episodes=1,
                                           frames=args.frames, size=size) for size in SIZES}
        for size, dataset in datasets.items():
            for lr_check in (True, False):
                output = root / f"output_{size[0]}x{size[1]}_lr_{lr_check}"
                for row in run_episode(dataset, output, lr_check):
                    results[(row["size"], row["role"], lr_check)] = row
                    low, high = row["range_m"]
                    print(f"{row['size']:>8} {row['role']:>6} {str(lr_check):>5} {row['valid']:6.3f} "
                          f"{row['median_mm']:10.1f} {row['p90_mm']:7.1f} {row['median_rel']:10.4f} "
                          f"{low:6.2f}-{high:<6.2f}  {row['fps']:6.2f}")
        print("\nleft-right check, ratios with / without:")
        for size in SIZES:
            label = f"{size[0]}x{size[1]}"
            for role in ("wrist", "ext1", "ext2"):
                on, off = results[(label, role, True)], results[(label, role, False)]
                print(f"  {label} {role:>5}: p90 error x{on['p90_mm'] / off['p90_mm']:.2f}, "
                      f"valid x{on['valid'] / off['valid']:.2f}, time x{off['fps'] / on['fps']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
