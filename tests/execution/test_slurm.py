"""--slurm against a real one-node SLURM (Debian's slurm-wlm and munge, started by the fixture)."""

from __future__ import annotations

import collections
import csv
import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from droid_pipeline.publish.staging import finished_state
from droid_pipeline.synthetic.generator import generate_dataset

REPO = Path(__file__).resolve().parents[2]
METADATA = REPO / "run_pipeline_metadata_only.sh"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return generate_dataset(tmp_path_factory.mktemp("synthetic"), episodes=5, frames=12)


def slurm_args(dataset, work: Path) -> list[str]:
    return ["--config", str(dataset.config_path), "--out", str(work / "out"),
            "--set", f"run_root={work / 'runs'}", "--no-upload", "--slurm", "--episodes-per-worker", "2",
            "--set", "slurm.num_tasks=2", "--set", "slurm.cpus_per_task=1",
            "--set", "slurm.max_parallel_tasks=2", "--set", "slurm.time=00:20:00",
            "--set", "slurm.partition=debug"]


def test_slurm_dry_run_prints_the_sbatch_script(dataset, tmp_path):
    result = subprocess.run([str(METADATA), *slurm_args(dataset, tmp_path), "--dry-run",
                             "--set", "slurm.num_tasks=3", "--set", "slurm.mem=2G"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    script = result.stdout[result.stdout.index("#!/usr/bin/env bash"):]
    for directive in ("--array=0-2%2", "--cpus-per-task=1", "--time=00:20:00", "--partition=debug",
                      "--mem=2G", "--job-name=droid-metadata"):
        assert f"#SBATCH {directive}\n" in script
    assert "--gpus-per-task" not in script
    # The task runs the packaged driver (no checkout needed) with the interpreter that planned it.
    assert f"exec bash {REPO / 'droid_pipeline' / 'execution' / 'driver.sh'} metadata --slurm-task " in script
    python = re.search(r"^export DROID_PYTHON=(\S+)$", script, re.MULTILINE).group(1)
    assert os.access(python, os.X_OK), python
    assert not (tmp_path / "runs").exists()  # nothing written, nothing submitted


@pytest.mark.slow
def test_slurm_array_runs_every_shard_on_a_real_cluster(slurm_cluster, dataset, tmp_path):
    result = subprocess.run([str(METADATA), *slurm_args(dataset, tmp_path)], cwd=tmp_path,
                            env=slurm_cluster.env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr + slurm_cluster.logs()
    job_id = re.search(r"submitted SLURM job (\d+): 2 array task", result.stdout).group(1)
    run_dir = next((tmp_path / "runs").glob("metadata-*"))
    assert f"logs: {run_dir / 'slurm'}/{job_id}_<task>.out" in result.stdout
    slurm_cluster.wait_job(job_id)
    outputs = {t: (run_dir / "slurm" / f"{job_id}_{t}.out").read_text() for t in (0, 1)}
    assert slurm_cluster.job_states(job_id) == {"0": "COMPLETED", "1": "COMPLETED"}, \
        "\n".join(outputs.values()) + slurm_cluster.logs()
    ids = [e.episode_id for e in sorted(dataset.episodes, key=lambda e: e.relative_path)]
    for task in (0, 1):
        assert f"array task {task} of 2: {len(ids[task::2])} episodes in the shard" in outputs[task]
        shard = [json.loads(line)["episode_id"]
                 for line in (run_dir / f"todo.task{task}.jsonl").read_text().splitlines()]
        assert shard == ids[task::2]  # deterministic: every second episode of the run's list
        summary = json.loads((run_dir / f"summary.task{task}.json").read_text())
        assert summary["done"] == len(shard) and summary["exit_code"] == 0
    with open(run_dir / "timing.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert collections.Counter(r["episode_id"] for r in rows) == collections.Counter(ids)
    assert all(r["status"] == "done" for r in rows)
    for episode in dataset.episodes:
        assert finished_state(tmp_path / "out" / episode.relative_path)[0] == "finished"
