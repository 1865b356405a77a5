#!/usr/bin/env bash
# Metadata-only pipeline driver: intrinsics -> tracks for each selected DROID episode, on CPU.
#
#   ./run_pipeline_metadata_only.sh [N] [--episodes FILE | --episode_id ID] [--workers K]
#       [--config FILE] [--set key=value] [--droid-root DIR] [--out DIR] [--no-upload]
#       [--force] [--dry-run] [--slurm]
#
# Runs the packaged driver (droid_pipeline/execution/driver.sh; installed: droid-run-metadata).
# Full usage: --help. Guide: docs/running.md.
set -euo pipefail

main() {
  exec bash "$(dirname "${BASH_SOURCE[0]}")/droid_pipeline/execution/driver.sh" metadata "$@"
}

main "$@"
