//! Message framing over a tokio [`UnixStream`], with SCM_RIGHTS fd passing.
//!
//! Receiving reads the 16-byte header first and validates `size` before allocating anything
//! for the body: a size below the header is fatal (the stream cannot be trusted any more), a
//! size above the negotiated limit is drained in fixed-size chunks and reported as
//! [`Received::Rejected`] so the caller can answer `E2BIG` and go on. Descriptors arriving with
//! any part of a message become [`OwnedFd`]s attached to it; more than `max_fds` of them are
//! closed at once and the message is rejected with `EINVAL`.

use std::io::{self, IoSlice};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use tokio::io::Interest;
use tokio::net::UnixStream;

use crate::sys;
use crate::wire::{Header, HEADER_SIZE};

/// A received message: header, body (everything after the header) and descriptors.
#[derive(Debug)]
pub struct Message {
    pub header: Header,
    pub body: Vec<u8>,
    pub fds: Vec<OwnedFd>,
}

/// Receive limits, from the negotiated capabilities.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest whole message (header included) we accept.
    pub max_msg_size: usize,
    /// Most descriptors we accept with one message.
    pub max_fds: usize,
}

/// Outcome of one receive.
#[derive(Debug)]
pub enum Received {
    Message(Message),
    /// The message was read (or drained) and its fds closed; answer with `errno`.
    Rejected {
        header: Header,
        errno: nix::errno::Errno,
    },
    /// The peer closed the connection at a message boundary.
    Closed,
}

/// Framing errors after which the connection must be closed.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("socket I/O failed")]
    Io(#[from] io::Error),
    #[error("peer closed the connection in the middle of a message ({got} of {want} bytes)")]
    Truncated { got: usize, want: usize },
    #[error("header announces {0} bytes, less than the 16-byte header")]
    BadHeaderSize(u32),
}

/// Read until `buf` is full or EOF; returns bytes read.
async fn read_full(
    stream: &UnixStream,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
    cmsg: &mut Vec<u8>,
) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        let n = stream
            .async_io(Interest::READABLE, || {
                sys::recv_with_fds(stream.as_fd(), &mut buf[got..], fds, cmsg)
            })
            .await?;
        if n == 0 {
            break;
        }
        got += n;
    }
    Ok(got)
}

/// Receive one message. Not cancel-safe: dropping the future mid-message loses stream sync,
/// so only drop it when closing the connection anyway.
pub async fn recv(
    stream: &UnixStream,
    cmsg: &mut Vec<u8>,
    limits: Limits,
) -> Result<Received, TransportError> {
    let mut fds = Vec::new();
    let mut hbuf = [0u8; HEADER_SIZE];
    let got = read_full(stream, &mut hbuf, &mut fds, cmsg).await?;
    if got == 0 {
        return Ok(Received::Closed);
    }
    if got < HEADER_SIZE {
        return Err(TransportError::Truncated {
            got,
            want: HEADER_SIZE,
        });
    }
    let Some(header) = Header::parse(&hbuf) else {
        return Err(TransportError::Truncated {
            got,
            want: HEADER_SIZE,
        });
    };
    let Some(body_len) = header.payload_len() else {
        return Err(TransportError::BadHeaderSize(header.size));
    };
    if header.size as usize > limits.max_msg_size {
        drain(stream, body_len, &mut fds, cmsg).await?;
        return Ok(Received::Rejected {
            header,
            errno: nix::errno::Errno::E2BIG,
        });
    }
    let mut body = vec![0u8; body_len];
    let got = read_full(stream, &mut body, &mut fds, cmsg).await?;
    if got < body_len {
        return Err(TransportError::Truncated {
            got: HEADER_SIZE + got,
            want: header.size as usize,
        });
    }
    if fds.len() > limits.max_fds {
        tracing::debug!(
            fds = fds.len(),
            max = limits.max_fds,
            "closing descriptors beyond max_msg_fds"
        );
        drop(fds);
        return Ok(Received::Rejected {
            header,
            errno: nix::errno::Errno::EINVAL,
        });
    }
    Ok(Received::Message(Message { header, body, fds }))
}

async fn drain(
    stream: &UnixStream,
    mut left: usize,
    fds: &mut Vec<OwnedFd>,
    cmsg: &mut Vec<u8>,
) -> Result<(), TransportError> {
    let total = left;
    let mut scratch = vec![0u8; left.min(64 * 1024)];
    while left > 0 {
        let want = left.min(scratch.len());
        let got = read_full(stream, &mut scratch[..want], fds, cmsg).await?;
        fds.clear();
        if got < want {
            return Err(TransportError::Truncated {
                got: total - left + got,
                want: total,
            });
        }
        left -= want;
    }
    Ok(())
}

/// Write all of `bytes`, attaching `fds` to the first chunk.
pub async fn send(stream: &UnixStream, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    let mut sent = 0;
    let mut first = true;
    while sent < bytes.len() || first {
        let chunk = &bytes[sent..];
        let attach: &[BorrowedFd<'_>] = if first { fds } else { &[] };
        let n = stream
            .async_io(Interest::WRITABLE, || {
                sys::send_with_fds(stream.as_fd(), &[IoSlice::new(chunk)], attach)
            })
            .await?;
        if n == 0 && !chunk.is_empty() {
            return Err(io::Error::from(io::ErrorKind::WriteZero));
        }
        sent += n;
        first = false;
    }
    Ok(())
}

/// A shareable, serialized writer for one connection (replies from the dispatch loop and
/// server-initiated DMA requests from device tasks go through it).
#[derive(Debug)]
pub struct Writer {
    stream: Arc<UnixStream>,
    lock: tokio::sync::Mutex<()>,
}

impl Writer {
    pub fn new(stream: Arc<UnixStream>) -> Self {
        Self {
            stream,
            lock: tokio::sync::Mutex::new(()),
        }
    }
    /// Send one whole message; concurrent senders are serialized so messages never interleave.
    pub async fn send(&self, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        let _g = self.lock.lock().await;
        send(&self.stream, bytes, fds).await
    }
}
