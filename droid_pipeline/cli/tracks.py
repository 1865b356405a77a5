"""``generate_tracks_and_metadata.py``: tracks, extrinsics and quality report of one episode."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

from droid_pipeline.cli.common import add_config_args, add_step_args, step_request
from droid_pipeline.core.exit_codes import ExitCode
from droid_pipeline.core.schema import EPISODE_LAYOUT, help_text
from droid_pipeline.steps.tracks import OUTPUTS, STEP, generate_tracks

EPILOG = f"""\
outputs, in --output-dir (default: output_root/{EPISODE_LAYOUT}/).
npz files load with numpy.load(path, allow_pickle=False); shapes in T steps, N points,
M normalized samples, C cameras with 2D tracks, K cameras of the episode:
{help_text(OUTPUTS)}

reads: the raw episode under droid_root (metadata json, trajectory.h5, MP4 frame counts), the
published calibration files (cam2base_extrinsics_paths, cam2cam_extrinsics_path; indexed once
under output_root/.calibration_index), <output-dir>/recordings/<serial>/intrinsics.json
written by extract_intrinsics_only.py (docs/calibration.md) and, for the occlusion labels'
scene test, <output-dir>/recordings/<serial>/depth.mkv where the depth step wrote one
(docs/occlusion.md).
"""


def main(argv: Sequence[str] | None = None) -> int:
    """Command line of generate_tracks_and_metadata.py."""
    parser = argparse.ArgumentParser(
        prog="generate_tracks_and_metadata.py",
        description="Write one episode's gripper contact tracks, 2D projections, 1 mm normalized "
                    "flow, camera extrinsics and quality report (contract: docs/outputs.md).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser, episode=True)
    add_step_args(parser)
    args = parser.parse_args(argv)
    request = step_request(args, STEP)
    summary = generate_tracks(request.config, request.episode, request.output_dir)
    print(json.dumps(summary))
    return ExitCode.DONE
