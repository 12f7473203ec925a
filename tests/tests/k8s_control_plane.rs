//! The loopback control plane itself: real etcd + kube-apiserver + controller-manager +
//! scheduler serve resource.k8s.io/v1, and the real scheduler allocates a device from a
//! hand-written ResourceSlice with a CEL DeviceClass. (Our driver's own tests are in
//! `dra_control_plane.rs`; this one proves the harness is a real peer.)

use std::time::{Duration, Instant};

use mock_accel_tests::control_plane::{create_ready_node, ControlPlane};

#[test]
fn real_scheduler_allocates_a_device_from_a_resource_slice() -> anyhow::Result<()> {
    let cp = ControlPlane::start()?;
    eprintln!("control plane ready in {:?}", cp.startup);
    let resources = cp.kubectl(&["api-resources", "--api-group=resource.k8s.io", "-o", "name"])?;
    for r in [
        "deviceclasses",
        "resourceclaims",
        "resourceclaimtemplates",
        "resourceslices",
    ] {
        assert!(resources.contains(r), "{r} served: {resources}");
    }
    create_ready_node(&cp, "node-a")?;
    cp.kubectl_stdin(&["apply", "-f", "-"], r#"
apiVersion: resource.k8s.io/v1
kind: DeviceClass
metadata: {name: harness-class}
spec:
  selectors:
  - cel: {expression: 'device.driver == "harness.example.com" && device.attributes["harness.example.com"].kind == "good"'}
---
apiVersion: resource.k8s.io/v1
kind: ResourceSlice
metadata: {name: node-a-harness}
spec:
  driver: harness.example.com
  nodeName: node-a
  pool: {name: node-a, generation: 1, resourceSliceCount: 1}
  devices:
  - name: bad0
    attributes: {kind: {string: bad}}
  - name: good0
    attributes: {kind: {string: good}}
---
apiVersion: resource.k8s.io/v1
kind: ResourceClaim
metadata: {name: c1, namespace: default}
spec:
  devices:
    requests:
    - name: r
      exactly: {deviceClassName: harness-class}
---
apiVersion: v1
kind: Pod
metadata: {name: p1, namespace: default}
spec:
  resourceClaims: [{name: r, resourceClaimName: c1}]
  containers:
  - name: c
    image: busybox
    resources: {claims: [{name: r}]}
"#)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let claim = loop {
        let claim = cp.get_json(&["resourceclaim", "c1", "-n", "default"])?;
        if !claim["status"]["allocation"].is_null() {
            break claim;
        }
        assert!(
            Instant::now() < deadline,
            "claim not allocated in 60 s; scheduler log:\n{}",
            cp.log_tail("kube-scheduler", 40)
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let results = &claim["status"]["allocation"]["devices"]["results"];
    assert_eq!(results.as_array().map(Vec::len), Some(1), "{claim}");
    assert_eq!(
        results[0]["device"], "good0",
        "CEL selected the good device"
    );
    assert_eq!(results[0]["pool"], "node-a");
    let pod = cp.get_json(&["pod", "p1", "-n", "default"])?;
    assert_eq!(pod["spec"]["nodeName"], "node-a", "scheduler bound the pod");
    Ok(())
}
