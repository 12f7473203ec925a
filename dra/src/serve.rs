//! Serving the kubelet plugin's two Unix sockets with tonic:
//! `<registrar-dir>/<driver>-reg.sock` (plugin registration) and `<plugin-dir>/dra.sock`
//! (DRA v1 + v1beta1, and `grpc.health.v1.Health` for liveness probes).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;

use crate::plugin::proto::{registration, v1, v1beta1};
use crate::plugin::{ClaimSource, Driver, Registration, Services};

/// Why serving failed.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {path}: {source}")]
    Listen {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("gRPC server: {0}")]
    Grpc(#[from] tonic::transport::Error),
}

/// The registration socket path for a driver.
pub fn registration_socket(registrar_dir: &Path, driver: &str) -> PathBuf {
    registrar_dir.join(format!("{driver}-reg.sock"))
}

/// The DRA service socket path.
pub fn dra_socket(plugin_dir: &Path) -> PathBuf {
    plugin_dir.join("dra.sock")
}

fn listen(path: &Path) -> Result<UnixListener, ServeError> {
    let err = |source| ServeError::Listen {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    UnixListener::bind(path).map_err(err)
}

/// Serve both sockets until `shutdown` completes; the DRA socket is bound first so the
/// kubelet never sees a registration for an endpoint that is not listening.
pub async fn serve<S: ClaimSource>(
    driver: Arc<Driver<S>>,
    registrar_dir: &Path,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let settings = driver.settings().clone();
    let dra_path = dra_socket(&settings.plugin_dir);
    let reg_path = registration_socket(registrar_dir, &settings.driver);
    let dra_listener = listen(&dra_path)?;
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<v1::dra_plugin_server::DraPluginServer<Services<S>>>()
        .await;
    let services = Services(driver);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let wait = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let dra = tonic::transport::Server::builder()
        .add_service(health)
        .add_service(v1::dra_plugin_server::DraPluginServer::new(
            services.clone(),
        ))
        .add_service(v1beta1::dra_plugin_server::DraPluginServer::new(services))
        .serve_with_incoming_shutdown(UnixListenerStream::new(dra_listener), wait(stop_rx.clone()));
    let reg_listener = listen(&reg_path)?;
    let reg = tonic::transport::Server::builder()
        .add_service(registration::registration_server::RegistrationServer::new(
            Registration {
                driver: settings.driver.clone(),
                endpoint: dra_path.clone(),
            },
        ))
        .serve_with_incoming_shutdown(UnixListenerStream::new(reg_listener), wait(stop_rx));
    tracing::info!(registration = %reg_path.display(), dra = %dra_path.display(), "kubelet plugin serving");
    let stopper = async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    };
    let (a, b, ()) = tokio::join!(dra, reg, stopper);
    let _ = std::fs::remove_file(&reg_path);
    let _ = std::fs::remove_file(&dra_path);
    a?;
    b?;
    Ok(())
}
