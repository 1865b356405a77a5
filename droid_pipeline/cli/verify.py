"""``python -m droid_pipeline.verify``: check converted episodes against the output contract."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from droid_pipeline.outputs.verify import (
    CHECKS,
    DEFAULT_TOLERANCE_PX,
    EPISODE_FILES,
    find_episode_dirs,
    format_table,
    verify_episode,
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m droid_pipeline.verify",
        description="Check every episode under PATH (an episode folder, an output root or a downloaded "
                    "repo) against the output contract; exit 1 on any failure.",
        epilog="checks: " + ", ".join(CHECKS) + " (see docs/inspecting.md)")
    parser.add_argument("path", type=Path, metavar="PATH")
    parser.add_argument("--no-depth-decode", action="store_true",
                        help="check depth_meta.json only, without decoding depth.mkv against its checksum")
    parser.add_argument("--tolerance-px", type=float, default=DEFAULT_TOLERANCE_PX,
                        help=f"largest 2D reprojection difference (default {DEFAULT_TOLERANCE_PX} px)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if not args.path.is_dir():
        print(f"error: {args.path} is not a folder", file=sys.stderr)
        return 2
    folders = find_episode_dirs(args.path)
    if not folders:
        print(f"error: no episode under {args.path} (no {', '.join(EPISODE_FILES)})", file=sys.stderr)
        return 1
    reports = [verify_episode(folder, args.path, decode_depth=not args.no_depth_decode,
                              tolerance_px=args.tolerance_px)
               for folder in tqdm(folders, unit="episode", disable=args.no_progress, file=sys.stderr)]
    print(format_table(reports))
    failed = sum(not r.ok for r in reports)
    print(f"\n{len(reports) - failed} of {len(reports)} episodes pass" + (f", {failed} FAILED" if failed else ""))
    return 1 if failed else 0

