//! Fuzz entry points for the driver's parsers of untrusted bytes, shared by the cargo-fuzz
//! targets in `fuzz/` and the seed-corpus replay in `cargo test -p dra`:
//!
//! | entry | input | rule checked |
//! |---|---|---|
//! | [`relay`] | what a client writes to a kubelet-facing socket (HTTP/2 with HPACK) | no panic, bounded memory; whatever is forwarded is the preface plus well-formed frames of at most 16 KiB |
//! | [`sysfs_device`] | the attribute values of one device | no panic; an accepted device yields one slice device |
//! | [`checkpoint`] | checkpoint file bytes | no panic; an accepted checkpoint round-trips |

use std::path::PathBuf;
use std::sync::OnceLock;

use crate::authority::{client_to_server, MAX_FRAME, PREFACE};
use crate::prepare::Checkpoint;

/// Feeds `data` as the client side of a relayed connection and checks the forwarded bytes.
pub fn relay(data: &[u8]) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("tokio runtime");
    let mut out = Vec::new();
    let _ = rt.block_on(client_to_server(data, &mut out));
    if out.is_empty() {
        return;
    }
    assert!(
        out.starts_with(PREFACE),
        "forwarded bytes start with the preface"
    );
    let mut rest = &out[PREFACE.len()..];
    while !rest.is_empty() {
        assert!(rest.len() >= 9, "a forwarded frame header is complete");
        let len = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
        assert!(len <= MAX_FRAME, "forwarded frame of {len} bytes");
        assert!(
            rest.len() >= 9 + len,
            "a forwarded frame payload is complete"
        );
        rest = &rest[9 + len..];
    }
}

fn sysfs_root() -> &'static PathBuf {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("mock-accel-dra-fuzz-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        crate::fixture::write_basic(&dir).expect("fixture");
        dir
    })
}

/// NUL-separated values of `uuid`, `memory_size`, `capabilities`, `status`, `numa_node`,
/// written into a fixture device and read back as discovery does.
pub fn sysfs_device(data: &[u8]) {
    let root = sysfs_root();
    let dir = crate::sysfs::device_dir(root, "mock0").expect("valid name");
    let mut values = data.split(|&b| b == 0);
    for attr in ["uuid", "memory_size", "capabilities", "status", "numa_node"] {
        let value = values.next().unwrap_or_default();
        std::fs::write(dir.join(attr), value).expect("write attribute");
    }
    if let Ok(device) = crate::sysfs::read_device(root, "mock0") {
        let node = crate::slices::NodeRef {
            name: "fuzz-node".into(),
            uid: "uid".into(),
        };
        let slices = crate::slices::build_slices(crate::DEFAULT_DRIVER, &node, &[device], 1);
        let n: usize = slices
            .iter()
            .map(|s| s.spec.devices.as_ref().map_or(0, Vec::len))
            .sum();
        assert_eq!(n, 1, "an accepted device is published once");
    }
}

/// Checkpoint bytes as the plugin reads them at start.
pub fn checkpoint(data: &[u8]) {
    if let Ok(cp) = Checkpoint::parse(data) {
        let bytes = serde_json::to_vec(&cp).expect("serialize");
        assert_eq!(
            Checkpoint::parse(&bytes).expect("re-parse"),
            cp,
            "checkpoint round-trips"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    include!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../fuzz/corpus_replay.rs"
    ));

    #[test]
    fn dra_relay_corpus_replays_without_panic() {
        assert!(replay("dra_relay", relay) >= 3, "seed corpus present");
    }

    #[test]
    fn dra_sysfs_corpus_replays_without_panic() {
        assert!(
            replay("dra_sysfs", sysfs_device) >= 3,
            "seed corpus present"
        );
    }

    #[test]
    fn dra_checkpoint_corpus_replays_without_panic() {
        assert!(
            replay("dra_checkpoint", checkpoint) >= 3,
            "seed corpus present"
        );
    }
}
