#!/usr/bin/env python3
"""Lossless depth: convert 16-bit PNG folders or .npy/.npz stacks to a verified depth.mkv
(FFV1, gray16le, millimetres, 0 = invalid) plus depth_meta.json, or decode one back to PNGs.

Usage: python compress_depth_ffv1.py --input DIR_OR_FILE --output depth.mkv [--fps 15] [--key K]
       python compress_depth_ffv1.py --decode depth.mkv --output DIR
       [--meta FILE] [--config FILE] [--set ffv1.threads=4]
See docs/depth_format.md.
"""

from droid_pipeline.cli.drivers import run_command

if __name__ == "__main__":
    run_command("compress_depth")
