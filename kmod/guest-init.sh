#!/bin/busybox sh
# Guest /init for mock-accel's end-to-end checks. Prints machine-readable `MOCKTEST key=value`
# lines on the serial console (asserted by tests/tests/guest.rs), then powers off.
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
KL=/sys/kernel/debug/kmemleak
# Leak check (kernel booted with kmemleak=on): forget suspects from boot before insmod.
if grep -q kmemleak=on /proc/cmdline && echo scan > $KL 2>/dev/null && echo clear > $KL; then
    echo "MOCKTEST kmemleak=on"
fi
C=/sys/class/mock-accel
FW=/lib/firmware/mock-accel-wordlist.txt
echo "MOCKTEST boot=ok"
for d in /sys/bus/pci/devices/*; do
    v=$(cat $d/vendor); dv=$(cat $d/device)
    [ "$v" = 0x1de5 ] && echo "MOCKTEST pci=${d##*/} device=$dv numa_node=$(cat $d/numa_node)"
done
if insmod /lib/modules/mock_accel.ko; then echo "MOCKTEST insmod=ok"; else echo "MOCKTEST insmod=fail"; fi
for d in /sys/bus/pci/drivers/mock_accel/0000:*; do
    [ -e "$d" ] && echo "MOCKTEST bound=${d##*/}"
done

# Errno name of the last failed shell redirect, from busybox's message.
errname() {
    case "$(cat /tmp/err)" in
        *"Invalid argument"*) echo EINVAL ;;
        *"Device or resource busy"*) echo EBUSY ;;
        *"out of range"*|*"Numerical result"*) echo ERANGE ;;
        *) tr ' \n' '__' < /tmp/err ;;
    esac
}
vf_count() { ls -d $C/${1}_vf* 2>/dev/null | wc -l; }
dev_count() { ls /dev/${1}_vf* 2>/dev/null | wc -l; }
pfs() { for c in $C/*; do [ -e $c/sriov_totalvfs ] && echo ${c##*/}; done; }

if grep -q mocktest.dra=1 /proc/cmdline; then
    # tests/tests/guest_dra.rs: our DRA plugin runs here against this guest's real sysfs and
    # publishes to the host's kube-apiserver (10.0.2.2 through QEMU user-mode networking).
    # The host steps the test by setting mock0's STATUS register: 7 enables every PF's VFs,
    # 8 disables them, 9 ends.
    ip link set lo up; ip link set eth0 up
    ip addr add 10.0.2.15/24 dev eth0; ip route add default via 10.0.2.2
    echo "MOCKTEST net=$(ip -o -4 addr show eth0 | awk '{print $4}') date=$(date -u +%Y-%m-%dT%H:%M:%S)"
    node=$(sed -n 's/.*mocktest\.node=\([^ ]*\).*/\1/p' /proc/cmdline)
    mkdir -p /tmp/reg /tmp/plug /tmp/cdi
    /opt/mock-accel/mock-accel-dra kubelet-plugin --node-name "$node" \
        --kubeconfig /etc/mock-accel/kubeconfig --registrar-dir /tmp/reg --plugin-dir /tmp/plug \
        --cdi-root /tmp/cdi --rescan-interval 1s > /tmp/dra.log 2>&1 &
    dra=$!
    echo "MOCKTEST dra_started node=$node"
    wait_status() {
        i=0; while [ "$(cat $C/mock0/status)" != $1 ] && [ $i -lt 3000 ]; do sleep 0.1; i=$((i+1)); done
    }
    wait_status 7
    for n in $(pfs); do cat $C/$n/sriov_totalvfs > $C/$n/sriov_numvfs; done
    echo "MOCKTEST dra_vfs=on devices=$(ls $C | tr '\n' ' ')"
    wait_status 8
    for n in $(pfs); do echo 0 > $C/$n/sriov_numvfs; done
    echo "MOCKTEST dra_vfs=off devices=$(ls $C | tr '\n' ' ')"
    wait_status 9
    kill $dra
    tail -n 30 /tmp/dra.log | sed 's/^/MOCKTEST-DRA /'
    dmesg | grep -c -E 'WARNING|Oops|BUG' | sed 's/^/MOCKTEST kernel_problems=/'
    echo "MOCKTEST done=1"
    poweroff -f
fi

# Emulated SR-IOV: VFs stay hidden until the PF's sriov_numvfs enables them.
for n in $(pfs); do
    echo "MOCKTEST sriov_initial dev=$n total=$(cat $C/$n/sriov_totalvfs) numvfs=$(cat $C/$n/sriov_numvfs) vfs=$(vf_count $n) devnodes=$(dev_count $n)"
done
for n in $(pfs); do
    t=$(cat $C/$n/sriov_totalvfs)
    if echo $t > $C/$n/sriov_numvfs 2>/tmp/err; then r=ok; else r=$(errname); fi
    echo "MOCKTEST sriov_enable dev=$n numvfs=$(cat $C/$n/sriov_numvfs) result=$r vfs=$(vf_count $n) devnodes=$(dev_count $n)"
done
if [ -e $C/mock0/sriov_numvfs ]; then
    for v in 1 99 junk -1; do
        if echo $v > $C/mock0/sriov_numvfs 2>/tmp/err; then r=accepted; else r=$(errname); fi
        echo "MOCKTEST sriov_write dev=mock0 value=$v result=$r numvfs=$(cat $C/mock0/sriov_numvfs)"
    done
fi

for c in $C/*; do
    n=${c##*/}
    echo "MOCKTEST dev=$n pci=$(basename $(readlink $c/device))"
    echo "MOCKTEST sysfs dev=$n path=$(readlink -f $c) devpath=$(readlink -f $c/device) pci_numa=$(cat $c/device/numa_node)"
    for a in uuid memory_size capabilities status numa_node physfn sriov_numvfs sriov_totalvfs; do
        [ -e $c/$a ] && echo "MOCKTEST attr=$n/$a value=$(cat $c/$a)"
    done
    [ -c /dev/$n ] && echo "MOCKTEST devnode=$n" || echo "MOCKTEST devnode_missing=$n"
done

# /dev/mockN: read text and ioctls (mock-accel-ioctl from uapi/).
devchecks() {
    tag=$1; dev=$2
    cat /dev/$dev | sed "s/^/MOCKTEST-READ $tag $dev: /"
    echo "MOCKTEST ioctl $tag dev=$dev $(mock-accel-ioctl status /dev/$dev 2>&1)"
    for w in 1 6 12; do
        echo "MOCKTEST ioctl $tag dev=$dev words=$w $(mock-accel-ioctl passphrase /dev/$dev $w 2>&1 | sed 's/.*: \(E[A-Z]*\) .*/error=\1/')"
    done
    for w in 0 13; do
        echo "MOCKTEST ioctl $tag dev=$dev words=$w $(mock-accel-ioctl passphrase /dev/$dev $w 2>&1 | sed 's/.*: \(E[A-Z]*\) .*/error=\1/')"
    done
}
devchecks wordlist mock0
devchecks wordlist mock0_vf0
# Guest-side latency of the whole path (tests/benches/guest_mmio.rs boots with mocktest.bench=N).
bench_n=$(sed -n 's/.*mocktest\.bench=\([0-9]*\).*/\1/p' /proc/cmdline)
if [ -n "$bench_n" ]; then
    mock-accel-ioctl bench /dev/mock0 $bench_n 2>&1 | sed 's/^/MOCKTEST /'
fi

if [ -e $C/mock0/status ]; then
    echo 1 > $C/mock0/status && echo "MOCKTEST status_write=ok value=$(cat $C/mock0/status) ioctl_$(mock-accel-ioctl status /dev/mock0 2>&1)"
    if echo junk > $C/mock0/status 2>/tmp/err; then echo "MOCKTEST junk_write=accepted"; else echo "MOCKTEST junk_write=rejected err=$(errname)"; fi
    if grep -q mocktest.host=1 /proc/cmdline; then
        # The host harness saw status=1 through the device's control socket and sets 7.
        i=0; while [ "$(cat $C/mock0/status)" != 7 ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done
        echo "MOCKTEST host_status_seen=$(cat $C/mock0/status)"
    fi
    echo 0 > $C/mock0/status
fi

# Disable SR-IOV: VFs, their class devices and /dev nodes go; an open VF file gets ENODEV.
vf_open=0
[ -c /dev/mock0_vf0 ] && exec 3< /dev/mock0_vf0 && vf_open=1
for n in $(pfs); do
    if echo 0 > $C/$n/sriov_numvfs 2>/tmp/err; then r=ok; else r=$(errname); fi
    echo "MOCKTEST sriov_disable dev=$n result=$r numvfs=$(cat $C/$n/sriov_numvfs) vfs=$(vf_count $n) devnodes=$(dev_count $n)"
done
if [ $vf_open = 1 ]; then
    echo "MOCKTEST stale_read $(cat <&3 2>&1 | tr ' \n' '__')"
    exec 3<&-
fi

dmesg | grep 'mock-accel:' | sed 's/^/MOCKTEST-LOG /'
if rmmod mock_accel; then echo "MOCKTEST rmmod=ok"; else echo "MOCKTEST rmmod=fail"; fi
[ -e $C ] && echo "MOCKTEST class_after_rmmod=present" || echo "MOCKTEST class_after_rmmod=gone"
echo "MOCKTEST devnodes_after_rmmod=$(ls /dev/mock* 2>/dev/null | wc -l) module_listed=$(grep -c '^mock_accel ' /proc/modules)"

# Without the word list, and with a malformed one: the driver binds, /dev reads work, the
# passphrase ioctl fails with ENODATA.
mv $FW /tmp/wordlist.txt
if insmod /lib/modules/mock_accel.ko; then
    devchecks missing mock0
    rmmod mock_accel
fi
printf 'alpha\nBeta\n' > $FW
if insmod /lib/modules/mock_accel.ko; then
    devchecks malformed mock0
    rmmod mock_accel
fi
mv /tmp/wordlist.txt $FW
dmesg | grep 'mock-accel: no word list' | sed 's/^/MOCKTEST-LOG /'

# Anything the three load/unload cycles left allocated and unreferenced (kmemleak reports
# objects older than 5 s).
if grep -q kmemleak=on /proc/cmdline; then
    sleep 6
    echo scan > $KL; echo scan > $KL
    head -n 60 $KL | sed 's/^/MOCKTEST-LEAK /'
    echo "MOCKTEST kmemleak_suspects=$(grep -c 'unreferenced object' $KL)"
fi

dmesg | grep -E 'WARNING|Oops|BUG' | sed 's/^/MOCKTEST-PROBLEM /'
dmesg | grep -c -E 'WARNING|Oops|BUG' | sed 's/^/MOCKTEST kernel_problems=/'
echo "MOCKTEST done=1"
if grep -q mocktest.shell=1 /proc/cmdline; then
    # Interactive (scripts/guest-smoke.sh --shell): module loaded, every VF enabled.
    insmod /lib/modules/mock_accel.ko
    for n in $(pfs); do cat $C/$n/sriov_totalvfs > $C/$n/sriov_numvfs; done
    echo "mock-accel: try  ls /sys/class/mock-accel; cat /dev/mock0; mock-accel-ioctl passphrase /dev/mock0 6"
    echo "mock-accel: exit (or poweroff -f) powers the guest off"
    setsid cttyhack sh
    poweroff -f
fi
if grep -q mocktest.hold=1 /proc/cmdline; then
    # Launched by mock-accel-cluster: stay up with the module loaded and every VF enabled
    # until the host stops QEMU.
    if insmod /lib/modules/mock_accel.ko; then
        for n in $(pfs); do cat $C/$n/sriov_totalvfs > $C/$n/sriov_numvfs; done
        echo "MOCKTEST hold=1"
    fi
    while :; do sleep 3600; done
fi
poweroff -f
