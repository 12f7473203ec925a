//! The vfio-user server: a listening Unix socket, one client at a time.
//!
//! Requests are read and handled strictly in order (pipelining is fine); replies go out in the
//! same order. Replies from the client (to server-initiated DMA_READ/DMA_WRITE) are routed to
//! their waiters. When a client goes away its DMA windows and eventfds are dropped and the
//! next client is accepted. Shutdown (a future you pass, or SIGINT/SIGTERM with
//! [`Server::serve`]) ends the current connection and removes the socket file.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use tracing::Instrument;

use crate::device::Device;
use crate::dispatch::{ConnState, Core, Response};
use crate::dma::PeerLink;
use crate::negotiate::Caps;
use crate::transport::{self, Received, Writer};
use crate::wire::{MessageType, HEADER_SIZE};

/// Server errors (all about the listening socket; client misbehaviour is never an error).
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("socket path {0} is in use by a live server")]
    InUse(PathBuf),
    #[error("socket path {0} exists and is not a socket")]
    NotASocket(PathBuf),
    #[error("cannot listen on {path}")]
    Bind { path: PathBuf, source: io::Error },
    #[error("accept failed")]
    Accept(#[source] io::Error),
    #[error("cannot install signal handlers")]
    Signals(#[source] io::Error),
}

/// Server configuration.
#[derive(Debug, Clone, Copy, Default)]
pub struct ServerConfig {
    /// Capabilities advertised in the VERSION reply (and enforced on receive).
    pub caps: Caps,
    /// DMA_READ/DMA_WRITE layout for message-based DMA (default: spec, as QEMU 11.1.3).
    pub dma_layout: crate::wire::DmaRwLayout,
}

/// A vfio-user server for one device.
#[derive(Debug)]
pub struct Server<D: Device> {
    core: Core<D>,
}

static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

/// Removes the socket file when dropped.
#[derive(Debug)]
struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.0) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(path = %self.0.display(), error = %e, "could not remove socket");
            }
        }
    }
}

/// Bind `path` (mode 0600; a stale socket file is replaced, a live one is an error).
pub fn bind(path: &Path) -> Result<UnixListener, ServerError> {
    match std::fs::symlink_metadata(path) {
        Ok(md) if md.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(ServerError::InUse(path.to_owned()));
            }
            let _ = std::fs::remove_file(path);
        }
        Ok(_) => return Err(ServerError::NotASocket(path.to_owned())),
        Err(_) => {}
    }
    let bind_err = |source| ServerError::Bind {
        path: path.to_owned(),
        source,
    };
    let listener = UnixListener::bind(path).map_err(bind_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(bind_err)?;
    Ok(listener)
}

impl<D: Device> Server<D> {
    /// Wrap a device with default capabilities. Calls [`Device::attach`].
    pub fn new(device: D) -> Self {
        Self::with_config(device, ServerConfig::default())
    }

    pub fn with_config(device: D, config: ServerConfig) -> Self {
        let mut core = Core::new(device, config.caps);
        core.dma_layout = config.dma_layout;
        Self { core }
    }

    pub fn device(&self) -> &D {
        self.core.device()
    }

    /// Serve on `path` until SIGINT or SIGTERM; returns the device.
    pub async fn serve(self, path: impl AsRef<Path>) -> Result<D, ServerError> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut int = signal(SignalKind::interrupt()).map_err(ServerError::Signals)?;
        let mut term = signal(SignalKind::terminate()).map_err(ServerError::Signals)?;
        self.serve_until(path, async move {
            tokio::select! {
                _ = int.recv() => tracing::info!("SIGINT: shutting down"),
                _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            }
        })
        .await
    }

    /// Serve on `path` until `shutdown` completes; removes the socket and returns the device.
    pub async fn serve_until(
        self,
        path: impl AsRef<Path>,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<D, ServerError> {
        let path = path.as_ref();
        let listener = bind(path)?;
        let _guard = SocketFile(path.to_owned());
        tracing::info!(path = %path.display(), "listening");
        self.serve_listener(listener, shutdown).await
    }

    /// Serve an already bound listener until `shutdown` completes; returns the device.
    pub async fn serve_listener(
        mut self,
        listener: UnixListener,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<D, ServerError> {
        let (stop_tx, stop_rx) = watch::channel(false);
        // Completing `shutdown` only raises the flag; the accept loop and the connection
        // notice it and wind down cleanly (connection state released, device returned).
        let signal = async move {
            shutdown.await;
            let _ = stop_tx.send(true);
            std::future::pending::<()>().await
        };
        let main = async {
            loop {
                let mut stop = stop_rx.clone();
                let accepted = tokio::select! {
                    _ = stop.wait_for(|v| *v) => break,
                    r = listener.accept() => r,
                };
                let stream = match accepted {
                    Ok((s, _)) => s,
                    Err(e) if is_transient(&e) => {
                        tracing::warn!(error = %e, "accept failed; retrying");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                    Err(e) => return Err(ServerError::Accept(e)),
                };
                let conn_id = NEXT_CONN.fetch_add(1, Ordering::Relaxed);
                let peer_pid = stream.peer_cred().ok().and_then(|c| c.pid());
                let span = tracing::info_span!("conn", id = conn_id, peer_pid);
                self.run_connection(stream, &mut stop)
                    .instrument(span)
                    .await;
            }
            Ok(())
        };
        tokio::select! {
            r = main => r?,
            () = signal => {}
        }
        Ok(self.core.device)
    }

    async fn run_connection(&mut self, stream: UnixStream, stop: &mut watch::Receiver<bool>) {
        tracing::info!("client connected");
        let stream = Arc::new(stream);
        let writer = Arc::new(Writer::new(stream.clone()));
        let mut conn = ConnState::default();
        let mut cmsg = crate::sys::cmsg_buffer();
        let limits = self.core.limits();
        loop {
            let received = tokio::select! {
                _ = stop.wait_for(|v| *v) => break,
                r = transport::recv(&stream, &mut cmsg, limits) => r,
            };
            let msg = match received {
                Ok(Received::Message(m)) => m,
                Ok(Received::Rejected { header, errno }) => {
                    tracing::warn!(msg_id = header.msg_id, command = %header.cmd(), size = header.size, errno = %errno, "rejected message");
                    if header.message_type() == MessageType::Command && !header.no_reply() {
                        let reply = header.error_reply_to(errno as i32);
                        if send(&writer, zerocopy::IntoBytes::as_bytes(&reply), None)
                            .await
                            .is_err()
                        {
                            break;
                        }
                    }
                    continue;
                }
                Ok(Received::Closed) => {
                    tracing::info!("client disconnected");
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "closing connection");
                    break;
                }
            };
            match msg.header.message_type() {
                MessageType::Reply => {
                    let link = self
                        .core
                        .dma
                        .shared
                        .link
                        .lock()
                        .ok()
                        .and_then(|l| l.clone());
                    match link {
                        Some(l) => l.complete(msg),
                        None => {
                            tracing::debug!(msg_id = msg.header.msg_id, "unexpected reply dropped")
                        }
                    }
                    continue;
                }
                MessageType::Other(t) => {
                    tracing::warn!(msg_type = t, "unknown message type; closing connection");
                    break;
                }
                MessageType::Command => {}
            }
            let span = tracing::debug_span!("msg", id = msg.header.msg_id, cmd = %msg.header.cmd(), size = msg.header.size);
            let was_negotiated = conn.peer.is_some();
            let response = span.in_scope(|| self.core.handle(&mut conn, msg));
            if !was_negotiated {
                if let Some(peer) = conn.peer {
                    // DMA_READ replies must also fit what we accept.
                    let peer_max = (peer
                        .max_data_xfer_size
                        .min(self.core.caps.max_data_xfer_size)
                        as usize)
                        .max(1);
                    let link = Arc::new(PeerLink::new(
                        writer.clone(),
                        peer_max,
                        self.core.dma_layout,
                    ));
                    if let Ok(mut l) = self.core.dma.shared.link.lock() {
                        *l = Some(link);
                    }
                }
            }
            if let Response::Reply { bytes, fd } = response {
                let fd_ref = fd.as_ref().map(|f| f.as_fd());
                if let Err(e) = send(&writer, &bytes, fd_ref).await {
                    tracing::warn!(error = %e, "send failed; closing connection");
                    break;
                }
            }
        }
        // Device tasks may still hold the DMA link (and so the stream): shut the socket down
        // so the client sees EOF now and any late DMA request fails instead of hanging.
        let _ = nix::sys::socket::shutdown(
            std::os::fd::AsRawFd::as_raw_fd(&*stream),
            nix::sys::socket::Shutdown::Both,
        );
        self.core.disconnect(&mut conn);
        tracing::info!("connection closed; DMA windows and eventfds released");
    }
}

async fn send(writer: &Writer, bytes: &[u8], fd: Option<BorrowedFd<'_>>) -> io::Result<()> {
    debug_assert!(bytes.len() >= HEADER_SIZE);
    match fd {
        Some(fd) => writer.send(bytes, &[fd]).await,
        None => writer.send(bytes, &[]).await,
    }
}

fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            nix::libc::EMFILE
                | nix::libc::ENFILE
                | nix::libc::ENOBUFS
                | nix::libc::ENOMEM
                | nix::libc::ECONNABORTED
                | nix::libc::EINTR
        )
    )
}

#[cfg(test)]
#[path = "server_tests.rs"]
mod tests;
