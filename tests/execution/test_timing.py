"""timing.csv: concurrent appends from real processes, torn lines, and the review's numbers."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from droid_pipeline.execution import timing

PYTHON = sys.executable
WRITER = """
import sys
from droid_pipeline.execution.timing import append_row
path, name, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
for i in range(count):
    append_row(path, {"episode_id": f"{name}-{i}", "pipeline": "metadata", "host": name,
                      "slot": 0, "start_time": "2026-01-01T00:00:00.000+00:00",
                      "intrinsics_s": 0.001 * i, "total_s": 1.0, "status": "done",
                      "error": "a, \\"quoted\\"\\nmulti-line error " + "x" * 2000})
"""


def test_concurrent_writers_give_one_header_and_every_row(tmp_path):
    path = tmp_path / "timing.csv"
    writers = [subprocess.Popen([PYTHON, "-c", WRITER, str(path), f"w{k}", "150"]) for k in range(6)]
    assert [w.wait(timeout=120) for w in writers] == [0] * 6
    lines = path.read_text().splitlines()
    assert lines[0] == ",".join(timing.COLUMNS)
    assert sum(line.startswith("episode_id,") for line in lines) == 1
    rows = list(csv.DictReader(path.open()))
    assert len(rows) == 900 == len(lines) - 1  # no row was split or merged
    assert {r["episode_id"] for r in rows} == {f"w{k}-{i}" for k in range(6) for i in range(150)}
    assert all(len(r["error"]) == timing.MAX_ERROR_CHARS and "\n" not in r["error"] for r in rows)
    assert rows[0]["intrinsics_s"].count(".") == 1 and len(rows[0]["intrinsics_s"].split(".")[1]) == 3


def test_reader_leaves_out_a_torn_last_line(tmp_path):
    path = tmp_path / "timing.csv"
    timing.append_row(path, {"episode_id": "a", "start_time": "2026-01-01T00:00:00.000+00:00",
                             "total_s": 1.0, "status": "done"})
    with open(path, "a") as fh:
        fh.write("b,metadata,host,0,-,2026-01-01T00:00:01.000+00:00,0.5")  # a writer mid-line
    assert [r["episode_id"] for r in timing.read_rows(path)] == ["a"]
    timing.append_row(path, {"episode_id": "c", "start_time": "2026-01-01T00:00:02.000+00:00",
                             "total_s": 1.0, "status": "failed", "failed_step": "tracks"})
    rows = timing.read_rows(path)  # the torn line is closed and skipped; c is intact
    assert [r["episode_id"] for r in rows] == ["a", "c"]


def _write_run(run_dir: Path, rng: np.random.Generator) -> list[dict]:
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    rows = []
    for i in range(40):
        start = t0 + timedelta(seconds=30 * i + float(rng.uniform(0, 5)))
        steps = {"intrinsics_s": float(rng.uniform(0.1, 0.5)), "depth_s": float(rng.uniform(10, 60)),
                 "tracks_s": float(rng.uniform(1, 4)), "publish_s": float(rng.uniform(0.01, 0.2))}
        status, failed_step = "done", ""
        if i % 10 == 3:
            status, failed_step = "failed", "depth"
            steps = {"intrinsics_s": steps["intrinsics_s"], "depth_s": 2.0}
        elif i == 17:
            status, failed_step = "failed", "intrinsics"
            steps = {"intrinsics_s": 0.05}
        steps = {k: round(v, 3) for k, v in steps.items()}
        row = {"episode_id": f"E{i:02d}", "pipeline": "full", "host": f"node{i % 2}", "slot": i % 3,
               "gpu": str(i % 3), "start_time": timing.utc_timestamp(start.timestamp()), **steps,
               "total_s": round(sum(steps.values()), 3), "status": status,
               "failed_step": failed_step, "error": f"cause {i}" if failed_step else ""}
        timing.append_row(run_dir / "timing.csv", row)
        rows.append(row)
    timing.append_row(run_dir / "timing.csv", {"episode_id": "E40", "start_time": rows[-1]["start_time"],
                                               "total_s": 1.0, "status": "interrupted"})
    (run_dir / "episodes.txt").write_text("".join(f"E{i:02d}\n" for i in range(50)))
    return rows


def test_review_numbers_match_the_csv_and_png_is_written(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    rows = _write_run(run_dir, np.random.default_rng(3))
    result = subprocess.run([PYTHON, "-m", "droid_pipeline.timing", "review", str(run_dir), "--json"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout)
    # Reference figures straight from the rows written above.
    for step in ("intrinsics", "depth", "tracks", "publish"):
        values = np.array([r[f"{step}_s"] for r in rows
                           if f"{step}_s" in r and r["failed_step"] != step])
        got = stats["steps"][step]
        assert got["count"] == len(values)
        assert got["mean"] == pytest.approx(values.mean(), abs=1e-9)
        assert got["p50"] == pytest.approx(np.median(values), abs=1e-9)
        assert got["p95"] == pytest.approx(np.percentile(values, 95), abs=1e-9)
        assert got["max"] == pytest.approx(values.max(), abs=1e-9)
    done_totals = np.array([r["total_s"] for r in rows if r["status"] == "done"])
    assert stats["steps"]["total"]["count"] == len(done_totals) == 35
    assert stats["failures"]["depth"]["count"] == 4
    assert stats["failures"]["intrinsics"] == {"count": 1, "examples": [{"episode_id": "E17",
                                                                           "error": "cause 17"}]}
    assert [e["episode_id"] for e in stats["failures"]["depth"]["examples"]] == ["E03", "E13", "E23"]
    starts = [datetime.fromisoformat(r["start_time"]).timestamp() for r in rows]
    span = max(s + r["total_s"] for s, r in zip(starts, rows)) - min(starts)
    assert stats["episodes_per_hour"] == pytest.approx(40 / span * 3600, rel=1e-9)
    node0 = [(s, r) for s, r in zip(starts, rows) if r["host"] == "node0" and r["slot"] == 0]
    span0 = max(s + r["total_s"] for s, r in node0) - min(s for s, _ in node0)
    assert stats["per_worker"]["node0/0"]["episodes"] == len(node0)
    assert stats["per_worker"]["node0/0"]["episodes_per_hour"] == pytest.approx(len(node0) / span0 * 3600)
    assert stats["interrupted"] == 1 and stats["remaining"] == 10 and stats["planned"] == 50
    assert stats["eta_s"] == pytest.approx(10 / stats["episodes_per_hour"] * 3600)
    png = Path(stats["png"])
    assert png == run_dir / "timing.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000

    text = subprocess.run([PYTHON, "-m", "droid_pipeline.timing", "review", str(run_dir / "timing.csv")],
                          capture_output=True, text=True, timeout=120, check=True).stdout
    depth = stats["steps"]["depth"]
    assert (f"{'depth':<12}{depth['count']:>7}{depth['mean']:>10.3f}{depth['p50']:>10.3f}"
            f"{depth['p95']:>10.3f}{depth['max']:>10.3f}") in text
    assert "E17: cause 17" in text and "remaining: 10 of 50 episodes" in text
    assert f"episodes per hour: {stats['episodes_per_hour']:.1f}" in text


def test_review_of_a_csv_still_being_written(tmp_path):
    path = tmp_path / "timing.csv"
    writer = subprocess.Popen([PYTHON, "-c", WRITER, str(path), "live", "400"])
    try:
        seen = []
        while writer.poll() is None:
            if path.exists():
                seen.append(len(timing.read_rows(path)))
                timing.review(timing.read_rows(path))
        assert writer.wait(timeout=120) == 0
    finally:
        writer.kill()
    assert seen == sorted(seen)
    assert len(timing.read_rows(path)) == 400
