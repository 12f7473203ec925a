//! Guest-side latency of the whole mock-accel path under QEMU TCG: a process in the guest
//! calls the `mock_accel` driver's ioctls on `/dev/mock0`; the driver reads BAR0, QEMU's
//! `vfio-user-pci` forwards each read over the socket to our `device` server and back.
//!
//! `mock-accel-ioctl bench /dev/mock0 N` (in the initramfs, run by `/init` when the kernel
//! command line has `mocktest.bench=N`) times, N times each:
//! - `noop_enotty`: an ioctl number the driver does not know — syscall + driver dispatch, no
//!   device access: the same-run **baseline**;
//! - `status`: `MOCK_ACCEL_IOC_STATUS`, one BAR0 read;
//! - `passphrase_1` / `passphrase_12`: one ENTROPY read per word (rejection sampling redraws
//!   with probability 1e-6);
//! - `read_info`: open + read of the info text (STATUS + 6 ENTROPY reads + formatting).
//!
//! Before the guest boots, the same device server is read from the host with our vfio-user
//! client (`read_u32` of STATUS, N times): the protocol's share of the path, for the ratio
//! guest read / host read (what TCG and QEMU add).
//!
//! ```text
//! cargo bench -p mock-accel-tests --bench guest_mmio
//! ```

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use mock_accel_tests::device_bin::DeviceProcess;
use mock_accel_tests::guest::{guest_artifacts, serial_lines};
use mock_accel_tests::{require_qemu, TestDir};
use qemu::{
    build_qemu_args, DeviceSpec, DirectBoot, LaunchOptions, NumaNode, QemuProcess, Serial, Topology,
};

const N: usize = 2000;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let artifacts = guest_artifacts()?;
    let qemu = require_qemu();
    let dir = TestDir::new("bench-guest-mmio")?;
    let sock = dir.join("pf.sock");
    let sock_arg = sock.to_str().context("utf-8 path")?;
    let _server =
        DeviceProcess::spawn(&["-u", "BENCH-PF", sock_arg], &sock, dir.path(), "pf").await?;
    // Host-side baseline: the same server, our client, no QEMU.
    let mut host_ns = Vec::with_capacity(N);
    {
        let mut client = vfio_user_proto::Client::connect(&sock).await?;
        for _ in 0..N {
            let t = Instant::now();
            client.read_u32(0, 0x2c).await?;
            host_ns.push(t.elapsed().as_nanos() as f64);
        }
    }
    host_ns.sort_by(f64::total_cmp);
    let host = (
        host_ns[(N - 1) / 2] / 1000.0,
        host_ns[(N - 1) * 99 / 100] / 1000.0,
    );
    // Let the server see the disconnect before QEMU connects.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let topology = Topology {
        name: "mock-accel-bench".to_owned(),
        numa_nodes: vec![NumaNode {
            cpus: 1,
            memory_mib: 256,
            devices: vec![DeviceSpec {
                socket: sock.clone(),
                vfs: vec![],
                uuid: None,
                vf_uuids: vec![],
            }],
        }],
    };
    let serial = dir.join("serial.log");
    let options = LaunchOptions {
        boot: Some(DirectBoot {
            kernel: artifacts["KERNEL"].clone(),
            initrd: Some(artifacts["INITRAMFS"].clone()),
            append: Some(format!("console=ttyS0 panic=-1 quiet mocktest.bench={N}")),
        }),
        serial: Serial::File(serial.clone()),
        no_reboot: true,
        ..LaunchOptions::default()
    };
    let args = build_qemu_args(&topology, &options)?;
    let started = Instant::now();
    let mut process = QemuProcess::spawn(qemu, &args, dir.path())?;
    let lines = loop {
        let lines = serial_lines(&serial);
        if lines.iter().any(|l| l == "MOCKTEST done=1") {
            break lines;
        }
        if process.try_wait()?.is_some() || started.elapsed() > Duration::from_secs(600) {
            bail!(
                "guest did not finish; serial:\n{}\nstderr:\n{}",
                std::fs::read_to_string(&serial).unwrap_or_default(),
                process.stderr_text()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // "MOCKTEST bench op=NAME n=N p50_ns=X p99_ns=Y"
    let mut rows = Vec::new();
    for l in lines.iter().filter(|l| l.starts_with("MOCKTEST bench ")) {
        let field = |k: &str| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix(k))
                .map(str::to_owned)
                .with_context(|| format!("no {k} in {l:?}"))
        };
        let p50: f64 = field("p50_ns=")?.parse()?;
        let p99: f64 = field("p99_ns=")?.parse()?;
        rows.push((field("op=")?, p50 / 1000.0, p99 / 1000.0));
    }
    let Some(&(_, base, _)) = rows.iter().find(|r| r.0 == "noop_enotty") else {
        bail!(
            "no bench lines in the guest's output:\n{}",
            lines.join("\n")
        );
    };
    println!(
        "guest_mmio: {N} calls per op in a TCG guest (QEMU 11.1 vfio-user-pci -> device server)"
    );
    println!("| op | p50 | p99 | p50 / noop |");
    println!("|---|---|---|---|");
    for (op, p50, p99) in &rows {
        println!("| {op} | {p50:.1} µs | {p99:.1} µs | {:.1}x |", p50 / base);
    }
    println!(
        "| host: vfio-user client REGION_READ of STATUS, no QEMU | {:.1} µs | {:.1} µs | |",
        host.0, host.1
    );
    if let (Some(s), Some(p12)) = (
        rows.iter().find(|r| r.0 == "status"),
        rows.iter().find(|r| r.0 == "passphrase_12"),
    ) {
        println!(
            "one BAR0 read from the guest (status - noop): {:.1} µs = {:.1}x the host-side vfio-user read; per ENTROPY word ((passphrase_12 - noop) / 12): {:.1} µs",
            s.1 - base,
            (s.1 - base) / host.0,
            (p12.1 - base) / 12.0
        );
    }
    Ok(())
}
