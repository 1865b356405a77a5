"""DROID training-data pipeline: raw DROID episodes -> gripper contact tracks, 2D projections,
1 mm normalized flow, and lossless depth, published to Hugging Face."""

from typing import Any

# Version of the per-episode output contract (tracks.npz, extrinsics.npz, quality.json, ...).
from droid_pipeline.core.schema import SCHEMA_VERSION

__version__ = "0.1.0"
__all__ = ["SCHEMA_VERSION", "__version__", "EpisodeData", "LoadError", "iter_episodes", "load_episode",
           "shard_features"]

_LOADER_NAMES = ("EpisodeData", "LoadError", "iter_episodes", "load_episode", "shard_features")


def __getattr__(name: str) -> Any:
    """Import the loader on first use: it pulls in PyAV, OpenCV and h5py, which steps may not need."""
    if name in _LOADER_NAMES:
        from droid_pipeline.outputs import loader

        return getattr(loader, name)
    raise AttributeError(f"module 'droid_pipeline' has no attribute {name!r}")
