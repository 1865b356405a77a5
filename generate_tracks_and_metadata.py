#!/usr/bin/env python3
"""Write one episode's gripper contact tracks, 2D projections, 1 mm normalized flow, camera
extrinsics and quality report (tracks.npz, extrinsics.npz, quality.json).

Usage: python generate_tracks_and_metadata.py --episode_id ID [--config FILE] [--set KEY=VALUE]
       [--output-dir DIR]
--help lists every output; the full contract is docs/outputs.md.
"""

from droid_pipeline.cli.drivers import run_command

if __name__ == "__main__":
    run_command("tracks")
