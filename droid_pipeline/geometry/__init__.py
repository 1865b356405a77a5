"""Pose conventions, pinhole projection and arc-length resampling (pure NumPy)."""
