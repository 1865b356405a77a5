"""DROID training-data pipeline: raw DROID episodes -> gripper contact tracks, 2D projections,
1 mm normalized flow, and lossless depth, published to Hugging Face."""

__version__ = "0.1.0"

# Version of the per-episode output contract (tracks.npz, extrinsics.npz, quality.json, ...).
# An episode finished under an older schema is not finished for the current one.
SCHEMA_VERSION = 2
