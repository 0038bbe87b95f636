#!/usr/bin/env bash
# Generate the cluster's CA, the component certificates, the service-account
# signing key and the kubeconfigs of the components, under $STATE/pki and
# $STATE/kubeconfigs. Idempotent: existing files are kept, so the cluster's
# identity survives k8s-down/k8s-up. Remove $STATE/pki to start over.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

mkdir -p "$PKI" "$STATE/kubeconfigs"
chmod 700 "$PKI"
cd "$PKI"

if [ ! -f ca.crt ]; then
  log "generating the cluster CA"
  openssl req -x509 -new -nodes -newkey rsa:2048 -keyout ca.key -out ca.crt \
    -days 3650 -subj "/CN=airflow-dataflow-k8s-ca" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,digitalSignature,keyEncipherment,keyCertSign" 2>/dev/null
fi

# cert NAME SUBJECT EXTKEYUSAGE [SAN]
cert() {
  local name="$1" subj="$2" eku="$3" san="${4:-}"
  [ -f "$name.crt" ] && [ -f "$name.key" ] && return 0
  log "generating certificate $name ($subj)"
  local ext
  ext="$(mktemp)"
  {
    echo "basicConstraints=critical,CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=$eku"
    [ -n "$san" ] && echo "subjectAltName=$san"
  } > "$ext"
  openssl req -new -nodes -newkey rsa:2048 -keyout "$name.key" -out "$name.csr" -subj "$subj" 2>/dev/null
  openssl x509 -req -in "$name.csr" -CA ca.crt -CAkey ca.key -CAcreateserial \
    -out "$name.crt" -days 3650 -extfile "$ext" 2>/dev/null
  rm -f "$name.csr" "$ext"
}

cert kube-apiserver "/CN=kube-apiserver" serverAuth \
  "DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:127.0.0.1,IP:$NODE_IP,IP:$SERVICE_IP"
cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" clientAuth
cert admin "/O=system:masters/CN=kubernetes-admin" clientAuth
cert kube-controller-manager "/CN=system:kube-controller-manager" clientAuth
cert kube-scheduler "/CN=system:kube-scheduler" clientAuth
cert kubelet-client "/O=system:nodes/CN=system:node:$NODE_NAME" clientAuth
cert kubelet-server "/CN=$NODE_NAME" serverAuth "DNS:$NODE_NAME,DNS:localhost,IP:$NODE_IP,IP:127.0.0.1"

if [ ! -f sa.key ]; then
  log "generating the service-account signing key"
  openssl genrsa -out sa.key 2048 2>/dev/null
  openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
fi
chmod 600 ./*.key

# kubeconfig NAME CERT: a kubeconfig for a client certificate of this CA.
kubeconfig() {
  local out="$STATE/kubeconfigs/$1.kubeconfig" c="$2"
  cat > "$out.tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: airflow-dataflow
  cluster:
    server: https://127.0.0.1:$API_PORT
    certificate-authority-data: $(base64 -w0 < ca.crt)
users:
- name: $1
  user:
    client-certificate-data: $(base64 -w0 < "$c.crt")
    client-key-data: $(base64 -w0 < "$c.key")
contexts:
- name: airflow-dataflow
  context:
    cluster: airflow-dataflow
    user: $1
current-context: airflow-dataflow
EOF
  chmod 600 "$out.tmp"
  mv "$out.tmp" "$out"
}
kubeconfig admin admin
kubeconfig kube-controller-manager kube-controller-manager
kubeconfig kube-scheduler kube-scheduler
kubeconfig kubelet kubelet-client
