//! `status` (a table of every device, live) and `logs`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::bail;
use device::control::ControlClient;
use qemu::Qmp;

use crate::procs::alive;
use crate::state::State;
use crate::LogsArgs;

pub async fn status(run_dir: &Path) -> anyhow::Result<()> {
    let Some(state) = State::load(run_dir)? else {
        bail!(
            "no cluster in {} (start one with `mock-accel-cluster up`)",
            run_dir.display()
        );
    };
    let mut rows = vec![[
        "NODE",
        "NUMA",
        "DEVICE",
        "UUID",
        "STATUS",
        "QEMU-LINK",
        "SERVER",
        "QEMU",
        "SOCKET",
    ]
    .map(str::to_owned)];
    for node in &state.nodes {
        let server = match &node.server {
            Some(p) if alive(p) => format!("pid {} up", p.pid),
            Some(p) => format!("pid {} gone", p.pid),
            None => "-".to_owned(),
        };
        let qemu = match &node.qemu {
            Some(p) if alive(p) => {
                match Qmp::connect(&node.qmp_socket, Duration::from_secs(2)).await {
                    Ok(mut qmp) => match qmp.status().await {
                        Ok(s) => s,
                        Err(e) => format!("qmp error: {e}"),
                    },
                    Err(_) => "no qmp".to_owned(),
                }
            }
            Some(_) => "exited".to_owned(),
            None => "not started".to_owned(),
        };
        for d in &node.devices {
            let (status, link) = match ControlClient::for_device_socket(&d.socket).get().await {
                Ok(s) => (
                    format!("{:#x}", s.status),
                    if s.connected { "connected" } else { "waiting" }.to_owned(),
                ),
                Err(_) => ("?".to_owned(), "no server".to_owned()),
            };
            rows.push([
                node.name.clone(),
                d.numa.to_string(),
                d.kind.clone(),
                d.label.clone(),
                status,
                link,
                server.clone(),
                qemu.clone(),
                d.socket.display().to_string(),
            ]);
        }
    }
    let mut out = std::io::stdout().lock();
    quiet_pipe(print_table(&mut out, &rows))?;
    for node in &state.nodes {
        if let Some(port) = node.ssh_port {
            quiet_pipe(writeln!(out, "{}: ssh -p {port} 127.0.0.1", node.name))?;
        }
    }
    Ok(())
}

/// A closed stdout (`status | head`) is not an error.
fn quiet_pipe(result: std::io::Result<()>) -> anyhow::Result<()> {
    match result {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        other => Ok(other?),
    }
}

fn print_table<const N: usize>(out: &mut impl Write, rows: &[[String; N]]) -> std::io::Result<()> {
    let mut widths = [0usize; N];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell:w$}"))
            .collect();
        writeln!(out, "{}", line.join("  ").trim_end())?;
    }
    Ok(())
}

pub fn logs(run_dir: &Path, args: &LogsArgs) -> anyhow::Result<()> {
    // Logs outlive `down` (which removes the state file), so they are found by directory.
    let mut nodes: Vec<PathBuf> = match std::fs::read_dir(run_dir) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .collect(),
        Err(e) => bail!("no logs in {}: {e}", run_dir.display()),
    };
    nodes.sort();
    if let Some(only) = &args.node {
        nodes.retain(|p| p.file_name().is_some_and(|n| n == only.as_str()));
        if nodes.is_empty() {
            bail!("no node {only:?} in {}", run_dir.display());
        }
    }
    let all = !(args.serial || args.qemu || args.devices);
    let mut kinds = Vec::new();
    if all || args.devices {
        kinds.push("devices.log");
    }
    if all || args.qemu {
        kinds.push("qemu.log");
    }
    if all || args.serial {
        kinds.push("serial.log");
    }
    let single = nodes.len() == 1 && kinds.len() == 1;
    let mut out = std::io::stdout().lock();
    for node in &nodes {
        for kind in &kinds {
            let path = node.join(kind);
            let Ok(bytes) = std::fs::read(&path) else {
                continue;
            };
            if !single {
                quiet_pipe(writeln!(out, "==> {} <==", path.display()))?;
            }
            quiet_pipe(out.write_all(&bytes))?;
            if !bytes.ends_with(b"\n") && !bytes.is_empty() {
                quiet_pipe(writeln!(out))?;
            }
        }
    }
    Ok(())
}
