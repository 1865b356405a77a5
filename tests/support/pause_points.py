"""Hold chosen episodes of a driver run at the start of one step, so that a test can interrupt or
kill the run while they wait there, without racing the machine's speed (pause_site/sitecustomize)."""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Iterable
from pathlib import Path

PAUSE_SITE = Path(__file__).resolve().parent / "pause_site"
STEP_RUNS = {"intrinsics": "droid_pipeline.steps.intrinsics:extract_intrinsics",
             "depth": "droid_pipeline.steps.depth:extract_depth",
             "tracks": "droid_pipeline.steps.tracks:generate_tracks"}


def pause_env(fifo_dir: Path, step: str, episode_ids: Iterable[str]) -> dict[str, str]:
    """The environment for a run whose ``episode_ids`` wait at the start of ``step`` until their
    FIFO (``fifo_dir / episode_id``) is opened for writing; other episodes run through."""
    fifo_dir.mkdir(parents=True, exist_ok=True)
    for episode_id in episode_ids:
        os.mkfifo(fifo_dir / episode_id)
    path = os.pathsep.join(p for p in (str(PAUSE_SITE), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "DROID_TEST_PAUSE_STEP": STEP_RUNS[step],
            "DROID_TEST_PAUSE_DIR": str(fifo_dir)}


def release_one(fifo_dir: Path, timeout_s: float = 120) -> str:
    """Let one waiting episode go on (the first found waiting); its id."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for fifo in sorted(fifo_dir.iterdir()):
            try:
                fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)  # ENXIO while nobody waits on it
            except OSError as exc:
                if exc.errno != errno.ENXIO:
                    raise
                continue
            os.close(fd)
            fifo.unlink()  # the episode, once released, does not wait again
            return fifo.name
        time.sleep(0.05)
    raise AssertionError(f"no episode waited in {fifo_dir} within {timeout_s:.0f} s")
