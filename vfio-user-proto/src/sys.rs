//! The crate's only `unsafe`: adopting file descriptors received with SCM_RIGHTS, and mapping
//! client memory (DMA_MAP with an fd) into this process.
//!
//! Everything here is synchronous and non-blocking; [`crate::transport`] wraps the socket calls
//! in tokio readiness.
#![allow(
    unsafe_code,
    reason = "adopting received fds (OwnedFd::from_raw_fd), mmap/munmap of client memory and copies in and out of it"
)]

use std::io::{self, IoSlice, IoSliceMut};
use std::num::NonZeroUsize;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;

use nix::sys::mman::{mmap, munmap, MapFlags, ProtFlags};
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags, UnixAddr};

/// The kernel's per-message fd limit (`SCM_MAX_FD`). The control buffer is sized for it so
/// the kernel never truncates (a truncated SCM_RIGHTS would leave fds we cannot see).
pub const SCM_MAX_FD: usize = 253;

/// A control-message buffer large enough for [`SCM_MAX_FD`] descriptors.
pub fn cmsg_buffer() -> Vec<u8> {
    nix::cmsg_space!([RawFd; SCM_MAX_FD])
}

/// One non-blocking `recvmsg` into `buf`. Received descriptors (opened close-on-exec) are
/// appended to `fds` as [`OwnedFd`]s, so they are closed whenever the caller drops them.
/// Returns the byte count (0 = the peer closed).
pub fn recv_with_fds(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
    cmsg: &mut Vec<u8>,
) -> io::Result<usize> {
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<UnixAddr>(
        sock.as_raw_fd(),
        &mut iov,
        Some(cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT,
    )
    .map_err(io::Error::from)?;
    let n = msg.bytes;
    // With a buffer for SCM_MAX_FD descriptors the kernel cannot truncate SCM_RIGHTS; if it
    // did anyway (another control message type) nix refuses to iterate and we fail the
    // connection.
    let cmsgs = msg
        .cmsgs()
        .map_err(|_| io::Error::other("control message truncated"))?;
    for c in cmsgs {
        if let ControlMessageOwned::ScmRights(raw) = c {
            for fd in raw {
                // SAFETY: the kernel just installed `fd` in our table for this message
                // (SCM_RIGHTS) and nothing else knows about it; we take sole ownership.
                fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    Ok(n)
}

/// One non-blocking `sendmsg` of `iov`, attaching `fds` (if any) with SCM_RIGHTS.
/// Returns the number of bytes written (may be short).
pub fn send_with_fds(
    sock: BorrowedFd<'_>,
    iov: &[IoSlice<'_>],
    fds: &[BorrowedFd<'_>],
) -> io::Result<usize> {
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let cmsgs = [ControlMessage::ScmRights(&raw)];
    let cmsgs: &[ControlMessage<'_>] = if raw.is_empty() { &[] } else { &cmsgs };
    sendmsg::<UnixAddr>(
        sock.as_raw_fd(),
        iov,
        cmsgs,
        MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
        None,
    )
    .map_err(io::Error::from)
}

/// A shared mapping of (part of) a file a client sent with DMA_MAP.
#[derive(Debug)]
pub struct MappedFile {
    ptr: NonNull<u8>,
    /// Bytes mapped starting at `ptr` (includes `lead`).
    map_len: usize,
    /// Bytes between `ptr` and the first byte the user asked for (page alignment).
    lead: usize,
    /// Bytes the user asked for.
    len: usize,
    readable: bool,
    writable: bool,
}

// SAFETY: the mapping is plain shared memory owned by this value; all access goes through
// bounds-checked copies in `read`/`write`, which are fine from any thread.
unsafe impl Send for MappedFile {}
// SAFETY: as above; `&self` methods only copy bytes in or out of the mapping.
unsafe impl Sync for MappedFile {}

impl MappedFile {
    /// Map `len` bytes of `fd` starting at `offset` (any alignment), shared, with the given
    /// protection.
    pub fn map(
        fd: impl AsFd,
        offset: u64,
        len: u64,
        readable: bool,
        writable: bool,
    ) -> io::Result<Self> {
        let page = page_size();
        let lead = usize::try_from(offset % page as u64).map_err(|_| einval())?;
        let aligned = offset - lead as u64;
        let len = usize::try_from(len).map_err(|_| einval())?;
        let map_len = len.checked_add(lead).ok_or_else(einval)?;
        let nz = NonZeroUsize::new(map_len).ok_or_else(einval)?;
        let off = i64::try_from(aligned).map_err(|_| einval())?;
        let mut prot = ProtFlags::empty();
        if readable {
            prot |= ProtFlags::PROT_READ;
        }
        if writable {
            prot |= ProtFlags::PROT_WRITE;
        }
        // SAFETY: we ask the kernel for a fresh mapping at an address of its choosing, so no
        // existing Rust object is aliased; `fd` is valid for the call.
        let ptr = unsafe { mmap(None, nz, prot, MapFlags::MAP_SHARED, fd, off) }
            .map_err(io::Error::from)?;
        Ok(Self {
            ptr: ptr.cast(),
            map_len,
            lead,
            len,
            readable,
            writable,
        })
    }

    fn check(&self, offset: usize, n: usize) -> io::Result<usize> {
        let end = offset.checked_add(n).ok_or_else(efault)?;
        if end > self.len {
            return Err(efault());
        }
        Ok(self.lead + offset)
    }

    /// Copy `buf.len()` bytes from `offset` into `buf`.
    pub fn read(&self, offset: usize, buf: &mut [u8]) -> io::Result<()> {
        if !self.readable {
            return Err(io::Error::from(io::ErrorKind::PermissionDenied));
        }
        let at = self.check(offset, buf.len())?;
        // SAFETY: `at + buf.len() <= map_len` was checked, the mapping lives as long as
        // `self`, and `buf` cannot overlap it (it is a Rust allocation we did not create via
        // this mapping). The client may write concurrently; bytes are copied as-is, as any
        // DMA engine would see them.
        unsafe {
            std::ptr::copy_nonoverlapping(self.ptr.as_ptr().add(at), buf.as_mut_ptr(), buf.len())
        };
        Ok(())
    }

    /// Copy `buf` to `offset`.
    pub fn write(&self, offset: usize, buf: &[u8]) -> io::Result<()> {
        if !self.writable {
            return Err(io::Error::from(io::ErrorKind::PermissionDenied));
        }
        let at = self.check(offset, buf.len())?;
        // SAFETY: bounds checked as in `read`; the mapping is writable (PROT_WRITE) and is
        // never handed out as a Rust reference, so no `&[u8]` aliases the destination.
        unsafe {
            std::ptr::copy_nonoverlapping(buf.as_ptr(), self.ptr.as_ptr().add(at), buf.len())
        };
        Ok(())
    }
}

impl Drop for MappedFile {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`map_len` are exactly what mmap returned and nothing refers to the
        // mapping after `self` is gone.
        if let Err(e) = unsafe { munmap(self.ptr.cast(), self.map_len) } {
            tracing::warn!(error = %e, "munmap of DMA region failed");
        }
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf only reads a configuration value; it has no memory-safety preconditions.
    let v = unsafe { nix::libc::sysconf(nix::libc::_SC_PAGESIZE) };
    usize::try_from(v).ok().filter(|&p| p > 0).unwrap_or(4096)
}

fn einval() -> io::Error {
    io::Error::from_raw_os_error(nix::libc::EINVAL)
}
fn efault() -> io::Error {
    io::Error::from_raw_os_error(nix::libc::EFAULT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::memfd::{memfd_create, MemFdCreateFlag};

    fn memfd(len: i64) -> OwnedFd {
        let fd = memfd_create(c"t", MemFdCreateFlag::MFD_CLOEXEC).expect("memfd");
        nix::unistd::ftruncate(&fd, len).expect("ftruncate");
        fd
    }

    #[test]
    fn mapped_file_reads_back_writes_at_unaligned_offset() {
        let fd = memfd(3 * 4096);
        let m = MappedFile::map(&fd, 4096 + 100, 200, true, true).expect("map");
        m.write(10, b"hello").expect("write");
        let mut b = [0u8; 5];
        m.read(10, &mut b).expect("read");
        assert_eq!(&b, b"hello");
        // Visible through a second mapping of the file at the absolute offset.
        let whole = MappedFile::map(&fd, 0, 3 * 4096, true, false).expect("map");
        whole.read(4096 + 110, &mut b).expect("read");
        assert_eq!(&b, b"hello");
    }

    #[test]
    fn mapped_file_rejects_out_of_bounds_and_wrong_protection() {
        let fd = memfd(4096);
        let m = MappedFile::map(&fd, 0, 4096, true, false).expect("map");
        let mut b = [0u8; 8];
        assert!(m.read(4090, &mut b).is_err());
        assert!(m.read(usize::MAX, &mut b).is_err());
        assert!(m.write(0, &b).is_err());
        assert!(m.read(4088, &mut b).is_ok());
    }
}
