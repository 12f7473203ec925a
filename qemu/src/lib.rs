//! QEMU for mock-accel: turn a guest topology (NUMA nodes with CPUs, memory and mock-accel
//! devices) into a QEMU command line, find a QEMU that supports `vfio-user-pci`, run it, and
//! talk to it over QMP.
//!
//! The layers, from pure to effectful:
//! - [`topology`]: plain data ([`Topology`], [`Cluster`]) loadable from TOML, with validation
//!   (at least one NUMA node, socket paths that fit `sun_path`, ...).
//! - [`command`]: [`build_qemu_args`], a pure function from topology + [`LaunchOptions`] to
//!   arguments, golden-tested (`qemu/tests/golden/`).
//! - [`locate`]: [`QemuInstall::locate`] finds `qemu-system-x86_64` >= 10.1 with
//!   `vfio-user-pci` (`QEMU=`, `PATH`, or the rootfs from `scripts/provision-rootfs.sh`).
//! - [`process`]: [`QemuProcess`] runs it with logs, killed on drop.
//! - [`qmp`]: [`Qmp`], a minimal async QMP client (`query-pci`, HMP `xp`, `quit`).
//! - [`plan`]: a test cluster's guests, device labels and run-directory files (pure).
//! - [`seed`]: cloud-init NoCloud seed images (ISO 9660, pure Rust).
//!
//! The `mock-accel-cluster` binary (`cargo run -p qemu -- up|status|down|logs`) builds on all of
//! these: it starts device servers and one QEMU per node, and keeps their state in a run
//! directory (see `docs/launcher.md`).
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use qemu::{build_qemu_args, LaunchOptions, Qmp, QemuInstall, QemuProcess, Serial, Topology};
//! let topology = Topology::from_toml(r#"
//!     [[numa_nodes]]
//!     cpus = 1
//!     memory_mib = 256
//!     [[numa_nodes.devices]]
//!     socket = "/tmp/mock-accel-0.sock"
//! "#)?;
//! let options = LaunchOptions {
//!     qmp_socket: Some("/tmp/guest-qmp.sock".into()),
//!     serial: Serial::File("/tmp/guest-serial.log".into()),
//!     ..LaunchOptions::default()
//! };
//! let args = build_qemu_args(&topology, &options)?;
//! let install = QemuInstall::locate()?;
//! let _qemu = QemuProcess::spawn(&install, &args, std::path::Path::new("/tmp"))?;
//! let mut qmp = Qmp::connect("/tmp/guest-qmp.sock".as_ref(), std::time::Duration::from_secs(10)).await?;
//! println!("{}", qmp.hmp("info pci").await?);
//! qmp.quit().await?;
//! # Ok(()) }
//! ```
//!
//! Not here: starting device servers and keeping run state; that is the binary's job.

pub mod command;
pub mod locate;
pub mod plan;
pub mod process;
pub mod qmp;
pub mod seed;
pub mod topology;

pub use command::{
    build_qemu_args, pci_functions, Accel, BuildError, DirectBoot, Drive, LaunchOptions,
    PciFunction, Serial, UserNet,
};
pub use locate::{LocateError, QemuInstall, QemuSource, QemuVersion, MIN_VERSION};
pub use process::{QemuProcess, RunError};
pub use qmp::{Qmp, QmpError};
pub use topology::{Cluster, DeviceSpec, NumaNode, Topology, TopologyError};
