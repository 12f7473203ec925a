//! Processes that outlive `up`: started in their own process group with logs in files, found
//! again by pid plus a command-line marker, stopped with SIGTERM then SIGKILL.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::state::Proc;

/// Start `cmd` detached from our terminal and process group (Ctrl-C on the shell that ran
/// `up` does not reach it), stdin closed, stdout and stderr appended to `log`.
pub fn spawn_detached(mut cmd: Command, log: &Path, marker: &str) -> anyhow::Result<Proc> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("cannot open log {}", log.display()))?;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(file.try_clone().context("dup log fd")?)
        .stderr(file)
        .process_group(0)
        .spawn()
        .with_context(|| format!("cannot start {:?}", cmd.get_program()))?;
    let pid = i32::try_from(child.id()).context("pid out of range")?;
    // Not waited for: the process is reparented when we exit; `down` stops it by pid.
    drop(child);
    Ok(Proc {
        pid,
        marker: marker.to_owned(),
    })
}

/// Is the process running (not a zombie) and still the one we started?
pub fn alive(proc: &Proc) -> bool {
    let stat = match std::fs::read_to_string(format!("/proc/{}/stat", proc.pid)) {
        Ok(stat) => stat,
        Err(_) => return false,
    };
    // State is the first field after the parenthesised command name.
    let zombie = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.trim_start().starts_with(['Z', 'X']))
        .unwrap_or(false);
    if zombie {
        reap(proc.pid);
        return false;
    }
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", proc.pid)).unwrap_or_default();
    String::from_utf8_lossy(&cmdline).contains(&proc.marker)
}

/// Reap `pid` if it is our own exited child (when `up` and `down` run in one process, as in
/// the error path of `up`).
fn reap(pid: i32) {
    use nix::sys::wait::{waitpid, WaitPidFlag};
    let _ = waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG));
}

/// Wait until `proc` has exited or `limit` passed; true if it is gone.
pub async fn wait_gone(proc: &Proc, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if !alive(proc) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// SIGTERM, wait up to `grace`, then SIGKILL. Returns how it ended, for progress lines.
pub async fn terminate(proc: &Proc, grace: Duration) -> &'static str {
    if !alive(proc) {
        return "not running";
    }
    let pid = Pid::from_raw(proc.pid);
    let _ = kill(pid, Signal::SIGTERM);
    if wait_gone(proc, grace).await {
        return "stopped (SIGTERM)";
    }
    let _ = kill(pid, Signal::SIGKILL);
    if wait_gone(proc, Duration::from_secs(5)).await {
        "killed (SIGKILL)"
    } else {
        "still running after SIGKILL"
    }
}

/// The last `lines` lines of a log file, for error messages.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join(" | ")
}
