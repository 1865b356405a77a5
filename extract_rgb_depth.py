#!/usr/bin/env python3
"""Write each camera's depth (recordings/<serial>/depth.mkv + depth_meta.json) for one episode.

Usage: python extract_rgb_depth.py --episode_id ID [--config FILE] [--set KEY=VALUE]
       [--depth-backend zed|stereo] [--cameras wrist ext1 ...] [--output-dir DIR]
See docs/depth.md.
"""

from droid_pipeline.cli.drivers import run_command

if __name__ == "__main__":
    run_command("depth")
