//! The DMA table: client memory the device may read and write.
//!
//! DMA_MAP with a file descriptor is mmapped (shared, with the protection its flags ask for)
//! and served by plain bounds-checked copies. DMA_MAP without a descriptor records the window
//! only; accesses to it become DMA_READ/DMA_WRITE messages to the client, in the layout the
//! server is configured for (default: the spec layout QEMU 11.1.3 speaks, see
//! [`crate::wire::DmaRwLayout`]), and are only possible from async code
//! ([`DmaHandle::read_async`] / [`DmaHandle::write_async`]).

use std::collections::{BTreeMap, HashMap};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use nix::errno::Errno;
use tokio::sync::oneshot;

use crate::sys::MappedFile;
use crate::transport::{Message, Writer};
use crate::wire::{DmaMapFlags, DmaRwLayout};

/// A DMA window as the device sees it (for [`crate::Device::dma_mapped`] notifications).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DmaMapping {
    /// I/O virtual address (guest physical address for QEMU without a vIOMMU).
    pub iova: u64,
    pub size: u64,
    pub readable: bool,
    pub writable: bool,
    /// Backed by a file descriptor mapped into this process (fast path); otherwise accesses
    /// are DMA_READ/DMA_WRITE messages.
    pub mapped: bool,
}

/// Why a DMA access failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DmaError {
    #[error("no DMA mapping covers {len} bytes at iova {iova:#x}")]
    Unmapped { iova: u64, len: usize },
    #[error("the DMA mapping at iova {iova:#x} does not allow this access direction")]
    Permission { iova: u64 },
    #[error("iova {iova:#x} is only reachable through DMA messages; use the async API")]
    NeedsMessage { iova: u64 },
    #[error("no client is connected")]
    NotConnected,
    #[error("the client answered the DMA message with errno {0}")]
    Client(Errno),
    #[error("the DMA message could not be sent or answered")]
    Transport,
}

impl DmaError {
    /// The errno to report to a client when a device access fails because of this.
    pub fn errno(&self) -> Errno {
        match self {
            Self::Unmapped { .. } => Errno::EFAULT,
            Self::Permission { .. } => Errno::EPERM,
            Self::NeedsMessage { .. } => Errno::EAGAIN,
            Self::NotConnected => Errno::ENOTCONN,
            Self::Client(e) => *e,
            Self::Transport => Errno::EIO,
        }
    }
}

#[derive(Debug)]
enum Backing {
    Mapped(MappedFile),
    Message,
}

#[derive(Debug)]
struct Entry {
    map: DmaMapping,
    backing: Backing,
}

/// The per-connection table of DMA windows, keyed by start IOVA.
#[derive(Debug, Default)]
pub(crate) struct DmaTable {
    entries: BTreeMap<u64, Entry>,
}

impl DmaTable {
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Add a window. `fd` (with `offset` into it) makes it mapped.
    pub(crate) fn map(
        &mut self,
        iova: u64,
        size: u64,
        flags: DmaMapFlags,
        fd: Option<(OwnedFd, u64)>,
    ) -> Result<DmaMapping, Errno> {
        let end = iova.checked_add(size).ok_or(Errno::EINVAL)?;
        if size == 0 || flags.is_empty() {
            return Err(Errno::EINVAL);
        }
        // Overlap with the entry before (it could extend into us) or any entry starting inside.
        if let Some((_, e)) = self.entries.range(..end).next_back() {
            if e.map.iova + e.map.size > iova {
                return Err(Errno::EEXIST);
            }
        }
        let readable = flags.contains(DmaMapFlags::READ);
        let writable = flags.contains(DmaMapFlags::WRITE);
        let backing = match fd {
            Some((fd, offset)) => Backing::Mapped(
                MappedFile::map(&fd, offset, size, readable, writable)
                    .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(nix::libc::EINVAL)))?,
            ),
            None => Backing::Message,
        };
        let map = DmaMapping {
            iova,
            size,
            readable,
            writable,
            mapped: matches!(backing, Backing::Mapped(_)),
        };
        self.entries.insert(iova, Entry { map, backing });
        Ok(map)
    }

    /// Remove every window inside `[iova, iova+size)`. A window only partly inside is an error
    /// (as in VFIO type1) and nothing is removed.
    pub(crate) fn unmap(&mut self, iova: u64, size: u64) -> Result<Vec<DmaMapping>, Errno> {
        let end = iova.checked_add(size).ok_or(Errno::EINVAL)?;
        if let Some((_, e)) = self.entries.range(..iova).next_back() {
            if e.map.iova + e.map.size > iova {
                return Err(Errno::EINVAL);
            }
        }
        let keys: Vec<u64> = self.entries.range(iova..end).map(|(k, _)| *k).collect();
        for k in &keys {
            let e = &self.entries[k];
            if e.map.iova + e.map.size > end {
                return Err(Errno::EINVAL);
            }
        }
        if keys.is_empty() {
            return Err(Errno::ENOENT);
        }
        Ok(keys
            .iter()
            .filter_map(|k| self.entries.remove(k))
            .map(|e| e.map)
            .collect())
    }

    pub(crate) fn clear(&mut self) -> Vec<DmaMapping> {
        std::mem::take(&mut self.entries)
            .into_values()
            .map(|e| e.map)
            .collect()
    }

    /// Find the window containing `iova`, with bytes available from there to its end.
    fn find(&self, iova: u64) -> Option<(&Entry, u64)> {
        let (_, e) = self.entries.range(..=iova).next_back()?;
        let off = iova - e.map.iova;
        (off < e.map.size).then_some((e, off))
    }
}

/// The link from a connection's DMA table back to its client, for message-based DMA.
#[derive(Debug)]
pub(crate) struct PeerLink {
    pub(crate) writer: Arc<Writer>,
    pub(crate) pending: Mutex<HashMap<u16, oneshot::Sender<Message>>>,
    next_id: AtomicU16,
    /// Largest `count` the client accepts per DMA message.
    pub(crate) peer_max_xfer: usize,
    layout: DmaRwLayout,
}

impl PeerLink {
    pub(crate) fn new(writer: Arc<Writer>, peer_max_xfer: usize, layout: DmaRwLayout) -> Self {
        Self {
            writer,
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU16::new(0x8000),
            peer_max_xfer,
            layout,
        }
    }

    /// Route a reply from the client to whoever waits for it. Unknown ids are dropped.
    pub(crate) fn complete(&self, msg: Message) {
        let tx = self
            .pending
            .lock()
            .ok()
            .and_then(|mut p| p.remove(&msg.header.msg_id));
        match tx {
            Some(tx) => {
                let _ = tx.send(msg);
            }
            None => tracing::debug!(
                msg_id = msg.header.msg_id,
                "reply to no outstanding request; dropped"
            ),
        }
    }

    async fn request(&self, bytes: Vec<u8>, id: u16) -> Result<Message, DmaError> {
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .map_err(|_| DmaError::Transport)?
            .insert(id, tx);
        if self.writer.send(&bytes, &[]).await.is_err() {
            if let Ok(mut p) = self.pending.lock() {
                p.remove(&id);
            }
            return Err(DmaError::Transport);
        }
        let reply = rx.await.map_err(|_| DmaError::Transport)?;
        if reply.header.is_error() {
            return Err(DmaError::Client(Errno::from_raw(reply.header.error as i32)));
        }
        Ok(reply)
    }

    fn next_id(&self) -> u16 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    async fn dma_read(&self, iova: u64, buf: &mut [u8]) -> Result<(), DmaError> {
        let chunk = self.peer_max_xfer.max(1);
        for (i, part) in buf.chunks_mut(chunk).enumerate() {
            let at = iova + (i * chunk) as u64;
            let id = self.next_id();
            let bytes = self.layout.read_request(id, at, part.len() as u32);
            let reply = self.request(bytes, id).await?;
            let data = self
                .layout
                .read_reply_data(&reply.body, part.len())
                .ok_or(DmaError::Transport)?;
            part.copy_from_slice(data);
        }
        Ok(())
    }

    async fn dma_write(&self, iova: u64, buf: &[u8]) -> Result<(), DmaError> {
        let chunk = self.peer_max_xfer.max(1);
        for (i, part) in buf.chunks(chunk).enumerate() {
            let at = iova + (i * chunk) as u64;
            let id = self.next_id();
            let bytes = self.layout.write_request(id, at, part);
            self.request(bytes, id).await?;
        }
        Ok(())
    }
}

#[derive(Debug, Default)]
pub(crate) struct DmaShared {
    pub(crate) table: RwLock<DmaTable>,
    pub(crate) link: Mutex<Option<Arc<PeerLink>>>,
}

/// The device's access to client memory. Cheap to clone; stays valid across client
/// reconnects (it sees whatever the current client has mapped).
#[derive(Debug, Clone, Default)]
pub struct DmaHandle {
    pub(crate) shared: Arc<DmaShared>,
}

enum Step {
    Done,
    Message { iova: u64, len: usize },
}

impl DmaHandle {
    /// A handle with no client (every access fails with [`DmaError::Unmapped`]); the server
    /// creates the real one.
    pub fn detached() -> Self {
        Self::default()
    }

    /// Current windows.
    pub fn mappings(&self) -> Vec<DmaMapping> {
        self.shared
            .table
            .read()
            .map(|t| t.entries.values().map(|e| e.map).collect())
            .unwrap_or_default()
    }

    /// Copy guest memory at `iova` into `buf`. Synchronous: only windows mapped from an fd;
    /// a message-based window gives [`DmaError::NeedsMessage`]. May span adjacent windows.
    pub fn read(&self, iova: u64, buf: &mut [u8]) -> Result<(), DmaError> {
        match self.read_mapped(iova, buf)? {
            Step::Done => Ok(()),
            Step::Message { iova, .. } => Err(DmaError::NeedsMessage { iova }),
        }
    }

    /// Copy `buf` to guest memory at `iova`. Synchronous, as [`Self::read`].
    pub fn write(&self, iova: u64, buf: &[u8]) -> Result<(), DmaError> {
        match self.write_mapped(iova, buf)? {
            Step::Done => Ok(()),
            Step::Message { iova, .. } => Err(DmaError::NeedsMessage { iova }),
        }
    }

    /// Like [`Self::read`], falling back to DMA_READ messages for windows without an fd.
    /// Call it from a task, never from inside a [`crate::Device`] method (the connection
    /// loop that would receive the client's reply is the one calling the device).
    pub async fn read_async(&self, mut iova: u64, buf: &mut [u8]) -> Result<(), DmaError> {
        let mut done = 0;
        while done < buf.len() {
            match self.read_mapped(iova, &mut buf[done..])? {
                Step::Done => return Ok(()),
                Step::Message { iova: at, len } => {
                    let skipped = (at - iova) as usize;
                    let start = done + skipped;
                    let link = self.link()?;
                    link.dma_read(at, &mut buf[start..start + len]).await?;
                    done = start + len;
                    iova = at + len as u64;
                }
            }
        }
        Ok(())
    }

    /// Like [`Self::write`], falling back to DMA_WRITE messages. Same caveat as
    /// [`Self::read_async`].
    pub async fn write_async(&self, mut iova: u64, buf: &[u8]) -> Result<(), DmaError> {
        let mut done = 0;
        while done < buf.len() {
            match self.write_mapped(iova, &buf[done..])? {
                Step::Done => return Ok(()),
                Step::Message { iova: at, len } => {
                    let skipped = (at - iova) as usize;
                    let start = done + skipped;
                    let link = self.link()?;
                    link.dma_write(at, &buf[start..start + len]).await?;
                    done = start + len;
                    iova = at + len as u64;
                }
            }
        }
        Ok(())
    }

    fn link(&self) -> Result<Arc<PeerLink>, DmaError> {
        self.shared
            .link
            .lock()
            .ok()
            .and_then(|l| l.clone())
            .ok_or(DmaError::NotConnected)
    }

    /// Walk windows from `iova`, copying through mapped ones; stop at the first message-based
    /// one and report how many bytes of it are needed.
    fn walk(
        &self,
        iova: u64,
        len: usize,
        write: bool,
        mut copy: impl FnMut(&MappedFile, usize, usize, usize) -> std::io::Result<()>,
    ) -> Result<Step, DmaError> {
        let table = self.shared.table.read().map_err(|_| DmaError::Transport)?;
        let mut done = 0usize;
        while done < len {
            let at = iova
                .checked_add(done as u64)
                .ok_or(DmaError::Unmapped { iova, len })?;
            let (e, off) = table.find(at).ok_or(DmaError::Unmapped {
                iova: at,
                len: len - done,
            })?;
            let avail = usize::try_from(e.map.size - off).unwrap_or(usize::MAX);
            let n = avail.min(len - done);
            let allowed = if write {
                e.map.writable
            } else {
                e.map.readable
            };
            if !allowed {
                return Err(DmaError::Permission { iova: at });
            }
            match &e.backing {
                Backing::Mapped(m) => {
                    let off = usize::try_from(off)
                        .map_err(|_| DmaError::Unmapped { iova: at, len: n })?;
                    copy(m, off, done, n).map_err(|_| DmaError::Unmapped { iova: at, len: n })?;
                }
                Backing::Message => return Ok(Step::Message { iova: at, len: n }),
            }
            done += n;
        }
        Ok(Step::Done)
    }

    fn read_mapped(&self, iova: u64, buf: &mut [u8]) -> Result<Step, DmaError> {
        let len = buf.len();
        self.walk(iova, len, false, |m, off, done, n| {
            m.read(off, &mut buf[done..done + n])
        })
    }

    fn write_mapped(&self, iova: u64, buf: &[u8]) -> Result<Step, DmaError> {
        self.walk(iova, buf.len(), true, |m, off, done, n| {
            m.write(off, &buf[done..done + n])
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::memfd::{memfd_create, MemFdCreateFlag};

    fn memfd(len: i64) -> OwnedFd {
        let fd = memfd_create(c"dma", MemFdCreateFlag::MFD_CLOEXEC).expect("memfd");
        nix::unistd::ftruncate(&fd, len).expect("ftruncate");
        fd
    }

    #[test]
    fn overlapping_maps_are_refused_with_eexist() {
        let mut t = DmaTable::default();
        t.map(0x1000, 0x2000, DmaMapFlags::READ, None).expect("map");
        assert_eq!(
            t.map(0x2000, 0x1000, DmaMapFlags::READ, None),
            Err(Errno::EEXIST)
        );
        assert_eq!(
            t.map(0x0, 0x1001, DmaMapFlags::READ, None),
            Err(Errno::EEXIST)
        );
        assert!(t.map(0x3000, 0x1000, DmaMapFlags::READ, None).is_ok());
        assert_eq!(
            t.map(u64::MAX, 2, DmaMapFlags::READ, None),
            Err(Errno::EINVAL)
        );
        assert_eq!(
            t.map(0x9000, 0, DmaMapFlags::READ, None),
            Err(Errno::EINVAL)
        );
    }

    #[test]
    fn unmap_removes_whole_windows_and_refuses_partial_ones() {
        let mut t = DmaTable::default();
        t.map(0x1000, 0x1000, DmaMapFlags::READ, None).expect("map");
        t.map(0x2000, 0x1000, DmaMapFlags::READ, None).expect("map");
        assert_eq!(t.unmap(0x1800, 0x1000), Err(Errno::EINVAL));
        assert_eq!(t.unmap(0x1000, 0x1800), Err(Errno::EINVAL));
        assert_eq!(t.unmap(0x8000, 0x1000), Err(Errno::ENOENT));
        assert_eq!(t.unmap(0x1000, 0x2000).expect("unmap").len(), 2);
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn mapped_dma_is_bounds_and_permission_checked() {
        let h = DmaHandle::detached();
        {
            let mut t = h.shared.table.write().expect("lock");
            t.map(
                0x10000,
                0x1000,
                DmaMapFlags::READ | DmaMapFlags::WRITE,
                Some((memfd(0x2000), 0x1000)),
            )
            .expect("map");
            t.map(0x11000, 0x1000, DmaMapFlags::READ, Some((memfd(0x1000), 0)))
                .expect("map");
            t.map(0x20000, 0x1000, DmaMapFlags::READ, None)
                .expect("map");
        }
        h.write(0x10ffc, &[1, 2, 3, 4]).expect("write");
        let mut b = [0u8; 8];
        h.read(0x10ffc, &mut b).expect("read spans two windows");
        assert_eq!(&b[..4], &[1, 2, 3, 4]);
        assert_eq!(
            h.write(0x11000, &[1]),
            Err(DmaError::Permission { iova: 0x11000 })
        );
        assert!(matches!(
            h.read(0x11ffc, &mut b),
            Err(DmaError::Unmapped { .. })
        ));
        assert!(matches!(
            h.read(0x5000, &mut b),
            Err(DmaError::Unmapped { .. })
        ));
        assert_eq!(
            h.read(0x20000, &mut b),
            Err(DmaError::NeedsMessage { iova: 0x20000 })
        );
        assert_eq!(h.mappings().len(), 3);
    }
}
