"""``python -m droid_pipeline.timing review``: review a run's timing.csv."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from pathlib import Path

from droid_pipeline.core.exit_codes import ExitCode
from droid_pipeline.execution.timing import (
    format_review,
    plot_review,
    read_rows,
    resolve_csv,
    review,
)


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m droid_pipeline.timing",
                                     description="Review a run's timing.csv.")
    sub = parser.add_subparsers(dest="command", required=True)
    rev = sub.add_parser("review", help="per-step statistics, failures, throughput, ETA and a PNG")
    rev.add_argument("target", metavar="RUN_DIR_OR_CSV")
    rev.add_argument("--planned", type=int, metavar="N",
                     help="episodes planned (default: lines of episodes.txt beside the CSV)")
    rev.add_argument("--png", type=Path, help="where to write the plot (default: timing.png beside the CSV)")
    rev.add_argument("--json", action="store_true", help="print the statistics as JSON")
    args = parser.parse_args(list(argv) if argv is not None else None)
    csv_path, planned = resolve_csv(args.target)
    if not csv_path.is_file():
        print(f"error: no timing CSV at {csv_path}", file=sys.stderr)
        return ExitCode.USAGE
    rows = read_rows(csv_path)
    stats = review(rows, args.planned if args.planned is not None else planned)
    png = args.png or csv_path.with_name("timing.png")
    plot_review(rows, png)
    stats["png"] = str(png)
    if args.json:
        print(json.dumps(stats, indent=2))
    else:
        print(format_review(stats, str(csv_path)))
        print(f"plot: {png}")
    return ExitCode.DONE

