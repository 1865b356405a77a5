"""``extract_rgb_depth.py``: depth.mkv and depth_meta.json for one episode's cameras."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

from droid_pipeline.cli.common import add_config_args, add_step_args, step_request
from droid_pipeline.core.exit_codes import ExitCode
from droid_pipeline.steps.depth import BACKENDS, STEP, extract_depth


def main(argv: Sequence[str] | None = None) -> int:
    """Command line of extract_rgb_depth.py: depth of one episode, summary printed as JSON."""
    parser = argparse.ArgumentParser(
        prog="extract_rgb_depth.py",
        description="Write recordings/<serial>/depth.mkv (FFV1, uint16 mm, 0 = invalid, one frame "
                    "per control step) and depth_meta.json for each camera of one episode; with "
                    "export_rgb also rgb.mp4. Prints the per-camera summary as JSON.")
    add_config_args(parser, episode=True)
    parser.add_argument("--depth-backend", "--depth_backend", choices=BACKENDS,
                        help="zed: ZED SDK on a GPU (needs pyzed.sl); stereo: OpenCV SGBM on the "
                             "stereo MP4s, CPU only (default: the config's depth_backend)")
    add_step_args(parser, cameras=True)
    args = parser.parse_args(argv)
    request = step_request(args, STEP)
    summary = extract_depth(request.config, request.episode, request.output_dir,
                            backend=args.depth_backend, cameras=request.cameras)
    print(json.dumps(summary.to_json(), indent=2))
    return ExitCode.DONE
