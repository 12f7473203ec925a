//! The mock-accel model behind the real vfio-user server, driven by the real client over a
//! Unix socket: what an independent vfio-user client sees.

use std::time::Duration;

use device::bar0::reg;
use device::control::ControlClient;
use device::topology::{serve_all, DeviceSpec};
use vfio_user_proto::wire::region_index::{BAR0, CONFIG};
use vfio_user_proto::Client;

async fn connect(sock: &std::path::Path) -> Client {
    for _ in 0..200 {
        if let Ok(c) = Client::connect(sock).await {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("server at {} never accepted", sock.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_reads_identity_writes_status_and_reconnects() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("pf.sock");
    let spec = DeviceSpec::new(0, "NODE1-NUMA0-PF", sock.clone(), "8G", 0x5, None).expect("spec");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve_all(vec![spec], async {
        let _ = stopped.await;
    }));

    let mut c = connect(&sock).await;
    let info = c.device_info().await.expect("device info");
    assert!(info.num_regions >= 9 && info.num_irqs >= 5);
    assert_eq!(
        c.region_info(CONFIG).await.expect("config info").info.size,
        4096,
        "PCIe config"
    );
    let ids = c.read_u32(CONFIG, 0).await.expect("config read");
    assert_eq!(ids, 0x0001_1de5, "vendor 1de5 device 0001");
    let class = c.read_u32(CONFIG, 8).await.expect("class read") >> 8;
    assert_eq!(class, 0x12_0000);
    assert_eq!(
        c.read_u32(BAR0, reg::DEVICE_ID).await.expect("bar0"),
        0x4d4f_434b
    );
    let label = c.region_read(BAR0, reg::UUID, 8).await.expect("uuid lo");
    assert_eq!(&label, b"NODE1-NU");
    let size = c
        .region_read(BAR0, reg::MEMORY_SIZE, 8)
        .await
        .expect("8-byte read");
    assert_eq!(size, (8u64 << 30).to_le_bytes());
    assert_eq!(c.read_u32(BAR0, reg::CAPABILITIES).await.expect("caps"), 5);

    c.region_write(BAR0, reg::STATUS, &1u32.to_le_bytes())
        .await
        .expect("status write");
    assert_eq!(c.read_u32(BAR0, reg::STATUS).await.expect("status"), 1);
    let host = ControlClient::for_device_socket(&sock);
    assert_eq!(
        host.get().await.expect("control get").status,
        1,
        "host sees the guest write"
    );

    // Out of range and misaligned: error replies, and the connection keeps working.
    assert!(c.region_read(BAR0, 4096, 4).await.is_err());
    assert!(c.region_read(BAR0, 0x2e, 4).await.is_err());
    assert!(c.region_read(BAR0, 0, 3).await.is_err());
    assert_eq!(
        c.read_u32(BAR0, reg::DEVICE_ID)
            .await
            .expect("still served"),
        0x4d4f_434b
    );

    drop(c);
    host.set_status(0).await.expect("host write");
    let mut again = connect(&sock).await;
    assert_eq!(
        again.read_u32(BAR0, reg::STATUS).await.expect("status"),
        0,
        "host write seen"
    );
    let snap = host.get().await.expect("control get");
    assert_eq!(snap.connections, 2);
    assert!(snap.connected);

    let _ = stop.send(());
    server.await.expect("join").expect("served");
    assert!(!sock.exists(), "socket removed on shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_process_serves_pf_and_vfs_with_their_own_ids() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut specs = Vec::new();
    for (i, (label, vf)) in [("PF", None), ("VF0", Some(0u8)), ("VF1", Some(1))]
        .iter()
        .enumerate()
    {
        let sock = dir.path().join(format!("{i}.sock"));
        specs.push(DeviceSpec::new(i, label, sock, "2G", 1, *vf).expect("spec"));
    }
    let socks: Vec<_> = specs.iter().map(|s| s.socket.clone()).collect();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve_all(specs, async {
        let _ = stopped.await;
    }));
    for (i, sock) in socks.iter().enumerate() {
        let mut c = connect(sock).await;
        let device_id = c.read_u32(CONFIG, 0).await.expect("ids") >> 16;
        let function = c.read_u32(BAR0, reg::FUNCTION).await.expect("function");
        if i == 0 {
            assert_eq!((device_id, function), (0x0001, 0));
        } else {
            assert_eq!((device_id, function), (0x0002, 1 | ((i as u32 - 1) << 8)));
        }
    }
    let _ = stop.send(());
    server.await.expect("join").expect("served");
}
