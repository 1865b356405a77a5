"""Makes episode processes wait at a known point, for tests that interrupt or kill a run there.

Loaded by every Python process of a run whose environment has this folder first on PYTHONPATH,
only in the tests that ask for it. Two kinds of point, each blocking on a FIFO until the test (its
writer) opens and closes it; no timing is involved, the process cannot pass before the test lets it:
- at a step (``pause_points.pause_env``): ``DROID_TEST_PAUSE_STEP`` is ``module:function``, a step's
  run function called as ``function(config, episode, work_dir)``; when ``DROID_TEST_PAUSE_DIR``
  holds a FIFO named after the episode's id, the call first blocks reading it;
- at an input file (``fifo_episodes.pausing_env``): a process about to open the input file
  ``DROID_TEST_PAUSE_FILE`` first blocks reading the FIFO ``DROID_TEST_PAUSE_FIFO`` (the pipeline
  refuses FIFOs as input files, so a test cannot put one where an input was).
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.machinery
import os
import sys
from pathlib import Path
from typing import Any


class _WrapAfterImport(importlib.abc.MetaPathFinder):
    """Wraps the target function when its module is imported, wherever that happens."""

    def __init__(self, module: str, function: str, fifo_dir: Path) -> None:
        self.module, self.function, self.fifo_dir = module, function, fifo_dir

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != self.module:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        load = spec.loader.exec_module

        def exec_module(module: Any) -> None:
            load(module)
            setattr(module, self.function, self._paused(getattr(module, self.function)))

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec

    def _paused(self, run: Any) -> Any:
        @functools.wraps(run)
        def paused(config: Any, episode: Any, work_dir: Any, *args: Any, **kwargs: Any) -> Any:
            fifo = self.fifo_dir / episode.episode_id
            if fifo.exists():
                with open(fifo, "rb") as gate:
                    gate.read()
            return run(config, episode, work_dir, *args, **kwargs)

        return paused


def _pause_before_opening(target: str, fifo: str) -> None:
    """Wrap the pipeline's guarded input opens so that ``target`` first waits on ``fifo``."""
    import droid_pipeline.core.files as files

    check, read = files.check_input_file, files.read_bytes_capped

    def pause(path: Any) -> None:
        if os.path.abspath(os.fspath(path)) == target:
            with open(fifo, "rb") as gate:
                gate.read()

    def checked(path: Any, max_bytes: int = files.MAX_BINARY_BYTES) -> Any:
        pause(path)
        return check(path, max_bytes)

    def read_capped(path: Any, max_bytes: int) -> Any:
        pause(path)
        return read(path, max_bytes)

    files.check_input_file = checked
    files.read_bytes_capped = read_capped


if os.environ.get("DROID_TEST_PAUSE_STEP"):
    _module, _function = os.environ["DROID_TEST_PAUSE_STEP"].split(":")
    sys.meta_path.insert(0, _WrapAfterImport(_module, _function, Path(os.environ["DROID_TEST_PAUSE_DIR"])))
if os.environ.get("DROID_TEST_PAUSE_FILE"):
    _pause_before_opening(os.environ["DROID_TEST_PAUSE_FILE"], os.environ["DROID_TEST_PAUSE_FIFO"])
