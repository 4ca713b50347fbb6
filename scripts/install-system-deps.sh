#!/usr/bin/env bash
# Installs the Debian packages the build, the service and the tests need, when they are missing.
# Usage: scripts/install-system-deps.sh [run|test|bench]   (default: run)
set -euo pipefail

purpose="${1:-run}"
packages=(pkg-config libvips-dev libsqlite3-dev ffmpeg)
case "$purpose" in
  test) packages+=(chromium fonts-dejavu-core postgresql) ;;
  bench) packages+=(wrk) ;;
  run) ;;
  *) echo "unknown purpose: $purpose" >&2; exit 2 ;;
esac

missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "installing system packages: ${missing[*]}" >&2
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then sudo="sudo"; else
    echo "missing packages ${missing[*]} and not root: install them with apt-get" >&2; exit 1
  fi
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
