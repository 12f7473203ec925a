# Sourced by scripts/test-node.sh once the node is up: our DRA plugin registers with the real
# kubelet, and a pod receives a mock-accel device through DRA + CDI (seed scenario "basic
# allocation"). Uses: K, fail, pass, ROOT, KUBECONFIG, NODE_NAME, CDI_DIR, KUBELET_ROOT.
DRA_BIN="${MOCK_ACCEL_DRA_BIN:-$ROOT/target/debug/mock-accel-dra}"
[[ -x $DRA_BIN ]] || fail "DRA scenarios not run: $DRA_BIN missing (build it with 'cargo build -p dra')"
WORK=$(mktemp -d /tmp/ma-node-dra-XXXXXX)
FIX="$WORK/sysfs-root"
cp -a "$ROOT/tests/fixtures/sysfs-guest" "$FIX"
"$DRA_BIN" kubelet-plugin --kubeconfig "$KUBECONFIG" --node-name "$NODE_NAME" --sysfs-root "$FIX" \
  --cdi-root "$CDI_DIR" --registrar-dir "$KUBELET_ROOT/plugins_registry" \
  --plugin-dir "$KUBELET_ROOT/plugins/mock-accel.example.com" --rescan-interval 2s \
  > "$WORK/mock-accel-dra.log" 2>&1 &
DRA_PID=$!
trap 'kill $DRA_PID 2>/dev/null; [[ ${MOCK_ACCEL_NODE_KEEP:-0} == 1 ]] || "$HERE/node-up.sh" down' EXIT

n=0
for _ in $(seq 1 60); do
  n=$(K get resourceslices --field-selector "spec.nodeName=$NODE_NAME" \
        -o jsonpath='{range .items[*]}{.spec.devices[*].name} {end}' 2>/dev/null | wc -w)
  [[ $n -ge 6 ]] && break
  sleep 1
done
[[ $n -ge 6 ]] || fail "discovery: $n devices published for $NODE_NAME (want 6)"
pass "discovery: $n devices in the ResourceSlices of node $NODE_NAME"

for _ in $(seq 1 60); do
  grep -q "registered with the kubelet" "$WORK/mock-accel-dra.log" && break
  sleep 1
done
grep -q "registered with the kubelet" "$WORK/mock-accel-dra.log" \
  || fail "kubelet did not register mock-accel-dra; log tail: $(tail -3 "$WORK/mock-accel-dra.log")"
pass "mock-accel-dra registered with the real kubelet"

K apply -f "$ROOT/deploy/deviceclasses.yaml" >/dev/null
t2=$(date +%s.%N)
K apply -f - >/dev/null <<'MANIFEST'
apiVersion: resource.k8s.io/v1
kind: ResourceClaim
metadata: {name: basic, namespace: default}
spec:
  devices:
    requests:
    - name: accel
      exactly: {deviceClassName: mock-accel-pf}
---
apiVersion: v1
kind: Pod
metadata: {name: basic-allocation-test, namespace: default}
spec:
  restartPolicy: Never
  dnsPolicy: Default
  resourceClaims: [{name: accel, resourceClaimName: basic}]
  containers:
  - name: app
    image: localhost/mock-accel/busybox:test
    imagePullPolicy: Never
    resources: {claims: [{name: accel}]}
    command:
    - /bin/sh
    - -c
    - >-
      env | grep ^MOCK_ACCEL | sort;
      d=/sys/class/mock-accel/$MOCK_ACCEL_DEVICE;
      echo status=$(cat $d/status);
      if touch $d/probe 2>/dev/null; then echo mount=rw; else echo mount=ro; fi
MANIFEST
K wait --for=jsonpath='{.status.phase}'=Succeeded pod/basic-allocation-test --timeout=120s >/dev/null \
  || fail "basic allocation pod did not succeed: $(K describe pod basic-allocation-test | grep -E 'Warning|Error' | tail -2)"
echo "test-node: claim to pod Succeeded: $(echo "$(date +%s.%N) - $t2" | bc) s" >&2
logs=$(K logs basic-allocation-test)
echo "$logs" | sed 's/^/test-node:   /' >&2
dev=$(echo "$logs" | sed -n 's/^MOCK_ACCEL_DEVICE=//p')
[[ -n $dev ]] || fail "no MOCK_ACCEL_DEVICE in the container env"
echo "$logs" | grep -q '^MOCK_ACCEL_UUID=.' || fail "no MOCK_ACCEL_UUID in the container env"
echo "$logs" | grep -q '^MOCK_ACCEL_PCI=0000:' || fail "no MOCK_ACCEL_PCI in the container env"
echo "$logs" | grep -qx 'status=1' || fail "device status seen in the container is not 1"
echo "$logs" | grep -qx 'mount=ro' || fail "device sysfs directory is not mounted read-only"
[[ $(cat "$FIX/sys/class/mock-accel/$dev/status") == 1 ]] || fail "host status of $dev is not 1 while prepared"
ls "$CDI_DIR"/mock-accel.example.com-*.json >/dev/null 2>&1 || fail "no CDI spec in $CDI_DIR"
pass "basic allocation: env, read-only sysfs mount, status 1, CDI spec ($dev)"

K delete pod basic-allocation-test --wait=true --timeout=60s >/dev/null
K delete resourceclaim basic --wait=true --timeout=60s >/dev/null
for _ in $(seq 1 60); do
  [[ $(cat "$FIX/sys/class/mock-accel/$dev/status") == 0 ]] \
    && ! ls "$CDI_DIR"/mock-accel.example.com-*.json >/dev/null 2>&1 && break
  sleep 1
done
[[ $(cat "$FIX/sys/class/mock-accel/$dev/status") == 0 ]] || fail "status of $dev not back to 0 after the pod was deleted"
if ls "$CDI_DIR"/mock-accel.example.com-*.json >/dev/null 2>&1; then
  fail "CDI spec left after the pod was deleted"
fi
pass "after deletion: status 0 and CDI spec removed"
echo "test-node: NUMA/PCIe locality, VFs, mixed PF+VF and the 10-pod device benchmark are not wired into this tier yet" >&2
