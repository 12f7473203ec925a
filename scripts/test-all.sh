#!/usr/bin/env bash
# Run every test tier of mock-accel, provisioning what is missing (cached outside the repo in
# ${MOCK_ACCEL_CACHE:-~/.cache/mock-accel}):
#   1. format, lints, unit/property tests, fuzz-corpus replay       (cargo)
#   2. vfio-user conformance against real QEMU 11.1 vfio-user-pci   (scripts/provision-rootfs.sh)
#   3. guest end to end: our kernel + mock_accel.ko under QEMU TCG  (scripts/build-guest.sh)
#   4. DRA against a real kube-apiserver/scheduler/controller-mgr   (scripts/provision-k8s.sh)
#      and the Helm chart rendered by a real helm                    (built by the test, cached)
#   5. full node: real kubelet + containerd (CDI) run the seeds'     (scripts/test-node.sh)
#      scenarios with our plugin
# Fails loudly at the first broken step. Needs root (debootstrap, chroot).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n=== %s (%s)\n' "$*" "$(date -u +%H:%M:%S)"; }
t0=$(date +%s)

step "host prerequisites"
scripts/install-host-deps.sh

step "provision QEMU 11.1 + kernel toolchain rootfs"
MOCK_ACCEL_ROOTFS=$(scripts/provision-rootfs.sh | tail -n1)
export MOCK_ACCEL_ROOTFS

for s in build-guest provision-k8s; do
    if [ -x "scripts/$s.sh" ]; then
        step "scripts/$s.sh"
        "scripts/$s.sh"
    fi
done

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo test (all tiers)"
cargo test --workspace --locked --no-fail-fast -- --test-threads=1

step "full-node tier: scripts/test-node.sh"
scripts/test-node.sh

step "done in $(( $(date +%s) - t0 )) s"
