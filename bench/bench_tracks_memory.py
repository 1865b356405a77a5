"""Peak memory of the tracks step against the size of what it writes, for T = 300, 3,000 and 20,000.

A 300-step synthetic episode is rendered (or reused with --keep DIR); longer ones repeat its
trajectory (the robot's motion is a loop; the time stamps run on) with black MP4s of T frames,
so only the step's computation grows. Each run is `generate_tracks_and_metadata.py` in a fresh
process; its peak resident memory is read by a small launcher (so no parent's memory counts).

    .venv/bin/python bench/bench_tracks_memory.py [--steps 300 3000 20000] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from droid_pipeline.synthetic.generator import generate_dataset, load_dataset_info  # noqa: E402

LAUNCHER = """
import resource, subprocess, sys, time
start = time.perf_counter()
code = subprocess.call(sys.argv[1:], stdout=subprocess.DEVNULL)
print(code, time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def stretched(root: Path, steps: int) -> Path:
    """A copy of the set's episode with ``steps`` steps (its trajectory repeated); its config."""
    info = load_dataset_info(root)
    episode = info.episodes[0]
    source = info.episode_dir(episode)
    target = root.parent / f"{root.name}-{steps}"
    if not target.exists():
        shutil.copytree(root, target, ignore=shutil.ignore_patterns("output", "runs", "*_depth_mm.npy", "*.mp4"))
        folder = target / "droid_raw" / episode.relative_path
        _stretch_h5(source / "trajectory.h5", folder / "trajectory.h5", steps)
        metadata_path = next(folder.glob("metadata_*.json"))
        metadata = json.loads(metadata_path.read_text())
        metadata["trajectory_length"] = steps
        metadata_path.write_text(json.dumps(metadata))
        for video in (source / "recordings" / "MP4").glob("*.mp4"):
            _black_video(video, folder / "recordings" / "MP4" / video.name, steps)
    return target / "config.yaml"


def _stretch_h5(source: Path, target: Path, steps: int) -> None:
    with h5py.File(source, "r") as old, h5py.File(target, "w") as new:
        length = old["observation/robot_state/cartesian_position"].shape[0]
        repeats = -(-steps // length)

        def copy(name: str, item: h5py.Dataset | h5py.Group) -> None:
            if isinstance(item, h5py.Group):
                new.require_group(name)
                return
            data = item[()]
            if data.ndim and data.shape[0] == length:
                tiled = np.concatenate([data] * repeats)[:steps]
                if "timestamp" in name and data.dtype.kind in "iuf":  # time runs on: a repeat starts a period later
                    period = (data[-1] - data[0]) * length / max(length - 1, 1)
                    offsets = np.repeat(np.arange(repeats), length)[:steps] * period
                    tiled = tiled + offsets.astype(data.dtype).reshape(-1, *([1] * (data.ndim - 1)))
                data = tiled
            new.create_dataset(name, data=data)

        old.visititems(copy)
        for key, value in old.attrs.items():
            new.attrs[key] = value


def _black_video(template: Path, target: Path, frames: int) -> None:
    probe = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries",
                            "stream=width,height", "-of", "csv=p=0", str(template)],
                           capture_output=True, text=True, check=True)
    width, height = probe.stdout.strip().split(",")
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", f"color=black:s={width}x{height}:r=15",
                    "-frames:v", str(frames), "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
                    "-y", str(target)], check=True)


def measure(config: Path, out: Path, steps: int) -> tuple[float, float, int]:
    """(seconds, peak MiB, bytes written) of the intrinsics then the tracks command on the episode."""
    info = load_dataset_info(config.parent)
    episode_id = info.episodes[0].episode_id
    # Beyond the plausibility gate's default T (10,000 steps) on purpose: the gate is raised.
    common = ["--config", str(config), "--episode_id", episode_id, "--output-dir", str(out),
              "--set", f"plausibility.max_steps={max(steps, 10000)}"]
    subprocess.run([sys.executable, str(REPO_ROOT / "extract_intrinsics_only.py"), *common], check=True,
                   capture_output=True)
    result = subprocess.run([sys.executable, "-c", LAUNCHER, sys.executable,
                             str(REPO_ROOT / "generate_tracks_and_metadata.py"), *common],
                            capture_output=True, text=True, check=True)
    code, seconds, peak_kib = result.stdout.split()
    if code != "0":
        raise SystemExit(f"tracks step failed on {config}: {result.stderr[-2000:]}")
    written = sum(f.stat().st_size for f in out.glob("*.npz")) + (out / "quality.json").stat().st_size
    return float(seconds), int(peak_kib) / 1024, written


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, nargs="+", default=[300, 3000, 20000])
    parser.add_argument("--keep", type=Path, help="render the 300-step episode here (or reuse it) and keep it")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = args.keep or Path(scratch) / "data"
        if not (root / "ground_truth" / "dataset.json").is_file():
            started = time.perf_counter()
            generate_dataset(root, episodes=1, frames=300, size=(320, 180))
            print(f"setup: one 300-step episode rendered in {time.perf_counter() - started:.1f} s")
        print(f"{'T':>7s} {'seconds':>8s} {'peak MiB':>9s} {'written MB':>11s} {'raw arrays MB':>14s} "
              f"{'peak / written':>15s}")
        for steps in args.steps:
            config = root / "config.yaml" if steps == 300 else stretched(root, steps)
            out = Path(scratch) / f"out-{steps}"
            seconds, peak, written = measure(config, out, steps)
            with np.load(out / "tracks.npz") as tracks:
                raw = sum(tracks[key].nbytes for key in tracks.files)
            print(f"{steps:7d} {seconds:8.2f} {peak:9.0f} {written / 1e6:11.1f} {raw / 1e6:14.1f} "
                  f"{peak * 2**20 / written:15.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
