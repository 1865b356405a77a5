"""``python -m droid_pipeline.episodes``: scan droid_root, refresh the episode index, print the selection."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from droid_pipeline.cli.common import add_config_args, config_from_args
from droid_pipeline.core.exit_codes import ExitCode
from droid_pipeline.raw.discovery import (
    OUTCOMES,
    DiscoveryError,
    discover,
    format_table,
    read_id_file,
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m droid_pipeline.episodes",
        description="Scan droid_root (a folder, or list a gs:// root / read its episode_paths_file), refresh "
                    "the cached episode index and print the selection.")
    add_config_args(parser)
    parser.add_argument("--episode_id", "--episode-id", action="append", metavar="ID",
                        help="select this id (repeatable)")
    parser.add_argument("--episodes", metavar="FILE", help="select the ids listed in FILE")
    parser.add_argument("--lab", action="append", default=None, help="only this lab (repeatable)")
    parser.add_argument("--outcome", choices=[*OUTCOMES, "all"], action="append",
                        help="only this outcome (repeatable; default: the config's outcomes)")
    parser.add_argument("--limit", type=int, help="at most this many episodes")
    parser.add_argument("--rescan", action="store_true", help="ignore the cached index")
    parser.add_argument("--json", action="store_true", help="print the selection as JSON lines")
    args = parser.parse_args(argv)
    config = config_from_args(args)
    ids = list(args.episode_id or [])
    if args.episodes:
        ids.extend(read_id_file(args.episodes))
    outcomes = config.outcomes if not args.outcome else (
        list(OUTCOMES) if "all" in args.outcome else args.outcome)
    try:
        index = discover(config, ids=ids or None, labs=args.lab or config.labs, outcomes=outcomes,
                         limit=args.limit, rescan=args.rescan)
        chosen = index.select(episode_ids=ids or None, labs=args.lab or config.labs,
                              outcomes=outcomes, limit=args.limit)
    except DiscoveryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    if args.json:
        for episode in chosen:
            print(json.dumps(episode.to_json()))
    else:
        print(format_table(chosen))
        print(f"\n{len(chosen)} selected of {len(index.episodes)} episodes under {index.droid_root}"
              f" (index: {config.index_path})")
    for problem in index.problems:
        print(f"warning: {problem['path']}: {problem['problem']}", file=sys.stderr)
    return ExitCode.DONE

