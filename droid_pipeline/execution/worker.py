"""``runner worker``: run episodes one after the other, each in a process forked from this warm worker.

Imports are paid once; a crash or out-of-memory kill fails that episode only. Each episode runs
the steps in order, in-process, in a private work folder, each timed; logs to
``logs/<episode_id>.log``; is published with its manifest; appends its timing row. The slot
given by ``xargs --process-slot-var`` picks the GPU. SIGTERM/SIGINT discards the work in progress.
"""

from __future__ import annotations

import argparse
import faulthandler
import fcntl
import importlib
import json
import logging
import os
import shutil
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TextIO

from droid_pipeline.core.atomic import append_locked
from droid_pipeline.core.config import load_config
from droid_pipeline.core.errors import EpisodeError
from droid_pipeline.execution.records import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_WORKER_STOP,
    FAILED_NAME,
    WORKERS_LOCK,
    PipelineSpec,
    RunOptions,
    read_run_options,
)
from droid_pipeline.execution.timing import TIMING_NAME, AttemptStatus, TimingRow, append_row, utc_timestamp
from droid_pipeline.raw.discovery import Episode

# The name episode logs have always shown for the runner's own lines.
log = logging.getLogger("droid_pipeline.execution.runner")

SLOT_VAR = "DROID_WORKER_SLOT"
# Step name -> (module, function(config, episode, output_dir)); imported only when run.
STEP_FUNCTIONS = {
    "intrinsics": ("droid_pipeline.steps.intrinsics", "extract_intrinsics"),
    "depth": ("droid_pipeline.steps.depth", "extract_depth"),
    "tracks": ("droid_pipeline.steps.tracks", "generate_tracks"),
}
# Exit codes of an episode process, read by its worker.
_EPISODE_EXIT = {0: AttemptStatus.DONE, 1: AttemptStatus.FAILED, 2: AttemptStatus.INTERRUPTED}
_EXIT_OF_STATUS = {status: code for code, status in _EPISODE_EXIT.items()}


class Interrupted(BaseException):
    """SIGTERM or SIGINT reached a worker: stop, discard the work folder, publish nothing."""


class _Signals:
    """SIGTERM/SIGINT: raise :class:`Interrupted`, or only remember them while ``deferred``."""

    def __init__(self, deferred: bool) -> None:
        self.deferred = deferred
        self.pending = False

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.pending = True
        if not self.deferred:
            raise Interrupted(signal.Signals(signum).name)


@dataclass(frozen=True)
class WorkerSlot:
    """What a worker process knows: its run, its slot number and the GPU the slot is pinned to."""

    run_dir: Path
    options: RunOptions
    number: int
    gpu: str | None

    @property
    def spec(self) -> PipelineSpec:
        return self.options.plan.spec

    @property
    def debug(self) -> bool:
        return self.options.plan.debug

    def work_dir(self, episode: Episode) -> Path:
        if self.debug:
            return self.run_dir / "work" / episode.episode_id
        return self.options.output_root / ".work" / self.run_dir.name / episode.episode_id

    def log_path(self, episode: Episode) -> Path:
        return self.run_dir / "logs" / f"{episode.episode_id}.log"

    def new_row(self, episode: Episode, start: float) -> TimingRow:
        return TimingRow(episode_id=episode.episode_id, pipeline=self.spec.name, host=socket.gethostname(),
                         slot=self.number, gpu=self.gpu or "-", start_time=utc_timestamp(start))


def _setup_logging(log_path: Path, terminal: TextIO, debug: bool, verbose: bool) -> TextIO:
    """Log to the episode's file (and the terminal in debug runs); returns the open log file."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_file = open(log_path, "a", buffering=1)
    if not debug:
        # Libraries that print (FFmpeg, OpenCV) go to the episode log, not the shared terminal.
        os.dup2(log_file.fileno(), 1)
        os.dup2(log_file.fileno(), 2)
    handlers: list[logging.Handler] = [logging.StreamHandler(log_file)]
    if debug:
        handlers.append(logging.StreamHandler(terminal))
    logging.basicConfig(level=logging.INFO, handlers=handlers, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("droid_pipeline").setLevel(logging.DEBUG if debug or verbose else logging.INFO)
    logging.captureWarnings(True)
    faulthandler.enable(log_file)
    return log_file


def main(argv: Sequence[str]) -> int:
    """Run episodes one after the other, each in a forked process of this warm worker."""
    parser = argparse.ArgumentParser(prog="python -m droid_pipeline.execution.runner worker")
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--gpus", default="", help="comma list: slot S uses gpus[S // workers_per_gpu]")
    parser.add_argument("episodes", nargs="+", metavar="EPISODE_JSON", help="lines of the todo file")
    args = parser.parse_args(argv)
    signals = _Signals(deferred=True)  # the worker only stops between episodes
    signals.install()
    lock_fd = os.open(args.run_dir / WORKERS_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(lock_fd, fcntl.LOCK_SH)  # held until exit: the driver waits on this lock
    options = read_run_options(args.run_dir)
    stop = EXIT_INTERRUPTED if options.plan.debug else EXIT_WORKER_STOP
    slot_number = int(os.environ.get(SLOT_VAR, "0"))
    gpus = [g for g in args.gpus.split(",") if g]
    gpu = gpus[slot_number // options.plan.workers_per_gpu] if gpus else None
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    slot = WorkerSlot(args.run_dir, options, slot_number, gpu)
    _preload(slot.spec)
    failed = False
    for line in args.episodes:
        if signals.pending:
            return stop
        status = _attempt(slot, Episode.from_json(json.loads(line)), signals)
        if status is AttemptStatus.INTERRUPTED or signals.pending:
            return stop
        failed = failed or status is AttemptStatus.FAILED
    return EXIT_FAILED if failed else EXIT_OK


def _preload(spec: PipelineSpec) -> None:
    """Import the step modules once, so every forked episode process starts warm.

    A module that cannot be imported is left alone here: the episode process imports it again
    and records the error as that step's failure.
    """
    for step in spec.steps:
        try:
            importlib.import_module(STEP_FUNCTIONS[step][0])
        except Exception:  # noqa: BLE001 - reported per episode, see docstring
            continue


def _attempt(slot: WorkerSlot, episode: Episode, signals: _Signals) -> AttemptStatus:
    """Run one episode in a forked process; record it here if that process dies (OOM, crash)."""
    start = time.time()
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 3
        try:
            os.close(read_fd)
            code = _episode_process(slot, episode, start, write_fd, signals)
        finally:
            os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd) as pipe:
        started = [line.strip() for line in pipe]  # the steps it began, until it exits
    _, status = os.waitpid(pid, 0)
    if os.WIFEXITED(status) and os.WEXITSTATUS(status) in _EPISODE_EXIT:
        return _EPISODE_EXIT[os.WEXITSTATUS(status)]
    if os.WIFSIGNALED(status):
        name = signal.Signals(os.WTERMSIG(status)).name
        how = f"killed by {name}" + (" (out of memory?)" if name == "SIGKILL" else "")
    else:
        how = f"exited with {os.WEXITSTATUS(status)}"
    step = started[-1] if started else "setup"
    row = slot.new_row(episode, start)
    row.status = AttemptStatus.INTERRUPTED if signals.pending else AttemptStatus.FAILED
    row.failed_step = step
    row.error = f"episode process {pid} {how} during step {step}"
    row.total_s = time.time() - start
    if not slot.debug:
        shutil.rmtree(slot.work_dir(episode), ignore_errors=True)
    _record(slot, episode, row, sys.stderr)
    return row.status


def _episode_process(slot: WorkerSlot, episode: Episode, start: float, notify_fd: int,
                     inherited: _Signals) -> int:
    """Body of the forked episode process; returns its exit code (see ``_EPISODE_EXIT``)."""
    signals = _Signals(deferred=False)
    try:
        signals.install()
        if inherited.pending:  # a signal reached it before its own handlers were in place
            return _EXIT_OF_STATUS[AttemptStatus.INTERRUPTED]
        terminal = os.fdopen(os.dup(2), "w", buffering=1)
        _setup_logging(slot.log_path(episode), terminal, slot.debug, slot.options.plan.verbose)
    except Interrupted:
        return _EXIT_OF_STATUS[AttemptStatus.INTERRUPTED]

    def notify(step: str) -> None:
        os.write(notify_fd, f"{step}\n".encode())

    status = run_episode(slot, episode, start, signals, terminal, notify)
    logging.shutdown()
    terminal.flush()
    return _EXIT_OF_STATUS[status]


def run_episode(slot: WorkerSlot, episode: Episode, start: float, signals: _Signals, terminal: TextIO,
                notify: Callable[[str], None]) -> AttemptStatus:
    """Run the steps in a work folder, publish, record the attempt; return its status."""
    spec, debug = slot.spec, slot.debug
    row = slot.new_row(episode, start)
    work_dir = slot.work_dir(episode)
    step = "setup"
    t0 = time.perf_counter()
    try:
        log.info("episode %s (%s): %s pipeline, slot %d, gpu %s, process %d, work folder %s",
                 episode.episode_id, episode.relative_path, spec.name, slot.number, slot.gpu or "-",
                 os.getpid(), work_dir)
        log.debug("episode record: %s", json.dumps(episode.to_json()))
        log.debug("effective config: %s", slot.run_dir / "config.yaml")
        shutil.rmtree(work_dir, ignore_errors=True)
        work_dir.mkdir(parents=True)
        config = load_config([slot.run_dir / "config.yaml"])
        for step in spec.steps:
            notify(step)
            t0 = time.perf_counter()
            module, function = STEP_FUNCTIONS[step]
            getattr(importlib.import_module(module), function)(config, episode, work_dir)
            row.step_seconds[step] = time.perf_counter() - t0
            log.info("step %s: %.3f s", step, row.step_seconds[step])
        step = "publish"
        notify(step)
        t0 = time.perf_counter()
        _publish(slot, episode, work_dir, signals)
        row.step_seconds["publish"] = time.perf_counter() - t0
        log.info("published to %s", slot.options.output_root / episode.relative_path)
    except Interrupted as exc:
        row.status, row.failed_step, row.error = AttemptStatus.INTERRUPTED, step, f"interrupted by {exc}"
        log.warning("interrupted by %s during step %s; work folder discarded", exc, step)
    except Exception as exc:  # noqa: BLE001 - any failure fails this episode only
        if step != "setup":
            row.step_seconds[step] = time.perf_counter() - t0
        cause = exc.cause if isinstance(exc, EpisodeError) else f"{type(exc).__name__}: {exc}"
        row.status, row.failed_step, row.error = AttemptStatus.FAILED, step, cause
        log.error("step %s failed:\n%s", step, traceback.format_exc())
    signals.deferred = True  # the row is the record of this attempt: write it whole
    row.total_s = time.time() - start
    if row.status is not AttemptStatus.DONE and not debug:
        shutil.rmtree(work_dir, ignore_errors=True)
    _record(slot, episode, row, terminal)
    if debug:
        print(f"{row.status.value}: episode {episode.episode_id} in {row.total_s:.3f} s; "
              f"work folder kept: {work_dir}", file=terminal)
    return row.status


def _record(slot: WorkerSlot, episode: Episode, row: TimingRow, terminal: TextIO) -> None:
    """Append the timing row; a failure also goes to failed.txt and one line on the terminal."""
    append_row(slot.run_dir / TIMING_NAME, row.to_row())
    if row.status is AttemptStatus.FAILED:
        error = " ".join(row.error.split())
        append_locked(slot.run_dir / FAILED_NAME, f"{episode.episode_id}\t{row.failed_step}\t{error}\n")
        print(f"failed: episode {episode.episode_id}: step {row.failed_step}: {error} "
              f"(log: {slot.log_path(episode)})", file=terminal)


def _publish(slot: WorkerSlot, episode: Episode, work_dir: Path, signals: _Signals) -> None:
    """Publish atomically; a signal arriving from now on takes effect once the row is written."""
    from droid_pipeline.publish.staging import publish_episode

    output_root = slot.options.output_root
    source = work_dir
    if slot.debug:  # keep the debug work folder: publish a copy of it
        source = output_root / ".work" / f"debug-{os.getpid()}" / episode.episode_id
        shutil.rmtree(source, ignore_errors=True)
        shutil.copytree(work_dir, source)
    signals.deferred = True  # from here on the episode completes; a signal stops the worker after
    try:
        publish_episode(source, output_root, episode.relative_path, episode.episode_id,
                        slot.spec.name, slot.options.run_root)
    finally:
        if slot.debug:
            shutil.rmtree(source.parent, ignore_errors=True)
