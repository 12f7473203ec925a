//! The `device` binary (mock-accel server) as a separate process, exactly as users run it
//! (`cargo run -p device -- -u LABEL SOCKET`).
//!
//! Cargo only builds a package's own binaries for its integration tests, so the harness builds
//! `device` itself with the cargo that runs the tests (`$CARGO build -p device --bin device`,
//! same profile) and takes the executable path from cargo's JSON messages. Cargo releases its
//! build lock before running tests, so this nested build does not deadlock; when nothing
//! changed it takes well under a second. `MOCK_ACCEL_DEVICE_BIN=/path/to/device` skips the
//! build.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::process::{Child, Command};

/// Path of an up-to-date `device` binary (built once per test process).
pub fn device_binary() -> anyhow::Result<PathBuf> {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| {
        workspace_binary("device", "device", "MOCK_ACCEL_DEVICE_BIN").map_err(|e| format!("{e:#}"))
    })
    .clone()
    .map_err(anyhow::Error::msg)
}

/// Build binary `bin` of workspace package `package` with the cargo and profile running the
/// tests and return its path; the environment variable `override_var`, when set, names a
/// prebuilt binary instead.
pub fn workspace_binary(package: &str, bin: &str, override_var: &str) -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os(override_var).filter(|v| !v.is_empty()) {
        return Ok(path.into());
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = std::process::Command::new(cargo);
    cmd.args([
        "build",
        "-p",
        package,
        "--bin",
        bin,
        "--message-format",
        "json",
    ])
    .stdin(Stdio::null())
    .stderr(Stdio::inherit());
    // Build with the profile the tests were built with (target/<profile>/deps/<test>).
    let exe = std::env::current_exe().context("current_exe")?;
    let profile_dir = exe.parent().and_then(Path::parent);
    if profile_dir.and_then(Path::file_name) == Some("release".as_ref()) {
        cmd.arg("--release");
    }
    let output = cmd
        .output()
        .with_context(|| format!("cannot run cargo to build the {bin} binary"))?;
    if !output.status.success() {
        bail!(
            "`cargo build -p {package} --bin {bin}` failed ({})",
            output.status
        );
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == bin)
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .with_context(|| format!("cargo built no `{bin}` executable"))
}

/// A running `device` process; killed (SIGKILL) on drop. Its stdout and stderr go to
/// `<log_dir>/<name>.log`.
#[derive(Debug)]
pub struct DeviceProcess {
    pub child: Child,
    pub socket: PathBuf,
    pub log: PathBuf,
}

impl DeviceProcess {
    /// Run `device ARGS...` and wait until `socket` accepts connections.
    pub async fn spawn(
        args: &[&str],
        socket: &Path,
        log_dir: &Path,
        name: &str,
    ) -> anyhow::Result<Self> {
        let bin = device_binary()?;
        let log = log_dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).with_context(|| format!("create {log:?}"))?;
        let mut child = Command::new(&bin)
            .args(args)
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {bin:?}"))?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if tokio::net::UnixStream::connect(socket).await.is_ok() {
                break;
            }
            if let Some(status) = child.try_wait()? {
                bail!(
                    "device {args:?} exited ({status}) before listening; log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            if Instant::now() > deadline {
                bail!("device {args:?} did not listen on {socket:?} within 20 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(Self {
            child,
            socket: socket.to_path_buf(),
            log,
        })
    }

    /// The process id (`None` once reaped).
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// What the device logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then wait for a clean exit.
    pub async fn terminate(mut self) -> anyhow::Result<std::process::ExitStatus> {
        if let Some(pid) = self.child.id() {
            let pid = i32::try_from(pid).context("pid out of range")?;
            // No libc needed: `kill -TERM` is always there.
            let status = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()?;
            if !status.success() {
                bail!("kill -TERM {pid} failed");
            }
        }
        let status = tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .context("device did not exit within 10 s of SIGTERM")??;
        Ok(status)
    }
}
