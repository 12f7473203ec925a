//! DRA benchmarks against a real kube-apiserver 1.34 (the non-API parts are in
//! `cargo bench -p dra --bench dra_bench`):
//!
//! 1. time to publish a 1002-device node: `mock-accel-dra kubelet-plugin` process start until
//!    the API server lists all 1002 devices in the node's ResourceSlices (polled with kubectl;
//!    the poll interval bounds the resolution), 3 runs, slices deleted between runs;
//! 2. NodePrepareResources p50/p99 for a one-device claim allocated by the real scheduler,
//!    called by the Go kubelet client (published `k8s.io/kubelet` API) over the plugin's
//!    socket; the plugin GETs the claim from the API server on every call. Same-run baseline:
//!    NodeUnprepareResources of the same claim, which makes no API call.
//!
//! ```text
//! cargo bench -p mock-accel-tests --bench dra_api
//! ```

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use mock_accel_tests::control_plane::{create_ready_node, kubelet_client, ControlPlane};
use mock_accel_tests::{workspace_binary, TestDir};

const NODE: &str = "bench-node";
const DEVICES: usize = 1002;
const PUBLISH_RUNS: usize = 3;
const PREPARE_ROUNDS: &str = "300";

struct Plugin(Child);

impl Drop for Plugin {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_plugin(
    bin: &Path,
    cp: &ControlPlane,
    dir: &Path,
    root: &Path,
    run: usize,
) -> anyhow::Result<Plugin> {
    let log = std::fs::File::create(dir.join(format!("plugin-{run}.log")))?;
    let child = Command::new(bin)
        .arg("kubelet-plugin")
        .arg(format!("--kubeconfig={}", cp.kubeconfig().display()))
        .arg(format!("--node-name={NODE}"))
        .arg(format!("--sysfs-root={}", root.display()))
        .arg(format!("--cdi-root={}", dir.join("cdi").display()))
        .arg(format!(
            "--registrar-dir={}",
            dir.join("registry").display()
        ))
        .arg(format!("--plugin-dir={}", dir.join("plugin").display()))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("cannot start mock-accel-dra")?;
    Ok(Plugin(child))
}

fn published(cp: &ControlPlane) -> anyhow::Result<usize> {
    let out = cp.kubectl(&[
        "get",
        "resourceslices",
        "--field-selector",
        &format!("spec.nodeName={NODE}"),
        "-o",
        "jsonpath={range .items[*]}{range .spec.devices[*]}x{end}{end}",
    ])?;
    Ok(out.trim().len())
}

fn main() -> anyhow::Result<()> {
    let dir = TestDir::new("dra-api-bench")?;
    let root = dir.path().join("root");
    let written = dra::fixture::write_many(&root, DEVICES)?;
    ensure!(written == DEVICES, "fixture has {written} devices");
    // Device nodes of the generated fixture are plain files; prepare only needs sysfs.
    std::fs::remove_dir_all(root.join("dev"))?;

    // Built before any clock starts.
    let bin = workspace_binary("dra", "mock-accel-dra", "MOCK_ACCEL_DRA_BIN")?;
    let started = Instant::now();
    let cp = ControlPlane::start()?;
    println!(
        "control plane up in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    create_ready_node(&cp, NODE)?;

    // --- 1. publish a 1002-device node.
    let mut publish = Vec::new();
    let mut last = None;
    for run in 0..PUBLISH_RUNS {
        drop(last.take()); // stop the previous plugin first
        let _ = cp.kubectl(&["delete", "resourceslices", "--all", "--wait=true"])?;
        ensure!(published(&cp)? == 0, "slices left from the previous run");
        let t = Instant::now();
        let plugin = start_plugin(&bin, &cp, dir.path(), &root, run)?;
        loop {
            if published(&cp)? == DEVICES {
                break;
            }
            ensure!(
                t.elapsed() < Duration::from_secs(120),
                "{DEVICES} devices not published within 120 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        publish.push(t.elapsed());
        last = Some(plugin);
    }
    let _plugin = last.context("plugin of the last run")?;
    let slices = cp.get_json(&["resourceslices"])?;
    let n_slices = slices["items"].as_array().map_or(0, Vec::len);
    publish.sort();
    println!(
        "publish {DEVICES} devices ({n_slices} slices), process start -> listed by the API server: \
         runs {:?}, median {:.2} s",
        publish
            .iter()
            .map(|d| format!("{:.2}s", d.as_secs_f64()))
            .collect::<Vec<_>>(),
        publish[publish.len() / 2].as_secs_f64()
    );

    // --- 2. NodePrepareResources of a one-device claim allocated by the scheduler.
    cp.kubectl(&[
        "apply",
        "-f",
        &mock_accel_tests::control_plane::repo_root()
            .join("deploy/deviceclasses.yaml")
            .display()
            .to_string(),
    ])?;
    cp.kubectl_stdin(
        &["apply", "-f", "-"],
        r#"
apiVersion: resource.k8s.io/v1
kind: ResourceClaim
metadata: {name: one, namespace: default}
spec:
  devices:
    requests:
    - name: accel
      exactly: {deviceClassName: mock-accel-pf}
---
apiVersion: v1
kind: Pod
metadata: {name: one, namespace: default}
spec:
  resourceClaims: [{name: accel, resourceClaimName: one}]
  containers:
  - name: c
    image: busybox
    resources: {claims: [{name: accel}]}
"#,
    )?;
    let t = Instant::now();
    let uid = loop {
        let claim = cp.get_json(&["resourceclaim", "one"])?;
        if !claim["status"]["allocation"].is_null() {
            break claim["metadata"]["uid"]
                .as_str()
                .context("claim uid")?
                .to_owned();
        }
        ensure!(
            t.elapsed() < Duration::from_secs(60),
            "claim not allocated: {}",
            cp.log_tail("kube-scheduler", 10)
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let sock = dir.path().join("plugin/dra.sock").display().to_string();
    let r = kubelet_client(&[
        "bench-prepare",
        &sock,
        "default",
        "one",
        &uid,
        PREPARE_ROUNDS,
    ])?;
    let f = |k: &str| r[k].as_f64().unwrap_or(f64::NAN) / 1000.0;
    println!(
        "NodePrepareResources, 1-device claim (claim GET from the API server included), {} rounds: \
         p50 {:.2} ms, p99 {:.2} ms",
        r["rounds"],
        f("p50_us"),
        f("p99_us")
    );
    println!(
        "baseline NodeUnprepareResources (no API call), same rounds: p50 {:.2} ms, p99 {:.2} ms; \
         prepare/unprepare p50 ratio {:.2}",
        f("unprepare_p50_us"),
        f("unprepare_p99_us"),
        f("p50_us") / f("unprepare_p50_us")
    );
    Ok(())
}
