#!/usr/bin/env python3
"""Draw one episode's tracks, contact frames, normalized tracks or depth onto its camera videos.

Usage: render_tracks.py --episode_id ID | --episode-dir DIR [--camera SERIAL|all] [--out DIR]
[--trail K] [--what tracks|frames|normalized|depth]; see --help and docs/inspecting.md.
"""

from droid_pipeline.cli.drivers import run_command

if __name__ == "__main__":
    run_command("render")
