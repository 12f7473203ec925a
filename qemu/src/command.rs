//! The pure half of launching a guest: a [`Topology`] plus [`LaunchOptions`] in, QEMU arguments
//! out. No I/O, no environment, no QEMU binary: the same input always gives the same arguments,
//! which the golden tests in `qemu/tests/golden/` pin down.
//!
//! Layout of the generated PCIe hierarchy (DESIGN.md §1, §5):
//!
//! ```text
//! pcie.0 ── pxb-pcie pxb<N> (numa_node=N, bus_nr=16*(N+1))
//!              └─ pcie-root-port rp<N>_<D> (chassis=N+1, slot=D)
//!                   ├─ 0.0 vfio-user-pci mock<N>_<D>        (PF, multifunction when it has VFs)
//!                   ├─ 0.1 vfio-user-pci mock<N>_<D>_vf0
//!                   └─ 0.2 vfio-user-pci mock<N>_<D>_vf1
//! ```
//!
//! All `pxb-pcie` come before all root ports, which come before all vfio-user-pci devices, so
//! every `bus=` names a device that already exists when QEMU creates the next one.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::topology::{check_socket_path, path_str, Topology, TopologyError, BUS_NR_STRIDE};

/// How QEMU executes guest code.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Accel {
    /// Software emulation. The default: `/dev/kvm` hung guests on the project's machines
    /// (DESIGN.md §7).
    #[default]
    Tcg,
    /// Hardware virtualization through `/dev/kvm`.
    Kvm,
}

/// Where the guest's first serial port goes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Serial {
    /// No serial port.
    None,
    /// QEMU's stdout (interactive use).
    #[default]
    Stdio,
    /// Appended to a file (launchers and tests).
    File(PathBuf),
}

/// Boot a Linux kernel directly (`-kernel`), skipping disks and boot loaders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectBoot {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    pub append: Option<String>,
}

/// Everything about a QEMU launch that is not the guest's hardware topology.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LaunchOptions {
    pub accel: Accel,
    /// Without it QEMU runs the firmware only (SeaBIOS still enumerates PCI and assigns BARs).
    pub boot: Option<DirectBoot>,
    pub serial: Serial,
    /// Unix socket QEMU listens on for QMP (`server=on,wait=off`).
    pub qmp_socket: Option<PathBuf>,
    /// File QEMU writes its pid to.
    pub pidfile: Option<PathBuf>,
    /// Exit instead of rebooting (a guest panic or `reboot` then ends QEMU).
    pub no_reboot: bool,
    /// One CPU socket per NUMA node (`-smp N,sockets=M`). Needs the same CPU count on every
    /// node; without it QEMU puts all cores in one package spread over the nodes, which makes
    /// Linux guests WARN in `topology_sane()`.
    pub socket_per_numa_node: bool,
    /// Disks, in order (the first one is the boot disk when there is no direct boot).
    pub drives: Vec<Drive>,
    /// User-mode (slirp) networking on a virtio NIC.
    pub user_net: Option<UserNet>,
}

/// A disk image attached as a virtio block device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drive {
    pub path: PathBuf,
    /// QEMU block format: `qcow2`, `raw`, ...
    pub format: String,
    pub read_only: bool,
}

/// User-mode networking: the guest reaches out through QEMU, the host reaches the guest's
/// SSH server through a forwarded port on 127.0.0.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserNet {
    /// Host port on 127.0.0.1 forwarded to the guest's port 22.
    pub ssh_port: u16,
}

/// Options that cannot be expressed on a QEMU command line.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BuildError {
    #[error(transparent)]
    Topology(#[from] TopologyError),
    #[error("initrd path {0:?} contains a comma, which QEMU reads as a separator")]
    CommaInInitrd(PathBuf),
    #[error("one socket per NUMA node needs the same nonzero CPU count on every NUMA node")]
    UnevenSockets,
    #[error("drive format {0:?} must be a plain word such as qcow2 or raw")]
    BadDriveFormat(String),
}

/// Arguments (without the program name) that start a q35 guest with `topology`.
///
/// The topology is validated first; see [`Topology::validate`].
pub fn build_qemu_args(
    topology: &Topology,
    options: &LaunchOptions,
) -> Result<Vec<String>, BuildError> {
    topology.validate()?;
    let mut args = Args::default();

    // Guest name: shows up in `ps`, QMP `query-name` and window titles.
    args.push2("-name", format!("guest={},debug-threads=on", topology.name));
    // q35: PCI Express host bridge, needed for pxb-pcie, root ports and 4 KiB config space.
    args.push2("-machine", "q35");
    // Accelerator: TCG unless asked otherwise.
    args.push2(
        "-accel",
        match options.accel {
            Accel::Tcg => "tcg",
            Accel::Kvm => "kvm",
        },
    );
    // Ignore /etc/qemu config files so the command line is the whole story.
    args.push("-no-user-config");
    // No default NIC, VGA, serial, parallel, floppy or CD-ROM: only what is listed here.
    args.push("-nodefaults");
    // No display window; the guest talks through the serial port below.
    args.push("-nographic");
    // vCPUs: the sum over NUMA nodes; each node claims its range with `-numa ...,cpus=`.
    if options.socket_per_numa_node {
        let first = topology.numa_nodes[0].cpus;
        if first == 0 || topology.numa_nodes.iter().any(|n| n.cpus != first) {
            return Err(BuildError::UnevenSockets);
        }
        // One package per NUMA node, as on real multi-socket hosts.
        args.push2(
            "-smp",
            format!(
                "{},sockets={}",
                topology.total_cpus(),
                topology.numa_nodes.len()
            ),
        );
    } else {
        args.push2("-smp", topology.total_cpus().to_string());
    }
    // Guest RAM: the sum over NUMA nodes; each node's share comes from its own memory backend.
    args.push2("-m", format!("{}M", topology.total_memory_mib()));

    let mut first_cpu = 0u64;
    for (n, node) in topology.numa_nodes.iter().enumerate() {
        // Node RAM as a shared memfd: QEMU passes its fd with DMA_MAP so device servers can
        // map guest memory directly (DESIGN.md §2); share=on makes their writes visible.
        args.push2(
            "-object",
            format!(
                "memory-backend-memfd,id=mem{n},size={}M,share=on",
                node.memory_mib
            ),
        );
        // The NUMA node itself: its memory backend and its vCPU range (none: memory-only).
        let mut numa = format!("node,nodeid={n},memdev=mem{n}");
        if node.cpus > 0 {
            let last_cpu = first_cpu + u64::from(node.cpus) - 1;
            if last_cpu == first_cpu {
                numa.push_str(&format!(",cpus={first_cpu}"));
            } else {
                numa.push_str(&format!(",cpus={first_cpu}-{last_cpu}"));
            }
            first_cpu = last_cpu + 1;
        }
        args.push2("-numa", numa);
    }

    // Created last-node-first: QEMU puts each new root bus at the head of its list, so the
    // ACPI tables (and Linux's probe order) list node 0's expander first and the guest's
    // mockN names count up from NUMA node 0, as the seeds show.
    for n in (0..topology.numa_nodes.len()).rev() {
        // One PCIe expander bridge per NUMA node: devices behind it report this numa_node
        // to the guest (ACPI _PXM). bus_nr reserves 16 bus numbers per node.
        let bus_nr = u64::from(BUS_NR_STRIDE) * (n as u64 + 1);
        args.push2(
            "-device",
            format!("pxb-pcie,id=pxb{n},bus=pcie.0,bus_nr={bus_nr},numa_node={n}"),
        );
    }

    for (n, node) in topology.numa_nodes.iter().enumerate() {
        for d in 0..node.devices.len() {
            // One root port per PF, behind its node's expander bridge. chassis/slot pairs
            // must be unique in the machine: chassis = NUMA node + 1, slot = device index.
            args.push2(
                "-device",
                format!(
                    "pcie-root-port,id=rp{n}_{d},bus=pxb{n},chassis={},slot={d}",
                    n + 1
                ),
            );
        }
    }

    for function in pci_functions(topology) {
        // PF: function 0 of its root port's only slot, multifunction when VFs share the slot.
        // VF v: function v+1 of the PF's slot, served by its own socket (emulated SR-IOV,
        // DESIGN.md §5). rombar=0: the device has no option ROM (avoids "Device ROM size is
        // zero", DESIGN.md §2).
        let device = VfioUserPci {
            driver: "vfio-user-pci",
            id: function.qdev_id.clone(),
            socket: UnixSocket {
                kind: "unix",
                path: path_str(function.socket)?,
            },
            bus: function.root_port.clone(),
            addr: format!("0.{}", function.function),
            multifunction: function.multifunction.then_some(true),
            rombar: 0,
        };
        args.push2("-device", device.to_json());
    }

    match &options.serial {
        // No serial port at all (-nodefaults removed the default one).
        Serial::None => {}
        // Serial port on QEMU's stdout.
        Serial::Stdio => args.push2("-serial", "stdio"),
        Serial::File(path) => {
            // Serial port appended to a file.
            args.push2(
                "-chardev",
                format!(
                    "file,id=serial0,path={},append=on",
                    opt_value(path_str(path)?)
                ),
            );
            args.push2("-serial", "chardev:serial0");
        }
    }

    if let Some(socket) = &options.qmp_socket {
        check_socket_path(socket)?;
        // QMP control socket; wait=off: the guest runs without waiting for a client.
        // (`-qmp` rather than `-chardev` + `-mon`: QEMU 11 deprecates `-mon`.)
        args.push2(
            "-qmp",
            format!("unix:{},server=on,wait=off", opt_value(path_str(socket)?)),
        );
    }

    if let Some(pidfile) = &options.pidfile {
        // QEMU's pid, for launchers that outlive the process that started it.
        args.push2("-pidfile", path_str(pidfile)?);
    }

    for (i, drive) in options.drives.iter().enumerate() {
        if drive.format.is_empty()
            || !drive
                .format
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(BuildError::BadDriveFormat(drive.format.clone()));
        }
        // The disk's backend; read-only for seeds and shared images.
        let mut value = format!(
            "file={},format={},if=none,id=disk{i}",
            opt_value(path_str(&drive.path)?),
            drive.format
        );
        if drive.read_only {
            value.push_str(",readonly=on");
        }
        args.push2("-drive", value);
        // Its virtio disk, on pcie.0 by name: without bus= QEMU would pick the last
        // pxb-pcie, which only takes bridges. The first disk boots.
        let mut device = format!("virtio-blk-pci,drive=disk{i},bus=pcie.0");
        if i == 0 {
            device.push_str(",bootindex=0");
        }
        args.push2("-device", device);
    }

    if let Some(net) = &options.user_net {
        // User-mode networking (no root, no bridges); SSH reachable on 127.0.0.1:PORT.
        args.push2(
            "-netdev",
            format!("user,id=net0,hostfwd=tcp:127.0.0.1:{}-:22", net.ssh_port),
        );
        // On pcie.0 for the same reason as the disks.
        args.push2("-device", "virtio-net-pci,netdev=net0,bus=pcie.0");
    }

    if options.no_reboot {
        // A guest reboot (or a panic with panic=-1) ends QEMU.
        args.push("-no-reboot");
    }

    if let Some(boot) = &options.boot {
        // Direct kernel boot: SeaBIOS hands over to this kernel without a disk.
        args.push2("-kernel", path_str(&boot.kernel)?);
        if let Some(initrd) = &boot.initrd {
            let initrd_str = path_str(initrd)?;
            if initrd_str.contains(',') {
                return Err(BuildError::CommaInInitrd(initrd.clone()));
            }
            args.push2("-initrd", initrd_str);
        }
        if let Some(append) = &boot.append {
            args.push2("-append", append.as_str());
        }
    }

    Ok(args.0)
}

/// A `vfio-user-pci` device in QEMU's JSON `-device` syntax (fields in this order).
#[derive(Serialize)]
struct VfioUserPci<'a> {
    driver: &'static str,
    id: String,
    socket: UnixSocket<'a>,
    bus: String,
    addr: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    multifunction: Option<bool>,
    rombar: u32,
}

#[derive(Serialize)]
struct UnixSocket<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    path: &'a str,
}

impl VfioUserPci<'_> {
    fn to_json(&self) -> String {
        // Serializing plain strings and integers cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// One vfio-user-pci function of a topology, as the command line names and places it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PciFunction<'a> {
    /// Guest NUMA node (index into `Topology::numa_nodes`).
    pub numa: usize,
    /// Device (PF) index within its NUMA node.
    pub device: usize,
    /// `None` for the PF, `Some(v)` for its VF `v`.
    pub vf: Option<usize>,
    /// QEMU device id: `mock<N>_<D>` for a PF, `mock<N>_<D>_vf<V>` for a VF (`query-pci`'s
    /// `qdev_id`).
    pub qdev_id: String,
    /// Root port it sits behind: `rp<N>_<D>`.
    pub root_port: String,
    /// `pxb-pcie` of its NUMA node: `pxb<N>`.
    pub expander: String,
    /// PCI function number on the root port's slot 0 (0 for the PF, v + 1 for VF v).
    pub function: u8,
    /// Whether the PF is marked multifunction (it has VFs); false for VFs.
    pub multifunction: bool,
    /// vfio-user socket QEMU connects to.
    pub socket: &'a Path,
}

/// Every vfio-user-pci function of `topology` in command-line order (per NUMA node, per PF:
/// the PF, then its VFs). Launchers use it to start one device server per socket and to match
/// `query-pci` results back to the topology.
pub fn pci_functions(topology: &Topology) -> Vec<PciFunction<'_>> {
    let mut out = Vec::new();
    for (n, node) in topology.numa_nodes.iter().enumerate() {
        for (d, device) in node.devices.iter().enumerate() {
            let base = PciFunction {
                numa: n,
                device: d,
                vf: None,
                qdev_id: format!("mock{n}_{d}"),
                root_port: format!("rp{n}_{d}"),
                expander: format!("pxb{n}"),
                function: 0,
                multifunction: !device.vfs.is_empty(),
                socket: &device.socket,
            };
            out.push(base.clone());
            for (v, vf) in device.vfs.iter().enumerate() {
                out.push(PciFunction {
                    vf: Some(v),
                    qdev_id: format!("mock{n}_{d}_vf{v}"),
                    // At most MAX_VFS_PER_DEVICE (7) VFs pass validation.
                    function: u8::try_from(v + 1).unwrap_or(u8::MAX),
                    multifunction: false,
                    socket: vf,
                    ..base.clone()
                });
            }
        }
    }
    out
}

/// A value inside QEMU's `key=value,...` option syntax: commas are doubled.
fn opt_value(value: &str) -> String {
    value.replace(',', ",,")
}

#[derive(Default)]
struct Args(Vec<String>);

impl Args {
    fn push(&mut self, flag: &str) {
        self.0.push(flag.to_owned());
    }

    fn push2(&mut self, flag: &str, value: impl Into<String>) {
        self.0.push(flag.to_owned());
        self.0.push(value.into());
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]
mod tests {
    use super::*;
    use crate::topology::{DeviceSpec, NumaNode};

    fn topo(numa: usize, vfs: usize) -> Topology {
        Topology {
            name: "g".into(),
            numa_nodes: (0..numa)
                .map(|n| NumaNode {
                    cpus: 1,
                    memory_mib: 128,
                    devices: vec![DeviceSpec {
                        socket: format!("/tmp/n{n}.sock").into(),
                        vfs: (0..vfs)
                            .map(|v| format!("/tmp/n{n}v{v}.sock").into())
                            .collect(),
                        uuid: None,
                        vf_uuids: vec![],
                    }],
                })
                .collect(),
        }
    }

    fn position(args: &[String], needle: &str) -> Vec<usize> {
        args.iter()
            .enumerate()
            .filter(|(_, a)| a.contains(needle))
            .map(|(i, _)| i)
            .collect()
    }

    #[test]
    fn pxb_before_root_ports_before_vfio_user_devices() {
        let args = build_qemu_args(&topo(4, 2), &LaunchOptions::default()).unwrap();
        let pxb = position(&args, "pxb-pcie,");
        let rp = position(&args, "pcie-root-port,");
        let dev = position(&args, "\"vfio-user-pci\"");
        assert_eq!((pxb.len(), rp.len(), dev.len()), (4, 4, 12));
        assert!(pxb.iter().max() < rp.iter().min());
        assert!(rp.iter().max() < dev.iter().min());
    }

    #[test]
    fn bus_numbers_and_chassis_slot_pairs_are_unique() {
        let mut t = topo(3, 0);
        t.numa_nodes[1].devices.push(DeviceSpec {
            socket: "/tmp/extra.sock".into(),
            vfs: vec![],
            uuid: None,
            vf_uuids: vec![],
        });
        let args = build_qemu_args(&t, &LaunchOptions::default()).unwrap();
        let field = |a: &str, key: &str| {
            a.split(',')
                .find_map(|kv| kv.strip_prefix(key))
                .map(str::to_owned)
        };
        let bus_nrs: Vec<_> = args.iter().filter_map(|a| field(a, "bus_nr=")).collect();
        let mut unique = bus_nrs.clone();
        unique.dedup();
        // Created last node first (the guest then probes node 0 first, see build_qemu_args).
        assert_eq!(bus_nrs, ["48", "32", "16"]);
        assert_eq!(unique.len(), 3);
        let pairs: Vec<_> = args
            .iter()
            .filter(|a| a.starts_with("pcie-root-port"))
            .map(|a| (field(a, "chassis="), field(a, "slot=")))
            .collect();
        let set: std::collections::HashSet<_> = pairs.iter().collect();
        assert_eq!(pairs.len(), 4);
        assert_eq!(set.len(), 4);
    }

    #[test]
    fn numa_nodes_get_consecutive_cpu_ranges_and_memfd_backends() {
        let mut t = topo(3, 0);
        t.numa_nodes[0].cpus = 2;
        t.numa_nodes[1].cpus = 0;
        t.numa_nodes[2].cpus = 3;
        let args = build_qemu_args(&t, &LaunchOptions::default()).unwrap();
        let numa: Vec<_> = args
            .iter()
            .filter(|a| a.starts_with("node,"))
            .cloned()
            .collect();
        assert_eq!(
            numa,
            [
                "node,nodeid=0,memdev=mem0,cpus=0-1",
                "node,nodeid=1,memdev=mem1",
                "node,nodeid=2,memdev=mem2,cpus=2-4"
            ]
        );
        assert_eq!(position(&args, "memory-backend-memfd,").len(), 3);
        assert!(args.contains(&"5".to_owned()) && args.contains(&"384M".to_owned()));
    }

    #[test]
    fn vfs_are_functions_of_the_pf_slot() {
        let args = build_qemu_args(&topo(1, 2), &LaunchOptions::default()).unwrap();
        let devs: Vec<serde_json::Value> = args
            .iter()
            .filter(|a| a.starts_with('{'))
            .map(|a| serde_json::from_str(a).unwrap())
            .collect();
        assert_eq!(devs[0]["addr"], "0.0");
        assert_eq!(devs[0]["multifunction"], true);
        assert_eq!(devs[1]["addr"], "0.1");
        assert_eq!(devs[2]["addr"], "0.2");
        assert!(devs.iter().all(|d| d["bus"] == "rp0_0" && d["rombar"] == 0));
        assert_eq!(devs[2]["socket"]["path"], "/tmp/n0v1.sock");
    }

    #[test]
    fn a_pf_without_vfs_is_not_multifunction() {
        let args = build_qemu_args(&topo(1, 0), &LaunchOptions::default()).unwrap();
        let dev: serde_json::Value =
            serde_json::from_str(args.iter().find(|a| a.starts_with('{')).unwrap()).unwrap();
        assert!(dev.get("multifunction").is_none());
    }

    #[test]
    fn pci_functions_name_pfs_then_their_vfs() {
        let t = topo(2, 1);
        let f: Vec<_> = pci_functions(&t)
            .into_iter()
            .map(|f| {
                (
                    f.qdev_id,
                    f.root_port,
                    f.expander,
                    f.function,
                    f.multifunction,
                )
            })
            .collect();
        let row = |id: &str, rp: &str, pxb: &str, func, mf| {
            (id.to_owned(), rp.to_owned(), pxb.to_owned(), func, mf)
        };
        assert_eq!(
            f,
            [
                row("mock0_0", "rp0_0", "pxb0", 0, true),
                row("mock0_0_vf0", "rp0_0", "pxb0", 1, false),
                row("mock1_0", "rp1_0", "pxb1", 0, true),
                row("mock1_0_vf0", "rp1_0", "pxb1", 1, false),
            ]
        );
    }

    #[test]
    fn commas_in_option_paths_are_escaped() {
        let options = LaunchOptions {
            serial: Serial::File("/tmp/a,b.log".into()),
            qmp_socket: Some("/tmp/q,mp.sock".into()),
            ..LaunchOptions::default()
        };
        let args = build_qemu_args(&topo(1, 0), &options).unwrap();
        assert!(args.contains(&"file,id=serial0,path=/tmp/a,,b.log,append=on".to_owned()));
        assert!(args.contains(&"unix:/tmp/q,,mp.sock,server=on,wait=off".to_owned()));
    }

    #[test]
    fn socket_paths_with_quotes_stay_valid_json() {
        let mut t = topo(1, 0);
        t.numa_nodes[0].devices[0].socket = "/tmp/we\"ird.sock".into();
        let args = build_qemu_args(&t, &LaunchOptions::default()).unwrap();
        let dev: serde_json::Value =
            serde_json::from_str(args.iter().find(|a| a.starts_with('{')).unwrap()).unwrap();
        assert_eq!(dev["socket"]["path"], "/tmp/we\"ird.sock");
    }

    #[test]
    fn qmp_socket_must_fit_sun_path() {
        let options = LaunchOptions {
            qmp_socket: Some(format!("/{}", "q".repeat(120)).into()),
            ..LaunchOptions::default()
        };
        assert!(matches!(
            build_qemu_args(&topo(1, 0), &options),
            Err(BuildError::Topology(
                TopologyError::SocketPathTooLong { .. }
            ))
        ));
    }

    #[test]
    fn disks_and_nic_sit_on_the_root_bus_not_on_an_expander() {
        let options = LaunchOptions {
            drives: vec![
                Drive {
                    path: "/tmp/a,b.qcow2".into(),
                    format: "qcow2".into(),
                    read_only: false,
                },
                Drive {
                    path: "/tmp/seed.iso".into(),
                    format: "raw".into(),
                    read_only: true,
                },
            ],
            user_net: Some(UserNet { ssh_port: 2222 }),
            ..LaunchOptions::default()
        };
        let args = build_qemu_args(&topo(2, 0), &options).unwrap();
        assert!(args.contains(&"file=/tmp/a,,b.qcow2,format=qcow2,if=none,id=disk0".to_owned()));
        assert!(
            args.contains(&"file=/tmp/seed.iso,format=raw,if=none,id=disk1,readonly=on".to_owned())
        );
        assert!(args.contains(&"virtio-blk-pci,drive=disk0,bus=pcie.0,bootindex=0".to_owned()));
        assert!(args.contains(&"virtio-blk-pci,drive=disk1,bus=pcie.0".to_owned()));
        assert!(args.contains(&"user,id=net0,hostfwd=tcp:127.0.0.1:2222-:22".to_owned()));
        assert!(args.contains(&"virtio-net-pci,netdev=net0,bus=pcie.0".to_owned()));
        let bad = LaunchOptions {
            drives: vec![Drive {
                path: "/tmp/x".into(),
                format: "qcow2,snapshot=on".into(),
                read_only: false,
            }],
            ..LaunchOptions::default()
        };
        assert!(matches!(
            build_qemu_args(&topo(1, 0), &bad),
            Err(BuildError::BadDriveFormat(_))
        ));
    }

    #[test]
    fn one_socket_per_numa_node_needs_even_cpus() {
        let options = LaunchOptions {
            socket_per_numa_node: true,
            ..LaunchOptions::default()
        };
        let args = build_qemu_args(&topo(2, 0), &options).unwrap();
        assert!(args.contains(&"2,sockets=2".to_owned()));
        let mut t = topo(2, 0);
        t.numa_nodes[1].cpus = 2;
        assert_eq!(
            build_qemu_args(&t, &options),
            Err(BuildError::UnevenSockets)
        );
    }

    #[test]
    fn invalid_topologies_build_nothing() {
        let t = Topology {
            name: "g".into(),
            numa_nodes: vec![],
        };
        assert_eq!(
            build_qemu_args(&t, &LaunchOptions::default()),
            Err(BuildError::Topology(TopologyError::NoNumaNodes))
        );
    }
}
