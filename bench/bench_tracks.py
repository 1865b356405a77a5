"""Benchmark the tracks step on a full-size synthetic episode: T=300 steps, N=480 points,
3 cameras, about 2 m of contact-centroid travel. Times the step in-process with and without the
occlusion labels (``occlusion.enabled``), the labels alone inside the step, and with ``--depth``
the step again with every camera's true depth written as its depth.mkv (the scene test decodes
it) and the decoding of those files alone; the same with the npz writer's zlib engine (level 1,
the smallest files; the default is isal level 3); the step through its command line; and prints the bytes written per
file and per array. ``--keep DIR --reuse`` takes the episode an earlier run
kept there (rendering a 720p one takes minutes). ``--before DIR`` (another checkout, e.g.
``git worktree add /tmp/before <commit>``) also runs that checkout's command on the same
episode, in turn with this one's: wall, CPU seconds and peak RSS of each whole process, medians;
and each checkout's tracks step in a process of its own, in turn, timing the occlusion labels
inside the step (wall and CPU seconds, medians, and the ratio pair by pair).

    .venv/bin/python bench/bench_tracks.py [--frames 300] [--size 320x180] [--repeats 5] [--depth]
                                           [--keep DIR [--reuse]] [--before DIR]
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
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
ZLIB = ["npz.engine=zlib", "npz.level=1"]

from droid_pipeline.core.config import load_config  # noqa: E402
from droid_pipeline.core.schema import DEPTH, TRACKS  # noqa: E402
from droid_pipeline.formats.depth_codec import DepthReader, DepthWriter  # noqa: E402
from droid_pipeline.formats.npz import deflate_by_member, write_npz  # noqa: E402
from droid_pipeline.raw.discovery import build_index  # noqa: E402
from droid_pipeline.steps.intrinsics import extract_intrinsics  # noqa: E402
from droid_pipeline.steps.occlusion_labels import OcclusionLabeller  # noqa: E402
from droid_pipeline.steps.tracks import generate_tracks  # noqa: E402
from droid_pipeline.synthetic.generator import generate_dataset, load_dataset_info  # noqa: E402


def timed(function, repeats: int) -> list[float]:
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        seconds.append(time.perf_counter() - start)
    return seconds


# Runs COMMAND... with its output discarded; prints its wall seconds, CPU seconds, peak RSS (KiB) and
# exit code. A small process of its own, so the peak is the command's (a child forked from the
# benchmark would start with the benchmark's memory).
LAUNCHER = """\
import json, resource, subprocess, sys, time
start = time.perf_counter()
code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
wall = time.perf_counter() - start
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps([wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss, code]))
"""


def whole_process(command: list[str], cwd: Path) -> tuple[float, float, float]:
    """Run ``command``: its wall seconds, CPU seconds and peak RSS (MiB), from the kernel's
    accounting of the finished process."""
    result = subprocess.run([sys.executable, "-c", LAUNCHER, *command], cwd=cwd, capture_output=True, text=True,
                            check=True)
    wall, cpu, peak_kib, code = json.loads(result.stdout)
    if code != 0:
        raise SystemExit(f"{' '.join(command)} exited {code}")
    return wall, cpu, peak_kib / 1024.0


def describe(seconds: list[float]) -> str:
    return f"min {min(seconds):.3f} s, median {statistics.median(seconds):.3f} s over {len(seconds)}"


class OcclusionTimer:
    """Wraps the occlusion labeller's per-block ``label`` and sums how long each tracks step spent in it."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self.cpu_seconds: list[float] = []
        self._label = OcclusionLabeller.label
        timer = self

        def label(labeller, *args, **kwargs):
            start, cpu = time.perf_counter(), time.process_time()
            try:
                return timer._label(labeller, *args, **kwargs)
            finally:
                timer.running += time.perf_counter() - start
                timer.running_cpu += time.process_time() - cpu

        self._wrapped = label
        self.running = self.running_cpu = 0.0

    def __enter__(self) -> OcclusionTimer:
        OcclusionLabeller.label = self._wrapped
        return self

    def __exit__(self, *exc) -> None:
        OcclusionLabeller.label = self._label

    def lap(self) -> None:
        """End one tracks step: record the time (wall and CPU) it spent labelling."""
        self.seconds.append(self.running)
        self.cpu_seconds.append(self.running_cpu)
        self.running = self.running_cpu = 0.0


# Runs a checkout's tracks step in-process (ARGV: checkout, config, episode id, repeats) after one
# warm-up run, and prints per run the wall and CPU seconds spent in the occlusion labeller.
LABELS = """\
import json, sys, time
sys.path.insert(0, sys.argv[1])
from droid_pipeline.core.config import load_config
from droid_pipeline.raw.discovery import build_index
from droid_pipeline.steps.occlusion_labels import OcclusionLabeller
from droid_pipeline.steps.tracks import generate_tracks
config = load_config([sys.argv[2]])
episode = build_index(config.droid_root, config.index_path).get(sys.argv[3])
label, spent = OcclusionLabeller.label, []
def timed(labeller, *args, **kwargs):
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        return label(labeller, *args, **kwargs)
    finally:
        spent[-1][0] += time.perf_counter() - wall
        spent[-1][1] += time.process_time() - cpu
OcclusionLabeller.label = timed
for _ in range(int(sys.argv[4]) + 1):
    spent.append([0.0, 0.0])
    generate_tracks(config, episode, config.output_root / episode.relative_path)
print(json.dumps(spent[1:]))
"""


def labels_in_step(checkout: Path, config_path: Path, episode_id: str, repeats: int) -> list[list[float]]:
    """[wall, CPU] seconds of the occlusion labels in each of ``repeats`` tracks steps of a checkout."""
    result = subprocess.run([sys.executable, "-c", LABELS, str(checkout), str(config_path), episode_id, str(repeats)],
                            cwd=checkout, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.splitlines()[-1])


def write_true_depth(info, output_dir: Path, fps: float) -> None:
    """Each camera's ground-truth depth (mm) as its depth.mkv + depth_meta.json, as the depth step writes them."""
    truth = info.ground_truth_path(info.episodes[0])
    for serial, record in json.loads((truth / "cameras.json").read_text()).items():
        frames = np.load(truth / record["depth_file"], mmap_mode="r")
        with DepthWriter(output_dir / DEPTH.for_camera(serial), frames.shape[2], frames.shape[1], fps,
                         load_config().ffv1, source={"backend": "ground_truth"}) as writer:
            for frame in frames:
                writer.write(np.asarray(frame))


def decode_all(output_dir: Path) -> None:
    """Decode every depth.mkv under ``output_dir`` one frame at a time, as the scene test reads them."""
    for path in sorted(output_dir.glob(DEPTH.path.replace("<serial>", "*"))):
        with DepthReader(path) as reader:
            for _ in reader:
                pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--size", default="320x180", help="image size WxH of the rendered episode (default 320x180)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--depth", action="store_true", help="also time the step with every camera's true depth")
    parser.add_argument("--keep", type=Path, help="generate the episode here and keep it")
    parser.add_argument("--reuse", action="store_true", help="with --keep: use the episode already there")
    parser.add_argument("--before", type=Path, help="another checkout whose command runs in turn with this one's")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as scratch:
        root = args.keep or Path(scratch)
        start = time.perf_counter()
        if args.reuse and args.keep:
            info = load_dataset_info(root)
            kept = info.episodes[0]
            if (kept.num_frames, kept.width, kept.height) != (args.frames, width, height):
                parser.error(f"{root} holds {kept.num_frames} steps at {kept.width}x{kept.height}")
            shutil.rmtree(root / "with_depth", ignore_errors=True)
        else:
            info = generate_dataset(root, episodes=1, frames=args.frames, size=(width, height))
            print(f"setup: synthetic episode of {args.frames} steps at {width}x{height} rendered in "
                  f"{time.perf_counter() - start:.1f} s")
        config = load_config([info.config_path])
        without = load_config([info.config_path], ["occlusion.enabled=false"])
        deflate = deflate_by_member(config.npz)
        zlib_configs = [load_config([info.config_path], [*extra, *ZLIB])
                        for extra in ([], ["occlusion.enabled=false"])]
        episode = build_index(config.droid_root, config.index_path).get(info.episodes[0].episode_id)
        output_dir = config.output_root / episode.relative_path
        extract_intrinsics(config, episode, output_dir)
        summary = generate_tracks(config, episode, output_dir)  # warm: gripper and robot models built once
        print(f"episode: T={summary['num_frames']} N={summary['num_points']} "
              f"cameras={len(summary['cameras_with_2d_tracks'])} path={summary['path_length_mm']:.0f} mm "
              f"-> M={summary['num_normalized_steps']} normalized samples")
        with np.load(output_dir / TRACKS.path, allow_pickle=False) as data:
            arrays = dict(data)
        depth_dir = Path(root) / "with_depth" / episode.relative_path
        if args.depth:
            shutil.copytree(output_dir, depth_dir)
            start = time.perf_counter()
            write_true_depth(info, depth_dir, float(arrays["fps"]))
            print(f"setup: true depth of every camera encoded in {time.perf_counter() - start:.1f} s")
        runs: dict[str, list[float]] = {"with": [], "without": [], "depth": [], "decoding": [], "savez": [],
                                        "write_npz": [], "zlib with": [], "zlib without": []}
        labels: dict[str, list[float]] = {"with": [], "with, CPU": [], "depth": []}
        with OcclusionTimer() as timer:
            for _ in range(args.repeats):  # interleaved, so all see the same machine load
                runs["without"] += timed(lambda: generate_tracks(without, episode, output_dir), 1)
                timer.lap()
                runs["with"] += timed(lambda: generate_tracks(config, episode, output_dir), 1)
                timer.lap()
                labels["with"].append(timer.seconds[-1])
                labels["with, CPU"].append(timer.cpu_seconds[-1])
                if args.depth:
                    runs["depth"] += timed(lambda: generate_tracks(config, episode, depth_dir), 1)
                    timer.lap()
                    labels["depth"].append(timer.seconds[-1])
                    runs["decoding"] += timed(lambda: decode_all(depth_dir), 1)
                runs["zlib without"] += timed(lambda: generate_tracks(zlib_configs[1], episode, output_dir), 1)
                runs["zlib with"] += timed(lambda: generate_tracks(zlib_configs[0], episode, output_dir), 1)
                timer.lap()
                runs["savez"] += timed(lambda: np.savez_compressed(io.BytesIO(), **arrays), 1)
                runs["write_npz"] += timed(lambda: write_npz(io.BytesIO(), arrays, deflate=deflate), 1)
        command = [sys.executable, str(REPO_ROOT / "generate_tracks_and_metadata.py"), "--config",
                   str(info.config_path), "--episode_id", episode.episode_id]
        cli = timed(lambda: subprocess.run(command, check=True, capture_output=True), max(2, args.repeats // 2))
        if args.before:
            before_command = [sys.executable, str(args.before.resolve() / "generate_tracks_and_metadata.py"),
                              *command[2:]]
            pairs = {"before": [], "now": []}
            for _ in range(max(3, args.repeats)):
                pairs["before"].append(whole_process(before_command, args.before.resolve()))
                pairs["now"].append(whole_process(command, REPO_ROOT))
            in_step: dict[str, list[list[float]]] = {"before": [], "now": []}
            for _ in range(max(3, args.repeats)):   # in turn, 3 steps each time
                for version, checkout in (("before", args.before.resolve()), ("now", REPO_ROOT)):
                    in_step[version] += labels_in_step(checkout, info.config_path, episode.episode_id, 3)
        zlib_command = [*command, *(item for setting in ZLIB for item in ("--set", setting))]
        zlib_cli = timed(lambda: subprocess.run(zlib_command, check=True, capture_output=True),
                         max(2, args.repeats // 2))

        rest = statistics.median(runs["with"]) - statistics.median(labels["with"])
        print(f"in-process, whole step, occlusion off:      {describe(runs['without'])}")
        print(f"in-process, whole step, occlusion on:       {describe(runs['with'])}")
        print(f"  of which the occlusion labels (no depth): {describe(labels['with'])}; "
              f"CPU {describe(labels['with, CPU'])}")
        print(f"  the rest of the step:                     median {rest:.3f} s")
        print(f"  occlusion labels / rest of the step:      {statistics.median(labels['with']) / rest:.2f}")
        if args.depth:
            print(f"in-process, whole step, every camera with depth: {describe(runs['depth'])}")
            print(f"  of which the occlusion labels (robot + decoding and testing 3 depth.mkv): "
                  f"{describe(labels['depth'])}")
            print(f"  decoding the 3 depth.mkv alone, frame by frame:  {describe(runs['decoding'])} "
                  "(the scene test on decoded frames: bench/bench_occlusion.py)")
        print(f"in-process, npz.engine zlib level 1, occlusion off: {describe(runs['zlib without'])}")
        print(f"in-process, npz.engine zlib level 1, occlusion on:  {describe(runs['zlib with'])}")
        print(f"  its tracks.npz arrays alone, to memory, by the step's writer: {describe(runs['write_npz'])}")
        print(f"  the same arrays by np.savez_compressed:                      {describe(runs['savez'])}")
        print(f"command line, whole step:        {describe(cli)} (interpreter start and imports included)")
        print(f"command line, npz.engine zlib 1: {describe(zlib_cli)}")
        if args.before:
            print(f"command line, whole process, in turn, medians of {len(pairs['now'])}: wall s, CPU s, peak MiB")
            for version, measured in pairs.items():
                wall, cpu, peak = (statistics.median(run[k] for run in measured) for k in range(3))
                print(f"  {version:6s} {wall:6.3f} {cpu:6.3f} {peak:6.0f}")
            ratio = statistics.median(b[1] / n[1] for b, n in zip(pairs["before"], pairs["now"]))
            print(f"  before / now, CPU s, pair by pair: median {ratio:.2f}x")
            print(f"occlusion labels inside the step, each checkout's own process in turn, medians of "
                  f"{len(in_step['now'])}: wall s, CPU s")
            for version, measured in in_step.items():
                print(f"  {version:6s} {statistics.median(run[0] for run in measured):6.3f} "
                      f"{statistics.median(run[1] for run in measured):6.3f}")
            ratio = statistics.median(b[1] / n[1] for b, n in zip(in_step["before"], in_step["now"]))
            print(f"  before / now, CPU s, pair by pair: median {ratio:.2f}x")
        total_bytes = sum(summary["files"].values())
        for name, size in summary["files"].items():
            print(f"bytes {name:15s} {size:>11,d}")
        print(f"bytes total           {total_bytes:>11,d}")
        with zipfile.ZipFile(output_dir / TRACKS.path) as archive:
            members = sorted(archive.infolist(), key=lambda m: -m.compress_size)
        print("largest tracks.npz arrays (stored / raw bytes):")
        for member in members[:8]:
            print(f"  {member.filename[:-4]:28s} {member.compress_size:>11,d} / {member.file_size:>11,d}")
        occlusion_bytes = sum(m.compress_size for m in members if m.filename.startswith("occlusion_"))
        print(f"  occlusion_<serial>, all cameras: {occlusion_bytes:,d} bytes stored")
        print(f"command line / in-process, fastest of each: {min(cli) / min(runs['with']):.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
