"""``runner worker``: run episodes one after the other, each in a process forked from a warm worker.

Three processes per worker slot, each recording what the one below it cannot:

- the **supervisor** (the process xargs starts) holds the run's locks and forks the warm worker.
  As the child subreaper of its descendants it learns how the warm worker ended: when that one
  is killed or crashes, the supervisor records its episode in flight as killed, naming the
  signal, and forks a fresh warm worker for the rest of the batch;
- the **warm worker** imports the steps once and forks one episode process per episode; it
  records an episode whose process died (out-of-memory kill, crash), naming the signal;
- the **episode process** runs the steps in order, in-process, in a private work folder, each
  timed; logs to ``logs/<episode_id>.log``; publishes with the manifest; appends its timing row
  and its peak RSS (``peak_rss.csv``). It dies with its warm worker (``PR_SET_PDEATHSIG``), so a
  killed worker's episode never runs on unrecorded.

Each attempt gets exactly one timing row and one peak-RSS row: the process above an episode
process that ended abnormally writes each only when its file holds none for that attempt
(episode and start time), so a kill between the episode's own two appends leaves no gap. The slot given by
``xargs --process-slot-var`` picks the GPU. SIGTERM/SIGINT discards the work in progress.
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import faulthandler
import fcntl
import functools
import gc
import importlib
import json
import logging
import os
import resource
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

from droid_pipeline.core.atomic import append_locked, hold_folder
from droid_pipeline.core.config import Config, load_config
from droid_pipeline.core.errors import EpisodeError
from droid_pipeline.core.exit_codes import ExitCode
from droid_pipeline.execution.fetch import Fetched, Prefetcher, claim_scratch
from droid_pipeline.execution.records import (
    FAILED_NAME,
    WORKERS_LOCK,
    PipelineSpec,
    RunOptions,
    read_run_options,
)
from droid_pipeline.execution.steps import BY_NAME, PUBLISH
from droid_pipeline.execution.timing import (
    PEAK_RSS_NAME,
    TIMING_NAME,
    AttemptStatus,
    TimingRow,
    append_peak_rss,
    append_row,
    read_rows,
    utc_timestamp,
)
from droid_pipeline.publish.staging import WORK_DIR_NAME, WORK_LOCK_NAME
from droid_pipeline.raw.discovery import Episode
from droid_pipeline.raw.store import FetchError

# The name episode logs have always shown for the runner's own lines.
log = logging.getLogger("droid_pipeline.execution.runner")

SLOT_VAR = "DROID_WORKER_SLOT"
# Exit codes of an episode process, read by its worker: its row written, or not.
_EPISODE_EXIT: dict[int, AttemptStatus] = {
    ExitCode.EPISODE_DONE: AttemptStatus.DONE, ExitCode.EPISODE_FAILED: AttemptStatus.FAILED,
    ExitCode.EPISODE_INTERRUPTED: AttemptStatus.INTERRUPTED}
_UNRECORDED_EXIT: dict[int, AttemptStatus] = {
    ExitCode.EPISODE_DONE_UNRECORDED: AttemptStatus.DONE, ExitCode.EPISODE_FAILED_UNRECORDED: AttemptStatus.FAILED,
    ExitCode.EPISODE_INTERRUPTED_UNRECORDED: AttemptStatus.INTERRUPTED}
# prctl(2) options.
PR_SET_PDEATHSIG, PR_SET_CHILD_SUBREAPER = 1, 36
# A warm worker that dies with no episode in flight is replaced at most this many times in a row.
MAX_IDLE_RESTARTS = 2


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

    @property
    def work_root(self) -> Path:
        """``<output_root>/.work/<run>``: this run's work folders, locked while any of its processes lives."""
        return self.options.output_root / WORK_DIR_NAME / self.run_dir.name

    def work_dir(self, episode: Episode) -> Path:
        if self.debug:
            return self.run_dir / "work" / episode.episode_id
        return self.work_root / episode.episode_id

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
    """The supervisor: run a batch of episodes through warm workers (see module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m droid_pipeline.execution.runner worker")
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--gpus", default="", help="comma list: slot S uses gpus[S // workers_per_gpu]")
    parser.add_argument("episodes", nargs="+", metavar="EPISODE_JSON", help="lines of the todo file")
    args = parser.parse_args(argv)
    signals = _Signals(deferred=True)  # the supervisor and warm worker only stop between episodes
    signals.install()
    lock_fd = os.open(args.run_dir / WORKERS_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(lock_fd, fcntl.LOCK_SH)  # held until exit: the driver waits on this lock
    options = read_run_options(args.run_dir)
    slot_number = int(os.environ.get(SLOT_VAR, "0"))
    gpus = [g for g in args.gpus.split(",") if g]
    gpu = gpus[slot_number // options.plan.workers_per_gpu] if gpus else None
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    slot = WorkerSlot(args.run_dir, options, slot_number, gpu)
    hold_folder(slot.work_root, WORK_LOCK_NAME)  # inherited by every process below, held until the last exits
    episodes = [Episode.from_json(json.loads(line)) for line in args.episodes]
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    return _supervise(slot, episodes, signals)


def _supervise(slot: WorkerSlot, episodes: list[Episode], signals: _Signals) -> int:
    """Fork warm workers until every episode of the batch had its attempt (see module docstring)."""
    stop = ExitCode.INTERRUPTED if slot.debug else ExitCode.WORKER_STOP
    remaining = list(range(len(episodes)))
    failed, idle_restarts = False, 0
    while remaining:
        if signals.pending:
            return stop
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:
            code: int = ExitCode.CRASHED
            try:
                os.close(read_fd)
                code = _warm_worker(slot, [(i, episodes[i]) for i in remaining], signals, _Report(write_fd))
            except BaseException:  # noqa: BLE001 - shown, then the supervisor records the episode
                traceback.print_exc()
            finally:
                os._exit(code)
        os.close(write_fd)
        with os.fdopen(read_fd) as pipe:
            progress = _Progress.read(pipe)
        ended = _reap_all()
        status = ended.pop(pid)[0]
        if os.WIFEXITED(status) and os.WEXITSTATUS(status) in (ExitCode.DONE, ExitCode.FAILED):
            return ExitCode.FAILED if failed or os.WEXITSTATUS(status) == ExitCode.FAILED else ExitCode.DONE
        if os.WIFEXITED(status) and os.WEXITSTATUS(status) in (ExitCode.WORKER_STOP, ExitCode.INTERRUPTED):
            return os.WEXITSTATUS(status)
        how = _death(status)
        in_flight = progress.in_flight()
        if in_flight is not None:
            index, episode_pid = in_flight
            failed = _record_killed_worker(slot, episodes[index], progress, index, pid, how,
                                           ended.get(episode_pid), signals) or failed
            idle_restarts = 0
        else:
            idle_restarts += 1
            if idle_restarts > MAX_IDLE_RESTARTS:
                print(f"warm worker {pid} of slot {slot.number} {how} before starting an episode, "
                      f"{idle_restarts} times: {len(remaining)} episode(s) of its batch not run", file=sys.stderr)
                return ExitCode.FAILED
        done = progress.ended | ({in_flight[0]} if in_flight is not None else set())
        remaining = [i for i in remaining if i not in done]
    return ExitCode.FAILED if failed else ExitCode.DONE


@dataclass
class _Progress:
    """What a warm worker reported to its supervisor: the episodes it started (index -> episode
    process and start time), their last step and those it finished with."""

    started: dict[int, tuple[int, float]]
    steps: dict[int, str]
    ended: set[int]

    @classmethod
    def read(cls, pipe: TextIO) -> _Progress:
        progress = cls({}, {}, set())
        for line in pipe:
            kind, _, rest = line.rstrip("\n").partition("\t")
            index_text, _, value = rest.partition("\t")
            if not index_text.isdigit():
                continue
            index = int(index_text)
            pid, _, start = value.partition(" ")
            if kind == "start" and pid.isdigit():
                progress.started[index] = int(pid), float(start)
            elif kind == "step":
                progress.steps[index] = value
            elif kind == "end":
                progress.ended.add(index)
        return progress

    def in_flight(self) -> tuple[int, int] | None:
        """(index, episode process) of the episode started but not finished with, if any."""
        return next(((i, pid) for i, (pid, _) in self.started.items() if i not in self.ended), None)


class _Report:
    """The warm worker's line-based reports to its supervisor; a supervisor that is gone is ignored
    (the episodes still record themselves)."""

    def __init__(self, fd: int):
        self.fd: int | None = fd

    def send(self, kind: str, index: int, value: object = "") -> None:
        if self.fd is None:
            return
        try:
            os.write(self.fd, f"{kind}\t{index}\t{value}\n".encode())
        except BrokenPipeError:
            self.fd = None

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _reap_all() -> dict[int, tuple[int, resource.struct_rusage]]:
    """Wait for every child, including descendants a dead warm worker left to this subreaper:
    pid -> (wait status, resource usage)."""
    ended: dict[int, tuple[int, resource.struct_rusage]] = {}
    while True:
        try:
            pid, status, usage = os.wait4(-1, 0)
        except ChildProcessError:
            return ended
        ended[pid] = (status, usage)


def _death(status: int) -> str:
    """How a process ended, for an error message."""
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exited with {os.WEXITSTATUS(status)}"


def _peak_rss_mib(usage: resource.struct_rusage) -> float:
    return usage.ru_maxrss / 1024.0  # KiB on Linux


def _record_killed_worker(slot: WorkerSlot, episode: Episode, progress: _Progress, index: int, worker_pid: int,
                          how: str, episode_status: tuple[int, resource.struct_rusage] | None,
                          signals: _Signals) -> bool:
    """Record the episode a dead warm worker had in flight (its process died with it), unless it
    recorded itself first; True when recorded here."""
    step = progress.steps.get(index, "setup")
    episode_pid, start = progress.started[index]
    row = slot.new_row(episode, start)
    row.status = AttemptStatus.INTERRUPTED if signals.pending else AttemptStatus.FAILED
    row.failed_step = step
    row.total_s = time.time() - start
    row.error = f"worker process {worker_pid} {how} during step {step} (episode process {episode_pid} stopped with it)"
    if episode_status is not None:
        row.peak_rss_mib = _peak_rss_mib(episode_status[1])
    if _recorded_status(slot, row) is None and not slot.debug:
        shutil.rmtree(slot.work_dir(episode), ignore_errors=True)
    return _record_or_report(slot, episode, row, sys.stderr, missing_only=True) == "written"


def _rows_of_attempt(path: Path, row: TimingRow) -> list[dict[str, str]]:
    """The rows of ``row``'s attempt (episode and start time) in the CSV at ``path``."""
    return [r for r in read_rows(path) if r["episode_id"] == row.episode_id and r["start_time"] == row.start_time]


def _recorded_status(slot: WorkerSlot, row: TimingRow) -> AttemptStatus | None:
    """The status timing.csv already holds for ``row``'s attempt, None when it holds none."""
    found = _rows_of_attempt(slot.run_dir / TIMING_NAME, row)
    return AttemptStatus(found[0]["status"]) if found else None


def _warm_worker(slot: WorkerSlot, batch: list[tuple[int, Episode]], signals: _Signals, report: _Report) -> int:
    """Import the steps, then run the batch's episodes one after the other, each in a forked
    process; with a remote droid_root, fetch them ahead into this worker's scratch folder."""
    stop = ExitCode.INTERRUPTED if slot.debug else ExitCode.WORKER_STOP
    config = _readable_config(slot)
    _preload(slot, config)
    prefetcher, scratch = None, None
    if config is not None and config.remote_root:
        scratch, _lock_fd = claim_scratch(config)  # the lock lives as long as this process
        prefetcher = Prefetcher(config, slot.spec.name, [episode for _, episode in batch], scratch)
    failed = False
    try:
        for position, (index, episode) in enumerate(batch):
            if signals.pending:
                return stop
            fetched = prefetcher.take(position) if prefetcher is not None else None
            try:
                status = _attempt(slot, index, episode, signals, report, fetched)
            finally:
                if prefetcher is not None and not slot.debug:
                    prefetcher.release(position)
            if status is AttemptStatus.INTERRUPTED or signals.pending:
                return stop
            failed = failed or status is AttemptStatus.FAILED
    finally:
        if prefetcher is not None:
            prefetcher.close()
        if scratch is not None and not slot.debug:
            shutil.rmtree(scratch, ignore_errors=True)  # what fetches in flight leave, the next worker removes
    return ExitCode.FAILED if failed else ExitCode.DONE


def _readable_config(slot: WorkerSlot) -> Config | None:
    """The run's config; None when it cannot be read (each episode then records why)."""
    try:
        return _run_config(slot.run_dir)
    except Exception:  # noqa: BLE001 - reported per episode
        return None


def _preload(slot: WorkerSlot, config: Config | None) -> None:
    """Import the step modules and their libraries once and warm each step up with the run's
    config, so every forked episode process starts warm.

    What fails here is left alone: the episode process imports (or builds) it again and records
    the error as that step's failure.
    """
    for name in slot.spec.steps:
        step = BY_NAME[name]
        if config is not None and not step.applies(config):
            continue
        try:
            for library in step.libraries:
                importlib.import_module(library)
            importlib.import_module(step.module)
            warm_up = step.warm_up_function()
            if config is not None and warm_up is not None:
                warm_up(config)
        except Exception:  # noqa: BLE001 - reported per episode, see docstring
            continue
    gc.freeze()  # the forked episodes' collections skip what the imports built and leave its pages shared


@functools.cache
def _run_config(run_dir: Path) -> Config:
    """The run's effective config (``config.yaml``, written once by the plan): read by the warm
    worker, so that its episode processes inherit it instead of parsing it again (0.02-0.03 s)."""
    return load_config([run_dir / "config.yaml"])


def _prctl(option: int, value: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, value, 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"prctl({option}, {value}): {os.strerror(errno)}")


def _attempt(slot: WorkerSlot, index: int, episode: Episode, signals: _Signals, report: _Report,
             fetched: Fetched | FetchError | None = None) -> AttemptStatus:
    """Run one episode in a forked process; record it here if that process dies (OOM, crash)
    without having written its row. ``fetched``: its scratch copy (remote roots), or why none."""
    start = time.time()
    worker_pid = os.getpid()
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        code: int = ExitCode.CRASHED
        try:
            os.close(read_fd)
            report.close()
            _prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL))
            if os.getppid() != worker_pid:  # the warm worker died before the line above
                os.kill(os.getpid(), signal.SIGKILL)
            code = _episode_process(slot, episode, start, write_fd, signals, fetched)
        finally:
            os._exit(code)
    os.close(write_fd)
    report.send("start", index, f"{pid} {start}")
    started = []
    with os.fdopen(read_fd) as pipe:
        for line in pipe:  # the steps it began, until it exits
            started.append(line.strip())
            report.send("step", index, started[-1])
    _, status, usage = os.wait4(pid, 0)
    exit_code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else None
    if exit_code in _EPISODE_EXIT:
        report.send("end", index)
        return _EPISODE_EXIT[exit_code]
    step = started[-1] if started else "setup"
    row = slot.new_row(episode, start)
    if exit_code in _UNRECORDED_EXIT:
        row.status = _UNRECORDED_EXIT[exit_code]
        row.error = f"episode process {pid} could not write its own timing row (see its log)"
    else:
        how = _death(status) + (" (out of memory?)" if os.WIFSIGNALED(status)
                                and os.WTERMSIG(status) == signal.SIGKILL else "")
        row.status = AttemptStatus.INTERRUPTED if signals.pending else AttemptStatus.FAILED
        row.error = f"episode process {pid} {how} during step {step}"
    if row.status is not AttemptStatus.DONE:
        row.failed_step = step
    row.total_s = time.time() - start
    row.peak_rss_mib = _peak_rss_mib(usage)
    recorded = _recorded_status(slot, row)  # the episode process wrote its row, then died
    if recorded is None and row.status is not AttemptStatus.DONE and not slot.debug:
        shutil.rmtree(slot.work_dir(episode), ignore_errors=True)
    _record_or_report(slot, episode, row, sys.stderr, missing_only=True)
    report.send("end", index)
    return recorded or row.status


def _episode_process(slot: WorkerSlot, episode: Episode, start: float, notify_fd: int,
                     inherited: _Signals, fetched: Fetched | FetchError | None) -> int:
    """Body of the forked episode process; returns its exit code (see ``_EPISODE_EXIT``)."""
    signals = _Signals(deferred=False)

    def notify(step: str) -> None:
        try:
            os.write(notify_fd, f"{step}\n".encode())
        except BrokenPipeError:  # the warm worker is gone: die as its death signal would kill it
            os.kill(os.getpid(), signal.SIGKILL)

    terminal: TextIO = sys.stderr
    try:
        signals.install()
        if inherited.pending:  # a signal reached it before its own handlers were in place
            return ExitCode.EPISODE_INTERRUPTED
        terminal = os.fdopen(os.dup(2), "w", buffering=1)
        _setup_logging(slot.log_path(episode), terminal, slot.debug, slot.options.plan.verbose)
    except Interrupted:
        return ExitCode.EPISODE_INTERRUPTED
    except OSError as exc:  # no log (a full disk under run_root): record the cause at least
        row = slot.new_row(episode, start)
        row.status, row.failed_step, row.error = AttemptStatus.FAILED, "setup", f"cannot open the episode log: {exc}"
        row.total_s = time.time() - start
        return _finish(slot, episode, row, terminal)

    status, recorded = run_episode(slot, episode, start, signals, terminal, notify, fetched)
    logging.shutdown()
    terminal.flush()
    return _episode_exit(status, recorded)


def _finish(slot: WorkerSlot, episode: Episode, row: TimingRow, terminal: TextIO) -> int:
    """Record an attempt that ended before its steps; the exit code says whether the row is written."""
    row.peak_rss_mib = _own_peak_rss_mib()
    recorded = _record_or_report(slot, episode, row, terminal) == "written"
    return _episode_exit(row.status, recorded)


def _episode_exit(status: AttemptStatus, recorded: bool) -> int:
    """The episode process's exit code: its attempt's status, and whether it wrote its row."""
    codes = _EPISODE_EXIT if recorded else _UNRECORDED_EXIT
    return next(code for code, of in codes.items() if of is status)


def _own_peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_episode(slot: WorkerSlot, episode: Episode, start: float, signals: _Signals, terminal: TextIO,
                notify: Callable[[str], None], fetched: Fetched | FetchError | None = None
                ) -> tuple[AttemptStatus, bool]:
    """Run the steps in a work folder, publish, record the attempt; return its status and
    whether its row could be written. The fetch step (remote roots) takes the worker's
    ``fetched`` copy, and the steps after it read that copy as their droid_root."""
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
        config = _run_config(slot.run_dir)
        for step in spec.steps:
            if not BY_NAME[step].applies(config):
                continue
            notify(step)
            t0 = time.perf_counter()
            if step == "fetch":
                config = _use_fetched(config, episode, fetched, row)
                continue
            BY_NAME[step].function()(config, episode, work_dir)
            row.step_seconds[step] = time.perf_counter() - t0
            log.info("step %s: %.3f s", step, row.step_seconds[step])
        step = PUBLISH
        notify(step)
        t0 = time.perf_counter()
        _publish(slot, episode, work_dir, signals)
        row.step_seconds[PUBLISH] = time.perf_counter() - t0
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
    row.peak_rss_mib = _own_peak_rss_mib()
    log.info("peak RSS of the episode process: %.1f MiB", row.peak_rss_mib)
    recorded = _record_or_report(slot, episode, row, terminal) == "written"
    if debug:
        kept = f"; scratch copy kept: {fetched.root}" if isinstance(fetched, Fetched) else ""
        print(f"{row.status.value}: episode {episode.episode_id} in {row.total_s:.3f} s; "
              f"work folder kept: {work_dir}{kept}", file=terminal)
    return row.status, recorded


def _use_fetched(config: Config, episode: Episode, fetched: Fetched | FetchError | None, row: TimingRow) -> Config:
    """The fetch step in the episode process: record the copy the worker made and point the
    following steps at it, or fail with the cause (naming the object)."""
    if fetched is None:
        raise EpisodeError(episode.episode_id, "fetch",
                           "no scratch copy was made (the worker could not read the config)")
    if isinstance(fetched, FetchError):
        raise EpisodeError(episode.episode_id, "fetch", str(fetched))
    row.step_seconds["fetch"], row.fetch_bytes = fetched.seconds, fetched.bytes
    log.info("step fetch: %d objects, %d bytes in %.3f s, into %s", fetched.objects, fetched.bytes,
             fetched.seconds, fetched.root)
    return dataclasses.replace(config, droid_root=fetched.root)


def _record_or_report(slot: WorkerSlot, episode: Episode, row: TimingRow, terminal: TextIO, *,
                      missing_only: bool = False) -> str:
    """:func:`_record`; a row that cannot be written (a full disk under run_root) is reported on
    the terminal instead. Returns ``written``, ``present`` (``missing_only`` and the episode
    process recorded itself) or ``failed``."""
    try:
        return "written" if _record(slot, episode, row, terminal, missing_only=missing_only) else "present"
    except OSError as exc:
        log.error("cannot record the attempt of episode %s: %s", episode.episode_id, exc)
        print(f"error: episode {episode.episode_id}: {row.status.value}"
              + (f" at step {row.failed_step}: {row.error}" if row.error else "")
              + f"; its timing row could not be written: {exc}", file=terminal)
        return "failed"


def _record(slot: WorkerSlot, episode: Episode, row: TimingRow, terminal: TextIO, *,
            missing_only: bool = False) -> bool:
    """Append the peak RSS and the timing row; a failure also goes to failed.txt and one line on
    the terminal. With ``missing_only`` (the process above an episode process that died) each
    only where its file lacks it, the peak row then with the status the timing row holds; True
    when the timing row was written here."""
    peak_path, timing_path = slot.run_dir / PEAK_RSS_NAME, slot.run_dir / TIMING_NAME
    status = _recorded_status(slot, row) if missing_only else None
    if not (missing_only and _rows_of_attempt(peak_path, row)):
        append_peak_rss(peak_path, dataclasses.replace(row, status=status or row.status))
    if status is not None:
        return False
    append_row(timing_path, row.to_row())
    if row.status is AttemptStatus.FAILED:
        error = " ".join(row.error.split())
        append_locked(slot.run_dir / FAILED_NAME, f"{episode.episode_id}\t{row.failed_step}\t{error}\n")
        print(f"failed: episode {episode.episode_id}: step {row.failed_step}: {error} "
              f"(log: {slot.log_path(episode)})", file=terminal)
    return True


def _publish(slot: WorkerSlot, episode: Episode, work_dir: Path, signals: _Signals) -> None:
    """Publish atomically; a signal arriving from now on takes effect once the row is written."""
    from droid_pipeline.publish.staging import publish_episode

    output_root = slot.options.output_root
    source = work_dir
    if slot.debug:  # keep the debug work folder: publish a copy of it
        source = slot.work_root / "debug" / episode.episode_id
        shutil.rmtree(source, ignore_errors=True)
        shutil.copytree(work_dir, source)
    signals.deferred = True  # from here on the episode completes; a signal stops the worker after
    try:
        publish_episode(source, output_root, episode.relative_path, episode.episode_id,
                        slot.spec.name, slot.options.run_root)
    finally:
        if slot.debug:
            shutil.rmtree(source.parent, ignore_errors=True)
