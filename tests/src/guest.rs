//! A QEMU guest under test: started from a topology with the pure builder, QMP connected,
//! logs kept in the test directory, killed on drop.

use std::path::Path;
use std::process::ExitStatus;
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
