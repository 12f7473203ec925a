//! Discovery of mock-accel devices from the guest driver's sysfs class
//! (`<root>/sys/class/mock-accel/<name>/{uuid,memory_size,capabilities,status,numa_node,device}`).
//!
//! Every value is untrusted text: reads are bounded, parse errors skip the one device with a
//! warning, and the others are still reported.

use std::fs;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

/// Longest attribute read, in bytes (sysfs attributes are at most a page).
const MAX_ATTRIBUTE: u64 = 4096;
/// Most devices one scan reports (a bound on what a garbled tree can make us allocate).
pub const MAX_DEVICES: usize = 65_536;

/// Physical or virtual function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceType {
    Pf,
    Vf,
}

impl DeviceType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pf => "pf",
            Self::Vf => "vf",
        }
    }
}

/// One device as the guest driver shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MockDevice {
    /// Class device name (`mock0`, `mock0_vf1`).
    pub name: String,
    pub uuid: String,
    pub memory_size: u64,
    pub capabilities: u32,
    pub status: u32,
    /// `None` when the kernel reports -1 (no NUMA information).
    pub numa_node: Option<u32>,
    /// PCI address of the function (`0000:11:00.0`), from the `device` link.
    pub pci_address: Option<String>,
    /// The PCI root the function sits under (`pci0000:10`), from the resolved PCI path.
    pub pcie_root: Option<String>,
    pub device_type: DeviceType,
    /// For a VF, the class name of its PF; for a PF, `None`.
    pub physfn: Option<String>,
    /// The class directory (`<root>/sys/class/mock-accel/<name>`).
    pub sysfs_dir: PathBuf,
}

impl MockDevice {
    /// A name valid as a Kubernetes device name (DNS label): `mock0_vf1` → `mock0-vf1`.
    pub fn k8s_name(&self) -> String {
        k8s_name(&self.name)
    }
}

/// DNS-label form of a class device name.
pub fn k8s_name(class_name: &str) -> String {
    class_name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect()
}

/// Why a device entry was skipped.
#[derive(Debug, thiserror::Error)]
pub enum EntryError {
    #[error("{attribute}: {source}")]
    Read {
        attribute: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{attribute}: {value:?} is not a valid value")]
    Parse {
        attribute: &'static str,
        value: String,
    },
    #[error("name {0:?} is not a mock-accel class device name")]
    Name(String),
}

/// Why a scan failed as a whole.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("cannot list {path}: {source}")]
    List {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The class directory under a sysfs root.
pub fn class_dir(sysfs_root: &Path) -> PathBuf {
    sysfs_root.join("sys/class/mock-accel")
}

fn read_attribute(dir: &Path, attribute: &'static str) -> Result<String, EntryError> {
    let file = fs::File::open(dir.join(attribute))
        .map_err(|source| EntryError::Read { attribute, source })?;
    let mut text = String::new();
    file.take(MAX_ATTRIBUTE)
        .read_to_string(&mut text)
        .map_err(|source| EntryError::Read { attribute, source })?;
    Ok(text.trim().to_owned())
}

fn parse_u64(attribute: &'static str, value: &str) -> Result<u64, EntryError> {
    let parsed = match value
        .strip_prefix("0x")
        .or_else(|| value.strip_prefix("0X"))
    {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => value.parse().ok(),
    };
    parsed.ok_or_else(|| EntryError::Parse {
        attribute,
        value: value.chars().take(64).collect(),
    })
}

fn parse_u32(attribute: &'static str, value: &str) -> Result<u32, EntryError> {
    u32::try_from(parse_u64(attribute, value)?).map_err(|_| EntryError::Parse {
        attribute,
        value: value.to_owned(),
    })
}

/// A PCI address `DDDD:BB:DD.F`.
fn is_pci_address(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 12
        && b[4] == b':'
        && b[7] == b':'
        && b[10] == b'.'
        && b.iter()
            .enumerate()
            .all(|(i, c)| matches!(i, 4 | 7 | 10) || c.is_ascii_hexdigit())
}

/// From the resolved `device` link: the PCI address and the `pciDDDD:BB` root above it.
fn pci_location(dir: &Path) -> (Option<String>, Option<String>) {
    let Ok(target) = fs::canonicalize(dir.join("device")) else {
        return (None, None);
    };
    let address = target
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| is_pci_address(n))
        .map(str::to_owned);
    let root = target.components().find_map(|c| match c {
        Component::Normal(n) => n
            .to_str()
            .filter(|n| n.starts_with("pci") && n.len() > 3 && n[3..].contains(':'))
            .map(str::to_owned),
        _ => None,
    });
    (address, root)
}

/// The PF a VF belongs to, as a class name or a PCI address, from (in order) a `physfn`
/// symlink or file in the class directory, or a `device/physfn` PCI link.
fn physfn_reference(dir: &Path) -> Option<String> {
    for candidate in [dir.join("physfn"), dir.join("device/physfn")] {
        if let Ok(target) = fs::read_link(&candidate) {
            return target
                .file_name()
                .and_then(|n| n.to_str())
                .map(str::to_owned);
        }
        if candidate.is_file() {
            if let Ok(text) = read_attribute(dir, "physfn") {
                return Some(text);
            }
        }
    }
    None
}

fn read_device(dir: &Path, name: &str) -> Result<MockDevice, EntryError> {
    if name.is_empty()
        || name.len() > 63
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(EntryError::Name(name.chars().take(64).collect()));
    }
    let uuid = read_attribute(dir, "uuid")?;
    if uuid.is_empty() || uuid.len() > 64 || !uuid.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(EntryError::Parse {
            attribute: "uuid",
            value: uuid.chars().take(64).collect(),
        });
    }
    let memory_size = parse_u64("memory_size", &read_attribute(dir, "memory_size")?)?;
    let capabilities = parse_u32("capabilities", &read_attribute(dir, "capabilities")?)?;
    let status = parse_u32("status", &read_attribute(dir, "status")?)?;
    let numa_text = read_attribute(dir, "numa_node")?;
    let numa_node = match numa_text.parse::<i64>() {
        Ok(n) if n < 0 => None,
        Ok(n) => Some(u32::try_from(n).map_err(|_| EntryError::Parse {
            attribute: "numa_node",
            value: numa_text.clone(),
        })?),
        Err(_) => {
            return Err(EntryError::Parse {
                attribute: "numa_node",
                value: numa_text,
            })
        }
    };
    let (pci_address, pcie_root) = pci_location(dir);
    let physfn = physfn_reference(dir);
    let device_type = if physfn.is_some() || name.contains("_vf") {
        DeviceType::Vf
    } else {
        DeviceType::Pf
    };
    Ok(MockDevice {
        name: name.to_owned(),
        uuid,
        memory_size,
        capabilities,
        status,
        numa_node,
        pci_address,
        pcie_root,
        device_type,
        physfn,
        sysfs_dir: dir.to_owned(),
    })
}

/// Scan `<root>/sys/class/mock-accel`. Entries that cannot be read or parsed are skipped
/// with a warning. A missing class directory means no devices (the module is not loaded).
pub fn scan(sysfs_root: &Path) -> Result<Vec<MockDevice>, ScanError> {
    let class = class_dir(sysfs_root);
    let entries = match fs::read_dir(&class) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(ScanError::List {
                path: class,
                source,
            })
        }
    };
    let mut devices = Vec::new();
    for entry in entries.flatten() {
        if devices.len() >= MAX_DEVICES {
            tracing::warn!(max = MAX_DEVICES, "too many devices; ignoring the rest");
            break;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        match read_device(&entry.path(), &name) {
            Ok(d) => devices.push(d),
            Err(e) => tracing::warn!(device = %name, error = %e, "skipping garbled device entry"),
        }
    }
    // A VF's physfn may name the PF's PCI address: map it to the PF's class name.
    let by_address: Vec<(String, String)> = devices
        .iter()
        .filter_map(|d| d.pci_address.clone().map(|a| (a, d.name.clone())))
        .collect();
    for d in &mut devices {
        if let Some(pf) = &d.physfn {
            if let Some((_, name)) = by_address.iter().find(|(a, _)| a == pf) {
                d.physfn = Some(name.clone());
            }
        }
    }
    devices.sort_by_key(|d| natural_key(&d.name));
    Ok(devices)
}

/// `mock10` after `mock9`.
fn natural_key(name: &str) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let mut text = String::new();
    let mut digits = String::new();
    for c in name.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
        } else {
            if !digits.is_empty() {
                out.push((
                    std::mem::take(&mut text),
                    digits.parse().unwrap_or(u64::MAX),
                ));
                digits.clear();
            }
            text.push(c);
        }
    }
    out.push((text, digits.parse().unwrap_or(0)));
    out
}

/// Write a fixture tree like the guest driver's under `root` (for tests and benchmarks):
/// `count_pfs` PFs spread over `numa_nodes` NUMA nodes, each with `vfs_per_pf` VFs.
pub fn write_fixture(
    root: &Path,
    numa_nodes: u32,
    count_pfs: u32,
    vfs_per_pf: u32,
) -> std::io::Result<()> {
    use std::os::unix::fs::symlink;
    let class = class_dir(root);
    fs::create_dir_all(&class)?;
    for pf in 0..count_pfs {
        let numa = pf % numa_nodes.max(1);
        let root_bus = 0x10 * (numa + 1);
        let bus = root_bus + 1 + pf / numa_nodes.max(1);
        let pci_root = format!("pci0000:{root_bus:02x}");
        let pf_name = format!("mock{pf}");
        let mut functions = vec![(pf_name.clone(), 0u32, None)];
        for vf in 0..vfs_per_pf {
            functions.push((format!("{pf_name}_vf{vf}"), vf + 1, Some(pf_name.clone())));
        }
        for (name, function, parent) in functions {
            let address = format!("0000:{bus:02x}:00.{function}");
            let pci_dir = root.join(format!(
                "sys/devices/{pci_root}/0000:{root_bus:02x}:00.0/{address}"
            ));
            let dev_dir = pci_dir.join("mock-accel").join(&name);
            fs::create_dir_all(&dev_dir)?;
            fs::write(pci_dir.join("numa_node"), format!("{numa}\n"))?;
            let label = match &parent {
                None => format!("NODE1-NUMA{numa}-PF{pf}"),
                Some(_) => format!("N1-NUMA{numa}-VF{}", function - 1),
            };
            fs::write(dev_dir.join("uuid"), format!("{label}\n"))?;
            let memory: u64 = if parent.is_some() { 2 << 30 } else { 16 << 30 };
            fs::write(dev_dir.join("memory_size"), format!("{memory}\n"))?;
            fs::write(dev_dir.join("capabilities"), "0x00000001\n")?;
            fs::write(dev_dir.join("status"), "0\n")?;
            fs::write(dev_dir.join("numa_node"), format!("{numa}\n"))?;
            symlink("../..", dev_dir.join("device"))?;
            if let Some(p) = &parent {
                fs::write(dev_dir.join("physfn"), format!("{p}\n"))?;
            }
            let rel = format!(
                "../../devices/{pci_root}/0000:{root_bus:02x}:00.0/{address}/mock-accel/{name}"
            );
            symlink(rel, class.join(&name))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixture_devices_are_discovered_with_topology() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_fixture(dir.path(), 2, 2, 2).expect("fixture");
        let devices = scan(dir.path()).expect("scan");
        let names: Vec<_> = devices.iter().map(|d| d.name.as_str()).collect();
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
        let pf = &devices[0];
        assert_eq!(pf.device_type, DeviceType::Pf);
        assert_eq!(pf.pci_address.as_deref(), Some("0000:11:00.0"));
        assert_eq!(pf.pcie_root.as_deref(), Some("pci0000:10"));
        assert_eq!(pf.numa_node, Some(0));
        assert_eq!(pf.memory_size, 16 << 30);
        assert_eq!(pf.capabilities, 1);
        let vf = &devices[4];
        assert_eq!(vf.device_type, DeviceType::Vf);
        assert_eq!(vf.physfn.as_deref(), Some("mock1"));
        assert_eq!(vf.numa_node, Some(1));
        assert_eq!(vf.pci_address.as_deref(), Some("0000:21:00.1"));
        assert_eq!(vf.k8s_name(), "mock1-vf0");
    }

    #[test]
    fn garbled_entry_is_skipped_and_others_still_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_fixture(dir.path(), 1, 2, 0).expect("fixture");
        let mock1 = class_dir(dir.path()).join("mock1");
        fs::write(mock1.join("memory_size"), "lots\n").expect("garble");
        fs::create_dir(class_dir(dir.path()).join("bad name!")).expect("bad");
        let devices = scan(dir.path()).expect("scan");
        assert_eq!(
            devices.iter().map(|d| d.name.as_str()).collect::<Vec<_>>(),
            ["mock0"]
        );
    }

    #[test]
    fn huge_attribute_is_read_bounded_and_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_fixture(dir.path(), 1, 1, 0).expect("fixture");
        let uuid = class_dir(dir.path()).join("mock0/uuid");
        fs::write(&uuid, "x".repeat(1 << 20)).expect("huge");
        assert!(scan(dir.path()).expect("scan").is_empty());
    }

    #[test]
    fn missing_class_means_no_devices_and_negative_numa_means_none() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(scan(dir.path()).expect("scan").is_empty());
        write_fixture(dir.path(), 1, 1, 0).expect("fixture");
        fs::write(class_dir(dir.path()).join("mock0/numa_node"), "-1\n").expect("numa");
        assert_eq!(scan(dir.path()).expect("scan")[0].numa_node, None);
    }

    #[test]
    fn physfn_given_as_pci_address_maps_to_the_pf_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_fixture(dir.path(), 1, 1, 1).expect("fixture");
        fs::write(
            class_dir(dir.path()).join("mock0_vf0/physfn"),
            "0000:11:00.0\n",
        )
        .expect("w");
        let devices = scan(dir.path()).expect("scan");
        assert_eq!(devices[1].physfn.as_deref(), Some("mock0"));
    }

    #[test]
    fn pci_address_shape_is_checked() {
        assert!(is_pci_address("0000:11:00.0"));
        assert!(!is_pci_address("0000:11:00"));
        assert!(!is_pci_address("pci0000:10"));
    }
}
