#!/usr/bin/env bash
# Hand-written bring-up of the mock_accel guest driver (development aid, not the e2e test):
# builds the module against the cached guest kernel (scripts/build-guest.sh), packs an
# initramfs (busybox-static + module + kmod/guest-init.sh), starts device servers for one PF
# (label UUID) and one VF (RFC 4122 UUID) at functions 0/1 of one slot behind a pxb-pcie on
# NUMA node 1, boots QEMU TCG in the trixie rootfs and prints the MOCKTEST lines.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
root="${MOCK_ACCEL_ROOTFS:-$(scripts/provision-rootfs.sh | tail -n1)}"
eval "$(scripts/build-guest.sh | grep '^KDIR=\|^KERNEL=')"
kd=$(dirname "$KDIR")
device_bin="${DEVICE_BIN:-$repo/target/debug/device}"
[ -x "$device_bin" ] || { echo "guest-smoke: build the device server first: cargo build -p device" >&2; exit 1; }

t0=$(date +%s.%N)
rm -rf "$kd/mod-build" && cp -r kmod "$kd/mod-build"
mkdir -p "$root/mnt/kbuild"; mountpoint -q "$root/proc" || mount -t proc proc "$root/proc"
mount --bind "$kd" "$root/mnt/kbuild"
chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
    make -s -C /mnt/kbuild/mod-build KDIR=/mnt/kbuild/src >&2 || { umount "$root/mnt/kbuild"; exit 1; }
umount "$root/mnt/kbuild"
t1=$(date +%s.%N)
echo "guest-smoke: module built in $(echo "$t1 - $t0" | bc) s" >&2

work="$root/tmp/ma-smoke"; rm -rf "$work"; mkdir -p "$work/initrd"/{bin,dev,proc,sys,lib/modules,lib/firmware}
cp "$root/usr/bin/busybox" "$work/initrd/bin/busybox"
cp "$kd/mod-build/mock_accel.ko" "$work/initrd/lib/modules/"
cp kmod/guest-init.sh "$work/initrd/init"
chroot "$root" sh -c 'cd /tmp/ma-smoke/initrd && find . | cpio -o -H newc --quiet | gzip -1 > ../initrd.gz'
cp "$KERNEL" "$work/bzImage"

"$device_bin" -u NODE1-NUMA1-PF "$work/pf.sock" --memory-size 8G --capabilities 0x5 & pf=$!
"$device_bin" -u 12345678-9abc-def0-1234-56789abcdef0 --vf 0 "$work/vf0.sock" --memory-size 4G & vf=$!
trap 'kill $pf $vf 2>/dev/null || true' EXIT
for _ in $(seq 50); do [ -S "$work/pf.sock" ] && [ -S "$work/vf0.sock" ] && break; sleep 0.1; done
mountpoint -q "$root/dev" || mount --bind /dev "$root/dev"
t2=$(date +%s.%N)
timeout 120 chroot "$root" qemu-system-x86_64 -machine q35 -accel tcg -nodefaults -nographic -no-user-config \
    -smp 2,sockets=2 -m 512M \
    -object memory-backend-memfd,id=mem0,size=256M,share=on -numa node,nodeid=0,memdev=mem0,cpus=0 \
    -object memory-backend-memfd,id=mem1,size=256M,share=on -numa node,nodeid=1,memdev=mem1,cpus=1 \
    -device pxb-pcie,id=pxb1,bus=pcie.0,bus_nr=32,numa_node=1 \
    -device pcie-root-port,id=rp1_0,bus=pxb1,chassis=2,slot=0 \
    -device '{"driver":"vfio-user-pci","id":"pf","socket":{"type":"unix","path":"/tmp/ma-smoke/pf.sock"},"bus":"rp1_0","addr":"0.0","multifunction":true,"rombar":0}' \
    -device '{"driver":"vfio-user-pci","id":"vf0","socket":{"type":"unix","path":"/tmp/ma-smoke/vf0.sock"},"bus":"rp1_0","addr":"0.1","rombar":0}' \
    -kernel /tmp/ma-smoke/bzImage -initrd /tmp/ma-smoke/initrd.gz \
    -append "console=ttyS0 panic=-1 quiet" -serial stdio -no-reboot > "$work/serial.log" 2>&1 || true
t3=$(date +%s.%N)
grep MOCKTEST "$work/serial.log" || { tail -40 "$work/serial.log"; exit 1; }
echo "guest-smoke: boot to checks $(echo "$t3 - $t2" | bc) s" >&2
