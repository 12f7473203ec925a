//! A QEMU guest under test: started from a topology with the pure builder, QMP connected,
//! logs kept in the test directory, killed on drop.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use qemu::qmp::{all_devices, PciDevice};
use qemu::{build_qemu_args, LaunchOptions, QemuInstall, QemuProcess, Qmp, Serial, Topology};

/// How long QEMU gets to create its QMP socket.
const QMP_CONNECT_WAIT: Duration = Duration::from_secs(30);

/// A running guest.
#[derive(Debug)]
pub struct Guest {
    pub process: QemuProcess,
    pub qmp: Qmp,
    /// When QEMU was spawned.
    pub started: Instant,
    /// The arguments it was started with (for failure messages).
    pub args: Vec<String>,
}

impl Guest {
    /// Start `install` with `topology` (TCG, serial to `dir/serial.log`, QMP on `dir/qmp.sock`,
    /// QEMU's stdout/stderr in `dir/stdout.log`/`dir/stderr.log`) and connect QMP.
    pub async fn start(
        install: &QemuInstall,
        topology: &Topology,
        dir: &Path,
    ) -> anyhow::Result<Self> {
        let qmp_socket = dir.join("qmp.sock");
        let _ = std::fs::remove_file(&qmp_socket);
        let options = LaunchOptions {
            serial: Serial::File(dir.join("serial.log")),
            qmp_socket: Some(qmp_socket.clone()),
            ..LaunchOptions::default()
        };
        let args = build_qemu_args(topology, &options)?;
        let started = Instant::now();
        let mut process = QemuProcess::spawn(install, &args, dir)?;
        let qmp = match Qmp::connect(&qmp_socket, QMP_CONNECT_WAIT).await {
            Ok(qmp) => qmp,
            Err(e) => {
                let status = process.try_wait().ok().flatten();
                bail!(
                    "QMP did not come up ({e}); QEMU exit status {status:?}; stderr:\n{}\nargs: {args:?}",
                    process.stderr_text()
                );
            }
        };
        Ok(Self {
            process,
            qmp,
            started,
            args,
        })
    }

    /// Every PCI function the guest has (bridges walked).
    pub async fn pci_devices(&mut self) -> anyhow::Result<Vec<PciDevice>> {
        let buses = self.qmp.query_pci().await?;
        Ok(all_devices(&buses).into_iter().cloned().collect())
    }

    /// The function QEMU knows as `qdev_id` (the builder's `mock<N>_<D>[_vf<V>]`).
    pub async fn pci_device(&mut self, qdev_id: &str) -> anyhow::Result<PciDevice> {
        self.pci_devices()
            .await?
            .into_iter()
            .find(|d| d.qdev_id == qdev_id)
            .with_context(|| format!("query-pci has no device with id {qdev_id:?}"))
    }

    /// Poll `query-pci` until the firmware has assigned and enabled BAR `bar` of every device in
    /// `qdev_ids`; returns them in the same order. Fails after `limit`, or as soon as QEMU exits.
    pub async fn wait_for_bars(
        &mut self,
        qdev_ids: &[&str],
        bar: u8,
        limit: Duration,
    ) -> anyhow::Result<Vec<PciDevice>> {
        let deadline = Instant::now() + limit;
        loop {
            let devices = self.pci_devices().await?;
            let found: Vec<PciDevice> = qdev_ids
                .iter()
                .filter_map(|id| devices.iter().find(|d| d.qdev_id == *id).cloned())
                .collect();
            let assigned = found.len() == qdev_ids.len()
                && found.iter().all(|d| {
                    d.regions
                        .iter()
                        .any(|r| r.bar == bar && r.assigned_address().is_some())
                });
            if assigned {
                return Ok(found);
            }
            if let Some(status) = self.process.try_wait()? {
                bail!(
                    "QEMU exited ({status}) before BAR{bar} of {qdev_ids:?} was assigned; stderr:\n{}",
                    self.process.stderr_text()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "BAR{bar} of {qdev_ids:?} not assigned within {limit:?}; info pci:\n{}",
                    self.qmp.hmp("info pci").await.unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// QMP `quit`, then wait for the process to exit.
    pub async fn quit(mut self) -> anyhow::Result<ExitStatus> {
        self.qmp.quit().await?;
        Ok(self.process.wait_timeout(Duration::from_secs(30)).await?)
    }
}

/// Lines of QEMU's stderr that are warnings from its vfio / vfio-user code, e.g.
/// "Could not enable error recovery" or "Device ROM size is zero" (DESIGN.md §2).
pub fn vfio_user_warnings(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| {
            let l = l.to_ascii_lowercase();
            l.contains("vfio") || l.contains("error recovery") || l.contains("rom size")
        })
        .collect()
}

/// Check that the DMA windows a vfio-user server holds cover the guest's RAM `[0, ram_bytes)`
/// the way QEMU maps a `memory-backend-memfd` guest: every byte from 1 MiB up is in a window
/// backed by a file descriptor (mapped into the server, writable); below 1 MiB the legacy
/// BIOS shadow (PAM) ranges may be read-only windows without an fd, but every byte is mapped.
/// Returns a one-line description of the first gap.
pub fn check_ram_coverage(
    windows: &[vfio_user_proto::DmaMapping],
    ram_bytes: u64,
) -> Result<(), String> {
    const ONE_MIB: u64 = 1 << 20;
    let covered = |addr: u64, fd_only: bool| {
        windows
            .iter()
            .filter(|w| !fd_only || (w.mapped && w.writable))
            .find(|w| w.iova <= addr && addr < w.iova.saturating_add(w.size))
            .map(|w| {
                let end = w.iova.saturating_add(w.size);
                // A window without an fd only vouches for the range below 1 MiB.
                if w.mapped && w.writable {
                    end
                } else {
                    end.min(ONE_MIB)
                }
            })
    };
    let mut addr = 0;
    while addr < ram_bytes {
        let fd_only = addr >= ONE_MIB;
        match covered(addr, fd_only) {
            Some(end) => addr = end,
            None => {
                return Err(format!(
                    "guest RAM at {addr:#x} is not in any {}DMA window; windows: {windows:?}",
                    if fd_only { "fd-backed writable " } else { "" }
                ))
            }
        }
    }
    Ok(())
}

/// One request/reply line on a device server's control socket (`SOCKET.ctl`: `get`,
/// `set-status N`).
pub fn device_control(socket: &Path, request: &str) -> anyhow::Result<String> {
    use std::io::{BufRead, BufReader, Write};
    let ctl = PathBuf::from(format!("{}.ctl", socket.display()));
    let mut s = std::os::unix::net::UnixStream::connect(&ctl)
        .with_context(|| format!("connect {ctl:?}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    writeln!(s, "{request}")?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line)?;
    Ok(line)
}

/// The `MOCKTEST...` lines of a guest serial log written so far (from the marker on, so
/// console noise before it on the same line is dropped).
pub fn serial_lines(path: &Path) -> Vec<String> {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.find("MOCKTEST").map(|i| l[i..].trim_end().to_owned()))
        .collect()
}

/// The test guest from `scripts/build-guest.sh` (kernel, initramfs, module, word list, ioctl
/// tool; cached), as the `KEY=PATH` lines it prints. Fails naming the script if it fails.
pub fn guest_artifacts() -> anyhow::Result<BTreeMap<String, PathBuf>> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/build-guest.sh");
    let out = Command::new(&script)
        .output()
        .with_context(|| format!("run {}", script.display()))?;
    if !out.status.success() {
        bail!(
            "scripts/build-guest.sh failed (run it by hand to provision the guest and QEMU):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let artifacts: BTreeMap<String, PathBuf> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), PathBuf::from(v)))
        .collect();
    for key in ["KERNEL", "INITRAMFS", "WORDLIST"] {
        if !artifacts.contains_key(key) {
            bail!("scripts/build-guest.sh printed no {key}=");
        }
    }
    Ok(artifacts)
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]
mod tests {
    use super::*;
    use vfio_user_proto::DmaMapping;

    fn window(iova: u64, size: u64, fd: bool, writable: bool) -> DmaMapping {
        DmaMapping {
            iova,
            size,
            readable: true,
            writable,
            mapped: fd,
        }
    }

    #[test]
    fn ram_fully_in_fd_windows_is_covered() {
        let w = [
            window(0, 128 << 20, true, true),
            window(128 << 20, 64 << 20, true, true),
        ];
        assert_eq!(check_ram_coverage(&w, 192 << 20), Ok(()));
    }

    #[test]
    fn bios_shadow_below_one_mib_may_be_read_only_without_fd() {
        let w = [
            window(0, 0xd8000, true, true),
            window(0xd8000, 0x28000, false, false),
            window(0x100000, 127 << 20, true, true),
        ];
        assert_eq!(check_ram_coverage(&w, 128 << 20), Ok(()));
    }

    #[test]
    fn ram_above_one_mib_without_fd_is_a_gap() {
        let w = [
            window(0, 64 << 20, true, true),
            window(64 << 20, 64 << 20, false, true),
        ];
        let err = check_ram_coverage(&w, 128 << 20).unwrap_err();
        assert!(err.contains("0x4000000"), "{err}");
    }

    #[test]
    fn a_window_without_fd_does_not_vouch_above_one_mib() {
        let w = [window(0, 128 << 20, false, true)];
        assert!(check_ram_coverage(&w, 128 << 20).is_err());
    }

    #[test]
    fn unmapped_ram_is_a_gap() {
        let w = [window(0, 64 << 20, true, true)];
        assert!(check_ram_coverage(&w, 128 << 20).is_err());
    }

    #[test]
    fn vfio_warnings_are_picked_out_of_stderr() {
        let stderr = "qemu-system-x86_64: -device {...}: warning: vfio-user: Could not enable error recovery for the device\nsomething else\n";
        assert_eq!(vfio_user_warnings(stderr).len(), 1);
        assert!(vfio_user_warnings("").is_empty());
    }
}
