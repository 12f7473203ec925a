//! mock-accel DRA driver (`resource.k8s.io/v1`, Kubernetes >= 1.34).
//!
//! The binary `mock-accel-dra kubelet-plugin` runs once per node. It
//! 1. discovers devices under `<sysfs root>/sys/class/mock-accel/*` ([`sysfs`]),
//! 2. publishes its node's pool (pool = node name, owner = Node) as ResourceSlices of at most
//!    128 devices with server-side apply ([`slices`], [`publish`]),
//! 3. serves the kubelet's plugin-registration and DRA `v1`/`v1beta1` gRPC services over Unix
//!    sockets ([`grpc`]), preparing claims by writing `status`, a CDI spec per claim and an
//!    atomic checkpoint ([`prepare`], [`cdi`]).
//!
//! There is no cluster-wide controller: the kubelet deletes slices of its node when a plugin
//! goes away, so the node's own plugin must publish them (DESIGN.md §6).
//!
//! ```
//! # fn main() -> std::io::Result<()> {
//! let root = tempfile::tempdir()?;
//! dra::fixture::write_basic(root.path())?;
//! let scan = dra::sysfs::scan(root.path());
//! let node = dra::slices::NodeRef { name: "node1".into(), uid: "u".into() };
//! let slices = dra::slices::build_slices("mock-accel.example.com", &node, &scan.devices, 1);
//! assert_eq!(slices[0].spec.devices.as_ref().map(Vec::len), Some(6));
//! # Ok(()) }
//! ```

pub mod authority;
pub mod cdi;
pub mod fixture;
pub mod fuzzing;
pub mod grpc;
pub mod prepare;
pub mod publish;
pub mod slices;
pub mod sysfs;

/// Default driver name.
pub const DEFAULT_DRIVER: &str = "mock-accel.example.com";
