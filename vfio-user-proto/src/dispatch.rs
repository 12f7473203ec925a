//! Request dispatch: one parsed client command in, at most one reply out. No socket I/O, so
//! the same code runs under the server, the fuzzer and unit tests.
//!
//! Every body is validated (sizes, argsz, counts with checked arithmetic, region bounds from
//! the device's REGION_INFO) before the device is called; anything wrong becomes an errno
//! reply. Commands flagged `no_reply` never get a reply, not even an error one.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use nix::errno::Errno;
use zerocopy::IntoBytes;

use crate::device::{Device, DeviceContext, RegionFlags};
use crate::dma::DmaHandle;
use crate::irq::{IrqHandle, IrqTable};
use crate::negotiate::{self, Caps, PeerCaps};
use crate::transport::{Limits, Message};
use crate::wire::{self, Command, DmaMapFlags, DmaUnmapFlags, Header, HEADER_SIZE};

/// Bytes a message may carry beyond `max_data_xfer_size` (header, fixed structs, a full
/// REGION_WRITE_MULTI of 200 entries, VERSION JSON).
pub const MSG_OVERHEAD: usize = 8192;

/// What to send back for one command.
#[derive(Debug)]
pub enum Response {
    /// Nothing (no_reply set).
    None,
    /// A reply message, possibly with one descriptor (REGION_INFO's mmap fd).
    Reply {
        bytes: Vec<u8>,
        fd: Option<Arc<OwnedFd>>,
    },
}

impl Response {
    /// The reply bytes, if any.
    pub fn bytes(&self) -> Option<&[u8]> {
        match self {
            Self::None => None,
            Self::Reply { bytes, .. } => Some(bytes),
        }
    }
}

/// Per-connection protocol state.
#[derive(Debug, Default)]
pub struct ConnState {
    /// Peer capabilities, once VERSION succeeded.
    pub peer: Option<PeerCaps>,
    regions: HashMap<u32, (RegionFlags, u64)>,
}

/// A device plus the server-side state the protocol needs (DMA table, IRQ table, caps).
#[derive(Debug)]
pub struct Core<D: Device> {
    pub(crate) device: D,
    pub(crate) caps: Caps,
    pub(crate) dma: DmaHandle,
    pub(crate) irqs: IrqHandle,
    /// Layout of DMA_READ/DMA_WRITE messages sent to clients.
    pub(crate) dma_layout: wire::DmaRwLayout,
}

type Body = Result<(Vec<u8>, Option<Arc<OwnedFd>>), Errno>;

fn body(b: impl Into<Vec<u8>>) -> Body {
    Ok((b.into(), None))
}

impl<D: Device> Core<D> {
    /// Wrap `device`, size the IRQ table from its info, and hand it its [`DeviceContext`].
    pub fn new(mut device: D, caps: Caps) -> Self {
        let info = device.device_info();
        let counts: Vec<u32> = (0..info.num_irqs.min(crate::irq::MAX_INDICES))
            .map(|i| device.irq_info(i).map(|x| x.count).unwrap_or(0))
            .collect();
        let irqs = IrqHandle {
            table: Arc::new(std::sync::Mutex::new(IrqTable::new(&counts))),
        };
        let dma = DmaHandle::detached();
        device.attach(DeviceContext {
            dma: dma.clone(),
            irqs: irqs.clone(),
        });
        Self {
            device,
            caps,
            dma,
            irqs,
            dma_layout: wire::DmaRwLayout::default(),
        }
    }

    pub fn device(&self) -> &D {
        &self.device
    }
    pub fn device_mut(&mut self) -> &mut D {
        &mut self.device
    }

    /// Receive limits for a connection.
    pub fn limits(&self) -> Limits {
        Limits {
            max_msg_size: (self.caps.max_data_xfer_size as usize).saturating_add(MSG_OVERHEAD),
            max_fds: self.caps.max_msg_fds as usize,
        }
    }

    /// Forget everything a client set up (DMA windows, eventfds) and tell the device.
    pub fn disconnect(&mut self, conn: &mut ConnState) {
        if let Ok(mut t) = self.dma.shared.table.write() {
            t.clear();
        }
        let link = self.dma.shared.link.lock().ok().and_then(|mut l| l.take());
        if let Some(link) = link {
            // Wake every task waiting for a DMA reply that will never come.
            if let Ok(mut p) = link.pending.lock() {
                p.clear();
            }
        }
        self.irqs
            .table
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .reset();
        if conn.peer.take().is_some() {
            self.device.disconnected();
        }
    }

    /// Handle one command message (type must be "command"; replies are routed elsewhere).
    pub fn handle(&mut self, conn: &mut ConnState, msg: Message) -> Response {
        let Message { header, body, fds } = msg;
        let cmd = header.cmd();
        let result = if conn.peer.is_none() && cmd != Command::VERSION {
            Err(Errno::EINVAL)
        } else {
            self.command(conn, &header, &body, fds)
        };
        if header.no_reply() {
            if let Err(e) = result {
                tracing::debug!(command = %cmd, errno = %e, "posted command failed (no reply requested)");
            }
            return Response::None;
        }
        match result {
            Ok((b, fd)) => Response::Reply {
                bytes: wire::encode(header.reply_to(0), &[&b]),
                fd,
            },
            Err(e) => {
                tracing::debug!(command = %cmd, errno = %e, "error reply");
                Response::Reply {
                    bytes: header.error_reply_to(e as i32).as_bytes().to_vec(),
                    fd: None,
                }
            }
        }
    }

    fn command(
        &mut self,
        conn: &mut ConnState,
        header: &Header,
        b: &[u8],
        fds: Vec<OwnedFd>,
    ) -> Body {
        let cmd = header.cmd();
        // Only DMA_MAP and SET_IRQS take descriptors; anywhere else they are closed here.
        if !fds.is_empty() && cmd != Command::DMA_MAP && cmd != Command::DEVICE_SET_IRQS {
            tracing::debug!(command = %cmd, fds = fds.len(), "closing unexpected descriptors");
            return Err(Errno::EINVAL);
        }
        use wire::Request as R;
        match R::parse(cmd, b).map_err(|e| e.errno())? {
            R::Version { .. } => self.version(conn, b),
            R::DmaMap(m) => self.dma_map(m, fds),
            R::DmaUnmap { unmap, .. } => self.dma_unmap(unmap),
            R::DeviceGetInfo(req) => self.device_info(req),
            R::RegionInfo(req) => self.region_info(req),
            R::RegionIoFds(req) => self.region_io_fds(req),
            R::IrqInfo(req) => self.irq_info(req),
            R::SetIrqs { set, data } => self.set_irqs(set, data, fds),
            R::RegionRead(req) => self.region_read(conn, req),
            R::RegionWrite { access, data } => self.region_write(conn, access, data),
            R::RegionWriteMulti(entries) => self.write_multi(conn, entries),
            R::DeviceReset => {
                self.device.reset()?;
                body([])
            }
            R::DeviceFeature { .. }
            | R::MigDataRead(_)
            | R::MigDataWrite { .. }
            | R::DirtyPages(_) => Err(Errno::ENOTSUP),
            // DMA_READ/DMA_WRITE go server -> client; as commands from a client they are bogus.
            R::DmaRead(_) | R::DmaWrite { .. } | R::Unknown { .. } => Err(Errno::ENOSYS),
        }
    }

    fn version(&mut self, conn: &mut ConnState, b: &[u8]) -> Body {
        if conn.peer.is_some() {
            return Err(Errno::EINVAL);
        }
        let req = negotiate::parse(b).map_err(|e| {
            tracing::warn!(error = %e, "bad VERSION");
            Errno::EINVAL
        })?;
        let reply = negotiate::server_reply(&req, &self.caps).map_err(|e| {
            tracing::warn!(error = %e, "refusing VERSION");
            Errno::ENOTSUP
        })?;
        tracing::info!(
            major = req.major,
            minor = req.minor,
            peer_max_fds = req.caps.max_msg_fds,
            peer_max_xfer = req.caps.max_data_xfer_size,
            "negotiated"
        );
        conn.peer = Some(req.caps);
        self.device.connected();
        body(reply)
    }

    fn dma_map(&mut self, m: wire::DmaMap, mut fds: Vec<OwnedFd>) -> Body {
        let flags = DmaMapFlags::from_bits(m.flags).ok_or(Errno::EINVAL)?;
        if fds.len() > 1 {
            return Err(Errno::EINVAL);
        }
        let mut table = self.dma.shared.table.write().map_err(|_| Errno::EIO)?;
        if table.len() >= self.caps.max_dma_maps as usize {
            return Err(Errno::ENOSPC);
        }
        let fd = fds.pop().map(|fd| (fd, m.offset));
        let map = table.map(m.iova, m.size, flags, fd)?;
        drop(table);
        tracing::debug!(
            iova = m.iova,
            size = m.size,
            mapped = map.mapped,
            readable = map.readable,
            writable = map.writable,
            "DMA map"
        );
        self.device.dma_mapped(&map);
        body([])
    }

    fn dma_unmap(&mut self, u: wire::DmaUnmap) -> Body {
        let flags = DmaUnmapFlags::from_bits(u.flags).ok_or(Errno::EINVAL)?;
        if flags.contains(DmaUnmapFlags::GET_DIRTY_BITMAP) {
            return Err(Errno::ENOTSUP);
        }
        let mut table = self.dma.shared.table.write().map_err(|_| Errno::EIO)?;
        let removed = if flags.contains(DmaUnmapFlags::ALL) {
            if u.iova != 0 || u.size != 0 {
                return Err(Errno::EINVAL);
            }
            table.clear()
        } else {
            table.unmap(u.iova, u.size)?
        };
        drop(table);
        tracing::debug!(
            iova = u.iova,
            size = u.size,
            all = flags.contains(DmaUnmapFlags::ALL),
            windows = removed.len(),
            "DMA unmap"
        );
        for m in &removed {
            self.device.dma_unmapped(m);
        }
        let reply = wire::DmaUnmap {
            argsz: std::mem::size_of::<wire::DmaUnmap>() as u32,
            ..u
        };
        body(reply.as_bytes())
    }

    fn device_info(&mut self, req: wire::DeviceInfo) -> Body {
        if (req.argsz as usize) < std::mem::size_of::<wire::DeviceInfo>() {
            return Err(Errno::EINVAL);
        }
        let info = self.device.device_info();
        let reply = wire::DeviceInfo {
            argsz: std::mem::size_of::<wire::DeviceInfo>() as u32,
            flags: info.flags.bits(),
            num_regions: info.num_regions,
            num_irqs: info.num_irqs,
        };
        body(reply.as_bytes())
    }

    fn region_info(&mut self, req: wire::RegionInfo) -> Body {
        const BASE: usize = std::mem::size_of::<wire::RegionInfo>();
        if (req.argsz as usize) < BASE || req.index >= self.device.device_info().num_regions {
            return Err(Errno::EINVAL);
        }
        let info = self.device.region_info(req.index).ok_or(Errno::EINVAL)?;
        let mut flags = info.flags;
        let mut caps = Vec::new();
        let mut file_offset = 0;
        let mut fd = None;
        if let Some(mm) = &info.mmap {
            flags |= RegionFlags::MMAP;
            file_offset = mm.file_offset;
            fd = Some(mm.fd.clone());
            if !mm.areas.is_empty() {
                let cap = wire::SparseMmapCap {
                    header: wire::CapHeader {
                        id: wire::REGION_INFO_CAP_SPARSE_MMAP,
                        version: 1,
                        next: 0,
                    },
                    nr_areas: u32::try_from(mm.areas.len()).map_err(|_| Errno::EINVAL)?,
                    reserved: 0,
                };
                caps.extend_from_slice(cap.as_bytes());
                for a in &mm.areas {
                    caps.extend_from_slice(
                        wire::SparseMmapArea {
                            offset: a.offset,
                            size: a.size,
                        }
                        .as_bytes(),
                    );
                }
            }
        }
        let total = BASE + caps.len();
        let mut reply = wire::RegionInfo {
            argsz: u32::try_from(total).map_err(|_| Errno::EINVAL)?,
            flags: flags.bits(),
            index: req.index,
            cap_offset: 0,
            size: info.size,
            offset: file_offset,
        };
        if (req.argsz as usize) < total {
            // Too small for the capability chain: report the size needed, no caps, no fd.
            // (CAPS stays clear: QEMU rejects CAPS with a cap_offset outside the reply.)
            reply.flags &= !RegionFlags::CAPS.bits();
            return body(reply.as_bytes());
        }
        if !caps.is_empty() {
            reply.flags |= RegionFlags::CAPS.bits();
            reply.cap_offset = BASE as u32;
        }
        let mut out = reply.as_bytes().to_vec();
        out.extend_from_slice(&caps);
        Ok((out, fd))
    }

    fn region_io_fds(&mut self, req: wire::RegionIoFds) -> Body {
        if (req.argsz as usize) < std::mem::size_of::<wire::RegionIoFds>()
            || req.index >= self.device.device_info().num_regions
        {
            return Err(Errno::EINVAL);
        }
        // No ioeventfds/ioregionfds are offered.
        let reply = wire::RegionIoFds {
            argsz: std::mem::size_of::<wire::RegionIoFds>() as u32,
            flags: 0,
            index: req.index,
            count: 0,
        };
        body(reply.as_bytes())
    }

    fn irq_info(&mut self, req: wire::IrqInfo) -> Body {
        if (req.argsz as usize) < std::mem::size_of::<wire::IrqInfo>()
            || req.index >= self.device.device_info().num_irqs
        {
            return Err(Errno::EINVAL);
        }
        let info = self.device.irq_info(req.index).ok_or(Errno::EINVAL)?;
        let reply = wire::IrqInfo {
            argsz: std::mem::size_of::<wire::IrqInfo>() as u32,
            flags: info.flags.bits(),
            index: req.index,
            count: info.count,
        };
        body(reply.as_bytes())
    }

    fn set_irqs(&mut self, req: wire::IrqSet, rest: &[u8], fds: Vec<OwnedFd>) -> Body {
        if (req.argsz as usize) < std::mem::size_of::<wire::IrqSet>()
            || req.index >= self.device.device_info().num_irqs
        {
            return Err(Errno::EINVAL);
        }
        self.irqs
            .table
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .set(req.flags, req.index, req.start, req.count, rest, fds)?;
        tracing::debug!(
            index = req.index,
            start = req.start,
            count = req.count,
            flags = req.flags,
            "SET_IRQS"
        );
        self.device.irqs_changed(req.index);
        body([])
    }

    /// Check an access against the region's size and permissions (cached per connection).
    fn check_access(
        &mut self,
        conn: &mut ConnState,
        region: u32,
        offset: u64,
        count: u64,
        write: bool,
    ) -> Result<(), Errno> {
        if count > u64::from(self.caps.max_data_xfer_size) {
            return Err(Errno::E2BIG);
        }
        let (flags, size) = match conn.regions.get(&region) {
            Some(x) => *x,
            None => {
                if region >= self.device.device_info().num_regions {
                    return Err(Errno::EINVAL);
                }
                let info = self.device.region_info(region).ok_or(Errno::EINVAL)?;
                conn.regions.insert(region, (info.flags, info.size));
                (info.flags, info.size)
            }
        };
        let need = if write {
            RegionFlags::WRITE
        } else {
            RegionFlags::READ
        };
        if !flags.contains(need) {
            return Err(Errno::EINVAL);
        }
        let end = offset.checked_add(count).ok_or(Errno::EINVAL)?;
        if end > size {
            return Err(Errno::EINVAL);
        }
        Ok(())
    }

    fn region_read(&mut self, conn: &mut ConnState, req: wire::RegionAccess) -> Body {
        self.check_access(conn, req.region, req.offset, u64::from(req.count), false)?;
        let head = req.as_bytes();
        let mut out = vec![0u8; head.len() + req.count as usize];
        out[..head.len()].copy_from_slice(head);
        if req.count > 0 {
            self.device
                .region_read(req.region, req.offset, &mut out[head.len()..])?;
        }
        body(out)
    }

    fn region_write(&mut self, conn: &mut ConnState, req: wire::RegionAccess, data: &[u8]) -> Body {
        self.check_access(conn, req.region, req.offset, u64::from(req.count), true)?;
        if req.count > 0 {
            self.device.region_write(req.region, req.offset, data)?;
        }
        body(req.as_bytes())
    }

    fn write_multi(&mut self, conn: &mut ConnState, entries: wire::WriteMultiEntries<'_>) -> Body {
        // The parser bounded wr_cnt and each entry's count (<= 8).
        for w in entries.iter() {
            self.check_access(conn, w.region, w.offset, u64::from(w.count), true)?;
            if w.count > 0 {
                self.device
                    .region_write(w.region, w.offset, &w.data[..w.count as usize])?;
            }
        }
        body(
            wire::WriteMulti {
                wr_cnt: entries.len() as u64,
            }
            .as_bytes(),
        )
    }
}

/// Split a byte stream into frames the way the transport does (header size validated before
/// the body is taken). Returns `None` for the body of an invalid or truncated frame, after
/// which the stream is not trusted any more. Used by the fuzz targets and corpus replay.
pub fn frames(mut data: &[u8], limits: Limits) -> Vec<Result<Message, Header>> {
    let mut out = Vec::new();
    while data.len() >= HEADER_SIZE {
        let Some(header) = Header::parse(data) else {
            break;
        };
        let Some(body_len) = header.payload_len() else {
            break;
        };
        let Some(frame) = data.get(..header.size as usize) else {
            break;
        };
        if header.size as usize > limits.max_msg_size {
            out.push(Err(header));
        } else {
            out.push(Ok(Message {
                header,
                body: frame[HEADER_SIZE..HEADER_SIZE + body_len].to_vec(),
                fds: Vec::new(),
            }));
        }
        data = &data[header.size as usize..];
    }
    out
}

/// Feed a raw byte stream, as a client would send it, through framing and dispatch in memory;
/// returns every reply. Entry point for fuzzing and for corpus replay in `cargo test`.
pub fn dispatch_stream<D: Device>(core: &mut Core<D>, data: &[u8]) -> Vec<Vec<u8>> {
    let mut conn = ConnState::default();
    let mut replies = Vec::new();
    for f in frames(data, core.limits()) {
        match f {
            Ok(msg) => {
                if msg.header.message_type() != wire::MessageType::Command {
                    continue;
                }
                if let Response::Reply { bytes, .. } = core.handle(&mut conn, msg) {
                    replies.push(bytes);
                }
            }
            Err(h) if !h.no_reply() => {
                replies.push(h.error_reply_to(Errno::E2BIG as i32).as_bytes().to_vec())
            }
            Err(_) => {}
        }
    }
    core.disconnect(&mut conn);
    replies
}
