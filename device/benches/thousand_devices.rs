//! RSS of one `device` process serving 1000 mock-accel devices (vfio-user socket + control
//! socket each), measured from /proc/self/status before and after the sockets are up, and
//! after one client has connected to every device.
//!
//! `cargo bench -p device --bench thousand_devices [-- COUNT]`

use std::time::{Duration, Instant};

use device::topology::{serve_all, DeviceSpec};

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let count: usize = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .and_then(|a| a.parse().ok())
        .unwrap_or(1000);
    let dir = tempfile::Builder::new()
        .prefix("ma-rss-")
        .tempdir_in("/tmp")?;
    let specs = (0..count)
        .map(|i| {
            DeviceSpec::new(
                i,
                &format!("DEV-{i}"),
                dir.path().join(format!("{i}.sock")),
                "16G",
                1,
                None,
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    let socks: Vec<_> = specs.iter().map(|s| s.socket.clone()).collect();
    let before = rss_kib();
    let started = Instant::now();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve_all(specs, async {
        let _ = stopped.await;
    }));
    for s in &socks {
        while !s.exists() || !device::control::control_path(s).exists() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let up = started.elapsed();
    let idle = rss_kib();
    for s in &socks {
        let mut c = vfio_user_proto::Client::connect(s).await?;
        anyhow::ensure!(
            c.read_u32(0, 0).await? == 0x4d4f_434b,
            "device {} answers",
            s.display()
        );
    }
    let touched = rss_kib();
    println!("devices: {count}; all sockets up in {up:?}");
    println!(
        "RSS before {before} KiB, serving idle {idle} KiB, after one client per device {touched} KiB"
    );
    println!(
        "per device: idle {:.1} KiB, after a connection {:.1} KiB",
        (idle.saturating_sub(before)) as f64 / count as f64,
        (touched.saturating_sub(before)) as f64 / count as f64
    );
    let _ = stop.send(());
    server.await??;
    Ok(())
}
