#!/usr/bin/env bash
# Build every image recipe under tools/k8s/images/*/recipe.sh and import it
# into the cluster's containerd (namespace k8s.io). An image whose manifest
# digest is already there is left alone, so this is cheap when nothing changed.
#   build-all.sh [NAME...]   (NAME = recipe folder; default: all)
# Image names: localhost/<folder>:<tag>, tag from versions.env for pause,
# "dev" otherwise. An optional <folder>/image.args holds the recipe's
# oci_image.py settings (--env, --user, ...; see OCI_IMAGE_ARGS in build-image.sh).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

ctr() { command ctr --address "${CONTAINERD_ADDRESS:-$CTRD_SOCK}" --namespace k8s.io "$@"; }
names=("$@")
if [ ${#names[@]} -eq 0 ]; then
  for r in "$K8S_TOOLS"/images/*/recipe.sh; do names+=("$(basename "$(dirname "$r")")"); done
fi
for n in "${names[@]}"; do
  recipe="$K8S_TOOLS/images/$n/recipe.sh"
  [ -x "$recipe" ] || die "no recipe $recipe"
  tag=dev; [ "$n" = pause ] && tag="$PAUSE_TAG"
  image="localhost/$n:$tag"
  work="$(mktemp -d)"
  mkdir "$work/rootfs"
  mapfile -t ep < <("$recipe" "$work/rootfs")
  args="$(cat "$K8S_TOOLS/images/$n/image.args" 2>/dev/null || true)"
  OCI_IMAGE_ARGS="$args" IMAGE_OUT="$work/image.tar" "$K8S_TOOLS/images/build-image.sh" "$image" "$work/rootfs" "${ep[@]}" 2>/dev/null
  want="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["manifests"][0]["digest"])' \
    <(tar -xOf "$work/image.tar" index.json))"
  have="$(ctr images ls "name==$image" 2>/dev/null | awk 'NR>1 {print $3}')"
  if [ "$have" = "$want" ]; then
    log "image $image is up to date ($want)"
  else
    ctr images import --snapshotter overlayfs "$work/image.tar" >/dev/null
    log "imported $image ($want)"
  fi
  rm -rf "$work"
done
