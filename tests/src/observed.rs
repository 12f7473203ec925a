//! A transparent [`Device`] wrapper that records what the vfio-user server tells the device
//! (connects, DMA windows, region accesses), so tests can prove from the host side what went
//! over the socket, independent of the device's own observability.

use std::sync::{Arc, Mutex, MutexGuard};

use vfio_user_proto::{Device, DeviceContext, DeviceInfo, DmaMapping, Errno, IrqInfo, RegionInfo};

/// One region access as the device saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    pub write: bool,
    pub region: u32,
    pub offset: u64,
    pub len: usize,
}

/// What an [`Observed`] device has seen so far.
#[derive(Debug, Default)]
pub struct Observations {
    pub connects: u32,
    pub disconnects: u32,
    /// Every DMA_MAP of the current connection (cleared on disconnect).
    pub maps: Vec<DmaMapping>,
    /// Every DMA_UNMAP of the current connection (cleared on disconnect).
    pub unmaps: Vec<DmaMapping>,
    /// Region accesses of all connections, oldest first (the last 4096).
    pub accesses: Vec<Access>,
    /// The server's DMA and IRQ handles (set when the server wraps the device).
    pub ctx: Option<DeviceContext>,
}

const MAX_ACCESSES: usize = 4096;

/// `D`, with everything the server calls recorded in a shared [`Observations`].
#[derive(Debug)]
pub struct Observed<D> {
    inner: D,
    seen: Arc<Mutex<Observations>>,
}

impl<D: Device> Observed<D> {
    /// Wrap `inner`; keep the returned handle to inspect observations while a server owns it.
    pub fn new(inner: D) -> (Self, ObservedHandle) {
        let seen = Arc::new(Mutex::new(Observations::default()));
        (
            Self {
                inner,
                seen: seen.clone(),
            },
            ObservedHandle(seen),
        )
    }

    fn record_access(&self, access: Access) {
        let mut seen = lock(&self.seen);
        if seen.accesses.len() == MAX_ACCESSES {
            seen.accesses.remove(0);
        }
        seen.accesses.push(access);
    }
}

/// Shared view of an [`Observed`] device's observations.
#[derive(Debug, Clone)]
pub struct ObservedHandle(Arc<Mutex<Observations>>);

impl ObservedHandle {
    pub fn get(&self) -> MutexGuard<'_, Observations> {
        lock(&self.0)
    }

    /// The server's current DMA table (windows mapped now, fd-backed or not).
    pub fn current_dma(&self) -> Vec<DmaMapping> {
        self.get()
            .ctx
            .as_ref()
            .map(|c| c.dma.mappings())
            .unwrap_or_default()
    }

    /// Read guest memory through the server's DMA table (fd-backed windows only).
    pub fn dma_read(&self, iova: u64, buf: &mut [u8]) -> anyhow::Result<()> {
        let dma = self
            .get()
            .ctx
            .as_ref()
            .map(|c| c.dma.clone())
            .ok_or_else(|| anyhow::anyhow!("device not attached to a server"))?;
        Ok(dma.read(iova, buf)?)
    }

    /// Write guest memory through the server's DMA table (fd-backed windows only).
    pub fn dma_write(&self, iova: u64, buf: &[u8]) -> anyhow::Result<()> {
        let dma = self
            .get()
            .ctx
            .as_ref()
            .map(|c| c.dma.clone())
            .ok_or_else(|| anyhow::anyhow!("device not attached to a server"))?;
        Ok(dma.write(iova, buf)?)
    }

    /// The most recent access to `region`, if any.
    pub fn last_access(&self, region: u32) -> Option<Access> {
        self.get()
            .accesses
            .iter()
            .rev()
            .find(|a| a.region == region)
            .copied()
    }
}

fn lock(m: &Mutex<Observations>) -> MutexGuard<'_, Observations> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl<D: Device> Device for Observed<D> {
    fn device_info(&self) -> DeviceInfo {
        self.inner.device_info()
    }

    fn region_info(&self, index: u32) -> Option<RegionInfo> {
        self.inner.region_info(index)
    }

    fn irq_info(&self, index: u32) -> Option<IrqInfo> {
        self.inner.irq_info(index)
    }

    fn region_read(&mut self, index: u32, offset: u64, data: &mut [u8]) -> Result<(), Errno> {
        self.record_access(Access {
            write: false,
            region: index,
            offset,
            len: data.len(),
        });
        self.inner.region_read(index, offset, data)
    }

    fn region_write(&mut self, index: u32, offset: u64, data: &[u8]) -> Result<(), Errno> {
        self.record_access(Access {
            write: true,
            region: index,
            offset,
            len: data.len(),
        });
        self.inner.region_write(index, offset, data)
    }

    fn reset(&mut self) -> Result<(), Errno> {
        self.inner.reset()
    }

    fn connected(&mut self) {
        lock(&self.seen).connects += 1;
        self.inner.connected();
    }

    fn disconnected(&mut self) {
        {
            let mut seen = lock(&self.seen);
            seen.disconnects += 1;
            seen.maps.clear();
            seen.unmaps.clear();
        }
        self.inner.disconnected();
    }

    fn attach(&mut self, ctx: DeviceContext) {
        lock(&self.seen).ctx = Some(ctx.clone());
        self.inner.attach(ctx);
    }

    fn dma_mapped(&mut self, map: &DmaMapping) {
        lock(&self.seen).maps.push(*map);
        self.inner.dma_mapped(map);
    }

    fn dma_unmapped(&mut self, map: &DmaMapping) {
        lock(&self.seen).unmaps.push(*map);
        self.inner.dma_unmapped(map);
    }

    fn irqs_changed(&mut self, index: u32) {
        self.inner.irqs_changed(index);
    }
}
