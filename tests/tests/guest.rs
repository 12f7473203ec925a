//! Guest end to end: our kernel + `mock_accel` module under QEMU TCG against our device
//! servers, 2 NUMA nodes with a pxb-pcie each, 1 PF + 2 VFs per node, plus one function
//! whose DEVICE_ID register is not "MOCK" (the driver must refuse it). The guest's init
//! (`kmod/guest-init.sh`) prints `MOCKTEST key=value` lines on the serial port; this test
//! asserts them (sysfs, NUMA, SR-IOV enable/disable, `/dev` read and ioctls, the firmware
//! word list present, missing and malformed, rmmod) and drives the host side of the status
//! handshake through the device's control socket. Kernel, module, word list, ioctl tool and
//! initramfs come from `scripts/build-guest.sh` (cached).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use mock_accel_tests::device_bin::DeviceProcess;
use mock_accel_tests::guest::{device_control as control, guest_artifacts, serial_lines};
use mock_accel_tests::{require_qemu, TestDir};
use qemu::{
    build_qemu_args, DeviceSpec, DirectBoot, LaunchOptions, NumaNode, QemuProcess, Serial, Topology,
};

/// Every path under `root` with its symlink target or file content.
fn tree(root: &Path) -> anyhow::Result<std::collections::BTreeSet<(PathBuf, String)>> {
    let mut out = std::collections::BTreeSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).with_context(|| format!("read {dir:?}"))? {
            let path = e?.path();
            let rel = path.strip_prefix(root)?.to_path_buf();
            let meta = std::fs::symlink_metadata(&path)?;
            if meta.is_symlink() {
                out.insert((rel, format!("-> {}", std::fs::read_link(&path)?.display())));
            } else if meta.is_dir() {
                stack.push(path);
            } else {
                out.insert((rel, std::fs::read_to_string(&path)?));
            }
        }
    }
    Ok(out)
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
    let artifacts = guest_artifacts()?;
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
        let mut devices = vec![DeviceSpec {
            socket: pf_sock,
            vfs,
            uuid: None,
            vf_uuids: vec![],
        }];
        if n == 0 {
            // A foreign function: right IDs in config space, wrong DEVICE_ID register.
            let sock = dir.join("n0-bad.sock");
            let args = [
                "-u",
                "NODE1-NUMA0-BAD",
                sock.to_str().context("utf-8 path")?,
                "--device-id-register",
                "0x42414421",
            ];
            servers.push(DeviceProcess::spawn(&args, &sock, dir.path(), "n0-bad").await?);
            devices.push(DeviceSpec {
                socket: sock,
                vfs: vec![],
                uuid: None,
                vf_uuids: vec![],
            });
        }
        nodes.push(NumaNode {
            cpus: 1,
            memory_mib: 256,
            devices,
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
            append: Some("console=ttyS0 panic=-1 quiet mocktest.host=1 kmemleak=on".to_owned()),
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
    // The DRA tests read tests/fixtures/sysfs-guest: it must be what this driver exports now.
    let fresh = dir.join("sysfs-fixture");
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let export = Command::new(repo.join("scripts/export-sysfs-fixture.sh"))
        .arg(&keep)
        .arg(&fresh)
        .output()?;
    assert!(
        export.status.success(),
        "{}",
        String::from_utf8_lossy(&export.stderr)
    );
    let committed = repo.join("tests/fixtures/sysfs-guest");
    let (a, b) = (tree(&committed)?, tree(&fresh)?);
    assert!(
        a == b,
        "tests/fixtures/sysfs-guest is stale; regenerate it with\n  \
         scripts/export-sysfs-fixture.sh {} tests/fixtures/sysfs-guest\nonly in the fixture: {:?}\nonly in this run: {:?}",
        keep.display(),
        a.difference(&b).collect::<Vec<_>>(),
        b.difference(&a).collect::<Vec<_>>()
    );
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
    // The foreign function was refused with one log line and never got a class device.
    assert!(
        lines.iter().any(|l| l.starts_with("MOCKTEST-LOG ")
            && l.contains("refusing device: DEVICE_ID register is 0x42414421")),
        "{text}"
    );
    assert!(name_of("NODE1-NUMA0-BAD").is_none(), "{text}");

    // Emulated SR-IOV: hidden until enabled, PCI-core-like errors, hidden again on 0.
    let wordlist: HashSet<String> = std::fs::read_to_string(&artifacts["WORDLIST"])?
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(wordlist.len(), 7776);
    for numa in 0..2 {
        let pf = name_of(&format!("NODE1-NUMA{numa}-PF")).context("PF name")?;
        for l in [
            format!("MOCKTEST sriov_initial dev={pf} total=2 numvfs=0 vfs=0 devnodes=0"),
            format!("MOCKTEST sriov_enable dev={pf} numvfs=2 result=ok vfs=2 devnodes=2"),
            format!("MOCKTEST sriov_disable dev={pf} result=ok numvfs=0 vfs=0 devnodes=0"),
            format!("MOCKTEST attr={pf}/sriov_totalvfs value=2"),
            format!("MOCKTEST attr={pf}/sriov_numvfs value=2"),
        ] {
            assert!(has(&l), "missing {l:?}\n{text}");
        }
    }
    for (value, result) in [
        ("1", "EBUSY"),
        ("99", "ERANGE"),
        ("junk", "EINVAL"),
        ("-1", "EINVAL"),
    ] {
        let l = format!("MOCKTEST sriov_write dev=mock0 value={value} result={result} numvfs=2");
        assert!(has(&l), "missing {l:?}\n{text}");
    }
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("MOCKTEST stale_read ") && l.contains("No_such_device")),
        "an open VF file must get ENODEV once the VF is disabled\n{text}"
    );

    // /dev nodes: one per shown device; read text and ioctls.
    for e in &expected {
        let n = name_of(&e.uuid).context("name")?;
        assert!(has(&format!("MOCKTEST devnode={n}")), "/dev/{n}\n{text}");
    }
    let in_list = |phrase: &str, words: usize| {
        let w: Vec<&str> = phrase.split('-').collect();
        w.len() == words && w.iter().all(|x| wordlist.contains(*x))
    };
    for dev in ["mock0", "mock0_vf0"] {
        let e = expected
            .iter()
            .find(|e| name_of(&e.uuid).as_deref() == Some(dev))
            .context("expected device")?;
        let read = |field: &str| {
            lines
                .iter()
                .find_map(|l| l.strip_prefix(&format!("MOCKTEST-READ wordlist {dev}: {field}: ")))
                .map(str::to_owned)
        };
        assert_eq!(read("UUID").as_deref(), Some(e.uuid.as_str()), "{text}");
        assert_eq!(
            read("Memory"),
            Some(format!("{} bytes", e.memory)),
            "{text}"
        );
        assert_eq!(read("NUMA Node"), Some(e.numa.to_string()), "{text}");
        assert_eq!(
            read("Wordlist").as_deref(),
            Some("7776 words loaded"),
            "{text}"
        );
        assert_eq!(
            read("Physical Function"),
            e.physfn.as_ref().map(|_| "mock0".to_owned())
        );
        let sample = read("Sample Passphrase (6 words)").context("sample passphrase")?;
        assert!(in_list(&sample, 6), "sample {sample:?} not 6 list words");
        assert!(
            has(&format!("MOCKTEST ioctl wordlist dev={dev} status=0")),
            "{text}"
        );
        for words in [1usize, 6, 12] {
            let prefix = format!("MOCKTEST ioctl wordlist dev={dev} words={words} passphrase=");
            let phrase = lines
                .iter()
                .find_map(|l| l.strip_prefix(&prefix))
                .with_context(|| format!("{prefix}\n{text}"))?;
            assert!(
                in_list(phrase, words),
                "{phrase:?} is not {words} list words"
            );
        }
        for words in [0, 13] {
            let l = format!("MOCKTEST ioctl wordlist dev={dev} words={words} error=EINVAL");
            assert!(has(&l), "missing {l:?}\n{text}");
        }
    }
    // Without a usable word list the driver binds, reads work, passphrases fail cleanly.
    for (tag, why) in [("missing", "Missing(-2)"), ("malformed", "BadLine(2)")] {
        assert!(
            lines.iter().any(|l| l.starts_with(&format!("MOCKTEST-READ {tag} mock0: Wordlist: not loaded"))),
            "{tag}\n{text}"
        );
        assert!(
            has(&format!("MOCKTEST ioctl {tag} dev=mock0 status=0")),
            "{tag}\n{text}"
        );
        assert!(
            has(&format!(
                "MOCKTEST ioctl {tag} dev=mock0 words=6 error=ENODATA"
            )),
            "{tag}\n{text}"
        );
        assert!(
            lines.iter().any(|l| l.starts_with("MOCKTEST-LOG ")
                && l.contains("no word list")
                && l.contains(why)),
            "{tag}: no log line naming {why}\n{text}"
        );
    }

    assert!(
        has("MOCKTEST status_write=ok value=1 ioctl_status=1"),
        "{text}"
    );
    assert!(
        host_saw.contains("\"status\":1"),
        "host view after guest write: {host_saw}"
    );
    assert!(has("MOCKTEST host_status_seen=7"), "{text}");
    assert!(
        lines
            .iter()
            .any(|l| l == "MOCKTEST junk_write=rejected err=EINVAL"),
        "{text}"
    );
    assert!(has("MOCKTEST rmmod=ok"), "{text}");
    assert!(has("MOCKTEST class_after_rmmod=gone"), "{text}");
    assert!(
        has("MOCKTEST devnodes_after_rmmod=0 module_listed=0"),
        "{text}"
    );
    // kmemleak (boot suspects cleared before insmod): nothing left by three load/unload
    // cycles with probe, SR-IOV enable/disable, /dev opens, firmware loads and ioctls.
    assert!(has("MOCKTEST kmemleak=on"), "{text}");
    assert!(has("MOCKTEST kmemleak_suspects=0"), "{text}");
    assert!(has("MOCKTEST kernel_problems=0"), "{text}");
    drop(servers);
    Ok(())
}
