#!/usr/bin/env bash
# Build the guest for mock-accel's end-to-end tests, cached outside the repository:
#   kernel   Debian linux-source-7.3 + tinyconfig + kmod/guest.config, Rust enabled, LLVM=1
#            (~10.5 min on 2 cores; rebuilt only when the rootfs, the fragment or this
#            script change)
#   module   kmod/ (mock_accel.ko; ~2 s, rebuilt when kmod/ changes)
#   firmware mock-accel-wordlist.txt: 7776 words from Debian's wamerican (generated, never
#            committed)
#   tool     mock-accel-ioctl (uapi/), linked statically for the busybox initramfs
#   initramfs busybox-static + module + firmware + tool + kmod/guest-init.sh
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
# Module + firmware + tool + initramfs: keyed by the kernel key and every file under kmod/
# and uapi/.
mod_key=$( { echo "$kernel_key"; find kmod uapi -type f ! -name '*.o' ! -name '*.ko' ! -name '.*' | LC_ALL=C sort | xargs cat; sed -n '/^# ---- module/,$p' "$0"; } | sha256sum | cut -c1-16)
mdir="$cache/guest-initramfs-$mod_key"
if [ ! -f "$mdir/.complete" ]; then
    start=$(date +%s.%N)
    rm -rf "$kdir/mod-build" && mkdir -p "$kdir/mod-build"
    cp kmod/Kbuild kmod/Makefile kmod/*.rs "$kdir/mod-build/"
    in_root "$kdir" "make -s -C mod-build KDIR=/mnt/work/src" >&2
    mid=$(date +%s.%N)
    rm -rf "$mdir.partial"; mkdir -p "$mdir.partial"/initrd/{bin,dev,proc,sys,tmp,lib/modules,lib/firmware}
    cp "$kdir/mod-build/mock_accel.ko" "$mdir.partial/"
    # Word list rule (documented in docs/guest-driver.md): wamerican's american-english,
    # words of 3-9 lowercase ASCII letters only, deduplicated, sorted (C locale); then 7776
    # evenly spaced entries: index floor(i * N / 7776) for i in 0..7775.
    grep -E '^[a-z]{3,9}$' "$root/usr/share/dict/american-english" | LC_ALL=C sort -u \
        | awk '{w[NR-1]=$0} END {n=NR; if (n < 7776) exit 1; for (i = 0; i < 7776; i++) print w[int(i * n / 7776)]}' \
        > "$mdir.partial/mock-accel-wordlist.txt"
    [ "$(wc -l < "$mdir.partial/mock-accel-wordlist.txt")" = 7776 ] || { log "word list generation failed"; exit 1; }
    cp "$root/usr/bin/busybox" "$mdir.partial/initrd/bin/busybox"
    # The ioctl tool: glibc static (libc6-dev ships libc.a), own target dir so the static
    # flags never invalidate the workspace build.
    RUSTFLAGS="-C target-feature=+crt-static -C strip=symbols" cargo build --release --locked -q \
        -p mock-accel-uapi --bin mock-accel-ioctl --target x86_64-unknown-linux-gnu \
        --target-dir "$cache/guest-tools-target" >&2
    cp "$cache/guest-tools-target/x86_64-unknown-linux-gnu/release/mock-accel-ioctl" "$mdir.partial/initrd/bin/"
    cp "$mdir.partial/mock_accel.ko" "$mdir.partial/initrd/lib/modules/"
    cp "$mdir.partial/mock-accel-wordlist.txt" "$mdir.partial/initrd/lib/firmware/"
    cp kmod/guest-init.sh "$mdir.partial/initrd/init"; chmod +x "$mdir.partial/initrd/init"
    in_root "$mdir.partial" "cd initrd && find . | cpio -o -H newc --quiet | gzip -1 > ../initramfs.gz"
    rm -rf "$mdir.partial/initrd"
    end=$(date +%s.%N)
    log "module built in $(echo "$mid - $start" | bc) s; initramfs + word list in $(echo "$end - $mid" | bc) s"
    touch "$mdir.partial/.complete"; rm -rf "$mdir"; mv "$mdir.partial" "$mdir"
fi
echo "MODULE=$mdir/mock_accel.ko"
echo "WORDLIST=$mdir/mock-accel-wordlist.txt"
echo "INITRAMFS=$mdir/initramfs.gz"
echo "IOCTL_TOOL=$cache/guest-tools-target/x86_64-unknown-linux-gnu/release/mock-accel-ioctl"
