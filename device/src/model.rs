//! [`MockAccel`]: config space + BAR0 behind the vfio-user [`Device`] trait, with state the
//! host can observe (see [`crate::control`]) without going through the guest.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use vfio_user_proto::wire::{irq_index, region_index};
use vfio_user_proto::{
    Device, DeviceFlags, DeviceInfo, DmaMapping, Errno, IrqInfo, IrqInfoFlags, RegionFlags,
    RegionInfo,
};

use crate::bar0::{Bar0, Bar0Config};
use crate::config_space::{ConfigSpace, CONFIG_SPACE_SIZE};

/// VFIO PCI region count (BAR0-5, ROM, config, VGA).
const NUM_REGIONS: u32 = 9;
/// VFIO PCI IRQ index count (INTx, MSI, MSI-X, ERR, REQ).
const NUM_IRQS: u32 = 5;

/// One region access, as last seen by the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Access {
    /// VFIO region index (0 = BAR0, 7 = config space).
    pub region: u32,
    pub offset: u64,
    pub len: usize,
    pub write: bool,
    /// Milliseconds since the Unix epoch.
    pub unix_ms: u64,
}

/// What the host can see of a device (the control socket's `get` answer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub identity: String,
    pub vf_index: Option<u8>,
    pub memory_size: u64,
    pub capabilities: u32,
    pub status: u32,
    pub connected: bool,
    /// Clients served so far (including the current one).
    pub connections: u64,
    pub last_access: Option<Access>,
    pub last_bar0_access: Option<Access>,
    pub bar0_reads: u64,
    pub bar0_writes: u64,
    /// DMA windows currently mapped, and how many of them came with a file descriptor.
    pub dma_windows: u64,
    pub dma_fd_windows: u64,
    /// Bytes covered by fd-backed windows.
    pub dma_fd_bytes: u64,
    pub memory_enabled: bool,
}

#[derive(Debug)]
struct State {
    config: ConfigSpace,
    bar0: Bar0,
    vf: bool,
    connected: bool,
    connections: u64,
    last_access: Option<Access>,
    last_bar0_access: Option<Access>,
    bar0_reads: u64,
    bar0_writes: u64,
    dma: Vec<DmaMapping>,
}

/// A shared handle on one device's state, for the host side (control socket, tests).
#[derive(Debug, Clone)]
pub struct DeviceHandle(Arc<Mutex<State>>);

impl DeviceHandle {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the registers half-written in a way
        // that matters more than losing the device; keep serving with the inner value.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The device's observable state now.
    pub fn snapshot(&self) -> Snapshot {
        let s = self.lock();
        let cfg = s.bar0.config();
        Snapshot {
            identity: cfg.identity.to_string(),
            vf_index: cfg.vf_index,
            memory_size: cfg.memory_size,
            capabilities: cfg.capabilities,
            status: s.bar0.status(),
            connected: s.connected,
            connections: s.connections,
            last_access: s.last_access,
            last_bar0_access: s.last_bar0_access,
            bar0_reads: s.bar0_reads,
            bar0_writes: s.bar0_writes,
            dma_windows: s.dma.len() as u64,
            dma_fd_windows: s.dma.iter().filter(|m| m.mapped).count() as u64,
            dma_fd_bytes: s.dma.iter().filter(|m| m.mapped).map(|m| m.size).sum(),
            memory_enabled: s.config.memory_enabled(),
        }
    }

    /// Host-side write of STATUS (as if firmware changed it); the guest reads the new value.
    pub fn set_status(&self, value: u32) {
        let mut s = self.lock();
        let old = s.bar0.status();
        s.bar0.set_status(value);
        tracing::info!(identity = %s.bar0.config().identity, old, new = value, source = "host", "status changed");
    }
}

/// The mock-accel PCIe function.
#[derive(Debug)]
pub struct MockAccel {
    handle: DeviceHandle,
}

impl MockAccel {
    /// A device with the given register configuration (a VF when `config.vf_index` is set).
    pub fn new(config: Bar0Config) -> Self {
        let vf = config.vf_index.is_some();
        let state = State {
            config: ConfigSpace::mock_accel(vf),
            bar0: Bar0::new(config),
            vf,
            connected: false,
            connections: 0,
            last_access: None,
            last_bar0_access: None,
            bar0_reads: 0,
            bar0_writes: 0,
            dma: Vec::new(),
        };
        Self {
            handle: DeviceHandle(Arc::new(Mutex::new(state))),
        }
    }

    /// A handle for observing and steering the device from the host.
    pub fn handle(&self) -> DeviceHandle {
        self.handle.clone()
    }

    fn record(s: &mut State, region: u32, offset: u64, len: usize, write: bool) {
        let unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let access = Access {
            region,
            offset,
            len,
            write,
            unix_ms,
        };
        s.last_access = Some(access);
        if region == region_index::BAR0 {
            s.last_bar0_access = Some(access);
            if write {
                s.bar0_writes += 1;
            } else {
                s.bar0_reads += 1;
            }
        }
    }
}

impl Device for MockAccel {
    fn device_info(&self) -> DeviceInfo {
        DeviceInfo {
            flags: DeviceFlags::PCI | DeviceFlags::RESET,
            num_regions: NUM_REGIONS,
            num_irqs: NUM_IRQS,
        }
    }

    fn region_info(&self, index: u32) -> Option<RegionInfo> {
        let rw = RegionFlags::READ | RegionFlags::WRITE;
        let (flags, size) = match index {
            region_index::BAR0 => (rw, crate::bar0::BAR0_SIZE),
            region_index::CONFIG => (rw, CONFIG_SPACE_SIZE as u64),
            i if i < NUM_REGIONS => (RegionFlags::empty(), 0),
            _ => return None,
        };
        Some(RegionInfo {
            flags,
            size,
            mmap: None,
        })
    }

    fn irq_info(&self, index: u32) -> Option<IrqInfo> {
        // INTx for the pin in config space; ERR and REQ with count 1 so QEMU enables error
        // recovery and device requests without warnings (DESIGN.md §2); no MSI/MSI-X.
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
        let mut s = self.handle.lock();
        Self::record(&mut s, index, offset, data.len(), false);
        match index {
            region_index::BAR0 => s.bar0.read(offset, data).map_err(|e| {
                tracing::debug!(error = %e, "BAR0 read refused");
                Errno::EINVAL
            }),
            region_index::CONFIG => {
                let offset = usize::try_from(offset).map_err(|_| Errno::EINVAL)?;
                s.config.read(offset, data);
                Ok(())
            }
            _ => Err(Errno::EINVAL),
        }
    }

    fn region_write(&mut self, index: u32, offset: u64, data: &[u8]) -> Result<(), Errno> {
        let mut s = self.handle.lock();
        Self::record(&mut s, index, offset, data.len(), true);
        match index {
            region_index::BAR0 => {
                let old = s.bar0.status();
                match s.bar0.write(offset, data) {
                    Ok(Some(new)) if new != old => {
                        tracing::info!(identity = %s.bar0.config().identity, old, new, source = "guest", "status changed");
                        Ok(())
                    }
                    Ok(_) => Ok(()),
                    Err(e) => {
                        tracing::debug!(error = %e, "BAR0 write refused");
                        Err(Errno::EINVAL)
                    }
                }
            }
            region_index::CONFIG => {
                let offset = usize::try_from(offset).map_err(|_| Errno::EINVAL)?;
                s.config.guest_write(offset, data);
                Ok(())
            }
            _ => Err(Errno::EINVAL),
        }
    }

    fn reset(&mut self) -> Result<(), Errno> {
        let mut s = self.handle.lock();
        let vf = s.vf;
        s.config.reset(vf);
        s.bar0.reset();
        tracing::info!(identity = %s.bar0.config().identity, "device reset");
        Ok(())
    }

    fn connected(&mut self) {
        let mut s = self.handle.lock();
        s.connected = true;
        s.connections += 1;
        tracing::info!(identity = %s.bar0.config().identity, connections = s.connections, "client connected");
    }

    fn disconnected(&mut self) {
        let mut s = self.handle.lock();
        s.connected = false;
        s.dma.clear();
        tracing::info!(identity = %s.bar0.config().identity, "client disconnected");
    }

    fn dma_mapped(&mut self, map: &DmaMapping) {
        let mut s = self.handle.lock();
        tracing::debug!(
            iova = map.iova,
            size = map.size,
            fd = map.mapped,
            "DMA window mapped"
        );
        s.dma.push(*map);
    }

    fn dma_unmapped(&mut self, map: &DmaMapping) {
        let mut s = self.handle.lock();
        tracing::debug!(iova = map.iova, size = map.size, "DMA window unmapped");
        s.dma
            .retain(|m| !(m.iova == map.iova && m.size == map.size));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bar0::{reg, DEFAULT_CAPABILITIES, DEFAULT_MEMORY_SIZE};

    fn device() -> MockAccel {
        MockAccel::new(Bar0Config {
            identity: "NODE1-NUMA0-PF".parse().expect("label"),
            memory_size: DEFAULT_MEMORY_SIZE,
            capabilities: DEFAULT_CAPABILITIES,
            vf_index: None,
            device_id: crate::bar0::DEVICE_ID_MOCK,
        })
    }

    #[test]
    fn guest_status_write_is_visible_to_the_host_and_host_write_to_the_guest() {
        let mut d = device();
        let h = d.handle();
        d.region_write(region_index::BAR0, reg::STATUS, &1u32.to_le_bytes())
            .expect("write");
        let snap = h.snapshot();
        assert_eq!(snap.status, 1);
        assert_eq!(
            snap.last_bar0_access.map(|a| (a.offset, a.write)),
            Some((reg::STATUS, true))
        );
        h.set_status(0);
        let mut b = [0u8; 4];
        d.region_read(region_index::BAR0, reg::STATUS, &mut b)
            .expect("read");
        assert_eq!(u32::from_le_bytes(b), 0);
    }

    #[test]
    fn bad_bar0_access_is_an_errno_not_a_panic() {
        let mut d = device();
        let mut b = [0u8; 4];
        assert_eq!(
            d.region_read(region_index::BAR0, 0x2e, &mut b),
            Err(Errno::EINVAL)
        );
        assert_eq!(d.region_read(5, 0, &mut b), Err(Errno::EINVAL));
    }

    #[test]
    fn reset_clears_status_and_guest_config() {
        let mut d = device();
        d.region_write(region_index::BAR0, reg::STATUS, &1u32.to_le_bytes())
            .expect("write");
        d.region_write(region_index::CONFIG, 4, &2u16.to_le_bytes())
            .expect("cmd");
        assert!(d.handle().snapshot().memory_enabled);
        d.reset().expect("reset");
        let snap = d.handle().snapshot();
        assert_eq!((snap.status, snap.memory_enabled), (0, false));
    }

    #[test]
    fn regions_are_bar0_and_config_only() {
        let d = device();
        assert_eq!(d.region_info(0).map(|r| r.size), Some(4096));
        assert_eq!(
            d.region_info(7).map(|r| r.size),
            Some(4096),
            "PCIe config space"
        );
        assert_eq!(d.region_info(6).map(|r| r.size), Some(0), "no ROM");
        assert!(d.region_info(9).is_none());
        assert_eq!(d.irq_info(irq_index::ERR).map(|i| i.count), Some(1));
    }
}
