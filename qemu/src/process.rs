//! Running QEMU: spawn a [`QemuInstall`] with built arguments, logs to files, killed on drop.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::process::Child;

use crate::locate::QemuInstall;

/// Most of a log file [`QemuProcess::stderr_text`] returns.
const MAX_LOG_READ: u64 = 1 << 20;

/// A failure to start or stop QEMU.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot create QEMU log file {path:?}: {source}")]
    Log {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start QEMU: {0}")]
    Spawn(std::io::Error),
    #[error("QEMU did not exit within {0:?}")]
    ExitTimeout(Duration),
    #[error("waiting for QEMU failed: {0}")]
    Wait(std::io::Error),
}

/// A running QEMU. Dropping it kills the process (SIGKILL).
#[derive(Debug)]
pub struct QemuProcess {
    child: Child,
    pid: Option<u32>,
    stdout_log: PathBuf,
    stderr_log: PathBuf,
}

impl QemuProcess {
    /// Start `install` with `args`; stdout and stderr go to `stdout.log` and `stderr.log` in
    /// `log_dir` (created and truncated). Stdin is closed.
    pub fn spawn(install: &QemuInstall, args: &[String], log_dir: &Path) -> Result<Self, RunError> {
        let stdout_log = log_dir.join("stdout.log");
        let stderr_log = log_dir.join("stderr.log");
        let open = |path: &Path| {
            std::fs::File::create(path).map_err(|source| RunError::Log {
                path: path.to_path_buf(),
                source,
            })
        };
        let mut cmd = install.command();
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(open(&stdout_log)?)
            .stderr(open(&stderr_log)?);
        let mut cmd = tokio::process::Command::from(cmd);
        cmd.kill_on_drop(true);
        let child = cmd.spawn().map_err(RunError::Spawn)?;
        let pid = child.id();
        tracing::info!(pid, qemu = %install.describe(), "started QEMU");
        Ok(Self {
            child,
            pid,
            stdout_log,
            stderr_log,
        })
    }

    /// The process id (`None` once it has been reaped).
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// Has QEMU exited? Returns its status if so.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>, RunError> {
        self.child.try_wait().map_err(RunError::Wait)
    }

    /// Wait for QEMU to exit on its own (e.g. after QMP `quit`).
    pub async fn wait_timeout(&mut self, limit: Duration) -> Result<ExitStatus, RunError> {
        match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(status) => {
                self.pid = None;
                status.map_err(RunError::Wait)
            }
            Err(_) => Err(RunError::ExitTimeout(limit)),
        }
    }

    /// Kill QEMU (SIGKILL) and reap it.
    pub async fn kill(&mut self) -> Result<(), RunError> {
        self.child.kill().await.map_err(RunError::Wait)?;
        self.pid = None;
        Ok(())
    }

    pub fn stdout_log(&self) -> &Path {
        &self.stdout_log
    }

    pub fn stderr_log(&self) -> &Path {
        &self.stderr_log
    }

    /// What QEMU wrote to stderr so far (at most the first MiB; lossy UTF-8).
    pub fn stderr_text(&self) -> String {
        read_log(&self.stderr_log)
    }

    /// What QEMU wrote to stdout so far (the serial console with `Serial::Stdio`).
    pub fn stdout_text(&self) -> String {
        read_log(&self.stdout_log)
    }
}

fn read_log(path: &Path) -> String {
    use std::io::Read;
    let mut bytes = Vec::new();
    if let Ok(file) = std::fs::File::open(path) {
        let _ = file.take(MAX_LOG_READ).read_to_end(&mut bytes);
    }
    String::from_utf8_lossy(&bytes).into_owned()
}
