#!/bin/busybox sh
# Guest /init for mock-accel's end-to-end checks. Prints machine-readable `MOCKTEST key=value`
# lines on the serial console, then powers off.
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
echo "MOCKTEST boot=ok"
for d in /sys/bus/pci/devices/*; do
    v=$(cat $d/vendor); dv=$(cat $d/device)
    [ "$v" = 0x1de5 ] && echo "MOCKTEST pci=${d##*/} device=$dv numa_node=$(cat $d/numa_node)"
done
if insmod /lib/modules/mock_accel.ko; then echo "MOCKTEST insmod=ok"; else echo "MOCKTEST insmod=fail"; fi
for d in /sys/bus/pci/drivers/mock_accel/0000:*; do
    [ -e "$d" ] && echo "MOCKTEST bound=${d##*/}"
done
for c in /sys/class/mock-accel/*; do
    n=${c##*/}
    echo "MOCKTEST dev=$n pci=$(basename $(readlink $c/device))"
    echo "MOCKTEST sysfs dev=$n path=$(readlink -f $c) devpath=$(readlink -f $c/device) pci_numa=$(cat $c/device/numa_node)"
    for a in uuid memory_size capabilities status numa_node physfn; do
        [ -e $c/$a ] && echo "MOCKTEST attr=$n/$a value=$(cat $c/$a)"
    done
done
if [ -e /sys/class/mock-accel/mock0/status ]; then
    echo 1 > /sys/class/mock-accel/mock0/status && echo "MOCKTEST status_write=ok value=$(cat /sys/class/mock-accel/mock0/status)"
    if echo junk > /sys/class/mock-accel/mock0/status 2>/tmp/err; then echo "MOCKTEST junk_write=accepted"; else echo "MOCKTEST junk_write=rejected err=$(cat /tmp/err | tr ' ' _)"; fi
    if grep -q mocktest.host=1 /proc/cmdline; then
        # The host harness saw status=1 through the device's control socket and sets 7.
        i=0; while [ "$(cat /sys/class/mock-accel/mock0/status)" != 7 ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done
        echo "MOCKTEST host_status_seen=$(cat /sys/class/mock-accel/mock0/status)"
    fi
    echo 0 > /sys/class/mock-accel/mock0/status
fi
dmesg | grep 'mock-accel:' | sed 's/^/MOCKTEST-LOG /'
if rmmod mock_accel; then echo "MOCKTEST rmmod=ok"; else echo "MOCKTEST rmmod=fail"; fi
[ -e /sys/class/mock-accel ] && echo "MOCKTEST class_after_rmmod=present" || echo "MOCKTEST class_after_rmmod=gone"
dmesg | grep -E 'WARNING|Oops|BUG' | sed 's/^/MOCKTEST-PROBLEM /'
dmesg | grep -c -E 'WARNING|Oops|BUG' | sed 's/^/MOCKTEST kernel_problems=/'
echo "MOCKTEST done=1"
if grep -q mocktest.hold=1 /proc/cmdline; then
    # Launched by mock-accel-cluster: stay up (module reloaded) until the host stops QEMU.
    insmod /lib/modules/mock_accel.ko && echo "MOCKTEST hold=1"
    while :; do sleep 3600; done
fi
poweroff -f
