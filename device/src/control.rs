//! Host-side control socket: read a device's live state and steer it without the guest.
//!
//! Each device served on `SOCKET` also listens on `SOCKET.ctl` (mode 0600). The protocol is
//! one request line, one reply line:
//!
//! | request | reply |
//! |---|---|
//! | `get` | the [`Snapshot`] as one JSON object |
//! | `set-status N` | `{"ok":true,"status":N}` (N decimal or 0x hex, u32) |
//! | anything else | `{"error":"..."}` |
//!
//! ```text
//! $ echo get | socat - UNIX-CONNECT:/tmp/mock-accel-0.sock.ctl
//! {"identity":"NODE1-NUMA0-PF","status":1,"connected":true,...}
//! ```
//!
//! Requests are capped at 256 bytes; a longer line closes the connection.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::model::{DeviceHandle, Snapshot};

/// Longest request line accepted.
const MAX_REQUEST: u64 = 256;

/// Why a control request failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("control socket {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("control socket {path} answered {answer:?}")]
    BadAnswer { path: PathBuf, answer: String },
}

/// The control socket path for a device socket: `SOCKET.ctl`.
pub fn control_path(socket: &Path) -> PathBuf {
    let mut p = socket.as_os_str().to_owned();
    p.push(".ctl");
    PathBuf::from(p)
}

/// Answer one request line.
pub(crate) fn answer(handle: &DeviceHandle, line: &str) -> String {
    let mut words = line.split_whitespace();
    match (words.next(), words.next(), words.next()) {
        (Some("get"), None, None) => serde_json::to_string(&handle.snapshot())
            .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}")),
        (Some("set-status"), Some(v), None) => match parse_u32(v) {
            Some(value) => {
                handle.set_status(value);
                format!("{{\"ok\":true,\"status\":{value}}}")
            }
            None => "{\"error\":\"set-status takes a u32 (decimal or 0x hex)\"}".to_owned(),
        },
        _ => "{\"error\":\"unknown request; use `get` or `set-status N`\"}".to_owned(),
    }
}

fn parse_u32(s: &str) -> Option<u32> {
    match s.strip_prefix("0x") {
        Some(hex) => u32::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

/// Serve the control socket at `path` until `shutdown` completes; removes the socket file.
pub async fn serve(
    handle: DeviceHandle,
    path: PathBuf,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), ControlError> {
    let io_err = |source| ControlError::Io {
        path: path.clone(),
        source,
    };
    if std::fs::symlink_metadata(&path).is_ok() {
        std::fs::remove_file(&path).map_err(io_err)?;
    }
    let listener = UnixListener::bind(&path).map_err(io_err)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(io_err)?;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let handle = handle.clone();
                    tokio::spawn(async move {
                        if let Err(e) = serve_one(handle, stream).await {
                            tracing::debug!(error = %e, "control connection ended");
                        }
                    });
                }
                Err(e) => tracing::warn!(error = %e, "control socket accept failed"),
            },
        }
    }
    let _ = std::fs::remove_file(&path);
    Ok(())
}

async fn serve_one(handle: DeviceHandle, stream: UnixStream) -> io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read.take(MAX_REQUEST * 64));
    loop {
        let mut line = String::new();
        let n = (&mut lines).take(MAX_REQUEST).read_line(&mut line).await?;
        if n == 0 {
            return Ok(());
        }
        if !line.ends_with('\n') && n as u64 >= MAX_REQUEST {
            write
                .write_all(b"{\"error\":\"request too long\"}\n")
                .await?;
            return Ok(());
        }
        let mut reply = answer(&handle, line.trim());
        reply.push('\n');
        write.write_all(reply.as_bytes()).await?;
    }
}

/// A client for a device's control socket (used by tests, the launcher and health checks).
#[derive(Debug, Clone)]
pub struct ControlClient {
    path: PathBuf,
}

impl ControlClient {
    /// A client for the device serving `socket` (connects to `SOCKET.ctl` per request).
    pub fn for_device_socket(socket: &Path) -> Self {
        Self {
            path: control_path(socket),
        }
    }

    async fn request(&self, line: &str) -> Result<String, ControlError> {
        let io_err = |source| ControlError::Io {
            path: self.path.clone(),
            source,
        };
        let stream = UnixStream::connect(&self.path).await.map_err(io_err)?;
        let (read, mut write) = stream.into_split();
        write
            .write_all(format!("{line}\n").as_bytes())
            .await
            .map_err(io_err)?;
        let mut answer = String::new();
        BufReader::new(read.take(1 << 16))
            .read_line(&mut answer)
            .await
            .map_err(io_err)?;
        Ok(answer)
    }

    /// The device's state now.
    pub async fn get(&self) -> Result<Snapshot, ControlError> {
        let answer = self.request("get").await?;
        serde_json::from_str(&answer).map_err(|_| ControlError::BadAnswer {
            path: self.path.clone(),
            answer,
        })
    }

    /// Set STATUS from the host.
    pub async fn set_status(&self, value: u32) -> Result<(), ControlError> {
        let answer = self.request(&format!("set-status {value}")).await?;
        if answer.contains("\"ok\":true") {
            Ok(())
        } else {
            Err(ControlError::BadAnswer {
                path: self.path.clone(),
                answer,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bar0::Bar0Config;
    use crate::model::MockAccel;

    fn handle() -> DeviceHandle {
        MockAccel::new(Bar0Config {
            identity: "L".parse().expect("label"),
            memory_size: 1 << 30,
            capabilities: 3,
            vf_index: None,
            device_id: crate::bar0::DEVICE_ID_MOCK,
        })
        .handle()
    }

    #[test]
    fn requests_get_one_line_answers_and_junk_gets_an_error() {
        let h = handle();
        assert!(answer(&h, "get").contains("\"identity\":\"L\""));
        assert_eq!(answer(&h, "set-status 0x1"), "{\"ok\":true,\"status\":1}");
        assert_eq!(h.snapshot().status, 1);
        assert!(answer(&h, "set-status banana").contains("error"));
        assert!(answer(&h, "set-status 1 2").contains("error"));
        assert!(answer(&h, "reboot").contains("error"));
        assert_eq!(h.snapshot().status, 1, "bad requests change nothing");
    }

    #[tokio::test]
    async fn client_reads_and_sets_status_over_the_socket() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("dev.sock");
        let h = handle();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(h.clone(), control_path(&sock), async {
            let _ = stopped.await;
        }));
        let client = ControlClient::for_device_socket(&sock);
        let mut snap = None;
        for _ in 0..100 {
            if let Ok(s) = client.get().await {
                snap = Some(s);
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(snap.map(|s| s.capabilities), Some(3));
        client.set_status(1).await.expect("set-status");
        assert_eq!(h.snapshot().status, 1);
        let _ = stop.send(());
        server.await.expect("join").expect("serve");
        assert!(!control_path(&sock).exists(), "socket removed at shutdown");
    }

    #[tokio::test]
    async fn overlong_request_is_refused_and_server_keeps_serving() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("dev.sock");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(handle(), control_path(&sock), async {
            let _ = stopped.await;
        }));
        let path = control_path(&sock);
        while !path.exists() {
            tokio::task::yield_now().await;
        }
        let mut s = UnixStream::connect(&path).await.expect("connect");
        s.write_all(&[b'x'; 1000]).await.expect("write");
        let mut reply = String::new();
        BufReader::new(s).read_line(&mut reply).await.expect("read");
        assert!(reply.contains("too long"), "{reply}");
        let client = ControlClient::for_device_socket(&sock);
        assert!(client.get().await.is_ok());
        let _ = stop.send(());
        server.await.expect("join").expect("serve");
    }
}
