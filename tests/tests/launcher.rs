//! The launcher end to end: the real `mock-accel-cluster` binary brings up 1 node x 2 NUMA x
//! (1 PF + 2 VFs) with the test guest, the guest's init (`kmod/guest-init.sh`, read back with
//! `logs --serial`) sees 6 mock-accel devices with the right `numa_node`, `status` lists them,
//! and `down` leaves no process, socket, overlay or state file behind.
//!
//! Provisioning: the guest comes from `scripts/build-guest.sh` (which runs
//! `scripts/provision-rootfs.sh`, the source of QEMU too); a failure names the script.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use mock_accel_tests::{workspace_binary, TestDir};

fn launcher() -> anyhow::Result<PathBuf> {
    workspace_binary("qemu", "mock-accel-cluster", "MOCK_ACCEL_CLUSTER_BIN")
}

/// Runs `down` when dropped, so a failing test leaves no QEMU or device server behind.
struct Cluster {
    bin: PathBuf,
    run_dir: PathBuf,
}

impl Cluster {
    fn run(&self, args: &[&str]) -> anyhow::Result<Output> {
        let out = Command::new(&self.bin)
            .arg("--run-dir")
            .arg(&self.run_dir)
            .args(args)
            .output()
            .with_context(|| format!("run {} {args:?}", self.bin.display()))?;
        Ok(out)
    }

    fn ok(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.run(args)?;
        if !out.status.success() {
            bail!(
                "mock-accel-cluster {args:?} failed ({}):\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.run(&["down"]);
    }
}

/// Pids recorded in the state file (QEMU and device servers).
fn recorded_pids(run_dir: &Path) -> anyhow::Result<Vec<i64>> {
    let text = std::fs::read_to_string(run_dir.join("state.json"))?;
    let state: serde_json::Value = serde_json::from_str(&text)?;
    let mut pids = Vec::new();
    for node in state["nodes"].as_array().context("nodes")? {
        for key in ["qemu", "server"] {
            pids.push(node[key]["pid"].as_i64().context("pid")?);
        }
    }
    Ok(pids)
}

fn running(pid: i64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files_under(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn up_status_down_with_the_test_guest() -> anyhow::Result<()> {
    let artifacts = mock_accel_tests::guest::guest_artifacts()?;
    let (kernel, initrd) = (&artifacts["KERNEL"], &artifacts["INITRAMFS"]);
    let dir = TestDir::new("launch")?;
    let cluster = Cluster {
        bin: launcher()?,
        run_dir: dir.join("run"),
    };
    let started = Instant::now();
    let up = cluster.ok(&[
        "up",
        "--nodes",
        "1",
        "--numa",
        "2",
        "--pfs-per-numa",
        "1",
        "--vfs-per-pf",
        "2",
        "--memory-mib",
        "256",
        "--kernel",
        &kernel.to_string_lossy(),
        "--initrd",
        &initrd.to_string_lossy(),
        "--append",
        "console=ttyS0 panic=-1 quiet mocktest.hold=1",
    ])?;
    let up_time = started.elapsed();
    assert!(up.contains("1 node(s), 6 device(s)"), "{up}");
    let pids = recorded_pids(&cluster.run_dir)?;
    assert_eq!(pids.len(), 2);
    assert!(pids.iter().all(|&p| running(p)), "{pids:?}");

    // The guest's checks, read through `logs`.
    let deadline = Instant::now() + Duration::from_secs(300);
    let serial = loop {
        let serial = cluster.ok(&["logs", "--node", "node1", "--serial"])?;
        if serial.contains("MOCKTEST hold=1") {
            break serial;
        }
        if Instant::now() > deadline {
            bail!(
                "guest did not finish its checks within 300 s; serial:\n{serial}\nQEMU log:\n{}",
                cluster.ok(&["logs", "--qemu"]).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let boot_time = started.elapsed();
    let lines: Vec<&str> = serial
        .lines()
        .filter_map(|l| l.find("MOCKTEST").map(|i| l[i..].trim_end()))
        .collect();
    let text = lines.join("\n");
    // PCI view: 6 functions of vendor 0x1de5, 3 on each NUMA node.
    for numa in 0..2 {
        let on_node = lines
            .iter()
            .filter(|l| l.starts_with("MOCKTEST pci=") && l.ends_with(&format!("numa_node={numa}")))
            .count();
        assert_eq!(on_node, 3, "NUMA {numa}:\n{text}");
    }
    // Driver view: each label on its NUMA node.
    for numa in 0..2 {
        for kind in ["PF", "VF0", "VF1"] {
            let label = format!("NODE1-NUMA{numa}-{kind}");
            let name = lines
                .iter()
                .find_map(|l| {
                    let rest = l.strip_prefix("MOCKTEST attr=")?;
                    let (attr, value) = rest.split_once(" value=")?;
                    (value == label).then(|| attr.strip_suffix("/uuid"))?
                })
                .with_context(|| format!("no device with uuid {label}\n{text}"))?;
            assert!(
                lines.contains(&format!("MOCKTEST attr={name}/numa_node value={numa}").as_str()),
                "{label} ({name}) not on NUMA {numa}\n{text}"
            );
        }
    }
    // The seeds' view (`for d in /sys/class/mock-accel/mock*; do ... numa_node`) once SR-IOV
    // is enabled: mock0 and its VFs on NUMA 0, mock1 and its VFs on NUMA 1.
    let seen: Vec<String> = lines
        .iter()
        .filter_map(|l| {
            let (dev, numa) = l
                .strip_prefix("MOCKTEST attr=")?
                .split_once("/numa_node value=")?;
            Some(format!("{dev}:{numa}"))
        })
        .collect();
    assert_eq!(
        seen,
        [
            "mock0:0",
            "mock0_vf0:0",
            "mock0_vf1:0",
            "mock1:1",
            "mock1_vf0:1",
            "mock1_vf1:1"
        ],
        "{text}"
    );
    assert!(lines.contains(&"MOCKTEST kernel_problems=0"), "{text}");

    // `status`: every device, its server and a running QEMU.
    let status = cluster.ok(&["status"])?;
    for numa in 0..2 {
        for kind in ["PF", "VF0", "VF1"] {
            let label = format!("NODE1-NUMA{numa}-{kind}");
            let row = status
                .lines()
                .find(|l| l.contains(&label))
                .with_context(|| format!("status has no {label}:\n{status}"))?;
            assert!(
                row.contains("connected") && row.contains(" up ") && row.contains("running"),
                "{row}"
            );
        }
    }

    // `down`: nothing left running, no sockets, overlays or state; a second `down` is fine.
    let down_started = Instant::now();
    cluster.ok(&["down"])?;
    let down_time = down_started.elapsed();
    let alive: Vec<_> = pids.iter().filter(|&&p| running(p)).collect();
    assert!(alive.is_empty(), "still running after down: {alive:?}");
    let left: Vec<PathBuf> = files_under(&cluster.run_dir)
        .into_iter()
        .filter(|p| {
            let name = p.to_string_lossy();
            name.ends_with(".sock")
                || name.ends_with(".ctl")
                || name.ends_with(".qcow2")
                || name.ends_with(".iso")
                || name.ends_with("state.json")
        })
        .collect();
    assert!(left.is_empty(), "left behind by down: {left:?}");
    let again = cluster.ok(&["down"])?;
    assert!(again.contains("nothing to stop"), "{again}");
    // Logs outlive the cluster.
    assert!(cluster
        .ok(&["logs", "--serial"])?
        .contains("MOCKTEST done=1"));
    eprintln!("up: {up_time:?}; up to guest checks done: {boot_time:?}; down: {down_time:?}\n{up}");
    Ok(())
}

#[test]
fn run_dir_too_long_for_sun_path_is_a_one_line_error() -> anyhow::Result<()> {
    let run_dir = format!("/tmp/{}", "r".repeat(100));
    let out = Command::new(launcher()?)
        .args(["--run-dir", &run_dir, "up", "--kernel", "/nonexistent"])
        .output()?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("sun_path") && stderr.contains("--run-dir"),
        "{stderr}"
    );
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(!Path::new(&run_dir).exists(), "nothing created");
    Ok(())
}

#[test]
fn unusable_qemu_is_a_one_line_error_naming_the_provisioning_script() -> anyhow::Result<()> {
    let dir = TestDir::new("launch-qemu")?;
    let run_dir = dir.join("run");
    let out = Command::new(launcher()?)
        .env("QEMU", "/bin/false")
        .arg("--run-dir")
        .arg(&run_dir)
        .args(["up", "--kernel", "/etc/hostname"])
        .output()?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let error: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(error.len(), 1, "{stderr}");
    assert!(
        error[0].contains("scripts/provision-rootfs.sh") && error[0].contains("vfio-user-pci"),
        "{stderr}"
    );
    assert!(!run_dir.exists(), "nothing started, nothing created");
    Ok(())
}

#[test]
fn missing_image_is_a_one_line_error() -> anyhow::Result<()> {
    let dir = TestDir::new("launch-img")?;
    let out = Command::new(launcher()?)
        .arg("--run-dir")
        .arg(dir.join("run"))
        .args(["up", "--image", "/nonexistent/disk.qcow2"])
        .output()?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("/nonexistent/disk.qcow2") && stderr.contains("does not exist"),
        "{stderr}"
    );
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    Ok(())
}
