//! The DRA driver against a real control plane (etcd + kube-apiserver + controller-manager +
//! scheduler on loopback, `scripts/provision-k8s.sh`): our `mock-accel-dra kubelet-plugin`
//! process publishes the slices, the real scheduler allocates every `docs/examples/` claim
//! with our DeviceClasses, and the Go kubelet client (published `k8s.io/kubelet` API
//! packages) prepares and unprepares the claims over the plugin's real sockets, across a
//! SIGKILL of the plugin.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use mock_accel_tests::control_plane::{create_ready_node, kubelet_client, repo_root, ControlPlane};
use mock_accel_tests::{workspace_binary, TestDir};
use serde_json::Value;

const DRIVER: &str = "mock-accel.example.com";
const NODE: &str = "node1";

/// The sysfs fixture the plugin reads: the guest driver's real export when present, else the
/// DRA crate's hand-made one. Copied, because prepare writes `status`.
fn fixture_copy(dir: &Path) -> anyhow::Result<PathBuf> {
    let guest = repo_root().join("tests/fixtures/sysfs-guest");
    let src = if guest.join("sys/class/mock-accel").is_dir() {
        guest
    } else {
        repo_root().join("dra/tests/fixtures/sysfs-basic")
    };
    let dst = dir.join("root");
    let ok = Command::new("cp")
        .arg("-a")
        .arg(&src)
        .arg(&dst)
        .status()?
        .success();
    anyhow::ensure!(ok, "cannot copy {}", src.display());
    Ok(dst)
}

struct Plugin {
    child: Child,
}

impl Plugin {
    fn start(cp: &ControlPlane, dir: &Path, root: &Path) -> anyhow::Result<Self> {
        let bin = workspace_binary("dra", "mock-accel-dra", "MOCK_ACCEL_DRA_BIN")?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("plugin.log"))?;
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
            .arg("--rescan-interval=1s")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot start mock-accel-dra")?;
        let plugin = Self { child };
        wait_for("plugin sockets", Duration::from_secs(30), || {
            // Connectable, not merely present: a SIGKILLed plugin leaves its socket files.
            let up = |p: PathBuf| std::os::unix::net::UnixStream::connect(p).is_ok();
            Ok(up(dir.join("plugin/dra.sock"))
                && up(dir.join(format!("registry/{DRIVER}-reg.sock"))))
        })?;
        Ok(plugin)
    }

    fn kill(mut self) {
        let _ = self.child.kill(); // SIGKILL: no chance to clean up
        let _ = self.child.wait();
    }
}

impl Drop for Plugin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_for(
    what: &str,
    limit: Duration,
    mut ready: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        if ready()? {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{what}: not ready after {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn our_slices(cp: &ControlPlane) -> anyhow::Result<Vec<Value>> {
    let list = cp.get_json(&[
        "resourceslices",
        &format!("--field-selector=spec.nodeName={NODE},spec.driver={DRIVER}"),
    ])?;
    Ok(list["items"].as_array().cloned().unwrap_or_default())
}

/// Devices of our slices by name.
fn published_devices(cp: &ControlPlane) -> anyhow::Result<Vec<Value>> {
    Ok(our_slices(cp)?
        .iter()
        .flat_map(|s| s["spec"]["devices"].as_array().cloned().unwrap_or_default())
        .collect())
}

fn attr<'a>(device: &'a Value, name: &str) -> &'a Value {
    let a = &device["attributes"][name];
    if !a["string"].is_null() {
        &a["string"]
    } else {
        &a["int"]
    }
}

fn status_of(root: &Path, class_name: &str) -> String {
    std::fs::read_to_string(
        root.join("sys/class/mock-accel")
            .join(class_name)
            .join("status"),
    )
    .unwrap_or_default()
    .trim()
    .to_owned()
}

fn class_name(device: &str, root: &Path) -> String {
    // Published names are DNS labels (`mock0-vf1`); sysfs has `mock0_vf1`.
    let underscored = device.replace('-', "_");
    if root
        .join("sys/class/mock-accel")
        .join(&underscored)
        .exists()
    {
        underscored
    } else {
        device.to_owned()
    }
}

/// Apply one example, wait for the claim's allocation, return (claim name, uid, results).
fn allocate(cp: &ControlPlane, example: &Path) -> anyhow::Result<(String, String, Vec<Value>)> {
    let text = std::fs::read_to_string(example)?;
    cp.kubectl_stdin(&["apply", "-f", "-"], &text)?;
    let name_of = |kind: &str| {
        text.split("---")
            .find(|doc| doc.lines().any(|l| l.trim() == format!("kind: {kind}")))
            .and_then(|doc| {
                doc.lines()
                    .skip_while(|l| !l.starts_with("metadata:"))
                    .find_map(|l| l.trim().strip_prefix("name:").map(|n| n.trim().to_owned()))
            })
    };
    let claim_name = match name_of("ResourceClaim") {
        Some(name) => name,
        None => {
            // From a ResourceClaimTemplate: the controller names the claim in the pod status.
            let pod = name_of("Pod").context("example has a named Pod")?;
            let mut generated = None;
            wait_for(
                &format!("claim of pod {pod}"),
                Duration::from_secs(60),
                || {
                    let p = cp.get_json(&["pod", &pod])?;
                    generated = p["status"]["resourceClaimStatuses"][0]["resourceClaimName"]
                        .as_str()
                        .map(str::to_owned);
                    Ok(generated.is_some())
                },
            )?;
            generated.context("generated claim name")?
        }
    };
    let mut claim = Value::Null;
    wait_for(
        &format!("allocation of {claim_name}"),
        Duration::from_secs(60),
        || {
            claim = cp.get_json(&["resourceclaim", &claim_name])?;
            Ok(!claim["status"]["allocation"].is_null())
        },
    )
    .with_context(|| cp.log_tail("kube-scheduler", 20))?;
    let uid = claim["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let results = claim["status"]["allocation"]["devices"]["results"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    Ok((claim_name, uid, results))
}

#[test]
fn plugin_publishes_scheduler_allocates_and_kubelet_prepares() -> anyhow::Result<()> {
    let mut cp = ControlPlane::start()?;
    eprintln!("control plane ready in {:?}", cp.startup);
    create_ready_node(&cp, NODE)?;
    let dir = TestDir::new("dra")?;
    let root = fixture_copy(dir.path())?;
    let sysfs_count = std::fs::read_dir(root.join("sys/class/mock-accel"))?.count();

    // --- Publishing: exactly the fixture's devices, in this node's pool, owned by the Node.
    let started = Instant::now();
    let plugin = Plugin::start(&cp, dir.path(), &root)?;
    wait_for("slices", Duration::from_secs(30), || {
        Ok(published_devices(&cp)?.len() == sysfs_count)
    })?;
    eprintln!(
        "plugin start to {sysfs_count} devices published: {:?}",
        started.elapsed()
    );
    let slices = our_slices(&cp)?;
    let node_uid = cp.get_json(&["node", NODE])?["metadata"]["uid"].clone();
    for s in &slices {
        assert_eq!(s["spec"]["pool"]["name"], NODE);
        assert_eq!(s["spec"]["nodeName"], NODE);
        assert_eq!(s["spec"]["pool"]["resourceSliceCount"], slices.len());
        assert_eq!(s["metadata"]["ownerReferences"][0]["kind"], "Node");
        assert_eq!(s["metadata"]["ownerReferences"][0]["uid"], node_uid);
    }
    let devices = published_devices(&cp)?;
    for d in &devices {
        for a in [
            "uuid",
            "deviceType",
            "pciAddress",
            "numaNode",
            "capabilities",
            "resource.kubernetes.io/pcieRoot",
            "resource.kubernetes.io/pciBusID",
        ] {
            assert!(!attr(d, a).is_null(), "{} lacks {a}: {d}", d["name"]);
        }
        assert!(!d["capacity"]["memory"]["value"].is_null(), "{d}");
        if attr(d, "deviceType") == "vf" {
            assert!(
                !attr(d, "physfn").is_null(),
                "VF {} names its PF",
                d["name"]
            );
        }
    }
    let by_name = |n: &str| devices.iter().find(|d| d["name"] == n).cloned();

    // --- Manifests: the kustomization passes server-side dry-run (its namespace must exist
    // for the namespaced objects to be validated); DeviceClasses go in.
    cp.kubectl(&[
        "apply",
        "-f",
        &repo_root()
            .join("deploy/namespace.yaml")
            .display()
            .to_string(),
    ])?;
    cp.kubectl(&[
        "apply",
        "-k",
        &repo_root().join("deploy").display().to_string(),
        "--dry-run=server",
    ])?;
    cp.kubectl(&[
        "apply",
        "-f",
        &repo_root()
            .join("deploy/deviceclasses.yaml")
            .display()
            .to_string(),
    ])?;

    // --- Every example is allocated by the real scheduler, satisfying its constraints.
    let mut examples: Vec<PathBuf> = std::fs::read_dir(repo_root().join("docs/examples"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    examples.sort();
    assert!(
        examples.len() >= 5,
        "seed scenarios in docs/examples: {examples:?}"
    );
    let mut prepared_any = None;
    for example in &examples {
        let (claim, uid, results) = allocate(&cp, example)?;
        let name = example
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default();
        let allocated: Vec<Value> = results
            .iter()
            .map(|r| by_name(r["device"].as_str().unwrap_or_default()).unwrap_or(Value::Null))
            .collect();
        assert!(
            allocated.iter().all(|d| !d.is_null()),
            "{name}: allocated published devices"
        );
        for r in &results {
            assert_eq!(
                (r["driver"].as_str(), r["pool"].as_str()),
                (Some(DRIVER), Some(NODE))
            );
        }
        let distinct = |a: &str| -> BTreeSet<String> {
            allocated.iter().map(|d| attr(d, a).to_string()).collect()
        };
        let types = distinct("deviceType");
        match name {
            n if n.contains("numa") => {
                assert!(results.len() >= 2, "{n}");
                assert_eq!(distinct("numaNode").len(), 1, "{n}: one NUMA node");
            }
            n if n.contains("pcie") => {
                assert!(results.len() >= 2, "{n}");
                assert_eq!(
                    distinct("resource.kubernetes.io/pcieRoot").len(),
                    1,
                    "{n}: one root"
                );
            }
            n if n.contains("sriov") => {
                assert!(results.len() >= 2, "{n}");
                assert_eq!(
                    types,
                    BTreeSet::from(["\"vf\"".to_owned()]),
                    "{n}: VFs only"
                );
                assert_eq!(distinct("physfn").len(), 1, "{n}: VFs of one PF");
            }
            n if n.contains("mixed") => {
                assert_eq!(types.len(), 2, "{n}: a PF and a VF");
            }
            n => assert!(!results.is_empty(), "{n}"),
        }
        eprintln!(
            "{name}: {claim} -> {:?}",
            allocated.iter().map(|d| &d["name"]).collect::<Vec<_>>()
        );

        // --- The kubelet's side: prepare over the real socket.
        let dra_sock = dir.join("plugin/dra.sock");
        let sock = dra_sock.to_str().unwrap_or_default();
        let answer = kubelet_client(&["prepare", sock, "v1", "default", &claim, &uid])?;
        let prepared = &answer["claims"][&uid];
        assert!(
            prepared["error"].is_null() || prepared["error"] == "",
            "{name}: {answer}"
        );
        let ids: Vec<&str> = prepared["devices"]
            .as_array()
            .map(|v| {
                v.iter()
                    .filter_map(|d| d["cdi_device_ids"][0].as_str())
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(
            ids.len(),
            results.len(),
            "{name}: a CDI ID per device: {answer}"
        );
        let spec_files: Vec<PathBuf> = std::fs::read_dir(dir.join("cdi"))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.to_string_lossy().contains(&uid))
            .collect();
        assert_eq!(spec_files.len(), 1, "{name}: one CDI spec for the claim");
        let spec: Value = serde_json::from_slice(&std::fs::read(&spec_files[0])?)?;
        for id in &ids {
            let (kind, dev) = id.split_once('=').context("CDI ID kind=name")?;
            assert_eq!(spec["kind"], kind);
            assert!(
                spec["devices"]
                    .as_array()
                    .is_some_and(|v| v.iter().any(|d| d["name"] == dev)),
                "{name}: {id} in the spec"
            );
        }
        for r in &results {
            let cn = class_name(r["device"].as_str().unwrap_or_default(), &root);
            assert_eq!(
                status_of(&root, &cn),
                "1",
                "{name}: {cn} status after prepare"
            );
        }
        prepared_any.get_or_insert((claim.clone(), uid.clone(), results.clone()));
        if prepared_any.as_ref().map(|p| &p.1) != Some(&uid) {
            let answer = kubelet_client(&["unprepare", sock, "v1beta1", "default", &claim, &uid])?;
            assert!(
                answer["claims"][&uid]["error"].is_null() || answer["claims"][&uid]["error"] == ""
            );
            for r in &results {
                let cn = class_name(r["device"].as_str().unwrap_or_default(), &root);
                assert_eq!(
                    status_of(&root, &cn),
                    "0",
                    "{name}: {cn} status after unprepare"
                );
            }
            assert!(!spec_files[0].exists(), "{name}: CDI spec removed");
        }
        // Free the devices for the next example (no kubelet: force the pod away).
        let path = example.display().to_string();
        cp.kubectl(&[
            "delete",
            "-f",
            &path,
            "--grace-period=0",
            "--force",
            "--wait=false",
        ])?;
        wait_for(
            &format!("{name}: claims released"),
            Duration::from_secs(60),
            || {
                Ok(cp.get_json(&["resourceclaims"])?["items"]
                    .as_array()
                    .is_some_and(Vec::is_empty))
            },
        )?;
    }

    // --- Registration as the kubelet's plugin watcher sees it.
    let reg = dir.join(&format!("registry/{DRIVER}-reg.sock"));
    let info = kubelet_client(&["info", reg.to_str().unwrap_or_default()])?;
    assert_eq!(info["type"], "DRAPlugin");
    assert_eq!(info["name"], DRIVER);
    assert_eq!(info["supported_versions"][0], "v1.DRAPlugin");

    // --- SIGKILL between prepare and unprepare; the restarted plugin still cleans up.
    let (claim, uid, results) = prepared_any.context("at least one example prepared")?;
    plugin.kill();
    let plugin = Plugin::start(&cp, dir.path(), &root)?;
    let sock = dir.join("plugin/dra.sock");
    let answer = kubelet_client(&[
        "unprepare",
        sock.to_str().unwrap_or_default(),
        "v1",
        "default",
        &claim,
        &uid,
    ])?;
    assert!(
        answer["claims"][&uid]["error"].is_null() || answer["claims"][&uid]["error"] == "",
        "{answer}"
    );
    for r in &results {
        let cn = class_name(r["device"].as_str().unwrap_or_default(), &root);
        assert_eq!(
            status_of(&root, &cn),
            "0",
            "{cn} reset by the restarted plugin"
        );
    }
    let leftover: Vec<_> = std::fs::read_dir(dir.join("cdi"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    assert!(leftover.is_empty(), "no CDI specs left: {leftover:?}");

    // --- A claim nothing can satisfy stays unallocated.
    cp.kubectl_stdin(
        &["apply", "-f", "-"],
        r#"
apiVersion: resource.k8s.io/v1
kind: ResourceClaim
metadata: {name: impossible}
spec:
  devices:
    requests:
    - name: r
      exactly: {deviceClassName: mock-accel-pf, count: 99}
---
apiVersion: v1
kind: Pod
metadata: {name: impossible}
spec:
  resourceClaims: [{name: r, resourceClaimName: impossible}]
  containers:
  - {name: c, image: busybox, resources: {claims: [{name: r}]}}
"#,
    )?;
    std::thread::sleep(Duration::from_secs(5));
    let claim = cp.get_json(&["resourceclaim", "impossible"])?;
    assert!(
        claim["status"]["allocation"].is_null(),
        "99 PFs cannot be allocated: {claim}"
    );
    let pod = cp.get_json(&["pod", "impossible"])?;
    assert!(pod["spec"]["nodeName"].is_null(), "pod stays pending");

    // --- A device removed from sysfs leaves the published slices within the rescan interval.
    let class = root.join("sys/class/mock-accel");
    let victim = std::fs::read_dir(&class)?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .max()
        .context("a device")?;
    let victim_target = std::fs::read_link(class.join(&victim))?;
    std::fs::remove_file(class.join(&victim))?;
    wait_for("rescan after removal", Duration::from_secs(15), || {
        Ok(published_devices(&cp)?.len() == sysfs_count - 1)
    })?;

    // --- The API server goes away: the plugin keeps serving, retries with backoff, and once
    // the API server is back publishes what changed meanwhile (the device returns).
    cp.stop_apiserver();
    std::os::unix::fs::symlink(&victim_target, class.join(&victim))?;
    std::thread::sleep(Duration::from_secs(6)); // several failed rescans (interval 1 s)
    let mut plugin = plugin;
    assert!(
        plugin.child.try_wait()?.is_none(),
        "the plugin survives an API server outage"
    );
    let reg = dir.join(&format!("registry/{DRIVER}-reg.sock"));
    let info = kubelet_client(&["info", reg.to_str().unwrap_or_default()])?;
    assert_eq!(info["name"], DRIVER, "kubelet sockets keep answering");
    let back = Instant::now();
    cp.start_apiserver()?;
    wait_for(
        "republish after the API server restart",
        Duration::from_secs(60),
        || Ok(published_devices(&cp)?.len() == sysfs_count),
    )?;
    eprintln!(
        "API server back to the re-added device published: {:?}",
        back.elapsed()
    );
    let plugin_log = std::fs::read_to_string(dir.join("plugin.log"))?;
    assert!(
        plugin_log.contains("publishing failed"),
        "the outage was seen and retried (plugin log)"
    );
    drop(plugin);
    Ok(())
}
