//! The QEMU harness against real QEMU, without devices: the builder's NUMA and PCIe expander
//! layout is what the guest gets, QMP works, QEMU exits on `quit`.

use std::time::{Duration, Instant};

use mock_accel_tests::{init_tracing, require_qemu, Guest, TestDir};
use qemu::Topology;

#[tokio::test]
async fn numa_nodes_and_pxb_expander_buses_match_the_topology() -> anyhow::Result<()> {
    init_tracing();
    let install = require_qemu();
    assert!(install.version() >= qemu::MIN_VERSION);
    let dir = TestDir::new("harness")?;
    let topology = Topology::from_toml(
        r#"
        name = "harness"
        [[numa_nodes]]
        cpus = 1
        memory_mib = 128
        [[numa_nodes]]
        cpus = 1
        memory_mib = 64
        "#,
    )?;
    let mut guest = Guest::start(install, &topology, dir.path()).await?;
    assert_eq!(guest.qmp.status().await?, "running");

    let buses = guest.qmp.query_pci().await?;
    let mut numbers: Vec<u8> = buses.iter().map(|b| b.bus).collect();
    numbers.sort();
    assert_eq!(
        numbers,
        [0, 16, 32],
        "pcie.0 plus one expander bus per NUMA node"
    );
    let devices = guest.pci_devices().await?;
    for id in ["pxb0", "pxb1"] {
        assert!(devices.iter().any(|d| d.qdev_id == id), "{id} missing");
    }

    let numa = guest.qmp.hmp("info numa").await?;
    assert!(numa.contains("2 nodes"), "{numa}");
    assert!(numa.contains("node 0 size: 128 MB"), "{numa}");
    assert!(numa.contains("node 1 size: 64 MB"), "{numa}");

    let memdevs = guest.qmp.execute("query-memdev", None).await?;
    let memdevs = memdevs.as_array().cloned().unwrap_or_default();
    assert_eq!(memdevs.len(), 2);
    assert!(memdevs.iter().all(|m| m["share"] == true), "{memdevs:?}");

    let stderr = guest.process.stderr_text();
    let quit_at = Instant::now();
    let status = guest.quit().await?;
    assert!(status.success(), "QEMU exit status {status}");
    assert!(quit_at.elapsed() < Duration::from_secs(10));
    assert_eq!(stderr.trim(), "", "QEMU warned on stderr");
    Ok(())
}
