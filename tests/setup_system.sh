#!/usr/bin/env bash
# Installs the system tools the tests use as independent references or real components:
# FFmpeg's own decoder, shellcheck, and a one-node SLURM with munge. Idempotent and quick when
# everything is present; uses apt-get (as root, or through sudo).
set -euo pipefail

readonly PACKAGES=(ffmpeg shellcheck slurm-wlm munge unzip)

err() {
  echo "setup_system: $*" >&2
}

main() {
  local missing=()
  local pkg
  for pkg in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "${pkg}" 2>/dev/null | grep -q 'install ok installed'; then
      missing+=("${pkg}")
    fi
  done
  if [[ ${#missing[@]} -eq 0 ]]; then
    return 0
  fi
  local sudo=()
  if [[ "$(id -u)" -ne 0 ]]; then
    if ! command -v sudo >/dev/null; then
      err "need root or sudo to install: ${missing[*]}"
      return 1
    fi
    sudo=(sudo)
  fi
  echo "setup_system: installing ${missing[*]}"
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
}

main "$@"
