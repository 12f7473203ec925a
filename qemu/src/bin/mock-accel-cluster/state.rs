//! The run directory's `state.json`: what `up` started, for `status`, `logs` and `down`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

pub const STATE_FILE: &str = "state.json";

/// Everything a cluster run started and created.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct State {
    pub run_dir: PathBuf,
    pub nodes: Vec<NodeState>,
}

/// One guest and its device server.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeState {
    pub name: String,
    pub dir: PathBuf,
    /// Device server process serving every device of the node.
    pub server: Option<Proc>,
    pub qemu: Option<Proc>,
    pub qmp_socket: PathBuf,
    pub serial_log: PathBuf,
    pub qemu_log: PathBuf,
    pub devices_log: PathBuf,
    pub device_list: PathBuf,
    pub devices: Vec<DeviceState>,
    /// Copy-on-write overlay and cloud-init seed (`--image` guests).
    pub overlay: Option<PathBuf>,
    pub seed: Option<PathBuf>,
    pub ssh_port: Option<u16>,
}

/// A process we started, and a string its command line contains (so a recycled pid is never
/// mistaken for ours).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Proc {
    pub pid: i32,
    pub marker: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceState {
    pub numa: usize,
    /// `pf`, `vf0`, `pf1-vf0`, ...
    pub kind: String,
    pub label: String,
    pub socket: PathBuf,
    /// QEMU device id (`mock<N>_<D>[_vf<V>]`).
    pub qdev_id: String,
}

impl State {
    pub fn path(run_dir: &Path) -> PathBuf {
        run_dir.join(STATE_FILE)
    }

    /// The state in `run_dir`, `None` when there is none.
    pub fn load(run_dir: &Path) -> anyhow::Result<Option<Self>> {
        let path = Self::path(run_dir);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let state = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a launcher state file", path.display()))?;
        Ok(Some(state))
    }

    /// Write atomically (temporary file, then rename).
    pub fn save(&self) -> anyhow::Result<()> {
        let path = Self::path(&self.run_dir);
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(self).context("serialize state")?;
        std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(())
    }
}
