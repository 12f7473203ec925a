//! Discovery of mock-accel devices under `<root>/sys/class/mock-accel/*` and status writes.
//!
//! Every read is bounded ([`MAX_ATTR_BYTES`]); a device whose attributes are missing or garbled
//! is reported in [`Scan::skipped`] (and logged) while the other devices are still returned.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Largest attribute file we read (sysfs attributes are at most one page).
pub const MAX_ATTR_BYTES: u64 = 4096;
/// Most class entries we look at in one scan (bounds memory on a hostile sysfs root).
pub const MAX_DEVICES: usize = 65_536;

/// Kind of PCI function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum DeviceType {
    /// Physical function.
    Pf,
    /// Virtual function (emulated SR-IOV, DESIGN.md §5).
    Vf,
}

impl DeviceType {
    /// Attribute value published in ResourceSlices.
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceType::Pf => "pf",
            DeviceType::Vf => "vf",
        }
    }
}

/// One device as read from sysfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccelDevice {
    /// Class entry name, e.g. `mock0` or `mock0_vf1`.
    pub name: String,
    /// Device UUID string.
    pub uuid: String,
    /// Device memory in bytes.
    pub memory_bytes: u64,
    /// Capability bits.
    pub capabilities: u32,
    /// Current status register value (0 free, 1 allocated).
    pub status: u32,
    /// NUMA node; `None` when the kernel reports -1.
    pub numa_node: Option<i64>,
    /// PCI address (BDF with domain), e.g. `0000:11:00.0`.
    pub pci_address: String,
    /// PCIe root complex, e.g. `pci0000:10`.
    pub pcie_root: Option<String>,
    /// PF or VF.
    pub device_type: DeviceType,
    /// For a VF: the PF's class name (or its PCI address when no PF entry exists).
    pub physfn: Option<String>,
}

/// Why one device could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SysfsError {
    /// I/O error on a path.
    #[error("{path}: {source}")]
    Io {
        /// Offending path.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// Content did not parse.
    #[error("{path}: invalid value {value:?}: {why}")]
    Invalid {
        /// Offending path.
        path: PathBuf,
        /// Value (truncated).
        value: String,
        /// Reason.
        why: &'static str,
    },
    /// The device name is not a safe single path component.
    #[error("invalid device name {0:?}")]
    BadName(String),
}

/// Result of a scan: good devices sorted by name, plus the skipped entries with reasons.
#[derive(Debug, Default)]
pub struct Scan {
    /// Devices that parsed.
    pub devices: Vec<AccelDevice>,
    /// Entries skipped, with the reason.
    pub skipped: Vec<(String, String)>,
}

/// Class directory under a sysfs root.
pub fn class_dir(root: &Path) -> PathBuf {
    root.join("sys/class/mock-accel")
}

/// Directory of one device under the sysfs root.
pub fn device_dir(root: &Path, name: &str) -> Result<PathBuf, SysfsError> {
    if !valid_name(name) {
        return Err(SysfsError::BadName(name.chars().take(64).collect()));
    }
    Ok(class_dir(root).join(name))
}

/// A device name is one path component of safe characters, at most 64 bytes.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SysfsError + '_ {
    move |source| SysfsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Reads at most [`MAX_ATTR_BYTES`] of an attribute, trimmed.
pub fn read_attr(path: &Path) -> Result<String, SysfsError> {
    let f = fs::File::open(path).map_err(io(path))?;
    let mut buf = Vec::with_capacity(64);
    f.take(MAX_ATTR_BYTES)
        .read_to_end(&mut buf)
        .map_err(io(path))?;
    let s = String::from_utf8(buf).map_err(|_| SysfsError::Invalid {
        path: path.to_path_buf(),
        value: String::new(),
        why: "not UTF-8",
    })?;
    Ok(s.trim().to_string())
}

fn invalid(path: &Path, value: &str, why: &'static str) -> SysfsError {
    SysfsError::Invalid {
        path: path.to_path_buf(),
        value: value.chars().take(64).collect(),
        why,
    }
}

/// Parses decimal or `0x` hexadecimal.
pub fn parse_u64(s: &str) -> Option<u64> {
    let s = s.trim();
    if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        u64::from_str_radix(h, 16).ok()
    } else {
        s.parse().ok()
    }
}

fn read_u64(dir: &Path, attr: &str) -> Result<u64, SysfsError> {
    let p = dir.join(attr);
    let v = read_attr(&p)?;
    parse_u64(&v).ok_or_else(|| invalid(&p, &v, "not an unsigned integer"))
}

/// `dddd:bb:dd.f` with hex digits.
pub fn is_pci_address(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 12
        && b[4] == b':'
        && b[7] == b':'
        && b[10] == b'.'
        && b.iter()
            .enumerate()
            .all(|(i, c)| matches!(i, 4 | 7 | 10) || c.is_ascii_hexdigit())
}

/// The `uuid` attribute is printed back exactly as the device was configured: a canonical UUID
/// or a label such as `NODE1-NUMA0-PF` (DESIGN.md §3). We accept 1-64 printable, non-space
/// ASCII characters (64 is the ResourceSlice string attribute limit).
fn is_uuid(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|c| c.is_ascii_graphic())
}

/// Reads one device (without resolving `physfn` names to PF class names).
pub fn read_device(root: &Path, name: &str) -> Result<AccelDevice, SysfsError> {
    let dir = device_dir(root, name)?;
    let uuid_path = dir.join("uuid");
    let uuid = read_attr(&uuid_path)?;
    if !is_uuid(&uuid) {
        return Err(invalid(&uuid_path, &uuid, "not 1-64 printable characters"));
    }
    let memory_bytes = read_u64(&dir, "memory_size")?;
    let caps = read_u64(&dir, "capabilities")?;
    let capabilities = u32::try_from(caps)
        .map_err(|_| invalid(&dir.join("capabilities"), "", "exceeds 32 bits"))?;
    let status = u32::try_from(read_u64(&dir, "status")?)
        .map_err(|_| invalid(&dir.join("status"), "", "exceeds 32 bits"))?;
    let numa_path = dir.join("numa_node");
    let numa_raw = read_attr(&numa_path)?;
    let numa: i64 = numa_raw
        .parse()
        .map_err(|_| invalid(&numa_path, &numa_raw, "not an integer"))?;
    if !(-1..=4095).contains(&numa) {
        return Err(invalid(&numa_path, &numa_raw, "out of range"));
    }
    let numa_node = (numa >= 0).then_some(numa);

    let dev_link = dir.join("device");
    let pci_dir = fs::canonicalize(&dev_link).map_err(io(&dev_link))?;
    let pci_address = pci_dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_string();
    if !is_pci_address(&pci_address) {
        return Err(invalid(
            &dev_link,
            &pci_address,
            "link target is not a PCI address",
        ));
    }
    let pcie_root = pci_dir.components().find_map(|c| {
        let s = c.as_os_str().to_str()?;
        (s.starts_with("pci") && s.len() > 3 && s[3..].contains(':')).then(|| s.to_string())
    });

    // A VF is recognised by a `physfn` link on its PCI device (PCI core style) or a `physfn`
    // attribute/link in its class directory (our guest driver's emulated SR-IOV).
    let physfn = physfn_of(&dir, &pci_dir)?;
    let device_type = if physfn.is_some() {
        DeviceType::Vf
    } else {
        DeviceType::Pf
    };
    Ok(AccelDevice {
        name: name.to_string(),
        uuid,
        memory_bytes,
        capabilities,
        status,
        numa_node,
        pci_address,
        pcie_root,
        device_type,
        physfn,
    })
}

/// Returns the PF reference (PCI address or class name) of a VF, `None` for a PF.
fn physfn_of(class_dev: &Path, pci_dir: &Path) -> Result<Option<String>, SysfsError> {
    for cand in [pci_dir.join("physfn"), class_dev.join("physfn")] {
        let meta = match fs::symlink_metadata(&cand) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io(&cand)(e)),
        };
        let value = if meta.file_type().is_symlink() {
            let t = fs::read_link(&cand).map_err(io(&cand))?;
            t.file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_string()
        } else {
            read_attr(&cand)?
        };
        if value.is_empty() {
            // An empty attribute means "no PF": this is a PF.
            return Ok(None);
        }
        if !(is_pci_address(&value) || valid_name(&value)) {
            return Err(invalid(&cand, &value, "not a PCI address or device name"));
        }
        return Ok(Some(value));
    }
    Ok(None)
}

/// Scans the class directory. Never fails as a whole when the directory exists; a missing class
/// directory yields an empty scan (the module may not be loaded yet).
pub fn scan(root: &Path) -> Scan {
    let dir = class_dir(root);
    let mut out = Scan::default();
    let rd = match fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) => {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %dir.display(), error = %e, "cannot read class directory");
            }
            return out;
        }
    };
    let mut names = Vec::new();
    for entry in rd.take(MAX_DEVICES) {
        match entry {
            Ok(e) => match e.file_name().into_string() {
                Ok(n) => names.push(n),
                Err(n) => out
                    .skipped
                    .push((n.to_string_lossy().into_owned(), "non-UTF-8 name".into())),
            },
            Err(e) => tracing::warn!(error = %e, "class directory entry unreadable"),
        }
    }
    names.sort();
    for name in names {
        match read_device(root, &name) {
            Ok(d) => out.devices.push(d),
            Err(e) => {
                tracing::warn!(device = %name, error = %e, "skipping garbled device");
                out.skipped.push((name, e.to_string()));
            }
        }
    }
    // Resolve VF physfn values given as PCI addresses to the PF's class name when we know it.
    let by_pci: std::collections::HashMap<String, String> = out
        .devices
        .iter()
        .filter(|d| d.device_type == DeviceType::Pf)
        .map(|d| (d.pci_address.clone(), d.name.clone()))
        .collect();
    for d in &mut out.devices {
        if let Some(p) = &d.physfn {
            if let Some(n) = by_pci.get(p) {
                d.physfn = Some(n.clone());
            }
        }
    }
    out
}

/// Writes the status register of a device (`0` free, `1` allocated).
pub fn write_status(root: &Path, name: &str, value: u32) -> Result<(), SysfsError> {
    let p = device_dir(root, name)?.join("status");
    // sysfs attributes must be opened for writing without O_CREAT/O_TRUNC semantics mattering;
    // OpenOptions::write without create works for both sysfs and the file fixtures.
    let mut f = fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .map_err(io(&p))?;
    use std::io::Write;
    f.write_all(format!("{value}\n").as_bytes())
        .map_err(io(&p))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixture;

    #[test]
    fn scan_reads_every_attribute_of_the_basic_layout() {
        let t = tempfile::tempdir().expect("tmp");
        fixture::write_basic(t.path()).expect("fixture");
        let s = scan(t.path());
        assert!(s.skipped.is_empty(), "{:?}", s.skipped);
        let names: Vec<_> = s.devices.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "mock0",
                "mock0_vf0",
                "mock0_vf1",
                "mock1",
                "mock1_vf0",
                "mock1_vf1"
            ]
        );
        let vf = &s.devices[2];
        assert_eq!(vf.pci_address, "0000:11:00.2");
        assert_eq!(vf.pcie_root.as_deref(), Some("pci0000:10"));
        assert_eq!(vf.device_type, DeviceType::Vf);
        assert_eq!(vf.physfn.as_deref(), Some("mock0"));
        let pf1 = &s.devices[3];
        assert_eq!(pf1.numa_node, Some(1));
        assert_eq!(pf1.pcie_root.as_deref(), Some("pci0000:20"));
        assert_eq!(pf1.device_type, DeviceType::Pf);
        assert_eq!(pf1.capabilities, 1);
    }

    #[test]
    fn garbled_entry_is_skipped_and_the_others_survive() {
        let t = tempfile::tempdir().expect("tmp");
        fixture::write_basic(t.path()).expect("fixture");
        let d = class_dir(t.path()).join("mock1_vf0");
        fs::write(d.join("memory_size"), "lots").expect("write");
        // Oversized attribute: only the bounded prefix is read, which is not a UUID.
        fs::write(
            class_dir(t.path()).join("mock0_vf1/uuid"),
            vec![b'a'; 1 << 20],
        )
        .expect("w");
        let s = scan(t.path());
        assert_eq!(s.devices.len(), 4);
        let skipped: Vec<_> = s.skipped.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(skipped, ["mock0_vf1", "mock1_vf0"]);
    }

    #[test]
    fn physfn_attribute_in_the_class_directory_marks_a_vf() {
        let t = tempfile::tempdir().expect("tmp");
        fixture::write_basic(t.path()).expect("fixture");
        let pci = t
            .path()
            .join("sys/devices/pci0000:20/0000:20:00.0/0000:21:00.1");
        fs::remove_file(pci.join("physfn")).expect("rm link");
        fs::write(class_dir(t.path()).join("mock1_vf0/physfn"), "mock1\n").expect("attr");
        // A PF's empty physfn attribute means "no PF".
        fs::write(class_dir(t.path()).join("mock1/physfn"), "\n").expect("attr");
        let s = scan(t.path());
        let vf = s
            .devices
            .iter()
            .find(|d| d.name == "mock1_vf0")
            .expect("vf");
        assert_eq!(
            (vf.device_type, vf.physfn.as_deref()),
            (DeviceType::Vf, Some("mock1"))
        );
        let pf = s.devices.iter().find(|d| d.name == "mock1").expect("pf");
        assert_eq!(
            (pf.device_type, pf.physfn.as_deref()),
            (DeviceType::Pf, None)
        );
    }

    #[test]
    fn missing_class_directory_is_an_empty_scan() {
        let t = tempfile::tempdir().expect("tmp");
        let s = scan(t.path());
        assert!(s.devices.is_empty() && s.skipped.is_empty());
    }

    #[test]
    fn names_that_escape_the_class_directory_are_rejected() {
        assert!(device_dir(Path::new("/"), "../x").is_err());
        assert!(device_dir(Path::new("/"), "a/b").is_err());
        assert!(device_dir(Path::new("/"), "mock0_vf1").is_ok());
    }

    #[test]
    fn status_write_is_visible_in_the_attribute() {
        let t = tempfile::tempdir().expect("tmp");
        fixture::write_basic(t.path()).expect("fixture");
        write_status(t.path(), "mock1", 1).expect("write");
        assert_eq!(read_device(t.path(), "mock1").expect("read").status, 1);
    }
}
