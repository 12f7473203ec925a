//! Publishing the node's ResourceSlices with server-side apply, deleting stale ones, and the
//! rescan loop with exponential backoff.

use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::resource::v1::ResourceSlice;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};

use crate::slices::{self, NodeRef};
use crate::sysfs;

/// Field manager used for server-side apply.
pub const FIELD_MANAGER: &str = "mock-accel-dra";

/// API errors while publishing.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// Kubernetes API.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// Node without UID.
    #[error("node {0} has no UID")]
    NoUid(String),
}

/// What a sync did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncOutcome {
    /// Pool generation now published.
    pub generation: i64,
    /// Whether anything was written.
    pub changed: bool,
    /// Slices applied.
    pub slices: usize,
    /// Stale slices deleted.
    pub deleted: usize,
    /// Devices published.
    pub devices: usize,
}

/// Publisher state.
#[derive(Clone)]
pub struct Publisher {
    client: kube::Client,
    driver: String,
    node: String,
    sysfs_root: PathBuf,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("driver", &self.driver)
            .field("node", &self.node)
            .field("sysfs_root", &self.sysfs_root)
            .finish_non_exhaustive()
    }
}

impl Publisher {
    /// Creates a publisher.
    pub fn new(client: kube::Client, driver: String, node: String, sysfs_root: PathBuf) -> Self {
        Self {
            client,
            driver,
            node,
            sysfs_root,
        }
    }

    /// One reconciliation: scan, compare with what is published, apply and delete as needed.
    pub async fn sync(&self) -> Result<SyncOutcome, PublishError> {
        let scan = sysfs::scan(&self.sysfs_root);
        let nodes: Api<Node> = Api::all(self.client.clone());
        let node = nodes.get(&self.node).await?;
        let uid = node
            .metadata
            .uid
            .ok_or_else(|| PublishError::NoUid(self.node.clone()))?;
        let node_ref = NodeRef {
            name: self.node.clone(),
            uid,
        };
        let api: Api<ResourceSlice> = Api::all(self.client.clone());
        let lp = ListParams::default().fields(&format!("spec.nodeName={}", self.node));
        let existing: Vec<ResourceSlice> = api
            .list(&lp)
            .await?
            .items
            .into_iter()
            .filter(|s| s.spec.driver == self.driver)
            .collect();
        let ours: Vec<ResourceSlice> = existing
            .iter()
            .filter(|s| s.spec.pool.name == self.node)
            .cloned()
            .collect();
        let current_gen = ours
            .iter()
            .map(|s| s.spec.pool.generation)
            .max()
            .unwrap_or(0);
        let same_owner = ours.iter().all(|s| {
            s.metadata
                .owner_references
                .as_ref()
                .is_some_and(|o| o.iter().any(|r| r.uid == node_ref.uid))
        });
        let probe = slices::build_slices(&self.driver, &node_ref, &scan.devices, current_gen);
        let unchanged = !ours.is_empty()
            && same_owner
            && ours.len() == existing.len()
            && ours.iter().all(|s| s.spec.pool.generation == current_gen)
            && slices::same_devices(&ours, &probe);
        let devices = scan.devices.len();
        if unchanged {
            return Ok(SyncOutcome {
                generation: current_gen,
                changed: false,
                slices: probe.len(),
                deleted: 0,
                devices,
            });
        }
        let generation = current_gen + 1;
        let desired = slices::build_slices(&self.driver, &node_ref, &scan.devices, generation);
        let pp = PatchParams::apply(FIELD_MANAGER).force();
        for s in &desired {
            let name = s.metadata.name.clone().unwrap_or_default();
            let mut body = serde_json::to_value(s).map_err(kube::Error::SerdeError)?;
            if let Some(o) = body.as_object_mut() {
                o.insert("apiVersion".into(), "resource.k8s.io/v1".into());
                o.insert("kind".into(), "ResourceSlice".into());
            }
            api.patch(&name, &pp, &Patch::Apply(&body)).await?;
        }
        let keep: std::collections::HashSet<_> = desired
            .iter()
            .filter_map(|s| s.metadata.name.clone())
            .collect();
        let mut deleted = 0;
        for s in &existing {
            let Some(name) = &s.metadata.name else {
                continue;
            };
            if !keep.contains(name) {
                match api.delete(name, &DeleteParams::default()).await {
                    Ok(_) => deleted += 1,
                    Err(kube::Error::Api(e)) if e.code == 404 => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        tracing::info!(
            generation,
            slices = desired.len(),
            deleted,
            devices,
            skipped = scan.skipped.len(),
            "published"
        );
        Ok(SyncOutcome {
            generation,
            changed: true,
            slices: desired.len(),
            deleted,
            devices,
        })
    }

    /// Runs `sync` every `interval`; failures are retried with exponential backoff
    /// (1 s doubling up to the interval, at least 1 s). Never returns.
    pub async fn run(&self, interval: Duration) {
        let max = interval.max(Duration::from_secs(1));
        let mut backoff = Duration::from_secs(1);
        loop {
            match self.sync().await {
                Ok(_) => {
                    backoff = Duration::from_secs(1);
                    tokio::time::sleep(interval).await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "publishing failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(max);
                }
            }
        }
    }
}
