#!/usr/bin/env bash
# Recipe of localhost/pause:TAG: one static binary, /pause.
# Called by images/build-all.sh as: recipe.sh ROOTFS_DIR; prints the entrypoint.
set -euo pipefail
rootfs="$1"
gcc -static -Os -s -o "$rootfs/pause" "$(dirname "$0")/pause.c"
echo /pause
