//! Health check / inspection tool: connect to a vfio-user server, negotiate, and print what
//! the device reports (device info, every region and IRQ index, the PCI config header).
//!
//! ```text
//! cargo run -p vfio-user-proto --example probe -- /tmp/mock-accel-0.sock
//! ```
//! Exit status 0 means the server negotiated and answered every query.

use vfio_user_proto::wire::region_index;
use vfio_user_proto::Client;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args().nth(1).ok_or("usage: probe SOCKET")?;
    let mut c = Client::connect(&path).await?;
    let caps = c.server_caps();
    println!(
        "server caps: max_msg_fds={} max_data_xfer_size={} pgsizes={:#x} max_dma_maps={} write_multiple={}",
        caps.max_msg_fds, caps.max_data_xfer_size, caps.pgsizes, caps.max_dma_maps, caps.write_multiple
    );
    let info = c.device_info().await?;
    println!(
        "device: flags={:#x} regions={} irqs={}",
        info.flags, info.num_regions, info.num_irqs
    );
    for i in 0..info.num_regions.min(32) {
        let r = c.region_info(i).await?;
        println!(
            "region {i}: size={:#x} flags={:#x} offset={:#x} sparse={:?} fd={}",
            r.info.size,
            r.info.flags,
            r.info.offset,
            r.sparse
                .iter()
                .map(|a| (a.offset, a.size))
                .collect::<Vec<_>>(),
            r.fd.is_some()
        );
    }
    for i in 0..info.num_irqs.min(32) {
        let q = c.irq_info(i).await?;
        println!("irq {i}: count={} flags={:#x}", q.count, q.flags);
    }
    if info.num_regions > region_index::CONFIG {
        let cfg = c.region_read(region_index::CONFIG, 0, 64).await?;
        println!("config[0..64]:");
        for (n, row) in cfg.chunks(16).enumerate() {
            let hex: Vec<String> = row.iter().map(|b| format!("{b:02x}")).collect();
            println!("  {:02x}: {}", n * 16, hex.join(" "));
        }
    }
    Ok(())
}
