//! Finding a QEMU that can run mock-accel devices: `qemu-system-x86_64` >= 10.1 with the
//! `vfio-user-pci` device.
//!
//! Search order ([`QemuInstall::locate`]):
//! 1. `QEMU=/path/to/qemu-system-x86_64` — an explicit choice; if it is unusable that is an
//!    error, never a silent fallback.
//! 2. `qemu-system-x86_64` on `PATH`, if it is new enough and has `vfio-user-pci`.
//! 3. The Debian trixie rootfs made by `scripts/provision-rootfs.sh`:
//!    `$MOCK_ACCEL_ROOTFS`, else the newest complete
//!    `${MOCK_ACCEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mock-accel}/rootfs-trixie-*`.
//!
//! A rootfs QEMU is run without chroot: the rootfs's own dynamic loader starts the binary with
//! the rootfs's libraries (`ld-linux-x86-64.so.2 --library-path ...`), firmware comes from the
//! rootfs through `-L`, and modules through `QEMU_MODULE_DIR`. Socket, log and kernel paths
//! therefore stay host paths and nothing needs bind mounts. The locator runs QEMU twice
//! (`--version`, `-device help`) and blocks while it does (about a second).

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

/// Oldest QEMU with `vfio-user-pci`.
pub const MIN_VERSION: QemuVersion = QemuVersion {
    major: 10,
    minor: 1,
    micro: 0,
};

/// The command that provisions a usable QEMU; every "not found" error names it.
pub const PROVISION_COMMAND: &str = "scripts/provision-rootfs.sh";

const BINARY: &str = "qemu-system-x86_64";

/// Why no usable QEMU was found. Messages are one line and say how to get one.
#[derive(Debug, thiserror::Error)]
pub enum LocateError {
    #[error("QEMU={path:?} is not usable: {reason}; unset QEMU or point it at qemu-system-x86_64 >= {MIN_VERSION} with vfio-user-pci (or run {PROVISION_COMMAND})")]
    Override { path: PathBuf, reason: String },
    #[error("MOCK_ACCEL_ROOTFS={root:?} is not usable: {reason}; run {PROVISION_COMMAND}")]
    RootfsOverride { root: PathBuf, reason: String },
    #[error("no qemu-system-x86_64 >= {MIN_VERSION} with vfio-user-pci found ({searched}); run {PROVISION_COMMAND} (or set QEMU=/path/to/qemu-system-x86_64)")]
    NotFound { searched: String },
}

/// A QEMU version `major.minor.micro`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct QemuVersion {
    pub major: u32,
    pub minor: u32,
    pub micro: u32,
}

impl fmt::Display for QemuVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.micro)
    }
}

impl QemuVersion {
    /// Parse the first line of `qemu-system-x86_64 --version`
    /// ("QEMU emulator version 11.1.3 (Debian 1:11.1.3+ds-1~bpo13+1)").
    pub fn parse_version_output(output: &str) -> Option<Self> {
        let rest = output.lines().next()?.split("version ").nth(1)?;
        let number = rest.split_whitespace().next()?;
        let mut parts = number.split('.').map(|p| {
            let digits: String = p.chars().take_while(char::is_ascii_digit).collect();
            digits.parse::<u32>().ok()
        });
        Some(Self {
            major: parts.next()??,
            minor: parts.next().flatten().unwrap_or(0),
            micro: parts.next().flatten().unwrap_or(0),
        })
    }
}

/// Where a [`QemuInstall`] came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QemuSource {
    /// The `QEMU` environment variable.
    Env,
    /// `PATH`.
    Path,
    /// A provisioned rootfs (its root directory).
    Rootfs(PathBuf),
    /// Given by the caller.
    Explicit,
}

/// A usable QEMU and how to start it.
#[derive(Debug, Clone)]
pub struct QemuInstall {
    binary: PathBuf,
    /// Dynamic loader and library path for a rootfs binary.
    loader: Option<(PathBuf, OsString)>,
    firmware_dirs: Vec<PathBuf>,
    module_dir: Option<PathBuf>,
    version: QemuVersion,
    source: QemuSource,
}

impl QemuInstall {
    /// Find a usable QEMU (see the module docs for the order).
    pub fn locate() -> Result<Self, LocateError> {
        if let Some(path) = std::env::var_os("QEMU").filter(|v| !v.is_empty()) {
            let path = PathBuf::from(path);
            return Self::from_binary(&path)
                .map(|q| q.with_source(QemuSource::Env))
                .map_err(|reason| LocateError::Override { path, reason });
        }
        let mut searched = vec!["QEMU unset".to_owned()];
        match find_in_path(BINARY) {
            Some(path) => match Self::from_binary(&path) {
                Ok(q) => return Ok(q.with_source(QemuSource::Path)),
                Err(reason) => searched.push(format!("PATH: {}: {reason}", path.display())),
            },
            None => searched.push(format!("PATH: no {BINARY}")),
        }
        if let Some(root) = std::env::var_os("MOCK_ACCEL_ROOTFS").filter(|v| !v.is_empty()) {
            let root = PathBuf::from(root);
            return Self::from_rootfs(&root)
                .map_err(|reason| LocateError::RootfsOverride { root, reason });
        }
        let cache = cache_dir();
        match newest_rootfs(&cache) {
            Some(root) => match Self::from_rootfs(&root) {
                Ok(q) => return Ok(q),
                Err(reason) => searched.push(format!("{}: {reason}", root.display())),
            },
            None => searched.push(format!(
                "no complete rootfs-trixie-* in {}",
                cache.display()
            )),
        }
        Err(LocateError::NotFound {
            searched: searched.join("; "),
        })
    }

    /// Use the QEMU binary at `path` (run directly), after checking version and device support.
    /// The error is a short reason.
    pub fn from_binary(path: &Path) -> Result<Self, String> {
        let install = Self {
            binary: path.to_path_buf(),
            loader: None,
            firmware_dirs: Vec::new(),
            module_dir: None,
            version: MIN_VERSION,
            source: QemuSource::Explicit,
        };
        install.probe()
    }

    /// Use the QEMU inside a rootfs made by `scripts/provision-rootfs.sh`, started through the
    /// rootfs's dynamic loader. The error is a short reason.
    pub fn from_rootfs(root: &Path) -> Result<Self, String> {
        if !root.join(".complete").is_file() {
            return Err("rootfs is incomplete (no .complete marker)".to_owned());
        }
        let binary = root.join("usr/bin").join(BINARY);
        let loader = root.join("usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2");
        for needed in [&binary, &loader] {
            if !needed.is_file() {
                return Err(format!("{} is missing", needed.display()));
            }
        }
        let libs = root.join("usr/lib/x86_64-linux-gnu");
        let firmware_dirs = ["usr/share/qemu", "usr/share/seabios", "usr/lib/ipxe/qemu"]
            .iter()
            .map(|d| root.join(d))
            .filter(|d| d.is_dir())
            .collect();
        let install = Self {
            binary,
            loader: Some((loader, libs.into_os_string())),
            firmware_dirs,
            module_dir: Some(root.join("usr/lib/x86_64-linux-gnu/qemu")).filter(|d| d.is_dir()),
            version: MIN_VERSION,
            source: QemuSource::Rootfs(root.to_path_buf()),
        };
        install.probe()
    }

    /// The `qemu-system-x86_64` binary (inside the rootfs for a rootfs install).
    pub fn binary(&self) -> &Path {
        &self.binary
    }

    pub fn version(&self) -> QemuVersion {
        self.version
    }

    pub fn source(&self) -> &QemuSource {
        &self.source
    }

    /// A command that runs this QEMU; append the guest's arguments (e.g. from
    /// [`crate::build_qemu_args`]). Carries the loader, `-L` firmware directories and
    /// `QEMU_MODULE_DIR` a rootfs install needs.
    pub fn command(&self) -> std::process::Command {
        let mut cmd = match &self.loader {
            Some((loader, libs)) => {
                let mut cmd = std::process::Command::new(loader);
                cmd.arg("--library-path").arg(libs).arg(&self.binary);
                cmd
            }
            None => std::process::Command::new(&self.binary),
        };
        for dir in &self.firmware_dirs {
            cmd.arg("-L").arg(dir);
        }
        if let Some(dir) = &self.module_dir {
            cmd.env("QEMU_MODULE_DIR", dir);
        }
        cmd
    }

    /// A command that runs another program installed next to this QEMU (e.g. `qemu-img`),
    /// through the same dynamic loader and libraries for a rootfs install.
    pub fn companion(&self, program: &str) -> std::process::Command {
        let binary = self.binary.with_file_name(program);
        match &self.loader {
            Some((loader, libs)) => {
                let mut cmd = std::process::Command::new(loader);
                cmd.arg("--library-path").arg(libs).arg(binary);
                cmd
            }
            None => std::process::Command::new(binary),
        }
    }

    /// One line for logs: version and where it came from.
    pub fn describe(&self) -> String {
        match &self.source {
            QemuSource::Rootfs(root) => {
                format!("QEMU {} from rootfs {}", self.version, root.display())
            }
            QemuSource::Env => format!("QEMU {} from QEMU={}", self.version, self.binary.display()),
            QemuSource::Path | QemuSource::Explicit => {
                format!("QEMU {} at {}", self.version, self.binary.display())
            }
        }
    }

    fn with_source(mut self, source: QemuSource) -> Self {
        self.source = source;
        self
    }

    /// Fill in the version and check it and `vfio-user-pci` support.
    fn probe(mut self) -> Result<Self, String> {
        let version_text = self.run_probe("--version")?;
        let version = QemuVersion::parse_version_output(&version_text).ok_or_else(|| {
            format!(
                "unrecognised --version output {:?}",
                version_text.lines().next().unwrap_or("")
            )
        })?;
        if version < MIN_VERSION {
            return Err(format!("version {version} is older than {MIN_VERSION}"));
        }
        self.version = version;
        let devices = self.run_probe("-device help")?;
        if !lists_vfio_user_pci(&devices) {
            return Err(format!("version {version} has no vfio-user-pci device"));
        }
        tracing::debug!(qemu = %self.describe(), "found QEMU");
        Ok(self)
    }

    fn run_probe(&self, args: &str) -> Result<String, String> {
        let output = self
            .command()
            .args(args.split(' '))
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", self.binary.display()))?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            return Err(format!(
                "`{args}` failed ({}): {}",
                output.status,
                stderr.lines().next().unwrap_or("")
            ));
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }
}

/// Does `-device help` output list `vfio-user-pci`?
pub fn lists_vfio_user_pci(device_help: &str) -> bool {
    device_help
        .lines()
        .any(|l| l.trim_start().starts_with("name \"vfio-user-pci\""))
}

/// `${MOCK_ACCEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mock-accel}`, as in the provisioning
/// scripts.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("MOCK_ACCEL_CACHE").filter(|v| !v.is_empty()) {
        return dir.into();
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/root/.cache"));
    base.join("mock-accel")
}

/// The most recently completed `rootfs-trixie-*` directory in `cache`.
fn newest_rootfs(cache: &Path) -> Option<PathBuf> {
    std::fs::read_dir(cache)
        .ok()?
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("rootfs-trixie-")
        })
        .filter_map(|e| {
            let marker = e.path().join(".complete");
            let modified = std::fs::metadata(&marker).ok()?.modified().ok()?;
            Some((modified, e.path()))
        })
        .max()
        .map(|(_, path)| path)
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| {
            std::fs::metadata(p)
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]
mod tests {
    use super::*;

    #[test]
    fn version_line_of_debian_backports_parses() {
        let v = QemuVersion::parse_version_output(
            "QEMU emulator version 11.1.3 (Debian 1:11.1.3+ds-1~bpo13+1)\nCopyright ...",
        );
        assert_eq!(
            v,
            Some(QemuVersion {
                major: 11,
                minor: 1,
                micro: 3
            })
        );
    }

    #[test]
    fn release_candidates_and_short_versions_parse() {
        let v = QemuVersion::parse_version_output("QEMU emulator version 10.1.0-rc2").unwrap();
        assert_eq!((v.major, v.minor, v.micro), (10, 1, 0));
        let v = QemuVersion::parse_version_output("QEMU emulator version 9.2").unwrap();
        assert_eq!((v.major, v.minor, v.micro), (9, 2, 0));
        assert!(v < MIN_VERSION);
        assert_eq!(QemuVersion::parse_version_output("something else"), None);
    }

    #[test]
    fn minimum_version_is_10_1() {
        assert!(
            QemuVersion::parse_version_output("QEMU emulator version 10.0.9").unwrap()
                < MIN_VERSION
        );
        assert!(
            QemuVersion::parse_version_output("QEMU emulator version 10.1.0").unwrap()
                >= MIN_VERSION
        );
    }

    #[test]
    fn vfio_user_pci_is_found_in_device_help() {
        let help = "name \"vfio-pci\", bus PCI, desc \"VFIO-based PCI device assignment\"\n\
                    name \"vfio-user-pci\", bus PCI, desc \"VFIO over socket PCI device assignment\"\n";
        assert!(lists_vfio_user_pci(help));
        assert!(!lists_vfio_user_pci("name \"vfio-pci\", bus PCI\n"));
    }

    #[test]
    fn not_found_error_is_one_line_naming_the_provisioning_script() {
        let e = LocateError::NotFound {
            searched: "QEMU unset; PATH: no qemu-system-x86_64".into(),
        };
        let text = e.to_string();
        assert!(text.contains(PROVISION_COMMAND));
        assert!(!text.contains('\n'));
    }

    #[test]
    fn incomplete_rootfs_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let err = QemuInstall::from_rootfs(dir.path()).unwrap_err();
        assert!(err.contains(".complete"));
    }
}
