#!/usr/bin/env bash
# Turn the MOCKTEST lines of a guest serial log (kmod/guest-init.sh) into a sysfs tree a DRA
# driver can read with --sysfs-root:
#   OUT/sys/class/mock-accel/mockN -> ../../devices/pci.../0000:BB:DD.F/mock-accel/mockN
#   OUT/sys/devices/.../0000:BB:DD.F/{numa_node}, .../mock-accel/mockN/{attrs, device -> ../..}
# Usage: scripts/export-sysfs-fixture.sh SERIAL_LOG OUT_DIR   (OUT_DIR is replaced)
set -euo pipefail
log=$1; out=$2
rm -rf "$out"; mkdir -p "$out/sys/class/mock-accel"
grep -a -o 'MOCKTEST sysfs .*' "$log" | tr -d '\r' | while read -r _ _ dev path devpath numa; do
    dev=${dev#dev=}; path=${path#path=}; devpath=${devpath#devpath=}; numa=${numa#pci_numa=}
    case "$path$devpath" in *..*) echo "bad path in log" >&2; exit 1;; esac
    mkdir -p "$out$path" "$out$devpath"
    echo "$numa" > "$out$devpath/numa_node"
    ln -sfn "$(realpath --relative-to="$out$path" "$out$devpath")" "$out$path/device"
    ln -sfn "$(realpath --relative-to="$out/sys/class/mock-accel" "$out$path")" "$out/sys/class/mock-accel/$dev"
done
grep -a -o 'MOCKTEST attr=.*' "$log" | tr -d '\r' | while read -r _ attr value; do
    attr=${attr#attr=}; value=${value#value=}
    dev=${attr%%/*}; name=${attr#*/}
    case "$name" in uuid|memory_size|capabilities|status|numa_node|physfn|sriov_numvfs|sriov_totalvfs) ;; *) continue;; esac
    printf '%s\n' "$value" > "$out/sys/class/mock-accel/$dev/$name"
done
echo "exported $(ls "$out/sys/class/mock-accel" | wc -l) devices to $out" >&2
