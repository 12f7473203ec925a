#!/usr/bin/env bash
# Full-node tier (issue 6): brings up the one-machine cluster (scripts/node-up.sh: etcd,
# kube-apiserver, controller-manager, scheduler, containerd 1.7 + CDI, runc, CNI bridge, a real
# kubelet) and runs the node scenarios against it. Tears everything down at exit unless
# MOCK_ACCEL_NODE_KEEP=1.
#
# Usage: scripts/test-node.sh
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
fail() { echo "test-node: FAIL: $*" >&2; exit 1; }
pass() { echo "test-node: PASS: $*" >&2; }

if [[ -z ${MOCK_ACCEL_DRA_BIN:-} ]]; then
  (cd "$ROOT" && cargo build --locked -q -p dra --bin mock-accel-dra --example gen_fixture) \
    || fail "cargo build -p dra failed"
fi
t0=$(date +%s.%N)
eval "$("$HERE/node-up.sh")"
[[ ${MOCK_ACCEL_NODE_KEEP:-0} == 1 ]] || trap '"$HERE/node-up.sh" down' EXIT
echo "test-node: node up in $(echo "$(date +%s.%N) - $t0" | bc) s" >&2
K8S_BIN=$(dirname "$(ls "${MOCK_ACCEL_CACHE:-$HOME/.cache/mock-accel}"/k8s-*/bin/kubectl | head -1)")
K() { "$K8S_BIN/kubectl" --kubeconfig "$KUBECONFIG" "$@"; }

# --- node smoke: a pod from the locally built image runs on the real kubelet ------------------
cat <<EOF | K apply -f - >/dev/null
apiVersion: v1
kind: Pod
metadata: {name: node-smoke}
spec:
  restartPolicy: Never
  dnsPolicy: Default
  containers:
  - name: c
    image: localhost/mock-accel/busybox:test
    imagePullPolicy: Never
    command: ["/bin/sh", "-c", "echo node-smoke-ok; cat /proc/self/cgroup | head -1"]
EOF
K wait --for=jsonpath='{.status.phase}'=Succeeded pod/node-smoke --timeout=60s >/dev/null \
  || fail "pod node-smoke did not succeed: $(K describe pod node-smoke | grep -E 'Warning' | tail -1)"
[[ $(K logs node-smoke) == *node-smoke-ok* ]] || fail "node-smoke logs: $(K logs node-smoke)"
pass "pod ran on kubelet $NODE_NAME (containerd CRI, runc, CNI bridge)"

# --- baseline throughput: 10 pods (no devices) to Running --------------------------------------
t1=$(date +%s.%N)
for i in $(seq 0 9); do
  cat <<EOF
---
apiVersion: v1
kind: Pod
metadata: {name: tp-$i, labels: {app: tp}}
spec:
  dnsPolicy: Default
  terminationGracePeriodSeconds: 0
  containers:
  - {name: c, image: localhost/mock-accel/busybox:test, imagePullPolicy: Never, command: ["/bin/sleep", "3600"]}
EOF
done | K apply -f - >/dev/null
K wait --for=jsonpath='{.status.phase}'=Running pod -l app=tp --timeout=120s >/dev/null \
  || fail "10 plain pods not Running within 120 s"
echo "test-node: 10 plain pods to Running: $(echo "$(date +%s.%N) - $t1" | bc) s" >&2
K delete pod -l app=tp --grace-period=0 --force >/dev/null 2>&1 || true

# --- DRA: our plugin with the real kubelet (scripts/test-node-dra.sh) ------------------------
source "$HERE/test-node-dra.sh"
