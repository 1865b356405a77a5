"""What a driver run writes in its run folder and hands between its processes, as typed records.

- :class:`RunPlan` (``plan.json``): the selection, what was skipped or redone and the run's layout.
- :class:`RunOptions` (``run.json``): the plan and where the run writes; read by the workers, the
  SLURM array tasks and the summary.
- :class:`DriverRun` / :class:`DriverExit`: what the bash driver does next, written as the
  ``key=value`` plan file that ``driver.sh`` (``read_plan``) reads.
- ``todo.jsonl``: one :class:`~droid_pipeline.raw.discovery.Episode` record a line.

The JSON layouts are those of earlier versions, so older run folders still read.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from droid_pipeline.core.atomic import write_text_atomic
from droid_pipeline.core.config import ConfigError
from droid_pipeline.core.exit_codes import ExitCode
from droid_pipeline.execution.steps import pipeline_steps
from droid_pipeline.raw.discovery import Episode

if TYPE_CHECKING:
    from droid_pipeline.publish.staging import Pipeline

RUN_OPTIONS_NAME = "run.json"
PLAN_NAME = "plan.json"
FAILED_NAME = "failed.txt"
WORKERS_LOCK = ".workers.lock"
# Episodes to redo, or failed, listed on the terminal (plan.json and failed.txt hold them all).
REDO_SHOWN = 20


@dataclass(frozen=True)
class PipelineSpec:
    name: Pipeline  # as in the manifest
    driver: str
    steps: tuple[str, ...]


# Each pipeline's steps, in order, as execution/steps.py declares them (fetch runs for remote roots only).
PIPELINES: dict[str, PipelineSpec] = {
    "metadata": PipelineSpec("metadata", "run_pipeline_metadata_only.sh", pipeline_steps("metadata")),
    "full": PipelineSpec("full", "run_pipeline_compressed_depth.sh", pipeline_steps("full")),
}


def todo_name(task: int | None) -> str:
    """The todo file of the run (``None``) or of one SLURM array task."""
    return "todo.jsonl" if task is None else f"todo.task{task}.jsonl"


def write_todo(path: Path, episodes: Sequence[Episode]) -> None:
    write_text_atomic(path, "".join(json.dumps(e.to_json(), separators=(",", ":")) + "\n" for e in episodes))


def read_todo(path: Path) -> list[Episode]:
    return [Episode.from_json(json.loads(line)) for line in path.read_text().splitlines() if line]


@dataclass(frozen=True)
class Skipped:
    """Selected episodes left out: finished in ``output_root``, or uploaded (and maybe deleted)."""

    finished: int = 0
    uploaded: int = 0


@dataclass(frozen=True)
class Redo:
    """A selected episode run again, with the state that makes it so (``stale-schema``, ...)."""

    episode_id: str
    state: str
    reason: str


@dataclass(frozen=True)
class DiscoveryFailure:
    """A folder of the selection that discovery found but cannot run (no or bad metadata, an
    invalid id, a duplicated id, a broken link, an unreadable folder): where, which episode id
    if known, and why. Written to ``failed.txt`` with step ``discovery``; fails the run."""

    path: str        # relative to droid_root
    episode_id: str  # "" when unknown or invalid
    cause: str

    def failed_line(self) -> str:
        """Its ``failed.txt`` line: the folder (ids never hold a ``/``), ``discovery``, the cause."""
        return f"{self.path}\tdiscovery\t{' '.join(self.cause.split())}\n"


@dataclass(frozen=True)
class RunPlan:
    """The plan of a run (``plan.json``); ``slurm_tasks`` is set in ``--slurm`` runs only,
    ``discovery_failures`` is written only when there are some."""

    pipeline: Pipeline
    schema_version: int
    selected: int
    skipped: Skipped
    redo: tuple[Redo, ...]
    todo: int
    workers: int
    gpus: tuple[str, ...]
    workers_per_gpu: int
    upload: bool
    repos: tuple[str, ...]
    episodes_per_worker: int | None
    debug: bool
    verbose: bool
    slurm_tasks: int | None = None
    discovery_failures: tuple[DiscoveryFailure, ...] = ()

    @property
    def spec(self) -> PipelineSpec:
        return PIPELINES[self.pipeline]

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.update(redo=[dataclasses.asdict(r) for r in self.redo], gpus=list(self.gpus), repos=list(self.repos),
                    discovery_failures=[dataclasses.asdict(f) for f in self.discovery_failures])
        if self.slurm_tasks is None:
            del data["slurm_tasks"]
        if not self.discovery_failures:
            del data["discovery_failures"]
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RunPlan:
        if data["pipeline"] not in PIPELINES:
            raise ValueError(f"unknown pipeline {data['pipeline']!r}, expected one of {sorted(PIPELINES)}")
        return cls(pipeline=data["pipeline"], schema_version=int(data["schema_version"]),
                   selected=int(data["selected"]), skipped=Skipped(**data["skipped"]),
                   redo=tuple(Redo(**r) for r in data["redo"]), todo=int(data["todo"]),
                   workers=int(data["workers"]), gpus=tuple(data["gpus"]),
                   workers_per_gpu=int(data["workers_per_gpu"]), upload=bool(data["upload"]),
                   repos=tuple(data["repos"]), episodes_per_worker=data["episodes_per_worker"],
                   debug=bool(data["debug"]), verbose=bool(data["verbose"]),
                   slurm_tasks=data.get("slurm_tasks"),
                   discovery_failures=tuple(DiscoveryFailure(**f) for f in data.get("discovery_failures", ())))


@dataclass(frozen=True)
class RunOptions:
    """What every process of a run reads from ``run.json``: the plan, where outputs and the
    staging area (journal, ledger) live, and when the run folder was made."""

    plan: RunPlan
    run_root: Path
    output_root: Path
    created: str

    def to_json(self) -> dict[str, Any]:
        return {**self.plan.to_json(), "run_root": str(self.run_root), "output_root": str(self.output_root),
                "created": self.created}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RunOptions:
        return cls(plan=RunPlan.from_json(data), run_root=Path(data["run_root"]),
                   output_root=Path(data["output_root"]), created=data["created"])


def read_run_options(run_dir: Path) -> RunOptions:
    return RunOptions.from_json(json.loads((run_dir / RUN_OPTIONS_NAME).read_text()))


def read_run_plan(run_dir: Path) -> RunPlan:
    return RunPlan.from_json(json.loads((run_dir / PLAN_NAME).read_text()))


@dataclass(frozen=True)
class DriverRun:
    """``action=run``: fan ``todo_file`` out to ``workers`` processes of ``batch`` episodes each,
    start the uploader when ``upload``, then write the summary (of array task ``summary_task``
    under SLURM, else of the run)."""

    run_dir: Path
    run_root: Path
    todo_file: Path
    todo: int
    workers: int
    batch: int
    gpus: tuple[str, ...]
    upload: bool
    debug: bool
    summary_task: int | None = None

    def to_plan_file(self) -> str:
        return _key_values({
            "action": "run", "run_dir": self.run_dir, "run_root": self.run_root, "todo_file": self.todo_file,
            "todo": self.todo, "workers": self.workers, "batch": self.batch, "gpus": ",".join(self.gpus),
            "upload": int(self.upload), "debug": int(self.debug),
            "summary_task": "" if self.summary_task is None else self.summary_task})


@dataclass(frozen=True)
class DriverExit:
    """``action=exit``: the driver exits with ``exit_code`` (a dry run, nothing to submit, a
    submitted SLURM job)."""

    exit_code: int = ExitCode.DONE

    def to_plan_file(self) -> str:
        return _key_values({"action": "exit", "exit_code": self.exit_code})


DriverPlan = DriverRun | DriverExit


def _key_values(values: Mapping[str, object]) -> str:
    """One ``key=value`` line each, as bash's ``IFS='=' read -r key value`` reads them back."""
    lines = []
    for key, value in values.items():
        text = str(value)
        if "\n" in text or "\r" in text:
            raise ConfigError(f"{key}={text!r}: a line break cannot travel in the driver's plan file")
        lines.append(f"{key}={text}\n")
    return "".join(lines)
