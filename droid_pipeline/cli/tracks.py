"""``generate_tracks_and_metadata.py``: tracks, extrinsics and quality report of one episode."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

from droid_pipeline.cli.common import add_config_args, add_step_args, step_request
from droid_pipeline.steps.tracks import CLI_OUTPUTS, STEP, generate_tracks


def main(argv: Sequence[str] | None = None) -> int:
    """Command line of generate_tracks_and_metadata.py."""
    parser = argparse.ArgumentParser(
        prog="generate_tracks_and_metadata.py",
        description="Write one episode's gripper contact tracks, 2D projections, 1 mm normalized "
                    "flow, camera extrinsics and quality report (contract: docs/outputs.md).",
        epilog=CLI_OUTPUTS, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser, episode=True)
    add_step_args(parser)
    args = parser.parse_args(argv)
    request = step_request(args, STEP)
    summary = generate_tracks(request.config, request.episode, request.output_dir)
    print(json.dumps(summary))
    return 0
