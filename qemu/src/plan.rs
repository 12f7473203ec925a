//! Launch plans: the guests of a test cluster, every device with its UUID label and socket, and
//! the files a launcher keeps per node under its run directory. Pure: no processes, no I/O.
//!
//! The default shape is the seeds' cluster: 2 nodes x 2 NUMA nodes x (1 PF + 2 VFs) = 12
//! devices, labelled `NODE1-NUMA0-PF`, `NODE1-NUMA0-VF0`, `NODE1-NUMA0-VF1`, ...
//!
//! ```
//! use qemu::plan::{ClusterShape, Plan};
//! let plan = Plan::from_shape(&ClusterShape::default(), "/tmp/run".as_ref())?;
//! assert_eq!(plan.nodes.len(), 2);
//! assert_eq!(plan.nodes[0].devices[1].label, "NODE1-NUMA0-VF0");
//! assert_eq!(plan.nodes.iter().map(|n| n.devices.len()).sum::<usize>(), 12);
//! # Ok::<(), qemu::plan::PlanError>(())
//! ```

use std::path::{Path, PathBuf};

use crate::topology::{Cluster, DeviceSpec, NumaNode, Topology, TopologyError};

/// Longest device socket path: `sun_path` holds 107 bytes plus NUL, and the device server also
/// listens on `SOCKET.ctl`.
pub const MAX_DEVICE_SOCKET_PATH: usize = 107 - 4;

/// Longest UUID label a device reports (the device's identity registers).
pub const MAX_LABEL_LEN: usize = 16;

/// Why a plan cannot be made.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    #[error(transparent)]
    Topology(#[from] TopologyError),
    #[error("socket path {path:?} is {len} bytes; with the device server's .ctl suffix at most {MAX_DEVICE_SOCKET_PATH} fit in sun_path: use a shorter --run-dir")]
    SocketPathTooLong { path: PathBuf, len: usize },
    #[error("{what} must be between {min} and {max}, not {value}")]
    OutOfRange {
        what: &'static str,
        value: u64,
        min: u64,
        max: u64,
    },
    #[error("label {0:?} is longer than {MAX_LABEL_LEN} bytes or not printable ASCII; use a shorter label or an RFC 4122 UUID")]
    BadLabel(String),
}

/// A regular cluster: every node has the same NUMA nodes with the same devices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterShape {
    pub nodes: u32,
    pub numa_per_node: u32,
    pub pfs_per_numa: u32,
    pub vfs_per_pf: u32,
    /// vCPUs per NUMA node.
    pub cpus_per_numa: u32,
    /// Guest RAM per NUMA node.
    pub memory_mib_per_numa: u64,
}

impl Default for ClusterShape {
    /// The seeds' cluster: 2 nodes x 2 NUMA x (1 PF + 2 VFs), 1 vCPU and 512 MiB per NUMA node.
    fn default() -> Self {
        Self {
            nodes: 2,
            numa_per_node: 2,
            pfs_per_numa: 1,
            vfs_per_pf: 2,
            cpus_per_numa: 1,
            memory_mib_per_numa: 512,
        }
    }
}

/// One device (PF or VF) of a node, as the launcher starts and reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedDevice {
    pub numa: usize,
    /// PF index within the NUMA node.
    pub pf: usize,
    /// `None` for the PF, `Some(v)` for VF `v`.
    pub vf: Option<usize>,
    /// What the device reports as its UUID (`NODE1-NUMA0-PF`, ...).
    pub label: String,
    pub socket: PathBuf,
}

impl PlannedDevice {
    /// `pf`, `pf1`, `vf0`, `pf1-vf0`: the device's name within its NUMA node.
    pub fn kind(&self) -> String {
        match (self.pf, self.vf) {
            (0, None) => "pf".to_owned(),
            (p, None) => format!("pf{p}"),
            (0, Some(v)) => format!("vf{v}"),
            (p, Some(v)) => format!("pf{p}-vf{v}"),
        }
    }
}

/// One guest of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodePlan {
    /// The guest's topology with absolute socket paths.
    pub topology: Topology,
    /// The node's directory under the run directory.
    pub dir: PathBuf,
    /// Devices in command-line order (per NUMA node, per PF: the PF, then its VFs).
    pub devices: Vec<PlannedDevice>,
}

impl NodePlan {
    pub fn name(&self) -> &str {
        &self.topology.name
    }

    pub fn qmp_socket(&self) -> PathBuf {
        self.dir.join("qmp.sock")
    }

    pub fn serial_log(&self) -> PathBuf {
        self.dir.join("serial.log")
    }

    pub fn qemu_log(&self) -> PathBuf {
        self.dir.join("qemu.log")
    }

    pub fn device_list(&self) -> PathBuf {
        self.dir.join("devices.toml")
    }

    pub fn devices_log(&self) -> PathBuf {
        self.dir.join("devices.log")
    }

    pub fn overlay(&self) -> PathBuf {
        self.dir.join("overlay.qcow2")
    }

    pub fn seed(&self) -> PathBuf {
        self.dir.join("seed.iso")
    }

    /// The device server's `--topology` file for this node's devices.
    pub fn device_list_toml(&self) -> String {
        let mut out = format!(
            "# Devices of guest {} (written by the launcher)\n",
            self.name()
        );
        for d in &self.devices {
            out.push_str("\n[[device]]\n");
            out.push_str(&format!("uuid = {}\n", toml_string(&d.label)));
            out.push_str(&format!(
                "socket = {}\n",
                toml_string(&d.socket.to_string_lossy())
            ));
            if let Some(v) = d.vf {
                out.push_str(&format!("vf_index = {v}\n"));
            }
        }
        out
    }
}

/// Every guest of a cluster run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub run_dir: PathBuf,
    pub nodes: Vec<NodePlan>,
}

impl Plan {
    /// A regular cluster with sockets `RUN_DIR/nodeN/numaM-pf.sock`, `...-vf0.sock`, ...
    pub fn from_shape(shape: &ClusterShape, run_dir: &Path) -> Result<Self, PlanError> {
        range("--nodes", shape.nodes.into(), 1, 64)?;
        range(
            "--numa",
            shape.numa_per_node.into(),
            1,
            crate::topology::MAX_NUMA_NODES as u64,
        )?;
        range(
            "--pfs-per-numa",
            shape.pfs_per_numa.into(),
            0,
            crate::topology::MAX_DEVICES_PER_NUMA_NODE as u64,
        )?;
        range(
            "--vfs-per-pf",
            shape.vfs_per_pf.into(),
            0,
            crate::topology::MAX_VFS_PER_DEVICE as u64,
        )?;
        range("--cpus", shape.cpus_per_numa.into(), 1, 64)?;
        range("--memory-mib", shape.memory_mib_per_numa, 16, 1 << 20)?;
        let nodes = (1..=shape.nodes)
            .map(|i| {
                let name = format!("node{i}");
                let dir = run_dir.join(&name);
                let numa_nodes = (0..shape.numa_per_node)
                    .map(|n| NumaNode {
                        cpus: shape.cpus_per_numa,
                        memory_mib: shape.memory_mib_per_numa,
                        devices: (0..shape.pfs_per_numa)
                            .map(|p| {
                                let pf = if p == 0 { String::new() } else { p.to_string() };
                                DeviceSpec {
                                    socket: dir.join(format!("numa{n}-pf{pf}.sock")),
                                    vfs: (0..shape.vfs_per_pf)
                                        .map(|v| {
                                            let prefix = if p == 0 {
                                                String::new()
                                            } else {
                                                format!("pf{p}-")
                                            };
                                            dir.join(format!("numa{n}-{prefix}vf{v}.sock"))
                                        })
                                        .collect(),
                                    uuid: None,
                                    vf_uuids: Vec::new(),
                                }
                            })
                            .collect(),
                    })
                    .collect();
                Topology { name, numa_nodes }
            })
            .collect();
        Self::from_cluster(&Cluster { nodes }, run_dir)
    }

    /// A cluster from a file: relative socket paths are placed in the node's directory under
    /// `run_dir`; devices without `uuid`/`vf_uuids` get the seeds' label pattern.
    pub fn from_cluster(cluster: &Cluster, run_dir: &Path) -> Result<Self, PlanError> {
        let mut nodes = Vec::new();
        for (i, node) in cluster.nodes.iter().enumerate() {
            let dir = run_dir.join(&node.name);
            let mut topology = node.clone();
            let mut devices = Vec::new();
            for (n, numa) in topology.numa_nodes.iter_mut().enumerate() {
                for (p, spec) in numa.devices.iter_mut().enumerate() {
                    spec.socket = dir.join(&spec.socket);
                    for vf in &mut spec.vfs {
                        *vf = dir.join(&*vf);
                    }
                    let label = match &spec.uuid {
                        Some(l) => l.clone(),
                        None => default_label(i + 1, n, p, None),
                    };
                    devices.push(PlannedDevice {
                        numa: n,
                        pf: p,
                        vf: None,
                        label,
                        socket: spec.socket.clone(),
                    });
                    for (v, socket) in spec.vfs.iter().enumerate() {
                        let label = match spec.vf_uuids.get(v) {
                            Some(l) => l.clone(),
                            None => default_label(i + 1, n, p, Some(v)),
                        };
                        devices.push(PlannedDevice {
                            numa: n,
                            pf: p,
                            vf: Some(v),
                            label,
                            socket: socket.clone(),
                        });
                    }
                }
            }
            nodes.push(NodePlan {
                topology,
                dir,
                devices,
            });
        }
        let plan = Self {
            run_dir: run_dir.to_path_buf(),
            nodes,
        };
        plan.validate()?;
        Ok(plan)
    }

    /// Topology rules, plus what the device servers need: sockets short enough for their
    /// `.ctl` twin, labels they can report.
    fn validate(&self) -> Result<(), PlanError> {
        for node in &self.nodes {
            for d in &node.devices {
                let len = d.socket.as_os_str().len();
                if len > MAX_DEVICE_SOCKET_PATH {
                    return Err(PlanError::SocketPathTooLong {
                        path: d.socket.clone(),
                        len,
                    });
                }
                if !valid_label(&d.label) {
                    return Err(PlanError::BadLabel(d.label.clone()));
                }
            }
            let qmp = node.qmp_socket();
            let len = qmp.as_os_str().len();
            if len > MAX_DEVICE_SOCKET_PATH {
                return Err(PlanError::SocketPathTooLong { path: qmp, len });
            }
        }
        Cluster {
            nodes: self.nodes.iter().map(|n| n.topology.clone()).collect(),
        }
        .validate()?;
        Ok(())
    }
}

/// The seeds' label pattern: `NODE1-NUMA0-PF`, `NODE1-NUMA0-VF0`; further PFs of a NUMA node
/// are `NODE1-NUMA0-PF1` with VFs `NODE1-NUMA0-1VF0`. A label that would not fit in 16 bytes
/// becomes a fixed RFC 4122 UUID encoding the same numbers.
pub fn default_label(node: usize, numa: usize, pf: usize, vf: Option<usize>) -> String {
    let label = match (pf, vf) {
        (0, None) => format!("NODE{node}-NUMA{numa}-PF"),
        (p, None) => format!("NODE{node}-NUMA{numa}-PF{p}"),
        (0, Some(v)) => format!("NODE{node}-NUMA{numa}-VF{v}"),
        (p, Some(v)) => format!("NODE{node}-NUMA{numa}-{p}VF{v}"),
    };
    if label.len() <= MAX_LABEL_LEN {
        return label;
    }
    let vf = vf.map_or(0, |v| v + 1);
    format!(
        "{:08x}-{:04x}-4000-8000-{:06x}{:06x}",
        node,
        numa,
        pf & 0xff_ffff,
        vf & 0xff_ffff
    )
}

fn valid_label(label: &str) -> bool {
    let uuid_like = label.len() == 36 && label.bytes().filter(|&b| b == b'-').count() == 4;
    !label.is_empty()
        && (label.len() <= MAX_LABEL_LEN || uuid_like)
        && label.bytes().all(|b| b.is_ascii_graphic())
}

fn range(what: &'static str, value: u64, min: u64, max: u64) -> Result<(), PlanError> {
    if value < min || value > max {
        return Err(PlanError::OutOfRange {
            what,
            value,
            min,
            max,
        });
    }
    Ok(())
}

/// A TOML basic string (JSON string syntax is valid TOML for the characters we write).
fn toml_string(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_default()
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]
mod tests {
    use super::*;

    #[test]
    fn default_shape_is_the_seeds_twelve_devices_with_their_labels() {
        let plan = Plan::from_shape(&ClusterShape::default(), "/r".as_ref()).unwrap();
        let labels: Vec<_> = plan
            .nodes
            .iter()
            .flat_map(|n| n.devices.iter().map(|d| d.label.as_str()))
            .collect();
        assert_eq!(
            labels,
            [
                "NODE1-NUMA0-PF",
                "NODE1-NUMA0-VF0",
                "NODE1-NUMA0-VF1",
                "NODE1-NUMA1-PF",
                "NODE1-NUMA1-VF0",
                "NODE1-NUMA1-VF1",
                "NODE2-NUMA0-PF",
                "NODE2-NUMA0-VF0",
                "NODE2-NUMA0-VF1",
                "NODE2-NUMA1-PF",
                "NODE2-NUMA1-VF0",
                "NODE2-NUMA1-VF1",
            ]
        );
        assert_eq!(
            plan.nodes[1].devices[4].socket,
            Path::new("/r/node2/numa1-vf0.sock")
        );
        assert_eq!(plan.nodes[1].name(), "node2");
    }

    #[test]
    fn labels_always_fit_the_identity_registers() {
        for (node, numa, pf, vf) in [(1, 0, 0, None), (12, 14, 14, Some(6)), (64, 1, 3, None)] {
            let l = default_label(node, numa, pf, vf);
            assert!(valid_label(&l), "{l}");
        }
        assert_eq!(default_label(1, 0, 1, Some(0)), "NODE1-NUMA0-1VF0");
        assert_eq!(default_label(10, 10, 1, Some(2)).len(), 36);
    }

    #[test]
    fn socket_paths_too_long_for_the_ctl_twin_name_the_run_dir() {
        let run = format!("/{}", "r".repeat(90));
        let err = Plan::from_shape(&ClusterShape::default(), run.as_ref()).unwrap_err();
        assert!(matches!(err, PlanError::SocketPathTooLong { .. }), "{err}");
        assert!(err.to_string().contains("--run-dir"));
    }

    #[test]
    fn cluster_files_keep_given_labels_and_resolve_relative_sockets() {
        let cluster = Cluster::from_toml(
            r#"
            [[nodes]]
            name = "a"
            [[nodes.numa_nodes]]
            cpus = 1
            memory_mib = 128
            [[nodes.numa_nodes.devices]]
            socket = "pf.sock"
            vfs = ["vf.sock", "/abs/vf1.sock"]
            uuid = "MY-PF"
            "#,
        )
        .unwrap();
        let plan = Plan::from_cluster(&cluster, "/run".as_ref()).unwrap();
        let d = &plan.nodes[0].devices;
        assert_eq!(d[0].label, "MY-PF");
        assert_eq!(d[0].socket, Path::new("/run/a/pf.sock"));
        assert_eq!(d[1].label, "NODE1-NUMA0-VF0");
        assert_eq!(d[2].socket, Path::new("/abs/vf1.sock"));
    }

    #[test]
    fn device_list_marks_vfs_with_their_index() {
        let shape = ClusterShape {
            nodes: 1,
            numa_per_node: 1,
            vfs_per_pf: 1,
            ..ClusterShape::default()
        };
        let plan = Plan::from_shape(&shape, "/r".as_ref()).unwrap();
        let text = plan.nodes[0].device_list_toml();
        let parsed: toml::Value = toml::from_str(&text).unwrap();
        let devices = parsed["device"].as_array().unwrap();
        assert_eq!(devices[0]["uuid"].as_str(), Some("NODE1-NUMA0-PF"));
        assert!(devices[0].get("vf_index").is_none());
        assert_eq!(devices[1]["vf_index"].as_integer(), Some(0));
        assert_eq!(
            devices[1]["socket"].as_str(),
            Some("/r/node1/numa0-vf0.sock")
        );
    }

    #[test]
    fn shape_limits_are_checked_with_the_flag_name() {
        let shape = ClusterShape {
            vfs_per_pf: 8,
            ..ClusterShape::default()
        };
        let err = Plan::from_shape(&shape, "/r".as_ref()).unwrap_err();
        assert!(err.to_string().contains("--vfs-per-pf"), "{err}");
    }
}
