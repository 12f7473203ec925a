#!/usr/bin/env bash
# Hand-written bring-up of the mock_accel guest driver (development aid, not the e2e test):
# takes the cached guest kernel and initramfs (scripts/build-guest.sh: module, word list,
# mock-accel-ioctl, kmod/guest-init.sh), starts device servers for one PF (label UUID) and one
# VF (RFC 4122 UUID) at functions 0/1 of one slot behind a pxb-pcie on NUMA node 1, boots
# QEMU TCG in the trixie rootfs and prints the MOCKTEST lines.
#   scripts/guest-smoke.sh           run the guest's checks, print them, power off
#   scripts/guest-smoke.sh --shell   then a root shell on this terminal with the module
#                                    loaded and the VF enabled (exit or `poweroff -f` ends it)
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
shell=0; [ "${1:-}" = --shell ] && shell=1
root="${MOCK_ACCEL_ROOTFS:-$(scripts/provision-rootfs.sh | tail -n1)}"
eval "$(scripts/build-guest.sh | grep '^KERNEL=\|^INITRAMFS=')"
device_bin="${DEVICE_BIN:-$repo/target/debug/device}"
[ -x "$device_bin" ] || { echo "guest-smoke: build the device server first: cargo build -p device" >&2; exit 1; }

work="$root/tmp/ma-smoke"; rm -rf "$work"; mkdir -p "$work"
cp "$KERNEL" "$work/bzImage"
cp "$INITRAMFS" "$work/initrd.gz"

"$device_bin" -u NODE1-NUMA1-PF "$work/pf.sock" --memory-size 8G --capabilities 0x5 & pf=$!
"$device_bin" -u 12345678-9abc-def0-1234-56789abcdef0 --vf 0 "$work/vf0.sock" --memory-size 4G & vf=$!
trap 'kill $pf $vf 2>/dev/null || true' EXIT
for _ in $(seq 50); do [ -S "$work/pf.sock" ] && [ -S "$work/vf0.sock" ] && break; sleep 0.1; done
mountpoint -q "$root/dev" || mount --bind /dev "$root/dev"
t2=$(date +%s.%N)
qemu=(chroot "$root" qemu-system-x86_64 -machine q35 -accel tcg -nodefaults -nographic -no-user-config
    -smp 2,sockets=2 -m 512M
    -object memory-backend-memfd,id=mem0,size=256M,share=on -numa node,nodeid=0,memdev=mem0,cpus=0
    -object memory-backend-memfd,id=mem1,size=256M,share=on -numa node,nodeid=1,memdev=mem1,cpus=1
    -device pxb-pcie,id=pxb1,bus=pcie.0,bus_nr=32,numa_node=1
    -device pcie-root-port,id=rp1_0,bus=pxb1,chassis=2,slot=0
    -device '{"driver":"vfio-user-pci","id":"pf","socket":{"type":"unix","path":"/tmp/ma-smoke/pf.sock"},"bus":"rp1_0","addr":"0.0","multifunction":true,"rombar":0}'
    -device '{"driver":"vfio-user-pci","id":"vf0","socket":{"type":"unix","path":"/tmp/ma-smoke/vf0.sock"},"bus":"rp1_0","addr":"0.1","rombar":0}'
    -kernel /tmp/ma-smoke/bzImage -initrd /tmp/ma-smoke/initrd.gz -no-reboot)
if [ $shell = 1 ]; then
    "${qemu[@]}" -append "console=ttyS0 panic=-1 quiet mocktest.shell=1" -serial mon:stdio
    exit 0
fi
timeout 120 "${qemu[@]}" -append "console=ttyS0 panic=-1 quiet" -serial stdio > "$work/serial.log" 2>&1 || true
t3=$(date +%s.%N)
grep MOCKTEST "$work/serial.log" || { tail -40 "$work/serial.log"; exit 1; }
echo "guest-smoke: boot to checks $(echo "$t3 - $t2" | bc) s" >&2
