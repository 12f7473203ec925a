//! `device`: serve mock-accel PCIe accelerators to QEMU's `vfio-user-pci`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use device::bar0::{DEFAULT_CAPABILITIES, REGISTER_MAP_HELP};
use device::topology::{parse_device_list, serve_all, DeviceSpec};

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Serve a mock-accel PCIe accelerator (1de5:0001, class 0x12) over vfio-user",
    after_help = concat!(
        "Attach to QEMU >= 10.1:\n  -device '{\"driver\":\"vfio-user-pci\",\"socket\":{\"type\":\"unix\",\"path\":\"SOCKET\"}}'\n\n",
        "Host control socket: SOCKET.ctl (`get`, `set-status N`).\n\n"
    ),
    after_long_help = REGISTER_MAP_HELP,
)]
struct Cli {
    /// RFC 4122 UUID, or a label of at most 16 printable ASCII bytes (e.g. NODE1-NUMA0-PF)
    #[arg(
        short = 'u',
        long = "uuid",
        value_name = "UUID_OR_LABEL",
        required_unless_present = "topology"
    )]
    uuid: Option<String>,
    /// vfio-user socket to listen on (the control socket is SOCKET.ctl)
    #[arg(value_name = "SOCKET", required_unless_present = "topology")]
    socket: Option<PathBuf>,
    /// Device memory reported in MEMORY_SIZE (bytes, or K/M/G/T suffix)
    #[arg(long, default_value = "16G")]
    memory_size: String,
    /// CAPABILITIES register value (decimal or 0x hex)
    #[arg(long, value_parser = parse_u32, default_value_t = DEFAULT_CAPABILITIES)]
    capabilities: u32,
    /// Serve a virtual function (device ID 0x0002) with this VF index
    #[arg(long, value_name = "INDEX")]
    vf: Option<u8>,
    /// Test hook: DEVICE_ID register value instead of "MOCK" (0x4d4f434b), to check that
    /// drivers refuse a foreign device
    #[arg(long, value_parser = parse_u32, hide = true)]
    device_id_register: Option<u32>,
    /// Serve every device of a TOML device list instead ([[device]] uuid, socket, ...)
    #[arg(long, conflicts_with_all = ["uuid", "socket"])]
    topology: Option<PathBuf>,
    /// More logging (-v info, -vv debug, -vvv trace); RUST_LOG overrides
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
}

fn parse_u32(s: &str) -> Result<u32, String> {
    match s.strip_prefix("0x") {
        Some(h) => u32::from_str_radix(h, 16),
        None => s.parse(),
    }
    .map_err(|e| format!("{s:?} is not a u32: {e}"))
}

fn specs(cli: &Cli) -> anyhow::Result<Vec<DeviceSpec>> {
    if let Some(path) = &cli.topology {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read device list {}", path.display()))?;
        return Ok(parse_device_list(path, &text)?);
    }
    let (Some(uuid), Some(socket)) = (&cli.uuid, &cli.socket) else {
        anyhow::bail!("give -u UUID_OR_LABEL SOCKET, or --topology FILE");
    };
    let mut spec = DeviceSpec::new(
        0,
        uuid,
        socket.clone(),
        &cli.memory_size,
        cli.capabilities,
        cli.vf,
    )?;
    if let Some(id) = cli.device_id_register {
        spec.registers.device_id = id;
    }
    Ok(vec![spec])
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => "warn,device=info,vfio_user_proto=info",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level)),
        )
        .with_writer(std::io::stderr)
        // No colour codes when logging to a file or a pipe.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let specs = specs(&cli)?;
    let shutdown = vfio_user_proto::shutdown_signal()?;
    serve_all(specs, shutdown).await?;
    Ok(())
}
