"""Driver back end: ``python -m droid_pipeline.execution.runner {plan,worker,summary}``.

The packaged bash driver (``driver.sh``, which ``run_pipeline_metadata_only.sh`` and
``run_pipeline_compressed_depth.sh`` run) calls:

- ``plan`` (:mod:`~droid_pipeline.execution.plan`): select the episodes, write the run folder and
  hand the driver its ``key=value`` plan file; or print the plan, or submit a SLURM array.
- ``worker`` (:mod:`~droid_pipeline.execution.worker`): run a few episodes, each in a process
  forked from the warm worker, publish them and append their timing rows.
- ``summary`` (:mod:`~droid_pipeline.execution.summary`): the run's counts; its exit code is the
  driver's (:class:`~droid_pipeline.core.exit_codes.ExitCode`: done, failed when anything failed
  or was not run, interrupted).

Run folder (``<run_root>/<pipeline>-<UTC time>-<pid>/``): ``config.yaml`` (effective config),
``run.json`` (options), ``plan.json`` (selection and why episodes were skipped or redone),
``episodes.txt`` (ids to run), ``todo.jsonl`` (their records, fed to the workers),
``logs/``, ``timing.csv``, ``failed.txt``, ``summary.txt``/``summary.json`` (one per array task
under SLURM: ``summary.task<I>.*``) and ``slurm/``; :mod:`~droid_pipeline.execution.records`
types them.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from droid_pipeline.core.config import ConfigError
from droid_pipeline.core.exit_codes import ExitCode
from droid_pipeline.execution import plan, summary, worker
from droid_pipeline.execution.slurm import SlurmError
from droid_pipeline.raw.discovery import DiscoveryError

COMMANDS: dict[str, Callable[[Sequence[str]], int]] = {
    "plan": plan.main, "worker": worker.main, "summary": summary.main}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: python -m droid_pipeline.execution.runner {{{','.join(COMMANDS)}}} ...", file=sys.stderr)
        return ExitCode.USAGE
    try:
        return COMMANDS[argv[0]](argv[1:])
    except (ConfigError, DiscoveryError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    except SlurmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return ExitCode.FAILED
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
