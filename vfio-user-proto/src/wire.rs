//! vfio-user wire format: the 16-byte header and every message body, as zerocopy structs.
//!
//! No I/O and no `unsafe` here. Layouts follow the vfio-user specification
//! (`docs/interop/vfio-user.rst` in QEMU) and QEMU's client (`hw/vfio-user/protocol.h`); where
//! the two disagree (DMA_READ/DMA_WRITE) both layouts are defined and the one QEMU speaks is
//! the one the server uses. All integers are in host byte order, as the protocol demands.
//!
//! Every struct's size is asserted at compile time, so a field change that would break the
//! wire shows up as a build error.

#![forbid(unsafe_code)]

use std::fmt;

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Size of [`Header`] in bytes.
pub const HEADER_SIZE: usize = 16;

/// A vfio-user command code. Open: an unknown code still parses (and gets an errno reply).
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(transparent)]
pub struct Command(pub u16);

impl Command {
    pub const VERSION: Self = Self(1);
    pub const DMA_MAP: Self = Self(2);
    pub const DMA_UNMAP: Self = Self(3);
    pub const DEVICE_GET_INFO: Self = Self(4);
    pub const DEVICE_GET_REGION_INFO: Self = Self(5);
    pub const DEVICE_GET_REGION_IO_FDS: Self = Self(6);
    pub const DEVICE_GET_IRQ_INFO: Self = Self(7);
    pub const DEVICE_SET_IRQS: Self = Self(8);
    pub const REGION_READ: Self = Self(9);
    pub const REGION_WRITE: Self = Self(10);
    /// Server -> client.
    pub const DMA_READ: Self = Self(11);
    /// Server -> client.
    pub const DMA_WRITE: Self = Self(12);
    pub const DEVICE_RESET: Self = Self(13);
    /// Obsolete (QEMU's `VFIO_USER_DIRTY_PAGES`); not in the current spec.
    pub const DIRTY_PAGES: Self = Self(14);
    pub const REGION_WRITE_MULTI: Self = Self(15);
    pub const DEVICE_FEATURE: Self = Self(16);
    pub const MIG_DATA_READ: Self = Self(17);
    pub const MIG_DATA_WRITE: Self = Self(18);

    /// The spec name of a known command, `None` for an unknown code.
    pub fn name(self) -> Option<&'static str> {
        Some(match self {
            Self::VERSION => "VERSION",
            Self::DMA_MAP => "DMA_MAP",
            Self::DMA_UNMAP => "DMA_UNMAP",
            Self::DEVICE_GET_INFO => "DEVICE_GET_INFO",
            Self::DEVICE_GET_REGION_INFO => "DEVICE_GET_REGION_INFO",
            Self::DEVICE_GET_REGION_IO_FDS => "DEVICE_GET_REGION_IO_FDS",
            Self::DEVICE_GET_IRQ_INFO => "DEVICE_GET_IRQ_INFO",
            Self::DEVICE_SET_IRQS => "DEVICE_SET_IRQS",
            Self::REGION_READ => "REGION_READ",
            Self::REGION_WRITE => "REGION_WRITE",
            Self::DMA_READ => "DMA_READ",
            Self::DMA_WRITE => "DMA_WRITE",
            Self::DEVICE_RESET => "DEVICE_RESET",
            Self::DIRTY_PAGES => "DIRTY_PAGES",
            Self::REGION_WRITE_MULTI => "REGION_WRITE_MULTI",
            Self::DEVICE_FEATURE => "DEVICE_FEATURE",
            Self::MIG_DATA_READ => "MIG_DATA_READ",
            Self::MIG_DATA_WRITE => "MIG_DATA_WRITE",
            _ => return None,
        })
    }
}

impl fmt::Debug for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => f.write_str(n),
            None => write!(f, "Command({})", self.0),
        }
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

bitflags::bitflags! {
    /// Header `flags` (spec "Header"): bits 0-3 are the message type.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct HeaderFlags: u32 {
        /// Type bits: 0 = command, 1 = reply.
        const TYPE_MASK = 0xf;
        const REPLY = 0x1;
        /// The sender wants no reply (posted write).
        const NO_REPLY = 0x10;
        /// Reply reports an error in `Header::error`.
        const ERROR = 0x20;
        const _ = !0;
    }
}

/// Message type (header flags bits 0-3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageType {
    Command,
    Reply,
    /// Reserved type value; a peer sending one is broken.
    Other(u32),
}

/// The header every message starts with (spec "Header"; QEMU `VFIOUserHdr`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct Header {
    pub msg_id: u16,
    pub command: u16,
    /// Size of the whole message including this header.
    pub size: u32,
    pub flags: u32,
    /// errno of an error reply; reserved in commands.
    pub error: u32,
}

impl Header {
    /// A command header for a message of `size` bytes in total.
    pub fn command(msg_id: u16, command: Command, size: u32) -> Self {
        Self {
            msg_id,
            command: command.0,
            size,
            flags: 0,
            error: 0,
        }
    }
    /// The reply header matching `self` (a command) with total size `size`.
    pub fn reply_to(&self, size: u32) -> Self {
        Self {
            msg_id: self.msg_id,
            command: self.command,
            size,
            flags: HeaderFlags::REPLY.bits(),
            error: 0,
        }
    }
    /// An error reply (header only) to `self` carrying `errno`.
    pub fn error_reply_to(&self, errno: i32) -> Self {
        Self {
            msg_id: self.msg_id,
            command: self.command,
            size: HEADER_SIZE as u32,
            flags: (HeaderFlags::REPLY | HeaderFlags::ERROR).bits(),
            error: errno.unsigned_abs(),
        }
    }
    pub fn cmd(&self) -> Command {
        Command(self.command)
    }
    pub fn flag_bits(&self) -> HeaderFlags {
        HeaderFlags::from_bits_retain(self.flags)
    }
    pub fn message_type(&self) -> MessageType {
        match self.flags & HeaderFlags::TYPE_MASK.bits() {
            0 => MessageType::Command,
            1 => MessageType::Reply,
            t => MessageType::Other(t),
        }
    }
    pub fn no_reply(&self) -> bool {
        self.flag_bits().contains(HeaderFlags::NO_REPLY)
    }
    pub fn is_error(&self) -> bool {
        self.flag_bits().contains(HeaderFlags::ERROR)
    }
    /// Payload size, or `None` when `size` is smaller than the header itself.
    pub fn payload_len(&self) -> Option<usize> {
        (self.size as usize).checked_sub(HEADER_SIZE)
    }
    /// Parse from the first 16 bytes of `bytes`.
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        Self::read_from_prefix(bytes).ok().map(|(h, _)| h)
    }
}

// ---------------------------------------------------------------------------------------------
// VERSION (1)

/// VERSION request and reply body, followed by optional NUL-terminated JSON.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct Version {
    pub major: u16,
    pub minor: u16,
}

// ---------------------------------------------------------------------------------------------
// DMA_MAP (2) / DMA_UNMAP (3)

bitflags::bitflags! {
    /// DMA_MAP `flags` (VFIO_DMA_MAP_FLAG_*).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct DmaMapFlags: u32 {
        const READ = 1 << 0;
        const WRITE = 1 << 1;
    }

    /// DMA_UNMAP `flags` (VFIO_DMA_UNMAP_FLAG_*).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct DmaUnmapFlags: u32 {
        const GET_DIRTY_BITMAP = 1 << 0;
        /// Unmap everything; `iova` and `size` must be 0 (QEMU sends this on teardown).
        const ALL = 1 << 1;
    }
}

/// DMA_MAP body (QEMU `VFIOUserDMAMap`, from `vfio_iommu_type1_dma_map`). A file
/// descriptor may accompany it; `offset` is then the offset into that file.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct DmaMap {
    pub argsz: u32,
    pub flags: u32,
    pub offset: u64,
    pub iova: u64,
    pub size: u64,
}

/// DMA_UNMAP body (QEMU `VFIOUserDMAUnmap`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct DmaUnmap {
    pub argsz: u32,
    pub flags: u32,
    pub iova: u64,
    pub size: u64,
}

/// `vfio_bitmap` that follows DMA_UNMAP when GET_DIRTY_BITMAP is set (unsupported here).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct DmaBitmap {
    pub pgsize: u64,
    pub size: u64,
}

// ---------------------------------------------------------------------------------------------
// DEVICE_GET_INFO (4)

/// DEVICE_GET_INFO request and reply body (`vfio_device_info`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct DeviceInfo {
    pub argsz: u32,
    pub flags: u32,
    pub num_regions: u32,
    pub num_irqs: u32,
}

// ---------------------------------------------------------------------------------------------
// DEVICE_GET_REGION_INFO (5)

/// DEVICE_GET_REGION_INFO request and reply body (`vfio_region_info`). In the reply,
/// `offset` is the offset into the file descriptor sent with the reply (if any), and a
/// capability chain may follow at `cap_offset` (counted from the start of this struct).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct RegionInfo {
    pub argsz: u32,
    pub flags: u32,
    pub index: u32,
    pub cap_offset: u32,
    pub size: u64,
    pub offset: u64,
}

/// `vfio_info_cap_header`. `next` is the offset of the next capability from the start of
/// [`RegionInfo`], 0 for the last one.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct CapHeader {
    pub id: u16,
    pub version: u16,
    pub next: u32,
}

/// VFIO_REGION_INFO_CAP_SPARSE_MMAP.
pub const REGION_INFO_CAP_SPARSE_MMAP: u16 = 1;
/// VFIO_REGION_INFO_CAP_TYPE.
pub const REGION_INFO_CAP_TYPE: u16 = 2;

/// `vfio_region_info_cap_sparse_mmap` without its areas, which follow.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct SparseMmapCap {
    pub header: CapHeader,
    pub nr_areas: u32,
    pub reserved: u32,
}

/// `vfio_region_sparse_mmap_area`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct SparseMmapArea {
    pub offset: u64,
    pub size: u64,
}

// ---------------------------------------------------------------------------------------------
// DEVICE_GET_REGION_IO_FDS (6)

/// DEVICE_GET_REGION_IO_FDS request and reply body; `count` sub-regions follow in the reply.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct RegionIoFds {
    pub argsz: u32,
    pub flags: u32,
    pub index: u32,
    pub count: u32,
}

/// One ioeventfd/ioregionfd sub-region of a GET_REGION_IO_FDS reply.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct SubRegionIoFd {
    pub offset: u64,
    pub size: u64,
    pub fd_index: u32,
    pub kind: u32,
    pub flags: u32,
    pub padding: u32,
    /// `datamatch` for ioeventfds, `user_data` for ioregionfds.
    pub datamatch: u64,
}

// ---------------------------------------------------------------------------------------------
// DEVICE_GET_IRQ_INFO (7) / DEVICE_SET_IRQS (8)

/// VFIO PCI IRQ indices.
pub mod irq_index {
    pub const INTX: u32 = 0;
    pub const MSI: u32 = 1;
    pub const MSIX: u32 = 2;
    pub const ERR: u32 = 3;
    pub const REQ: u32 = 4;
}

/// VFIO PCI region indices.
pub mod region_index {
    pub const BAR0: u32 = 0;
    pub const BAR5: u32 = 5;
    pub const ROM: u32 = 6;
    pub const CONFIG: u32 = 7;
    pub const VGA: u32 = 8;
}

/// DEVICE_GET_IRQ_INFO request and reply body (`vfio_irq_info`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct IrqInfo {
    pub argsz: u32,
    pub flags: u32,
    pub index: u32,
    pub count: u32,
}

bitflags::bitflags! {
    /// DEVICE_SET_IRQS `flags` (VFIO_IRQ_SET_*): exactly one DATA_ and one ACTION_ bit.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct IrqSetFlags: u32 {
        const DATA_NONE = 1 << 0;
        const DATA_BOOL = 1 << 1;
        const DATA_EVENTFD = 1 << 2;
        const ACTION_MASK = 1 << 3;
        const ACTION_UNMASK = 1 << 4;
        const ACTION_TRIGGER = 1 << 5;
    }
}

impl IrqSetFlags {
    pub const DATA_TYPE_MASK: Self = Self::DATA_NONE
        .union(Self::DATA_BOOL)
        .union(Self::DATA_EVENTFD);
    pub const ACTION_TYPE_MASK: Self = Self::ACTION_MASK
        .union(Self::ACTION_UNMASK)
        .union(Self::ACTION_TRIGGER);
}

/// DEVICE_SET_IRQS request body (`vfio_irq_set` without `data`). With DATA_BOOL, `count`
/// bytes follow; with DATA_EVENTFD the eventfds travel as SCM_RIGHTS (none means "clear").
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct IrqSet {
    pub argsz: u32,
    pub flags: u32,
    pub index: u32,
    pub start: u32,
    pub count: u32,
}

// ---------------------------------------------------------------------------------------------
// REGION_READ (9) / REGION_WRITE (10)

/// REGION_READ/REGION_WRITE body (QEMU `VFIOUserRegionRW` without data). Data follows in a
/// write request and a read reply.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct RegionAccess {
    pub offset: u64,
    pub region: u32,
    pub count: u32,
}

// ---------------------------------------------------------------------------------------------
// DMA_READ (11) / DMA_WRITE (12)

/// DMA_READ/DMA_WRITE body in the **spec** layout: `u64 address; u64 count`, data after it
/// (message offset 32). **QEMU 11.1.3 speaks this layout** — verified on 2026-11-23 against
/// the Debian trixie-backports build: a DMA_WRITE in the 32-bit-count layout below is refused
/// with `E2BIG` (QEMU reads `count` as 64 bits, taking data bytes as its high half), while this
/// layout passes QEMU's checks. Requests are `32 + count` bytes (DMA_WRITE) or 32 bytes
/// (DMA_READ); the DMA_READ reply repeats the 16-byte body followed by the data.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct SpecDmaAccess {
    pub address: u64,
    pub count: u64,
}

/// DMA_READ/DMA_WRITE body in the **legacy** layout of QEMU's early vfio-user client
/// (`VFIOUserDMARW` with `u64 offset; u32 count; char data[]`): the C struct is 32 bytes with
/// the header but `data` starts at message offset 28 ([`LEGACY_DMA_DATA_OFFSET`]), and
/// messages are sized `32 + count`. Not what QEMU 11.1.3 accepts (see [`SpecDmaAccess`]); kept
/// selectable through [`DmaRwLayout::Legacy32`] for older clients.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C, packed)]
pub struct QemuDmaAccess {
    /// The DMA address (QEMU calls it `offset`; it is an IOVA).
    pub offset: u64,
    pub count: u32,
}

/// Message offset of DMA data in the legacy layout (`offsetof(VFIOUserDMARW, data)`).
pub const LEGACY_DMA_DATA_OFFSET: usize = HEADER_SIZE + 12;
/// Fixed size of a DMA_READ/DMA_WRITE message without data, in both layouts (header plus
/// 16 bytes; the legacy layout counts its 4 bytes of C tail padding).
pub const DMA_MSG_OVERHEAD: usize = 32;

/// Which DMA_READ/DMA_WRITE layout a connection speaks (server to client requests).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DmaRwLayout {
    /// `{u64 address; u64 count; data}`: the spec, libvfio-user and QEMU 11.1.3 (verified).
    #[default]
    Spec,
    /// `{u64 offset; u32 count; data at 28}` + 4 bytes tail padding: early QEMU vfio-user code.
    Legacy32,
}

/// A decoded DMA_READ/DMA_WRITE request body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DmaRw<'a> {
    pub iova: u64,
    pub count: u64,
    /// The data (DMA_WRITE): exactly `count` bytes. Empty for DMA_READ.
    pub data: &'a [u8],
}

impl DmaRwLayout {
    /// Message offset where data starts (requests and DMA_READ replies).
    pub fn data_offset(self) -> usize {
        match self {
            Self::Spec => HEADER_SIZE + std::mem::size_of::<SpecDmaAccess>(),
            Self::Legacy32 => LEGACY_DMA_DATA_OFFSET,
        }
    }

    fn head(self, iova: u64, count: u64) -> Vec<u8> {
        match self {
            Self::Spec => SpecDmaAccess {
                address: iova,
                count,
            }
            .as_bytes()
            .to_vec(),
            Self::Legacy32 => QemuDmaAccess {
                offset: iova,
                count: count as u32,
            }
            .as_bytes()
            .to_vec(),
        }
    }

    fn tail(self) -> &'static [u8] {
        match self {
            Self::Spec => &[],
            Self::Legacy32 => &[0; 4],
        }
    }

    /// A DMA_READ request for `count` bytes at `iova`.
    pub fn read_request(self, msg_id: u16, iova: u64, count: u32) -> Vec<u8> {
        let head = self.head(iova, u64::from(count));
        encode(
            Header::command(msg_id, Command::DMA_READ, 0),
            &[&head, self.tail()],
        )
    }

    /// A DMA_WRITE request carrying `data` to `iova`.
    pub fn write_request(self, msg_id: u16, iova: u64, data: &[u8]) -> Vec<u8> {
        let head = self.head(iova, data.len() as u64);
        encode(
            Header::command(msg_id, Command::DMA_WRITE, 0),
            &[&head, data, self.tail()],
        )
    }

    /// The reply to a DMA_READ request `req` (its header) with the data read.
    pub fn read_reply(self, req: &Header, iova: u64, data: &[u8]) -> Vec<u8> {
        let head = self.head(iova, data.len() as u64);
        encode(req.reply_to(0), &[&head, data, self.tail()])
    }

    /// The data of a DMA_READ reply body, if it holds `count` bytes.
    pub fn read_reply_data(self, body: &[u8], count: usize) -> Option<&[u8]> {
        let start = self.data_offset() - HEADER_SIZE;
        body.get(start..start.checked_add(count)?)
    }

    /// Decode a DMA_READ/DMA_WRITE request body (`write` selects whether data must follow).
    pub fn parse(self, body: &[u8], write: bool) -> Option<DmaRw<'_>> {
        if body.len() + HEADER_SIZE < DMA_MSG_OVERHEAD {
            return None;
        }
        let (iova, count) = match self {
            Self::Spec => {
                let (a, _) = SpecDmaAccess::read_from_prefix(body).ok()?;
                (a.address, a.count)
            }
            Self::Legacy32 => {
                let (a, _) = QemuDmaAccess::read_from_prefix(body).ok()?;
                (a.offset, u64::from(a.count))
            }
        };
        let data = if write {
            let start = self.data_offset() - HEADER_SIZE;
            body.get(start..start.checked_add(usize::try_from(count).ok()?)?)?
        } else {
            &[]
        };
        Some(DmaRw { iova, count, data })
    }
}

// ---------------------------------------------------------------------------------------------
// REGION_WRITE_MULTI (15)

/// Entries per REGION_WRITE_MULTI message QEMU sends at most (`VFIO_USER_MULTI_MAX`).
pub const WRITE_MULTI_MAX: u64 = 200;
/// Data bytes per REGION_WRITE_MULTI entry (`VFIO_USER_MULTI_DATA`).
pub const WRITE_MULTI_DATA: usize = 8;

/// REGION_WRITE_MULTI request body head; `wr_cnt` [`WriteOne`] entries follow. The reply
/// body is the same struct carrying the number of writes completed.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct WriteMulti {
    pub wr_cnt: u64,
}

/// One write of REGION_WRITE_MULTI (QEMU `VFIOUserWROne`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct WriteOne {
    pub offset: u64,
    pub region: u32,
    pub count: u32,
    pub data: [u8; WRITE_MULTI_DATA],
}

// ---------------------------------------------------------------------------------------------
// DEVICE_FEATURE (16) / MIG_DATA_READ (17) / MIG_DATA_WRITE (18)

/// DEVICE_FEATURE body (`vfio_device_feature` without data).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct DeviceFeature {
    pub argsz: u32,
    pub flags: u32,
}

/// MIG_DATA_READ/MIG_DATA_WRITE body; data follows.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct MigData {
    pub argsz: u32,
    pub size: u32,
}

// Compile-time layout checks against the spec / QEMU's protocol.h.
const _: () = {
    use std::mem::size_of;
    assert!(size_of::<Header>() == HEADER_SIZE);
    assert!(size_of::<Command>() == 2);
    assert!(size_of::<Version>() == 4);
    assert!(size_of::<DmaMap>() == 32);
    assert!(size_of::<DmaUnmap>() == 24);
    assert!(size_of::<DmaBitmap>() == 16);
    assert!(size_of::<DeviceInfo>() == 16);
    assert!(size_of::<RegionInfo>() == 32);
    assert!(size_of::<CapHeader>() == 8);
    assert!(size_of::<SparseMmapCap>() == 16);
    assert!(size_of::<SparseMmapArea>() == 16);
    assert!(size_of::<RegionIoFds>() == 16);
    assert!(size_of::<SubRegionIoFd>() == 40);
    assert!(size_of::<IrqInfo>() == 16);
    assert!(size_of::<IrqSet>() == 20);
    assert!(size_of::<RegionAccess>() == 16);
    assert!(size_of::<QemuDmaAccess>() == 12);
    assert!(HEADER_SIZE + size_of::<QemuDmaAccess>() == LEGACY_DMA_DATA_OFFSET);
    assert!(size_of::<SpecDmaAccess>() == 16);
    assert!(HEADER_SIZE + size_of::<SpecDmaAccess>() == DMA_MSG_OVERHEAD);
    assert!(size_of::<WriteMulti>() == 8);
    assert!(size_of::<WriteOne>() == 24);
    assert!(size_of::<DeviceFeature>() == 8);
    assert!(size_of::<MigData>() == 8);
};

/// Why a message body did not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("message body is {got} bytes, {command} needs at least {need}")]
    TooShort {
        command: Command,
        got: usize,
        need: usize,
    },
    #[error("message body is {got} bytes, {command} needs exactly {need}")]
    WrongSize {
        command: Command,
        got: usize,
        need: usize,
    },
    #[error("{command} announces {count} items but carries {data} bytes of them")]
    CountMismatch {
        command: Command,
        count: u64,
        data: usize,
    },
}

impl BodyError {
    /// The errno a server answers with.
    pub fn errno(&self) -> nix::errno::Errno {
        nix::errno::Errno::EINVAL
    }
}

/// Read a fixed struct from the front of `body`; the rest is returned as a tail.
pub fn split_body<T: FromBytes + KnownLayout + Immutable>(
    command: Command,
    body: &[u8],
) -> Result<(T, &[u8]), BodyError> {
    T::read_from_prefix(body).map_err(|_| BodyError::TooShort {
        command,
        got: body.len(),
        need: std::mem::size_of::<T>(),
    })
}

/// Read a fixed struct that must be the whole of `body`.
pub fn exact_body<T: FromBytes + KnownLayout + Immutable>(
    command: Command,
    body: &[u8],
) -> Result<T, BodyError> {
    T::read_from_bytes(body).map_err(|_| BodyError::WrongSize {
        command,
        got: body.len(),
        need: std::mem::size_of::<T>(),
    })
}

/// A client-to-server (or, for DMA_READ/DMA_WRITE, server-to-client) command with its body
/// decoded. Slices borrow the message body; nothing is allocated. Size rules: fixed-size
/// bodies must match exactly where the protocol has no trailing data; variable parts are
/// bounded by the body itself (a count larger than the data present is an error).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request<'a> {
    /// Major/minor and the raw JSON bytes (NUL included; see [`crate::negotiate::parse`]).
    Version {
        version: Version,
        json: &'a [u8],
    },
    DmaMap(DmaMap),
    /// Any bytes after the struct (a dirty bitmap request) are in `rest`.
    DmaUnmap {
        unmap: DmaUnmap,
        rest: &'a [u8],
    },
    DeviceGetInfo(DeviceInfo),
    RegionInfo(RegionInfo),
    RegionIoFds(RegionIoFds),
    IrqInfo(IrqInfo),
    /// `data` is the DATA_BOOL payload (or empty).
    SetIrqs {
        set: IrqSet,
        data: &'a [u8],
    },
    RegionRead(RegionAccess),
    /// `data.len() == access.count` is guaranteed.
    RegionWrite {
        access: RegionAccess,
        data: &'a [u8],
    },
    /// Spec layout (what QEMU 11.1.3 speaks); see [`SpecDmaAccess`].
    DmaRead(SpecDmaAccess),
    /// QEMU layout; `data.len() == access.count` is guaranteed.
    DmaWrite {
        access: SpecDmaAccess,
        data: &'a [u8],
    },
    DeviceReset,
    /// `wr_cnt` entries, `wr_cnt <= WRITE_MULTI_MAX`, each `count <= 8`.
    RegionWriteMulti(WriteMultiEntries<'a>),
    DeviceFeature {
        feature: DeviceFeature,
        data: &'a [u8],
    },
    MigDataRead(MigData),
    MigDataWrite {
        mig: MigData,
        data: &'a [u8],
    },
    DirtyPages(&'a [u8]),
    Unknown {
        command: Command,
        body: &'a [u8],
    },
}

/// The entries of a REGION_WRITE_MULTI body (validated; iterate with [`Self::iter`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteMultiEntries<'a> {
    raw: &'a [u8],
}

impl<'a> WriteMultiEntries<'a> {
    pub fn len(&self) -> usize {
        self.raw.len() / std::mem::size_of::<WriteOne>()
    }
    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }
    pub fn iter(&self) -> impl Iterator<Item = WriteOne> + 'a {
        self.raw
            .chunks_exact(std::mem::size_of::<WriteOne>())
            .filter_map(|c| WriteOne::read_from_bytes(c).ok())
    }
}

impl<'a> Request<'a> {
    /// Decode the body of a `command` message.
    pub fn parse(command: Command, body: &'a [u8]) -> Result<Self, BodyError> {
        let c = command;
        Ok(match command {
            Command::VERSION => {
                let (version, json) = split_body(c, body)?;
                Self::Version { version, json }
            }
            Command::DMA_MAP => Self::DmaMap(exact_body(c, body)?),
            Command::DMA_UNMAP => {
                let (unmap, rest) = split_body(c, body)?;
                Self::DmaUnmap { unmap, rest }
            }
            // Newer clients may send larger structs (kernel vfio_device_info grew cap_offset);
            // QEMU sends argsz-sized buffers for some requests: tolerate trailing bytes.
            Command::DEVICE_GET_INFO => Self::DeviceGetInfo(split_body(c, body)?.0),
            Command::DEVICE_GET_REGION_INFO => Self::RegionInfo(split_body(c, body)?.0),
            Command::DEVICE_GET_REGION_IO_FDS => Self::RegionIoFds(split_body(c, body)?.0),
            Command::DEVICE_GET_IRQ_INFO => Self::IrqInfo(split_body(c, body)?.0),
            Command::DEVICE_SET_IRQS => {
                let (set, data) = split_body(c, body)?;
                Self::SetIrqs { set, data }
            }
            Command::REGION_READ => Self::RegionRead(exact_body(c, body)?),
            Command::REGION_WRITE => {
                let (access, data): (RegionAccess, _) = split_body(c, body)?;
                if data.len() != access.count as usize {
                    return Err(BodyError::CountMismatch {
                        command: c,
                        count: u64::from(access.count),
                        data: data.len(),
                    });
                }
                Self::RegionWrite { access, data }
            }
            Command::DMA_READ => {
                let (access, _pad) = split_body(c, body)?;
                Self::DmaRead(access)
            }
            Command::DMA_WRITE => {
                let (access, rest): (SpecDmaAccess, _) = split_body(c, body)?;
                let count = access.count;
                let data = usize::try_from(count)
                    .ok()
                    .and_then(|n| rest.get(..n))
                    .ok_or(BodyError::CountMismatch {
                        command: c,
                        count,
                        data: rest.len(),
                    })?;
                Self::DmaWrite { access, data }
            }
            Command::DEVICE_RESET => {
                if !body.is_empty() {
                    return Err(BodyError::WrongSize {
                        command: c,
                        got: body.len(),
                        need: 0,
                    });
                }
                Self::DeviceReset
            }
            Command::REGION_WRITE_MULTI => {
                let (head, raw): (WriteMulti, _) = split_body(c, body)?;
                let one = std::mem::size_of::<WriteOne>();
                let fits = usize::try_from(head.wr_cnt)
                    .ok()
                    .and_then(|n| n.checked_mul(one))
                    == Some(raw.len());
                if head.wr_cnt > WRITE_MULTI_MAX || !fits {
                    return Err(BodyError::CountMismatch {
                        command: c,
                        count: head.wr_cnt,
                        data: raw.len(),
                    });
                }
                let entries = WriteMultiEntries { raw };
                if entries.iter().any(|w| w.count as usize > WRITE_MULTI_DATA) {
                    return Err(BodyError::CountMismatch {
                        command: c,
                        count: head.wr_cnt,
                        data: raw.len(),
                    });
                }
                Self::RegionWriteMulti(entries)
            }
            Command::DEVICE_FEATURE => {
                let (feature, data) = split_body(c, body)?;
                Self::DeviceFeature { feature, data }
            }
            Command::MIG_DATA_READ => Self::MigDataRead(split_body(c, body)?.0),
            Command::MIG_DATA_WRITE => {
                let (mig, data) = split_body(c, body)?;
                Self::MigDataWrite { mig, data }
            }
            Command::DIRTY_PAGES => Self::DirtyPages(body),
            command => Self::Unknown { command, body },
        })
    }
}

/// Serialize a header followed by body parts into one buffer, fixing up `header.size`.
pub fn encode(mut header: Header, parts: &[&[u8]]) -> Vec<u8> {
    let len = HEADER_SIZE + parts.iter().map(|p| p.len()).sum::<usize>();
    header.size = u32::try_from(len).unwrap_or(u32::MAX);
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(header.as_bytes());
    for p in parts {
        out.extend_from_slice(p);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_layout_matches_spec_offsets() {
        let h = Header {
            msg_id: 0x0102,
            command: 0x0304,
            size: 0x05060708,
            flags: 0x090a0b0c,
            error: 0x0d0e0f10,
        };
        let b = h.as_bytes();
        assert_eq!(&b[0..2], &0x0102u16.to_ne_bytes());
        assert_eq!(&b[2..4], &0x0304u16.to_ne_bytes());
        assert_eq!(&b[4..8], &0x05060708u32.to_ne_bytes());
        assert_eq!(&b[8..12], &0x090a0b0cu32.to_ne_bytes());
        assert_eq!(&b[12..16], &0x0d0e0f10u32.to_ne_bytes());
        assert_eq!(Header::parse(b), Some(h));
    }

    #[test]
    fn unknown_command_parses_as_open_code() {
        let h = Header::command(1, Command(0x7777), 16);
        let parsed = Header::parse(h.as_bytes()).expect("16 bytes parse");
        assert_eq!(parsed.cmd(), Command(0x7777));
        assert_eq!(parsed.cmd().name(), None);
        assert_eq!(format!("{:?}", parsed.cmd()), "Command(30583)");
        assert_eq!(
            format!("{:?}", Command::REGION_WRITE_MULTI),
            "REGION_WRITE_MULTI"
        );
    }

    #[test]
    fn command_codes_match_spec_table() {
        assert_eq!(Command::VERSION.0, 1);
        assert_eq!(Command::DEVICE_RESET.0, 13);
        assert_eq!(Command::REGION_WRITE_MULTI.0, 15);
        assert_eq!(Command::DEVICE_FEATURE.0, 16);
        assert_eq!(Command::MIG_DATA_WRITE.0, 18);
    }

    #[test]
    fn error_reply_sets_reply_and_error_flags() {
        let h = Header::command(7, Command::REGION_READ, 32);
        let e = h.error_reply_to(nix::libc::EINVAL);
        assert_eq!(e.message_type(), MessageType::Reply);
        assert!(e.is_error());
        assert_eq!(e.error, nix::libc::EINVAL as u32);
        assert_eq!(e.size, 16);
        assert_eq!(e.msg_id, 7);
    }

    #[test]
    fn short_header_size_has_no_payload_len() {
        let h = Header {
            size: 15,
            ..Default::default()
        };
        assert_eq!(h.payload_len(), None);
        assert_eq!(
            Header {
                size: 16,
                ..Default::default()
            }
            .payload_len(),
            Some(0)
        );
    }

    #[test]
    fn spec_dma_layout_puts_data_at_32_and_legacy_at_28() {
        let w = DmaRwLayout::Spec.write_request(1, 0x1000, &[1, 2, 3, 4]);
        assert_eq!(w.len(), DMA_MSG_OVERHEAD + 4);
        assert_eq!(&w[24..32], &4u64.to_ne_bytes(), "64-bit count");
        assert_eq!(&w[32..36], &[1, 2, 3, 4]);
        let l = DmaRwLayout::Legacy32.write_request(1, 0x1000, &[1, 2, 3, 4]);
        assert_eq!(
            l.len(),
            DMA_MSG_OVERHEAD + 4,
            "legacy also sized 32 + count"
        );
        assert_eq!(&l[24..28], &4u32.to_ne_bytes());
        assert_eq!(&l[28..32], &[1, 2, 3, 4]);
        for layout in [DmaRwLayout::Spec, DmaRwLayout::Legacy32] {
            let msg = layout.write_request(1, 0x1000, b"abc");
            let rw = layout.parse(&msg[HEADER_SIZE..], true).expect("parses");
            assert_eq!((rw.iova, rw.count, rw.data), (0x1000, 3, &b"abc"[..]));
            let req = layout.read_request(2, 0x2000, 5);
            assert_eq!(req.len(), DMA_MSG_OVERHEAD);
            let h = Header::parse(&req).expect("header");
            let reply = layout.read_reply(&h, 0x2000, b"hello");
            assert_eq!(
                layout.read_reply_data(&reply[HEADER_SIZE..], 5),
                Some(&b"hello"[..])
            );
        }
    }

    #[test]
    fn region_write_count_must_match_data() {
        let acc = RegionAccess {
            offset: 0,
            region: 0,
            count: 4,
        };
        let mut b = acc.as_bytes().to_vec();
        b.extend_from_slice(&[1, 2, 3]);
        assert!(matches!(
            Request::parse(Command::REGION_WRITE, &b),
            Err(BodyError::CountMismatch { .. })
        ));
        b.push(4);
        assert!(matches!(
            Request::parse(Command::REGION_WRITE, &b),
            Ok(Request::RegionWrite {
                data: [1, 2, 3, 4],
                ..
            })
        ));
    }

    #[test]
    fn write_multi_count_is_bounded_by_body_and_max() {
        let mut b = WriteMulti { wr_cnt: 1 }.as_bytes().to_vec();
        b.extend_from_slice(
            WriteOne {
                offset: 8,
                region: 0,
                count: 4,
                data: [0; 8],
            }
            .as_bytes(),
        );
        match Request::parse(Command::REGION_WRITE_MULTI, &b) {
            Ok(Request::RegionWriteMulti(e)) => assert_eq!(e.iter().count(), 1),
            other => panic!("unexpected {other:?}"),
        }
        let huge = WriteMulti { wr_cnt: u64::MAX }.as_bytes().to_vec();
        assert!(Request::parse(Command::REGION_WRITE_MULTI, &huge).is_err());
        let too_many = WriteMulti {
            wr_cnt: WRITE_MULTI_MAX + 1,
        }
        .as_bytes()
        .to_vec();
        assert!(Request::parse(Command::REGION_WRITE_MULTI, &too_many).is_err());
    }

    #[test]
    fn unknown_command_body_is_kept_raw() {
        assert_eq!(
            Request::parse(Command(99), b"xyz"),
            Ok(Request::Unknown {
                command: Command(99),
                body: b"xyz"
            })
        );
    }

    #[test]
    fn exact_body_rejects_trailing_bytes() {
        assert!(exact_body::<DeviceInfo>(Command::DEVICE_GET_INFO, &[0; 17]).is_err());
        assert!(exact_body::<DeviceInfo>(Command::DEVICE_GET_INFO, &[0; 15]).is_err());
        assert!(exact_body::<DeviceInfo>(Command::DEVICE_GET_INFO, &[0; 16]).is_ok());
    }
}
