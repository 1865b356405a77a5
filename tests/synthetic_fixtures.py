"""A small synthetic DROID dataset generated once per test session and shared by every module.

Import :func:`small_dataset` from a session-scoped fixture; every caller in the session gets
the same :class:`~droid_pipeline.synthetic.DatasetInfo`. Treat the files as read-only: a test
that writes beside or corrupts them must copy the episode first.
"""

from __future__ import annotations

import pytest

from droid_pipeline.synthetic import DatasetInfo, generate_dataset

SMALL_EPISODES = 3
SMALL_FRAMES = 40
SMALL_SIZE = (320, 180)
SMALL_SEED = 0

_generated: dict[str, DatasetInfo] = {}


def small_dataset(tmp_path_factory: pytest.TempPathFactory) -> DatasetInfo:
    """Three 40-step episodes at 320x180 (seed 0): episode 0 a success on a one-digit day,
    episode 1 a failure whose folder uses ``_`` for ``:`` and whose h5 lists a stale camera,
    episode 2 in a date folder a day before its timestamp and with
    ``observation/camera_intrinsics``. Generated on the first call of the session."""
    if "small" not in _generated:
        _generated["small"] = generate_dataset(tmp_path_factory.mktemp("synthetic"), episodes=SMALL_EPISODES,
                                               frames=SMALL_FRAMES, size=SMALL_SIZE, seed=SMALL_SEED)
    return _generated["small"]
