//! A minimal PCI(e) function served over vfio-user: just enough config space for QEMU's
//! `vfio-user-pci` to enumerate it, and a 4 KiB BAR0 whose first register reads "MOCK".
//!
//! ```text
//! cargo run -p vfio-user-proto --example minimal_pci -- /tmp/minimal.sock
//! qemu-system-x86_64 -machine q35 ... \
//!   -device '{"driver":"vfio-user-pci","socket":{"type":"unix","path":"/tmp/minimal.sock"}}'
//! ```
//!
//! This is a protocol smoke test, not the mock-accel device model (see the `device` crate).

use vfio_user_proto::wire::irq_index;
use vfio_user_proto::*;

struct Minimal {
    config: [u8; 4096],
    bar0: [u8; 4096],
    bar0_addr: u32,
    dma: Option<DmaHandle>,
}

/// x86 reset vector: the last 16 bytes below 4 GiB (in the BIOS ROM, which QEMU maps without
/// an fd, so reading it exercises DMA_READ messages in QEMU's layout).
const RESET_VECTOR: u64 = 0xffff_fff0;
/// Where a DMA_WRITE probe lands when guest RAM has no fd (plain `-m`), check with
/// `xp /2wx 0x8000000` in the monitor.
const WRITE_PROBE: u64 = 0x0800_0000;

impl Minimal {
    fn new() -> Self {
        let mut config = [0u8; 4096];
        config[0..2].copy_from_slice(&0x1de5u16.to_le_bytes()); // vendor
        config[2..4].copy_from_slice(&0x0001u16.to_le_bytes()); // device
        config[8] = 0x01; // revision
        config[9..12].copy_from_slice(&[0x00, 0x00, 0x12]); // class 0x120000
        let mut bar0 = [0u8; 4096];
        bar0[0..4].copy_from_slice(&0x4d4f_434bu32.to_le_bytes());
        Self {
            config,
            bar0,
            bar0_addr: 0,
            dma: None,
        }
    }
}

impl Device for Minimal {
    fn attach(&mut self, ctx: DeviceContext) {
        self.dma = Some(ctx.dma);
    }
    fn dma_mapped(&mut self, map: &DmaMapping) {
        let Some(dma) = self.dma.clone() else { return };
        let contains = |a: u64, n: u64| a >= map.iova && a + n <= map.iova + map.size;
        // Message-based DMA needs a task: the client answers only after this call returns.
        if !map.mapped && map.readable && contains(RESET_VECTOR, 16) {
            tokio::spawn(async move {
                let mut b = [0u8; 16];
                match dma.read_async(RESET_VECTOR, &mut b).await {
                    Ok(()) => tracing::info!(bytes = ?b, "DMA_READ probe of the reset vector"),
                    Err(e) => tracing::warn!(error = %e, "DMA_READ probe failed"),
                }
            });
        } else if !map.mapped && map.writable && contains(WRITE_PROBE, 8) {
            tokio::spawn(async move {
                match dma.write_async(WRITE_PROBE, b"VFIOUSER").await {
                    Ok(()) => tracing::info!(iova = WRITE_PROBE, "DMA_WRITE probe wrote VFIOUSER"),
                    Err(e) => tracing::warn!(error = %e, "DMA_WRITE probe failed"),
                }
            });
        }
    }

    fn device_info(&self) -> DeviceInfo {
        DeviceInfo {
            flags: DeviceFlags::PCI | DeviceFlags::RESET,
            num_regions: 9,
            num_irqs: 5,
        }
    }
    fn region_info(&self, index: u32) -> Option<RegionInfo> {
        let rw = RegionFlags::READ | RegionFlags::WRITE;
        Some(match index {
            0 | 7 => RegionInfo {
                flags: rw,
                size: 4096,
                mmap: None,
            },
            1..=8 => RegionInfo {
                flags: RegionFlags::empty(),
                size: 0,
                mmap: None,
            },
            _ => return None,
        })
    }
    fn irq_info(&self, index: u32) -> Option<IrqInfo> {
        let count = match index {
            irq_index::INTX | irq_index::ERR | irq_index::REQ => 1,
            irq_index::MSI | irq_index::MSIX => 0,
            _ => return None,
        };
        Some(IrqInfo {
            count,
            flags: IrqInfoFlags::EVENTFD,
        })
    }
    fn region_read(&mut self, index: u32, offset: u64, data: &mut [u8]) -> Result<(), Errno> {
        let o = offset as usize;
        match index {
            0 => data.copy_from_slice(&self.bar0[o..o + data.len()]),
            7 => {
                let mut cfg = self.config;
                cfg[0x10..0x14].copy_from_slice(&self.bar0_addr.to_le_bytes());
                data.copy_from_slice(&cfg[o..o + data.len()]);
            }
            _ => return Err(Errno::EINVAL),
        }
        Ok(())
    }
    fn region_write(&mut self, index: u32, offset: u64, data: &[u8]) -> Result<(), Errno> {
        let o = offset as usize;
        match (index, o, data.len()) {
            (0, 0x2c, 4) => self.bar0[0x2c..0x30].copy_from_slice(data),
            (0, _, _) => return Err(Errno::EPERM),
            (7, 0x10, 4) => {
                // BAR0 sizing: 4 KiB, 32-bit memory.
                let v = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
                self.bar0_addr = v & !0xfff;
            }
            (7, 0x04, _) => self.config[o..o + data.len()].copy_from_slice(data),
            (7, _, _) => {}
            _ => return Err(Errno::EINVAL),
        }
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let path = std::env::args().nth(1).ok_or("usage: minimal_pci SOCKET")?;
    Server::new(Minimal::new()).serve(path).await?;
    Ok(())
}
