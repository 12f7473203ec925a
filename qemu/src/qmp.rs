//! A minimal async QMP client: enough to ask a running guest what it sees (`query-pci`,
//! `query-status`), to read guest physical memory through the human monitor (`xp`), and to
//! stop it (`quit`).
//!
//! QMP is line-delimited JSON. Replies carry the `id` we sent; asynchronous events may arrive
//! between them and are kept in [`Qmp::events`]. Lines are capped at [`MAX_LINE`] bytes and
//! every command has a timeout, so a misbehaving peer cannot hang or exhaust the caller.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::time::{timeout, Instant};

/// Longest QMP line accepted (a `query-pci` reply of a large guest is tens of KiB).
pub const MAX_LINE: usize = 4 << 20;

/// Events kept for [`Qmp::events`]; older ones are dropped.
const MAX_EVENTS: usize = 256;

/// A QMP failure.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("cannot connect to QMP socket {path:?} within {waited:?}: {message}")]
    Connect {
        path: PathBuf,
        waited: Duration,
        message: String,
    },
    #[error("QMP I/O failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("QMP peer closed the connection")]
    Closed,
    #[error("QMP line longer than {MAX_LINE} bytes")]
    LineTooLong,
    #[error("QMP sent malformed JSON: {0}")]
    Json(String),
    #[error("QMP {command} timed out after {0:?}", .timeout)]
    Timeout { command: String, timeout: Duration },
    #[error("QMP {command} failed: {class}: {desc}")]
    Command {
        command: String,
        class: String,
        desc: String,
    },
    #[error("unexpected QMP reply to {command}: {message}")]
    Unexpected { command: String, message: String },
}

/// A QMP session past capability negotiation.
#[derive(Debug)]
pub struct Qmp {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    next_id: u64,
    events: Vec<Value>,
    command_timeout: Duration,
    greeting: Value,
}

impl Qmp {
    /// Connect to QEMU's QMP socket, retrying until it accepts or `wait` passes (QEMU creates
    /// the socket while it starts up), then negotiate capabilities.
    pub async fn connect(path: &Path, wait: Duration) -> Result<Self, QmpError> {
        let start = Instant::now();
        let stream = loop {
            match UnixStream::connect(path).await {
                Ok(stream) => break stream,
                Err(e) if start.elapsed() < wait => {
                    tracing::trace!(path = %path.display(), error = %e, "QMP socket not ready");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => {
                    return Err(QmpError::Connect {
                        path: path.to_path_buf(),
                        waited: start.elapsed(),
                        message: e.to_string(),
                    })
                }
            }
        };
        let (read, writer) = stream.into_split();
        let mut qmp = Self {
            reader: BufReader::new(read),
            writer,
            next_id: 0,
            events: Vec::new(),
            command_timeout: Duration::from_secs(30),
            greeting: Value::Null,
        };
        let remaining = wait
            .saturating_sub(start.elapsed())
            .max(Duration::from_secs(5));
        let greeting =
            timeout(remaining, qmp.read_message())
                .await
                .map_err(|_| QmpError::Timeout {
                    command: "greeting".into(),
                    timeout: remaining,
                })??;
        if greeting.get("QMP").is_none() {
            return Err(QmpError::Unexpected {
                command: "greeting".into(),
                message: greeting.to_string(),
            });
        }
        qmp.greeting = greeting;
        qmp.execute("qmp_capabilities", None).await?;
        Ok(qmp)
    }

    /// Per-command timeout (default 30 s).
    pub fn set_command_timeout(&mut self, timeout: Duration) {
        self.command_timeout = timeout;
    }

    /// The server's greeting (`{"QMP": {"version": ...}}`).
    pub fn greeting(&self) -> &Value {
        &self.greeting
    }

    /// Events received so far (oldest first, at most the last 256).
    pub fn events(&self) -> &[Value] {
        &self.events
    }

    /// Run a QMP command and return its `return` value.
    pub async fn execute(
        &mut self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<Value, QmpError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut request = json!({"execute": command, "id": id});
        if let Some(arguments) = arguments {
            request["arguments"] = arguments;
        }
        let mut line = request.to_string();
        line.push('\n');
        tracing::debug!(command, id, "QMP request");
        let limit = self.command_timeout;
        let result = timeout(limit, async {
            self.writer.write_all(line.as_bytes()).await?;
            loop {
                let message = self.read_message().await?;
                if message.get("event").is_some() {
                    if self.events.len() == MAX_EVENTS {
                        self.events.remove(0);
                    }
                    self.events.push(message);
                    continue;
                }
                if message.get("id") != Some(&json!(id)) {
                    return Err(QmpError::Unexpected {
                        command: command.to_owned(),
                        message: format!("reply for another id: {message}"),
                    });
                }
                return reply_value(command, message);
            }
        })
        .await;
        result.map_err(|_| QmpError::Timeout {
            command: command.to_owned(),
            timeout: limit,
        })?
    }

    /// `query-status`: e.g. "running", "paused", "shutdown".
    pub async fn status(&mut self) -> Result<String, QmpError> {
        let value = self.execute("query-status", None).await?;
        value
            .get("status")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| QmpError::Unexpected {
                command: "query-status".into(),
                message: value.to_string(),
            })
    }

    /// `query-pci`: every root bus (including `pxb-pcie` expander buses) with its devices.
    pub async fn query_pci(&mut self) -> Result<Vec<PciBus>, QmpError> {
        let value = self.execute("query-pci", None).await?;
        serde_json::from_value(value).map_err(|e| QmpError::Json(e.to_string()))
    }

    /// A human monitor command (`info pci`, `xp /1wx 0x...`), returning its text output.
    pub async fn hmp(&mut self, command_line: &str) -> Result<String, QmpError> {
        let value = self
            .execute(
                "human-monitor-command",
                Some(json!({"command-line": command_line})),
            )
            .await?;
        value
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| QmpError::Unexpected {
                command: "human-monitor-command".into(),
                message: value.to_string(),
            })
    }

    /// Read a 32-bit word of guest physical memory (or MMIO) with HMP `xp /1wx`.
    /// MMIO reads go to the device that owns the address, e.g. a vfio-user server.
    pub async fn read_phys_u32(&mut self, address: u64) -> Result<u32, QmpError> {
        let command_line = format!("xp /1wx {address:#x}");
        let output = self.hmp(&command_line).await?;
        parse_xp_word(&output).ok_or_else(|| QmpError::Unexpected {
            command: command_line,
            message: output.trim().to_owned(),
        })
    }

    /// Ask QEMU to exit, and wait until it closes the connection.
    pub async fn quit(mut self) -> Result<(), QmpError> {
        self.execute("quit", None).await?;
        let limit = self.command_timeout;
        let drained = timeout(limit, async {
            loop {
                match self.read_message().await {
                    Ok(_) => continue,
                    Err(QmpError::Closed) => return Ok(()),
                    // QEMU may reset the connection while exiting.
                    Err(QmpError::Io(_)) => return Ok(()),
                    Err(e) => return Err(e),
                }
            }
        })
        .await;
        drained.map_err(|_| QmpError::Timeout {
            command: "quit".into(),
            timeout: limit,
        })?
    }

    async fn read_message(&mut self) -> Result<Value, QmpError> {
        let mut line = Vec::new();
        loop {
            let buf = self.reader.fill_buf().await?;
            if buf.is_empty() {
                return Err(QmpError::Closed);
            }
            let (chunk, done) = match buf.iter().position(|&b| b == b'\n') {
                Some(end) => (&buf[..=end], true),
                None => (buf, false),
            };
            if line.len() + chunk.len() > MAX_LINE {
                return Err(QmpError::LineTooLong);
            }
            line.extend_from_slice(chunk);
            let used = chunk.len();
            self.reader.consume(used);
            if done {
                break;
            }
        }
        serde_json::from_slice(&line).map_err(|e| QmpError::Json(e.to_string()))
    }
}

fn reply_value(command: &str, mut message: Value) -> Result<Value, QmpError> {
    if let Some(value) = message.get_mut("return") {
        return Ok(value.take());
    }
    if let Some(error) = message.get("error") {
        let field = |key: &str| {
            error
                .get(key)
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_owned()
        };
        return Err(QmpError::Command {
            command: command.to_owned(),
            class: field("class"),
            desc: field("desc"),
        });
    }
    Err(QmpError::Unexpected {
        command: command.to_owned(),
        message: message.to_string(),
    })
}

/// The value of the first word in `xp /Nwx` output ("00000000fe000000: 0x4d4f434b").
pub fn parse_xp_word(output: &str) -> Option<u32> {
    let line = output.lines().find(|l| l.contains(':'))?;
    let word = line.split(':').nth(1)?.split_whitespace().next()?;
    u32::from_str_radix(word.strip_prefix("0x")?, 16).ok()
}

/// One root bus in a `query-pci` reply (`PciInfo`).
#[derive(Debug, Clone, Deserialize)]
pub struct PciBus {
    pub bus: u8,
    pub devices: Vec<PciDevice>,
}

/// One function in a `query-pci` reply (`PciDeviceInfo`); fields we do not use are ignored.
#[derive(Debug, Clone, Deserialize)]
pub struct PciDevice {
    pub bus: u8,
    pub slot: u8,
    pub function: u8,
    pub class_info: PciClass,
    pub id: PciIds,
    #[serde(default)]
    pub regions: Vec<PciRegion>,
    pub pci_bridge: Option<PciBridge>,
    /// The `id` given on the command line (e.g. `mock0_0`), empty if none.
    #[serde(default)]
    pub qdev_id: String,
}

/// `PciDeviceClass`: the 16-bit class and subclass (e.g. 0x1200).
#[derive(Debug, Clone, Deserialize)]
pub struct PciClass {
    pub class: u16,
    pub desc: Option<String>,
}

/// `PciDeviceId`.
#[derive(Debug, Clone, Deserialize)]
pub struct PciIds {
    pub vendor: u16,
    pub device: u16,
    pub subsystem: Option<u16>,
    #[serde(rename = "subsystem-vendor")]
    pub subsystem_vendor: Option<u16>,
}

/// `PciMemoryRegion`: a BAR as the guest programmed it. QMP reports `address` -1 while the
/// BAR is unassigned or decoding is disabled; see [`PciRegion::assigned_address`].
#[derive(Debug, Clone, Deserialize)]
pub struct PciRegion {
    pub bar: u8,
    #[serde(rename = "type")]
    pub kind: String,
    pub address: i64,
    pub size: u64,
    pub prefetch: Option<bool>,
    pub mem_type_64: Option<bool>,
}

/// `PciBridgeInfo`: a bridge and the devices behind it.
#[derive(Debug, Clone, Deserialize)]
pub struct PciBridge {
    pub bus: PciBusRange,
    #[serde(default)]
    pub devices: Vec<PciDevice>,
}

/// `PciBusInfo`: bus numbers of a bridge.
#[derive(Debug, Clone, Deserialize)]
pub struct PciBusRange {
    pub number: u8,
    pub secondary: u8,
    pub subordinate: u8,
}

impl PciRegion {
    /// The address the guest assigned and enabled, if any (not -1, not 0).
    pub fn assigned_address(&self) -> Option<u64> {
        u64::try_from(self.address).ok().filter(|&a| a != 0)
    }
}

impl PciDevice {
    /// BAR `bar`, if the device has it.
    pub fn region(&self, bar: u8) -> Option<&PciRegion> {
        self.regions.iter().find(|r| r.bar == bar)
    }

    /// This device followed by everything behind it (depth first).
    pub fn walk(&self) -> Vec<&PciDevice> {
        let mut out = vec![self];
        if let Some(bridge) = &self.pci_bridge {
            for d in &bridge.devices {
                out.extend(d.walk());
            }
        }
        out
    }
}

/// Every function on every bus of a `query-pci` reply, bridges included.
pub fn all_devices(buses: &[PciBus]) -> Vec<&PciDevice> {
    buses
        .iter()
        .flat_map(|b| b.devices.iter())
        .flat_map(PciDevice::walk)
        .collect()
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]
mod tests {
    use super::*;

    #[test]
    fn xp_output_parses_to_the_word() {
        assert_eq!(
            parse_xp_word("00000000fe000000: 0x4d4f434b\r\n"),
            Some(0x4d4f_434b)
        );
        assert_eq!(parse_xp_word("Cannot access memory\r\n"), None);
        assert_eq!(parse_xp_word(""), None);
    }

    #[test]
    fn query_pci_reply_with_bridges_flattens() {
        let reply = json!([{
            "bus": 0,
            "devices": [{
                "bus": 0, "slot": 1, "function": 0,
                "class_info": {"class": 1540, "desc": "PCI bridge"},
                "id": {"vendor": 6966, "device": 12},
                "regions": [],
                "qdev_id": "rp0_0",
                "pci_bridge": {
                    "bus": {"number": 0, "secondary": 17, "subordinate": 17,
                            "io_range": {"base": 0, "limit": 0},
                            "memory_range": {"base": 0, "limit": 0},
                            "prefetchable_range": {"base": 0, "limit": 0}},
                    "devices": [{
                        "bus": 17, "slot": 0, "function": 0,
                        "class_info": {"class": 4608},
                        "id": {"vendor": 7653, "device": 1, "subsystem": 0, "subsystem-vendor": 0},
                        "regions": [{"bar": 0, "type": "memory", "address": 4263510016u64,
                                     "size": 4096, "prefetch": false, "mem_type_64": false}],
                        "qdev_id": "mock0_0",
                        "irq_pin": 1
                    }]
                }
            }]
        }]);
        let buses: Vec<PciBus> = serde_json::from_value(reply).unwrap();
        let all = all_devices(&buses);
        assert_eq!(all.len(), 2);
        let mock = all.iter().find(|d| d.qdev_id == "mock0_0").unwrap();
        assert_eq!(
            (mock.id.vendor, mock.id.device, mock.class_info.class),
            (0x1de5, 1, 0x1200)
        );
        assert_eq!(mock.regions[0].size, 4096);
        assert_eq!(
            mock.region(0).unwrap().assigned_address(),
            Some(0xfe20_0000)
        );
    }

    #[test]
    fn unassigned_bars_report_minus_one() {
        let region: PciRegion = serde_json::from_value(json!(
            {"bar": 0, "type": "memory", "address": -1, "size": 4096}
        ))
        .unwrap();
        assert_eq!(region.assigned_address(), None);
    }

    #[test]
    fn error_replies_become_command_errors() {
        let err = reply_value(
            "quit",
            json!({"error": {"class": "GenericError", "desc": "nope"}, "id": 1}),
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "QMP quit failed: GenericError: nope");
    }

    #[tokio::test]
    async fn client_negotiates_skips_events_and_bounds_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let (read, mut write) = stream.into_split();
            let mut lines = BufReader::new(read).lines();
            write
                .write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n")
                .await
                .unwrap();
            let cap: Value =
                serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
            assert_eq!(cap["execute"], "qmp_capabilities");
            write
                .write_all(format!("{{\"return\": {{}}, \"id\": {}}}\n", cap["id"]).as_bytes())
                .await
                .unwrap();
            let req: Value =
                serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
            assert_eq!(req["execute"], "query-status");
            write
                .write_all(b"{\"event\": \"STOP\", \"timestamp\": {}}\n")
                .await
                .unwrap();
            write
                .write_all(
                    format!(
                        "{{\"return\": {{\"status\": \"running\"}}, \"id\": {}}}\n",
                        req["id"]
                    )
                    .as_bytes(),
                )
                .await
                .unwrap();
            let _ = lines.next_line().await.unwrap().unwrap();
            // A reply that never ends: the client must give up at MAX_LINE.
            let chunk = vec![b'x'; 1 << 16];
            for _ in 0..(MAX_LINE / chunk.len() + 2) {
                if write.write_all(&chunk).await.is_err() {
                    break;
                }
            }
        });
        let mut qmp = Qmp::connect(&path, Duration::from_secs(5)).await.unwrap();
        assert_eq!(qmp.status().await.unwrap(), "running");
        assert_eq!(qmp.events().len(), 1);
        let err = qmp.execute("query-pci", None).await.unwrap_err();
        assert!(matches!(err, QmpError::LineTooLong), "{err}");
        drop(qmp);
        server.await.unwrap();
    }
}
