#!/usr/bin/env bash
# Full pipeline driver: intrinsics -> depth + FFV1 -> tracks for each selected DROID episode.
#
#   ./run_pipeline_compressed_depth.sh [N] [--episodes FILE | --episode_id ID] [--workers K]
#       [--gpus LIST|auto|none] [--workers-per-gpu K] [--depth-backend zed|stereo]
#       [--config FILE] [--set key=value] [--droid-root DIR] [--out DIR] [--no-upload]
#       [--force] [--dry-run] [--slurm]
#
# Each worker slot is pinned to one GPU (CUDA_VISIBLE_DEVICES = gpus[slot // workers-per-gpu]);
# --depth-backend stereo runs on CPU and ignores --gpus. Runs the packaged driver
# (droid_pipeline/execution/driver.sh; installed: droid-run-full). Full usage: --help.
# Guide: docs/running.md.
set -euo pipefail

main() {
  exec bash "$(dirname "${BASH_SOURCE[0]}")/droid_pipeline/execution/driver.sh" full "$@"
}

main "$@"
