//! A small in-memory [`Device`] for examples, tests, fuzzing and benchmarks.
//!
//! Region 0 (BAR0) is 4 KiB of registers backed by memory: offset 0 reads [`ToyDevice::MAGIC`]
//! (read-only), everything else is plain read/write memory except the doorbells below.
//! Region 1 (BAR1) is 8 KiB backed by a memfd whose second page is offered as a sparse mmap
//! area. Region 7 is a 4 KiB config space (RW memory). IRQs: INTx 1, MSI 1, MSI-X 4, ERR 1,
//! REQ 1. Everything the device observes is recorded in [`ToyState`], shared through an
//! `Arc<Mutex<_>>` so tests can look at it while the server owns the device.

use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};

use crate::device::*;

/// What a [`ToyDevice`] has seen.
#[derive(Debug, Default)]
pub struct ToyState {
    pub bar0: Vec<u8>,
    pub config: Vec<u8>,
    pub resets: u32,
    pub connects: u32,
    pub disconnects: u32,
    pub mapped: Vec<DmaMapping>,
    pub unmapped: Vec<DmaMapping>,
    pub irqs_changed: Vec<u32>,
    /// `(region, offset, len)` of every write, in order.
    pub writes: Vec<(u32, u64, usize)>,
    pub ctx: Option<DeviceContext>,
}

/// The toy device. Clone the [`ToyDevice::state`] handle before giving it to a server.
#[derive(Debug, Clone)]
pub struct ToyDevice {
    pub state: Arc<Mutex<ToyState>>,
    bar1: Option<Arc<OwnedFd>>,
}

impl Default for ToyDevice {
    fn default() -> Self {
        Self::new()
    }
}

impl ToyDevice {
    /// BAR0 offset 0, read-only.
    pub const MAGIC: u32 = 0x4d4f_434b;
    /// Writing `v` (u32) here raises MSI-X vector `v`.
    pub const REG_RAISE_MSIX: u64 = 0x10;
    /// Writing an IOVA (u64) here makes the device read 4 bytes of guest memory there
    /// (synchronously, mapped windows only) into [`Self::REG_DMA_RESULT`]; errno on failure.
    pub const REG_DMA_FETCH: u64 = 0x18;
    pub const REG_DMA_RESULT: u64 = 0x20;
    pub const BAR0_SIZE: u64 = 4096;
    pub const BAR1_SIZE: u64 = 8192;

    pub fn new() -> Self {
        let state = ToyState {
            bar0: vec![0; Self::BAR0_SIZE as usize],
            config: vec![0; 4096],
            ..Default::default()
        };
        let bar1 = nix::sys::memfd::memfd_create(
            c"toy-bar1",
            nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC,
        )
        .ok()
        .filter(|fd| nix::unistd::ftruncate(fd, Self::BAR1_SIZE as i64).is_ok())
        .map(Arc::new);
        Self {
            state: Arc::new(Mutex::new(state)),
            bar1,
        }
    }

    fn st(&self) -> std::sync::MutexGuard<'_, ToyState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn range(len: usize, offset: u64, n: usize) -> Result<std::ops::Range<usize>, Errno> {
    let start = usize::try_from(offset).map_err(|_| Errno::EINVAL)?;
    let end = start.checked_add(n).ok_or(Errno::EINVAL)?;
    if end > len {
        return Err(Errno::EINVAL);
    }
    Ok(start..end)
}

impl Device for ToyDevice {
    fn device_info(&self) -> DeviceInfo {
        DeviceInfo {
            flags: DeviceFlags::PCI | DeviceFlags::RESET,
            num_regions: 9,
            num_irqs: 5,
        }
    }

    fn region_info(&self, index: u32) -> Option<RegionInfo> {
        let rw = RegionFlags::READ | RegionFlags::WRITE;
        match index {
            0 => Some(RegionInfo {
                flags: rw,
                size: Self::BAR0_SIZE,
                mmap: None,
            }),
            1 => Some(RegionInfo {
                flags: rw,
                size: Self::BAR1_SIZE,
                mmap: self.bar1.clone().map(|fd| RegionMmap {
                    fd,
                    file_offset: 0,
                    areas: vec![SparseArea {
                        offset: 4096,
                        size: 4096,
                    }],
                }),
            }),
            7 => Some(RegionInfo {
                flags: rw,
                size: 4096,
                mmap: None,
            }),
            2..=8 => Some(RegionInfo {
                flags: RegionFlags::empty(),
                size: 0,
                mmap: None,
            }),
            _ => None,
        }
    }

    fn irq_info(&self, index: u32) -> Option<IrqInfo> {
        let count = match index {
            0..=1 | 3..=4 => 1,
            2 => 4,
            _ => return None,
        };
        Some(IrqInfo {
            count,
            flags: IrqInfoFlags::EVENTFD | IrqInfoFlags::NORESIZE,
        })
    }

    fn region_read(&mut self, index: u32, offset: u64, data: &mut [u8]) -> Result<(), Errno> {
        let st = self.st();
        let mem = match index {
            0 => &st.bar0,
            7 => &st.config,
            1 => {
                data.fill(0xb1);
                return Ok(());
            }
            _ => return Err(Errno::EINVAL),
        };
        let r = range(mem.len(), offset, data.len())?;
        data.copy_from_slice(&mem[r]);
        if index == 0 && offset < 4 {
            let magic = Self::MAGIC.to_le_bytes();
            for (i, b) in data.iter_mut().enumerate() {
                if let Some(m) = magic.get(offset as usize + i) {
                    *b = *m;
                }
            }
        }
        Ok(())
    }

    fn region_write(&mut self, index: u32, offset: u64, data: &[u8]) -> Result<(), Errno> {
        let mut st = self.st();
        st.writes.push((index, offset, data.len()));
        match index {
            0 => {
                let r = range(st.bar0.len(), offset, data.len())?;
                if offset < 4 {
                    return Err(Errno::EPERM);
                }
                st.bar0[r].copy_from_slice(data);
                if offset == Self::REG_RAISE_MSIX && data.len() == 4 {
                    let v = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
                    let ctx = st.ctx.clone().ok_or(Errno::EIO)?;
                    drop(st);
                    ctx.irqs
                        .trigger(crate::wire::irq_index::MSIX, v)
                        .map_err(|_| Errno::EINVAL)?;
                } else if offset == Self::REG_DMA_FETCH && data.len() == 8 {
                    let mut a = [0u8; 8];
                    a.copy_from_slice(data);
                    let ctx = st.ctx.clone().ok_or(Errno::EIO)?;
                    let mut buf = [0u8; 4];
                    ctx.dma
                        .read(u64::from_le_bytes(a), &mut buf)
                        .map_err(|e| e.errno())?;
                    let r = Self::REG_DMA_RESULT as usize;
                    st.bar0[r..r + 4].copy_from_slice(&buf);
                }
                Ok(())
            }
            7 => {
                let r = range(st.config.len(), offset, data.len())?;
                st.config[r].copy_from_slice(data);
                Ok(())
            }
            1 => Ok(()),
            _ => Err(Errno::EINVAL),
        }
    }

    fn reset(&mut self) -> Result<(), Errno> {
        let mut st = self.st();
        st.resets += 1;
        st.bar0.fill(0);
        Ok(())
    }
    fn connected(&mut self) {
        self.st().connects += 1;
    }
    fn disconnected(&mut self) {
        self.st().disconnects += 1;
    }
    fn attach(&mut self, ctx: DeviceContext) {
        self.st().ctx = Some(ctx);
    }
    fn dma_mapped(&mut self, map: &DmaMapping) {
        self.st().mapped.push(*map);
    }
    fn dma_unmapped(&mut self, map: &DmaMapping) {
        self.st().unmapped.push(*map);
    }
    fn irqs_changed(&mut self, index: u32) {
        self.st().irqs_changed.push(index);
    }
}
