//! CDI specs for prepared claims: one JSON spec file per claim, written atomically.
//!
//! Each allocated device becomes a CDI device `<claim-uid>-<device>` of kind
//! `<driver>/device` with:
//! - env: `MOCK_ACCEL_DEVICE`, `MOCK_ACCEL_UUID`, `MOCK_ACCEL_PCI` of the claim's first
//!   device (the seeds' variables), plus `MOCK_ACCEL_DEVICES`, `MOCK_ACCEL_UUIDS`,
//!   `MOCK_ACCEL_PCIS` (comma-separated, every device of the claim, in allocation order) and
//!   `MOCK_ACCEL_DEVICE_COUNT`. Every CDI device of a claim carries the same claim-wide
//!   values, so a container that gets several of them loses nothing when the runtime merges
//!   their env.
//! - a read-only bind mount of the device's sysfs class directory at
//!   `/sys/class/mock-accel/<name>`;
//! - the device node `/dev/<name>` when it exists on the host.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::discovery::MockDevice;

/// The CDI version this spec needs (device nodes, mounts and env are all in 0.3.0; 0.5.0
/// allows the dots in our kind's vendor part without ambiguity for every runtime we target).
pub const CDI_VERSION: &str = "0.5.0";

/// CDI kind for a driver.
pub fn kind(driver: &str) -> String {
    format!("{driver}/device")
}

/// The CDI device name of `device` in claim `claim_uid`.
pub fn device_name(claim_uid: &str, device: &MockDevice) -> String {
    format!("{claim_uid}-{}", device.k8s_name())
}

/// The fully qualified CDI ID (`mock-accel.example.com/device=<uid>-mock0`).
pub fn device_id(driver: &str, claim_uid: &str, device: &MockDevice) -> String {
    format!("{}={}", kind(driver), device_name(claim_uid, device))
}

/// The spec file of a claim.
pub fn spec_path(cdi_root: &Path, driver: &str, claim_uid: &str) -> PathBuf {
    cdi_root.join(format!("{driver}-{claim_uid}.json"))
}

/// The CDI spec for a claim's devices. `dev_root` is where `/dev` is looked up (the sysfs
/// root in tests, `/` on a node).
pub fn spec(driver: &str, claim_uid: &str, devices: &[MockDevice], dev_root: &Path) -> Value {
    let join =
        |f: &dyn Fn(&MockDevice) -> String| devices.iter().map(f).collect::<Vec<_>>().join(",");
    let first = devices.first();
    let mut env = vec![
        format!(
            "MOCK_ACCEL_DEVICE={}",
            first.map(|d| d.name.clone()).unwrap_or_default()
        ),
        format!(
            "MOCK_ACCEL_UUID={}",
            first.map(|d| d.uuid.clone()).unwrap_or_default()
        ),
        format!(
            "MOCK_ACCEL_PCI={}",
            first
                .and_then(|d| d.pci_address.clone())
                .unwrap_or_default()
        ),
        format!("MOCK_ACCEL_DEVICE_COUNT={}", devices.len()),
        format!("MOCK_ACCEL_DEVICES={}", join(&|d| d.name.clone())),
        format!("MOCK_ACCEL_UUIDS={}", join(&|d| d.uuid.clone())),
        format!(
            "MOCK_ACCEL_PCIS={}",
            join(&|d| d.pci_address.clone().unwrap_or_default())
        ),
    ];
    env.sort();
    let cdi_devices: Vec<Value> = devices
        .iter()
        .map(|d| {
            let mut edits = json!({
                "env": env,
                "mounts": [{
                    "hostPath": d.sysfs_dir.display().to_string(),
                    "containerPath": format!("/sys/class/mock-accel/{}", d.name),
                    "options": ["ro", "rbind", "nosuid", "nodev", "noexec"],
                }],
            });
            let node = dev_root.join("dev").join(&d.name);
            if node.exists() {
                edits["deviceNodes"] = json!([{
                    "path": format!("/dev/{}", d.name),
                    "hostPath": node.display().to_string(),
                }]);
            }
            json!({"name": device_name(claim_uid, d), "containerEdits": edits})
        })
        .collect();
    json!({"cdiVersion": CDI_VERSION, "kind": kind(driver), "devices": cdi_devices})
}

/// Write `bytes` to `path` atomically (temporary file in the same directory, fsync, rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::{scan, write_fixture};

    #[test]
    fn multi_device_claim_env_loses_nothing_and_mounts_are_read_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_fixture(dir.path(), 2, 2, 0).expect("fixture");
        let devices = scan(dir.path()).expect("scan");
        std::fs::create_dir_all(dir.path().join("dev")).expect("dev");
        std::fs::write(dir.path().join("dev/mock1"), "").expect("node");
        let s = spec("mock-accel.example.com", "uid1", &devices, dir.path());
        assert_eq!(s["kind"], "mock-accel.example.com/device");
        let d0 = &s["devices"][0];
        assert_eq!(d0["name"], "uid1-mock0");
        let env: Vec<&str> = d0["containerEdits"]["env"]
            .as_array()
            .expect("env")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert!(env.contains(&"MOCK_ACCEL_DEVICES=mock0,mock1"));
        assert!(env.contains(&"MOCK_ACCEL_PCIS=0000:11:00.0,0000:21:00.0"));
        assert!(env.contains(&"MOCK_ACCEL_DEVICE=mock0"));
        assert_eq!(
            d0["containerEdits"]["env"],
            s["devices"][1]["containerEdits"]["env"]
        );
        assert_eq!(d0["containerEdits"]["mounts"][0]["options"][0], "ro");
        assert!(
            d0["containerEdits"].get("deviceNodes").is_none(),
            "no /dev/mock0 on this host"
        );
        assert_eq!(
            s["devices"][1]["containerEdits"]["deviceNodes"][0]["path"],
            "/dev/mock1"
        );
        assert_eq!(
            device_id("mock-accel.example.com", "uid1", &devices[1]),
            "mock-accel.example.com/device=uid1-mock1"
        );
    }

    #[test]
    fn atomic_write_replaces_whole_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("a/b.json");
        write_atomic(&p, b"one").expect("write");
        write_atomic(&p, b"two").expect("write");
        assert_eq!(std::fs::read(&p).expect("read"), b"two");
        let leftovers = std::fs::read_dir(dir.path().join("a"))
            .expect("dir")
            .count();
        assert_eq!(leftovers, 1, "no temporary files left");
    }
}
