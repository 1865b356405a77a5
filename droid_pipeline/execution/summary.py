"""``runner summary``: done / skipped / failed by step and episodes per hour of a driver run.

Its exit code is the driver's: 0 all done, 1 anything failed or not run or a folder of the
selection failed discovery, 130 interrupted. The summary is printed first and then written to
the run folder, so a full disk under run_root still shows it (and says what it could not write).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from droid_pipeline.core.atomic import write_json_atomic, write_text_atomic
from droid_pipeline.core.exit_codes import ExitCode
from droid_pipeline.execution.records import (
    FAILED_NAME,
    REDO_SHOWN,
    DiscoveryFailure,
    Skipped,
    read_run_options,
    read_run_plan,
    read_todo,
    todo_name,
)
from droid_pipeline.execution.timing import (
    PEAK_RSS_NAME,
    TIMING_NAME,
    AttemptStatus,
    fetch_totals,
    format_fetch,
    parse_timestamp,
    read_peak_rss,
    read_rows,
)


@dataclass(frozen=True)
class FailedEpisode:
    episode_id: str
    step: str
    error: str


@dataclass(frozen=True)
class RunSummary:
    """Counts of one driver invocation's episodes (``summary.json``); under SLURM one array
    task's, which leave ``skipped`` to the run (``None``) and the discovery failures to task 0.
    ``discovery_failed`` and ``discovery_failures`` are written only when there are some, and
    ``peak_rss_mib`` (largest and median peak RSS of the attempts' episode processes, from
    peak_rss.csv) only when attempts recorded it."""

    task: str | None
    to_run: int
    done: int
    skipped: Skipped | None
    failed: int
    failed_by_step: dict[str, int]
    interrupted: bool
    not_run: int
    episodes_per_hour: float | None
    failed_episodes: tuple[FailedEpisode, ...] = ()
    discovery_failures: tuple[DiscoveryFailure, ...] = ()
    peak_rss_mib: dict[str, Any] | None = None
    fetch: dict[str, float] | None = None

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return ExitCode.INTERRUPTED
        return ExitCode.FAILED if self.failed or self.not_run or self.discovery_failures else ExitCode.DONE

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        del data["discovery_failures"], data["peak_rss_mib"], data["fetch"]
        data.update(skipped={} if self.skipped is None else dataclasses.asdict(self.skipped),
                    failed_episodes=[dataclasses.asdict(f) for f in self.failed_episodes])
        if self.discovery_failures:
            data.update(discovery_failed=len(self.discovery_failures),
                        discovery_failures=[dataclasses.asdict(f) for f in self.discovery_failures])
        if self.peak_rss_mib is not None:
            data["peak_rss_mib"] = self.peak_rss_mib
        if self.fetch is not None:
            data["fetch"] = self.fetch
        data["exit_code"] = self.exit_code
        return data


def summarize(run_dir: Path, task: str, interrupted: bool) -> RunSummary:
    """The summary of this driver invocation's episodes (one array task's under SLURM)."""
    todo_ids = [e.episode_id for e in read_todo(run_dir / todo_name(int(task) if task else None))]
    wanted = set(todo_ids)
    last: dict[str, dict[str, str]] = {}
    for row in read_rows(run_dir / TIMING_NAME):
        if row["episode_id"] in wanted:
            last[row["episode_id"]] = row
    done = [r for r in last.values() if r["status"] == AttemptStatus.DONE.value]
    failed = [r for r in last.values() if r["status"] == AttemptStatus.FAILED.value]
    by_step: dict[str, int] = {}
    for r in failed:
        by_step[r["failed_step"]] = by_step.get(r["failed_step"], 0) + 1
    attempts = done + failed
    rate = None
    if attempts:
        begin = min(parse_timestamp(r["start_time"]) for r in attempts)
        end = max(parse_timestamp(r["start_time"]) + float(r["total_s"]) for r in attempts)
        rate = len(attempts) / (end - begin) * 3600.0 if end > begin else None
    plan = read_run_plan(run_dir)
    peaks = sorted((float(r["peak_rss_mib"]), r["episode_id"]) for r in read_peak_rss(run_dir / PEAK_RSS_NAME)
                   if r["episode_id"] in wanted)
    peak_rss = None
    if peaks:
        peak_rss = {"max": peaks[-1][0], "episode_id": peaks[-1][1], "median": peaks[len(peaks) // 2][0],
                    "attempts": len(peaks)}
    return RunSummary(task=task or None, to_run=len(todo_ids), done=len(done),
                      skipped=None if task else plan.skipped, failed=len(failed),
                      failed_by_step=by_step, interrupted=interrupted,
                      not_run=len(todo_ids) - len(done) - len(failed), episodes_per_hour=rate,
                      failed_episodes=tuple(FailedEpisode(r["episode_id"], r["failed_step"], r["error"])
                                            for r in failed),
                      discovery_failures=plan.discovery_failures if task in ("", "0") else (),
                      peak_rss_mib=peak_rss,
                      fetch=fetch_totals([r for r in read_rows(run_dir / TIMING_NAME) if r["episode_id"] in wanted]))


def format_summary(summary: RunSummary, run_dir: Path) -> str:
    skipped = summary.skipped
    skip_text = (f", skipped {skipped.finished} finished + {skipped.uploaded} uploaded"
                 if skipped is not None else "")
    by_step = ", ".join(f"{step}: {n}" for step, n in sorted(summary.failed_by_step.items()))
    rate = summary.episodes_per_hour
    lines = [f"summary{' of array task ' + summary.task if summary.task else ''}: "
             f"{summary.done} done{skip_text}, {summary.failed} failed"
             + (f" ({by_step})" if by_step else "")
             + f", {summary.not_run} not run of {summary.to_run}"
             + (" (interrupted)" if summary.interrupted else ""),
             f"episodes per hour: {'n/a' if rate is None else f'{rate:.1f}'}"]
    peak = summary.peak_rss_mib
    if peak is not None:
        lines.append(f"peak RSS of an episode process: {peak['max']:.1f} MiB at most ({peak['episode_id']}), "
                     f"median {peak['median']:.1f} MiB over {peak['attempts']} attempt(s)")
    fetch_line = format_fetch(summary.fetch)
    if fetch_line:
        lines.append(fetch_line)
    failures = summary.discovery_failures
    if failures:
        lines.append(f"discovery: {len(failures)} folder(s) of the selection cannot be run (all in "
                     f"{run_dir / FAILED_NAME}, step discovery):")
        lines += [f"  {' '.join(f.cause.split())}" for f in failures[:REDO_SHOWN]]
        if len(failures) > REDO_SHOWN:
            lines.append(f"  ... and {len(failures) - REDO_SHOWN} more")
    if summary.failed:
        lines.append(f"failed episodes (all in {run_dir / FAILED_NAME}):")
        lines += [f"  {f.episode_id}: step {f.step}: {f.error}" for f in summary.failed_episodes[:REDO_SHOWN]]
        if summary.failed > REDO_SHOWN:
            lines.append(f"  ... and {summary.failed - REDO_SHOWN} more")
    lines.append(f"run folder: {run_dir}; review: python -m droid_pipeline.timing review {run_dir}")
    return "\n".join(lines)


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m droid_pipeline.execution.runner summary")
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--task", default="", help="SLURM array task id (its own summary files)")
    parser.add_argument("--interrupted", action="store_true")
    args = parser.parse_args(argv)
    summary = summarize(args.run_dir, args.task, args.interrupted)
    text = format_summary(summary, args.run_dir)
    print(text, flush=True)
    if not args.task:  # array tasks share the work root; no process of this run is left now
        from droid_pipeline.core.atomic import remove_unheld_folder
        from droid_pipeline.publish.staging import WORK_DIR_NAME, WORK_LOCK_NAME

        work = read_run_options(args.run_dir).output_root / WORK_DIR_NAME
        remove_unheld_folder(work / args.run_dir.name, WORK_LOCK_NAME)
        try:
            work.rmdir()
        except OSError:
            pass
    suffix = f".task{args.task}" if args.task else ""
    for path, write in ((args.run_dir / f"summary{suffix}.json", lambda p: write_json_atomic(p, summary.to_json())),
                        (args.run_dir / f"summary{suffix}.txt", lambda p: write_text_atomic(p, text + "\n"))):
        try:
            write(path)
        except OSError as exc:
            print(f"error: cannot write {path}: {exc.strerror or exc}", file=sys.stderr)
    return summary.exit_code
