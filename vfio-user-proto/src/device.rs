//! The contract between the vfio-user server and a device model.
//!
//! The server owns the socket, framing, DMA table and IRQ eventfds; a [`Device`] only answers
//! questions about its regions and IRQs and performs region accesses. Region indices follow
//! VFIO's PCI numbering (`0..=5` BARs, `6` ROM, `7` config space, `8` VGA), but this crate does
//! not interpret them: config space is just region 7 to the server.
//!
//! All methods are synchronous and called from the connection task, one request at a time, in
//! the order the client sent them.

use std::os::fd::OwnedFd;
use std::sync::Arc;

pub use nix::errno::Errno;

pub use crate::dma::{DmaError, DmaHandle, DmaMapping};
pub use crate::irq::{IrqError, IrqHandle};

/// Handles the server gives a device once, in [`Device::attach`], before any client connects.
/// Both stay valid for the life of the server and always refer to the current client's DMA
/// mappings and interrupt eventfds (empty while no client is connected).
#[derive(Debug, Clone, Default)]
pub struct DeviceContext {
    /// Read and write client (guest) memory.
    pub dma: DmaHandle,
    /// Raise interrupts (write the eventfd the client registered with SET_IRQS).
    pub irqs: IrqHandle,
}

bitflags::bitflags! {
    /// `vfio_device_info.flags` (VFIO_DEVICE_FLAGS_*).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct DeviceFlags: u32 {
        const RESET = 1 << 0;
        const PCI = 1 << 1;
    }

    /// `vfio_region_info.flags` (VFIO_REGION_INFO_FLAG_*).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct RegionFlags: u32 {
        const READ = 1 << 0;
        const WRITE = 1 << 1;
        const MMAP = 1 << 2;
        const CAPS = 1 << 3;
    }

    /// `vfio_irq_info.flags` (VFIO_IRQ_INFO_*).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct IrqInfoFlags: u32 {
        const EVENTFD = 1 << 0;
        const MASKABLE = 1 << 1;
        const AUTOMASKED = 1 << 2;
        const NORESIZE = 1 << 3;
    }
}

/// What DEVICE_GET_INFO reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceInfo {
    pub flags: DeviceFlags,
    pub num_regions: u32,
    pub num_irqs: u32,
}

/// One directly mappable window of a region (VFIO_REGION_INFO_CAP_SPARSE_MMAP area).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SparseArea {
    /// Offset from the start of the region.
    pub offset: u64,
    pub size: u64,
}

/// The file that backs the mappable parts of a region; sent with the REGION_INFO reply.
#[derive(Debug, Clone)]
pub struct RegionMmap {
    pub fd: Arc<OwnedFd>,
    /// Offset in `fd` that corresponds to region offset 0.
    pub file_offset: u64,
    /// Mappable areas; empty means the whole region is mappable.
    pub areas: Vec<SparseArea>,
}

/// What REGION_INFO reports for one region. A region of size 0 is "not implemented".
#[derive(Debug, Clone)]
pub struct RegionInfo {
    pub flags: RegionFlags,
    pub size: u64,
    pub mmap: Option<RegionMmap>,
}

/// What GET_IRQ_INFO reports for one IRQ index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IrqInfo {
    pub count: u32,
    pub flags: IrqInfoFlags,
}

/// A device model served over vfio-user.
pub trait Device: Send + 'static {
    /// DEVICE_GET_INFO.
    fn device_info(&self) -> DeviceInfo;
    /// REGION_INFO for `index`; `None` for an index >= `num_regions`.
    fn region_info(&self, index: u32) -> Option<RegionInfo>;
    /// GET_IRQ_INFO for `index`; `None` for an index >= `num_irqs`.
    fn irq_info(&self, index: u32) -> Option<IrqInfo>;
    /// REGION_READ: fill `data` from `offset` of region `index`. Bounds are checked by the
    /// server against `region_info` before the call; alignment and register rules are the
    /// device's to enforce (return `Errno::EINVAL` and the client gets an error reply).
    fn region_read(&mut self, index: u32, offset: u64, data: &mut [u8]) -> Result<(), Errno>;
    /// REGION_WRITE (also each entry of REGION_WRITE_MULTI).
    fn region_write(&mut self, index: u32, offset: u64, data: &[u8]) -> Result<(), Errno>;
    /// DEVICE_RESET.
    fn reset(&mut self) -> Result<(), Errno> {
        Ok(())
    }
    /// A client connected (after version negotiation).
    fn connected(&mut self) {}
    /// The client went away; DMA mappings and IRQ eventfds are already dropped.
    fn disconnected(&mut self) {}

    // ----- Added after the first contract; all have no-op defaults. -----

    /// Called once by [`crate::Server::new`] (before any client connects) with the handles
    /// for DMA and interrupts. Keep clones of them to access guest memory or raise IRQs from
    /// any thread or task later.
    fn attach(&mut self, ctx: DeviceContext) {
        let _ = ctx;
    }
    /// DMA_MAP added a window (already in the table, so [`DmaHandle`] can access it).
    fn dma_mapped(&mut self, map: &DmaMapping) {
        let _ = map;
    }
    /// DMA_UNMAP removed a window (already gone from the table). Called once per window,
    /// including for the unmap-all flag. Not called on disconnect (see `disconnected`).
    fn dma_unmapped(&mut self, map: &DmaMapping) {
        let _ = map;
    }
    /// DEVICE_SET_IRQS changed IRQ index `index` (eventfds assigned or removed, vectors
    /// masked or unmasked). The new state is visible through [`IrqHandle`].
    fn irqs_changed(&mut self, index: u32) {
        let _ = index;
    }
}
