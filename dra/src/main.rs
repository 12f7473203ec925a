//! `mock-accel-dra`: the mock-accel DRA driver binary. See `docs/dra.md`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use dra::prepare::{ClaimSource, Config, Preparer};
use k8s_openapi::api::resource::v1::ResourceClaim;

#[derive(Debug, Parser)]
#[command(name = "mock-accel-dra", version, about = "mock-accel DRA driver")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Per-node kubelet plugin: publishes this node's ResourceSlices and serves the kubelet.
    KubeletPlugin(PluginArgs),
    /// Print, as JSON, the devices this node would publish (and the entries skipped, with the
    /// reason), read from the guest driver's sysfs; needs no cluster.
    Devices {
        /// Root under which `sys/class/mock-accel` is read.
        #[arg(long, env = "SYSFS_ROOT", default_value = "/")]
        sysfs_root: PathBuf,
    },
    /// Liveness check: calls grpc.health.v1 Check on the DRA socket; exit 0 when serving.
    Healthcheck {
        /// DRA socket path.
        #[arg(
            long,
            default_value = "/var/lib/kubelet/plugins/mock-accel.example.com/dra.sock"
        )]
        socket: PathBuf,
    },
}

#[derive(Debug, clap::Args)]
struct PluginArgs {
    /// Node this plugin runs on (pool name and slice owner).
    #[arg(long, env = "NODE_NAME")]
    node_name: String,
    /// DRA driver name.
    #[arg(long, env = "DRIVER_NAME", default_value = dra::DEFAULT_DRIVER)]
    driver_name: String,
    /// kubeconfig file; without it, in-cluster config (or the usual inference) is used.
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Root under which `sys/class/mock-accel` and `dev/` are read.
    #[arg(long, env = "SYSFS_ROOT", default_value = "/")]
    sysfs_root: PathBuf,
    /// Directory for CDI spec files.
    #[arg(long, env = "CDI_ROOT", default_value = "/var/run/cdi")]
    cdi_root: PathBuf,
    /// Kubelet plugin registration directory.
    #[arg(
        long,
        env = "REGISTRAR_DIR",
        default_value = "/var/lib/kubelet/plugins_registry"
    )]
    registrar_dir: PathBuf,
    /// Plugin directory (DRA socket and checkpoint); default /var/lib/kubelet/plugins/<driver>.
    #[arg(long, env = "PLUGIN_DIR")]
    plugin_dir: Option<PathBuf>,
    /// Device rescan interval (e.g. 30s, 500ms, 2m).
    #[arg(long, env = "RESCAN_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    rescan_interval: Duration,
    /// Log verbosity 0-10 (0 warnings, 1-3 info, 4-5 debug, 6+ trace); RUST_LOG overrides.
    #[arg(short = 'v', long, env = "VERBOSITY", default_value_t = 2)]
    verbosity: u8,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, mul_ms) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1000)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60_000)
    } else if let Some(n) = s.strip_suffix('h') {
        (n, 3_600_000)
    } else {
        (s, 1000)
    };
    let n: u64 = num.parse().map_err(|_| format!("invalid duration {s:?}"))?;
    let ms = n.checked_mul(mul_ms).ok_or("duration too large")?;
    if ms == 0 {
        return Err("duration must be positive".into());
    }
    Ok(Duration::from_millis(ms))
}

struct KubeClaims(kube::Client);

impl ClaimSource for KubeClaims {
    fn get(
        &self,
        namespace: &str,
        name: &str,
    ) -> impl std::future::Future<Output = Result<ResourceClaim, String>> + Send {
        let api: kube::Api<ResourceClaim> = kube::Api::namespaced(self.0.clone(), namespace);
        let name = name.to_string();
        let ns = namespace.to_string();
        async move {
            api.get(&name)
                .await
                .map_err(|e| format!("get resourceclaim {ns}/{name}: {e}"))
        }
    }
}

async fn client(kubeconfig: Option<&PathBuf>) -> anyhow::Result<kube::Client> {
    let cfg = match kubeconfig {
        Some(p) => {
            let kc = kube::config::Kubeconfig::read_from(p)
                .with_context(|| format!("reading kubeconfig {}", p.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .context("kubeconfig")?
        }
        None => kube::Config::infer()
            .await
            .context("inferring Kubernetes config")?,
    };
    kube::Client::try_from(cfg).context("Kubernetes client")
}

/// `{"devices": [ResourceSlice devices], "skipped": [{"name", "error"}]}` for `devices`.
fn devices_json(root: &std::path::Path) -> anyhow::Result<String> {
    if !dra::sysfs::class_dir(root).is_dir() {
        anyhow::bail!(
            "{} does not exist: is mock_accel loaded (or is --sysfs-root wrong)?",
            dra::sysfs::class_dir(root).display()
        );
    }
    let scan = dra::sysfs::scan(root);
    let devices: Vec<_> = scan.devices.iter().map(dra::slices::to_device).collect();
    let skipped: Vec<_> = scan
        .skipped
        .iter()
        .map(|(name, error)| serde_json::json!({"name": name, "error": error}))
        .collect();
    Ok(serde_json::to_string_pretty(
        &serde_json::json!({"devices": devices, "skipped": skipped}),
    )?)
}

fn init_logging(v: u8) {
    let level = match v {
        0 => "warn",
        1..=3 => "info",
        4..=5 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!("warn,dra={level},mock_accel_dra={level}"))
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // No colour codes in pod logs or files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

async fn kubelet_plugin(a: PluginArgs) -> anyhow::Result<()> {
    if a.node_name.is_empty() {
        anyhow::bail!("--node-name (NODE_NAME) must not be empty");
    }
    // Absolute paths: the DRA socket path is handed to the kubelet as the endpoint, and CDI
    // host paths must not depend on the runtime's working directory.
    let abs = |p: &PathBuf| std::path::absolute(p).with_context(|| format!("path {}", p.display()));
    let plugin_dir = abs(&a
        .plugin_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("/var/lib/kubelet/plugins").join(&a.driver_name)))?;
    let mut a = a;
    a.sysfs_root = abs(&a.sysfs_root)?;
    a.cdi_root = abs(&a.cdi_root)?;
    a.registrar_dir = abs(&a.registrar_dir)?;
    let client = client(a.kubeconfig.as_ref()).await?;
    let cfg = Config {
        driver: a.driver_name.clone(),
        node: a.node_name.clone(),
        sysfs_root: a.sysfs_root.clone(),
        cdi_root: a.cdi_root.clone(),
        checkpoint: plugin_dir.join("checkpoint.json"),
    };
    let preparer = Arc::new(
        Preparer::new(cfg, KubeClaims(client.clone()))
            .map_err(|e| anyhow::anyhow!("checkpoint: {e}"))?,
    );
    let publisher = dra::publish::Publisher::new(
        client,
        a.driver_name.clone(),
        a.node_name.clone(),
        a.sysfs_root.clone(),
    );
    let interval = a.rescan_interval;
    let publish_task = tokio::spawn(async move { publisher.run(interval).await });
    let sockets = dra::grpc::Sockets::new(&a.registrar_dir, &plugin_dir, &a.driver_name);
    tracing::info!(node = %a.node_name, driver = %a.driver_name, dra_socket = %sockets.dra.display(),
        registration_socket = %sockets.registration.display(), "starting kubelet plugin");
    let r = dra::grpc::serve(&sockets, &a.driver_name, preparer, shutdown_signal()).await;
    publish_task.abort();
    r.context("gRPC server")
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mock-accel-dra: tokio runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let fut = async move {
        match cli.cmd {
            Cmd::KubeletPlugin(args) => {
                init_logging(args.verbosity);
                kubelet_plugin(args).await
            }
            Cmd::Devices { sysfs_root } => {
                println!("{}", devices_json(&sysfs_root)?);
                Ok(())
            }
            Cmd::Healthcheck { socket } => {
                tokio::time::timeout(Duration::from_secs(5), dra::grpc::health_check(&socket))
                    .await
                    .map_err(|_| anyhow::anyhow!("health check timed out"))?
                    .map_err(|e| anyhow::anyhow!("{}: {e}", socket.display()))
            }
        }
    };
    match rt.block_on(fut) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mock-accel-dra: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_lists_the_guest_fixture_with_numa_and_physfn() {
        let root =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/sysfs-guest");
        let v: serde_json::Value =
            serde_json::from_str(&devices_json(&root).expect("fixture scans")).expect("json");
        let devs = v["devices"].as_array().expect("devices");
        let names: Vec<&str> = devs.iter().filter_map(|d| d["name"].as_str()).collect();
        assert_eq!(
            names,
            [
                "mock0",
                "mock0-vf0",
                "mock0-vf1",
                "mock1",
                "mock1-vf0",
                "mock1-vf1"
            ]
        );
        let attr = |d: &serde_json::Value, k: &str| d["attributes"][k].clone();
        assert_eq!(attr(&devs[0], "numaNode")["int"], 0);
        assert_eq!(attr(&devs[3], "numaNode")["int"], 1);
        assert_eq!(attr(&devs[1], "physfn")["string"], "mock0");
        assert_eq!(v["skipped"].as_array().map(Vec::len), Some(0));
    }

    #[test]
    fn devices_without_the_class_directory_is_a_one_line_error() {
        let e = devices_json(std::path::Path::new("/nonexistent-root"))
            .expect_err("no class directory")
            .to_string();
        assert!(e.contains("sys/class/mock-accel does not exist"), "{e}");
        assert!(!e.contains('\n'), "{e}");
    }

    #[test]
    fn durations_parse_with_units_and_reject_garbage() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("x").is_err());
        assert!(parse_duration("99999999999999999999h").is_err());
    }
}
