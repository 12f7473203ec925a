//! Kubelet-facing gRPC: plugin registration and the DRA `v1`/`v1beta1` services over Unix
//! sockets, plus gRPC health on the DRA socket.
//!
//! Sockets: `<registrar dir>/<driver>-reg.sock` (registration) and `<plugin dir>/dra.sock`
//! (DRA + `grpc.health.v1.Health`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::UnixListener;
use tonic::{Request, Response, Status};

use crate::prepare::{ClaimRef, ClaimSource, PreparedDevice, Preparer};

/// Generated protobuf/gRPC code.
#[allow(
    missing_docs,
    clippy::all,
    missing_debug_implementations,
    unreachable_pub
)]
pub mod pb {
    /// `pluginregistration` package.
    pub mod registration {
        tonic::include_proto!("pluginregistration");
    }
    /// `k8s.io.kubelet.pkg.apis.dra.v1` package.
    pub mod v1 {
        tonic::include_proto!("k8s.io.kubelet.pkg.apis.dra.v1");
    }
    /// `k8s.io.kubelet.pkg.apis.dra.v1beta1` package.
    pub mod v1beta1 {
        tonic::include_proto!("k8s.io.kubelet.pkg.apis.dra.v1beta1");
    }
}

/// Most claims accepted in one RPC (bounds work per request).
pub const MAX_CLAIMS_PER_RPC: usize = 1024;

/// Registration service.
#[derive(Debug, Clone)]
pub struct Registration {
    /// Driver name.
    pub driver: String,
    /// DRA socket path.
    pub endpoint: String,
    /// Set when the kubelet confirms registration.
    pub registered: Arc<tokio::sync::watch::Sender<Option<bool>>>,
}

#[tonic::async_trait]
impl pb::registration::registration_server::Registration for Registration {
    async fn get_info(
        &self,
        _req: Request<pb::registration::InfoRequest>,
    ) -> Result<Response<pb::registration::PluginInfo>, Status> {
        Ok(Response::new(pb::registration::PluginInfo {
            r#type: "DRAPlugin".into(),
            name: self.driver.clone(),
            endpoint: self.endpoint.clone(),
            supported_versions: vec!["v1.DRAPlugin".into(), "v1beta1.DRAPlugin".into()],
        }))
    }

    async fn notify_registration_status(
        &self,
        req: Request<pb::registration::RegistrationStatus>,
    ) -> Result<Response<pb::registration::RegistrationStatusResponse>, Status> {
        let r = req.into_inner();
        if r.plugin_registered {
            tracing::info!("registered with the kubelet");
        } else {
            tracing::error!(error = %r.error, "kubelet rejected registration");
        }
        self.registered.send_replace(Some(r.plugin_registered));
        Ok(Response::new(
            pb::registration::RegistrationStatusResponse {},
        ))
    }
}

/// DRA service shared by both API versions.
#[derive(Debug)]
pub struct Dra<C> {
    preparer: Arc<Preparer<C>>,
}

impl<C> Clone for Dra<C> {
    fn clone(&self) -> Self {
        Self {
            preparer: self.preparer.clone(),
        }
    }
}

impl<C: ClaimSource> Dra<C> {
    /// Wraps a preparer.
    pub fn new(preparer: Arc<Preparer<C>>) -> Self {
        Self { preparer }
    }

    async fn prepare_all(
        &self,
        claims: Vec<ClaimRef>,
    ) -> Result<Vec<(String, Result<Vec<PreparedDevice>, String>)>, Status> {
        if claims.len() > MAX_CLAIMS_PER_RPC {
            return Err(Status::invalid_argument("too many claims in one request"));
        }
        let mut out = Vec::with_capacity(claims.len());
        for c in claims {
            let r = if c.uid.is_empty() || c.name.is_empty() || c.namespace.is_empty() {
                Err("claim namespace, name and uid are required".to_string())
            } else {
                self.preparer.prepare(&c).await
            };
            if let Err(e) = &r {
                tracing::warn!(claim = %c.uid, error = %e, "prepare failed");
            }
            out.push((c.uid, r));
        }
        Ok(out)
    }

    async fn unprepare_all(
        &self,
        claims: Vec<ClaimRef>,
    ) -> Result<Vec<(String, Result<(), String>)>, Status> {
        if claims.len() > MAX_CLAIMS_PER_RPC {
            return Err(Status::invalid_argument("too many claims in one request"));
        }
        let mut out = Vec::with_capacity(claims.len());
        for c in claims {
            let r = if c.uid.is_empty() {
                Err("claim uid is required".to_string())
            } else {
                self.preparer.unprepare(&c).await
            };
            out.push((c.uid, r));
        }
        Ok(out)
    }
}

macro_rules! dra_version {
    ($ver:ident) => {
        #[tonic::async_trait]
        impl<C: ClaimSource + 'static> pb::$ver::dra_plugin_server::DraPlugin for Dra<C> {
            async fn node_prepare_resources(
                &self,
                req: Request<pb::$ver::NodePrepareResourcesRequest>,
            ) -> Result<Response<pb::$ver::NodePrepareResourcesResponse>, Status> {
                let claims = req
                    .into_inner()
                    .claims
                    .into_iter()
                    .map(|c| ClaimRef {
                        namespace: c.namespace,
                        name: c.name,
                        uid: c.uid,
                    })
                    .collect();
                let mut map = HashMap::new();
                for (uid, r) in self.prepare_all(claims).await? {
                    let resp = match r {
                        Ok(devs) => pb::$ver::NodePrepareResourceResponse {
                            devices: devs
                                .into_iter()
                                .map(|d| pb::$ver::Device {
                                    request_names: d.requests,
                                    pool_name: d.pool,
                                    device_name: d.device,
                                    cdi_device_ids: d.cdi_ids,
                                })
                                .collect(),
                            error: String::new(),
                        },
                        Err(e) => pb::$ver::NodePrepareResourceResponse {
                            devices: vec![],
                            error: e,
                        },
                    };
                    map.insert(uid, resp);
                }
                Ok(Response::new(pb::$ver::NodePrepareResourcesResponse {
                    claims: map,
                }))
            }

            async fn node_unprepare_resources(
                &self,
                req: Request<pb::$ver::NodeUnprepareResourcesRequest>,
            ) -> Result<Response<pb::$ver::NodeUnprepareResourcesResponse>, Status> {
                let claims = req
                    .into_inner()
                    .claims
                    .into_iter()
                    .map(|c| ClaimRef {
                        namespace: c.namespace,
                        name: c.name,
                        uid: c.uid,
                    })
                    .collect();
                let mut map = HashMap::new();
                for (uid, r) in self.unprepare_all(claims).await? {
                    map.insert(
                        uid,
                        pb::$ver::NodeUnprepareResourceResponse {
                            error: r.err().unwrap_or_default(),
                        },
                    );
                }
                Ok(Response::new(pb::$ver::NodeUnprepareResourcesResponse {
                    claims: map,
                }))
            }
        }
    };
}
dra_version!(v1);
dra_version!(v1beta1);

/// Binds a Unix socket, replacing a stale socket file from a previous process.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    UnixListener::bind(path)
}

/// Serving failed.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Socket setup.
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    /// gRPC transport.
    #[error("gRPC transport: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Socket paths.
#[derive(Debug, Clone)]
pub struct Sockets {
    /// `<registrar dir>/<driver>-reg.sock`.
    pub registration: PathBuf,
    /// `<plugin dir>/dra.sock`.
    pub dra: PathBuf,
}

impl Sockets {
    /// Standard layout.
    pub fn new(registrar_dir: &Path, plugin_dir: &Path, driver: &str) -> Self {
        Self {
            registration: registrar_dir.join(format!("{driver}-reg.sock")),
            dra: plugin_dir.join("dra.sock"),
        }
    }
}

/// Serves the DRA socket (both versions + health) and, after it is listening, the registration
/// socket, until `shutdown` resolves. The registration socket is created last so the kubelet
/// never sees it before the DRA endpoint works.
pub async fn serve<C: ClaimSource + 'static>(
    sockets: &Sockets,
    driver: &str,
    preparer: Arc<Preparer<C>>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let dra = Dra::new(preparer);
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<pb::v1::dra_plugin_server::DraPluginServer<Dra<C>>>()
        .await;
    health_reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    let dra_listener = bind(&sockets.dra)?;
    let reg_listener = bind(&sockets.registration)?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let wait = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };
    let dra_server = tonic::transport::Server::builder()
        .add_service(health)
        .add_service(pb::v1::dra_plugin_server::DraPluginServer::new(dra.clone()))
        .add_service(pb::v1beta1::dra_plugin_server::DraPluginServer::new(dra))
        .serve_with_incoming_shutdown(
            crate::authority::incoming(dra_listener),
            wait(stop_rx.clone()),
        );
    let reg = Registration {
        driver: driver.to_string(),
        endpoint: sockets.dra.to_string_lossy().into_owned(),
        registered: Arc::new(tokio::sync::watch::channel(None).0),
    };
    let reg_server = tonic::transport::Server::builder()
        .add_service(pb::registration::registration_server::RegistrationServer::new(reg))
        .serve_with_incoming_shutdown(crate::authority::incoming(reg_listener), wait(stop_rx));
    tracing::info!(dra = %sockets.dra.display(), registration = %sockets.registration.display(), "serving");
    let (a, b) = tokio::join!(dra_server, reg_server);
    let _ = std::fs::remove_file(&sockets.registration);
    let _ = std::fs::remove_file(&sockets.dra);
    a?;
    b?;
    Ok(())
}

/// Connects a gRPC channel to a Unix socket.
pub async fn unix_channel(
    path: &Path,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    let path = path.to_path_buf();
    tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let p = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(p).await?,
                ))
            }
        }))
        .await
}

/// Calls `grpc.health.v1.Health/Check` (service "") on a socket; `Ok` when SERVING.
pub async fn health_check(path: &Path) -> Result<(), String> {
    let ch = unix_channel(path).await.map_err(|e| e.to_string())?;
    let mut c = tonic_health::pb::health_client::HealthClient::new(ch);
    let r = c
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .map_err(|e| e.to_string())?
        .into_inner();
    if r.status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32 {
        Ok(())
    } else {
        Err(format!("not serving (status {})", r.status))
    }
}
