//! The kubelet plugin: registration, NodePrepareResources / NodeUnprepareResources (DRA v1
//! and v1beta1, wire-identical), CDI specs and an atomic checkpoint.
//!
//! Prepare reads each claim from the API server (through a [`ClaimSource`]), checks its UID,
//! takes the allocation results for our driver and this node's pool, writes `1` to each
//! device's sysfs `status`, writes the claim's CDI spec and records everything in the
//! checkpoint so a restarted plugin can unprepare. Unprepare undoes it from the checkpoint.
//! Requests are serialized; errors are per claim, never a failed RPC.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use k8s_openapi::api::resource::v1::ResourceClaim;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::cdi;
use crate::discovery::{self, MockDevice};

/// Generated from our own `dra/proto/*.proto`.
pub mod proto {
    pub mod registration {
        tonic::include_proto!("pluginregistration");
    }
    pub mod v1 {
        tonic::include_proto!("k8s.io.kubelet.pkg.apis.dra.v1");
    }
    pub mod v1beta1 {
        tonic::include_proto!("k8s.io.kubelet.pkg.apis.dra.v1beta1");
    }
}

/// Where claims come from: the API server in production, a map in unit tests.
pub trait ClaimSource: Send + Sync + 'static {
    fn get(
        &self,
        namespace: &str,
        name: &str,
    ) -> impl Future<Output = Result<ResourceClaim, String>> + Send;
}

impl ClaimSource for kube::Client {
    async fn get(&self, namespace: &str, name: &str) -> Result<ResourceClaim, String> {
        kube::Api::<ResourceClaim>::namespaced(self.clone(), namespace)
            .get(name)
            .await
            .map_err(|e| format!("cannot get ResourceClaim {namespace}/{name}: {e}"))
    }
}

/// Plugin settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub driver: String,
    pub node_name: String,
    pub sysfs_root: PathBuf,
    pub cdi_root: PathBuf,
    /// Holds `dra.sock` and `checkpoint.json`.
    pub plugin_dir: PathBuf,
}

/// One prepared device, as recorded in the checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreparedDevice {
    pub request: String,
    pub pool: String,
    /// Kubernetes device name (`mock0-vf1`).
    pub device: String,
    /// Class device name (`mock0_vf1`).
    pub class_name: String,
    pub sysfs_dir: PathBuf,
    pub cdi_id: String,
}

/// One prepared claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreparedClaim {
    pub namespace: String,
    pub name: String,
    pub devices: Vec<PreparedDevice>,
}

/// The checkpoint file's content: prepared claims by UID.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub version: u32,
    pub claims: BTreeMap<String, PreparedClaim>,
}

impl Checkpoint {
    fn path(plugin_dir: &Path) -> PathBuf {
        plugin_dir.join("checkpoint.json")
    }

    /// Load the checkpoint; a missing file is empty, a corrupt one is an error (never
    /// silently dropped: it may hold claims that still need unpreparing).
    pub fn load(plugin_dir: &Path) -> Result<Self, String> {
        let path = Self::path(plugin_dir);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| format!("checkpoint {} is corrupt: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self {
                version: 1,
                claims: BTreeMap::new(),
            }),
            Err(e) => Err(format!("cannot read checkpoint {}: {e}", path.display())),
        }
    }

    fn store(&self, plugin_dir: &Path) -> Result<(), String> {
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| e.to_string())?;
        cdi::write_atomic(&Self::path(plugin_dir), &bytes)
            .map_err(|e| format!("cannot write checkpoint: {e}"))
    }
}

/// A claim reference from the kubelet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimRef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

/// The prepare/unprepare logic, independent of gRPC.
#[derive(Debug)]
pub struct Driver<S> {
    settings: Settings,
    source: S,
    checkpoint: Mutex<Checkpoint>,
}

fn write_status(dir: &Path, value: u32) -> Result<(), String> {
    std::fs::write(dir.join("status"), format!("{value}\n"))
        .map_err(|e| format!("cannot write {}: {e}", dir.join("status").display()))
}

impl<S: ClaimSource> Driver<S> {
    /// Load the checkpoint and make the driver.
    pub fn new(settings: Settings, source: S) -> Result<Self, String> {
        std::fs::create_dir_all(&settings.plugin_dir)
            .map_err(|e| format!("cannot create {}: {e}", settings.plugin_dir.display()))?;
        let checkpoint = Checkpoint::load(&settings.plugin_dir)?;
        Ok(Self {
            settings,
            source,
            checkpoint: Mutex::new(checkpoint),
        })
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Prepare one claim; `Ok` holds the prepared devices.
    pub async fn prepare(&self, claim: &ClaimRef) -> Result<Vec<PreparedDevice>, String> {
        let span = tracing::info_span!("prepare", claim.uid = %claim.uid, claim.name = %claim.name);
        let _enter = span.enter();
        let mut checkpoint = self.checkpoint.lock().await;
        if let Some(done) = checkpoint.claims.get(&claim.uid) {
            // Idempotent: re-assert the side effects and answer as before.
            for d in &done.devices {
                write_status(&d.sysfs_dir, 1)?;
            }
            return Ok(done.devices.clone());
        }
        let object = self.source.get(&claim.namespace, &claim.name).await?;
        let uid = object.metadata.uid.clone().unwrap_or_default();
        if uid != claim.uid {
            return Err(format!(
                "ResourceClaim {}/{} has UID {uid:?}, kubelet asked for {:?} (deleted and recreated?)",
                claim.namespace, claim.name, claim.uid
            ));
        }
        let results = object
            .status
            .and_then(|s| s.allocation)
            .and_then(|a| a.devices)
            .and_then(|d| d.results)
            .unwrap_or_default();
        let ours: Vec<_> = results
            .into_iter()
            .filter(|r| r.driver == self.settings.driver && r.pool == self.settings.node_name)
            .collect();
        if ours.is_empty() {
            return Err(format!(
                "ResourceClaim {}/{} has no allocated devices of driver {} in pool {}",
                claim.namespace, claim.name, self.settings.driver, self.settings.node_name
            ));
        }
        let present = discovery::scan(&self.settings.sysfs_root).map_err(|e| e.to_string())?;
        let mut devices: Vec<(String, MockDevice)> = Vec::with_capacity(ours.len());
        for r in &ours {
            let d = present
                .iter()
                .find(|d| d.k8s_name() == r.device)
                .ok_or_else(|| {
                    format!("allocated device {} is not present on this node", r.device)
                })?;
            devices.push((r.request.clone(), d.clone()));
        }
        let mock_devices: Vec<MockDevice> = devices.iter().map(|(_, d)| d.clone()).collect();
        let prepared: Vec<PreparedDevice> = devices
            .iter()
            .map(|(request, d)| PreparedDevice {
                request: request.clone(),
                pool: self.settings.node_name.clone(),
                device: d.k8s_name(),
                class_name: d.name.clone(),
                sysfs_dir: d.sysfs_dir.clone(),
                cdi_id: cdi::device_id(&self.settings.driver, &claim.uid, d),
            })
            .collect();
        // Record first, so a crash after any side effect is undone by unprepare.
        checkpoint.claims.insert(
            claim.uid.clone(),
            PreparedClaim {
                namespace: claim.namespace.clone(),
                name: claim.name.clone(),
                devices: prepared.clone(),
            },
        );
        if let Err(e) = checkpoint.store(&self.settings.plugin_dir) {
            checkpoint.claims.remove(&claim.uid);
            return Err(e);
        }
        let spec = cdi::spec(
            &self.settings.driver,
            &claim.uid,
            &mock_devices,
            &self.settings.sysfs_root,
        );
        let spec_path = cdi::spec_path(&self.settings.cdi_root, &self.settings.driver, &claim.uid);
        let bytes = serde_json::to_vec_pretty(&spec).map_err(|e| e.to_string())?;
        cdi::write_atomic(&spec_path, &bytes)
            .map_err(|e| format!("cannot write CDI spec {}: {e}", spec_path.display()))?;
        for d in &prepared {
            write_status(&d.sysfs_dir, 1)?;
        }
        tracing::info!(devices = ?prepared.iter().map(|d| &d.device).collect::<Vec<_>>(), "prepared");
        Ok(prepared)
    }

    /// Unprepare one claim (unknown claims are already unprepared).
    pub async fn unprepare(&self, claim_uid: &str) -> Result<(), String> {
        let span = tracing::info_span!("unprepare", claim.uid = %claim_uid);
        let _enter = span.enter();
        let mut checkpoint = self.checkpoint.lock().await;
        let Some(done) = checkpoint.claims.get(claim_uid).cloned() else {
            return Ok(());
        };
        for d in &done.devices {
            match write_status(&d.sysfs_dir, 0) {
                Ok(()) => {}
                // The device went away (hot-unplug, module unloaded): nothing left to reset.
                Err(e) if !d.sysfs_dir.exists() => tracing::warn!(error = %e, "device gone"),
                Err(e) => return Err(e),
            }
        }
        let spec_path = cdi::spec_path(&self.settings.cdi_root, &self.settings.driver, claim_uid);
        match std::fs::remove_file(&spec_path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("cannot remove {}: {e}", spec_path.display())),
        }
        checkpoint.claims.remove(claim_uid);
        checkpoint.store(&self.settings.plugin_dir)?;
        tracing::info!("unprepared");
        Ok(())
    }
}

/// The gRPC services over one shared [`Driver`].
#[derive(Debug)]
pub struct Services<S>(pub Arc<Driver<S>>);

impl<S> Clone for Services<S> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

macro_rules! dra_service {
    ($module:ident) => {
        #[tonic::async_trait]
        impl<S: ClaimSource> proto::$module::dra_plugin_server::DraPlugin for Services<S> {
            async fn node_prepare_resources(
                &self,
                request: tonic::Request<proto::$module::NodePrepareResourcesRequest>,
            ) -> Result<tonic::Response<proto::$module::NodePrepareResourcesResponse>, tonic::Status>
            {
                let mut claims = std::collections::HashMap::new();
                for c in request.into_inner().claims {
                    let claim = ClaimRef {
                        namespace: c.namespace,
                        name: c.name,
                        uid: c.uid,
                    };
                    let answer = match self.0.prepare(&claim).await {
                        Ok(devices) => proto::$module::NodePrepareResourceResponse {
                            devices: devices
                                .into_iter()
                                .map(|d| proto::$module::Device {
                                    request_names: vec![d.request],
                                    pool_name: d.pool,
                                    device_name: d.device,
                                    cdi_device_ids: vec![d.cdi_id],
                                })
                                .collect(),
                            error: String::new(),
                        },
                        Err(error) => {
                            tracing::warn!(claim.uid = %claim.uid, %error, "prepare failed");
                            proto::$module::NodePrepareResourceResponse {
                                devices: Vec::new(),
                                error,
                            }
                        }
                    };
                    claims.insert(claim.uid, answer);
                }
                Ok(tonic::Response::new(
                    proto::$module::NodePrepareResourcesResponse { claims },
                ))
            }

            async fn node_unprepare_resources(
                &self,
                request: tonic::Request<proto::$module::NodeUnprepareResourcesRequest>,
            ) -> Result<tonic::Response<proto::$module::NodeUnprepareResourcesResponse>, tonic::Status>
            {
                let mut claims = std::collections::HashMap::new();
                for c in request.into_inner().claims {
                    let error = match self.0.unprepare(&c.uid).await {
                        Ok(()) => String::new(),
                        Err(e) => {
                            tracing::warn!(claim.uid = %c.uid, error = %e, "unprepare failed");
                            e
                        }
                    };
                    claims.insert(c.uid, proto::$module::NodeUnprepareResourceResponse { error });
                }
                Ok(tonic::Response::new(
                    proto::$module::NodeUnprepareResourcesResponse { claims },
                ))
            }
        }
    };
}

dra_service!(v1);
dra_service!(v1beta1);

/// The plugin-registration service the kubelet's plugin watcher calls.
#[derive(Debug, Clone)]
pub struct Registration {
    pub driver: String,
    pub endpoint: PathBuf,
}

#[tonic::async_trait]
impl proto::registration::registration_server::Registration for Registration {
    async fn get_info(
        &self,
        _request: tonic::Request<proto::registration::InfoRequest>,
    ) -> Result<tonic::Response<proto::registration::PluginInfo>, tonic::Status> {
        Ok(tonic::Response::new(proto::registration::PluginInfo {
            r#type: "DRAPlugin".into(),
            name: self.driver.clone(),
            endpoint: self.endpoint.display().to_string(),
            supported_versions: vec!["v1.DRAPlugin".into(), "v1beta1.DRAPlugin".into()],
        }))
    }

    async fn notify_registration_status(
        &self,
        request: tonic::Request<proto::registration::RegistrationStatus>,
    ) -> Result<tonic::Response<proto::registration::RegistrationStatusResponse>, tonic::Status>
    {
        let status = request.into_inner();
        if status.plugin_registered {
            tracing::info!("registered with the kubelet");
        } else {
            tracing::error!(error = %status.error, "kubelet refused registration");
        }
        Ok(tonic::Response::new(
            proto::registration::RegistrationStatusResponse {},
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::{class_dir, write_fixture};

    struct Claims(BTreeMap<String, ResourceClaim>);

    impl ClaimSource for Claims {
        async fn get(&self, namespace: &str, name: &str) -> Result<ResourceClaim, String> {
            self.0
                .get(&format!("{namespace}/{name}"))
                .cloned()
                .ok_or_else(|| "not found".to_owned())
        }
    }

    fn claim(uid: &str, results: &[(&str, &str, &str)]) -> ResourceClaim {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "c", "namespace": "ns", "uid": uid},
            "spec": {},
            "status": {"allocation": {"devices": {"results": results.iter().map(|(driver, pool, device)| {
                serde_json::json!({"request": "r", "driver": driver, "pool": pool, "device": device})
            }).collect::<Vec<_>>()}}}
        }))
        .expect("claim")
    }

    fn driver(dir: &Path, claims: ResourceClaim) -> Driver<Claims> {
        let settings = Settings {
            driver: "mock-accel.example.com".into(),
            node_name: "node1".into(),
            sysfs_root: dir.join("root"),
            cdi_root: dir.join("cdi"),
            plugin_dir: dir.join("plugin"),
        };
        write_fixture(&settings.sysfs_root, 2, 2, 1).expect("fixture");
        Driver::new(settings, Claims([("ns/c".to_owned(), claims)].into())).expect("driver")
    }

    fn status(dir: &Path, name: &str) -> String {
        std::fs::read_to_string(class_dir(&dir.join("root")).join(name).join("status"))
            .expect("status")
            .trim()
            .to_owned()
    }

    fn cref(uid: &str) -> ClaimRef {
        ClaimRef {
            namespace: "ns".into(),
            name: "c".into(),
            uid: uid.into(),
        }
    }

    #[tokio::test]
    async fn prepare_writes_status_cdi_and_checkpoint_and_unprepare_undoes_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = driver(
            dir.path(),
            claim(
                "u1",
                &[
                    ("mock-accel.example.com", "node1", "mock0-vf0"),
                    ("other.example.com", "node1", "x"),
                ],
            ),
        );
        let prepared = d.prepare(&cref("u1")).await.expect("prepare");
        assert_eq!(prepared.len(), 1, "only our driver's results");
        assert_eq!(
            prepared[0].cdi_id,
            "mock-accel.example.com/device=u1-mock0-vf0"
        );
        assert_eq!(status(dir.path(), "mock0_vf0"), "1");
        let spec = dir.path().join("cdi/mock-accel.example.com-u1.json");
        assert!(spec.exists());
        // Idempotent.
        assert_eq!(d.prepare(&cref("u1")).await.expect("again"), prepared);
        // A restarted plugin (new Driver, same dirs) can unprepare from the checkpoint.
        let restarted =
            Driver::new(d.settings().clone(), Claims(BTreeMap::new())).expect("restart");
        restarted.unprepare("u1").await.expect("unprepare");
        assert_eq!(status(dir.path(), "mock0_vf0"), "0");
        assert!(!spec.exists());
        assert!(Checkpoint::load(&dir.path().join("plugin"))
            .expect("load")
            .claims
            .is_empty());
        restarted
            .unprepare("u1")
            .await
            .expect("unprepare is idempotent");
    }

    #[tokio::test]
    async fn bad_claims_get_per_claim_errors_and_change_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = driver(
            dir.path(),
            claim("u1", &[("mock-accel.example.com", "node2", "mock0")]),
        );
        let e = d.prepare(&cref("u1")).await.expect_err("other pool");
        assert!(e.contains("no allocated devices"), "{e}");
        let e = d.prepare(&cref("u2")).await.expect_err("uid mismatch");
        assert!(e.contains("UID"), "{e}");
        let e = d
            .prepare(&ClaimRef {
                namespace: "ns".into(),
                name: "missing".into(),
                uid: "u3".into(),
            })
            .await
            .expect_err("missing");
        assert!(e.contains("not found"));
        assert_eq!(status(dir.path(), "mock0"), "0");
        assert!(Checkpoint::load(&dir.path().join("plugin"))
            .expect("load")
            .claims
            .is_empty());

        let dir2 = tempfile::tempdir().expect("tempdir");
        let d2 = driver(
            dir2.path(),
            claim("u1", &[("mock-accel.example.com", "node1", "mock9")]),
        );
        let e = d2.prepare(&cref("u1")).await.expect_err("absent device");
        assert!(e.contains("not present"), "{e}");
    }

    #[test]
    fn corrupt_checkpoint_is_an_error_not_an_empty_state() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("checkpoint.json"), b"{not json").expect("write");
        assert!(Checkpoint::load(dir.path())
            .expect_err("corrupt")
            .contains("corrupt"));
    }
}
