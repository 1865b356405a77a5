"""SLURM array submission of a driver run (``--slurm``).

The run folder is written first (config, episode list); the array has one task per shard
(``sbatch --array=0-(S-1)%P``). Each task runs the packaged driver (:data:`~droid_pipeline.execution.DRIVER`,
with this interpreter as ``DROID_PYTHON``, so no checkout is needed) with ``--slurm-task RUN_DIR``:
it takes episodes ``task, task+S, ...`` of the run's list, skips those finished meanwhile and
runs the local fan-out inside its allocation (workers = its CPUs, or its GPUs x
``workers_per_gpu`` for the zed depth backend). Partition, time, CPUs, GPUs, memory and extra
arguments come from the ``slurm`` config group.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

from droid_pipeline.core.atomic import write_text_atomic
from droid_pipeline.core.config import SlurmConfig
from droid_pipeline.execution import DRIVER


class SlurmError(RuntimeError):
    """sbatch is missing or refused the job."""


def sbatch_script(pipeline: str, run_dir: Path, settings: SlurmConfig, num_tasks: int) -> str:
    """The batch script of the array job (directives from ``settings``)."""
    directives = [f"--job-name=droid-{pipeline}",
                  f"--array=0-{num_tasks - 1}%{settings.max_parallel_tasks}",
                  f"--cpus-per-task={settings.cpus_per_task}",
                  f"--time={settings.time}",
                  f"--output={run_dir}/slurm/%A_%a.out"]
    if settings.gpus_per_task:
        directives.append(f"--gpus-per-task={settings.gpus_per_task}")
    if settings.partition:
        directives.append(f"--partition={settings.partition}")
    if settings.mem:
        directives.append(f"--mem={settings.mem}")
    directives += settings.extra_args
    lines = ["#!/usr/bin/env bash", *(f"#SBATCH {d}" for d in directives),
             f"# DROID {pipeline} pipeline: array task $SLURM_ARRAY_TASK_ID runs its shard of",
             f"# {run_dir}/episodes.txt with the local fan-out.",
             "set -euo pipefail",
             f"export DROID_PYTHON={shlex.quote(sys.executable)}",
             f"exec bash {shlex.quote(str(DRIVER))} {pipeline} --slurm-task {shlex.quote(str(run_dir))}"]
    return "\n".join(lines) + "\n"


def submit(pipeline: str, run_dir: Path, settings: SlurmConfig, num_tasks: int) -> str:
    """Write ``RUN_DIR/slurm/job.sbatch``, submit it and return the job id."""
    script = run_dir / "slurm" / "job.sbatch"
    write_text_atomic(script, sbatch_script(pipeline, run_dir, settings, num_tasks))
    try:
        result = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True,
                                text=True, timeout=120)
    except FileNotFoundError as exc:
        raise SlurmError("sbatch not found: --slurm needs the SLURM client tools") from exc
    if result.returncode != 0:
        raise SlurmError(f"sbatch refused {script}: {result.stderr.strip() or result.stdout.strip()}")
    job_id = result.stdout.strip().split(";")[0]
    write_text_atomic(run_dir / "slurm" / "job_id", job_id + "\n")
    return job_id
