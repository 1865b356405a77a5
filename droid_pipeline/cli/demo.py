"""Generate synthetic DROID episodes with ground truth: ``python -m droid_pipeline.demo --out DIR``.

Writes ``DIR/droid_raw`` (episodes in DROID's raw layout), ``DIR/calibration``,
``DIR/ground_truth`` and ``DIR/config.yaml`` (see :mod:`droid_pipeline.synthetic.generator`), then says
where everything went and how to point the pipeline at it.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Sequence

from droid_pipeline.core.exit_codes import ExitCode
from droid_pipeline.synthetic.generator import SyntheticError, generate_dataset


def parse_size(text: str) -> tuple[int, int]:
    """``"WxH"`` -> (W, H)."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"size must look like 320x180, got {text!r}")
    return int(match.group(1)), int(match.group(2))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m droid_pipeline.demo",
        description="Write synthetic DROID episodes (raw layout, calibration files, ground truth) "
                    "and a config.yaml pointing the pipeline at them.")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--episodes", type=int, default=3, help="number of episodes (default 3)")
    parser.add_argument("--frames", type=int, default=40, help="control steps per episode (default 40)")
    parser.add_argument("--size", type=parse_size, default=(320, 180),
                        help="video size WxH: a ZED mode or an exact downscale of one, e.g. 320x180 "
                             "(default) or 1280x720")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    try:
        info = generate_dataset(args.out, episodes=args.episodes, frames=args.frames, size=args.size,
                                seed=args.seed)
    except SyntheticError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    elapsed = time.perf_counter() - started
    width, height = args.size
    print(f"{len(info.episodes)} episodes of {args.frames} steps at {width}x{height} in {elapsed:.1f} s")
    for episode in info.episodes:
        roles = " ".join(f"{role}={serial}" for role, serial in episode.serials.items())
        print(f"  {episode.episode_id}  {episode.outcome:7}  {roles}")
        print(f"    {info.episode_dir(episode)}")
    print(f"raw episodes:        {info.droid_root}")
    print(f"cam2base extrinsics: {info.cam2base_path}")
    print(f"cam2cam extrinsics:  {info.cam2cam_path}")
    print(f"intrinsics:          {info.intrinsics_path}")
    print(f"ZED factory files:   {info.zed_calibration_dir}")
    print(f"ground truth:        {info.ground_truth_dir}")
    print(f"pipeline config:     {info.config_path}  (use --config {info.config_path})")
    return ExitCode.DONE

