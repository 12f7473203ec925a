#!/usr/bin/env bash
# Bring up a one-machine cluster for the node tier: etcd, kube-apiserver, controller-manager,
# scheduler (from scripts/provision-k8s.sh's cache), containerd 1.7 with CDI + runc + CNI bridge,
# and a real kubelet. All state lives under $RUN (default /run/mock-accel-node) so nothing
# collides with the host. Prints KUBECONFIG=... on success; logs are in $RUN/log/.
#
# Usage: scripts/node-up.sh            # start (idempotent: stops a previous run first)
#        scripts/node-up.sh down       # stop everything started here
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
RUN="${MOCK_ACCEL_NODE_RUN:-/run/mock-accel-node}"
NODE_NAME="${MOCK_ACCEL_NODE_NAME:-mock-accel-node}"
K8S_VERSION="${MOCK_ACCEL_K8S_VERSION:-1.34.4}"
CACHE="${MOCK_ACCEL_CACHE:-$HOME/.cache/mock-accel}"
# Non-default ports: other clusters (other helpers, CI jobs) may use the well-known ones.
ETCD_PORT=23890 ETCD_PEER_PORT=23900 API_PORT=16443 KUBELET_PORT=10350 KUBELET_HEALTHZ_PORT=10348
KCM_PORT=10357 SCHED_PORT=10359
log() { echo "node-up: $*" >&2; }
die() { echo "node-up: ERROR: $*" >&2; exit 1; }

stop_all() {
  local p
  mkdir -p "$RUN/pid"
  for p in kubelet kube-scheduler kube-controller-manager kube-apiserver containerd etcd; do
    if [[ -s $RUN/pid/$p ]]; then
      kill "$(cat "$RUN/pid/$p")" 2>/dev/null || true
    fi
  done
  sleep 1
  for p in kubelet kube-scheduler kube-controller-manager kube-apiserver containerd etcd; do
    if [[ -s $RUN/pid/$p ]]; then kill -9 "$(cat "$RUN/pid/$p")" 2>/dev/null || true; rm -f "$RUN/pid/$p"; fi
  done
  # Shims and pod processes started by our containerd.
  # Shims started by our containerd: matched by our unique socket path, killed by pid.
  local d
  shopt -s nullglob
  for d in /proc/[0-9]*; do
    if tr '\0' ' ' 2>/dev/null <"$d/cmdline" | grep -qF -- "-address $RUN/containerd/containerd.sock"; then
      kill -9 "${d#/proc/}" 2>/dev/null || true
    fi
  done
  # The kubelet bind-mounts its root dir and pod volumes under $RUN.
  awk -v r="$RUN/" 'index($2, r) == 1 {print $2}' /proc/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
  ip link del cni-mockaccel 2>/dev/null || true
}

if [[ ${1:-} == down ]]; then stop_all; exit 0; fi

eval "$("$HERE/provision-node.sh")"
K8S_BIN=$(dirname "$KUBELET")
for b in etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet; do
  [[ -x $K8S_BIN/$b ]] || die "$K8S_BIN/$b missing (run scripts/provision-k8s.sh)"
done

stop_all
for port in $ETCD_PORT $ETCD_PEER_PORT $API_PORT $KUBELET_PORT $KUBELET_HEALTHZ_PORT $KCM_PORT $SCHED_PORT; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    die "TCP port $port on 127.0.0.1 is already in use by another process (ss -ltnp | grep :$port)"
  fi
done
rm -rf "$RUN"; mkdir -p "$RUN"/{pid,log,pki,etcd,containerd/root,containerd/state,kubelet,cdi,cni/net.d,cni/state,pods}
PKI=$RUN/pki
# The kubelet rejects a loopback node IP: use the address of the default-route interface.
NODE_IP="${MOCK_ACCEL_NODE_IP:-$(ip -4 route get 1.1.1.1 2>/dev/null | sed -n 's/.* src \([0-9.]*\).*/\1/p')}"
[[ -n $NODE_IP ]] || die "no non-loopback IPv4 address with a default route (set MOCK_ACCEL_NODE_IP)"

# --- PKI (openssl) ---------------------------------------------------------------------------
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=mock-accel-ca \
  -keyout "$PKI/ca.key" -out "$PKI/ca.crt" 2>/dev/null
cert() { # name subject san
  openssl req -newkey rsa:2048 -nodes -subj "$2" -keyout "$PKI/$1.key" -out "$PKI/$1.csr" 2>/dev/null
  printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth,clientAuth\n' "$3" >"$PKI/$1.ext"
  openssl x509 -req -in "$PKI/$1.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
    -days 2 -extfile "$PKI/$1.ext" -out "$PKI/$1.crt" 2>/dev/null
}
cert apiserver /CN=kube-apiserver "IP:127.0.0.1,IP:$NODE_IP,IP:10.96.0.1,DNS:localhost,DNS:kubernetes.default.svc"
cert admin "/O=system:masters/CN=admin" "DNS:admin"
cert kubelet "/O=system:nodes/CN=system:node:$NODE_NAME" "IP:127.0.0.1,IP:$NODE_IP,DNS:localhost,DNS:$NODE_NAME"
openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null
openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null

kubeconfig() { # file cert
  cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:$API_PORT", certificate-authority: "$PKI/ca.crt"}}]
users: [{name: u, user: {client-certificate: "$PKI/$2.crt", client-key: "$PKI/$2.key"}}]
contexts: [{name: c, context: {cluster: c, user: u}}]
current-context: c
EOF
}
kubeconfig "$RUN/admin.kubeconfig" admin
kubeconfig "$RUN/kubelet.kubeconfig" admin

start() { # name cmd...
  local n=$1; shift
  setsid "$@" >"$RUN/log/$n.log" 2>&1 </dev/null &
  echo $! >"$RUN/pid/$n"
}
wait_for() { # what seconds cmd...
  local what=$1 t=$2; shift 2
  local i
  for ((i = 0; i < t * 5; i++)); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  die "$what not ready after ${t}s (see $RUN/log/)"
}

# --- control plane ---------------------------------------------------------------------------
start etcd "$K8S_BIN/etcd" --data-dir "$RUN/etcd" --listen-client-urls http://127.0.0.1:$ETCD_PORT \
  --advertise-client-urls http://127.0.0.1:$ETCD_PORT --listen-peer-urls http://127.0.0.1:$ETCD_PEER_PORT \
  --unsafe-no-fsync
wait_for etcd 30 bash -c "exec 3<>/dev/tcp/127.0.0.1/$ETCD_PORT"
start kube-apiserver "$K8S_BIN/kube-apiserver" --etcd-servers http://127.0.0.1:$ETCD_PORT \
  --bind-address 0.0.0.0 --advertise-address "$NODE_IP" --secure-port $API_PORT \
  --tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
  --client-ca-file "$PKI/ca.crt" --service-account-key-file "$PKI/sa.pub" \
  --service-account-signing-key-file "$PKI/sa.key" --service-account-issuer https://kubernetes.default.svc \
  --kubelet-client-certificate "$PKI/admin.crt" --kubelet-client-key "$PKI/admin.key" \
  --kubelet-certificate-authority "$PKI/ca.crt" --kubelet-preferred-address-types InternalIP \
  --authorization-mode Node,RBAC --service-cluster-ip-range 10.96.0.0/16 --allow-privileged=true \
  --runtime-config resource.k8s.io/v1=true --feature-gates DynamicResourceAllocation=true
KC=("$K8S_BIN/kubectl" --kubeconfig "$RUN/admin.kubeconfig")
wait_for kube-apiserver 90 "${KC[@]}" get --raw /readyz
start kube-controller-manager "$K8S_BIN/kube-controller-manager" --kubeconfig "$RUN/admin.kubeconfig" \
  --service-account-private-key-file "$PKI/sa.key" --root-ca-file "$PKI/ca.crt" \
  --use-service-account-credentials --controllers '*,-node-ipam-controller' --leader-elect=false \
  --feature-gates DynamicResourceAllocation=true --bind-address 127.0.0.1 --secure-port $KCM_PORT
start kube-scheduler "$K8S_BIN/kube-scheduler" --kubeconfig "$RUN/admin.kubeconfig" \
  --leader-elect=false --bind-address 127.0.0.1 --secure-port $SCHED_PORT \
  --feature-gates DynamicResourceAllocation=true

# --- containerd 1.7 with CDI -----------------------------------------------------------------
cat >"$RUN/cni/net.d/10-mockaccel.conflist" <<EOF
{"cniVersion":"1.0.0","name":"mockaccel","plugins":[
 {"type":"bridge","bridge":"cni-mockaccel","isGateway":true,"ipMasq":true,
  "ipam":{"type":"host-local","ranges":[[{"subnet":"10.88.0.0/16"}]],"routes":[{"dst":"0.0.0.0/0"}],
          "dataDir":"$RUN/cni/state"}},
 {"type":"portmap","capabilities":{"portMappings":true}}]}
EOF
cat >"$RUN/cni/net.d/99-loopback.conf" <<EOF
{"cniVersion":"1.0.0","name":"lo","type":"loopback"}
EOF
# OCI runtime: runc (bookworm 1.1.5). crun 1.8.1 refuses this host's hybrid cgroup layout
# ("cgroups in hybrid mode not supported, drop all controllers from cgroupv2": hugetlb is only on
# the v2 hierarchy); runc works once restrict_oom_score_adj is set (below).
OCI_RUNTIME="$(command -v "${MOCK_ACCEL_OCI_RUNTIME:-runc}")" || die "OCI runtime ${MOCK_ACCEL_OCI_RUNTIME:-runc} not found (apt-get install runc)"
SYSTEMD_CGROUP=false; [[ $CGROUP_DRIVER == systemd ]] && SYSTEMD_CGROUP=true
cat >"$RUN/containerd/config.toml" <<EOF
version = 2
root = "$RUN/containerd/root"
state = "$RUN/containerd/state"
[grpc]
  address = "$RUN/containerd/containerd.sock"
[ttrpc]
  address = "$RUN/containerd/containerd.sock.ttrpc"
[debug]
  address = "$RUN/containerd/debug.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  enable_cdi = true
  # Sandboxes here lack CAP_SYS_RESOURCE (CapEff bit 24), so the runtime cannot lower
  # oom_score_adj below containerd's own; clamp instead of failing sandbox creation.
  restrict_oom_score_adj = true
  cdi_spec_dirs = ["$RUN/cdi", "/var/run/cdi"]
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$CNI_BIN_DIR"
    conf_dir = "$RUN/cni/net.d"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = $SYSTEMD_CGROUP
        BinaryName = "$OCI_RUNTIME"
EOF
export PATH="$CONTAINERD_BIN:$PATH"
start containerd "$CONTAINERD_BIN/containerd" --config "$RUN/containerd/config.toml"
CTR=("$CONTAINERD_BIN/ctr" --address "$RUN/containerd/containerd.sock" -n k8s.io)
wait_for containerd 30 "${CTR[@]}" version
"${CTR[@]}" images import --all-platforms "$PAUSE_TAR" >&2
"${CTR[@]}" images import --all-platforms "$TEST_TAR" >&2
[[ $("${CTR[@]}" images ls -q) == *"$PAUSE_IMAGE"* ]] || die "pause image import failed"

# --- kubelet ---------------------------------------------------------------------------------
FAIL_V1=""
[[ $CGROUP_VERSION == v1 ]] && FAIL_V1="failCgroupV1: false"
cat >"$RUN/kubelet/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: $CGROUP_DRIVER
$FAIL_V1
failSwapOn: false
containerRuntimeEndpoint: unix://$RUN/containerd/containerd.sock
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: "$PKI/ca.crt"}
authorization: {mode: Webhook}
tlsCertFile: "$PKI/kubelet.crt"
tlsPrivateKeyFile: "$PKI/kubelet.key"
address: 0.0.0.0
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $KUBELET_HEALTHZ_PORT
staticPodPath: "$RUN/pods"
cgroupsPerQOS: true
enforceNodeAllocatable: []
evictionHard: {}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
resolvConf: ""
localStorageCapacityIsolation: false
featureGates:
  DynamicResourceAllocation: true
serializeImagePulls: false
EOF
start kubelet "$KUBELET" --config "$RUN/kubelet/config.yaml" --kubeconfig "$RUN/kubelet.kubeconfig" \
  --root-dir "$RUN/kubelet/root" --cert-dir "$RUN/kubelet/pki" --hostname-override "$NODE_NAME" \
  --node-ip "$NODE_IP" --v 2
wait_for "kubelet healthz" 60 bash -c "exec 3<>/dev/tcp/127.0.0.1/$KUBELET_HEALTHZ_PORT"
node_ready() {
  [[ $("${KC[@]}" get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}') == True ]]
}
wait_for "node $NODE_NAME Ready" 90 node_ready
wait_for "serviceaccount default/default (controller-manager)" 60 "${KC[@]}" get serviceaccount default
echo "KUBECONFIG=$RUN/admin.kubeconfig"
echo "NODE_NAME=$NODE_NAME"
echo "CDI_DIR=$RUN/cdi"
echo "KUBELET_ROOT=$RUN/kubelet/root"
echo "CTR_ADDRESS=$RUN/containerd/containerd.sock"
