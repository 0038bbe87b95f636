# Shared settings and helpers of the local single-node cluster (sourced).
# shellcheck shell=bash

K8S_TOOLS="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
. "$K8S_TOOLS/versions.env"

# Built binaries, shared by every checkout on the machine (see build.sh).
K8S_CACHE="${DATAFLOW_K8S_CACHE:-/var/cache/airflow-dataflow/k8s}"
K8S_BIN="${DATAFLOW_K8S_BIN:-$K8S_CACHE/$K8S_VERSION/bin}"
# Runtime state of the one cluster of this machine, whichever checkout
# started it: certificates, etcd data, containerd, kubelet, logs, pid files.
STATE="${DATAFLOW_K8S_STATE:-/var/lib/airflow-dataflow-k8s}"
PKI="$STATE/pki"
RUN="$STATE/run"            # pid files
LOGS="$STATE/logs"
CTRD_ROOT="$STATE/containerd/root"    # images and snapshots (kept)
CTRD_STATE="$STATE/containerd/state"  # tasks, sockets, netns (wiped on down)
CTRD_SOCK="$CTRD_STATE/containerd.sock"
KUBELET_DIR="$STATE/kubelet"
CNI_CONF_DIR="$STATE/cni/net.d"
CNI_DATA_DIR="$STATE/cni/ipam"
CNI_BIN_DIR=/usr/lib/cni

NODE_NAME="${DATAFLOW_K8S_NODE:-dataflow-node}"
API_PORT="${DATAFLOW_K8S_API_PORT:-6443}"
ETCD_PORT=2379
ETCD_PEER_PORT=2380
# The node's own network: a bridge this script creates, with a private pod
# subnet. Its first address is the node's InternalIP (the kubelet refuses a
# loopback --node-ip), so apiserver->kubelet traffic (logs, exec) is local.
BRIDGE=dfk8s0
POD_CIDR=10.244.0.0/24
NODE_IP=10.244.0.1
SERVICE_CIDR=10.96.0.0/24
SERVICE_IP=10.96.0.1
# Every v1 cgroup hierarchy gets this parent for the kubelet's pods.
CGROUP_PARENT=airflow-dataflow

PAUSE_IMAGE="localhost/pause:${PAUSE_TAG}"
TASK_IMAGE="localhost/dataflow-task:dev"

# Daemons in start order; each is started with a pid file $RUN/NAME.pid.
DAEMONS="etcd kube-apiserver kube-controller-manager kube-scheduler containerd kubelet"

log() { printf '%s k8s: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# pid_of NAME: the live pid of one of our daemons, or nothing. A pid counts
# only when its command line names our state dir, so a stale pid file whose
# number was reused by another process is never acted upon.
pid_of() {
  local f="$RUN/$1.pid" pid
  [ -f "$f" ] || return 1
  pid="$(cat "$f" 2>/dev/null)"
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
  tr '\0' ' ' < "/proc/$pid/cmdline" | grep -qF "$STATE/" || return 1
  echo "$pid"
}

# our_pids: every process whose command line names our state dir (daemons,
# containerd shims started with our socket), except this shell and its kin.
our_pids() {
  local p cmd
  for p in /proc/[0-9]*; do
    p="${p#/proc/}"
    [ "$p" = "$$" ] || [ "$p" = "$BASHPID" ] && continue
    cmd="$(tr '\0' ' ' 2>/dev/null < "/proc/$p/cmdline")" || continue
    case "$cmd" in
      *bash*|*make*|*grep*|*python*|*pytest*) continue ;;
      *"$STATE/"*) echo "$p" ;;
    esac
  done
}

# Mount points of the v1 (and v2) cgroup hierarchies, as mounted by the machine.
cgroup_mounts() {
  awk '$3 == "cgroup" || $3 == "cgroup2" { print $2 }' /proc/mounts
}

kubectl_admin() { "$K8S_BIN/kubectl" --kubeconfig "$STATE/kubeconfigs/admin.kubeconfig" "$@"; }

# wait_for SECONDS DESCRIPTION COMMAND...: poll COMMAND until it succeeds.
wait_for() {
  local secs="$1" what="$2" i; shift 2
  for ((i = 0; i < secs * 2; i++)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.5
  done
  log "timed out after ${secs}s waiting for $what"
  return 1
}
