//! `mock-accel-dra`: the Kubernetes Dynamic Resource Allocation driver for mock-accel devices.
//!
//! One process per node (`mock-accel-dra kubelet-plugin`, a DaemonSet) does everything:
//! - [`discovery`] reads `/sys/class/mock-accel/*` (the guest driver's class devices);
//! - [`publish`] keeps this node's `resource.k8s.io/v1` ResourceSlices in step with sysfs
//!   (pool = node name, owner = the Node; [`slices`] builds them);
//! - [`plugin`] registers with the kubelet and serves NodePrepareResources /
//!   NodeUnprepareResources (DRA v1 and v1beta1) over Unix sockets, writing sysfs `status`,
//!   CDI specs ([`cdi`]) and a checkpoint.
//!
//! There is no cluster-wide controller: the kubelet deletes slices of its node when a
//! driver's plugin goes away, so the per-node plugin must own them (DESIGN.md §6).
//!
//! ```
//! let dir = tempfile::tempdir()?;
//! dra::discovery::write_fixture(dir.path(), 2, 2, 2)?; // 2 NUMA nodes, 2 PFs, 2 VFs each
//! let devices = dra::discovery::scan(dir.path())?;
//! assert_eq!(devices.len(), 6);
//! let slices = dra::slices::build_slices(
//!     &dra::slices::Pool { driver: "mock-accel.example.com", node_name: "n1", node_uid: "u", generation: 1 },
//!     &devices,
//! );
//! assert_eq!(slices[0]["spec"]["devices"][1]["attributes"]["physfn"]["string"], "mock0");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod cdi;
pub mod discovery;
pub mod plugin;
pub mod publish;
pub mod serve;
pub mod slices;
