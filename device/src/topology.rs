//! Serving one or many devices from one process: [`DeviceSpec`]s, a TOML device list, and
//! [`serve_all`], which runs a vfio-user server and a control socket per device.
//!
//! ```toml
//! [[device]]
//! uuid = "NODE1-NUMA0-PF"
//! socket = "/tmp/mock-accel-node1-numa0-pf.sock"
//! memory_size = "16G"          # optional, default 16 GiB
//! capabilities = 1             # optional
//!
//! [[device]]
//! uuid = "NODE1-NUMA0-VF0"
//! socket = "/tmp/mock-accel-node1-numa0-vf0.sock"
//! vf_index = 0                 # a virtual function (device ID 0x0002)
//! ```

use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::Deserialize;
use tokio::sync::watch;
use vfio_user_proto::Server;

use crate::bar0::{Bar0Config, DeviceIdentity, IdentityError, DEFAULT_CAPABILITIES};
use crate::control;
use crate::model::{DeviceHandle, MockAccel};

/// Longest socket path a Unix socket address holds (`sun_path` is 108 bytes with the NUL);
/// the control socket adds `.ctl`.
pub const MAX_SOCKET_PATH: usize = 107 - 4;

/// Why a device list or option was refused.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("device {index}: {source}")]
    Identity {
        index: usize,
        #[source]
        source: IdentityError,
    },
    #[error("device {index}: memory size {text:?} is not a size (examples: 17179869184, 16G, 2Gi, 512M)")]
    MemorySize { index: usize, text: String },
    #[error("device {index}: socket path {path} is {len} bytes; at most {MAX_SOCKET_PATH} fit in sun_path with the .ctl suffix")]
    SocketPathTooLong {
        index: usize,
        path: PathBuf,
        len: usize,
    },
    #[error("device list {path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("device list has no [[device]] entries")]
    Empty,
    #[error("socket {0} appears twice in the device list")]
    DuplicateSocket(PathBuf),
}

/// One device to serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceSpec {
    pub socket: PathBuf,
    pub registers: Bar0Config,
}

/// Parse a memory size: bytes, or a number with K/M/G/T (binary multiples; `Gi` and `GiB`
/// spellings accepted too).
pub fn parse_memory_size(text: &str) -> Option<u64> {
    let t = text.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(digits);
    let number: u64 = number.parse().ok()?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "ki" | "kib" | "kb" => 10,
        "m" | "mi" | "mib" | "mb" => 20,
        "g" | "gi" | "gib" | "gb" => 30,
        "t" | "ti" | "tib" | "tb" => 40,
        _ => return None,
    };
    number.checked_mul(1u64 << shift)
}

impl DeviceSpec {
    /// Build and validate a spec from command-line style values.
    pub fn new(
        index: usize,
        identity: &str,
        socket: PathBuf,
        memory_size: &str,
        capabilities: u32,
        vf_index: Option<u8>,
    ) -> Result<Self, SpecError> {
        let identity = DeviceIdentity::from_str(identity)
            .map_err(|source| SpecError::Identity { index, source })?;
        let memory_size = parse_memory_size(memory_size).ok_or_else(|| SpecError::MemorySize {
            index,
            text: memory_size.to_owned(),
        })?;
        let len = socket.as_os_str().len();
        if len > MAX_SOCKET_PATH {
            return Err(SpecError::SocketPathTooLong {
                index,
                path: socket,
                len,
            });
        }
        Ok(Self {
            socket,
            registers: Bar0Config {
                identity,
                memory_size,
                capabilities,
                vf_index,
                device_id: crate::bar0::DEVICE_ID_MOCK,
            },
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileEntry {
    uuid: String,
    socket: PathBuf,
    memory_size: Option<MemorySize>,
    capabilities: Option<u32>,
    vf_index: Option<u8>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum MemorySize {
    Bytes(u64),
    Text(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    device: Vec<FileEntry>,
}

/// Parse a TOML device list.
pub fn parse_device_list(path: &Path, text: &str) -> Result<Vec<DeviceSpec>, SpecError> {
    let file: File = toml::from_str(text).map_err(|e| SpecError::File {
        path: path.to_owned(),
        message: e.message().to_owned(),
    })?;
    if file.device.is_empty() {
        return Err(SpecError::Empty);
    }
    let mut specs: Vec<DeviceSpec> = Vec::with_capacity(file.device.len());
    for (index, e) in file.device.into_iter().enumerate() {
        let size = match e.memory_size {
            None => crate::bar0::DEFAULT_MEMORY_SIZE.to_string(),
            Some(MemorySize::Bytes(b)) => b.to_string(),
            Some(MemorySize::Text(t)) => t,
        };
        let spec = DeviceSpec::new(
            index,
            &e.uuid,
            e.socket,
            &size,
            e.capabilities.unwrap_or(DEFAULT_CAPABILITIES),
            e.vf_index,
        )?;
        if specs.iter().any(|s| s.socket == spec.socket) {
            return Err(SpecError::DuplicateSocket(spec.socket));
        }
        specs.push(spec);
    }
    Ok(specs)
}

/// Serve every device (vfio-user socket + control socket) until `shutdown` completes; all
/// sockets are removed on the way out. Returns the handles' final snapshots order-preserved
/// through the log only; errors from any server are returned after all have stopped.
pub async fn serve_all(
    specs: Vec<DeviceSpec>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), vfio_user_proto::ServerError> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    for spec in specs {
        let device = MockAccel::new(spec.registers.clone());
        let handle: DeviceHandle = device.handle();
        let socket = spec.socket.clone();
        tracing::info!(identity = %spec.registers.identity, socket = %socket.display(),
            memory_size = spec.registers.memory_size, vf_index = ?spec.registers.vf_index, "serving device");
        let ctl_stop = wait_for(stop_rx.clone());
        let ctl_path = control::control_path(&socket);
        tasks.spawn(async move {
            if let Err(e) = control::serve(handle, ctl_path, ctl_stop).await {
                tracing::error!(error = %e, "control socket failed");
            }
            Ok(())
        });
        let stop = wait_for(stop_rx.clone());
        tasks.spawn(async move {
            Server::new(device)
                .serve_until(socket, stop)
                .await
                .map(|_| ())
        });
    }
    let mut first_error = None;
    tokio::select! {
        _ = shutdown => {}
        Some(Ok(Err(e))) = tasks.join_next() => first_error = Some(e),
    }
    let _ = stop_tx.send(true);
    while let Some(result) = tasks.join_next().await {
        if let Ok(Err(e)) = result {
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

async fn wait_for(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_sizes_accept_bytes_and_binary_suffixes() {
        assert_eq!(parse_memory_size("17179869184"), Some(16 << 30));
        assert_eq!(parse_memory_size("16G"), Some(16 << 30));
        assert_eq!(parse_memory_size("2Gi"), Some(2 << 30));
        assert_eq!(parse_memory_size("512MiB"), Some(512 << 20));
        assert_eq!(parse_memory_size("1.5G"), None);
        assert_eq!(parse_memory_size("G"), None);
        assert_eq!(
            parse_memory_size("99999999999T"),
            None,
            "overflow is refused"
        );
    }

    #[test]
    fn device_list_parses_pf_and_vf_entries() {
        let specs = parse_device_list(
            Path::new("t.toml"),
            r#"
            [[device]]
            uuid = "NODE1-NUMA0-PF"
            socket = "/tmp/a.sock"
            memory_size = "8G"
            [[device]]
            uuid = "NODE1-NUMA0-VF0"
            socket = "/tmp/b.sock"
            memory_size = 2147483648
            vf_index = 0
            "#,
        )
        .expect("valid list");
        assert_eq!(specs.len(), 2);
        assert_eq!(specs[0].registers.memory_size, 8 << 30);
        assert_eq!(specs[1].registers.vf_index, Some(0));
        assert_eq!(specs[1].registers.memory_size, 2 << 30);
    }

    #[test]
    fn device_list_errors_name_the_problem() {
        let e = |t: &str| {
            parse_device_list(Path::new("t.toml"), t)
                .expect_err("invalid")
                .to_string()
        };
        assert!(e("").contains("no [[device]]"));
        assert!(e("[[device]]\nuuid='x'\nsocket='/a'\nbogus=1").contains("bogus"));
        assert!(e("[[device]]\nuuid='much-too-long-label-x'\nsocket='/a'").contains("at most 16"));
        assert!(
            e("[[device]]\nuuid='a'\nsocket='/a'\n[[device]]\nuuid='b'\nsocket='/a'")
                .contains("twice")
        );
        let long = format!("[[device]]\nuuid='a'\nsocket='/{}'", "x".repeat(120));
        assert!(e(&long).contains("sun_path"));
    }
}
