//! Shared harness for mock-accel's integration tests against real peers.
//!
//! - [`require_qemu`]: the QEMU under test, or a panic naming `scripts/provision-rootfs.sh`
//!   (tests never skip).
//! - [`TestDir`]: a short scratch directory, so socket paths fit `sun_path`.
//! - [`Guest`]: a QEMU guest built from a [`qemu::Topology`], with QMP, logs, and helpers to
//!   wait for firmware PCI enumeration.
//! - [`Observed`]: wraps a vfio-user device model and records connects, DMA windows and
//!   region accesses, so tests see from the host what crossed the socket.
//! - [`proc_maps`]: which guest RAM memfds a server process has mapped (from `/proc/PID/maps`),
//!   evidence of fd-backed DMA_MAP for any server binary.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use mock_accel_tests::{require_qemu, Guest, TestDir};
//! let dir = TestDir::new("demo")?;
//! let topology = qemu::Topology::from_toml(r#"
//!     [[numa_nodes]]
//!     cpus = 1
//!     memory_mib = 128
//! "#)?;
//! let mut guest = Guest::start(require_qemu(), &topology, dir.path()).await?;
//! println!("{}", guest.qmp.hmp("info pci").await?);
//! guest.quit().await?;
//! # Ok(()) }
//! ```

pub mod control_plane;
pub mod device_bin;
pub mod guest;
pub mod initramfs;
pub mod observed;
pub mod proc_maps;

pub use device_bin::{device_binary, workspace_binary, DeviceProcess};
pub use guest::{vfio_user_warnings, Guest};
pub use observed::{Access, Observations, Observed, ObservedHandle};

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use qemu::QemuInstall;

/// The QEMU the tests run (located once per test binary). Panics with the locator's one-line
/// error, which names `scripts/provision-rootfs.sh`, when there is none.
pub fn require_qemu() -> &'static QemuInstall {
    static QEMU: OnceLock<Result<QemuInstall, String>> = OnceLock::new();
    let found = QEMU.get_or_init(|| QemuInstall::locate().map_err(|e| e.to_string()));
    match found {
        Ok(install) => install,
        Err(message) => panic!("{message}"),
    }
}

/// Log to the test output (`RUST_LOG=debug cargo test ... -- --nocapture`); idempotent.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_test_writer()
        .try_init();
}

/// A scratch directory under `/tmp` (not `$TMPDIR`, which may be long) removed on drop, with
/// short names so Unix socket paths inside it fit `sun_path`. Set `MOCK_ACCEL_KEEP_TEST_DIRS=1`
/// to keep it for inspection.
#[derive(Debug)]
pub struct TestDir {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
}

impl TestDir {
    pub fn new(prefix: &str) -> std::io::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("ma-{prefix}-"))
            .tempdir_in("/tmp")?;
        let path = dir.path().to_path_buf();
        if std::env::var_os("MOCK_ACCEL_KEEP_TEST_DIRS").is_some() {
            let _ = dir.keep();
            return Ok(Self { dir: None, path });
        }
        Ok(Self {
            dir: Some(dir),
            path,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Keep the directory after the test (e.g. when it failed).
    pub fn keep(&mut self) {
        if let Some(dir) = self.dir.take() {
            let _ = dir.keep();
        }
    }
}
