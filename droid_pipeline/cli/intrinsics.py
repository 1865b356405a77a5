"""``extract_intrinsics_only.py``: rectified intrinsics of one episode's cameras."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from droid_pipeline.cli.common import add_config_args, add_step_args, step_request
from droid_pipeline.core.exit_codes import ExitCode
from droid_pipeline.formats.intrinsics import SOURCES
from droid_pipeline.steps.intrinsics import STEP, extract_intrinsics


def main(argv: Sequence[str] | None = None) -> int:
    """Command line of extract_intrinsics_only.py."""
    parser = argparse.ArgumentParser(
        prog="extract_intrinsics_only.py",
        description="Write recordings/<serial>/intrinsics.json (rectified left intrinsics) for each "
                    "camera of one episode, on CPU, from the first source that works.")
    add_config_args(parser, episode=True)
    add_step_args(parser, cameras=True)
    parser.add_argument("--source", action="append", choices=SOURCES, dest="sources",
                        help="use only this source (repeatable, tried in the order given); "
                             "default: the config's intrinsics_sources")
    args = parser.parse_args(argv)
    request = step_request(args, STEP)
    records = extract_intrinsics(request.config, request.episode, request.output_dir,
                                 cameras=request.cameras, sources=args.sources)
    for serial, record in records.items():
        print(f"{serial} ({record.camera}): {record.source} fx={record.fx:.3f} fy={record.fy:.3f} "
              f"cx={record.cx:.3f} cy={record.cy:.3f} {record.width}x{record.height}")
    return ExitCode.DONE
