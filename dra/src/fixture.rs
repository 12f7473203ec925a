//! Sysfs fixtures for tests and benchmarks: the same layout the guest driver produces
//! (DESIGN.md §4/§5), with real symlinks.
//!
//! ```text
//! <root>/sys/devices/pci0000:10/0000:10:00.0/0000:11:00.0/mock-accel/mock0/{uuid,...,device->../..}
//! <root>/sys/devices/pci0000:10/0000:10:00.0/0000:11:00.1/physfn -> ../0000:11:00.0
//! <root>/sys/class/mock-accel/mock0 -> ../../devices/pci0000:10/.../mock-accel/mock0
//! <root>/dev/mock0
//! ```

use std::fs;
use std::io;
use std::os::unix::fs::symlink;
use std::path::Path;

/// One PF + `vfs` VFs behind one PCIe root complex.
#[derive(Debug, Clone)]
pub struct Group {
    /// PF index (PF name `mock<index>`, VFs `mock<index>_vf<i>`).
    pub index: usize,
    /// PCI domain.
    pub domain: u16,
    /// Bus of the root complex (`pci<domain>:<bus>`); devices sit on `bus + 1`.
    pub root_bus: u8,
    /// NUMA node.
    pub numa: u32,
    /// Number of VFs.
    pub vfs: u8,
}

const GIB: u64 = 1 << 30;

/// Memory of function `f` (0 = PF): 16 GiB PF, 4 GiB first VF, 1 GiB further VFs.
pub fn memory_of(function: u8) -> u64 {
    match function {
        0 => 16 * GIB,
        1 => 4 * GIB,
        _ => GIB,
    }
}

/// Writes one group.
pub fn write_group(root: &Path, g: &Group) -> io::Result<()> {
    let rc = format!("pci{:04x}:{:02x}", g.domain, g.root_bus);
    let port = format!("{:04x}:{:02x}:00.0", g.domain, g.root_bus);
    let bus = g.root_bus.wrapping_add(1);
    let class = root.join("sys/class/mock-accel");
    fs::create_dir_all(&class)?;
    fs::create_dir_all(root.join("dev"))?;
    for f in 0..=g.vfs {
        let bdf = format!("{:04x}:{:02x}:00.{f}", g.domain, bus);
        let name = if f == 0 {
            format!("mock{}", g.index)
        } else {
            format!("mock{}_vf{}", g.index, f - 1)
        };
        let pci_rel = format!("devices/{rc}/{port}/{bdf}");
        let pci = root.join("sys").join(&pci_rel);
        let dev = pci.join("mock-accel").join(&name);
        fs::create_dir_all(&dev)?;
        fs::write(
            dev.join("uuid"),
            format!("{:08x}-0000-4000-8000-{:012x}\n", g.index, f),
        )?;
        fs::write(dev.join("memory_size"), format!("{}\n", memory_of(f)))?;
        fs::write(dev.join("capabilities"), format!("0x{:08x}\n", 1))?;
        fs::write(dev.join("status"), "0\n")?;
        fs::write(dev.join("numa_node"), format!("{}\n", g.numa))?;
        symlink("../..", dev.join("device"))?;
        if f == 0 {
            fs::write(dev.join("sriov_numvfs"), format!("{}\n", g.vfs))?;
        } else {
            symlink(
                format!("../{:04x}:{:02x}:00.0", g.domain, bus),
                pci.join("physfn"),
            )?;
        }
        symlink(
            format!("../../{pci_rel}/mock-accel/{name}"),
            class.join(&name),
        )?;
        fs::write(root.join("dev").join(&name), "")?;
    }
    Ok(())
}

/// The basic layout: 2 NUMA nodes, each one PF + 2 VFs (`mock0` on `pci0000:10`, NUMA 0;
/// `mock1` on `pci0000:20`, NUMA 1). Same content as `tests/fixtures/sysfs-basic`.
pub fn write_basic(root: &Path) -> io::Result<()> {
    for (index, root_bus, numa) in [(0usize, 0x10u8, 0u32), (1, 0x20, 1)] {
        write_group(
            root,
            &Group {
                index,
                domain: 0,
                root_bus,
                numa,
                vfs: 2,
            },
        )?;
    }
    Ok(())
}

/// Writes at least `n` devices (groups of PF + 2 VFs over 2 NUMA nodes, 14 root complexes per
/// PCI domain); returns the number written (`n` rounded up to a multiple of 3).
pub fn write_many(root: &Path, n: usize) -> io::Result<usize> {
    let groups = n.div_ceil(3);
    for index in 0..groups {
        let domain = u16::try_from(index / 14).map_err(|_| io::Error::other("too many devices"))?;
        let slot = u8::try_from(index % 14).unwrap_or(0);
        write_group(
            root,
            &Group {
                index,
                domain,
                root_bus: 0x10 + 0x10 * slot,
                numa: u32::from(slot % 2),
                vfs: 2,
            },
        )?;
    }
    Ok(groups * 3)
}
