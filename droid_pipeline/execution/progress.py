"""Live progress line of a driver run, from its timing.csv: done / failed / remaining, rate, ETA.

``python -m droid_pipeline.execution.progress --run-dir RUN --todo FILE`` polls the CSV (readable while
workers append to it) and draws a tqdm bar on stderr; it draws nothing when stderr is not a
terminal. It counts only the episodes of its todo file, so array tasks sharing one CSV each
see their own. SIGTERM (sent by the driver when the fan-out ends) closes the bar and exits.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from droid_pipeline.core.exit_codes import ExitCode
from droid_pipeline.execution.records import read_todo
from droid_pipeline.execution.timing import TIMING_NAME, read_rows


def counts(run_dir: Path, wanted: set[str]) -> tuple[int, int]:
    """(done, failed) among ``wanted`` episodes, from the last row of each."""
    last = {r["episode_id"]: r["status"] for r in read_rows(run_dir / TIMING_NAME)
            if r["episode_id"] in wanted}
    statuses = list(last.values())
    return statuses.count("done"), statuses.count("failed")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m droid_pipeline.execution.progress")
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--todo", type=Path, required=True, help="the run's todo.jsonl")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between polls")
    args = parser.parse_args(argv)
    wanted = {episode.episode_id for episode in read_todo(args.todo)}
    stop = False

    def on_term(signum: int, frame: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    started = time.monotonic()
    with tqdm(total=len(wanted), unit="ep", disable=None, file=sys.stderr, dynamic_ncols=True,
              bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}{postfix}]") as bar:
        while True:
            done, failed = counts(args.run_dir, wanted)
            finished = done + failed
            if finished > bar.n:
                bar.update(finished - bar.n)
            hours = (time.monotonic() - started) / 3600.0
            rate = f"{finished / hours:.0f}/h" if finished and hours > 0 else "-/h"
            bar.set_postfix_str(f"done {done} failed {failed} remaining {len(wanted) - finished} "
                                f"{rate}", refresh=True)
            if stop or finished >= len(wanted):
                break
            end = time.monotonic() + args.interval
            while not stop and time.monotonic() < end:
                time.sleep(0.1)
    return ExitCode.DONE


if __name__ == "__main__":
    sys.exit(main())
