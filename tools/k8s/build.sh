#!/usr/bin/env bash
# Build kube-apiserver, kube-controller-manager, kube-scheduler, kubelet and
# kubectl from the k8s.io/kubernetes Go module (through the Go module proxy),
# and cache them outside the checkout, keyed by version:
#   ${DATAFLOW_K8S_CACHE:-/var/cache/airflow-dataflow/k8s}/$K8S_VERSION/bin/
# Idempotent: does nothing when that directory exists. The binaries are built
# into a temporary directory and renamed into place, so a killed build never
# leaves a half-filled cache behind.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
. "$HERE/versions.env"
CACHE="${DATAFLOW_K8S_CACHE:-/var/cache/airflow-dataflow/k8s}"
DEST="$CACHE/$K8S_VERSION"
BINS="kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl"

if [ -d "$DEST/bin" ]; then
  ok=1
  for b in $BINS; do [ -x "$DEST/bin/$b" ] || ok=0; done
  if [ "$ok" = 1 ]; then
    echo "k8s-build: $K8S_VERSION binaries cached in $DEST/bin"
    exit 0
  fi
fi

command -v go >/dev/null || { echo "k8s-build: go is not on PATH" >&2; exit 1; }
mkdir -p "$CACHE"
# One build at a time per machine.
exec 9>"$CACHE/.build.lock"
if ! flock -n 9; then
  echo "k8s-build: another build holds $CACHE/.build.lock; waiting for it" >&2
  flock 9
  [ -x "$DEST/bin/kubelet" ] && { echo "k8s-build: built by the other run"; exit 0; }
fi

# Under the lock no other build runs: what is left of a killed one can go.
rm -rf "$CACHE/.build-$K8S_VERSION".* "$DEST.old"
WORK="$(mktemp -d "$CACHE/.build-$K8S_VERSION.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
trap 'exit 130' INT TERM HUP
# The wrapper module: a go.mod that requires k8s.io/kubernetes and replaces
# every staging module (the ./staging/src/... replaces of its own go.mod,
# which Go ignores in a dependency) with the published v0.X.Y release.
cp "$HERE/gomod/go.mod" "$HERE/gomod/go.sum" "$WORK/" 2>/dev/null || cp "$HERE/gomod/go.mod" "$WORK/"
cp "$HERE/gomod/main.go" "$WORK/"
grep -q "^require k8s.io/kubernetes $K8S_VERSION\$" "$WORK/go.mod" || {
  echo "k8s-build: gomod/go.mod does not require k8s.io/kubernetes $K8S_VERSION (versions.env)" >&2; exit 1; }

minor="${K8S_VERSION#v1.}"; minor="${minor%%.*}"
commit="$(printf '%040d' 0)"
build_date="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
LDFLAGS="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  LDFLAGS="$LDFLAGS -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
  LDFLAGS="$LDFLAGS -X $pkg.gitCommit=$commit -X $pkg.gitTreeState=clean -X $pkg.buildDate=$build_date"
done

echo "k8s-build: building $K8S_VERSION in $WORK (15-40 minutes cold on 2 cores)"
start=$(date +%s)
cd "$WORK"
mkdir -p "$WORK/out/bin"
export CGO_ENABLED=0 GOFLAGS="-mod=mod ${GOFLAGS:-}"
for b in $BINS; do
  echo "k8s-build: $(date -u +%H:%M:%S) go build k8s.io/kubernetes/cmd/$b"
  go build -trimpath -ldflags "$LDFLAGS" -o "$WORK/out/bin/$b" "k8s.io/kubernetes/cmd/$b"
done
"$WORK/out/bin/kubectl" version --client
cp go.mod go.sum "$WORK/out/"
echo "$K8S_VERSION built $(date -u +%FT%TZ) in $(( $(date +%s) - start ))s" > "$WORK/out/BUILD-INFO"
rm -rf "$DEST.old"; [ -e "$DEST" ] && mv "$DEST" "$DEST.old"
mv "$WORK/out" "$DEST"
rm -rf "$DEST.old"
echo "k8s-build: done in $(( $(date +%s) - start ))s: $DEST/bin"
