#!/usr/bin/env bash
# Build the guest for mock-accel's end-to-end tests, cached outside the repository:
#   kernel   Debian linux-source-7.3 + tinyconfig + kmod/guest.config, Rust enabled, LLVM=1
#            (~10.5 min on 2 cores; rebuilt only when the rootfs, the fragment or this
#            script change)
#   module   kmod/ (mock_accel.ko; ~2 s, rebuilt when kmod/ changes)
#   firmware mock-accel-wordlist.txt: 7776 words from Debian's wamerican (generated, never
#            committed)
#   initramfs busybox-static + module + firmware + kmod/guest-init.sh
# Prints `KEY=PATH` lines for the artifacts on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
cache="${MOCK_ACCEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mock-accel}"
root="${MOCK_ACCEL_ROOTFS:-$(scripts/provision-rootfs.sh | tail -n1)}"
log() { printf 'build-guest: %s\n' "$*" >&2; }

# ---- kernel ---------------------------------------------------------------------------
kernel_key=$( { basename "$root"; cat kmod/guest.config; sed -n '/^# ---- kernel/,/^# ---- module/p' "$0"; } | sha256sum | cut -c1-16)
kdir="$cache/guest-kernel-$kernel_key"

in_root() {
    # Run a command in the trixie rootfs with $1 bind-mounted at /mnt/work.
    local dir=$1; shift
    mkdir -p "$root/mnt/work" "$root/proc"
    mountpoint -q "$root/proc" || mount -t proc proc "$root/proc"
    mount --bind "$dir" "$root/mnt/work"
    local rc=0
    chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
        bash -c "cd /mnt/work && $*" || rc=$?
    umount "$root/mnt/work"
    return $rc
}

if [ ! -f "$kdir/.complete" ]; then
    rm -rf "$kdir.partial"; mkdir -p "$kdir.partial"
    log "unpacking linux-source-7.3 into $kdir"
    start=$(date +%s)
    tar -xJf "$root"/usr/src/linux-source-7.3.tar.xz -C "$kdir.partial"
    mv "$kdir.partial"/linux-source-7.3 "$kdir.partial/src"
    cp kmod/guest.config "$kdir.partial/guest.config"
    log "configuring (tinyconfig + kmod/guest.config) and building bzImage (~10 min on 2 cores)"
    in_root "$kdir.partial" "cd src && make -s LLVM=1 tinyconfig && \
        scripts/kconfig/merge_config.sh -m .config ../guest.config >/dev/null && \
        make -s LLVM=1 olddefconfig && grep -q '^CONFIG_RUST=y' .config && \
        make -s LLVM=1 -j$(nproc) bzImage modules && make -s LLVM=1 modules_prepare" \
        > "$kdir.partial/build.log" 2>&1 || {
            tail -n 40 "$kdir.partial/build.log" >&2
            log "kernel build failed; full log: $kdir.partial/build.log"
            exit 1
        }
    for opt in $(grep -o '^CONFIG_[A-Z0-9_]*=y' kmod/guest.config); do
        grep -qx "$opt" "$kdir.partial/src/.config" || log "warning: $opt did not survive olddefconfig"
    done
    echo $(( $(date +%s) - start )) > "$kdir.partial/build-seconds"
    log "kernel built in $(cat "$kdir.partial/build-seconds") s"
    touch "$kdir.partial/.complete"
    mv "$kdir.partial" "$kdir"
fi
echo "KERNEL=$kdir/src/arch/x86/boot/bzImage"
echo "KDIR=$kdir/src"
# ---- module ---------------------------------------------------------------------------
