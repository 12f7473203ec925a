//! `down`: QMP `quit` for every guest (then SIGTERM, SIGKILL), SIGTERM for the device servers
//! (then SIGKILL), and remove sockets, overlays, seeds and the state file. Logs stay for
//! `logs`. Idempotent: without a state file there is nothing to do.

use std::path::Path;
use std::time::Duration;

use device::control::control_path;
use qemu::Qmp;

use crate::procs::{alive, terminate, wait_gone};
use crate::state::State;
use crate::up::Progress;

/// How long a guest gets to exit after QMP `quit`.
const QUIT_GRACE: Duration = Duration::from_secs(10);
/// How long a process gets after SIGTERM.
const TERM_GRACE: Duration = Duration::from_secs(5);

pub async fn down(run_dir: &Path) -> anyhow::Result<()> {
    let progress = Progress::new();
    let Some(state) = State::load(run_dir)? else {
        println!("no cluster state in {}; nothing to stop", run_dir.display());
        return Ok(());
    };
    teardown(&state, &progress).await;
    let left = running(&state);
    if left > 0 {
        anyhow::bail!("{left} process(es) are still running; see `mock-accel-cluster status`");
    }
    println!(
        "cluster in {} stopped in {:.1} s",
        run_dir.display(),
        progress.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Processes of `state` still running.
pub fn running(state: &State) -> usize {
    state
        .nodes
        .iter()
        .flat_map(|n| [&n.qemu, &n.server])
        .flatten()
        .filter(|p| alive(p))
        .count()
}

/// Stop everything in `state` and remove what it created; never fails (best effort, progress
/// lines say what happened). The state file is removed only when nothing is left running.
pub async fn teardown(state: &State, progress: &Progress) {
    // Guests first, so no QEMU sees its device servers vanish.
    for node in &state.nodes {
        let Some(qemu) = &node.qemu else { continue };
        if !alive(qemu) {
            continue;
        }
        let quit = match Qmp::connect(&node.qmp_socket, Duration::from_secs(2)).await {
            Ok(qmp) => qmp.quit().await.is_ok(),
            Err(_) => false,
        };
        let how = if quit && wait_gone(qemu, QUIT_GRACE).await {
            "quit (QMP)"
        } else {
            terminate(qemu, TERM_GRACE).await
        };
        progress.say(format!("{}: QEMU pid {} {how}", node.name, qemu.pid));
    }
    for node in &state.nodes {
        let Some(server) = &node.server else { continue };
        if alive(server) {
            let how = terminate(server, TERM_GRACE).await;
            progress.say(format!(
                "{}: device server pid {} {how}",
                node.name, server.pid
            ));
        }
    }
    for node in &state.nodes {
        let mut files = vec![node.qmp_socket.clone(), node.device_list.clone()];
        for d in &node.devices {
            files.push(d.socket.clone());
            files.push(control_path(&d.socket));
        }
        files.extend(node.overlay.iter().cloned());
        files.extend(node.seed.iter().cloned());
        for file in files {
            match std::fs::remove_file(&file) {
                Ok(()) => tracing::debug!(path = %file.display(), "removed"),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => progress.say(format!("cannot remove {}: {e}", file.display())),
            }
        }
    }
    if running(state) == 0 {
        let _ = std::fs::remove_file(State::path(&state.run_dir));
    }
}
