//! Conformance of the mock-accel device server with real QEMU `vfio-user-pci` (tier 2).
//!
//! The server is the `device` binary, run exactly as users run it (`device -u LABEL SOCKET`);
//! QEMU gets the launcher's command line (q35, memfd NUMA memory, `pxb-pcie` with `numa_node`,
//! a root port per device, `vfio-user-pci` JSON). No guest kernel: SeaBIOS enumerates PCI and
//! assigns BARs, and we look through QMP (`query-pci`) and HMP (`xp` reads of BAR0, which QEMU
//! forwards over the vfio-user socket as REGION_READ).

use std::time::{Duration, Instant};

use mock_accel_tests::proc_maps::{fully_mapped_guest_ram, guest_ram_mappings};
use mock_accel_tests::{
    init_tracing, require_qemu, vfio_user_warnings, DeviceProcess, Guest, TestDir,
};
use qemu::qmp::PciDevice;
use qemu::Topology;

const VENDOR: u16 = 0x1de5;
const DEVICE_PF: u16 = 0x0001;
/// Class 0x12 (processing accelerator), subclass 0: `query-pci` reports class << 8 | subclass.
const CLASS: u16 = 0x1200;
const BAR0_SIZE: u64 = 4096;

/// BAR0 registers (DESIGN.md §3).
const REG_DEVICE_ID: u64 = 0x00;
const REG_REVISION: u64 = 0x04;
const REG_UUID: u64 = 0x08;
const REG_MEMORY_SIZE: u64 = 0x20;
const DEVICE_ID_MOCK: u32 = 0x4d4f_434b;
const REVISION: u32 = 0x0001_0000;
const DEFAULT_MEMORY_SIZE: u64 = 16 << 30;

const ENUMERATION_LIMIT: Duration = Duration::from_secs(60);

/// The 16 UUID register bytes for a label: its ASCII bytes, zero padded.
fn label_bytes(label: &str) -> [u8; 16] {
    let mut bytes = [0u8; 16];
    bytes[..label.len()].copy_from_slice(label.as_bytes());
    bytes
}

/// The 16 bytes at BAR0 `offset` read through QEMU as four 32-bit `xp` reads.
async fn read_bar0_bytes(guest: &mut Guest, bar0: u64, offset: u64) -> anyhow::Result<[u8; 16]> {
    let mut bytes = [0u8; 16];
    for (i, chunk) in bytes.chunks_mut(4).enumerate() {
        let word = guest
            .qmp
            .read_phys_u32(bar0 + offset + 4 * i as u64)
            .await?;
        chunk.copy_from_slice(&word.to_le_bytes());
    }
    Ok(bytes)
}

fn bar0_address(device: &PciDevice) -> u64 {
    let region = device.region(0).expect("device has BAR0");
    assert_eq!(region.kind, "memory", "BAR0 is a memory BAR");
    assert_eq!(region.size, BAR0_SIZE, "BAR0 size");
    assert_eq!(region.prefetch, Some(false), "BAR0 is not prefetchable");
    region.assigned_address().expect("SeaBIOS assigned BAR0")
}

/// Two NUMA nodes, one mock-accel PF on each (labels follow the seeds' pattern).
fn two_numa_topology(dir: &TestDir) -> anyhow::Result<Topology> {
    Ok(Topology::from_toml(&format!(
        r#"
        name = "conformance"
        [[numa_nodes]]
        cpus = 1
        memory_mib = 128
        [[numa_nodes.devices]]
        socket = "{0}/numa0-pf.sock"
        [[numa_nodes]]
        cpus = 1
        memory_mib = 64
        [[numa_nodes.devices]]
        socket = "{0}/numa1-pf.sock"
        "#,
        dir.path().display()
    ))?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_enumerates_mock_accel_and_reads_bar0_through_our_socket() -> anyhow::Result<()> {
    init_tracing();
    let test_start = Instant::now();
    let qemu = require_qemu();
    let dir = TestDir::new("conf")?;
    let labels = ["NODE1-NUMA0-PF", "NODE1-NUMA1-PF"];
    let mut servers = Vec::new();
    for (numa, label) in labels.iter().enumerate() {
        let socket = dir.join(&format!("numa{numa}-pf.sock"));
        let socket_arg = socket.to_str().expect("utf-8 path");
        servers.push(
            DeviceProcess::spawn(
                &["-u", label, socket_arg],
                &socket,
                dir.path(),
                &format!("device{numa}"),
            )
            .await?,
        );
    }

    let mut guest = Guest::start(qemu, &two_numa_topology(&dir)?, dir.path()).await?;
    let devices = guest
        .wait_for_bars(&["mock0_0", "mock1_0"], 0, ENUMERATION_LIMIT)
        .await?;
    let enumerated = guest.started.elapsed();
    eprintln!("QEMU spawn to both BAR0s assigned: {enumerated:?}");

    for (numa, (device, label)) in devices.iter().zip(labels).enumerate() {
        assert_eq!(device.id.vendor, VENDOR, "{label} vendor");
        assert_eq!(device.id.device, DEVICE_PF, "{label} device");
        assert_eq!(device.class_info.class, CLASS, "{label} class");
        // Behind its NUMA node's expander bridge: bus_nr 16 * (numa + 1), root port bus + 1.
        assert_eq!(
            usize::from(device.bus),
            16 * (numa + 1) + 1,
            "{label} sits behind pxb{numa}'s root port"
        );
        assert_eq!((device.slot, device.function), (0, 0));
        let bar0 = bar0_address(device);

        // Registers read through QEMU -> vfio-user REGION_READ -> our device model.
        assert_eq!(
            guest.qmp.read_phys_u32(bar0 + REG_DEVICE_ID).await?,
            DEVICE_ID_MOCK
        );
        assert_eq!(
            guest.qmp.read_phys_u32(bar0 + REG_REVISION).await?,
            REVISION
        );
        assert_eq!(
            read_bar0_bytes(&mut guest, bar0, REG_UUID).await?,
            label_bytes(label),
            "{label}: UUID registers hold the label"
        );
        let size_lo = guest.qmp.read_phys_u32(bar0 + REG_MEMORY_SIZE).await?;
        let size_hi = guest.qmp.read_phys_u32(bar0 + REG_MEMORY_SIZE + 4).await?;
        assert_eq!(
            u64::from(size_hi) << 32 | u64::from(size_lo),
            DEFAULT_MEMORY_SIZE,
            "{label} memory size"
        );
    }

    // Each server received DMA_MAP with the fds of both NUMA nodes' memfds (128 + 64 MiB) and
    // mapped all of them: seen from the host in the server process's memory map.
    for server in &servers {
        let pid = server.pid().expect("device running");
        let mapped =
            fully_mapped_guest_ram(&guest_ram_mappings(pid)?).map_err(anyhow::Error::msg)?;
        assert_eq!(
            mapped,
            [64 << 20, 128 << 20],
            "guest RAM memfds mapped by device pid {pid}"
        );
    }

    let stderr = guest.process.stderr_text();
    assert_eq!(
        vfio_user_warnings(&stderr),
        Vec::<&str>::new(),
        "QEMU stderr:\n{stderr}"
    );
    assert_eq!(stderr.trim(), "", "QEMU wrote to stderr");
    let status = guest.quit().await?;
    assert!(status.success(), "QEMU exit status {status}");
    // QEMU is gone: the servers drop its DMA windows.
    for server in &servers {
        let pid = server.pid().expect("device survives QEMU quitting");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !guest_ram_mappings(pid)?.is_empty() {
            assert!(
                Instant::now() < deadline,
                "device pid {pid} still maps guest RAM"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    for server in servers {
        let log = server.log_text();
        let status = server.terminate().await?;
        assert!(status.success(), "device exit status {status}; log:\n{log}");
    }
    eprintln!("whole test: {:?}", test_start.elapsed());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_server_serves_a_new_qemu_after_the_previous_one_quits() -> anyhow::Result<()> {
    init_tracing();
    let qemu = require_qemu();
    let dir = TestDir::new("conf-again")?;
    let label = "NODE1-NUMA0-PF";
    let socket = dir.join("numa0-pf.sock");
    let mut server = DeviceProcess::spawn(
        &["-u", label, socket.to_str().expect("utf-8 path")],
        &socket,
        dir.path(),
        "device",
    )
    .await?;
    let topology = Topology::from_toml(&format!(
        r#"
        name = "again"
        [[numa_nodes]]
        cpus = 1
        memory_mib = 128
        [[numa_nodes.devices]]
        socket = "{}"
        "#,
        socket.display()
    ))?;
    for round in 1..=2 {
        let mut guest = Guest::start(qemu, &topology, dir.path()).await?;
        let devices = guest
            .wait_for_bars(&["mock0_0"], 0, ENUMERATION_LIMIT)
            .await?;
        let bar0 = bar0_address(&devices[0]);
        assert_eq!(
            guest.qmp.read_phys_u32(bar0 + REG_DEVICE_ID).await?,
            DEVICE_ID_MOCK,
            "round {round}"
        );
        assert_eq!(
            read_bar0_bytes(&mut guest, bar0, REG_UUID).await?,
            label_bytes(label),
            "round {round}"
        );
        let pid = server.pid().expect("device running");
        let mapped =
            fully_mapped_guest_ram(&guest_ram_mappings(pid)?).map_err(anyhow::Error::msg)?;
        assert_eq!(
            mapped,
            [128 << 20],
            "round {round}: guest RAM mapped by the device"
        );
        let stderr = guest.process.stderr_text();
        guest.quit().await?;
        assert_eq!(
            vfio_user_warnings(&stderr),
            Vec::<&str>::new(),
            "round {round}"
        );
        // The server outlives its client and lets go of the old guest's memory.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !guest_ram_mappings(pid)?.is_empty() {
            assert!(
                Instant::now() < deadline,
                "round {round}: old guest RAM still mapped"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            server.child.try_wait()?.is_none(),
            "round {round}: device exited with QEMU"
        );
    }
    let log = server.log_text();
    let status = server.terminate().await?;
    assert!(status.success(), "device exit status {status}; log:\n{log}");
    assert!(!socket.exists(), "device removed its socket on SIGTERM");
    Ok(())
}
