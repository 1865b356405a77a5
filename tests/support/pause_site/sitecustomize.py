"""Makes chosen episodes wait at a known point, for tests that interrupt or kill a run there.

Loaded by every Python process of a run whose environment has this folder first on PYTHONPATH
(see ``pause_points.pause_env``). ``DROID_TEST_PAUSE_AT`` is ``module:function``, a step's run
function called as ``function(config, episode, work_dir)``; when ``DROID_TEST_PAUSE_DIR`` holds a
FIFO named after the episode's id, the call first blocks reading it until the test writes to or
closes it. No timing is involved: the episode cannot pass that point before the test lets it.
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


if os.environ.get("DROID_TEST_PAUSE_AT"):
    _module, _function = os.environ["DROID_TEST_PAUSE_AT"].split(":")
    sys.meta_path.insert(0, _WrapAfterImport(_module, _function, Path(os.environ["DROID_TEST_PAUSE_DIR"])))
