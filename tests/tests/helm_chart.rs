//! `charts/mock-device` rendered by a real Helm and checked by a real kube-apiserver.
//!
//! - Default values: the rendered chart passes server-side dry-run (every object is
//!   validated by the API server, RBAC rules, DaemonSet pod template and DeviceClass CEL
//!   included), and its DeviceClasses are exactly `deploy/deviceclasses.yaml`'s.
//! - `kernelModule.enabled` in `prebuilt` and `build` modes renders a KMM `Module` with the
//!   seeds' shape (the KMM CRD is not installed in the test cluster, so the `Module` is checked
//!   by content and the other objects by dry-run); an unknown mode fails rendering with a
//!   message naming the key.

use std::process::Command;

use anyhow::{bail, Context};
use mock_accel_tests::control_plane::{helm_binary, repo_root, ControlPlane};
use serde_yaml::Value;

const KUBE_VERSION: &str = "1.34.4";

/// `helm template` of the repository's chart with `--set` pairs; rendered YAML or Helm's error.
fn render(sets: &[&str]) -> anyhow::Result<String> {
    let mut cmd = Command::new(helm_binary()?);
    cmd.args(["template", "mock-device"])
        .arg(repo_root().join("charts/mock-device"))
        .args(["--namespace", "mock-device", "--kube-version", KUBE_VERSION]);
    for s in sets {
        cmd.args(["--set", s]);
    }
    let out = cmd.output().context("cannot run helm")?;
    if !out.status.success() {
        bail!("{}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8(out.stdout)?)
}

fn documents(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .filter_map(|d| serde::Deserialize::deserialize(d).ok())
        .filter(|v: &Value| !v.is_null())
        .collect()
}

fn kind(v: &Value) -> &str {
    v["kind"].as_str().unwrap_or_default()
}

fn to_yaml(docs: &[&Value]) -> String {
    docs.iter()
        .map(|d| serde_yaml::to_string(d).expect("yaml"))
        .collect::<Vec<_>>()
        .join("---\n")
}

/// DeviceClass name → CEL expression, from a set of documents.
fn device_class_cel(docs: &[Value]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = docs
        .iter()
        .filter(|d| kind(d) == "DeviceClass")
        .map(|d| {
            let cel = d["spec"]["selectors"][0]["cel"]["expression"]
                .as_str()
                .unwrap_or_default();
            (
                d["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                cel.split_whitespace().collect::<Vec<_>>().join(" "),
            )
        })
        .collect();
    out.sort();
    out
}

fn server_dry_run(cp: &ControlPlane, docs: &[&Value]) -> anyhow::Result<String> {
    cp.kubectl_stdin(&["apply", "--dry-run=server", "-f", "-"], &to_yaml(docs))
}

#[test]
fn helm_chart_renders_and_passes_server_side_dry_run() -> anyhow::Result<()> {
    let rendered = render(&[])?;
    let docs = documents(&rendered);
    let mut kinds: Vec<&str> = docs.iter().map(kind).collect();
    kinds.sort_unstable();
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
        ],
        "default values render the driver, RBAC and the four DeviceClasses, no KMM Module"
    );
    let deploy = std::fs::read_to_string(repo_root().join("deploy/deviceclasses.yaml"))?;
    assert_eq!(
        device_class_cel(&docs),
        device_class_cel(&documents(&deploy)),
        "the chart's DeviceClasses equal deploy/deviceclasses.yaml"
    );

    let cp = ControlPlane::start()?;
    // Namespaced objects are validated only when their namespace exists.
    let ns: Vec<&Value> = docs.iter().filter(|d| kind(d) == "Namespace").collect();
    cp.kubectl_stdin(&["apply", "-f", "-"], &to_yaml(&ns))?;
    let all: Vec<&Value> = docs.iter().collect();
    let out = server_dry_run(&cp, &all)?;
    for d in &docs {
        let name = d["metadata"]["name"].as_str().unwrap_or_default();
        assert!(
            out.contains(&format!("/{name} ")),
            "dry-run output names {} {name}: {out}",
            kind(d)
        );
    }
    // The API server rejects what is wrong: a DeviceClass with broken CEL fails dry-run, so
    // the passing run above is evidence, not a formality.
    let mut broken = docs
        .iter()
        .find(|d| kind(d) == "DeviceClass")
        .cloned()
        .context("a DeviceClass")?;
    broken["spec"]["selectors"][0]["cel"]["expression"] = Value::from("device.driver ==");
    let broken_class = [&broken];
    let err = server_dry_run(&cp, &broken_class)
        .expect_err("a DeviceClass with invalid CEL must fail server-side dry-run");
    assert!(
        err.to_string().contains("cel"),
        "the rejection is about the CEL expression: {err}"
    );

    // --- KMM modes.
    let prebuilt = documents(&render(&["kernelModule.enabled=true"])?);
    let module = prebuilt
        .iter()
        .find(|d| kind(d) == "Module")
        .context("prebuilt mode renders a KMM Module")?;
    assert_eq!(module["apiVersion"], "kmm.sigs.x-k8s.io/v1beta1");
    let container = &module["spec"]["moduleLoader"]["container"];
    assert_eq!(container["modprobe"]["moduleName"], "mock_accel");
    assert_eq!(container["modprobe"]["firmwarePath"], "/firmware");
    assert_eq!(
        container["kernelMappings"][0]["containerImage"],
        "localhost/mock-accel-module:v1.0.0-${KERNEL_FULL_VERSION}"
    );
    assert!(container["kernelMappings"][0]["build"].is_null());
    assert_eq!(
        module["spec"]["selector"]["node-role.kubernetes.io/worker"],
        ""
    );

    let build = documents(&render(&[
        "kernelModule.enabled=true",
        "kernelModule.mode=build",
    ])?);
    let module = build
        .iter()
        .find(|d| kind(d) == "Module")
        .context("build mode renders a KMM Module")?;
    let mapping = &module["spec"]["moduleLoader"]["container"]["kernelMappings"][0];
    assert_eq!(
        mapping["containerImage"],
        "localhost/mock-accel-module:${KERNEL_FULL_VERSION}"
    );
    assert_eq!(
        mapping["build"]["dockerfileConfigMap"]["name"],
        "mock-accel-dockerfile"
    );
    let cm: Vec<&Value> = build.iter().filter(|d| kind(d) == "ConfigMap").collect();
    assert_eq!(cm.len(), 1, "build mode renders the Dockerfile ConfigMap");
    assert!(cm[0]["data"]["dockerfile"]
        .as_str()
        .is_some_and(|f| f.contains("KERNEL_FULL_VERSION")));
    server_dry_run(&cp, &cm)?;

    let err = render(&["kernelModule.enabled=true", "kernelModule.mode=dkms"])
        .expect_err("an unknown kernelModule.mode fails rendering");
    assert!(
        err.to_string()
            .contains("kernelModule.mode must be prebuilt or build"),
        "{err}"
    );
    Ok(())
}
