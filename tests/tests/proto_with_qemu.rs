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
    client.region_write(7, 0, &[0xe5, 0x1d, 0xfe, 0x00]).await?;
    client.region_write(7, 8, &[0x01, 0x00, 0x00, 0x12]).await?;
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
