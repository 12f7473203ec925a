//! Publishing this node's ResourceSlices: rescan sysfs, server-side apply the slices (fixed
//! field manager), delete stale ones, bump the pool generation when the devices change, and
//! retry API errors with exponential backoff (API server restarts included).

use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::resource::v1::ResourceSlice;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::Api;
use serde_json::Value;

use crate::discovery;
use crate::slices::{build_slices, published_content, Pool};

/// Server-side apply field manager.
pub const FIELD_MANAGER: &str = "mock-accel-dra";

/// Why one publishing round failed (the loop retries).
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("scanning sysfs: {0}")]
    Scan(#[from] discovery::ScanError),
    #[error("API server: {0}")]
    Api(#[from] kube::Error),
    #[error("Node {0} has no UID")]
    NodeUid(String),
}

/// Publishes one node's pool.
pub struct Publisher {
    client: kube::Client,
    pub driver: String,
    pub node_name: String,
    pub sysfs_root: PathBuf,
    generation: i64,
    published: Option<Value>,
    node_uid: Option<String>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("driver", &self.driver)
            .field("node_name", &self.node_name)
            .field("generation", &self.generation)
            .finish()
    }
}

impl Publisher {
    pub fn new(
        client: kube::Client,
        driver: String,
        node_name: String,
        sysfs_root: PathBuf,
    ) -> Self {
        Self {
            client,
            driver,
            node_name,
            sysfs_root,
            generation: 0,
            published: None,
            node_uid: None,
        }
    }

    fn selector(&self) -> ListParams {
        ListParams::default().fields(&format!(
            "spec.nodeName={},spec.driver={}",
            self.node_name, self.driver
        ))
    }

    /// One round: returns the number of devices published.
    pub async fn reconcile(&mut self) -> Result<usize, PublishError> {
        let devices = discovery::scan(&self.sysfs_root)?;
        let api: Api<ResourceSlice> = Api::all(self.client.clone());
        if self.node_uid.is_none() {
            let node = Api::<Node>::all(self.client.clone())
                .get(&self.node_name)
                .await?;
            self.node_uid = Some(
                node.metadata
                    .uid
                    .ok_or_else(|| PublishError::NodeUid(self.node_name.clone()))?,
            );
        }
        let existing = api.list(&self.selector()).await?;
        if self.published.is_none() {
            // Continue the pool's generation across restarts.
            self.generation = existing
                .items
                .iter()
                .map(|s| s.spec.pool.generation)
                .max()
                .unwrap_or(0);
        }
        let content = published_content(&devices);
        if self.published.as_ref() != Some(&content) {
            self.generation += 1;
            tracing::info!(
                devices = devices.len(),
                generation = self.generation,
                "device set changed"
            );
        }
        let pool = Pool {
            driver: &self.driver,
            node_name: &self.node_name,
            node_uid: self.node_uid.as_deref().unwrap_or_default(),
            generation: self.generation,
        };
        let slices = build_slices(&pool, &devices);
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let mut names = Vec::with_capacity(slices.len());
        for slice in &slices {
            let name = slice["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            api.patch(&name, &params, &Patch::Apply(slice)).await?;
            names.push(name);
        }
        for stale in existing.items {
            let name = stale.metadata.name.unwrap_or_default();
            if !names.contains(&name) {
                tracing::info!(slice = %name, "deleting stale slice");
                match api.delete(&name, &DeleteParams::default()).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(e)) if e.code == 404 => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        self.published = Some(content);
        Ok(devices.len())
    }

    /// Reconcile every `interval` forever, backing off from 1 s to `interval` on errors.
    pub async fn run(mut self, interval: Duration) {
        let mut backoff = Duration::from_secs(1);
        loop {
            match self.reconcile().await {
                Ok(n) => {
                    tracing::debug!(devices = n, "published");
                    backoff = Duration::from_secs(1);
                    tokio::time::sleep(interval).await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "publishing failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(interval.max(Duration::from_secs(1)));
                }
            }
        }
    }
}
