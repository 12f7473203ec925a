//! Deployment manifests, examples and Helm values parse, and the DeviceClass CEL is exactly
//! the expected (DESIGN.md §6) expression.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn docs(path: &Path) -> Vec<serde_yaml::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| {
            serde_yaml::Value::deserialize(d).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        })
        .filter(|v| !v.is_null())
        .collect()
}

fn expected_cel() -> BTreeMap<&'static str, &'static str> {
    let drv = r#"device.driver == "mock-accel.example.com""#;
    let pf = r#"device.attributes["mock-accel.example.com"].deviceType == "pf""#;
    let vf = r#"device.attributes["mock-accel.example.com"].deviceType == "vf""#;
    let mem = r#"device.capacity["mock-accel.example.com"].memory.compareTo(quantity("2Gi")) >= 0"#;
    let leak = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
    BTreeMap::from([
        ("mock-accel", drv),
        ("mock-accel-pf", leak(format!("{drv} && {pf}"))),
        ("mock-accel-vf", leak(format!("{drv} && {vf}"))),
        ("mock-accel-vf-2gb", leak(format!("{drv} && {vf} && {mem}"))),
    ])
}

fn s<'a>(v: &'a serde_yaml::Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for p in path {
        cur = match p.parse::<usize>() {
            Ok(i) => cur.get(i)?,
            Err(_) => cur.get(*p)?,
        };
    }
    cur.as_str()
}

#[test]
fn kustomization_lists_existing_files_that_parse() {
    let dir = repo().join("deploy");
    let k = &docs(&dir.join("kustomization.yaml"))[0];
    let res = k["resources"].as_sequence().expect("resources");
    let mut kinds = Vec::new();
    for r in res {
        for d in docs(&dir.join(r.as_str().expect("str"))) {
            assert!(d["apiVersion"].as_str().is_some() && d["metadata"]["name"].as_str().is_some());
            kinds.push(d["kind"].as_str().expect("kind").to_string());
        }
    }
    kinds.sort();
    assert_eq!(
        kinds,
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "DaemonSet",
            "DeviceClass",
            "DeviceClass",
            "DeviceClass",
            "DeviceClass",
            "Namespace",
            "ServiceAccount"
        ]
    );
}

#[test]
fn deviceclass_cel_matches_design() {
    let mut got = BTreeMap::new();
    for d in docs(&repo().join("deploy/deviceclasses.yaml")) {
        assert_eq!(d["apiVersion"].as_str(), Some("resource.k8s.io/v1"));
        let name = s(&d, &["metadata", "name"]).expect("name").to_string();
        let cel = s(&d, &["spec", "selectors", "0", "cel", "expression"])
            .expect("cel")
            .to_string();
        got.insert(name, cel);
    }
    let want: BTreeMap<String, String> = expected_cel()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(got, want);
}

#[test]
fn helm_values_carry_the_same_cel_and_seed_keys() {
    let chart = repo().join("charts/mock-device");
    let c = &docs(&chart.join("Chart.yaml"))[0];
    assert_eq!(c["name"].as_str(), Some("mock-device"));
    let v = &docs(&chart.join("values.yaml"))[0];
    let mut got = BTreeMap::new();
    for dc in v["deviceClasses"].as_sequence().expect("deviceClasses") {
        got.insert(
            dc["name"].as_str().expect("name").to_string(),
            dc["cel"].as_str().expect("cel").to_string(),
        );
    }
    let want: BTreeMap<String, String> = expected_cel()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(got, want);
    assert_eq!(
        v["draDriver"]["name"].as_str(),
        Some("mock-accel.example.com")
    );
    for key in ["rbac", "serviceAccount", "kernelModule", "namespace"] {
        assert!(!v[key].is_null(), "values.{key}");
    }
    for mode in ["prebuilt", "build"] {
        assert!(!v["kernelModule"][mode].is_null(), "kernelModule.{mode}");
    }
    for t in std::fs::read_dir(chart.join("templates")).expect("templates") {
        let p = t.expect("entry").path();
        let text = std::fs::read_to_string(&p).expect("read");
        assert_eq!(
            text.matches("{{").count(),
            text.matches("}}").count(),
            "{}",
            p.display()
        );
    }
}

#[test]
fn examples_pair_claims_with_pods_and_use_the_right_constraints() {
    let dir = repo().join("docs/examples");
    let want = [
        ("basic-allocation.yaml", None),
        (
            "numa-locality.yaml",
            Some("mock-accel.example.com/numaNode"),
        ),
        (
            "pcie-locality.yaml",
            Some("resource.kubernetes.io/pcieRoot"),
        ),
        ("sriov-vf.yaml", Some("mock-accel.example.com/physfn")),
        ("mixed-pf-vf.yaml", None),
    ];
    for (file, attr) in want {
        let d = docs(&dir.join(file));
        let kinds: Vec<_> = d
            .iter()
            .map(|x| x["kind"].as_str().expect("kind"))
            .collect();
        assert_eq!(kinds.len(), 2, "{file}");
        assert!(
            kinds[0].starts_with("ResourceClaim") && kinds[1] == "Pod",
            "{file}: {kinds:?}"
        );
        let spec = if kinds[0] == "ResourceClaimTemplate" {
            &d[0]["spec"]["spec"]
        } else {
            &d[0]["spec"]
        };
        let got = s(spec, &["devices", "constraints", "0", "matchAttribute"]);
        assert_eq!(got, attr, "{file}");
        for r in spec["devices"]["requests"].as_sequence().expect("requests") {
            let class = r["exactly"]["deviceClassName"].as_str().expect("class");
            assert!(expected_cel().contains_key(class), "{file}: {class}");
        }
        let claim_name = d[0]["metadata"]["name"].as_str().expect("name");
        let pod_ref = &d[1]["spec"]["resourceClaims"][0];
        let referenced = pod_ref["resourceClaimName"]
            .as_str()
            .or_else(|| pod_ref["resourceClaimTemplateName"].as_str());
        assert_eq!(referenced, Some(claim_name), "{file}");
    }
}
