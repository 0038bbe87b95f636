#!/usr/bin/env bash
# Stop the local cluster and remove every runtime trace of it:
#  - the daemons, by the pids in their pid files (the kubelet first);
#  - the pods' processes, found in our cgroup parent in each hierarchy;
#  - containerd shims and any stray process whose command line names our
#    state dir (what a killed run may leave);
#  - mounts under the state dir (kubelet volumes, rootfs, shm, netns);
#  - the bridge, the veths attached to it, the pods' cgroups;
#  - the kernel tunables the kubelet changed are put back.
# Kept: certificates, etcd data, images (containerd root), so that the next
# up.sh is fast. K8S_WIPE=1 also removes those (a fresh cluster next time).
# Safe to run when nothing is up, and after a killed run.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

quiet="${K8S_DOWN_QUIET:-}"
say() { [ -n "$quiet" ] || log "$@"; }
[ -d "$STATE" ] || { say "nothing to do: no $STATE"; exit 0; }
mkdir -p "$RUN"
if [ -z "${K8S_LOCK_HELD:-}" ]; then
  # up.sh calls us while holding the lock on fd 8 (inherited): flock on the
  # same open file description succeeds at once.
  exec 8>>"$STATE/.lock"
  flock 8
fi

# kill_wait SECONDS PID...: SIGTERM, wait, then SIGKILL what is left.
kill_wait() {
  local secs="$1" p left i; shift
  [ $# -gt 0 ] || return 0
  kill -TERM "$@" 2>/dev/null || true
  for ((i = 0; i < secs * 5; i++)); do
    left=""
    for p in "$@"; do [ -e "/proc/$p" ] && ! grep -q '^State:.*Z' "/proc/$p/status" 2>/dev/null && left="$left $p"; done
    [ -z "$left" ] && return 0
    sleep 0.2
  done
  # shellcheck disable=SC2086
  kill -KILL $left 2>/dev/null || true
  sleep 0.2
}

# Processes inside our pod cgroups (containers, their children, pause).
cgroup_pids() {
  local m
  for m in $(cgroup_mounts); do
    [ -d "$m/$CGROUP_PARENT" ] || continue
    find "$m/$CGROUP_PARENT" -name cgroup.procs -exec cat {} + 2>/dev/null
  done | sort -un
}

stop_daemon() {
  local pid
  if pid="$(pid_of "$1")"; then
    say "stopping $1 (pid $pid)"
    kill_wait "${2:-10}" "$pid"
  fi
  rm -f "$RUN/$1.pid"
}

# 1. The kubelet first, so that nothing restarts containers.
stop_daemon kubelet 10
# 2. The pods' processes.
pids="$(cgroup_pids)"
if [ -n "$pids" ]; then
  say "killing pod processes: $(echo $pids)"
  # shellcheck disable=SC2086
  kill -KILL $pids 2>/dev/null || true
  for _ in $(seq 50); do [ -z "$(cgroup_pids)" ] && break; sleep 0.1; done
fi
# 3. containerd, then its shims (they outlive it) and any other stray.
stop_daemon containerd 10
# The control plane together (the apiserver takes a few seconds), etcd last.
cp_pids=""
for d in kube-scheduler kube-controller-manager kube-apiserver; do
  if pid="$(pid_of "$d")"; then say "stopping $d (pid $pid)"; cp_pids="$cp_pids $pid"; fi
  rm -f "$RUN/$d.pid"
done
# shellcheck disable=SC2086
kill_wait 15 $cp_pids
stop_daemon etcd 15
strays="$(our_pids)"
if [ -n "$strays" ]; then
  say "stopping leftover processes: $(for p in $strays; do printf '%s(%s) ' "$p" "$(cat /proc/$p/comm 2>/dev/null)"; done)"
  # shellcheck disable=SC2086
  kill_wait 5 $strays
fi

# 4. Mounts under the state dir, deepest first.
for _ in 1 2 3; do
  mnts="$(awk -v s="$STATE/" 'index($2, s) == 1 { print $2 }' /proc/mounts | awk '{ print length, $0 }' | sort -rn | cut -d' ' -f2-)"
  [ -z "$mnts" ] && break
  for m in $mnts; do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
  done
done
left="$(awk -v s="$STATE/" 'index($2, s) == 1' /proc/mounts)"
[ -z "$left" ] || log "WARNING: mounts left under $STATE: $left"

# 5. Network: veths on our bridge, then the bridge.
if ip link show "$BRIDGE" >/dev/null 2>&1; then
  for l in $(ip -o link show master "$BRIDGE" 2>/dev/null | awk -F': ' '{ print $2 }' | cut -d@ -f1); do
    ip link del "$l" 2>/dev/null || true
  done
  say "deleting bridge $BRIDGE"
  ip link del "$BRIDGE" 2>/dev/null || true
fi

# 6. Pod cgroups (empty now), deepest first; the parent too.
for m in $(cgroup_mounts); do
  [ -d "$m/$CGROUP_PARENT" ] || continue
  find "$m/$CGROUP_PARENT" -depth -type d -exec rmdir {} \; 2>/dev/null || true
  [ -d "$m/$CGROUP_PARENT" ] && log "WARNING: could not remove cgroup $m/$CGROUP_PARENT"
done

# 7. Runtime state that must not outlive the processes.
rm -rf "$CTRD_STATE" "$CNI_DATA_DIR" "$RUN"
mkdir -p "$RUN"

# Paths the kubelet hard-codes outside its root dir: the container log links
# (pointing into our pod-logs) and the device-plugin socket.
find /var/log/containers -maxdepth 1 -type l -lname "$STATE/*" -delete 2>/dev/null || true
rm -f /var/lib/kubelet/device-plugins/kubelet.sock
rmdir /var/log/containers /var/lib/kubelet/device-plugins /var/lib/kubelet 2>/dev/null || true
# Directories containerd 1.6 and libcni hard-code (shim sockets, the CNI
# result cache): removed only when empty, so a system containerd is unaffected.
rmdir /run/containerd/s /run/containerd /var/lib/cni/results /var/lib/cni 2>/dev/null || true

# 8. Kernel tunables the kubelet changed.
if [ -f "$STATE/sysctl.orig" ]; then
  while IFS='=' read -r k v; do
    [ "$(sysctl -n "$k" 2>/dev/null)" = "$v" ] || sysctl -q -w "$k=$v" >/dev/null 2>&1 || true
  done < "$STATE/sysctl.orig"
  rm -f "$STATE/sysctl.orig"
fi

if [ -n "${K8S_WIPE:-}" ]; then
  say "wiping cluster data (etcd, images, kubelet, certificates)"
  rm -rf "$STATE/etcd" "$STATE/containerd" "$KUBELET_DIR" "$STATE/pod-logs" "$PKI" "$STATE/kubeconfigs"
fi
say "cluster down"
