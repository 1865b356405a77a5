"""Synthetic DROID episodes with ground truth, ray-cast from a textured scene."""
