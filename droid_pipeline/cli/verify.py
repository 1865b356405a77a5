"""``python -m droid_pipeline.verify``: check converted episodes against the output contract."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from droid_pipeline.core.exit_codes import ExitCode
from droid_pipeline.outputs.loader import HUB_PREFIX, LoadError, parse_hub_url
from droid_pipeline.outputs.sharded import FolderSource, ShardSource, folder_index, hub_source
from droid_pipeline.outputs.verify import (
    CHECKS,
    DEFAULT_TOLERANCE_PX,
    EPISODE_FILES,
    find_episode_dirs,
    format_table,
    verify_episode,
    verify_sharded,
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m droid_pipeline.verify",
        description="Check every episode under PATH (an episode folder, an output root or a downloaded "
                    "repo) against the output contract; exit 1 on any failure. A sharded repo (a folder "
                    "with index/<kind>.parquet, or hf://datasets/<user>/<name>) is streamed shard by shard "
                    "and every member is also checked against the index and its episode's manifest.",
        epilog="checks: " + ", ".join(CHECKS) + " (see docs/inspecting.md and docs/upload.md)")
    parser.add_argument("path", metavar="PATH", help="a folder, or hf://datasets/<user>/<name> (sharded)")
    parser.add_argument("--no-depth-decode", action="store_true",
                        help="check depth_meta.json only, without decoding depth.mkv against its checksum")
    parser.add_argument("--tolerance-px", type=float, default=DEFAULT_TOLERANCE_PX,
                        help=f"largest 2D reprojection difference (default {DEFAULT_TOLERANCE_PX} px)")
    parser.add_argument("--revision", help="branch, tag or commit of a Hub repo (default main)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    source = _sharded_source(args.path, args.revision)
    if isinstance(source, int):
        return source
    if source is not None:
        reports = verify_sharded(source, decode_depth=not args.no_depth_decode, tolerance_px=args.tolerance_px,
                                 progress=lambda items: tqdm(items, unit="shard", disable=args.no_progress,
                                                             file=sys.stderr))
        if not reports:
            print(f"error: no episode in the index of {args.path}", file=sys.stderr)
            return ExitCode.FAILED
    else:
        path = Path(args.path)
        folders = find_episode_dirs(path)
        if not folders:
            print(f"error: no episode under {path} (no {', '.join(EPISODE_FILES)})", file=sys.stderr)
            return ExitCode.FAILED
        reports = [verify_episode(folder, path, decode_depth=not args.no_depth_decode,
                                  tolerance_px=args.tolerance_px)
                   for folder in tqdm(folders, unit="episode", disable=args.no_progress, file=sys.stderr)]
    print(format_table(reports))
    failed = sum(not r.ok for r in reports)
    print(f"\n{len(reports) - failed} of {len(reports)} episodes pass" + (f", {failed} FAILED" if failed else ""))
    return ExitCode.FAILED if failed else ExitCode.DONE


def _sharded_source(path: str, revision: str | None) -> ShardSource | None | int:
    """The sharded repo at ``path``, None for a plain folder, or an exit code after an error."""
    if path.startswith(HUB_PREFIX):
        try:
            repo_type, repo_id, _ = parse_hub_url(path)
            source = hub_source(repo_type, repo_id, revision, path)
        except (LoadError, OSError, ValueError) as exc:  # huggingface_hub's HTTP errors are OSErrors
            print(f"error: {path}: {exc}", file=sys.stderr)
            return ExitCode.USAGE
        if source is None:
            print(f"error: {path} has no episode index (index/<kind>.parquet): download a files-layout "
                  "repo and verify the folder", file=sys.stderr)
            return ExitCode.USAGE
        return source
    if not Path(path).is_dir():
        print(f"error: {path} is not a folder", file=sys.stderr)
        return ExitCode.USAGE
    index = folder_index(Path(path))
    return None if index is None else FolderSource(Path(path), index)
