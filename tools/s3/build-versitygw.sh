#!/usr/bin/env bash
# Build the versitygw S3 gateway (Apache-2.0) used by the integration tests.
#
# Idempotent: the binary is cached outside the checkout, keyed by version:
#   ${DATAFLOW_TOOLS_CACHE:-/var/cache/airflow-dataflow}/versitygw/<version>/bin/versitygw
# A second run with the binary present does nothing but print its path.
# The build goes to a temp dir beside the final one and is renamed into place,
# so a killed build never leaves a half-written binary behind.
#
# Prints the absolute path of the binary on stdout (last line); logs go to stderr.
set -euo pipefail

VERSITYGW_MODULE="github.com/versity/versitygw"
# Pinned: the version served by the Go module proxy (go list -m -versions).
VERSITYGW_VERSION="${VERSITYGW_VERSION:-v1.8.0}"

cache_root="${DATAFLOW_TOOLS_CACHE:-/var/cache/airflow-dataflow}"
dest="${cache_root}/versitygw/${VERSITYGW_VERSION}"
bin="${dest}/bin/versitygw"

if [[ -x "${bin}" ]]; then
    echo "${bin}"
    exit 0
fi

if ! command -v go >/dev/null 2>&1; then
    echo "build-versitygw: 'go' not found on PATH (need Go >= 1.25)" >&2
    exit 1
fi

mkdir -p "${cache_root}/versitygw"
# Leftovers of builds that were killed (SIGKILL skips the trap below).
find "${cache_root}/versitygw" -maxdepth 1 -name '.build-*' -mmin +120 \
    -exec rm -rf {} + 2>/dev/null || true
tmp="$(mktemp -d "${cache_root}/versitygw/.build-${VERSITYGW_VERSION}.XXXXXX")"
trap 'rm -rf "${tmp}"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

echo "build-versitygw: go install ${VERSITYGW_MODULE}/cmd/versitygw@${VERSITYGW_VERSION} (first build takes a few minutes)" >&2
start=$(date +%s)
# Run outside any module so the checkout's go.mod/go.work (if any) is ignored.
(
    cd "${tmp}"
    GOBIN="${tmp}/bin" GOWORK=off GO111MODULE=on CGO_ENABLED="${CGO_ENABLED:-0}" \
        GOFLAGS="${GOFLAGS:-} -buildvcs=false -trimpath" \
        go install -ldflags "-X=main.Version=${VERSITYGW_VERSION} -X=main.Build=module-proxy" \
            "${VERSITYGW_MODULE}/cmd/versitygw@${VERSITYGW_VERSION}"
)
"${tmp}/bin/versitygw" --version >&2 || true

# Another build may have finished first; keep whichever is already there.
if [[ -x "${bin}" ]]; then
    echo "${bin}"
    exit 0
fi
mkdir -p "${dest}"
if [[ -e "${dest}/bin" ]]; then
    rm -rf "${dest}/bin"
fi
mv -T "${tmp}/bin" "${dest}/bin"
echo "build-versitygw: built in $(( $(date +%s) - start ))s" >&2
echo "${bin}"
