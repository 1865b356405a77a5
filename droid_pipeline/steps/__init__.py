"""The per-episode pipeline steps: intrinsics, depth, tracks."""
