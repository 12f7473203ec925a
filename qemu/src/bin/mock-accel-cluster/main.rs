//! `mock-accel-cluster`: bring up a test cluster of QEMU guests with mock-accel devices on a
//! NUMA topology, show its state, and tear it down.
//!
//! ```text
//! cargo run -p qemu -- up                 # 2 nodes x 2 NUMA x (1 PF + 2 VFs), test guest
//! cargo run -p qemu -- status
//! cargo run -p qemu -- logs --node node1 --serial
//! cargo run -p qemu -- down
//! ```
//!
//! Per node it starts one device server process (`device --topology`) serving all of the
//! node's devices, then one QEMU whose command line comes from [`qemu::build_qemu_args`].
//! Everything it starts is recorded in `RUN_DIR/state.json`; `status`, `logs` and `down` read
//! it. See `docs/launcher.md`.

mod down;
mod procs;
mod state;
mod status;
mod up;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Bring up QEMU guests with mock-accel devices on a NUMA topology (test clusters)"
)]
struct Cli {
    /// Directory for sockets, logs, overlays and the state file
    #[arg(long, global = true, env = "MOCK_ACCEL_RUN_DIR", value_name = "DIR")]
    run_dir: Option<PathBuf>,
    /// More logging (-v debug, -vv trace); RUST_LOG overrides
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Start the device servers and one QEMU per node
    Up(Box<UpArgs>),
    /// Show every device: label, socket, live status register, server and QEMU state
    Status,
    /// Stop QEMU and the device servers; remove sockets, overlays and the state file
    Down,
    /// Print the logs: guest serial console, QEMU, device servers
    Logs(LogsArgs),
    /// Serve the devices of a device list (what `up` runs per node; same as `device --topology`)
    #[command(hide = true)]
    ServeDevices {
        /// Device list (TOML [[device]] entries)
        list: PathBuf,
    },
}

#[derive(Args, Debug)]
pub(crate) struct UpArgs {
    /// Cluster topology file (TOML `[[nodes]]`, see qemu::Cluster); relative socket paths are
    /// placed in the node's run directory. Conflicts with the shape flags.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["nodes", "numa", "pfs_per_numa", "vfs_per_pf", "cpus", "memory_mib"])]
    topology: Option<PathBuf>,
    /// Guests (nodes)
    #[arg(long)]
    nodes: Option<u32>,
    /// NUMA nodes per guest
    #[arg(long)]
    numa: Option<u32>,
    /// PFs per NUMA node
    #[arg(long)]
    pfs_per_numa: Option<u32>,
    /// VFs per PF
    #[arg(long)]
    vfs_per_pf: Option<u32>,
    /// vCPUs per NUMA node
    #[arg(long)]
    cpus: Option<u32>,
    /// Guest RAM per NUMA node (MiB)
    #[arg(long)]
    memory_mib: Option<u64>,
    /// Guest kernel for direct boot (default: the test guest from scripts/build-guest.sh)
    #[arg(long, value_name = "BZIMAGE", conflicts_with = "image")]
    kernel: Option<PathBuf>,
    /// Initramfs for --kernel
    #[arg(long, value_name = "FILE", requires = "kernel")]
    initrd: Option<PathBuf>,
    /// Kernel command line for --kernel (default: console=ttyS0 ...)
    #[arg(long, value_name = "CMDLINE", requires = "kernel")]
    append: Option<String>,
    /// Boot this disk image instead (each node gets a copy-on-write qcow2 overlay and a
    /// cloud-init NoCloud seed; SSH on 127.0.0.1:--ssh-port-base + node index)
    #[arg(long, value_name = "DISK")]
    image: Option<PathBuf>,
    /// Format of --image
    #[arg(long, default_value = "qcow2", value_name = "FORMAT")]
    image_format: String,
    /// User cloud-init creates in --image guests
    #[arg(long, default_value = "mock")]
    user: String,
    /// SSH public key for that user (default: ~/.ssh/id_ed25519.pub, id_ecdsa.pub, id_rsa.pub)
    #[arg(long, value_name = "FILE")]
    ssh_key: Option<PathBuf>,
    /// Host port forwarded to node1's SSH port; node N gets this + N - 1
    #[arg(long, default_value_t = 2222)]
    ssh_port_base: u16,
    /// The `device` server binary (default: next to this binary, then PATH)
    #[arg(long, env = "MOCK_ACCEL_DEVICE_BIN", value_name = "PATH")]
    device_bin: Option<PathBuf>,
    /// Use KVM instead of TCG (KVM hung guests on the project's machines)
    #[arg(long)]
    kvm: bool,
}

#[derive(Args, Debug)]
pub(crate) struct LogsArgs {
    /// Only this node (e.g. node1)
    #[arg(long)]
    node: Option<String>,
    /// Only the guest serial console
    #[arg(long, conflicts_with_all = ["qemu", "devices"])]
    serial: bool,
    /// Only QEMU's own output
    #[arg(long, conflicts_with = "devices")]
    qemu: bool,
    /// Only the device servers' logs
    #[arg(long)]
    devices: bool,
}

fn default_run_dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir).join("mock-accel"),
        None => PathBuf::from("/tmp/mock-accel-run"),
    }
}

/// `device --topology LIST`, in this process.
async fn serve_devices(list: &std::path::Path) -> anyhow::Result<()> {
    use anyhow::Context;
    let text = std::fs::read_to_string(list)
        .with_context(|| format!("cannot read device list {}", list.display()))?;
    let specs = device::topology::parse_device_list(list, &text)?;
    let shutdown = vfio_user_proto::shutdown_signal()?;
    device::topology::serve_all(specs, shutdown).await?;
    Ok(())
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let serving = matches!(cli.command, Command::ServeDevices { .. });
    let level = match cli.verbose {
        0 if serving => "warn,device=info,vfio_user_proto=info",
        0 => "warn",
        1 => "debug",
        _ => "trace",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level)),
        )
        .with_writer(std::io::stderr)
        // Device servers log to files: no colour codes there.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let run_dir = cli.run_dir.clone().unwrap_or_else(default_run_dir);
    // The device servers get worker threads like `device`; the launcher needs one.
    let mut builder = if serving {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Up(args) => up::up(&run_dir, &args).await,
            Command::Status => status::status(&run_dir).await,
            Command::Down => down::down(&run_dir).await,
            Command::Logs(args) => status::logs(&run_dir, &args),
            Command::ServeDevices { list } => serve_devices(&list).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line: the error and its causes.
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
