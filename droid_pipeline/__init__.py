"""DROID training-data pipeline: raw DROID episodes -> gripper contact tracks, 2D projections,
1 mm normalized flow, and lossless depth, published to Hugging Face."""

from typing import Any

__version__ = "0.1.0"

# Version of the per-episode output contract (tracks.npz, extrinsics.npz, quality.json, ...).
# An episode finished under an older schema is not finished for the current one.
SCHEMA_VERSION = 2

_LOADER_NAMES = ("EpisodeData", "LoadError", "load_episode")


def __getattr__(name: str) -> Any:
    """Import the loader on first use: it pulls in PyAV, OpenCV and h5py, which steps may not need."""
    if name in _LOADER_NAMES:
        from droid_pipeline.outputs import loader

        return getattr(loader, name)
    raise AttributeError(f"module 'droid_pipeline' has no attribute {name!r}")
