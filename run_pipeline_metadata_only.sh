#!/usr/bin/env bash
# Metadata-only pipeline driver: intrinsics -> tracks for each selected DROID episode, on CPU.
#
#   ./run_pipeline_metadata_only.sh [N] [--episodes FILE | --episode_id ID] [--workers K]
#       [--config FILE] [--set key=value] [--droid-root DIR] [--out DIR] [--no-upload]
#       [--force] [--dry-run] [--slurm]
#
# Full usage: --help. Guide: docs/running.md.
set -euo pipefail

# shellcheck source=scripts/driver_lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/scripts/driver_lib.sh"

main() {
  driver_main metadata "$@"
}

main "$@"
