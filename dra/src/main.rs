//! `mock-accel-dra`: the mock-accel DRA driver (see the `dra` crate docs).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use dra::plugin::{Driver, Settings};
use dra::publish::Publisher;

#[derive(Parser, Debug)]
#[command(version, about = "Kubernetes DRA driver for mock-accel devices")]
struct Cli {
    /// More logging (-v debug, -vv trace); RUST_LOG overrides
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Per-node plugin: publish this node's ResourceSlices and serve the kubelet.
    KubeletPlugin(PluginArgs),
    /// Print the devices found under the sysfs root as JSON slices (no API server needed).
    Discover {
        #[arg(long, env = "SYSFS_ROOT", default_value = "/")]
        sysfs_root: PathBuf,
        #[arg(long, env = "NODE_NAME", default_value = "node")]
        node_name: String,
        #[arg(long, env = "DRIVER_NAME", default_value = "mock-accel.example.com")]
        driver_name: String,
    },
}

#[derive(clap::Args, Debug)]
struct PluginArgs {
    /// This node's name (pool name and slices' nodeName)
    #[arg(long, env = "NODE_NAME")]
    node_name: String,
    /// DRA driver name
    #[arg(long, env = "DRIVER_NAME", default_value = "mock-accel.example.com")]
    driver_name: String,
    /// Where /sys (and /dev) are looked up
    #[arg(long, env = "SYSFS_ROOT", default_value = "/")]
    sysfs_root: PathBuf,
    /// Directory for CDI specs
    #[arg(long, env = "CDI_ROOT", default_value = "/var/run/cdi")]
    cdi_root: PathBuf,
    /// Kubelet plugin registration directory
    #[arg(
        long,
        env = "REGISTRAR_DIR",
        default_value = "/var/lib/kubelet/plugins_registry"
    )]
    registrar_dir: PathBuf,
    /// Plugin directory (dra.sock, checkpoint.json); default /var/lib/kubelet/plugins/<driver>
    #[arg(long, env = "PLUGIN_DIR")]
    plugin_dir: Option<PathBuf>,
    /// Seconds between sysfs rescans
    #[arg(long, env = "RESCAN_INTERVAL", default_value_t = 30)]
    rescan_interval: u64,
    /// Kubeconfig (default: KUBECONFIG, ~/.kube/config, or in-cluster)
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
}

async fn client(kubeconfig: Option<&PathBuf>) -> anyhow::Result<kube::Client> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("cannot read kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?
        }
        None => kube::Config::infer().await?,
    };
    Ok(kube::Client::try_from(config)?)
}

async fn kubelet_plugin(args: PluginArgs) -> anyhow::Result<()> {
    let client = client(args.kubeconfig.as_ref()).await?;
    let plugin_dir = args
        .plugin_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("/var/lib/kubelet/plugins").join(&args.driver_name));
    let settings = Settings {
        driver: args.driver_name.clone(),
        node_name: args.node_name.clone(),
        sysfs_root: args.sysfs_root.clone(),
        cdi_root: args.cdi_root.clone(),
        plugin_dir,
    };
    let driver = Arc::new(Driver::new(settings, client.clone()).map_err(anyhow::Error::msg)?);
    let publisher = Publisher::new(client, args.driver_name, args.node_name, args.sysfs_root);
    let interval = Duration::from_secs(args.rescan_interval.max(1));
    let publishing = tokio::spawn(publisher.run(interval));
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down");
    };
    dra::serve::serve(driver, &args.registrar_dir, shutdown).await?;
    publishing.abort();
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level)),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::KubeletPlugin(args) => kubelet_plugin(args).await,
        Command::Discover {
            sysfs_root,
            node_name,
            driver_name,
        } => {
            let devices = dra::discovery::scan(&sysfs_root)?;
            let pool = dra::slices::Pool {
                driver: &driver_name,
                node_name: &node_name,
                node_uid: "",
                generation: 1,
            };
            let slices = dra::slices::build_slices(&pool, &devices);
            println!("{}", serde_json::to_string_pretty(&slices)?);
            Ok(())
        }
    }
}
