#!/usr/bin/env bash
# Install the Debian packages the host needs (idempotent). The heavy, version-sensitive peers
# (QEMU 11.1, the kernel toolchain, Kubernetes) live in caches built by the provision scripts.
set -euo pipefail
packages="debootstrap openssl ca-certificates"
missing=""
for p in $packages; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "install-host-deps: missing Debian packages:$missing; run: sudo apt-get install$missing" >&2
        exit 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing
fi
command -v cargo >/dev/null || { echo "install-host-deps: cargo not found; install Rust with rustup (https://rustup.rs)" >&2; exit 1; }
rustup component add rustfmt clippy >/dev/null 2>&1 || true
