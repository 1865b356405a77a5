"""A small synthetic DROID dataset generated once per test session and shared by every module.

Import :func:`small_dataset` from a session-scoped fixture; every caller in the session gets
the same :class:`~droid_pipeline.synthetic.generator.DatasetInfo`. Treat the files as read-only: a test
that writes beside or corrupts them must copy the episode first.
"""

from __future__ import annotations

import pytest

from droid_pipeline.core.config import load_config
from droid_pipeline.publish.staging import publish_episode
from droid_pipeline.raw.discovery import build_index
from droid_pipeline.steps.depth import extract_depth
from droid_pipeline.steps.intrinsics import extract_intrinsics
from droid_pipeline.steps.tracks import generate_tracks
from droid_pipeline.synthetic.generator import DatasetInfo, generate_dataset

SMALL_EPISODES = 3
SMALL_FRAMES = 40
SMALL_SIZE = (320, 180)
SMALL_SEED = 0

_generated: dict[str, DatasetInfo] = {}
_converted: dict[str, dict] = {}


def small_dataset(tmp_path_factory: pytest.TempPathFactory) -> DatasetInfo:
    """Three 40-step episodes at 320x180 (seed 0): episode 0 a success on a one-digit day,
    episode 1 a failure whose folder uses ``_`` for ``:`` and whose h5 lists a stale camera,
    episode 2 in a date folder a day before its timestamp and with
    ``observation/camera_intrinsics``. Generated on the first call of the session."""
    if "small" not in _generated:
        _generated["small"] = generate_dataset(tmp_path_factory.mktemp("synthetic"), episodes=SMALL_EPISODES,
                                               frames=SMALL_FRAMES, size=SMALL_SIZE, seed=SMALL_SEED)
    return _generated["small"]


def converted_small_dataset(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The small dataset through the intrinsics and tracks steps (episode 0 also stereo depth of
    its ext1 camera before the tracks, as the full pipeline runs them, so its ext1 occlusion labels
    use that depth; published as a full-pipeline episode), with manifests, under an output root.
    Returns ``{"root": output root, "episodes": [Episode, ...]}``; converted once per session,
    read-only like the dataset itself."""
    if "small" not in _converted:
        info = small_dataset(tmp_path_factory)
        tmp = tmp_path_factory.mktemp("converted")
        config = load_config([info.config_path], [f"output_root={tmp / 'output'}", f"run_root={tmp / 'run'}",
                                                  f"episode_index_path={tmp / 'index.json'}"])
        index = build_index(config.droid_root, config.index_path)
        episodes = [index.get(e.episode_id) for e in info.episodes]
        for number, episode in enumerate(episodes):
            work = tmp / "work" / str(number)
            extract_intrinsics(config, episode, work)
            if number == 0:
                extract_depth(config, episode, work, backend="stereo", cameras=["ext1"])
            generate_tracks(config, episode, work)
            publish_episode(work, config.output_root, episode.relative_path, episode.episode_id,
                            "full" if number == 0 else "metadata", config.run_root)
        _converted["small"] = {"root": config.output_root, "episodes": episodes}
    return _converted["small"]
