#!/usr/bin/env bash
# build-image.sh NAME:TAG ROOTFS_DIR [ENTRYPOINT...]
#
# Turn ROOTFS_DIR into a one-layer OCI image named NAME:TAG (fully qualified,
# e.g. localhost/dataflow-task:dev) and import it into the cluster's
# containerd, namespace k8s.io, where the kubelet finds it; pods then use it
# with imagePullPolicy: Never. No registry is involved.
# Extra image settings go through OCI_IMAGE_ARGS, e.g.
#   OCI_IMAGE_ARGS="--env PATH=/bin --workdir /work --user 1000" build-image.sh ...
# With IMAGE_OUT=FILE the archive is only written there, not imported.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

[ $# -ge 2 ] || { echo "usage: $0 NAME:TAG ROOTFS_DIR [ENTRYPOINT...]" >&2; exit 2; }
name="$1" rootfs="$2"; shift 2
ep=()
for a in "$@"; do ep+=(--entrypoint "$a"); done

out="${IMAGE_OUT:-}"
tmp=""
if [ -z "$out" ]; then tmp="$(mktemp --suffix=.oci.tar)"; out="$tmp"; fi
trap '[ -n "$tmp" ] && rm -f "$tmp"' EXIT
# shellcheck disable=SC2086
info="$(python3 "$K8S_TOOLS/images/oci_image.py" --name "$name" --rootfs "$rootfs" -o "$out" "${ep[@]}" ${OCI_IMAGE_ARGS:-})"
[ -n "$tmp" ] || { log "wrote $out: $info"; exit 0; }

ctr() { command ctr --address "${CONTAINERD_ADDRESS:-$CTRD_SOCK}" --namespace k8s.io "$@"; }
# Unpacked into the snapshotter the CRI plugin uses (overlayfs).
ctr images import --snapshotter overlayfs "$out" >/dev/null
log "imported $name ($(echo "$info" | python3 -c 'import json,sys; print(json.load(sys.stdin)["manifest"])'))"
