//! From discovered devices to `resource.k8s.io/v1` ResourceSlices (pure; no I/O).
//!
//! One pool per node (pool name = node name, DESIGN.md §6), at most 128 devices per slice,
//! slices named `<node>-<driver with dots as dashes>-<index>`, owned by the Node.

use serde_json::{json, Value};

use crate::discovery::{DeviceType, MockDevice};

/// Most devices the API accepts in one ResourceSlice.
pub const MAX_DEVICES_PER_SLICE: usize = 128;
/// Standard attribute: PCIe root complex of a device.
pub const ATTR_PCIE_ROOT: &str = "resource.kubernetes.io/pcieRoot";
/// Standard attribute: PCI bus ID of a device.
pub const ATTR_PCI_BUS_ID: &str = "resource.kubernetes.io/pciBusID";

/// Where the slices go.
#[derive(Debug, Clone)]
pub struct Pool<'a> {
    pub driver: &'a str,
    pub node_name: &'a str,
    /// The Node's UID, for the owner reference (slices are garbage-collected with the Node).
    pub node_uid: &'a str,
    pub generation: i64,
}

/// The slice name for `index` (a DNS subdomain).
pub fn slice_name(driver: &str, node_name: &str, index: usize) -> String {
    format!("{node_name}-{}-{index}", driver.replace('.', "-"))
}

/// One device's v1 `Device` entry.
pub fn device_entry(d: &MockDevice) -> Value {
    let mut attributes = serde_json::Map::new();
    attributes.insert("uuid".into(), json!({"string": d.uuid}));
    attributes.insert(
        "deviceType".into(),
        json!({"string": d.device_type.as_str()}),
    );
    attributes.insert(
        "capabilities".into(),
        json!({"int": i64::from(d.capabilities)}),
    );
    if let Some(a) = &d.pci_address {
        attributes.insert("pciAddress".into(), json!({"string": a}));
        attributes.insert(ATTR_PCI_BUS_ID.into(), json!({"string": a}));
    }
    if let Some(r) = &d.pcie_root {
        attributes.insert(ATTR_PCIE_ROOT.into(), json!({"string": r}));
    }
    if let Some(n) = d.numa_node {
        attributes.insert("numaNode".into(), json!({"int": i64::from(n)}));
    }
    // A PF is its own physfn, so `matchAttribute: physfn` groups a PF with its VFs.
    let physfn = match (d.device_type, &d.physfn) {
        (DeviceType::Vf, Some(pf)) => Some(crate::discovery::k8s_name(pf)),
        (DeviceType::Pf, _) => Some(d.k8s_name()),
        (DeviceType::Vf, None) => None,
    };
    if let Some(p) = physfn {
        attributes.insert("physfn".into(), json!({"string": p}));
    }
    json!({
        "name": d.k8s_name(),
        "attributes": attributes,
        "capacity": {"memory": {"value": d.memory_size.to_string()}},
    })
}

/// The slices for a node's devices (at least one slice, possibly empty, so the pool exists).
pub fn build_slices(pool: &Pool<'_>, devices: &[MockDevice]) -> Vec<Value> {
    let chunks: Vec<&[MockDevice]> = if devices.is_empty() {
        vec![&[]]
    } else {
        devices.chunks(MAX_DEVICES_PER_SLICE).collect()
    };
    let count = chunks.len();
    chunks
        .into_iter()
        .enumerate()
        .map(|(i, chunk)| {
            json!({
                "apiVersion": "resource.k8s.io/v1",
                "kind": "ResourceSlice",
                "metadata": {
                    "name": slice_name(pool.driver, pool.node_name, i),
                    "labels": {"app.kubernetes.io/managed-by": "mock-accel-dra"},
                    "ownerReferences": [{
                        "apiVersion": "v1",
                        "kind": "Node",
                        "name": pool.node_name,
                        "uid": pool.node_uid,
                        "controller": true,
                    }],
                },
                "spec": {
                    "driver": pool.driver,
                    "nodeName": pool.node_name,
                    "pool": {
                        "name": pool.node_name,
                        "generation": pool.generation,
                        "resourceSliceCount": count,
                    },
                    "devices": chunk.iter().map(device_entry).collect::<Vec<_>>(),
                },
            })
        })
        .collect()
}

/// What of the devices is published (slices are rewritten, with a new pool generation, only
/// when this changes; STATUS is not published).
pub fn published_content(devices: &[MockDevice]) -> Value {
    Value::Array(devices.iter().map(device_entry).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::{scan, write_fixture};

    fn pool() -> Pool<'static> {
        Pool {
            driver: "mock-accel.example.com",
            node_name: "node1",
            node_uid: "uid-1",
            generation: 3,
        }
    }

    #[test]
    fn pf_and_vf_entries_carry_every_attribute() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_fixture(dir.path(), 2, 2, 1).expect("fixture");
        let devices = scan(dir.path()).expect("scan");
        let slices = build_slices(&pool(), &devices);
        assert_eq!(slices.len(), 1);
        let s = &slices[0];
        assert_eq!(s["metadata"]["name"], "node1-mock-accel-example-com-0");
        assert_eq!(s["metadata"]["ownerReferences"][0]["uid"], "uid-1");
        assert_eq!(s["spec"]["nodeName"], "node1");
        assert_eq!(
            s["spec"]["pool"],
            json!({"name": "node1", "generation": 3, "resourceSliceCount": 1})
        );
        let pf = &s["spec"]["devices"][0];
        assert_eq!(
            pf,
            &json!({
                "name": "mock0",
                "attributes": {
                    "uuid": {"string": "NODE1-NUMA0-PF0"},
                    "deviceType": {"string": "pf"},
                    "capabilities": {"int": 1},
                    "pciAddress": {"string": "0000:11:00.0"},
                    "resource.kubernetes.io/pciBusID": {"string": "0000:11:00.0"},
                    "resource.kubernetes.io/pcieRoot": {"string": "pci0000:10"},
                    "numaNode": {"int": 0},
                    "physfn": {"string": "mock0"},
                },
                "capacity": {"memory": {"value": "17179869184"}},
            })
        );
        let vf = &s["spec"]["devices"][3];
        assert_eq!(vf["name"], "mock1-vf0");
        assert_eq!(vf["attributes"]["deviceType"]["string"], "vf");
        assert_eq!(vf["attributes"]["physfn"]["string"], "mock1");
        assert_eq!(vf["attributes"]["numaNode"]["int"], 1);
        // Every attribute name fits the API's rules (C identifier <= 32, or domain/identifier).
        for d in s["spec"]["devices"].as_array().expect("devices") {
            let attrs = d["attributes"].as_object().expect("attrs");
            assert!(attrs.len() < 32, "at most 32 attributes + capacities");
            for k in attrs.keys() {
                let id = k.rsplit('/').next().unwrap_or(k);
                assert!(
                    id.len() <= 32 && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                    "{k}"
                );
            }
        }
    }

    #[test]
    fn more_than_128_devices_split_into_counted_slices() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_fixture(dir.path(), 2, 100, 2).expect("fixture");
        let devices = scan(dir.path()).expect("scan");
        assert_eq!(devices.len(), 300);
        let slices = build_slices(&pool(), &devices);
        assert_eq!(slices.len(), 3);
        let sizes: Vec<usize> = slices
            .iter()
            .map(|s| s["spec"]["devices"].as_array().map_or(0, Vec::len))
            .collect();
        assert_eq!(sizes, [128, 128, 44]);
        for s in &slices {
            assert_eq!(s["spec"]["pool"]["resourceSliceCount"], 3);
        }
    }

    #[test]
    fn no_devices_still_publishes_an_empty_pool() {
        let slices = build_slices(&pool(), &[]);
        assert_eq!(slices.len(), 1);
        assert_eq!(slices[0]["spec"]["devices"], json!([]));
    }
}
