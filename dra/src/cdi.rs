//! CDI spec files (one per prepared claim) and atomic file writes.
//!
//! Spec: `cdiVersion` 0.5.0, kind `mock-accel.example.com/device`, one CDI device per claim
//! device named `<claimUID>-<device>`. Each device injects `MOCK_ACCEL_DEVICE`,
//! `MOCK_ACCEL_UUID`, `MOCK_ACCEL_PCI` plus the indexed `MOCK_ACCEL_DEVICE_<i>`/`_UUID_<i>`/
//! `_PCI_<i>` (index = position in the claim), a read-only bind mount of its sysfs directory and
//! `/dev/<name>` when that node exists.
//!
//! Where the sysfs directory is mounted: always at `/run/mock-accel/<name>` (named by
//! `MOCK_ACCEL_SYSFS` / `MOCK_ACCEL_SYSFS_<i>`), and additionally at the seeds' path
//! `/sys/class/mock-accel/<name>` only when the driver reads the real sysfs (root `/`). A
//! container's `/sys` is a read-only sysfs: a bind target there must already exist, which it
//! does on a node running the guest driver and never does for a fixture tree (runc then fails
//! the container with "mkdir ... read-only file system", seen on the full-node tier). Spec-wide edits add `MOCK_ACCEL_DEVICES`,
//! `MOCK_ACCEL_UUIDS`, `MOCK_ACCEL_PCIS` (comma-joined, claim order) and
//! `MOCK_ACCEL_DEVICE_COUNT`, so a container holding several devices loses nothing even though
//! the unindexed variables can only name one of them.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::sysfs::AccelDevice;

/// CDI spec version written (the features used are env, deviceNodes, mounts, spec edits).
pub const CDI_VERSION: &str = "0.5.0";

/// Container directory under which each device's sysfs directory is bind-mounted read-only.
pub const SYSFS_MOUNT_DIR: &str = "/run/mock-accel";

/// CDI kind for a driver.
pub fn kind(driver: &str) -> String {
    format!("{driver}/device")
}

/// Fully qualified CDI device ID.
pub fn device_id(driver: &str, name: &str) -> String {
    format!("{}={name}", kind(driver))
}

/// Spec file path for a claim.
pub fn spec_path(cdi_root: &Path, driver: &str, claim_uid: &str) -> PathBuf {
    cdi_root.join(format!("{driver}-claim_{claim_uid}.json"))
}

/// CDI spec document.
#[derive(Debug, Serialize, serde::Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Spec {
    /// Spec version.
    pub cdi_version: String,
    /// `vendor/class`.
    pub kind: String,
    /// Devices.
    pub devices: Vec<CdiDevice>,
    /// Edits applied when any device of this spec is injected.
    #[serde(default)]
    pub container_edits: Edits,
}

/// One CDI device.
#[derive(Debug, Serialize, serde::Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CdiDevice {
    /// Name within the kind.
    pub name: String,
    /// Edits for this device.
    pub container_edits: Edits,
}

/// Container edits.
#[derive(Debug, Default, Serialize, serde::Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Edits {
    /// `KEY=value`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    /// Device nodes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub device_nodes: Vec<DeviceNode>,
    /// Mounts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<Mount>,
}

/// Device node edit.
#[derive(Debug, Serialize, serde::Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DeviceNode {
    /// Path in the container.
    pub path: String,
    /// Path on the host.
    pub host_path: String,
}

/// Mount edit.
#[derive(Debug, Serialize, serde::Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Mount {
    /// Host path.
    pub host_path: String,
    /// Container path.
    pub container_path: String,
    /// Mount options.
    pub options: Vec<String>,
}

/// Builds the spec of one claim. `devices` are in claim order; `sysfs_root` locates host paths.
pub fn build_spec(
    driver: &str,
    claim_uid: &str,
    devices: &[AccelDevice],
    sysfs_root: &Path,
) -> Spec {
    let mut cdi_devices = Vec::with_capacity(devices.len());
    for (i, d) in devices.iter().enumerate() {
        let mut env = vec![
            format!("MOCK_ACCEL_DEVICE={}", d.name),
            format!("MOCK_ACCEL_UUID={}", d.uuid),
            format!("MOCK_ACCEL_PCI={}", d.pci_address),
            format!("MOCK_ACCEL_DEVICE_{i}={}", d.name),
            format!("MOCK_ACCEL_UUID_{i}={}", d.uuid),
            format!("MOCK_ACCEL_PCI_{i}={}", d.pci_address),
        ];
        if let Some(n) = d.numa_node {
            env.push(format!("MOCK_ACCEL_NUMA_{i}={n}"));
        }
        let run_dir = format!("{SYSFS_MOUNT_DIR}/{}", d.name);
        env.push(format!("MOCK_ACCEL_SYSFS={run_dir}"));
        env.push(format!("MOCK_ACCEL_SYSFS_{i}={run_dir}"));
        let class_entry = crate::sysfs::class_dir(sysfs_root).join(&d.name);
        // Bind the resolved directory: the class entry is a symlink into /sys/devices.
        let host_dir = std::fs::canonicalize(&class_entry).unwrap_or(class_entry);
        let host_path = host_dir.to_string_lossy().into_owned();
        let mut targets = vec![run_dir];
        if sysfs_root == Path::new("/") {
            targets.push(format!("/sys/class/mock-accel/{}", d.name));
        }
        let mounts = targets
            .into_iter()
            .map(|container_path| Mount {
                host_path: host_path.clone(),
                container_path,
                options: ["ro", "nosuid", "nodev", "noexec", "rbind"]
                    .map(String::from)
                    .to_vec(),
            })
            .collect();
        // Only reference /dev/<name> when the node exists: a CDI device node that is missing
        // on the host makes the runtime fail the whole container.
        let host_node = sysfs_root.join("dev").join(&d.name);
        let device_nodes = if host_node.exists() {
            vec![DeviceNode {
                path: format!("/dev/{}", d.name),
                host_path: host_node.to_string_lossy().into_owned(),
            }]
        } else {
            Vec::new()
        };
        cdi_devices.push(CdiDevice {
            name: cdi_name(claim_uid, &d.name),
            container_edits: Edits {
                env,
                device_nodes,
                mounts,
            },
        });
    }
    let join =
        |f: &dyn Fn(&AccelDevice) -> String| devices.iter().map(f).collect::<Vec<_>>().join(",");
    Spec {
        cdi_version: CDI_VERSION.into(),
        kind: kind(driver),
        devices: cdi_devices,
        container_edits: Edits {
            env: vec![
                format!("MOCK_ACCEL_DEVICE_COUNT={}", devices.len()),
                format!("MOCK_ACCEL_DEVICES={}", join(&|d| d.name.clone())),
                format!("MOCK_ACCEL_UUIDS={}", join(&|d| d.uuid.clone())),
                format!("MOCK_ACCEL_PCIS={}", join(&|d| d.pci_address.clone())),
            ],
            ..Default::default()
        },
    }
}

/// CDI device name of a claim device (`<claimUID>-<sysfs name with '_' as '-'>`).
pub fn cdi_name(claim_uid: &str, device: &str) -> String {
    format!("{claim_uid}-{}", crate::slices::device_name(device))
}

/// Writes `bytes` to `path` atomically: temp file in the same directory, fsync, rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| std::io::Error::other("path has no parent"))?;
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::Builder::new().prefix(".tmp-").tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Writes a claim's spec file atomically; returns its path.
pub fn write_spec(
    cdi_root: &Path,
    driver: &str,
    claim_uid: &str,
    spec: &Spec,
) -> std::io::Result<PathBuf> {
    let path = spec_path(cdi_root, driver, claim_uid);
    let bytes = serde_json::to_vec_pretty(spec).map_err(std::io::Error::other)?;
    write_atomic(&path, &bytes)?;
    Ok(path)
}

/// Removes a claim's spec file; a missing file is fine.
pub fn remove_spec(cdi_root: &Path, driver: &str, claim_uid: &str) -> std::io::Result<()> {
    match std::fs::remove_file(spec_path(cdi_root, driver, claim_uid)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixture;

    #[test]
    fn multi_device_claim_keeps_every_device_in_env() {
        let t = tempfile::tempdir().expect("tmp");
        fixture::write_basic(t.path()).expect("fixture");
        let scan = crate::sysfs::scan(t.path());
        let devs = vec![scan.devices[1].clone(), scan.devices[2].clone()];
        let spec = build_spec("mock-accel.example.com", "uid-1", &devs, t.path());
        assert_eq!(spec.kind, "mock-accel.example.com/device");
        assert_eq!(spec.devices[0].name, "uid-1-mock0-vf0");
        assert!(spec
            .container_edits
            .env
            .contains(&"MOCK_ACCEL_DEVICES=mock0_vf0,mock0_vf1".to_string()));
        assert!(spec
            .container_edits
            .env
            .contains(&"MOCK_ACCEL_PCIS=0000:11:00.1,0000:11:00.2".to_string()));
        let e1 = &spec.devices[1].container_edits;
        assert!(e1
            .env
            .contains(&"MOCK_ACCEL_DEVICE_1=mock0_vf1".to_string()));
        assert!(e1.env.contains(&"MOCK_ACCEL_PCI=0000:11:00.2".to_string()));
        assert_eq!(e1.mounts[0].container_path, "/run/mock-accel/mock0_vf1");
        assert!(e1
            .env
            .contains(&"MOCK_ACCEL_SYSFS_1=/run/mock-accel/mock0_vf1".to_string()));
        assert_eq!(e1.mounts.len(), 1, "a fixture root gets no /sys target");
        assert!(e1.mounts[0].options.contains(&"ro".to_string()));
        assert!(e1.mounts[0]
            .host_path
            .ends_with("0000:11:00.2/mock-accel/mock0_vf1"));
        assert_eq!(e1.device_nodes[0].path, "/dev/mock0_vf1");
    }

    #[test]
    fn real_sysfs_root_also_mounts_at_the_seeds_sys_class_path() {
        let dev = crate::sysfs::AccelDevice {
            name: "mock0".into(),
            uuid: "NODE1-NUMA0-PF".into(),
            memory_bytes: 1 << 30,
            capabilities: 1,
            status: 0,
            numa_node: Some(0),
            pci_address: "0000:11:00.0".into(),
            pcie_root: Some("pci0000:10".into()),
            device_type: crate::sysfs::DeviceType::Pf,
            physfn: None,
        };
        let spec = build_spec("d.example.com", "u", &[dev], Path::new("/"));
        let targets: Vec<_> = spec.devices[0]
            .container_edits
            .mounts
            .iter()
            .map(|m| m.container_path.as_str())
            .collect();
        assert_eq!(
            targets,
            ["/run/mock-accel/mock0", "/sys/class/mock-accel/mock0"]
        );
    }

    #[test]
    fn device_node_is_omitted_when_missing_on_host() {
        let t = tempfile::tempdir().expect("tmp");
        fixture::write_basic(t.path()).expect("fixture");
        std::fs::remove_file(t.path().join("dev/mock1")).expect("rm");
        let scan = crate::sysfs::scan(t.path());
        let spec = build_spec("d.example.com", "u", &scan.devices[3..4], t.path());
        assert!(spec.devices[0].container_edits.device_nodes.is_empty());
    }

    #[test]
    fn atomic_write_replaces_whole_file_and_leaves_no_temp() {
        let t = tempfile::tempdir().expect("tmp");
        let p = t.path().join("x.json");
        write_atomic(&p, b"first").expect("w");
        write_atomic(&p, b"second").expect("w");
        assert_eq!(std::fs::read(&p).expect("r"), b"second");
        assert_eq!(std::fs::read_dir(t.path()).expect("rd").count(), 1);
    }
}
