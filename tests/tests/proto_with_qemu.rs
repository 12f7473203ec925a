//! `vfio_user_proto::Server` against real QEMU `vfio-user-pci`, with the protocol crate's toy
//! device (so these hold whatever device model is served): QEMU maps all guest RAM with file
//! descriptors, the server's view of guest memory is QEMU's, MMIO from QEMU crosses the socket,
//! and one server serves QEMU after QEMU.

use std::path::Path;
use std::time::{Duration, Instant};

use mock_accel_tests::guest::check_ram_coverage;
use mock_accel_tests::{init_tracing, require_qemu, Guest, Observed, ObservedHandle, TestDir};
use qemu::Topology;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use vfio_user_proto::testing::ToyDevice;
use vfio_user_proto::{Client, Server};

const ENUMERATION_LIMIT: Duration = Duration::from_secs(60);

/// A toy device server on `socket`, with PCI identity written into its (plain memory) config
/// space before QEMU connects: vendor 0x1de5, device 0x00fe, class 0x1200.
async fn serve_toy(
    socket: &Path,
) -> anyhow::Result<(
    ObservedHandle,
    oneshot::Sender<()>,
    JoinHandle<Result<Observed<ToyDevice>, vfio_user_proto::ServerError>>,
)> {
    serve_toy_function(socket, 0x00fe, false).await
}

/// Like [`serve_toy`] with a chosen device ID and the multifunction header bit.
async fn serve_toy_function(
    socket: &Path,
    device_id: u16,
    multifunction: bool,
) -> anyhow::Result<(
    ObservedHandle,
    oneshot::Sender<()>,
    JoinHandle<Result<Observed<ToyDevice>, vfio_user_proto::ServerError>>,
)> {
    let (device, seen) = Observed::new(ToyDevice::new());
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(
        Server::new(device).serve_until(socket.to_path_buf(), async {
            let _ = stopped.await;
        }),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut client = loop {
        match Client::connect(socket).await {
            Ok(c) => break c,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(10)).await
            }
            Err(e) => anyhow::bail!("toy server did not come up: {e}"),
        }
    };
    let [id_lo, id_hi] = device_id.to_le_bytes();
    client
        .region_write(7, 0, &[0xe5, 0x1d, id_lo, id_hi])
        .await?;
    client.region_write(7, 8, &[0x01, 0x00, 0x00, 0x12]).await?;
    let header_type = if multifunction { 0x80 } else { 0x00 };
    client.region_write(7, 0x0e, &[header_type]).await?;
    drop(client);
    Ok((seen, stop, task))
}

fn topology(socket: &Path) -> anyhow::Result<Topology> {
    Ok(Topology::from_toml(&format!(
        r#"
        name = "proto"
        [[numa_nodes]]
        cpus = 1
        memory_mib = 128
        [[numa_nodes]]
        cpus = 1
        memory_mib = 64
        [[numa_nodes.devices]]
        socket = "{}"
        "#,
        socket.display()
    ))?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_maps_all_guest_ram_with_fds_and_the_server_sees_guest_memory() -> anyhow::Result<()> {
    init_tracing();
    let dir = TestDir::new("proto-dma")?;
    let socket = dir.join("toy.sock");
    let (seen, stop, task) = serve_toy(&socket).await?;
    let mut guest = Guest::start(require_qemu(), &topology(&socket)?, dir.path()).await?;
    guest
        .wait_for_bars(&["mock1_0"], 0, ENUMERATION_LIMIT)
        .await?;

    // Every byte of the 192 MiB of guest RAM is in an fd-backed window (one per memfd).
    let windows = seen.current_dma();
    check_ram_coverage(&windows, 192 << 20).map_err(anyhow::Error::msg)?;
    let fd_windows = windows.iter().filter(|w| w.mapped).count();
    assert!(
        fd_windows >= 2,
        "one fd-backed window per NUMA memfd: {windows:?}"
    );

    // The server's mapping is guest memory: same bytes as QEMU reads (SeaBIOS's IVT at 0) ...
    let mut ivt = [0u8; 4];
    seen.dma_read(0, &mut ivt)?;
    assert_eq!(u32::from_le_bytes(ivt), guest.qmp.read_phys_u32(0).await?);
    assert_ne!(
        u32::from_le_bytes(ivt),
        0,
        "SeaBIOS has set interrupt vector 0"
    );
    // ... and what the server writes (into NUMA node 1's memfd) the guest sees (share=on).
    let node1_addr = (128 << 20) + 0x1000;
    seen.dma_write(node1_addr, &0xfeed_beefu32.to_le_bytes())?;
    assert_eq!(guest.qmp.read_phys_u32(node1_addr).await?, 0xfeed_beef);

    let stderr = guest.process.stderr_text();
    guest.quit().await?;
    assert_eq!(stderr.trim(), "", "QEMU stderr");
    let _ = stop.send(());
    task.await??;
    assert!(!socket.exists(), "server removed its socket");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_server_serves_qemu_after_qemu_and_mmio_crosses_the_socket() -> anyhow::Result<()> {
    init_tracing();
    let dir = TestDir::new("proto-again")?;
    let socket = dir.join("toy.sock");
    let (seen, stop, task) = serve_toy(&socket).await?;
    let topology = topology(&socket)?;
    for round in 1..=2u32 {
        let mut guest = Guest::start(require_qemu(), &topology, dir.path()).await?;
        let devices = guest
            .wait_for_bars(&["mock1_0"], 0, ENUMERATION_LIMIT)
            .await?;
        let bar0 = devices[0]
            .region(0)
            .and_then(|r| r.assigned_address())
            .expect("BAR0 assigned");
        assert_eq!(
            (devices[0].id.vendor, devices[0].id.device),
            (0x1de5, 0x00fe)
        );
        assert_eq!(guest.qmp.read_phys_u32(bar0 + 4).await?, 0);
        assert_eq!(guest.qmp.read_phys_u32(bar0).await?, ToyDevice::MAGIC);
        let last = seen
            .last_access(0)
            .expect("a BAR0 access reached the device");
        assert_eq!((last.write, last.offset, last.len), (false, 0, 4));
        // The first connection was our config-space client; each QEMU adds one.
        assert_eq!(seen.get().connects, round + 1);
        guest.quit().await?;
        // QEMU is gone: the server dropped its windows and waits for the next client.
        let deadline = Instant::now() + Duration::from_secs(10);
        while seen.get().disconnects < round + 1 {
            assert!(
                Instant::now() < deadline,
                "server did not notice QEMU leaving"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(seen.current_dma().is_empty(), "DMA windows released");
    }
    let _ = stop.send(());
    task.await??;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vfs_from_the_builder_are_functions_of_the_pf_slot_behind_their_numa_bus(
) -> anyhow::Result<()> {
    init_tracing();
    let dir = TestDir::new("proto-vf")?;
    let mut servers = Vec::new();
    for numa in 0..2 {
        servers
            .push(serve_toy_function(&dir.join(&format!("n{numa}pf.sock")), 0x00fe, true).await?);
        for vf in 0..2 {
            servers.push(
                serve_toy_function(&dir.join(&format!("n{numa}vf{vf}.sock")), 0x00ff, false)
                    .await?,
            );
        }
    }
    let topology = Topology::from_toml(&format!(
        r#"
        name = "vfs"
        [[numa_nodes]]
        cpus = 1
        memory_mib = 128
        [[numa_nodes.devices]]
        socket = "{0}/n0pf.sock"
        vfs = ["{0}/n0vf0.sock", "{0}/n0vf1.sock"]
        [[numa_nodes]]
        cpus = 1
        memory_mib = 128
        [[numa_nodes.devices]]
        socket = "{0}/n1pf.sock"
        vfs = ["{0}/n1vf0.sock", "{0}/n1vf1.sock"]
        "#,
        dir.path().display()
    ))?;
    let mut guest = Guest::start(require_qemu(), &topology, dir.path()).await?;
    let ids = [
        "mock0_0",
        "mock0_0_vf0",
        "mock0_0_vf1",
        "mock1_0",
        "mock1_0_vf0",
        "mock1_0_vf1",
    ];
    let devices = guest.wait_for_bars(&ids, 0, ENUMERATION_LIMIT).await?;
    let seen: Vec<(u8, u8, u8, u16)> = devices
        .iter()
        .map(|d| (d.bus, d.slot, d.function, d.id.device))
        .collect();
    assert_eq!(
        seen,
        [
            (17, 0, 0, 0x00fe),
            (17, 0, 1, 0x00ff),
            (17, 0, 2, 0x00ff),
            (33, 0, 0, 0x00fe),
            (33, 0, 1, 0x00ff),
            (33, 0, 2, 0x00ff),
        ],
        "(bus, slot, function, device) per builder id"
    );
    let stderr = guest.process.stderr_text();
    guest.quit().await?;
    assert_eq!(stderr.trim(), "", "QEMU stderr");
    for (_, stop, task) in servers {
        let _ = stop.send(());
        task.await??;
    }
    Ok(())
}
