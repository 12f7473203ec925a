//! Pure mapping from discovered devices to `resource.k8s.io/v1` ResourceSlices.
//!
//! One pool per node (pool name = node name, DESIGN.md §6), at most [`MAX_DEVICES_PER_SLICE`]
//! devices per slice, slice names `<node>-<driver-short>-<i>` so a restart reuses them.

use std::collections::BTreeMap;

use k8s_openapi::api::resource::v1::{
    Device, DeviceAttribute, DeviceCapacity, ResourcePool, ResourceSlice, ResourceSliceSpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use crate::sysfs::AccelDevice;

/// API limit on devices per ResourceSlice.
pub const MAX_DEVICES_PER_SLICE: usize = 128;
/// Label carrying the driver name on our slices (for humans and selectors).
pub const DRIVER_LABEL: &str = "mock-accel.example.com/driver";

/// The node that owns the slices.
#[derive(Debug, Clone)]
pub struct NodeRef {
    /// Node name (also the pool name).
    pub name: String,
    /// Node UID (owner reference).
    pub uid: String,
}

/// Deterministic slice name for index `i`.
pub fn slice_name(node: &str, driver: &str, i: usize) -> String {
    let short = driver.split('.').next().unwrap_or(driver);
    format!("{node}-{short}-{i}")
}

fn s(v: &str) -> DeviceAttribute {
    DeviceAttribute {
        string: Some(v.to_string()),
        ..Default::default()
    }
}

fn int(v: i64) -> DeviceAttribute {
    DeviceAttribute {
        int: Some(v),
        ..Default::default()
    }
}

/// Formats bytes as a Kubernetes quantity, using the largest exact binary suffix.
pub fn quantity_bytes(b: u64) -> Quantity {
    for (shift, suffix) in [
        (60, "Ei"),
        (50, "Pi"),
        (40, "Ti"),
        (30, "Gi"),
        (20, "Mi"),
        (10, "Ki"),
    ] {
        if b != 0 && b % (1u64 << shift) == 0 {
            return Quantity(format!("{}{suffix}", b >> shift));
        }
    }
    Quantity(b.to_string())
}

/// One device's ResourceSlice entry.
pub fn to_device(d: &AccelDevice) -> Device {
    let mut a = BTreeMap::new();
    a.insert("uuid".to_string(), s(&d.uuid));
    a.insert("deviceType".to_string(), s(d.device_type.as_str()));
    a.insert("pciAddress".to_string(), s(&d.pci_address));
    if let Some(n) = d.numa_node {
        a.insert("numaNode".to_string(), int(n));
    }
    if let Some(p) = &d.physfn {
        a.insert("physfn".to_string(), s(p));
    }
    a.insert("capabilities".to_string(), int(i64::from(d.capabilities)));
    if let Some(r) = &d.pcie_root {
        a.insert("resource.kubernetes.io/pcieRoot".to_string(), s(r));
    }
    a.insert(
        "resource.kubernetes.io/pciBusID".to_string(),
        s(&d.pci_address),
    );
    let mut c = BTreeMap::new();
    c.insert(
        "memory".to_string(),
        DeviceCapacity {
            value: quantity_bytes(d.memory_bytes),
            ..Default::default()
        },
    );
    Device {
        name: device_name(&d.name),
        attributes: Some(a),
        capacity: Some(c),
        ..Default::default()
    }
}

/// ResourceSlice device names must be DNS labels: `mock0_vf1` becomes `mock0-vf1`.
pub fn device_name(sysfs_name: &str) -> String {
    sysfs_name.to_ascii_lowercase().replace(['_', '.'], "-")
}

/// Builds the slices of one node's pool. `generation` is the pool generation to publish.
pub fn build_slices(
    driver: &str,
    node: &NodeRef,
    devices: &[AccelDevice],
    generation: i64,
) -> Vec<ResourceSlice> {
    let mut devs: Vec<Device> = devices.iter().map(to_device).collect();
    devs.sort_by(|a, b| a.name.cmp(&b.name));
    devs.dedup_by(|a, b| a.name == b.name);
    let chunks: Vec<Vec<Device>> = if devs.is_empty() {
        // One empty slice tells the scheduler the pool exists and is empty.
        vec![Vec::new()]
    } else {
        devs.chunks(MAX_DEVICES_PER_SLICE)
            .map(<[Device]>::to_vec)
            .collect()
    };
    let count = i64::try_from(chunks.len()).unwrap_or(i64::MAX);
    chunks
        .into_iter()
        .enumerate()
        .map(|(i, devices)| ResourceSlice {
            metadata: ObjectMeta {
                name: Some(slice_name(&node.name, driver, i)),
                labels: Some(BTreeMap::from([(
                    DRIVER_LABEL.to_string(),
                    driver.to_string(),
                )])),
                owner_references: Some(vec![OwnerReference {
                    api_version: "v1".into(),
                    kind: "Node".into(),
                    name: node.name.clone(),
                    uid: node.uid.clone(),
                    controller: Some(true),
                    block_owner_deletion: None,
                }]),
                ..Default::default()
            },
            spec: ResourceSliceSpec {
                driver: driver.to_string(),
                node_name: Some(node.name.clone()),
                pool: ResourcePool {
                    name: node.name.clone(),
                    generation,
                    resource_slice_count: count,
                },
                devices: Some(devices),
                ..Default::default()
            },
        })
        .collect()
}

/// True when the published specs carry the same devices as `desired` (generation ignored).
pub fn same_devices(published: &[ResourceSlice], desired: &[ResourceSlice]) -> bool {
    let key = |v: &[ResourceSlice]| {
        let mut k: Vec<(Option<String>, i64, Option<Vec<Device>>)> = v
            .iter()
            .map(|s| {
                (
                    s.metadata.name.clone(),
                    s.spec.pool.resource_slice_count,
                    s.spec.devices.clone(),
                )
            })
            .collect();
        k.sort_by(|a, b| a.0.cmp(&b.0));
        k
    };
    key(published) == key(desired)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixture;

    fn node() -> NodeRef {
        NodeRef {
            name: "node1".into(),
            uid: "11111111-2222-3333-4444-555555555555".into(),
        }
    }

    #[test]
    fn basic_fixture_matches_golden_yaml() {
        let t = tempfile::tempdir().expect("tmp");
        fixture::write_basic(t.path()).expect("fixture");
        let scan = crate::sysfs::scan(t.path());
        let slices = build_slices("mock-accel.example.com", &node(), &scan.devices, 1);
        let got = serde_yaml::to_string(&slices).expect("yaml");
        let golden_path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/golden/slices-basic.yaml"
        );
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::write(golden_path, &got).expect("write golden");
        }
        let want =
            std::fs::read_to_string(golden_path).expect("golden (UPDATE_GOLDEN=1 to create)");
        assert_eq!(got, want);
    }

    #[test]
    fn hand_made_fixture_equals_generated_one() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/sysfs-basic");
        let hand = crate::sysfs::scan(std::path::Path::new(dir));
        assert!(hand.skipped.is_empty(), "{:?}", hand.skipped);
        let t = tempfile::tempdir().expect("tmp");
        fixture::write_basic(t.path()).expect("fixture");
        let gen = crate::sysfs::scan(t.path());
        assert_eq!(hand.devices, gen.devices);
    }

    #[test]
    fn at_most_128_devices_per_slice_with_consistent_count() {
        let t = tempfile::tempdir().expect("tmp");
        let n = fixture::write_many(t.path(), 300).expect("fixture");
        let scan = crate::sysfs::scan(t.path());
        assert_eq!(scan.devices.len(), n);
        let slices = build_slices("mock-accel.example.com", &node(), &scan.devices, 7);
        assert_eq!(slices.len(), 3);
        let total: usize = slices
            .iter()
            .map(|s| s.spec.devices.as_ref().map_or(0, Vec::len))
            .sum();
        assert_eq!(total, 300);
        for (i, s) in slices.iter().enumerate() {
            assert!(s.spec.devices.as_ref().map_or(0, Vec::len) <= MAX_DEVICES_PER_SLICE);
            assert_eq!(s.spec.pool.resource_slice_count, 3);
            assert_eq!(s.spec.pool.generation, 7);
            assert_eq!(s.spec.pool.name, "node1");
            assert_eq!(
                s.metadata.name.as_deref(),
                Some(format!("node1-mock-accel-{i}").as_str())
            );
        }
    }

    #[test]
    fn empty_node_publishes_one_empty_slice() {
        let slices = build_slices("mock-accel.example.com", &node(), &[], 1);
        assert_eq!(slices.len(), 1);
        assert_eq!(slices[0].spec.devices.as_deref(), Some(&[][..]));
    }

    #[test]
    fn quantities_use_exact_binary_suffixes() {
        assert_eq!(quantity_bytes(17_179_869_184).0, "16Gi");
        assert_eq!(quantity_bytes(1536 << 20).0, "1536Mi");
        assert_eq!(quantity_bytes(1000).0, "1000");
        assert_eq!(quantity_bytes(0).0, "0");
    }

    #[test]
    fn device_names_are_dns_labels() {
        assert_eq!(device_name("mock0_vf1"), "mock0-vf1");
    }
}
