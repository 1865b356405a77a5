"""The raw DROID release: episode discovery, the trajectory.h5 reader, videos, ZED calibration and SDK."""
