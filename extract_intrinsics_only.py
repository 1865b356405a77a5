#!/usr/bin/env python3
"""Write each camera's rectified intrinsics (recordings/<serial>/intrinsics.json) for one episode, on CPU.

Usage: python extract_intrinsics_only.py --episode_id ID [--config FILE] [--set KEY=VALUE]
       [--cameras wrist ext1 ...] [--source zed_conf ...] [--output-dir DIR]
See docs/intrinsics.md.
"""

from droid_pipeline.cli.drivers import run_command

if __name__ == "__main__":
    run_command("intrinsics")
