#!/usr/bin/env bash
# Recipe of localhost/dataflow-task:dev: a small task image with a POSIX
# shell and coreutils from Debian's busybox-static (/bin/sh, id, cat, ...),
# and /tmp. No entrypoint: pods give their command.
# Called by images/build-all.sh as: recipe.sh ROOTFS_DIR; prints the entrypoint.
set -euo pipefail
rootfs="$1"
mkdir -p "$rootfs/bin" "$rootfs/etc" "$rootfs/tmp" "$rootfs/root"
chmod 1777 "$rootfs/tmp"
cp /bin/busybox "$rootfs/bin/busybox"
for applet in $("$rootfs/bin/busybox" --list); do
  [ -e "$rootfs/bin/$applet" ] || ln -s busybox "$rootfs/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' > "$rootfs/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' > "$rootfs/etc/group"
