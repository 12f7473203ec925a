//! What a guest looks like: NUMA nodes with CPUs, memory and mock-accel devices, and clusters of
//! such guests. Plain data, loadable from TOML, validated before any command line is built.
//!
//! ```toml
//! name = "node1"
//!
//! [[numa_nodes]]
//! cpus = 1
//! memory_mib = 256
//!
//! [[numa_nodes.devices]]
//! socket = "/run/mock-accel/node1-numa0-pf.sock"
//! vfs = ["/run/mock-accel/node1-numa0-vf0.sock", "/run/mock-accel/node1-numa0-vf1.sock"]
//! ```

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// `sizeof(sockaddr_un.sun_path)` on Linux, including the terminating NUL.
pub const SUN_PATH_LEN: usize = 108;

/// NUMA nodes per guest. Each gets a `pxb-pcie` whose bus range is [`BUS_NR_STRIDE`] wide.
pub const MAX_NUMA_NODES: usize = 15;

/// Devices (root ports) per NUMA node: one bus number each behind the node's `pxb-pcie`, whose
/// own bus takes the first number of its range.
pub const MAX_DEVICES_PER_NUMA_NODE: usize = BUS_NR_STRIDE as usize - 1;

/// VFs per PF: functions 1..=7 of the PF's slot (no ARI behind a root port).
pub const MAX_VFS_PER_DEVICE: usize = 7;

/// Bus numbers reserved per NUMA node: `pxb-pcie` of node `n` has `bus_nr = 16 * (n + 1)`.
pub const BUS_NR_STRIDE: u8 = 16;

/// A topology that cannot be turned into a QEMU command line.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TopologyError {
    #[error("topology has no NUMA nodes; a guest needs at least one")]
    NoNumaNodes,
    #[error("topology has {0} NUMA nodes; at most {MAX_NUMA_NODES} are supported")]
    TooManyNumaNodes(usize),
    #[error("topology has no CPUs; give at least one NUMA node cpus >= 1")]
    NoCpus,
    #[error("NUMA node {numa} has memory_mib = 0")]
    NoMemory { numa: usize },
    #[error("NUMA node {numa} has {count} devices; at most {MAX_DEVICES_PER_NUMA_NODE} fit behind one pxb-pcie")]
    TooManyDevices { numa: usize, count: usize },
    #[error("device {device} on NUMA node {numa} has {count} VFs; at most {MAX_VFS_PER_DEVICE} fit on one slot")]
    TooManyVfs {
        numa: usize,
        device: usize,
        count: usize,
    },
    #[error("socket path {path:?} is {len} bytes; Unix socket paths must be at most {} bytes (sun_path)", SUN_PATH_LEN - 1)]
    SocketPathTooLong { path: PathBuf, len: usize },
    #[error("path {0:?} is not valid UTF-8")]
    NonUtf8Path(PathBuf),
    #[error("path {0:?} is empty or contains a NUL byte")]
    BadPath(PathBuf),
    #[error("socket {0:?} is used by more than one device")]
    DuplicateSocket(PathBuf),
    #[error("guest name {0:?} must be 1-64 characters of [A-Za-z0-9._-]")]
    BadName(String),
    #[error("cluster has no nodes")]
    NoNodes,
    #[error("cluster has two nodes named {0:?}")]
    DuplicateNodeName(String),
    #[error("cannot read topology file {path:?}: {message}")]
    Read { path: PathBuf, message: String },
    #[error("invalid topology TOML: {0}")]
    Toml(String),
}

/// One guest (VM): its NUMA nodes, each with CPUs, memory and devices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    /// Guest name (QEMU `-name`); also the node name in a cluster.
    #[serde(default = "default_name")]
    pub name: String,
    /// NUMA node `i` of the guest is `numa_nodes[i]`.
    pub numa_nodes: Vec<NumaNode>,
}

fn default_name() -> String {
    "mock-accel".to_owned()
}

/// One guest NUMA node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NumaNode {
    /// vCPUs on this node (0 makes a memory-only node).
    pub cpus: u32,
    /// Guest RAM on this node, backed by a shared memfd so device servers can map it.
    pub memory_mib: u64,
    /// mock-accel PFs attached to this node's PCIe expander bus, each on its own root port.
    #[serde(default)]
    pub devices: Vec<DeviceSpec>,
}

/// One physical function and its virtual functions, each served on its own vfio-user socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceSpec {
    /// vfio-user socket of the PF (function 0 of its slot).
    pub socket: PathBuf,
    /// vfio-user sockets of the VFs (functions 1.. of the PF's slot; DESIGN.md §5).
    #[serde(default)]
    pub vfs: Vec<PathBuf>,
    /// UUID or label (at most 16 printable ASCII bytes) the PF reports; launchers that start
    /// the device servers fall back to a pattern such as `NODE1-NUMA0-PF` without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    /// UUIDs or labels of the VFs, in `vfs` order (may be shorter than `vfs`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vf_uuids: Vec<String>,
}

/// Several guests ("nodes" of a test cluster), each with its own topology.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    pub nodes: Vec<Topology>,
}

impl Topology {
    /// Parse a topology from TOML text (not validated; see [`Topology::validate`]).
    pub fn from_toml(text: &str) -> Result<Self, TopologyError> {
        toml::from_str(text).map_err(|e| TopologyError::Toml(one_line(&e.to_string())))
    }

    /// Read, parse and validate a topology file.
    pub fn load(path: &Path) -> Result<Self, TopologyError> {
        let topology = Self::from_toml(&read(path)?)?;
        topology.validate()?;
        Ok(topology)
    }

    /// Total vCPUs over all NUMA nodes.
    pub fn total_cpus(&self) -> u64 {
        self.numa_nodes.iter().map(|n| u64::from(n.cpus)).sum()
    }

    /// Total guest RAM in MiB over all NUMA nodes.
    pub fn total_memory_mib(&self) -> u64 {
        self.numa_nodes
            .iter()
            .fold(0u64, |acc, n| acc.saturating_add(n.memory_mib))
    }

    /// Every vfio-user socket the guest connects to, PFs and VFs, in command-line order.
    pub fn sockets(&self) -> impl Iterator<Item = &Path> {
        self.numa_nodes
            .iter()
            .flat_map(|n| n.devices.iter())
            .flat_map(|d| {
                std::iter::once(d.socket.as_path()).chain(d.vfs.iter().map(|v| v.as_path()))
            })
    }

    /// Check every rule the command-line builder relies on; the first violation is returned.
    pub fn validate(&self) -> Result<(), TopologyError> {
        validate_name(&self.name)?;
        if self.numa_nodes.is_empty() {
            return Err(TopologyError::NoNumaNodes);
        }
        if self.numa_nodes.len() > MAX_NUMA_NODES {
            return Err(TopologyError::TooManyNumaNodes(self.numa_nodes.len()));
        }
        if self.total_cpus() == 0 {
            return Err(TopologyError::NoCpus);
        }
        for (numa, node) in self.numa_nodes.iter().enumerate() {
            if node.memory_mib == 0 {
                return Err(TopologyError::NoMemory { numa });
            }
            if node.devices.len() > MAX_DEVICES_PER_NUMA_NODE {
                return Err(TopologyError::TooManyDevices {
                    numa,
                    count: node.devices.len(),
                });
            }
            for (device, spec) in node.devices.iter().enumerate() {
                if spec.vfs.len() > MAX_VFS_PER_DEVICE {
                    return Err(TopologyError::TooManyVfs {
                        numa,
                        device,
                        count: spec.vfs.len(),
                    });
                }
            }
        }
        let mut seen = HashSet::new();
        for socket in self.sockets() {
            check_socket_path(socket)?;
            if !seen.insert(socket) {
                return Err(TopologyError::DuplicateSocket(socket.to_path_buf()));
            }
        }
        Ok(())
    }
}

impl Cluster {
    /// Parse a cluster from TOML text (`[[nodes]]` tables holding topologies; not validated).
    pub fn from_toml(text: &str) -> Result<Self, TopologyError> {
        toml::from_str(text).map_err(|e| TopologyError::Toml(one_line(&e.to_string())))
    }

    /// Read, parse and validate a cluster file.
    pub fn load(path: &Path) -> Result<Self, TopologyError> {
        let cluster = Self::from_toml(&read(path)?)?;
        cluster.validate()?;
        Ok(cluster)
    }

    /// Validate every node, and that node names and sockets are unique across the cluster.
    pub fn validate(&self) -> Result<(), TopologyError> {
        if self.nodes.is_empty() {
            return Err(TopologyError::NoNodes);
        }
        let mut names = HashSet::new();
        let mut sockets = HashSet::new();
        for node in &self.nodes {
            node.validate()?;
            if !names.insert(node.name.as_str()) {
                return Err(TopologyError::DuplicateNodeName(node.name.clone()));
            }
            for socket in node.sockets() {
                if !sockets.insert(socket) {
                    return Err(TopologyError::DuplicateSocket(socket.to_path_buf()));
                }
            }
        }
        Ok(())
    }
}

/// Check that `path` can be a Unix socket address: UTF-8 (it goes into QEMU's JSON), no NUL,
/// and short enough for `sun_path` with its terminating NUL.
pub fn check_socket_path(path: &Path) -> Result<(), TopologyError> {
    let text = path_str(path)?;
    if text.len() > SUN_PATH_LEN - 1 {
        return Err(TopologyError::SocketPathTooLong {
            path: path.to_path_buf(),
            len: text.len(),
        });
    }
    Ok(())
}

/// `path` as UTF-8 text, rejecting empty paths and NUL bytes.
pub(crate) fn path_str(path: &Path) -> Result<&str, TopologyError> {
    let text = path
        .to_str()
        .ok_or_else(|| TopologyError::NonUtf8Path(path.to_path_buf()))?;
    if text.is_empty() || text.contains('\0') {
        return Err(TopologyError::BadPath(path.to_path_buf()));
    }
    Ok(text)
}

fn validate_name(name: &str) -> Result<(), TopologyError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(TopologyError::BadName(name.to_owned()))
    }
}

fn read(path: &Path) -> Result<String, TopologyError> {
    // Topology files are small; refuse anything that is clearly not one.
    const MAX_TOPOLOGY_BYTES: u64 = 1 << 20;
    let meta = std::fs::metadata(path).map_err(|e| TopologyError::Read {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    if meta.len() > MAX_TOPOLOGY_BYTES {
        return Err(TopologyError::Read {
            path: path.to_path_buf(),
            message: format!(
                "file is {} bytes, more than {MAX_TOPOLOGY_BYTES}",
                meta.len()
            ),
        });
    }
    std::fs::read_to_string(path).map_err(|e| TopologyError::Read {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]
mod tests {
    use super::*;

    fn one_node(devices: Vec<DeviceSpec>) -> Topology {
        Topology {
            name: "t".into(),
            numa_nodes: vec![NumaNode {
                cpus: 1,
                memory_mib: 128,
                devices,
            }],
        }
    }

    fn dev(socket: &str) -> DeviceSpec {
        DeviceSpec {
            socket: socket.into(),
            vfs: vec![],
            uuid: None,
            vf_uuids: vec![],
        }
    }

    #[test]
    fn socket_path_of_107_bytes_fits_sun_path() {
        let path = format!("/{}", "a".repeat(106));
        assert_eq!(path.len(), 107);
        assert_eq!(one_node(vec![dev(&path)]).validate(), Ok(()));
    }

    #[test]
    fn socket_path_of_108_bytes_is_rejected_with_its_length() {
        let path = format!("/{}", "a".repeat(107));
        let err = one_node(vec![dev(&path)]).validate().unwrap_err();
        assert_eq!(
            err,
            TopologyError::SocketPathTooLong {
                path: path.clone().into(),
                len: 108
            }
        );
        let message = err.to_string();
        assert!(message.contains("108 bytes") && message.contains("at most 107"));
        assert!(!message.contains('\n'));
    }

    #[test]
    fn vf_socket_paths_are_checked_too() {
        let mut d = dev("/tmp/pf.sock");
        d.vfs.push(format!("/{}", "v".repeat(200)).into());
        assert!(matches!(
            one_node(vec![d]).validate(),
            Err(TopologyError::SocketPathTooLong { len: 201, .. })
        ));
    }

    #[test]
    fn at_least_one_numa_node_is_required() {
        let t = Topology {
            name: "t".into(),
            numa_nodes: vec![],
        };
        assert_eq!(t.validate(), Err(TopologyError::NoNumaNodes));
    }

    #[test]
    fn at_least_one_cpu_is_required_but_memory_only_nodes_are_fine() {
        let mut t = one_node(vec![]);
        t.numa_nodes[0].cpus = 0;
        assert_eq!(t.validate(), Err(TopologyError::NoCpus));
        t.numa_nodes.push(NumaNode {
            cpus: 2,
            memory_mib: 64,
            devices: vec![],
        });
        assert_eq!(t.validate(), Ok(()));
    }

    #[test]
    fn every_numa_node_needs_memory() {
        let mut t = one_node(vec![]);
        t.numa_nodes[0].memory_mib = 0;
        assert_eq!(t.validate(), Err(TopologyError::NoMemory { numa: 0 }));
    }

    #[test]
    fn a_socket_serves_one_device_only() {
        let mut d = dev("/tmp/a.sock");
        d.vfs.push("/tmp/a.sock".into());
        assert_eq!(
            one_node(vec![d]).validate(),
            Err(TopologyError::DuplicateSocket("/tmp/a.sock".into()))
        );
    }

    #[test]
    fn vfs_are_limited_to_the_functions_of_one_slot() {
        let mut d = dev("/tmp/pf.sock");
        d.vfs = (0..8).map(|i| format!("/tmp/vf{i}.sock").into()).collect();
        assert_eq!(
            one_node(vec![d]).validate(),
            Err(TopologyError::TooManyVfs {
                numa: 0,
                device: 0,
                count: 8
            })
        );
    }

    #[test]
    fn devices_per_numa_node_are_limited_by_the_bus_range() {
        let devices = (0..16).map(|i| dev(&format!("/tmp/d{i}.sock"))).collect();
        assert_eq!(
            one_node(devices).validate(),
            Err(TopologyError::TooManyDevices { numa: 0, count: 16 })
        );
    }

    #[test]
    fn names_are_restricted_to_safe_characters() {
        let mut t = one_node(vec![]);
        t.name = "a,b".into();
        assert!(matches!(t.validate(), Err(TopologyError::BadName(_))));
    }

    #[test]
    fn toml_round_trip_with_defaults() {
        let t = Topology::from_toml(
            r#"
            [[numa_nodes]]
            cpus = 1
            memory_mib = 256
            [[numa_nodes.devices]]
            socket = "/tmp/pf.sock"
            vfs = ["/tmp/vf0.sock"]
            [[numa_nodes]]
            cpus = 1
            memory_mib = 256
            "#,
        )
        .unwrap();
        assert_eq!(t.name, "mock-accel");
        assert_eq!(t.numa_nodes.len(), 2);
        assert_eq!(t.numa_nodes[0].devices[0].vfs.len(), 1);
        assert!(t.numa_nodes[1].devices.is_empty());
        assert_eq!(t.validate(), Ok(()));
    }

    #[test]
    fn unknown_toml_keys_are_rejected_on_one_line() {
        let err = Topology::from_toml("numa_nodes = []\nbogus = 1\n").unwrap_err();
        assert!(matches!(err, TopologyError::Toml(_)));
        assert!(err.to_string().contains("bogus"));
        assert!(!err.to_string().contains('\n'));
    }

    #[test]
    fn cluster_node_names_and_sockets_are_unique() {
        let a = one_node(vec![dev("/tmp/a.sock")]);
        let mut b = a.clone();
        assert_eq!(
            Cluster {
                nodes: vec![a.clone(), b.clone()]
            }
            .validate(),
            Err(TopologyError::DuplicateNodeName("t".into()))
        );
        b.name = "u".into();
        assert_eq!(
            Cluster {
                nodes: vec![a.clone(), b.clone()]
            }
            .validate(),
            Err(TopologyError::DuplicateSocket("/tmp/a.sock".into()))
        );
        b.numa_nodes[0].devices[0].socket = "/tmp/b.sock".into();
        assert_eq!(Cluster { nodes: vec![a, b] }.validate(), Ok(()));
    }
}
