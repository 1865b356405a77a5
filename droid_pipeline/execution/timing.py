"""The run's timing.csv (one row per episode attempt, safe with concurrent writers) and its review.

Every worker appends its row with :func:`append_row`, which holds an exclusive ``flock`` on the
file while it writes the header (first writer only) and the row in one ``write``; readers take a
shared lock and ignore an unterminated last line, so a CSV that is still being written reads
fine. ``python -m droid_pipeline.timing review RUN_DIR_OR_CSV`` prints per-step statistics,
failures by step, throughput and ETA, and writes a PNG beside the CSV.
"""

from __future__ import annotations

import csv
import enum
import fcntl
import io
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from droid_pipeline.core.atomic import append_locked
from droid_pipeline.execution.steps import STEP_NAMES

TIMING_NAME = "timing.csv"
EPISODE_LIST_NAME = "episodes.txt"
# The timed steps (execution/steps.py) and publish; fetch_bytes: what the fetch step copied.
STEPS = STEP_NAMES
COLUMNS = ("episode_id", "pipeline", "host", "slot", "gpu", "start_time",
           *(f"{step}_s" for step in STEPS), "fetch_bytes", "total_s", "status", "failed_step", "error")
_HEADER = ",".join(COLUMNS) + "\n"
MAX_ERROR_CHARS = 500
# Beside timing.csv, one row per attempt too: the peak resident memory of the episode process
# (its own high-water mark, from getrusage or from wait4 when it died), in MiB.
PEAK_RSS_NAME = "peak_rss.csv"
PEAK_RSS_COLUMNS = ("episode_id", "start_time", "status", "peak_rss_mib")


class AttemptStatus(enum.Enum):
    """How an episode attempt ended (``status`` column)."""

    DONE = "done"
    FAILED = "failed"
    INTERRUPTED = "interrupted"


STATUSES = tuple(status.value for status in AttemptStatus)


def utc_timestamp(seconds: float) -> str:
    """ISO 8601 UTC with milliseconds, as written in ``start_time``."""
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="milliseconds")


def parse_timestamp(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


@dataclass
class TimingRow:
    """One episode attempt, filled in by the worker as its steps run; one line of timing.csv."""

    episode_id: str
    pipeline: str
    host: str
    slot: int
    gpu: str  # "-" when the slot has none
    start_time: str
    status: AttemptStatus = AttemptStatus.DONE
    step_seconds: dict[str, float] = field(default_factory=dict)  # steps of STEPS that ran
    fetch_bytes: int | None = None  # bytes the fetch step copied (remote roots)
    total_s: float | None = None
    failed_step: str = ""
    error: str = ""
    peak_rss_mib: float | None = None  # written to peak_rss.csv, not timing.csv

    def to_row(self) -> dict[str, Any]:
        """The row as :func:`append_row` takes it."""
        unknown = set(self.step_seconds) - set(STEPS)
        if unknown:
            raise ValueError(f"unknown timing steps: {sorted(unknown)}")
        return {"episode_id": self.episode_id, "pipeline": self.pipeline, "host": self.host, "slot": self.slot,
                "gpu": self.gpu, "start_time": self.start_time,
                **{f"{step}_s": seconds for step, seconds in self.step_seconds.items()},
                "fetch_bytes": self.fetch_bytes, "total_s": self.total_s, "status": self.status.value,
                "failed_step": self.failed_step, "error": self.error}


def format_row(row: Mapping[str, Any]) -> str:
    """One CSV line: seconds with millisecond precision, errors on one bounded line."""
    values = []
    for column in COLUMNS:
        value = row.get(column)
        if value is None:
            value = ""
        elif isinstance(value, float):
            value = f"{value:.3f}"
        elif column == "error":
            value = " ".join(str(value).split())[:MAX_ERROR_CHARS]
        values.append(str(value))
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(values)
    return buffer.getvalue()


def create_csv(path: os.PathLike | str) -> None:
    """Start timing.csv with its header, so that a run with nothing to do still has one."""
    append_locked(path, "", _HEADER)


def append_row(path: os.PathLike | str, row: Mapping[str, Any]) -> None:
    """Append one episode's row to timing.csv (header written by the first writer)."""
    unknown = set(row) - set(COLUMNS)
    if unknown:
        raise ValueError(f"unknown timing columns: {sorted(unknown)}")
    append_locked(path, format_row(row), _HEADER)


def append_peak_rss(path: os.PathLike | str, row: TimingRow) -> None:
    """Append an attempt's peak RSS to peak_rss.csv (header written by the first writer)."""
    buffer = io.StringIO()
    peak = "" if row.peak_rss_mib is None else f"{row.peak_rss_mib:.1f}"
    csv.writer(buffer, lineterminator="\n").writerow([row.episode_id, row.start_time, row.status.value, peak])
    append_locked(path, buffer.getvalue(), ",".join(PEAK_RSS_COLUMNS) + "\n")


def read_peak_rss(path: os.PathLike | str) -> list[dict[str, str]]:
    """Complete rows of peak_rss.csv (a torn last line is left out)."""
    return [r for r in read_rows(path) if r.get("peak_rss_mib")]


def read_rows(path: os.PathLike | str) -> list[dict[str, str]]:
    """Complete rows of a timing CSV, possibly still being written (a torn last line is left out)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return []
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        with os.fdopen(os.dup(fd), "rb") as fh:
            data = fh.read()
    finally:
        os.close(fd)
    text = data[:data.rfind(b"\n") + 1].decode(errors="replace")
    rows = list(csv.DictReader(io.StringIO(text)))
    return [r for r in rows if r.get("status") in STATUSES and r.get("episode_id")]


def _percentile(ordered: Sequence[float], percent: float) -> float:
    """The ``percent`` percentile of sorted values, interpolated linearly between the closest ranks
    (NumPy's default method; no NumPy, so the driver's plan and summary processes do not load it)."""
    position = (len(ordered) - 1) * percent / 100.0
    below = math.floor(position)
    above = min(below + 1, len(ordered) - 1)
    return ordered[below] + (ordered[above] - ordered[below]) * (position - below)


def _seconds(value: str | None) -> float | None:
    return float(value) if value not in (None, "") else None


def review(rows: Sequence[dict[str, str]], planned: int | None = None,
           now: float | None = None) -> dict[str, Any]:
    """Statistics of timing rows (see module docstring); ``planned`` episodes give the ETA.

    Step statistics use the steps that completed (a failed row's failing step is left out);
    throughput counts finished attempts (done or failed) over the wall span from the first start
    to the last end; per worker, over that worker's own span.
    """
    finished = [r for r in rows if r["status"] in ("done", "failed")]
    steps: dict[str, dict[str, float]] = {}
    for step in (*STEPS, "total"):
        seconds = [_seconds(r.get(f"{step}_s")) for r in finished
                   if not (r["status"] == "failed" and r["failed_step"] == step)
                   and (step != "total" or r["status"] == "done")]
        values = sorted(v for v in seconds if v is not None)
        if values:
            steps[step] = {"count": len(values), "mean": math.fsum(values) / len(values),
                           "p50": _percentile(values, 50), "p95": _percentile(values, 95), "max": values[-1]}
    failures: dict[str, dict[str, Any]] = {}
    for r in finished:
        if r["status"] == "failed":
            entry = failures.setdefault(r["failed_step"] or "?", {"count": 0, "examples": []})
            entry["count"] += 1
            if len(entry["examples"]) < 3:
                entry["examples"].append({"episode_id": r["episode_id"], "error": r["error"]})
    overall = _rate(finished)
    per_worker = {}
    for key in sorted({(r["host"], r["slot"]) for r in finished}):
        mine = [r for r in finished if (r["host"], r["slot"]) == key]
        per_worker[f"{key[0]}/{key[1]}"] = {"episodes": len(mine), "episodes_per_hour": _rate(mine)}
    attempted = {r["episode_id"] for r in finished}
    remaining = None if planned is None else max(planned - len(attempted), 0)
    eta = None
    if remaining is not None and overall:
        eta = remaining / overall * 3600.0
    return {"rows": len(rows), "done": sum(r["status"] == "done" for r in rows),
            "failed": sum(r["status"] == "failed" for r in rows),
            "interrupted": sum(r["status"] == "interrupted" for r in rows),
            "steps": steps, "failures": failures, "fetch": fetch_totals(rows), "episodes_per_hour": overall,
            "per_worker": per_worker, "planned": planned, "remaining": remaining, "eta_s": eta}


def fetch_totals(rows: Sequence[Mapping[str, str]]) -> dict[str, float] | None:
    """Bytes the fetch step copied over the rows, its seconds and MB/s (None: nothing fetched)."""
    fetched = [r for r in rows if r.get("fetch_bytes")]
    if not fetched:
        return None
    total = sum(int(r["fetch_bytes"]) for r in fetched)
    seconds = sum(float(r.get("fetch_s") or 0.0) for r in fetched)
    return {"episodes": len(fetched), "bytes": total, "seconds": seconds,
            "mb_per_episode": total / len(fetched) / 1e6, "mb_per_s": total / seconds / 1e6 if seconds else 0.0}


def format_fetch(totals: dict[str, float] | None) -> str | None:
    """One line on the fetched bytes, as the review and the summary print it."""
    if totals is None:
        return None
    return (f"fetched: {totals['bytes'] / 1e6:.1f} MB for {int(totals['episodes'])} episodes "
            f"({totals['mb_per_episode']:.2f} MB each) in {totals['seconds']:.1f} s of fetching, "
            f"{totals['mb_per_s']:.1f} MB/s")


def _rate(rows: Sequence[dict[str, str]]) -> float | None:
    """Finished episodes per hour over the rows' wall span (None when the span is empty)."""
    if not rows:
        return None
    starts = [parse_timestamp(r["start_time"]) for r in rows]
    ends = [s + float(r["total_s"] or 0.0) for s, r in zip(starts, rows)]
    span = max(ends) - min(starts)
    return len(rows) / span * 3600.0 if span > 0 else None


def format_review(stats: dict[str, Any], source: str) -> str:
    """The review as text."""
    lines = [f"timing review of {source}: {stats['rows']} rows, {stats['done']} done, "
             f"{stats['failed']} failed, {stats['interrupted']} interrupted", "",
             f"{'step':<12}{'count':>7}{'mean_s':>10}{'p50_s':>10}{'p95_s':>10}{'max_s':>10}"]
    for step, s in stats["steps"].items():
        lines.append(f"{step:<12}{s['count']:>7}{s['mean']:>10.3f}{s['p50']:>10.3f}"
                     f"{s['p95']:>10.3f}{s['max']:>10.3f}")
    lines.append("")
    if stats["failures"]:
        lines.append("failures by step:")
        for step, entry in stats["failures"].items():
            lines.append(f"  {step}: {entry['count']}")
            for example in entry["examples"]:
                lines.append(f"    {example['episode_id']}: {example['error']}")
    else:
        lines.append("failures by step: none")
    lines.append("")
    fetch_line = format_fetch(stats.get("fetch"))
    if fetch_line:
        lines.append(fetch_line)
    lines.append(f"episodes per hour: {_fmt_rate(stats['episodes_per_hour'])}")
    for worker, entry in stats["per_worker"].items():
        lines.append(f"  worker {worker}: {entry['episodes']} episodes, "
                     f"{_fmt_rate(entry['episodes_per_hour'])} per hour")
    if stats["remaining"] is not None:
        eta = "n/a" if stats["eta_s"] is None else _fmt_duration(stats["eta_s"])
        lines.append(f"remaining: {stats['remaining']} of {stats['planned']} episodes, ETA {eta}")
    return "\n".join(lines)


def _fmt_rate(rate: float | None) -> str:
    return "n/a" if rate is None else f"{rate:.1f}"


def _fmt_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m{rest % 60:02d}s"


# Unit of the throughput plot's time axis: the first whose span covers the run.
_TIME_UNITS = (("seconds", 1.0, 120.0), ("minutes", 60.0, 7200.0), ("hours", 3600.0, float("inf")))


def plot_review(rows: Sequence[dict[str, str]], path: os.PathLike | str) -> None:
    """PNG with the per-step time distributions and the cumulative throughput over time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    finished = [r for r in rows if r["status"] in ("done", "failed")]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    data, labels = [], []
    for step in STEPS:
        values = [_seconds(r.get(f"{step}_s")) for r in finished
                  if not (r["status"] == "failed" and r["failed_step"] == step)]
        values = [v for v in values if v is not None]
        if values:
            data.append(values)
            labels.append(step)
    if data:
        left.boxplot(data, showfliers=True)
        left.set_xticks(range(1, len(labels) + 1), labels)
    left.set_ylabel("seconds per episode")
    left.set_title("per-step time")
    unit, scale = "hours", 3600.0
    if finished:
        ends = sorted(parse_timestamp(r["start_time"]) + float(r["total_s"] or 0.0) for r in finished)
        t0 = min(parse_timestamp(r["start_time"]) for r in finished)
        elapsed = [t - t0 for t in (t0, *ends)]
        unit, scale = next((u, s) for u, s, span in _TIME_UNITS if elapsed[-1] <= span)
        right.step([t / scale for t in elapsed], range(len(elapsed)), where="post")
    right.set_xlabel(f"{unit} since first start")
    right.set_ylabel("episodes finished")
    right.set_title("throughput")
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


def resolve_csv(target: os.PathLike | str) -> tuple[Path, int | None]:
    """The CSV of a run folder or a CSV path, and the run's planned episode count if known."""
    target = Path(target)
    csv_path = target / TIMING_NAME if target.is_dir() else target
    episode_list = csv_path.parent / EPISODE_LIST_NAME
    planned = None
    if episode_list.is_file():
        planned = sum(1 for line in episode_list.read_text().splitlines() if line.strip())
    return csv_path, planned
