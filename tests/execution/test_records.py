"""The run folder's records: files written by the previous version still read, the driver's plan
file reads back through the driver's own bash reader, and a worker starts without heavy imports."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from droid_pipeline.core.config import ConfigError
from droid_pipeline.execution.records import DriverExit, DriverRun, RunOptions, RunPlan
from droid_pipeline.execution.timing import COLUMNS, AttemptStatus, TimingRow, append_row

REPO = Path(__file__).resolve().parents[2]

# plan.json and run.json as the previous version wrote them (a metadata run, copied from a real
# run folder), and a SLURM run of the full pipeline with a redone episode, in that version's order.
OLD_PLAN = {
    "pipeline": "metadata", "schema_version": 2, "selected": 2, "skipped": {"finished": 0, "uploaded": 0},
    "redo": [], "todo": 2, "workers": 1, "gpus": [], "workers_per_gpu": 1, "upload": True,
    "repos": ["file:///tmp/old_records/hub"], "episodes_per_worker": None, "debug": False, "verbose": False}
OLD_RUN = {**OLD_PLAN, "run_root": "/tmp/old_records/runs", "output_root": "/tmp/old_records/out",
           "created": "2026-12-01T09:08:58.757+00:00"}
OLD_SLURM_PLAN = {
    "pipeline": "full", "schema_version": 2, "selected": 9, "skipped": {"finished": 3, "uploaded": 1},
    "redo": [{"episode_id": "AUTOLab+84bd5053+2023-08-18-12h-01m-10s", "state": "stale-schema",
              "reason": "out/x has schema 1, current is 2"}],
    "todo": 5, "workers": 4, "gpus": ["3", "7"], "workers_per_gpu": 2, "upload": False, "repos": [],
    "episodes_per_worker": 2, "debug": False, "verbose": True, "slurm_tasks": 2}
OLD_SLURM_RUN = {**OLD_SLURM_PLAN, "run_root": "/scratch/runs", "output_root": "/scratch/out",
                 "created": "2026-01-01T00:00:00.000+00:00"}


@pytest.mark.parametrize("old_plan, old_run", [(OLD_PLAN, OLD_RUN), (OLD_SLURM_PLAN, OLD_SLURM_RUN)])
def test_plan_and_run_json_of_the_previous_version_read_and_write_back_the_same(old_plan, old_run):
    plan = RunPlan.from_json(old_plan)
    options = RunOptions.from_json(old_run)
    assert options.plan == plan
    # Same keys, same order, same values: the file written now is the file written then.
    assert json.dumps(plan.to_json(), indent=2) == json.dumps(old_plan, indent=2)
    assert json.dumps(options.to_json(), indent=2) == json.dumps(old_run, indent=2)
    assert options.output_root == Path(old_run["output_root"])
    assert plan.spec.steps[-1] == "tracks" and plan.spec.name == old_plan["pipeline"]


def test_summary_of_a_run_folder_written_by_the_previous_version(tmp_path):
    run_dir = tmp_path / "metadata-20260101-000000-1"
    run_dir.mkdir()
    (run_dir / "plan.json").write_text(json.dumps({**OLD_PLAN, "skipped": {"finished": 4, "uploaded": 1}}))
    (run_dir / "run.json").write_text(json.dumps({**OLD_RUN, "output_root": str(tmp_path / "out")}))
    (tmp_path / "out" / ".work" / run_dir.name).mkdir(parents=True)
    ids = [f"LAB+0000abcd+2023-08-18-12h-00m-0{i}s" for i in range(3)]
    (run_dir / "todo.jsonl").write_text("".join(json.dumps({
        "episode_id": i, "relative_path": f"LAB/success/2023-08-18/ep{n}", "lab": "LAB", "outcome": "success",
        "date": "2023-08-18", "folder": f"ep{n}", "metadata_file": f"metadata_{i}.json", "serials": {},
        "has_h5": True, "svo": [], "mp4": [], "stereo_mp4": []}) + "\n" for n, i in enumerate(ids)))
    with open(run_dir / "timing.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(COLUMNS)
        for i, start, status, step in ((ids[0], "00:00:00", "done", ""), (ids[1], "00:00:10", "failed", "tracks")):
            values = {"episode_id": i, "pipeline": "metadata", "host": "h", "slot": "0", "gpu": "-",
                      "start_time": f"2026-01-01T{start}.000+00:00", "total_s": "10.000", "status": status,
                      "failed_step": step, "error": "ValueError: bad" if step else ""}
            writer.writerow([values.get(c, "") for c in COLUMNS])
    result = subprocess.run([sys.executable, "-m", "droid_pipeline.execution.runner", "summary",
                             "--run-dir", str(run_dir)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary == {"task": None, "to_run": 3, "done": 1, "skipped": {"finished": 4, "uploaded": 1},
                       "failed": 1, "failed_by_step": {"tracks": 1}, "interrupted": False, "not_run": 1,
                       "episodes_per_hour": 2 / 20 * 3600, "failed_episodes": [
                           {"episode_id": ids[1], "step": "tracks", "error": "ValueError: bad"}],
                       "exit_code": 1}
    assert "1 done, skipped 4 finished + 1 uploaded, 1 failed (tracks: 1), 1 not run of 3" in result.stdout
    assert not (tmp_path / "out" / ".work").exists()  # the run's empty work root is removed


def read_back_with_the_driver(plan_file: Path) -> dict[str, str]:
    """The plan file as the driver's read_plan fills its PLAN array."""
    script = ('source "$1"; PLAN_FILE="$2"; read_plan; '
              'for key in "${!PLAN[@]}"; do printf "%s\\0%s\\0" "${key}" "${PLAN[${key}]}"; done')
    driver = REPO / "droid_pipeline" / "execution" / "driver.sh"
    out = subprocess.run(["bash", "-c", script, "bash", str(driver), str(plan_file)],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    fields = out.split("\0")[:-1]
    return dict(zip(fields[::2], fields[1::2]))


def test_the_driver_reads_the_plan_file_back_as_written(tmp_path):
    run_dir = tmp_path / "runs with space" / "metadata-a=b-1"
    plan = DriverRun(run_dir=run_dir, run_root=run_dir.parent, todo_file=run_dir / "todo.task3.jsonl", todo=7,
                     workers=4, batch=2, gpus=("3", "7"), upload=True, debug=False, summary_task=3)
    (tmp_path / "plan").write_text(plan.to_plan_file())
    assert read_back_with_the_driver(tmp_path / "plan") == {
        "action": "run", "run_dir": str(run_dir), "run_root": str(run_dir.parent),
        "todo_file": str(run_dir / "todo.task3.jsonl"), "todo": "7", "workers": "4", "batch": "2",
        "gpus": "3,7", "upload": "1", "debug": "0", "summary_task": "3"}
    whole_run = DriverRun(run_dir=run_dir, run_root=run_dir.parent, todo_file=run_dir / "todo.jsonl", todo=0,
                          workers=1, batch=1, gpus=(), upload=False, debug=True)
    (tmp_path / "plan").write_text(whole_run.to_plan_file())
    read = read_back_with_the_driver(tmp_path / "plan")
    assert (read["gpus"], read["summary_task"], read["debug"], read["upload"]) == ("", "", "1", "0")
    (tmp_path / "plan").write_text(DriverExit(0).to_plan_file())
    assert read_back_with_the_driver(tmp_path / "plan") == {"action": "exit", "exit_code": "0"}
    with pytest.raises(ConfigError, match="line break"):
        DriverRun(run_dir=tmp_path / "a\nb", run_root=tmp_path, todo_file=tmp_path, todo=0, workers=1, batch=1,
                  gpus=(), upload=False, debug=False).to_plan_file()


def test_timing_row_writes_the_csv_columns(tmp_path):
    row = TimingRow(episode_id="E1", pipeline="full", host="node", slot=3, gpu="-",
                    start_time="2026-01-01T00:00:00.000+00:00", status=AttemptStatus.FAILED,
                    step_seconds={"intrinsics": 0.25, "depth": 1.5}, total_s=2.0, failed_step="depth",
                    error="RuntimeError: no\nZED")
    append_row(tmp_path / "timing.csv", row.to_row())
    with open(tmp_path / "timing.csv", newline="") as fh:
        (written,) = list(csv.DictReader(fh))
    assert written == {"episode_id": "E1", "pipeline": "full", "host": "node", "slot": "3", "gpu": "-",
                       "start_time": "2026-01-01T00:00:00.000+00:00", "fetch_s": "", "fetch_bytes": "",
                       "intrinsics_s": "0.250",
                       "depth_s": "1.500", "tracks_s": "", "publish_s": "", "total_s": "2.000",
                       "status": "failed", "failed_step": "depth", "error": "RuntimeError: no ZED"}
    with pytest.raises(ValueError, match="render"):
        TimingRow("E2", "full", "node", 0, "-", "", step_seconds={"render": 1.0}).to_row()


HEAVY = ("matplotlib", "huggingface_hub", "h5py", "cv2", "av", "scipy", "pyarrow", "tqdm")


@pytest.mark.parametrize("module", ["droid_pipeline.execution.runner", "droid_pipeline.cli.upload"])
def test_start_up_imports_no_heavy_library(module):
    # What a worker (or the uploader) imports before it does anything; the step modules a
    # worker preloads on purpose come after.
    code = f"import sys, {module}; print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.strip() == "[]"
