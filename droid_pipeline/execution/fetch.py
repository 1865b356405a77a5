"""The fetch step: copy a remote episode's needed files into node-local scratch, ahead of compute.

Each warm worker owns ``<scratch>/droid-fetch/<host>-<pid>/`` (``scratch`` is config
``scratch_root``: ``scratch_dir``, else ``$TMPDIR`` or the system temporary folder), locked by
``.lock`` while the worker (or an episode process it forked) lives; a worker starting removes the
folders whose lock nobody holds, i.e. what killed workers left. An episode is copied into
``<episode id>.partial/<relative path>/`` and renamed to ``<episode id>/`` once every object passed
its size and checksum check, so nothing partial is ever read; the steps then read it as a local
``droid_root``.

:class:`Prefetcher` overlaps this with compute: while the worker runs episode *i*, threads fetch
episodes *i+1 .. i+prefetch_episodes*. Fetches reserve their bytes in episode order against
``scratch_max_bytes`` and wait while the budget is spent; an episode larger than the budget
fails. The scratch copy is removed when its episode ends (kept in a debug run).
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from droid_pipeline.core.atomic import hold_folder, remove_unheld_folders
from droid_pipeline.core.config import Config
from droid_pipeline.execution.steps import files_to_fetch
from droid_pipeline.raw.discovery import Episode
from droid_pipeline.raw.store import FetchError, ObjectInfo, RemoteRoot

SCRATCH_DIR_NAME = "droid-fetch"
LOCK_NAME = ".lock"


@dataclass(frozen=True)
class Fetched:
    """A verified scratch copy: ``root`` / relative path is the episode's folder."""

    root: Path
    bytes: int
    objects: int
    seconds: float


def scratch_base(config: Config) -> Path:
    return config.scratch_root / SCRATCH_DIR_NAME


def claim_scratch(config: Config) -> tuple[Path, int]:
    """This worker's scratch folder, held (the descriptor stays open for the worker's life),
    after removing the folders of workers that are gone."""
    base = scratch_base(config)
    remove_unheld_folders(base, LOCK_NAME)
    own = base / f"{socket.gethostname()}-{os.getpid()}"
    shutil.rmtree(own, ignore_errors=True)  # a gone process's of the same id
    return own, hold_folder(own, LOCK_NAME)


def fetch_step(config: Config, pipeline: str, episode: Episode, dest: Path, remote: RemoteRoot,
               reserve: _Reservation | None = None) -> Fetched:
    """Copy the episode's files that ``pipeline`` reads into ``dest`` (see module docstring);
    ``reserve`` takes the bytes from the scratch budget before anything is written."""
    t0 = time.perf_counter()
    names = files_to_fetch(pipeline, episode, config)
    infos: dict[str, ObjectInfo] = {name: remote.info(f"{episode.relative_path}/{name}") for name in names}
    total = sum(info.size for info in infos.values())
    if reserve is not None:
        reserve.take(total)
    partial = dest.with_name(dest.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    folder = partial / episode.relative_path
    try:
        for name, info in infos.items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            remote.download(info, f"{episode.relative_path}/{name}", folder / name)
        os.rename(partial, dest)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        if reserve is not None:
            reserve.budget.give_back(total)
        raise
    return Fetched(dest, total, len(infos), time.perf_counter() - t0)


class _Budget:
    """Scratch bytes, reserved in episode order (position ``turn`` reserves next, once every
    earlier one reserved or failed), never more than ``limit`` at once."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.turn = 0
        self.passed: set[int] = set()
        self.closed = False
        self.cond = threading.Condition()

    def reserve(self, position: int, size: int, episode: Episode) -> None:
        with self.cond:
            if size > self.limit:
                raise FetchError(f"episode {episode.episode_id} needs {size} bytes of scratch, more than "
                                 f"scratch_max_bytes={self.limit}")
            self.cond.wait_for(lambda: (self.turn == position and self.used + size <= self.limit) or self.closed)
            self.used += size

    def pass_turn(self, position: int) -> None:
        """Position ``position`` reserved, or never will: the next one may."""
        with self.cond:
            self.passed.add(position)
            while self.turn in self.passed:
                self.turn += 1
            self.cond.notify_all()

    def give_back(self, size: int) -> None:
        with self.cond:
            self.used -= size
            self.cond.notify_all()

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()


@dataclass
class _Reservation:
    """An episode's claim on the budget, at its position in the batch."""

    budget: _Budget
    position: int
    episode: Episode

    def take(self, size: int) -> None:
        try:
            self.budget.reserve(self.position, size, self.episode)
        finally:
            self.budget.pass_turn(self.position)


class Prefetcher:
    """Fetch a worker's batch in order, up to ``config.prefetch_episodes`` ahead of the episode
    taken (see module docstring)."""

    def __init__(self, config: Config, pipeline: str, episodes: list[Episode], scratch: Path) -> None:
        self.config, self.pipeline, self.episodes, self.scratch = config, pipeline, episodes, scratch
        assert isinstance(config.droid_root, str)
        self.remote = RemoteRoot(config.droid_root, config.storage_token)
        self.ahead = config.prefetch_episodes
        self.budget = _Budget(config.scratch_max_bytes)
        self.pool = ThreadPoolExecutor(self.ahead + 1, thread_name_prefix="prefetch")
        self.futures: dict[int, Future[Fetched]] = {}
        self.sizes: dict[int, int] = {}

    def _fetch(self, position: int) -> Fetched:
        episode = self.episodes[position]
        try:
            fetched = fetch_step(self.config, self.pipeline, episode, self.scratch / episode.episode_id,
                                 self.remote, _Reservation(self.budget, position, episode))
        finally:
            self.budget.pass_turn(position)  # when it failed before reserving
        self.sizes[position] = fetched.bytes
        return fetched

    def take(self, position: int) -> Fetched | FetchError:
        """The episode's verified copy, or why it could not be made; starts the next fetches."""
        for ahead in range(position, min(len(self.episodes), position + 1 + self.ahead)):
            if ahead not in self.futures:
                self.futures[ahead] = self.pool.submit(self._fetch, ahead)
        try:
            return self.futures[position].result()
        except FetchError as exc:
            return exc
        except Exception as exc:  # noqa: BLE001 - a local error (scratch unwritable) fails the episode
            return FetchError(f"{self.config.droid_root}/{self.episodes[position].relative_path}: "
                              f"{type(exc).__name__}: {exc}")

    def release(self, position: int) -> None:
        """Remove the episode's scratch copy and give its bytes back."""
        shutil.rmtree(self.scratch / self.episodes[position].episode_id, ignore_errors=True)
        self.budget.give_back(self.sizes.pop(position, 0))

    def close(self) -> None:
        """Stop: nothing new starts, fetches in flight end with the worker."""
        self.budget.close()
        self.pool.shutdown(wait=False, cancel_futures=True)
