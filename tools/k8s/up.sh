#!/usr/bin/env bash
# Bring the local single-node cluster up (idempotent).
#   up.sh [KUBECONFIG_OUT]     (default: ./.k8s/kubeconfig)
# If the cluster is already up and healthy, only the kubeconfig is written.
# Otherwise whatever a previous (possibly killed) run left behind is cleaned
# by down.sh, the binaries are built if the cache lacks them (build.sh), and
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler, containerd
# and the kubelet are started, the local images imported, and the script
# waits for the node to be Ready and the default ServiceAccount to exist.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

KUBECONFIG_OUT="${1:-$PWD/.k8s/kubeconfig}"
T0=$(date +%s)

export_kubeconfig() {
  mkdir -p "$(dirname "$KUBECONFIG_OUT")"
  install -m 600 "$STATE/kubeconfigs/admin.kubeconfig" "$KUBECONFIG_OUT"
  mkdir -p "$(dirname "$KUBECONFIG_OUT")/bin"
  ln -sfn "$K8S_BIN/kubectl" "$(dirname "$KUBECONFIG_OUT")/bin/kubectl"
}

node_ready() {
  [ "$(kubectl_admin get node "$NODE_NAME" \
      -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ]
}

healthy() {
  local d
  for d in $DAEMONS; do pid_of "$d" >/dev/null || return 1; done
  kubectl_admin get --raw /readyz >/dev/null 2>&1 || return 1
  node_ready
}

mkdir -p "$STATE"
exec 8>"$STATE/.lock"
flock 8

if [ -x "$K8S_BIN/kubectl" ] && [ -f "$STATE/kubeconfigs/admin.kubeconfig" ] && healthy; then
  export_kubeconfig
  log "cluster already up and healthy; kubeconfig: $KUBECONFIG_OUT"
  exit 0
fi

# 1. Host packages (Debian), only when missing.
need=()
for pkg in etcd-server containerd runc containernetworking-plugins busybox-static \
           gcc libc6-dev openssl curl iproute2 util-linux; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  log "installing Debian packages: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq "${need[@]}" >/dev/null 2>&1 || {
    apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null; }
fi

# 2. Binaries (a no-op when cached).
"$K8S_TOOLS/build.sh"

# 3. Clean whatever an earlier run left (processes, mounts, links, cgroups).
K8S_LOCK_HELD=1 K8S_DOWN_QUIET=1 "$K8S_TOOLS/down.sh"

# 4. Certificates, keys, kubeconfigs (kept across runs).
"$K8S_TOOLS/certs.sh"

mkdir -p "$RUN" "$LOGS" "$STATE/etcd" "$CTRD_ROOT" "$CTRD_STATE" "$KUBELET_DIR" \
  "$CNI_CONF_DIR" "$CNI_DATA_DIR" "$STATE/pod-logs" "$STATE/config"

# The kubelet sets a few kernel tunables (vm.overcommit_memory, kernel.panic,
# kernel.panic_on_oops, ...); remember the machine's values so that down.sh
# puts them back.
if [ ! -f "$STATE/sysctl.orig" ]; then
  for k in vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops \
           kernel.keys.root_maxkeys kernel.keys.root_maxbytes; do
    echo "$k=$(sysctl -n "$k")"
  done > "$STATE/sysctl.orig"
fi

# start NAME ARGS...: start a daemon in its own session, log and pid file.
start() {
  local name="$1"; shift
  log "starting $name"
  setsid "$@" > "$LOGS/$name.log" 2>&1 < /dev/null 8>&- &
  echo $! > "$RUN/$name.pid"
}
alive() { pid_of "$1" >/dev/null || { tail -20 "$LOGS/$1.log" >&2; die "$1 exited; see $LOGS/$1.log"; }; }

# 5. The node's network: our own bridge, with the node address.
if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
  ip link add "$BRIDGE" type bridge
fi
ip addr replace "$NODE_IP/${POD_CIDR#*/}" dev "$BRIDGE"
ip link set "$BRIDGE" up

# 6. A cgroup parent for the pods in each v1 hierarchy (no remount).
for m in $(cgroup_mounts); do
  d="$m/$CGROUP_PARENT"
  mkdir -p "$d"
  if [ -f "$m/cpuset.cpus" ] && [ -f "$d/cpuset.cpus" ]; then
    [ -n "$(cat "$d/cpuset.cpus")" ] || cat "$m/cpuset.cpus" > "$d/cpuset.cpus"
    [ -n "$(cat "$d/cpuset.mems")" ] || cat "$m/cpuset.mems" > "$d/cpuset.mems"
  fi
done

# 7. etcd (Debian's), client and peer on loopback only.
start etcd etcd --name "$NODE_NAME" --data-dir "$STATE/etcd" \
  --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
  --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-cluster "$NODE_NAME=http://127.0.0.1:$ETCD_PEER_PORT" \
  --enable-v2=false --quota-backend-bytes 2147483648
wait_for 60 etcd curl -fsS "http://127.0.0.1:$ETCD_PORT/health" || { alive etcd; die "etcd not healthy"; }

# 8. The control plane.
start kube-apiserver "$K8S_BIN/kube-apiserver" \
  --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
  --bind-address 127.0.0.1 --secure-port "$API_PORT" --advertise-address "$NODE_IP" \
  --tls-cert-file "$PKI/kube-apiserver.crt" --tls-private-key-file "$PKI/kube-apiserver.key" \
  --client-ca-file "$PKI/ca.crt" \
  --kubelet-client-certificate "$PKI/apiserver-kubelet-client.crt" \
  --kubelet-client-key "$PKI/apiserver-kubelet-client.key" \
  --kubelet-certificate-authority "$PKI/ca.crt" \
  --kubelet-preferred-address-types InternalIP \
  --service-account-issuer https://kubernetes.default.svc.cluster.local \
  --service-account-key-file "$PKI/sa.pub" --service-account-signing-key-file "$PKI/sa.key" \
  --service-cluster-ip-range "$SERVICE_CIDR" \
  --authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction \
  --allow-privileged=true --profiling=false --anonymous-auth=true \
  --cert-dir "$STATE/apiserver-certs"
wait_for 90 kube-apiserver kubectl_admin get --raw /readyz || { alive kube-apiserver; die "kube-apiserver not ready"; }

start kube-controller-manager "$K8S_BIN/kube-controller-manager" \
  --kubeconfig "$STATE/kubeconfigs/kube-controller-manager.kubeconfig" \
  --authentication-kubeconfig "$STATE/kubeconfigs/kube-controller-manager.kubeconfig" \
  --authorization-kubeconfig "$STATE/kubeconfigs/kube-controller-manager.kubeconfig" \
  --bind-address 127.0.0.1 --cert-dir "$STATE/controller-manager-certs" \
  --root-ca-file "$PKI/ca.crt" \
  --service-account-private-key-file "$PKI/sa.key" --use-service-account-credentials \
  --cluster-signing-cert-file "$PKI/ca.crt" --cluster-signing-key-file "$PKI/ca.key" \
  --service-cluster-ip-range "$SERVICE_CIDR" --allocate-node-cidrs=false \
  --flex-volume-plugin-dir "$STATE/controller-manager-volume-plugins" \
  --leader-elect=false --profiling=false

start kube-scheduler "$K8S_BIN/kube-scheduler" \
  --kubeconfig "$STATE/kubeconfigs/kube-scheduler.kubeconfig" \
  --authentication-kubeconfig "$STATE/kubeconfigs/kube-scheduler.kubeconfig" \
  --authorization-kubeconfig "$STATE/kubeconfigs/kube-scheduler.kubeconfig" \
  --bind-address 127.0.0.1 --cert-dir "$STATE/scheduler-certs" \
  --leader-elect=false --profiling=false

# The Node object of an earlier run still says Ready: delete it, so that the
# wait below sees this kubelet register and report (its old pods go with it).
kubectl_admin delete node "$NODE_NAME" --ignore-not-found --wait=true >/dev/null

# 9. containerd: our own instance, config, root, state and socket.
cat > "$STATE/config/containerd.toml" <<EOF
version = 2
root = "$CTRD_ROOT"
state = "$CTRD_STATE"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "$CTRD_SOCK"
[ttrpc]
  address = "$CTRD_STATE/containerd.sock.ttrpc"
[debug]
  address = "$CTRD_STATE/debug.sock"
[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "$STATE/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  enable_selinux = false
  disable_apparmor = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "$(command -v runc)"
        Root = "$CTRD_STATE/runc"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$CNI_BIN_DIR"
    conf_dir = "$CNI_CONF_DIR"
    max_conf_num = 1
EOF
# A bridge + host-local CNI network: pods get addresses of $POD_CIDR on our
# bridge, no default route and no masquerading, so they reach nothing but
# each other and the node address.
cat > "$CNI_CONF_DIR/10-dataflow.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "dataflow",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$BRIDGE",
      "isGateway": true,
      "isDefaultGateway": false,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$CNI_DATA_DIR",
        "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$NODE_IP", "rangeStart": "${NODE_IP%.*}.10"}]]
      }
    }
  ]
}
EOF
start containerd containerd --config "$STATE/config/containerd.toml"
wait_for 30 containerd ctr --address "$CTRD_SOCK" version || { alive containerd; die "containerd not answering"; }

# 10. Local images (pause, task, ...), no registry.
"$K8S_TOOLS/images/build-all.sh"

# 11. The kubelet.
cat > "$STATE/config/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: "$PKI/ca.crt"}
authorization:
  mode: Webhook
tlsCertFile: "$PKI/kubelet-server.crt"
tlsPrivateKeyFile: "$PKI/kubelet-server.key"
containerRuntimeEndpoint: "unix://$CTRD_SOCK"
cgroupDriver: cgroupfs
cgroupRoot: /$CGROUP_PARENT
failCgroupV1: false
failSwapOn: false
podLogsDir: "$STATE/pod-logs"
volumePluginDir: "$KUBELET_DIR/volume-plugins"
resolvConf: ""
clusterDomain: cluster.local
makeIPTablesUtilChains: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: "200Mi"
  nodefs.available: "1%"
  nodefs.inodesFree: "1%"
  imagefs.available: "1%"
serializeImagePulls: false
rotateCertificates: false
serverTLSBootstrap: false
maxPods: 50
EOF
start kubelet "$K8S_BIN/kubelet" --config "$STATE/config/kubelet.yaml" \
  --kubeconfig "$STATE/kubeconfigs/kubelet.kubeconfig" \
  --root-dir "$KUBELET_DIR" --cert-dir "$KUBELET_DIR/pki" \
  --hostname-override "$NODE_NAME" --node-ip "$NODE_IP" --v 1

wait_for 120 "node $NODE_NAME Ready" node_ready || {
  for d in $DAEMONS; do alive "$d"; done
  kubectl_admin describe node "$NODE_NAME" >&2 || true
  die "node $NODE_NAME not Ready; logs in $LOGS"; }
wait_for 60 "the default ServiceAccount" kubectl_admin -n default get serviceaccount default \
  || die "no default ServiceAccount; see $LOGS/kube-controller-manager.log"
for d in $DAEMONS; do alive "$d"; done

export_kubeconfig
log "cluster up in $(( $(date +%s) - T0 ))s: node $NODE_NAME Ready, kubeconfig $KUBECONFIG_OUT"
