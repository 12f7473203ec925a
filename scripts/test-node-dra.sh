# Sourced by scripts/test-node.sh once the node is up: the seeds' testing-guide scenarios with
# our DRA plugin registered with the real kubelet, pods receiving mock-accel devices through
# DRA + CDI from containerd. Uses: K, fail, pass, ROOT, KUBECONFIG, NODE_NAME, CDI_DIR,
# KUBELET_ROOT.
#
# Scenarios: discovery, registration, basic allocation (env, read-only sysfs mount, status 1,
# CDI spec; after deletion status 0 and spec gone), every manifest in docs/examples/ (NUMA
# locality, PCIe locality, VFs of one PF, mixed PF + VF) with its constraint checked against
# the fixture, and the 10-pod benchmark (claim to Running).
DRA_BIN="${MOCK_ACCEL_DRA_BIN:-$ROOT/target/debug/mock-accel-dra}"
GEN_FIXTURE="${MOCK_ACCEL_GEN_FIXTURE_BIN:-$ROOT/target/debug/examples/gen_fixture}"
[[ -x $DRA_BIN ]] || fail "DRA scenarios not run: $DRA_BIN missing (build it with 'cargo build -p dra')"
[[ -x $GEN_FIXTURE ]] || fail "$GEN_FIXTURE missing (build it with 'cargo build -p dra --examples')"
WORK=$(mktemp -d /tmp/ma-node-dra-XXXXXX)
IMAGE=localhost/mock-accel/busybox:test
DRA_PID=
trap 'stop_plugin; [[ ${MOCK_ACCEL_NODE_KEEP:-0} == 1 ]] || "$HERE/node-up.sh" down' EXIT

now() { date +%s.%N; }
since() { echo "$(now) - $1" | bc; }

# How the driver runs: MOCK_ACCEL_NODE_DRA=daemonset (default; deploy/ applied through a
# kustomize overlay with a locally built image, the way users run it) or =process (a plain
# process on the host; quicker to debug).
DRA_MODE="${MOCK_ACCEL_NODE_DRA:-daemonset}"
DS=mock-accel-dra-kubelet-plugin
CTR_BIN=$(ls -d "${MOCK_ACCEL_CACHE:-$HOME/.cache/mock-accel}"/containerd-*/bin/ctr | head -1)
DRA_REF=localhost/mock-accel/dra:node-test

# The overlay: image built here, API server reached at the node IP (no kube-proxy on this
# node, so the kubernetes Service IP is not routable), kubelet and CDI directories at this
# node's paths, mounted at the same paths in the container (the plugin reports its socket path
# to the kubelet, and CDI host paths must be host paths), and the fixture tree as sysfs root.
write_overlay() { # SYSFS_ROOT
  local o=$WORK/overlay api_port
  api_port=$(grep -o 'https://[^" ,}]*' "$KUBECONFIG" | head -1 | sed 's#.*:##')
  mkdir -p "$o"
  cat > "$o/kustomization.yaml" <<YAML
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources: [$(realpath --relative-to="$o" "$ROOT/deploy")]
patches:
- patch: |
    apiVersion: apps/v1
    kind: DaemonSet
    metadata: {name: $DS, namespace: mock-accel}
    spec:
      template:
        spec:
          containers:
          - name: kubelet-plugin
            image: $DRA_REF
            imagePullPolicy: Never
            args: [kubelet-plugin, --sysfs-root=$1, --cdi-root=$CDI_DIR, --rescan-interval=2s,
                   --registrar-dir=$KUBELET_ROOT/plugins_registry,
                   --plugin-dir=$KUBELET_ROOT/plugins/mock-accel.example.com]
            env:
            - {name: KUBERNETES_SERVICE_HOST, value: "$NODE_IP"}
            - {name: KUBERNETES_SERVICE_PORT, value: "$api_port"}
            volumeMounts:
            - {name: plugins-registry, mountPath: $KUBELET_ROOT/plugins_registry}
            - {name: plugins, mountPath: $KUBELET_ROOT/plugins}
            - {name: cdi, mountPath: $CDI_DIR}
            - {name: fixtures, mountPath: $WORK}
          volumes:
          - {name: plugins-registry, hostPath: {path: $KUBELET_ROOT/plugins_registry}}
          - {name: plugins, hostPath: {path: $KUBELET_ROOT/plugins}}
          - {name: cdi, hostPath: {path: $CDI_DIR}}
          - {name: fixtures, hostPath: {path: $WORK, type: Directory}}
YAML
  echo "$o"
}

if [[ $DRA_MODE == daemonset ]]; then
  NODE_IP=$(K get node "$NODE_NAME" -o jsonpath='{.status.addresses[?(@.type=="InternalIP")].address}')
  [[ -n $NODE_IP ]] || fail "node $NODE_NAME has no InternalIP"
  t=$(now)
  "$HERE/provision-node.sh" --driver-image "$DRA_BIN" "$DRA_REF" "$WORK/dra-image.tar" \
    || fail "building the driver image failed"
  "$CTR_BIN" --address "$CTR_ADDRESS" -n k8s.io images import "$WORK/dra-image.tar" >/dev/null \
    || fail "importing $DRA_REF into containerd failed"
  echo "test-node: driver image $DRA_REF built and imported in $(since "$t") s ($(du -h "$WORK/dra-image.tar" | cut -f1))" >&2
fi

# start_plugin ROOT: runs the driver on this node and waits until its devices are published
# and the kubelet registered it.
start_plugin() {
  FIX=$1
  local want log=$WORK/mock-accel-dra-$(basename "$1").log
  want=$(ls "$FIX/sys/class/mock-accel" | wc -l)
  if [[ $DRA_MODE == daemonset ]]; then
    K apply -k "$(write_overlay "$FIX")" >/dev/null || fail "kubectl apply -k (deploy/ + node overlay) failed"
    K -n mock-accel rollout status "ds/$DS" --timeout=120s >/dev/null \
      || fail "DaemonSet $DS not ready: $(K -n mock-accel describe pods | grep -E 'Warning|Error' | tail -2)"
  else
    "$DRA_BIN" kubelet-plugin --kubeconfig "$KUBECONFIG" --node-name "$NODE_NAME" --sysfs-root "$FIX" \
      --cdi-root "$CDI_DIR" --registrar-dir "$KUBELET_ROOT/plugins_registry" \
      --plugin-dir "$KUBELET_ROOT/plugins/mock-accel.example.com" --rescan-interval 2s \
      > "$log" 2>&1 &
    DRA_PID=$!
  fi
  local n=0
  for _ in $(seq 1 60); do
    n=$(K get resourceslices --field-selector "spec.nodeName=$NODE_NAME" \
          -o jsonpath='{range .items[*]}{.spec.devices[*].name} {end}' 2>/dev/null | wc -w)
    [[ $n -eq $want ]] && break
    sleep 1
  done
  [[ $n -eq $want ]] || fail "discovery: $n devices published for $NODE_NAME (want $want); log: $(plugin_log | tail -3)"
  for _ in $(seq 1 60); do
    plugin_log | grep -q "registered with the kubelet" && break
    sleep 1
  done
  plugin_log | grep -q "registered with the kubelet" \
    || fail "kubelet did not register mock-accel-dra; log tail: $(plugin_log | tail -3)"
}

plugin_log() {
  if [[ $DRA_MODE == daemonset ]]; then
    K -n mock-accel logs "ds/$DS" 2>/dev/null
  else
    cat "$WORK/mock-accel-dra-$(basename "$FIX").log"
  fi
}

stop_plugin() {
  if [[ -n $DRA_PID ]]; then
    kill "$DRA_PID" 2>/dev/null; wait "$DRA_PID" 2>/dev/null; DRA_PID=
  fi
}

# Host-side facts of a device in the current fixture.
dev_numa() { cat "$FIX/sys/class/mock-accel/$1/numa_node"; }
dev_root() { readlink -f "$FIX/sys/class/mock-accel/$1" | grep -o 'pci[0-9a-f]\{4\}:[0-9a-f]\{2\}' | head -1; }
dev_pf() { if [[ -e $FIX/sys/class/mock-accel/$1/physfn ]]; then cat "$FIX/sys/class/mock-accel/$1/physfn"; else echo "$1"; fi; }
dev_status() { cat "$FIX/sys/class/mock-accel/$1/status"; }
local_image() { sed "s#^\( *\)image: busybox:1.36#\1image: $IMAGE\n\1imagePullPolicy: Never#"; }
no_specs() { ! ls "$CDI_DIR"/mock-accel.example.com-*.json >/dev/null 2>&1; }

# wait_released DEV...: status 0 on the host and no CDI spec left, within 60 s.
wait_released() {
  for _ in $(seq 1 120); do
    local busy=0
    for d in "$@"; do [[ $(dev_status "$d") == 0 ]] || busy=1; done
    [[ $busy == 0 ]] && no_specs && return 0
    sleep 0.5
  done
  for d in "$@"; do [[ $(dev_status "$d") == 0 ]] || fail "status of $d not back to 0 after the pod was deleted"; done
  fail "CDI spec left after the pod was deleted: $(ls "$CDI_DIR")"
}

# pod_devices LOGS: the device names of a pod, from MOCK_ACCEL_DEVICES (claim order).
pod_devices() { echo "$1" | sed -n 's/^MOCK_ACCEL_DEVICES=//p' | tr ',' ' '; }

cp -a "$ROOT/tests/fixtures/sysfs-guest" "$WORK/guest-fixture"
start_plugin "$WORK/guest-fixture"
pass "discovery: $(ls "$FIX/sys/class/mock-accel" | wc -l) devices of the guest fixture in node $NODE_NAME's ResourceSlices"
slices=$(K get resourceslices --field-selector "spec.nodeName=$NODE_NAME" -o json)
for attr in uuid deviceType pciAddress numaNode capabilities resource.kubernetes.io/pcieRoot resource.kubernetes.io/pciBusID; do
  [[ $(echo "$slices" | grep -c "\"$attr\"") -ge 6 ]] || fail "discovery: attribute $attr missing on some device"
done
pass "mock-accel-dra ($DRA_MODE) registered with the real kubelet; every device carries the required attributes"
K apply -f "$ROOT/deploy/deviceclasses.yaml" >/dev/null

# --- basic allocation: env, read-only sysfs mount, status 1, CDI spec ------------------------
t=$(now)
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
metadata: {name: basic-check, namespace: default}
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
      echo files=$(ls $MOCK_ACCEL_SYSFS | tr '\n' ' ');
      echo status=$(cat $MOCK_ACCEL_SYSFS/status);
      if touch $MOCK_ACCEL_SYSFS/probe 2>/dev/null; then echo mount=rw; else echo mount=ro; fi;
      exec sleep 3600
MANIFEST
# The pod keeps running: the kubelet unprepares a claim as soon as its pod terminates.
K wait --for=jsonpath='{.status.phase}'=Running pod/basic-check --timeout=120s >/dev/null \
  || fail "basic allocation pod not Running: $(K describe pod basic-check | grep -E 'Warning|Error' | tail -2)"
echo "test-node: basic allocation, claim to pod Running: $(since "$t") s" >&2
logs=
for _ in $(seq 1 20); do logs=$(K logs basic-check 2>/dev/null) && [[ $logs == *mount=* ]] && break; sleep 0.5; done
echo "$logs" | sed 's/^/test-node:   /' >&2
dev=$(echo "$logs" | sed -n 's/^MOCK_ACCEL_DEVICE=//p')
[[ -n $dev ]] || fail "no MOCK_ACCEL_DEVICE in the container env"
echo "$logs" | grep -qx "MOCK_ACCEL_UUID=$(cat "$FIX/sys/class/mock-accel/$dev/uuid")" \
  || fail "MOCK_ACCEL_UUID in the container is not $dev's uuid"
pci=$(basename "$(readlink -f "$FIX/sys/class/mock-accel/$dev/device")")
echo "$logs" | grep -qx "MOCK_ACCEL_PCI=$pci" || fail "MOCK_ACCEL_PCI in the container is not $pci"
for f in uuid memory_size capabilities status numa_node; do
  echo "$logs" | grep '^files=' | grep -qw "$f" || fail "sysfs mount of $dev lacks $f"
done
echo "$logs" | grep -qx 'status=1' || fail "device status seen in the container is not 1"
echo "$logs" | grep -qx 'mount=ro' || fail "device sysfs directory is not mounted read-only"
[[ $(dev_status "$dev") == 1 ]] || fail "host status of $dev is not 1 while prepared"
no_specs && fail "no CDI spec in $CDI_DIR while the claim is prepared"
pass "basic allocation: env names $dev ($pci), sysfs mounted read-only, status 1, CDI spec written"
K delete pod basic-check --grace-period=1 --wait=true --timeout=60s >/dev/null
K delete resourceclaim basic --wait=true --timeout=60s >/dev/null
wait_released "$dev"
pass "after deletion: status of $dev is 0 and the CDI spec is removed"

# --- docs/examples: each pod Running with devices that satisfy its constraint -----------------
check_example() { # NAME DEV...: asserts the example's rule over the pod's devices
  local name=$1; shift
  case $name in
    basic-allocation) [[ $# == 1 ]] || fail "$name: $# devices (want 1)" ;;
    numa-locality)
      [[ $# == 2 ]] || fail "$name: $# devices (want 2)"
      [[ $(dev_numa "$1") == $(dev_numa "$2") ]] || fail "$name: $1 on NUMA $(dev_numa "$1"), $2 on NUMA $(dev_numa "$2")" ;;
    pcie-locality)
      [[ $# == 2 ]] || fail "$name: $# devices (want 2)"
      [[ $(dev_root "$1") == $(dev_root "$2") ]] || fail "$name: $1 under $(dev_root "$1"), $2 under $(dev_root "$2")" ;;
    sriov-vf)
      [[ $# == 2 && $1 == *_vf* && $2 == *_vf* ]] || fail "$name: want 2 VFs, got $*"
      [[ $(dev_pf "$1") == $(dev_pf "$2") ]] || fail "$name: $1 and $2 have different PFs" ;;
    mixed-pf-vf)
      [[ $# == 2 && $1 != *_vf* && $2 == *_vf* ]] || fail "$name: want PF then VF, got $*" ;;
    *) fail "no check written for docs/examples/$name.yaml" ;;
  esac
}
for example in "$ROOT"/docs/examples/*.yaml; do
  name=$(basename "$example" .yaml)
  t=$(now)
  local_image < "$example" | K apply -f - >/dev/null
  K wait --for=jsonpath='{.status.phase}'=Running "pod/$name-test" --timeout=120s >/dev/null \
    || fail "$name: pod not Running: $(K describe pod "$name-test" | grep -E 'Warning|Error' | tail -2)"
  running=$(since "$t")
  logs=
  for _ in $(seq 1 20); do logs=$(K logs "$name-test" 2>/dev/null) && [[ $logs == *MOCK_ACCEL_DEVICES=* ]] && break; sleep 0.5; done
  devs=$(pod_devices "$logs")
  [[ -n $devs ]] || fail "$name: no MOCK_ACCEL_DEVICES in the container env: $logs"
  # shellcheck disable=SC2086
  check_example "$name" $devs
  for d in $devs; do
    [[ $(dev_status "$d") == 1 ]] || fail "$name: host status of $d is not 1"
    echo "$logs" | grep -qx "$d" || fail "$name: /run/mock-accel/$d not mounted in the container"
  done
  facts=$(for d in $devs; do printf '%s(numa %s, %s, pf %s) ' "$d" "$(dev_numa "$d")" "$(dev_root "$d")" "$(dev_pf "$d")"; done)
  pass "$name: Running in ${running} s with $facts"
  K delete -f "$example" --grace-period=1 --wait=true --timeout=60s >/dev/null 2>&1 || K delete pod "$name-test" --grace-period=1 --wait=true >/dev/null
  # shellcheck disable=SC2086
  wait_released $devs
done
pass "every docs/examples manifest: constraint satisfied, devices released after deletion"

# --- throughput: 10 pods with one device each, claim to Running -------------------------------
# The guest fixture has 6 devices; the benchmark uses a generated 12-device tree (no /dev nodes).
stop_plugin
"$GEN_FIXTURE" "$WORK/bench-fixture" 12 >/dev/null
rm -rf "$WORK/bench-fixture/dev"
start_plugin "$WORK/bench-fixture"
bench_manifest() {
  cat <<'MANIFEST'
apiVersion: resource.k8s.io/v1
kind: ResourceClaimTemplate
metadata: {name: bench-one, namespace: default}
spec:
  spec:
    devices:
      requests:
      - name: accel
        exactly: {deviceClassName: mock-accel}
MANIFEST
  for i in $(seq 0 9); do
    cat <<MANIFEST
---
apiVersion: v1
kind: Pod
metadata: {name: bench-$i, namespace: default, labels: {app: dra-bench}}
spec:
  dnsPolicy: Default
  terminationGracePeriodSeconds: 0
  resourceClaims: [{name: accel, resourceClaimTemplateName: bench-one}]
  containers:
  - name: app
    image: $IMAGE
    imagePullPolicy: Never
    resources: {claims: [{name: accel}]}
    command: ["/bin/sleep", "3600"]
MANIFEST
  done
}
t=$(now)
bench_manifest | K apply -f - >/dev/null
K wait --for=jsonpath='{.status.phase}'=Running pod -l app=dra-bench --timeout=180s >/dev/null \
  || fail "10 pods with devices not Running within 180 s: $(K get pods -l app=dra-bench --no-headers | grep -v Running | head -3)"
bench=$(since "$t")
busy=$(grep -l '^1$' "$FIX"/sys/class/mock-accel/*/status | wc -l)
[[ $busy == 10 ]] || fail "benchmark: $busy devices have status 1 (want 10)"
echo "test-node: BENCH 10 pods x 1 device, claims to Running: ${bench} s (seeds expect < 30 s)" >&2
pass "10 pods with one device each Running in ${bench} s; 10 devices prepared"
K delete pod -l app=dra-bench --wait=true --timeout=120s >/dev/null
K delete resourceclaimtemplate bench-one >/dev/null
# shellcheck disable=SC2046
wait_released $(ls "$FIX/sys/class/mock-accel")
pass "benchmark pods deleted: all 12 devices back to status 0, no CDI spec left"
stop_plugin
