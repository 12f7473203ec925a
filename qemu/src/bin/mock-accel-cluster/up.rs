//! `up`: plan, start one device server per node, wait for its sockets, then one QEMU per node.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use device::control::ControlClient;
use qemu::plan::{ClusterShape, NodePlan, Plan};
use qemu::seed::{nocloud_iso, SeedConfig};
use qemu::{
    build_qemu_args, pci_functions, Accel, Cluster, DirectBoot, Drive, LaunchOptions, QemuInstall,
    Qmp, Serial, UserNet,
};

use crate::procs::{alive, spawn_detached, tail};
use crate::state::{DeviceState, NodeState, State};
use crate::UpArgs;

/// How long device servers get to listen on every socket.
const SERVER_READY: Duration = Duration::from_secs(30);
/// How long QEMU gets to open its QMP socket.
const QMP_READY: Duration = Duration::from_secs(60);

/// Progress lines on stderr, with the time since `up` started.
pub struct Progress(Instant);

impl Progress {
    pub fn new() -> Self {
        Self(Instant::now())
    }

    pub fn say(&self, message: impl std::fmt::Display) {
        eprintln!("[{:6.1}s] {message}", self.0.elapsed().as_secs_f64());
    }

    pub fn elapsed(&self) -> Duration {
        self.0.elapsed()
    }
}

/// What the guests boot.
enum Guest {
    /// A kernel (and initramfs) booted directly.
    Direct(DirectBoot),
    /// A disk image, per node behind a qcow2 overlay, configured by cloud-init.
    Image {
        path: PathBuf,
        format: String,
        user: String,
        keys: Vec<String>,
    },
}

pub async fn up(run_dir: &Path, args: &UpArgs) -> anyhow::Result<()> {
    let progress = Progress::new();
    let run_dir = absolute(run_dir)?;
    let plan = make_plan(&run_dir, args)?;
    if let Some(old) = State::load(&run_dir)? {
        let running = crate::down::running(&old);
        if running > 0 {
            bail!(
                "a cluster is already up in {} ({running} processes running); run `mock-accel-cluster down` first",
                run_dir.display()
            );
        }
        progress.say("cleaning up the stopped cluster of a previous run");
        crate::down::teardown(&old, &progress).await;
    }
    let guest = resolve_guest(args, &progress)?;
    progress.say("locating QEMU (>= 10.1 with vfio-user-pci)");
    let install = QemuInstall::locate()?;
    progress.say(format!("using {}", install.describe()));

    let mut state = State {
        run_dir: run_dir.clone(),
        nodes: Vec::new(),
    };
    std::fs::create_dir_all(&run_dir)
        .with_context(|| format!("cannot create run directory {}", run_dir.display()))?;
    match start(&plan, &guest, &install, args, &mut state, &progress).await {
        Ok(()) => {}
        Err(e) => {
            progress.say(format!("failed: {e:#}; stopping what was started"));
            crate::down::teardown(&state, &progress).await;
            return Err(e);
        }
    }
    let devices: usize = plan.nodes.iter().map(|n| n.devices.len()).sum();
    println!(
        "cluster up in {:.1} s: {} node(s), {devices} device(s), run dir {}",
        progress.elapsed().as_secs_f64(),
        plan.nodes.len(),
        run_dir.display()
    );
    for node in &state.nodes {
        let mut line = format!(
            "  {}: QEMU pid {}, {} devices, serial log {}",
            node.name,
            node.qemu.as_ref().map_or(0, |p| p.pid),
            node.devices.len(),
            node.serial_log.display()
        );
        if let Some(port) = node.ssh_port {
            line.push_str(&format!(
                ", ssh -p {port} {}@127.0.0.1",
                match &guest {
                    Guest::Image { user, .. } => user.as_str(),
                    Guest::Direct(_) => "root",
                }
            ));
        }
        println!("{line}");
    }
    println!("next: mock-accel-cluster status | logs [--node NAME] [--serial] | down");
    Ok(())
}

fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    if path.is_absolute() {
        return Ok(path.to_path_buf());
    }
    Ok(std::env::current_dir()
        .context("current directory")?
        .join(path))
}

fn make_plan(run_dir: &Path, args: &UpArgs) -> anyhow::Result<Plan> {
    if let Some(file) = &args.topology {
        let cluster = Cluster::load(file)?;
        return Ok(Plan::from_cluster(&cluster, run_dir)?);
    }
    let d = ClusterShape::default();
    let shape = ClusterShape {
        nodes: args.nodes.unwrap_or(d.nodes),
        numa_per_node: args.numa.unwrap_or(d.numa_per_node),
        pfs_per_numa: args.pfs_per_numa.unwrap_or(d.pfs_per_numa),
        vfs_per_pf: args.vfs_per_pf.unwrap_or(d.vfs_per_pf),
        cpus_per_numa: args.cpus.unwrap_or(d.cpus_per_numa),
        memory_mib_per_numa: args.memory_mib.unwrap_or(d.memory_mib_per_numa),
    };
    Ok(Plan::from_shape(&shape, run_dir)?)
}

fn resolve_guest(args: &UpArgs, progress: &Progress) -> anyhow::Result<Guest> {
    if let Some(image) = &args.image {
        if !image.is_file() {
            bail!(
                "image {} does not exist (give --image a qcow2 disk image, e.g. a Debian or Fedora cloud image)",
                image.display()
            );
        }
        let path = image
            .canonicalize()
            .with_context(|| format!("image {}", image.display()))?;
        return Ok(Guest::Image {
            path,
            format: args.image_format.clone(),
            user: args.user.clone(),
            keys: ssh_keys(args.ssh_key.as_deref())?,
        });
    }
    if let Some(kernel) = &args.kernel {
        for file in std::iter::once(kernel).chain(args.initrd.as_ref()) {
            if !file.is_file() {
                bail!("{} does not exist", file.display());
            }
        }
        return Ok(Guest::Direct(DirectBoot {
            kernel: absolute(kernel)?,
            initrd: args.initrd.as_deref().map(absolute).transpose()?,
            append: Some(
                args.append
                    .clone()
                    .unwrap_or_else(|| "console=ttyS0 panic=-1".to_owned()),
            ),
        }));
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/build-guest.sh");
    if !script.is_file() {
        bail!(
            "no --kernel or --image given and the test guest's build script {} is missing",
            script.display()
        );
    }
    progress.say(
        "finding the test guest (scripts/build-guest.sh; the first run builds a kernel, ~10 min)",
    );
    let out = Command::new(&script)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot run {}", script.display()))?;
    if !out.status.success() {
        bail!(
            "{} failed ({}); run it by hand to see why",
            script.display(),
            out.status
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let get = |key: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .map(PathBuf::from)
            .with_context(|| format!("{} printed no {key}=", script.display()))
    };
    Ok(Guest::Direct(DirectBoot {
        kernel: get("KERNEL")?,
        initrd: Some(get("INITRAMFS")?),
        // mocktest.hold=1: the test guest's init stays up after its checks instead of
        // powering off, so `status` sees a running guest.
        append: Some("console=ttyS0 panic=-1 quiet mocktest.hold=1".to_owned()),
    }))
}

/// Public keys for cloud-init: the given file, or the user's usual ones.
fn ssh_keys(given: Option<&Path>) -> anyhow::Result<Vec<String>> {
    let candidates: Vec<PathBuf> = match given {
        Some(path) => vec![path.to_path_buf()],
        None => {
            let home = std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_default();
            ["id_ed25519.pub", "id_ecdsa.pub", "id_rsa.pub"]
                .iter()
                .map(|f| home.join(".ssh").join(f))
                .collect()
        }
    };
    for path in &candidates {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let keys: Vec<String> = text
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(str::to_owned)
                    .collect();
                if keys.is_empty() {
                    bail!("SSH key file {} holds no key", path.display());
                }
                return Ok(keys);
            }
            Err(e) if given.is_some() => {
                bail!("cannot read SSH key {}: {e}", path.display())
            }
            Err(_) => {}
        }
    }
    bail!("no SSH public key in ~/.ssh (id_ed25519.pub, id_ecdsa.pub, id_rsa.pub); pass --ssh-key FILE")
}

async fn start(
    plan: &Plan,
    guest: &Guest,
    install: &QemuInstall,
    args: &UpArgs,
    state: &mut State,
    progress: &Progress,
) -> anyhow::Result<()> {
    let devices: usize = plan.nodes.iter().map(|n| n.devices.len()).sum();
    progress.say(format!(
        "starting {} device server process(es) (one per node) for {devices} devices",
        plan.nodes.len()
    ));
    for (i, node) in plan.nodes.iter().enumerate() {
        std::fs::create_dir_all(&node.dir)
            .with_context(|| format!("cannot create {}", node.dir.display()))?;
        for path in [node.serial_log(), node.qemu_log(), node.devices_log()] {
            let _ = std::fs::remove_file(path);
        }
        let list = node.device_list();
        std::fs::write(&list, node.device_list_toml())
            .with_context(|| format!("cannot write {}", list.display()))?;
        let cmd = device_server_command(args.device_bin.as_deref(), &list)?;
        let server = spawn_detached(cmd, &node.devices_log(), &list.to_string_lossy())?;
        state.nodes.push(node_state(node, server, guest, args, i)?);
        state.save()?;
    }
    for (node, node_state) in plan.nodes.iter().zip(&state.nodes) {
        wait_for_servers(node, node_state).await?;
    }
    progress.say("device servers listening");

    if let Guest::Image {
        path,
        format,
        user,
        keys,
    } = guest
    {
        for (node, node_state) in plan.nodes.iter().zip(&state.nodes) {
            progress.say(format!(
                "{}: creating overlay {} and cloud-init seed",
                node.name(),
                node.overlay().display()
            ));
            create_overlay(install, path, format, &node.overlay())?;
            let seed = SeedConfig {
                hostname: node.name().to_owned(),
                user: user.clone(),
                ssh_authorized_keys: keys.clone(),
            };
            std::fs::write(node.seed(), nocloud_iso(&seed))
                .with_context(|| format!("cannot write {}", node.seed().display()))?;
            if let Some(port) = node_state.ssh_port {
                std::net::TcpListener::bind(("127.0.0.1", port)).with_context(|| {
                    format!(
                        "SSH port 127.0.0.1:{port} for {} is taken; pick another --ssh-port-base",
                        node.name()
                    )
                })?;
            }
        }
    }

    for (i, node) in plan.nodes.iter().enumerate() {
        let options = launch_options(node, guest, args, &state.nodes[i]);
        let qemu_args = build_qemu_args(&node.topology, &options)?;
        let _ = std::fs::remove_file(node.qmp_socket());
        let mut cmd = install.command();
        cmd.args(&qemu_args);
        let proc = spawn_detached(cmd, &node.qemu_log(), &node.qmp_socket().to_string_lossy())?;
        progress.say(format!("{}: started QEMU (pid {})", node.name(), proc.pid));
        state.nodes[i].qemu = Some(proc);
        state.save()?;
    }
    for node in &state.nodes {
        let status = wait_for_qemu(node).await?;
        let mut connected = 0;
        for d in &node.devices {
            if let Ok(snapshot) = ControlClient::for_device_socket(&d.socket).get().await {
                connected += usize::from(snapshot.connected);
            }
        }
        progress.say(format!(
            "{}: QEMU {status}, {connected}/{} devices connected",
            node.name,
            node.devices.len()
        ));
    }
    Ok(())
}

/// The command that serves the devices of `list`: `device --topology LIST`, or this binary's
/// hidden `serve-devices LIST` (same code, always the same version as the launcher).
fn device_server_command(device_bin: Option<&Path>, list: &Path) -> anyhow::Result<Command> {
    let mut cmd = match device_bin {
        Some(bin) => {
            let mut cmd = Command::new(bin);
            cmd.arg("--topology");
            cmd
        }
        None => {
            let me = std::env::current_exe().context("cannot find this binary's path")?;
            let mut cmd = Command::new(me);
            cmd.arg("serve-devices");
            cmd
        }
    };
    cmd.arg(list);
    Ok(cmd)
}

fn node_state(
    node: &NodePlan,
    server: crate::state::Proc,
    guest: &Guest,
    args: &UpArgs,
    index: usize,
) -> anyhow::Result<NodeState> {
    let functions = pci_functions(&node.topology);
    let devices = node
        .devices
        .iter()
        .zip(&functions)
        .map(|(d, f)| DeviceState {
            numa: d.numa,
            kind: d.kind(),
            label: d.label.clone(),
            socket: d.socket.clone(),
            qdev_id: f.qdev_id.clone(),
        })
        .collect();
    let image = matches!(guest, Guest::Image { .. });
    let ssh_port = if image {
        let port = u16::try_from(usize::from(args.ssh_port_base) + index)
            .context("--ssh-port-base too high for this many nodes")?;
        Some(port)
    } else {
        None
    };
    Ok(NodeState {
        name: node.name().to_owned(),
        dir: node.dir.clone(),
        server: Some(server),
        qemu: None,
        qmp_socket: node.qmp_socket(),
        serial_log: node.serial_log(),
        qemu_log: node.qemu_log(),
        devices_log: node.devices_log(),
        device_list: node.device_list(),
        devices,
        overlay: image.then(|| node.overlay()),
        seed: image.then(|| node.seed()),
        ssh_port,
    })
}

fn launch_options(
    node: &NodePlan,
    guest: &Guest,
    args: &UpArgs,
    state: &NodeState,
) -> LaunchOptions {
    let even_cpus = node
        .topology
        .numa_nodes
        .iter()
        .all(|n| n.cpus > 0 && n.cpus == node.topology.numa_nodes[0].cpus);
    let mut options = LaunchOptions {
        accel: if args.kvm { Accel::Kvm } else { Accel::Tcg },
        serial: Serial::File(node.serial_log()),
        qmp_socket: Some(node.qmp_socket()),
        socket_per_numa_node: even_cpus,
        ..LaunchOptions::default()
    };
    match guest {
        Guest::Direct(boot) => {
            options.boot = Some(boot.clone());
            options.no_reboot = true;
        }
        Guest::Image { .. } => {
            options.drives = vec![
                Drive {
                    path: node.overlay(),
                    format: "qcow2".to_owned(),
                    read_only: false,
                },
                Drive {
                    path: node.seed(),
                    format: "raw".to_owned(),
                    read_only: true,
                },
            ];
            options.user_net = state.ssh_port.map(|ssh_port| UserNet { ssh_port });
        }
    }
    options
}

/// `qemu-img create -f qcow2 -b IMAGE -F FORMAT OVERLAY`, with the located QEMU's qemu-img.
fn create_overlay(
    install: &QemuInstall,
    image: &Path,
    format: &str,
    overlay: &Path,
) -> anyhow::Result<()> {
    let _ = std::fs::remove_file(overlay);
    let out = install
        .companion("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-b"])
        .arg(image)
        .args(["-F", format])
        .arg(overlay)
        .stdin(Stdio::null())
        .output()
        .context(
            "cannot run qemu-img (it ships with QEMU; scripts/provision-rootfs.sh provides both)",
        )?;
    if !out.status.success() {
        bail!(
            "qemu-img create failed for {}: {}",
            image.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Every device's control socket answers (so its vfio-user socket is listening too).
async fn wait_for_servers(node: &NodePlan, state: &NodeState) -> anyhow::Result<()> {
    let deadline = Instant::now() + SERVER_READY;
    for d in &node.devices {
        let client = ControlClient::for_device_socket(&d.socket);
        loop {
            if client.get().await.is_ok() && d.socket.exists() {
                break;
            }
            let server_alive = state.server.as_ref().is_some_and(alive);
            if !server_alive {
                bail!(
                    "{}: device server exited before serving {}: {}",
                    node.name(),
                    d.label,
                    tail(&node.devices_log(), 5)
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "{}: device server did not listen on {} within {SERVER_READY:?}",
                    node.name(),
                    d.socket.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(())
}

/// Wait for QMP, then return `query-status`.
async fn wait_for_qemu(node: &NodeState) -> anyhow::Result<String> {
    let deadline = Instant::now() + QMP_READY;
    let qemu = node.qemu.as_ref().context("QEMU was not started")?;
    loop {
        if !alive(qemu) {
            bail!(
                "{}: QEMU exited during startup: {}",
                node.name,
                tail(&node.qemu_log, 5)
            );
        }
        if node.qmp_socket.exists() {
            if let Ok(mut qmp) = Qmp::connect(&node.qmp_socket, Duration::from_secs(5)).await {
                return Ok(qmp.status().await?);
            }
        }
        if Instant::now() > deadline {
            bail!(
                "{}: QEMU did not open QMP socket {} within {QMP_READY:?}",
                node.name,
                node.qmp_socket.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
