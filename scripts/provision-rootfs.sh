#!/usr/bin/env bash
# Provision a Debian trixie rootfs holding QEMU >= 10.1 (trixie-backports) and the Rust-for-Linux
# kernel toolchain, cached outside the repository and keyed by this script's contents.
#
#   scripts/provision-rootfs.sh        # prints the rootfs path on stdout (last line)
#
# Why a rootfs: the host is Debian 12; vfio-user-pci needs QEMU >= 10.1, which only trixie-backports
# ships. Running it in a chroot keeps trixie libraries out of the host. See docs/testing.md.
set -euo pipefail

cache="${MOCK_ACCEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mock-accel}"
packages_backports="qemu-system-x86 qemu-utils linux-source-7.3 libelf-dev"
packages_trixie="rustc rust-src bindgen clang llvm lld make gcc libc6-dev flex bison bc cpio \
busybox-static kmod wamerican xz-utils ca-certificates python3 libssl-dev zstd"
key=$( { cat "$0"; } | sha256sum | cut -c1-16)
root="$cache/rootfs-trixie-$key"

log() { printf 'provision-rootfs: %s\n' "$*" >&2; }

if [ -f "$root/.complete" ]; then
    echo "$root"
    exit 0
fi

if [ "$(id -u)" != 0 ]; then
    log "needs root (debootstrap and chroot); run: sudo $0"
    exit 1
fi

if ! command -v debootstrap >/dev/null; then
    log "installing debootstrap on the host"
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >&2
fi

mkdir -p "$cache"
rm -rf "$root.partial"
log "debootstrap trixie into $root (about 3 minutes)"
start=$(date +%s)
debootstrap --variant=minbase trixie "$root.partial" http://deb.debian.org/debian >&2
cat > "$root.partial/etc/apt/sources.list" <<SRC
deb http://deb.debian.org/debian trixie main
deb http://deb.debian.org/debian trixie-backports main
SRC
mount_proc() { mount -t proc proc "$root.partial/proc"; }
umount_proc() { umount "$root.partial/proc" 2>/dev/null || true; }
trap umount_proc EXIT
mount_proc
chroot "$root.partial" apt-get update -qq >&2
log "installing $packages_backports (trixie-backports) and the kernel toolchain"
chroot "$root.partial" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    -t trixie-backports $packages_backports >&2
chroot "$root.partial" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    $packages_trixie >&2
chroot "$root.partial" apt-get clean >&2
umount_proc
trap - EXIT
version=$(chroot "$root.partial" qemu-system-x86_64 --version | head -n1)
log "rootfs ready in $(( $(date +%s) - start )) s: $version"
touch "$root.partial/.complete"
mv "$root.partial" "$root"
echo "$root"
