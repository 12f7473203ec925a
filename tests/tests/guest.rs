//! Guest end to end: our kernel + `mock_accel` module under QEMU TCG against our device
//! servers, 2 NUMA nodes with a pxb-pcie each, 1 PF + 2 VFs per node. The guest's init
//! (`kmod/guest-init.sh`) prints `MOCKTEST key=value` lines on the serial port; this test
//! asserts them and drives the host side of the status handshake through the device's
//! control socket. Kernel, module and initramfs come from `scripts/build-guest.sh` (cached).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use mock_accel_tests::device_bin::DeviceProcess;
use mock_accel_tests::{require_qemu, TestDir};
use qemu::{
    build_qemu_args, DeviceSpec, DirectBoot, LaunchOptions, NumaNode, QemuProcess, Serial, Topology,
};

/// Artifacts printed by `scripts/build-guest.sh` as `KEY=PATH`.
fn build_guest() -> anyhow::Result<BTreeMap<String, PathBuf>> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new(repo.join("scripts/build-guest.sh"))
        .output()
        .context("run scripts/build-guest.sh")?;
    if !out.status.success() {
        bail!(
            "scripts/build-guest.sh failed (run it by hand to provision the guest):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), PathBuf::from(v)))
        .collect())
}

/// One control-socket request/reply line.
fn control(socket: &Path, request: &str) -> anyhow::Result<String> {
    let ctl = PathBuf::from(format!("{}.ctl", socket.display()));
    let mut s = UnixStream::connect(&ctl).with_context(|| format!("connect {ctl:?}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    writeln!(s, "{request}")?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line)?;
    Ok(line)
}

fn serial_lines(path: &Path) -> Vec<String> {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.find("MOCKTEST").map(|i| l[i..].trim_end().to_owned()))
        .collect()
}

struct Expected {
    name: String,
    uuid: String,
    memory: u64,
    caps: u32,
    numa: u32,
    physfn: Option<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_driver_sysfs_status_numa_vfs_rmmod() -> anyhow::Result<()> {
    let artifacts = build_guest()?;
    let qemu = require_qemu();
    let dir = TestDir::new("guest")?;
    let mut servers = Vec::new();
    let mut expected = Vec::new();
    let mut nodes = Vec::new();
    for n in 0..2u32 {
        let pf_sock = dir.join(&format!("n{n}-pf.sock"));
        let pf_uuid = format!("NODE1-NUMA{n}-PF");
        let mem = (8u64 + u64::from(n)) << 30;
        let caps = 0x5 + n;
        let args = [
            "-u".to_owned(),
            pf_uuid.clone(),
            pf_sock.display().to_string(),
            "--memory-size".to_owned(),
            mem.to_string(),
            "--capabilities".to_owned(),
            format!("0x{caps:x}"),
        ];
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        servers.push(DeviceProcess::spawn(&argv, &pf_sock, dir.path(), &format!("n{n}-pf")).await?);
        expected.push(Expected {
            name: format!("mock{n}"),
            uuid: pf_uuid,
            memory: mem,
            caps,
            numa: n,
            physfn: None,
        });
        let mut vfs = Vec::new();
        for v in 0..2u32 {
            let sock = dir.join(&format!("n{n}-vf{v}.sock"));
            let uuid = format!("0000000{n}-0000-4000-8000-00000000000{v}");
            let args = [
                "-u".to_owned(),
                uuid.clone(),
                "--vf".to_owned(),
                v.to_string(),
                sock.display().to_string(),
                "--memory-size".to_owned(),
                "2G".to_owned(),
            ];
            let argv: Vec<&str> = args.iter().map(String::as_str).collect();
            servers.push(
                DeviceProcess::spawn(&argv, &sock, dir.path(), &format!("n{n}-vf{v}")).await?,
            );
            expected.push(Expected {
                name: format!("mock{n}_vf{v}"),
                uuid,
                memory: 2 << 30,
                caps: 1,
                numa: n,
                physfn: Some(format!("mock{n}")),
            });
            vfs.push(sock);
        }
        nodes.push(NumaNode {
            cpus: 1,
            memory_mib: 256,
            devices: vec![DeviceSpec {
                socket: pf_sock,
                vfs,
                uuid: None,
                vf_uuids: vec![],
            }],
        });
    }
    let topology = Topology {
        name: "mock-accel-guest".to_owned(),
        numa_nodes: nodes,
    };
    let serial = dir.join("serial.log");
    let options = LaunchOptions {
        boot: Some(DirectBoot {
            kernel: artifacts["KERNEL"].clone(),
            initrd: Some(artifacts["INITRAMFS"].clone()),
            append: Some("console=ttyS0 panic=-1 quiet mocktest.host=1".to_owned()),
        }),
        serial: Serial::File(serial.clone()),
        no_reboot: true,
        ..LaunchOptions::default()
    };
    let mut args = build_qemu_args(&topology, &options)?;
    // One socket per NUMA node: QEMU's default (2 cores in one package on two nodes) makes
    // the guest kernel WARN in topology_sane().
    if let Some(i) = args.iter().position(|a| a == "-smp") {
        args[i + 1] = format!("{},sockets={}", args[i + 1], topology.numa_nodes.len());
    }
    let started = Instant::now();
    let mut process = QemuProcess::spawn(qemu, &args, dir.path())?;

    // Host side of the status handshake: wait for the guest's write, check it via the
    // control socket, then change the register from the host.
    // mock0 is whichever PF the guest probed first: find its server by the uuid it shows.
    let pf_socks = [
        ("NODE1-NUMA0-PF", dir.join("n0-pf.sock")),
        ("NODE1-NUMA1-PF", dir.join("n1-pf.sock")),
    ];
    let deadline = started + Duration::from_secs(240);
    let mut host_saw = String::new();
    loop {
        let lines = serial_lines(&serial);
        if lines
            .iter()
            .any(|l| l.starts_with("MOCKTEST status_write="))
            && host_saw.is_empty()
        {
            let pf0 = pf_socks
                .iter()
                .find(|(u, _)| {
                    lines
                        .iter()
                        .any(|l| l == &format!("MOCKTEST attr=mock0/uuid value={u}"))
                })
                .map(|(_, s)| s.clone())
                .context("mock0 is none of our PFs")?;
            host_saw = control(&pf0, "get")?;
            control(&pf0, "set-status 7")?;
        }
        if lines.iter().any(|l| l == "MOCKTEST done=1") {
            break;
        }
        if process.try_wait()?.is_some() || Instant::now() > deadline {
            bail!(
                "guest did not finish; serial:\n{}\nstderr:\n{}",
                std::fs::read_to_string(&serial).unwrap_or_default(),
                process.stderr_text()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let boot_to_checks = started.elapsed();
    // Kept for scripts/export-sysfs-fixture.sh (tests/fixtures/sysfs-guest).
    let keep = Path::new(env!("CARGO_TARGET_TMPDIR")).join("guest-serial.log");
    std::fs::copy(&serial, &keep).with_context(|| format!("copy serial log to {keep:?}"))?;
    let lines = serial_lines(&serial);
    let text = lines.join("\n");
    eprintln!("{text}\nboot to checks: {boot_to_checks:?}");
    let has = |l: &str| lines.iter().any(|x| x == l);

    assert!(has("MOCKTEST insmod=ok"), "{text}");
    // Class device name shown for `uuid` (names follow the guest's probe order).
    let name_of = |uuid: &str| {
        lines.iter().find_map(|l| {
            let rest = l.strip_prefix("MOCKTEST attr=")?;
            let (dev, v) = rest.split_once(' ')?;
            (v == format!("value={uuid}")).then(|| dev.strip_suffix("/uuid").map(str::to_owned))?
        })
    };
    for e in &expected {
        let n =
            &name_of(&e.uuid).with_context(|| format!("no device with uuid {}\n{text}", e.uuid))?;
        let pf_name = e.physfn.as_ref().map(|_| {
            let pf_uuid = format!("NODE1-NUMA{}-PF", e.numa);
            name_of(&pf_uuid).unwrap_or_default()
        });
        assert!(
            e.physfn.is_some() == n.contains("_vf"),
            "{n}: expected {} naming",
            e.name
        );
        assert!(
            has(&format!("MOCKTEST attr={n}/uuid value={}", e.uuid)),
            "{n} uuid\n{text}"
        );
        assert!(
            has(&format!("MOCKTEST attr={n}/memory_size value={}", e.memory)),
            "{n} memory\n{text}"
        );
        assert!(
            has(&format!(
                "MOCKTEST attr={n}/capabilities value=0x{:08x}",
                e.caps
            )),
            "{n} caps\n{text}"
        );
        assert!(
            has(&format!("MOCKTEST attr={n}/numa_node value={}", e.numa)),
            "{n} numa\n{text}"
        );
        if let Some(pf) = &pf_name {
            assert!(
                has(&format!("MOCKTEST attr={n}/physfn value={pf}")),
                "{n} physfn\n{text}"
            );
        }
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with(&format!("MOCKTEST dev={n} pci="))),
            "{n} device link\n{text}"
        );
    }
    assert!(has("MOCKTEST status_write=ok value=1"), "{text}");
    assert!(
        host_saw.contains("\"status\":1"),
        "host view after guest write: {host_saw}"
    );
    assert!(has("MOCKTEST host_status_seen=7"), "{text}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("MOCKTEST junk_write=rejected")),
        "{text}"
    );
    assert!(has("MOCKTEST rmmod=ok"), "{text}");
    assert!(has("MOCKTEST class_after_rmmod=gone"), "{text}");
    assert!(has("MOCKTEST kernel_problems=0"), "{text}");
    drop(servers);
    Ok(())
}
