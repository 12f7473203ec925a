//! Claim preparation for the kubelet: status writes, CDI specs, checkpoint.
//!
//! All operations are serialized by one mutex. The checkpoint (`<plugin dir>/checkpoint.json`,
//! written atomically) records every prepared claim with its devices, so a restarted plugin
//! can unprepare claims the previous process prepared. Errors are per claim.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};

use k8s_openapi::api::resource::v1::ResourceClaim;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::{cdi, slices, sysfs};

/// Most claims one checkpoint may hold / one checkpoint file may weigh (bounded reads).
pub const MAX_CHECKPOINT_BYTES: u64 = 64 << 20;

/// Source of ResourceClaims (the API server in production, a map in tests).
pub trait ClaimSource: Send + Sync {
    /// Reads claim `namespace/name`.
    fn get(
        &self,
        namespace: &str,
        name: &str,
    ) -> impl Future<Output = Result<ResourceClaim, String>> + Send;
}

/// Claim identity as sent by the kubelet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimRef {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// UID.
    pub uid: String,
}

/// One prepared device as returned to the kubelet and stored in the checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PreparedDevice {
    /// Request names of the allocation result.
    pub requests: Vec<String>,
    /// Pool name.
    pub pool: String,
    /// Device name as published (ResourceSlice).
    pub device: String,
    /// sysfs class name.
    pub sysfs_name: String,
    /// CDI IDs.
    pub cdi_ids: Vec<String>,
}

/// Checkpoint entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PreparedClaim {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Devices.
    pub devices: Vec<PreparedDevice>,
}

/// Checkpoint file content.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Format version.
    pub version: u32,
    /// Prepared claims by UID.
    pub claims: BTreeMap<String, PreparedClaim>,
}

impl Checkpoint {
    /// Loads a checkpoint; a missing file is an empty checkpoint.
    pub fn load(path: &Path) -> Result<Self, String> {
        use std::io::Read;
        let f = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let mut buf = Vec::new();
        f.take(MAX_CHECKPOINT_BYTES)
            .read_to_end(&mut buf)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        Self::parse(&buf).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parses checkpoint bytes (at most [`MAX_CHECKPOINT_BYTES`] are accepted).
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() as u64 > MAX_CHECKPOINT_BYTES {
            return Err(format!("checkpoint exceeds {MAX_CHECKPOINT_BYTES} bytes"));
        }
        serde_json::from_slice(bytes).map_err(|e| e.to_string())
    }

    /// Saves atomically.
    pub fn save(&self, path: &Path) -> Result<(), String> {
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| e.to_string())?;
        cdi::write_atomic(path, &bytes).map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// Static settings of the preparer.
#[derive(Debug, Clone)]
pub struct Config {
    /// Driver name.
    pub driver: String,
    /// Node name (= our pool name).
    pub node: String,
    /// sysfs root.
    pub sysfs_root: PathBuf,
    /// CDI spec directory.
    pub cdi_root: PathBuf,
    /// Checkpoint file.
    pub checkpoint: PathBuf,
}

/// Prepares and unprepares claims.
#[derive(Debug)]
pub struct Preparer<C> {
    cfg: Config,
    source: C,
    state: Mutex<Checkpoint>,
}

impl<C: ClaimSource> Preparer<C> {
    /// Creates a preparer, loading the checkpoint (a corrupt checkpoint is an error: we must not
    /// forget prepared claims silently).
    pub fn new(cfg: Config, source: C) -> Result<Self, String> {
        let cp = Checkpoint::load(&cfg.checkpoint)?;
        Ok(Self {
            cfg,
            source,
            state: Mutex::new(cp),
        })
    }

    /// Settings.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Snapshot of the checkpoint.
    pub async fn checkpoint(&self) -> Checkpoint {
        self.state.lock().await.clone()
    }

    /// Prepares one claim; `Err` is the per-claim error string for the kubelet.
    pub async fn prepare(&self, claim: &ClaimRef) -> Result<Vec<PreparedDevice>, String> {
        let mut state = self.state.lock().await;
        if let Some(p) = state.claims.get(&claim.uid) {
            // Idempotent: already prepared by us (possibly by a previous process). After a node
            // reboot /var/run/cdi (tmpfs) is empty and the devices were re-probed while the
            // checkpoint survived: re-apply status and the CDI spec when the spec is missing.
            if !cdi::spec_path(&self.cfg.cdi_root, &self.cfg.driver, &claim.uid).exists() {
                let mut devs = Vec::with_capacity(p.devices.len());
                for d in &p.devices {
                    devs.push(
                        sysfs::read_device(&self.cfg.sysfs_root, &d.sysfs_name)
                            .map_err(|e| format!("device {}: {e}", d.device))?,
                    );
                }
                for d in &devs {
                    sysfs::write_status(&self.cfg.sysfs_root, &d.name, 1)
                        .map_err(|e| format!("device {}: {e}", d.name))?;
                }
                let spec =
                    cdi::build_spec(&self.cfg.driver, &claim.uid, &devs, &self.cfg.sysfs_root);
                cdi::write_spec(&self.cfg.cdi_root, &self.cfg.driver, &claim.uid, &spec)
                    .map_err(|e| format!("CDI spec: {e}"))?;
            }
            return Ok(p.devices.clone());
        }
        let rc = self.source.get(&claim.namespace, &claim.name).await?;
        let got_uid = rc.metadata.uid.as_deref().unwrap_or_default();
        if got_uid != claim.uid {
            return Err(format!(
                "claim {}/{}: UID mismatch (kubelet {}, API {got_uid})",
                claim.namespace, claim.name, claim.uid
            ));
        }
        let results = rc
            .status
            .as_ref()
            .and_then(|s| s.allocation.as_ref())
            .and_then(|a| a.devices.as_ref())
            .map(|d| d.results.as_deref().unwrap_or_default())
            .ok_or_else(|| format!("claim {}/{}: not allocated", claim.namespace, claim.name))?;
        let ours: Vec<_> = results
            .iter()
            .filter(|r| r.driver == self.cfg.driver && r.pool == self.cfg.node)
            .collect();
        let names = list_names(&self.cfg.sysfs_root);
        let mut devs = Vec::with_capacity(ours.len());
        for r in &ours {
            let sysfs_name = names
                .iter()
                .find(|n| slices::device_name(n) == r.device)
                .ok_or_else(|| {
                    format!(
                        "device {} of claim {} not found in sysfs",
                        r.device, claim.uid
                    )
                })?;
            let d = sysfs::read_device(&self.cfg.sysfs_root, sysfs_name)
                .map_err(|e| format!("device {}: {e}", r.device))?;
            devs.push(d);
        }
        for d in &devs {
            sysfs::write_status(&self.cfg.sysfs_root, &d.name, 1)
                .map_err(|e| format!("device {}: {e}", d.name))?;
        }
        let spec = cdi::build_spec(&self.cfg.driver, &claim.uid, &devs, &self.cfg.sysfs_root);
        cdi::write_spec(&self.cfg.cdi_root, &self.cfg.driver, &claim.uid, &spec)
            .map_err(|e| format!("CDI spec: {e}"))?;
        let prepared: Vec<PreparedDevice> = ours
            .iter()
            .zip(&devs)
            .map(|(r, d)| PreparedDevice {
                requests: vec![r.request.clone()],
                pool: r.pool.clone(),
                device: r.device.clone(),
                sysfs_name: d.name.clone(),
                cdi_ids: vec![cdi::device_id(
                    &self.cfg.driver,
                    &cdi::cdi_name(&claim.uid, &d.name),
                )],
            })
            .collect();
        let mut next = state.clone();
        next.version = 1;
        next.claims.insert(
            claim.uid.clone(),
            PreparedClaim {
                namespace: claim.namespace.clone(),
                name: claim.name.clone(),
                devices: prepared.clone(),
            },
        );
        next.save(&self.cfg.checkpoint)?;
        *state = next;
        tracing::info!(claim = %claim.uid, devices = prepared.len(), "prepared");
        Ok(prepared)
    }

    /// Unprepares one claim; unknown claims succeed (idempotent).
    pub async fn unprepare(&self, claim: &ClaimRef) -> Result<(), String> {
        let mut state = self.state.lock().await;
        if let Some(p) = state.claims.get(&claim.uid) {
            for d in &p.devices {
                if let Err(e) = sysfs::write_status(&self.cfg.sysfs_root, &d.sysfs_name, 0) {
                    // The device may have disappeared (VFs disabled); nothing left to release.
                    tracing::warn!(device = %d.sysfs_name, error = %e, "cannot reset status");
                }
            }
        }
        cdi::remove_spec(&self.cfg.cdi_root, &self.cfg.driver, &claim.uid)
            .map_err(|e| format!("CDI spec: {e}"))?;
        if state.claims.contains_key(&claim.uid) {
            let mut next = state.clone();
            next.claims.remove(&claim.uid);
            next.save(&self.cfg.checkpoint)?;
            *state = next;
        }
        tracing::info!(claim = %claim.uid, "unprepared");
        Ok(())
    }
}

fn list_names(root: &Path) -> Vec<String> {
    std::fs::read_dir(sysfs::class_dir(root))
        .map(|rd| {
            rd.take(sysfs::MAX_DEVICES)
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// In-memory claim source (tests, benchmarks).
#[derive(Debug, Default)]
pub struct MapSource(pub std::sync::Mutex<BTreeMap<(String, String), ResourceClaim>>);

impl MapSource {
    /// Adds a claim.
    pub fn insert(&self, claim: ResourceClaim) {
        let ns = claim.metadata.namespace.clone().unwrap_or_default();
        let name = claim.metadata.name.clone().unwrap_or_default();
        if let Ok(mut m) = self.0.lock() {
            m.insert((ns, name), claim);
        }
    }
}

impl ClaimSource for MapSource {
    fn get(
        &self,
        namespace: &str,
        name: &str,
    ) -> impl Future<Output = Result<ResourceClaim, String>> + Send {
        let r = self
            .0
            .lock()
            .ok()
            .and_then(|m| m.get(&(namespace.to_string(), name.to_string())).cloned())
            .ok_or_else(|| format!("resourceclaims \"{name}\" not found"));
        std::future::ready(r)
    }
}

impl<T: ClaimSource> ClaimSource for std::sync::Arc<T> {
    fn get(
        &self,
        namespace: &str,
        name: &str,
    ) -> impl Future<Output = Result<ResourceClaim, String>> + Send {
        (**self).get(namespace, name)
    }
}

/// Builds an allocated claim (tests, benchmarks): `(request, driver, pool, device)` results.
pub fn allocated_claim(
    ns: &str,
    name: &str,
    uid: &str,
    results: &[(&str, &str, &str, &str)],
) -> ResourceClaim {
    use k8s_openapi::api::resource::v1::{
        AllocationResult, DeviceAllocationResult, DeviceRequestAllocationResult,
        ResourceClaimStatus,
    };
    ResourceClaim {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            namespace: Some(ns.into()),
            name: Some(name.into()),
            uid: Some(uid.into()),
            ..Default::default()
        },
        spec: Default::default(),
        status: Some(ResourceClaimStatus {
            allocation: Some(AllocationResult {
                devices: Some(DeviceAllocationResult {
                    results: results
                        .iter()
                        .map(|(req, drv, pool, dev)| DeviceRequestAllocationResult {
                            request: (*req).into(),
                            driver: (*drv).into(),
                            pool: (*pool).into(),
                            device: (*dev).into(),
                            ..Default::default()
                        })
                        .collect::<Vec<_>>()
                        .into(),
                    config: None,
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixture;
    use std::sync::Arc;

    const DRV: &str = "mock-accel.example.com";

    struct Env {
        _t: tempfile::TempDir,
        cfg: Config,
        src: Arc<MapSource>,
    }

    fn env() -> Env {
        let t = tempfile::tempdir().expect("tmp");
        fixture::write_basic(&t.path().join("root")).expect("fixture");
        let cfg = Config {
            driver: DRV.into(),
            node: "node1".into(),
            sysfs_root: t.path().join("root"),
            cdi_root: t.path().join("cdi"),
            checkpoint: t.path().join("plugin/checkpoint.json"),
        };
        Env {
            _t: t,
            cfg,
            src: Arc::new(MapSource::default()),
        }
    }

    fn cref(uid: &str, name: &str) -> ClaimRef {
        ClaimRef {
            namespace: "default".into(),
            name: name.into(),
            uid: uid.into(),
        }
    }

    fn status(e: &Env, dev: &str) -> u32 {
        sysfs::read_device(&e.cfg.sysfs_root, dev)
            .expect("dev")
            .status
    }

    #[tokio::test]
    async fn prepare_writes_status_cdi_and_checkpoint_and_unprepare_reverts() {
        let e = env();
        e.src.insert(allocated_claim(
            "default",
            "c1",
            "uid-1",
            &[
                ("gpu", DRV, "node1", "mock0-vf1"),
                ("gpu", "other.example.com", "node1", "x"),
                ("gpu", DRV, "node2", "mock1"),
            ],
        ));
        let p = Preparer::new(e.cfg.clone(), e.src.clone()).expect("new");
        let devs = p.prepare(&cref("uid-1", "c1")).await.expect("prepare");
        assert_eq!(devs.len(), 1, "only our driver and our pool");
        assert_eq!(
            devs[0].cdi_ids,
            ["mock-accel.example.com/device=uid-1-mock0-vf1"]
        );
        assert_eq!(status(&e, "mock0_vf1"), 1);
        assert_eq!(status(&e, "mock1"), 0);
        let spec_path = cdi::spec_path(&e.cfg.cdi_root, DRV, "uid-1");
        let spec: cdi::Spec =
            serde_json::from_slice(&std::fs::read(&spec_path).expect("spec")).expect("json");
        assert_eq!(spec.devices[0].name, "uid-1-mock0-vf1");
        assert!(Checkpoint::load(&e.cfg.checkpoint)
            .expect("cp")
            .claims
            .contains_key("uid-1"));

        // Idempotent.
        assert_eq!(p.prepare(&cref("uid-1", "c1")).await.expect("again"), devs);

        p.unprepare(&cref("uid-1", "c1")).await.expect("unprepare");
        assert_eq!(status(&e, "mock0_vf1"), 0);
        assert!(!spec_path.exists());
        assert!(Checkpoint::load(&e.cfg.checkpoint)
            .expect("cp")
            .claims
            .is_empty());
        p.unprepare(&cref("uid-1", "c1"))
            .await
            .expect("unprepare twice");
    }

    #[tokio::test]
    async fn restarted_plugin_unprepares_from_checkpoint() {
        let e = env();
        e.src.insert(allocated_claim(
            "default",
            "c1",
            "uid-1",
            &[("r", DRV, "node1", "mock1")],
        ));
        {
            let p = Preparer::new(e.cfg.clone(), e.src.clone()).expect("new");
            p.prepare(&cref("uid-1", "c1")).await.expect("prepare");
        }
        // "Reboot": CDI tmpfs wiped and status reset; a repeated prepare restores both.
        std::fs::remove_dir_all(&e.cfg.cdi_root).expect("wipe cdi");
        sysfs::write_status(&e.cfg.sysfs_root, "mock1", 0).expect("reset");
        {
            let p = Preparer::new(e.cfg.clone(), Arc::new(MapSource::default())).expect("new");
            p.prepare(&cref("uid-1", "c1"))
                .await
                .expect("re-prepare from checkpoint");
            assert!(cdi::spec_path(&e.cfg.cdi_root, DRV, "uid-1").exists());
        }
        // New process, and the claim is gone from the API by now.
        let p2 = Preparer::new(e.cfg.clone(), Arc::new(MapSource::default())).expect("new");
        assert_eq!(status(&e, "mock1"), 1);
        p2.unprepare(&cref("uid-1", "c1")).await.expect("unprepare");
        assert_eq!(status(&e, "mock1"), 0);
        assert!(!cdi::spec_path(&e.cfg.cdi_root, DRV, "uid-1").exists());
    }

    #[tokio::test]
    async fn uid_mismatch_and_unallocated_claims_are_per_claim_errors() {
        let e = env();
        e.src.insert(allocated_claim(
            "default",
            "c1",
            "uid-new",
            &[("r", DRV, "node1", "mock1")],
        ));
        let mut unalloc = allocated_claim("default", "c2", "uid-2", &[]);
        unalloc.status = None;
        e.src.insert(unalloc);
        e.src.insert(allocated_claim(
            "default",
            "c3",
            "uid-3",
            &[("r", DRV, "node1", "nonexistent")],
        ));
        let p = Preparer::new(e.cfg.clone(), e.src.clone()).expect("new");
        assert!(p
            .prepare(&cref("uid-old", "c1"))
            .await
            .err()
            .unwrap_or_default()
            .contains("UID mismatch"));
        assert!(p
            .prepare(&cref("uid-2", "c2"))
            .await
            .err()
            .unwrap_or_default()
            .contains("not allocated"));
        assert!(p
            .prepare(&cref("uid-3", "c3"))
            .await
            .err()
            .unwrap_or_default()
            .contains("not found"));
        assert!(p
            .prepare(&cref("uid-4", "missing"))
            .await
            .err()
            .unwrap_or_default()
            .contains("not found"));
        assert!(p.checkpoint().await.claims.is_empty());
        assert_eq!(status(&e, "mock1"), 0);
    }

    #[test]
    fn corrupt_checkpoint_is_an_error_not_a_panic() {
        let e = env();
        std::fs::create_dir_all(e.cfg.checkpoint.parent().expect("p")).expect("mkdir");
        std::fs::write(&e.cfg.checkpoint, b"{not json").expect("w");
        assert!(Preparer::new(e.cfg.clone(), e.src.clone()).is_err());
    }
}
