//! An async vfio-user client, for tests, tools and health checks.
//!
//! One request at a time (`&mut self`); while it waits for a reply it also answers the
//! server's DMA_READ/DMA_WRITE requests for windows mapped without an fd (from memory the
//! client keeps, see [`Client::dma_map_memory`]), in QEMU's layout. [`Client::send_raw`] and
//! [`Client::recv_raw`] bypass all checks so tests can send malformed frames.

use std::collections::BTreeMap;
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::Path;

use nix::errno::Errno;
use tokio::net::UnixStream;
use zerocopy::{FromBytes, IntoBytes};

use crate::dispatch::MSG_OVERHEAD;
use crate::negotiate::{self, Caps, PeerCaps, VersionError};
use crate::transport::{self, Limits, Message, Received, TransportError};
use crate::wire::{self, Command, DmaMapFlags, DmaUnmapFlags, Header, IrqSetFlags, MessageType};

/// Client errors.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect")]
    Connect(#[source] io::Error),
    #[error("transport failed")]
    Transport(#[from] TransportError),
    #[error("socket I/O failed")]
    Io(#[from] io::Error),
    #[error("server closed the connection")]
    Closed,
    #[error("server answered with errno {0}")]
    Errno(Errno),
    #[error("version negotiation failed")]
    Version(#[from] VersionError),
    #[error("malformed reply to {command}: {what}")]
    BadReply {
        command: Command,
        what: &'static str,
    },
}

impl ClientError {
    /// The errno of an error reply, if this is one.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            Self::Errno(e) => Some(*e),
            _ => None,
        }
    }
}

/// A reply: header, body and any descriptors that came with it.
#[derive(Debug)]
pub struct Reply {
    pub header: Header,
    pub body: Vec<u8>,
    pub fds: Vec<OwnedFd>,
}

/// REGION_INFO result with its capability chain decoded.
#[derive(Debug)]
pub struct RegionInfoReply {
    pub info: wire::RegionInfo,
    /// Sparse mmap areas (empty if the capability is absent).
    pub sparse: Vec<wire::SparseMmapArea>,
    /// The file to mmap the region from, if the server sent one.
    pub fd: Option<OwnedFd>,
}

/// A vfio-user client connection.
#[derive(Debug)]
pub struct Client {
    stream: UnixStream,
    cmsg: Vec<u8>,
    next_id: u16,
    /// What the server announced in VERSION.
    server: PeerCaps,
    ours: Caps,
    /// Windows mapped without an fd: served to the server's DMA_READ/DMA_WRITE from here.
    memory: BTreeMap<u64, (Vec<u8>, DmaMapFlags)>,
    dma_layout: wire::DmaRwLayout,
}

impl Client {
    /// Connect and negotiate version 0.0 with QEMU-like capabilities.
    pub async fn connect(path: impl AsRef<Path>) -> Result<Self, ClientError> {
        let mut c = Self::connect_raw(path).await?;
        let json = negotiate::proposal_json(&c.ours);
        c.negotiate(0, 0, Some(&json)).await?;
        Ok(c)
    }

    /// Connect without negotiating (for tests of VERSION itself and of malformed input).
    pub async fn connect_raw(path: impl AsRef<Path>) -> Result<Self, ClientError> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(ClientError::Connect)?;
        Ok(Self::from_stream(stream))
    }

    /// Wrap a connected stream (not negotiated).
    pub fn from_stream(stream: UnixStream) -> Self {
        Self {
            stream,
            cmsg: crate::sys::cmsg_buffer(),
            next_id: 0,
            server: PeerCaps::default(),
            ours: Caps::default(),
            memory: BTreeMap::new(),
            dma_layout: wire::DmaRwLayout::default(),
        }
    }

    /// Send VERSION with `major.minor` and optional JSON; returns the parsed reply.
    pub async fn negotiate(
        &mut self,
        major: u16,
        minor: u16,
        json: Option<&str>,
    ) -> Result<negotiate::VersionMsg, ClientError> {
        let mut b = wire::Version { major, minor }.as_bytes().to_vec();
        if let Some(j) = json {
            b.extend_from_slice(j.as_bytes());
            b.push(0);
        }
        let reply = self.request(Command::VERSION, &[&b], &[]).await?;
        let v = negotiate::parse(&reply.body)?;
        negotiate::check_reply(&v, minor)?;
        self.server = v.caps;
        Ok(v)
    }

    /// Expect DMA_READ/DMA_WRITE from the server in `layout` (default: spec, like QEMU 11.1.3).
    pub fn set_dma_layout(&mut self, layout: wire::DmaRwLayout) {
        self.dma_layout = layout;
    }

    /// Capabilities the server announced.
    pub fn server_caps(&self) -> PeerCaps {
        self.server
    }

    fn limits(&self) -> Limits {
        Limits {
            max_msg_size: (self
                .server
                .max_data_xfer_size
                .max(self.ours.max_data_xfer_size) as usize)
                .saturating_add(MSG_OVERHEAD),
            max_fds: self.ours.max_msg_fds as usize,
        }
    }

    fn alloc_id(&mut self) -> u16 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        id
    }

    /// Send raw bytes (any content, even a broken header) with optional descriptors.
    pub async fn send_raw(
        &mut self,
        bytes: &[u8],
        fds: &[BorrowedFd<'_>],
    ) -> Result<(), ClientError> {
        transport::send(&self.stream, bytes, fds).await?;
        Ok(())
    }

    /// Receive the next message as-is (no routing, no DMA serving). `Ok(None)` = closed.
    pub async fn recv_raw(&mut self) -> Result<Option<Message>, ClientError> {
        let limits = self.limits();
        match transport::recv(&self.stream, &mut self.cmsg, limits).await? {
            Received::Message(m) => Ok(Some(m)),
            Received::Rejected { header, errno } => {
                tracing::debug!(msg_id = header.msg_id, errno = %errno, "oversized message from server dropped");
                Err(ClientError::BadReply {
                    command: header.cmd(),
                    what: "oversized",
                })
            }
            Received::Closed => Ok(None),
        }
    }

    /// Send a command built from `parts` and wait for its reply; an error reply becomes
    /// [`ClientError::Errno`].
    pub async fn request(
        &mut self,
        cmd: Command,
        parts: &[&[u8]],
        fds: &[BorrowedFd<'_>],
    ) -> Result<Reply, ClientError> {
        let id = self.alloc_id();
        let bytes = wire::encode(Header::command(id, cmd, 0), parts);
        self.send_raw(&bytes, fds).await?;
        self.wait_reply(id).await
    }

    /// Send a command with the no_reply flag (posted); nothing is awaited.
    pub async fn post(&mut self, cmd: Command, parts: &[&[u8]]) -> Result<(), ClientError> {
        let id = self.alloc_id();
        let mut h = Header::command(id, cmd, 0);
        h.flags |= wire::HeaderFlags::NO_REPLY.bits();
        let bytes = wire::encode(h, parts);
        self.send_raw(&bytes, &[]).await
    }

    /// Wait for the reply with message id `id`, serving server DMA requests meanwhile.
    pub async fn wait_reply(&mut self, id: u16) -> Result<Reply, ClientError> {
        loop {
            let msg = self.recv_raw().await?.ok_or(ClientError::Closed)?;
            match msg.header.message_type() {
                MessageType::Command => self.serve_request(msg).await?,
                MessageType::Reply if msg.header.msg_id == id => {
                    if msg.header.is_error() {
                        return Err(ClientError::Errno(Errno::from_raw(msg.header.error as i32)));
                    }
                    return Ok(Reply {
                        header: msg.header,
                        body: msg.body,
                        fds: msg.fds,
                    });
                }
                _ => tracing::debug!(msg_id = msg.header.msg_id, "ignoring unrelated message"),
            }
        }
    }

    /// Wait for one server-initiated request (DMA_READ/DMA_WRITE) and answer it.
    pub async fn serve_one_request(&mut self) -> Result<Command, ClientError> {
        loop {
            let msg = self.recv_raw().await?.ok_or(ClientError::Closed)?;
            if msg.header.message_type() == MessageType::Command {
                let cmd = msg.header.cmd();
                self.serve_request(msg).await?;
                return Ok(cmd);
            }
        }
    }

    /// Answer a DMA_READ/DMA_WRITE like QEMU does (in the configured layout).
    async fn serve_request(&mut self, msg: Message) -> Result<(), ClientError> {
        let h = msg.header;
        let layout = self.dma_layout;
        let write = h.cmd() == Command::DMA_WRITE;
        let result: Result<Vec<u8>, Errno> = (|| {
            if h.cmd() != Command::DMA_READ && !write {
                return Err(Errno::ENOSYS);
            }
            let rw = layout.parse(&msg.body, write).ok_or(Errno::EINVAL)?;
            let count = usize::try_from(rw.count).map_err(|_| Errno::E2BIG)?;
            if count > self.ours.max_data_xfer_size as usize {
                return Err(Errno::E2BIG);
            }
            let (base, (mem, flags)) = self
                .memory
                .range_mut(..=rw.iova)
                .next_back()
                .ok_or(Errno::EFAULT)?;
            let off = usize::try_from(rw.iova - base).map_err(|_| Errno::EFAULT)?;
            let end = off.checked_add(count).ok_or(Errno::EFAULT)?;
            if end > mem.len() {
                return Err(Errno::EFAULT);
            }
            if write {
                if !flags.contains(DmaMapFlags::WRITE) {
                    return Err(Errno::EPERM);
                }
                mem[off..end].copy_from_slice(rw.data);
                Ok(wire::encode(h.reply_to(0), &[]))
            } else {
                if !flags.contains(DmaMapFlags::READ) {
                    return Err(Errno::EPERM);
                }
                Ok(layout.read_reply(&h, rw.iova, &mem[off..end]))
            }
        })();
        if h.no_reply() {
            return Ok(());
        }
        let bytes = match result {
            Ok(b) => b,
            Err(e) => h.error_reply_to(e as i32).as_bytes().to_vec(),
        };
        self.send_raw(&bytes, &[]).await
    }

    fn body<T: FromBytes + zerocopy::KnownLayout + zerocopy::Immutable>(
        cmd: Command,
        r: &Reply,
    ) -> Result<T, ClientError> {
        T::read_from_prefix(&r.body)
            .map(|(t, _)| t)
            .map_err(|_| ClientError::BadReply {
                command: cmd,
                what: "short body",
            })
    }

    /// DEVICE_GET_INFO.
    pub async fn device_info(&mut self) -> Result<wire::DeviceInfo, ClientError> {
        let req = wire::DeviceInfo {
            argsz: 16,
            ..Default::default()
        };
        let r = self
            .request(Command::DEVICE_GET_INFO, &[req.as_bytes()], &[])
            .await?;
        Self::body(Command::DEVICE_GET_INFO, &r)
    }

    /// DEVICE_GET_REGION_INFO with an explicit `argsz` (raw; no retry).
    pub async fn region_info_argsz(
        &mut self,
        index: u32,
        argsz: u32,
    ) -> Result<Reply, ClientError> {
        let req = wire::RegionInfo {
            argsz,
            index,
            ..Default::default()
        };
        self.request(Command::DEVICE_GET_REGION_INFO, &[req.as_bytes()], &[])
            .await
    }

    /// DEVICE_GET_REGION_INFO the way QEMU does it: argsz 32 first, again with the size the
    /// server asks for; decodes the sparse-mmap capability.
    pub async fn region_info(&mut self, index: u32) -> Result<RegionInfoReply, ClientError> {
        const CMD: Command = Command::DEVICE_GET_REGION_INFO;
        let mut argsz = std::mem::size_of::<wire::RegionInfo>() as u32;
        for _ in 0..2 {
            let mut r = self.region_info_argsz(index, argsz).await?;
            let info: wire::RegionInfo = Self::body(CMD, &r)?;
            if info.argsz > argsz {
                argsz = info.argsz;
                continue;
            }
            let mut sparse = Vec::new();
            if info.flags & crate::device::RegionFlags::CAPS.bits() != 0 {
                let mut at = info.cap_offset as usize;
                let mut hops = 0;
                while at != 0 && hops < 16 {
                    let cap = r.body.get(at..).ok_or(ClientError::BadReply {
                        command: CMD,
                        what: "cap_offset",
                    })?;
                    let (h, _) = wire::SparseMmapCap::read_from_prefix(cap).map_err(|_| {
                        ClientError::BadReply {
                            command: CMD,
                            what: "cap",
                        }
                    })?;
                    if h.header.id == wire::REGION_INFO_CAP_SPARSE_MMAP {
                        let areas = cap.get(16..).ok_or(ClientError::BadReply {
                            command: CMD,
                            what: "areas",
                        })?;
                        for i in 0..h.nr_areas as usize {
                            let a =
                                areas
                                    .get(i * 16..i * 16 + 16)
                                    .ok_or(ClientError::BadReply {
                                        command: CMD,
                                        what: "areas",
                                    })?;
                            sparse.push(wire::SparseMmapArea::read_from_bytes(a).map_err(
                                |_| ClientError::BadReply {
                                    command: CMD,
                                    what: "area",
                                },
                            )?);
                        }
                    }
                    at = h.header.next as usize;
                    hops += 1;
                }
            }
            return Ok(RegionInfoReply {
                info,
                sparse,
                fd: r.fds.pop(),
            });
        }
        Err(ClientError::BadReply {
            command: CMD,
            what: "argsz keeps growing",
        })
    }

    /// DEVICE_GET_IRQ_INFO.
    pub async fn irq_info(&mut self, index: u32) -> Result<wire::IrqInfo, ClientError> {
        let req = wire::IrqInfo {
            argsz: 16,
            index,
            ..Default::default()
        };
        let r = self
            .request(Command::DEVICE_GET_IRQ_INFO, &[req.as_bytes()], &[])
            .await?;
        Self::body(Command::DEVICE_GET_IRQ_INFO, &r)
    }

    /// REGION_READ of `count` bytes.
    pub async fn region_read(
        &mut self,
        region: u32,
        offset: u64,
        count: u32,
    ) -> Result<Vec<u8>, ClientError> {
        let req = wire::RegionAccess {
            offset,
            region,
            count,
        };
        let r = self
            .request(Command::REGION_READ, &[req.as_bytes()], &[])
            .await?;
        let data = r.body.get(16..).ok_or(ClientError::BadReply {
            command: Command::REGION_READ,
            what: "short body",
        })?;
        if data.len() != count as usize {
            return Err(ClientError::BadReply {
                command: Command::REGION_READ,
                what: "wrong data length",
            });
        }
        Ok(data.to_vec())
    }

    /// REGION_READ of a little-endian u32.
    pub async fn read_u32(&mut self, region: u32, offset: u64) -> Result<u32, ClientError> {
        let d = self.region_read(region, offset, 4).await?;
        Ok(u32::from_le_bytes([d[0], d[1], d[2], d[3]]))
    }

    /// REGION_WRITE, waiting for the reply.
    pub async fn region_write(
        &mut self,
        region: u32,
        offset: u64,
        data: &[u8],
    ) -> Result<(), ClientError> {
        let req = wire::RegionAccess {
            offset,
            region,
            count: data.len() as u32,
        };
        self.request(Command::REGION_WRITE, &[req.as_bytes(), data], &[])
            .await?;
        Ok(())
    }

    /// REGION_WRITE posted (no_reply), as QEMU writes BARs.
    pub async fn region_write_posted(
        &mut self,
        region: u32,
        offset: u64,
        data: &[u8],
    ) -> Result<(), ClientError> {
        let req = wire::RegionAccess {
            offset,
            region,
            count: data.len() as u32,
        };
        self.post(Command::REGION_WRITE, &[req.as_bytes(), data])
            .await
    }

    /// REGION_WRITE_MULTI of up to 200 writes of at most 8 bytes each; returns wr_cnt.
    pub async fn region_write_multi(
        &mut self,
        writes: &[(u32, u64, &[u8])],
    ) -> Result<u64, ClientError> {
        let mut parts = wire::WriteMulti {
            wr_cnt: writes.len() as u64,
        }
        .as_bytes()
        .to_vec();
        for (region, offset, data) in writes {
            let mut w = wire::WriteOne {
                offset: *offset,
                region: *region,
                count: data.len() as u32,
                data: [0; 8],
            };
            let n = data.len().min(8);
            w.data[..n].copy_from_slice(&data[..n]);
            parts.extend_from_slice(w.as_bytes());
        }
        let r = self
            .request(Command::REGION_WRITE_MULTI, &[&parts], &[])
            .await?;
        Ok(Self::body::<wire::WriteMulti>(Command::REGION_WRITE_MULTI, &r)?.wr_cnt)
    }

    /// DMA_MAP backed by `fd` at `offset` (the server mmaps it).
    pub async fn dma_map(
        &mut self,
        iova: u64,
        size: u64,
        flags: DmaMapFlags,
        fd: BorrowedFd<'_>,
        offset: u64,
    ) -> Result<(), ClientError> {
        let req = wire::DmaMap {
            argsz: 32,
            flags: flags.bits(),
            offset,
            iova,
            size,
        };
        self.request(Command::DMA_MAP, &[req.as_bytes()], &[fd])
            .await?;
        Ok(())
    }

    /// DMA_MAP without an fd: the server reaches this window with DMA_READ/DMA_WRITE, which
    /// this client serves from a zeroed buffer it keeps (see [`Self::dma_memory`]).
    pub async fn dma_map_memory(
        &mut self,
        iova: u64,
        size: u64,
        flags: DmaMapFlags,
    ) -> Result<(), ClientError> {
        let len = usize::try_from(size).map_err(|_| ClientError::Errno(Errno::EINVAL))?;
        let req = wire::DmaMap {
            argsz: 32,
            flags: flags.bits(),
            offset: 0,
            iova,
            size,
        };
        self.request(Command::DMA_MAP, &[req.as_bytes()], &[])
            .await?;
        self.memory.insert(iova, (vec![0; len], flags));
        Ok(())
    }

    /// The client-side buffer of a [`Self::dma_map_memory`] window starting at `iova`.
    pub fn dma_memory(&mut self, iova: u64) -> Option<&mut Vec<u8>> {
        self.memory.get_mut(&iova).map(|(m, _)| m)
    }

    /// DMA_UNMAP of `[iova, iova+size)`.
    pub async fn dma_unmap(&mut self, iova: u64, size: u64) -> Result<(), ClientError> {
        let req = wire::DmaUnmap {
            argsz: 24,
            flags: 0,
            iova,
            size,
        };
        self.request(Command::DMA_UNMAP, &[req.as_bytes()], &[])
            .await?;
        self.memory
            .retain(|&k, (m, _)| !(k >= iova && k + m.len() as u64 <= iova.saturating_add(size)));
        Ok(())
    }

    /// DMA_UNMAP with VFIO_DMA_UNMAP_FLAG_ALL.
    pub async fn dma_unmap_all(&mut self) -> Result<(), ClientError> {
        let req = wire::DmaUnmap {
            argsz: 24,
            flags: DmaUnmapFlags::ALL.bits(),
            iova: 0,
            size: 0,
        };
        self.request(Command::DMA_UNMAP, &[req.as_bytes()], &[])
            .await?;
        self.memory.clear();
        Ok(())
    }

    /// DEVICE_SET_IRQS with ACTION_TRIGGER|DATA_EVENTFD for vectors `start..start+fds.len()`
    /// (an empty `fds` with `count` clears them).
    pub async fn set_irq_eventfds(
        &mut self,
        index: u32,
        start: u32,
        count: u32,
        fds: &[BorrowedFd<'_>],
    ) -> Result<(), ClientError> {
        let flags = (IrqSetFlags::ACTION_TRIGGER | IrqSetFlags::DATA_EVENTFD).bits();
        let req = wire::IrqSet {
            argsz: 20,
            flags,
            index,
            start,
            count,
        };
        self.request(Command::DEVICE_SET_IRQS, &[req.as_bytes()], fds)
            .await?;
        Ok(())
    }

    /// DEVICE_SET_IRQS with any flags and an optional DATA_BOOL payload.
    pub async fn set_irqs(
        &mut self,
        index: u32,
        flags: IrqSetFlags,
        start: u32,
        count: u32,
        bools: &[u8],
    ) -> Result<(), ClientError> {
        let req = wire::IrqSet {
            argsz: 20 + bools.len() as u32,
            flags: flags.bits(),
            index,
            start,
            count,
        };
        self.request(Command::DEVICE_SET_IRQS, &[req.as_bytes(), bools], &[])
            .await?;
        Ok(())
    }

    /// DEVICE_RESET.
    pub async fn reset(&mut self) -> Result<(), ClientError> {
        self.request(Command::DEVICE_RESET, &[], &[]).await?;
        Ok(())
    }
}
