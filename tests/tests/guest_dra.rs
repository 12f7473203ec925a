//! DRA against the real guest driver, live: our `mock-accel-dra kubelet-plugin` runs *inside*
//! the test guest (our kernel + `mock_accel.ko` under QEMU TCG, 2 NUMA nodes x (PF + 2 VFs)
//! served by our device servers), reads the guest's real `/sys/class/mock-accel`, and
//! publishes to a real kube-apiserver on the host, reached through QEMU user-mode networking
//! (10.0.2.2). The binary and its glibc libraries go into an extra cpio appended to the cached
//! initramfs. The host then drives SR-IOV in the guest (through mock0's STATUS register, see
//! `kmod/guest-init.sh`, `mocktest.dra=1`) and checks that the ResourceSlices follow:
//! 2 PFs -> 2 PFs + 4 VFs (with `physfn`) -> 2 PFs.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use mock_accel_tests::control_plane::{create_ready_node, free_port, ControlPlane};
use mock_accel_tests::device_bin::DeviceProcess;
use mock_accel_tests::guest::{device_control, guest_artifacts, serial_lines};
use mock_accel_tests::initramfs::{add_dynamic_binary, Cpio};
use mock_accel_tests::{require_qemu, workspace_binary, TestDir};
use qemu::{
    build_qemu_args, DeviceSpec, DirectBoot, LaunchOptions, NumaNode, QemuProcess, Serial,
    Topology, UserNet,
};

const NODE: &str = "mock-accel-guest";

/// Published devices of `NODE`: name -> attributes (JSON).
fn published(cp: &ControlPlane) -> anyhow::Result<BTreeMap<String, serde_json::Value>> {
    let list = cp.get_json(&["resourceslices"])?;
    let mut out = BTreeMap::new();
    for s in list["items"].as_array().context("items")? {
        if s["spec"]["nodeName"] != NODE {
            continue;
        }
        for d in s["spec"]["devices"].as_array().into_iter().flatten() {
            let name = d["name"].as_str().context("device name")?.to_owned();
            out.insert(name, d["attributes"].clone());
        }
    }
    Ok(out)
}

/// Polls until the published device names equal `want` (or fails with what was seen).
async fn wait_for(
    cp: &ControlPlane,
    want: &[&str],
    serial: &Path,
    within: Duration,
) -> anyhow::Result<(BTreeMap<String, serde_json::Value>, Duration)> {
    let started = Instant::now();
    let mut last = BTreeMap::new();
    while started.elapsed() < within {
        last = published(cp)?;
        if last.keys().map(String::as_str).eq(want.iter().copied()) {
            return Ok((last, started.elapsed()));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!(
        "published devices {:?}, want {want:?} within {within:?}; guest:\n{}",
        last.keys().collect::<Vec<_>>(),
        serial_lines(serial).join("\n")
    )
}

fn string_attr(attrs: &serde_json::Value, key: &str) -> Option<String> {
    attrs[key]["string"].as_str().map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dra_plugin_in_the_guest_publishes_the_real_driver_and_follows_sriov() -> anyhow::Result<()>
{
    let artifacts = guest_artifacts()?;
    let qemu = require_qemu();
    let cp = ControlPlane::start()?;
    create_ready_node(&cp, NODE)?;
    let dir = TestDir::new("guest-dra")?;

    let mut servers = Vec::new();
    let mut nodes = Vec::new();
    for n in 0..2u32 {
        let pf = dir.join(&format!("n{n}-pf.sock"));
        let label = format!("NODE1-NUMA{n}-PF");
        let pf_str = pf.to_str().context("utf-8 path")?;
        servers.push(
            DeviceProcess::spawn(
                &["-u", &label, pf_str],
                &pf,
                dir.path(),
                &format!("n{n}-pf"),
            )
            .await?,
        );
        let mut vfs = Vec::new();
        for v in 0..2u32 {
            let sock = dir.join(&format!("n{n}-vf{v}.sock"));
            let (label, index) = (format!("NODE1-NUMA{n}-VF{v}"), v.to_string());
            let args = [
                "-u",
                &label,
                "--vf",
                &index,
                sock.to_str().context("utf-8 path")?,
            ];
            servers.push(
                DeviceProcess::spawn(&args, &sock, dir.path(), &format!("n{n}-vf{v}")).await?,
            );
            vfs.push(sock);
        }
        nodes.push(NumaNode {
            cpus: 1,
            memory_mib: 256,
            devices: vec![DeviceSpec {
                socket: pf,
                vfs,
                uuid: None,
                vf_uuids: vec![],
            }],
        });
    }

    // The plugin, its libraries and credentials for the API server at 10.0.2.2.
    let dra_bin = workspace_binary("dra", "mock-accel-dra", "MOCK_ACCEL_DRA_BIN")?;
    let mut cpio = Cpio::new();
    add_dynamic_binary(&mut cpio, &dra_bin, "/opt/mock-accel/mock-accel-dra")?;
    for f in ["ca.crt", "admin.crt", "admin.key"] {
        cpio.copy(&format!("/etc/mock-accel/{f}"), &cp.dir().join(f))?;
    }
    let port = cp.server.rsplit(':').next().context("API server port")?;
    cpio.file(
        "/etc/mock-accel/kubeconfig",
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: host\n  cluster:\n    server: https://10.0.2.2:{port}\n    certificate-authority: /etc/mock-accel/ca.crt\nusers:\n- name: admin\n  user:\n    client-certificate: /etc/mock-accel/admin.crt\n    client-key: /etc/mock-accel/admin.key\ncontexts:\n- name: host\n  context:\n    cluster: host\n    user: admin\ncurrent-context: host\n"
        )
        .as_bytes(),
        0o600,
    )?;
    let mut initrd = std::fs::read(&artifacts["INITRAMFS"])?;
    // An appended archive must start 4-byte aligned; the kernel skips the zero padding.
    initrd.resize(initrd.len().next_multiple_of(4), 0);
    initrd.extend(cpio.finish()?);
    let initrd_path = dir.join("initrd-with-dra");
    std::fs::write(&initrd_path, &initrd)?;

    let serial = dir.join("serial.log");
    let options = LaunchOptions {
        boot: Some(DirectBoot {
            kernel: artifacts["KERNEL"].clone(),
            initrd: Some(initrd_path),
            append: Some(format!(
                "console=ttyS0 panic=-1 quiet mocktest.dra=1 mocktest.node={NODE}"
            )),
        }),
        serial: Serial::File(serial.clone()),
        no_reboot: true,
        socket_per_numa_node: true,
        user_net: Some(UserNet {
            ssh_port: free_port()?,
        }),
        ..LaunchOptions::default()
    };
    let topology = Topology {
        name: "mock-accel-guest-dra".to_owned(),
        numa_nodes: nodes,
    };
    let args = build_qemu_args(&topology, &options)?;
    let started = Instant::now();
    let mut process = QemuProcess::spawn(qemu, &args, dir.path())?;

    // 1. Boot, plugin start, first publish: the two PFs only (VFs are not enabled yet).
    let (pfs, _) = wait_for(&cp, &["mock0", "mock1"], &serial, Duration::from_secs(300)).await?;
    let boot_to_publish = started.elapsed();
    for (name, numa, root, pci) in [
        ("mock0", 0, "pci0000:10", "0000:11:00.0"),
        ("mock1", 1, "pci0000:20", "0000:21:00.0"),
    ] {
        let a = &pfs[name];
        assert_eq!(
            string_attr(a, "uuid"),
            Some(format!("NODE1-NUMA{numa}-PF")),
            "{name}: {a}"
        );
        assert_eq!(a["numaNode"]["int"], numa, "{name}: {a}");
        assert_eq!(
            string_attr(a, "deviceType").as_deref(),
            Some("pf"),
            "{name}: {a}"
        );
        assert_eq!(
            string_attr(a, "pciAddress").as_deref(),
            Some(pci),
            "{name}: {a}"
        );
        assert_eq!(
            string_attr(a, "resource.kubernetes.io/pcieRoot").as_deref(),
            Some(root),
            "{name}: {a}"
        );
    }

    // 2. SR-IOV on in the guest: the VFs appear with their PF.
    let mock0 = dir.join("n0-pf.sock");
    let t = Instant::now();
    device_control(&mock0, "set-status 7")?;
    let want = [
        "mock0",
        "mock0-vf0",
        "mock0-vf1",
        "mock1",
        "mock1-vf0",
        "mock1-vf1",
    ];
    let (all, _) = wait_for(&cp, &want, &serial, Duration::from_secs(60)).await?;
    let vfs_on = t.elapsed();
    for (name, numa, pf) in [("mock0-vf1", 0, "mock0"), ("mock1-vf0", 1, "mock1")] {
        let a = &all[name];
        assert_eq!(
            string_attr(a, "deviceType").as_deref(),
            Some("vf"),
            "{name}: {a}"
        );
        assert_eq!(string_attr(a, "physfn").as_deref(), Some(pf), "{name}: {a}");
        assert_eq!(a["numaNode"]["int"], numa, "{name}: {a}");
    }
    assert_eq!(
        string_attr(&all["mock1-vf0"], "uuid").as_deref(),
        Some("NODE1-NUMA1-VF0")
    );

    // 3. SR-IOV off: back to the PFs.
    let t = Instant::now();
    device_control(&mock0, "set-status 8")?;
    wait_for(&cp, &["mock0", "mock1"], &serial, Duration::from_secs(60)).await?;
    let vfs_off = t.elapsed();

    device_control(&mock0, "set-status 9")?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !serial_lines(&serial).iter().any(|l| l == "MOCKTEST done=1") {
        if process.try_wait()?.is_some() || Instant::now() > deadline {
            bail!(
                "guest did not finish:\n{}",
                serial_lines(&serial).join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let lines = serial_lines(&serial);
    assert!(
        lines.iter().any(|l| l == "MOCKTEST kernel_problems=0"),
        "{}",
        lines.join("\n")
    );
    eprintln!(
        "{}\nboot to first publish: {boot_to_publish:?}; VFs enabled in the guest -> in the API: {vfs_on:?}; disabled -> gone: {vfs_off:?} (rescan interval 1 s)",
        lines.join("\n")
    );
    drop(servers);
    Ok(())
}
