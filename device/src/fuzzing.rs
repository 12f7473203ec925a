//! Fuzz entry points for the device's parsers of untrusted input, shared by the cargo-fuzz
//! targets in `fuzz/` and the seed-corpus replay in `cargo test -p device`:
//!
//! | entry | input | rule checked |
//! |---|---|---|
//! | [`mmio`] | a sequence of region accesses a vfio-user client could send | no panic; identity registers and config-space IDs never change; a refused access changes nothing |
//! | [`control`] | one control-socket request line | the reply is one JSON object with `error`, `ok` or the snapshot |
//! | [`cli_inputs`] | `-u` text, `--memory-size` text, a topology file | no panic; accepted identities round-trip through their text |

use std::str::FromStr;

use vfio_user_proto::Device;

use crate::bar0::{reg, Bar0Config, DeviceIdentity, DEVICE_ID_MOCK};
use crate::model::MockAccel;
use vfio_user_proto::wire::region_index;

fn device() -> MockAccel {
    MockAccel::new(Bar0Config {
        identity: DeviceIdentity::from_str("NODE1-NUMA0-PF").expect("valid label"),
        memory_size: 16 << 30,
        capabilities: 1,
        vf_index: None,
        device_id: crate::bar0::DEVICE_ID_MOCK,
    })
}

fn read_u32(dev: &mut MockAccel, region: u32, offset: u64) -> Option<u32> {
    let mut b = [0u8; 4];
    dev.region_read(region, offset, &mut b).ok()?;
    Some(u32::from_le_bytes(b))
}

/// Ops of 8 header bytes — region selector, write flag, length (0-15), pad, offset (u32 LE)
/// — followed, for writes, by `length` data bytes.
pub fn mmio(data: &[u8]) {
    let mut dev = device();
    let ids = read_u32(&mut dev, region_index::CONFIG, 0);
    let mut rest = data;
    while let Some((head, tail)) = rest.split_first_chunk::<8>() {
        let region = match head[0] % 4 {
            0 => region_index::BAR0,
            1 => region_index::CONFIG,
            2 => u32::from(head[0]),
            _ => u32::MAX,
        };
        let write = head[1] & 1 == 1;
        let len = usize::from(head[2] & 0x0f);
        let offset = u64::from(u32::from_le_bytes([head[4], head[5], head[6], head[7]]))
            | if head[3] & 0x80 != 0 { 1 << 63 } else { 0 };
        rest = tail;
        if write {
            let n = len.min(rest.len());
            let (bytes, tail) = rest.split_at(n);
            rest = tail;
            let before = dev.handle().snapshot();
            if dev.region_write(region, offset, bytes).is_err() {
                let after = dev.handle().snapshot();
                assert_eq!(
                    before.status, after.status,
                    "a refused write changes nothing"
                );
            }
        } else {
            let mut buf = vec![0u8; len];
            let _ = dev.region_read(region, offset, &mut buf);
        }
        assert_eq!(
            read_u32(&mut dev, region_index::BAR0, reg::DEVICE_ID),
            Some(DEVICE_ID_MOCK),
            "DEVICE_ID is read-only"
        );
        assert_eq!(
            read_u32(&mut dev, region_index::CONFIG, 0),
            ids,
            "vendor/device IDs are read-only"
        );
    }
}

/// One request line as the control socket receives it (lossy UTF-8, trimmed).
pub fn control(data: &[u8]) {
    let dev = device();
    let line = String::from_utf8_lossy(data);
    let reply = crate::control::answer(&dev.handle(), line.trim());
    let v: serde_json::Value = serde_json::from_str(&reply).expect("reply is JSON");
    assert!(
        v.get("error").is_some() || v.get("ok").is_some() || v.get("status").is_some(),
        "reply names an outcome: {reply}"
    );
    assert!(!reply.contains('\n'), "one line per reply");
}

/// Split on NUL: `-u` text, `--memory-size` text, topology file text.
pub fn cli_inputs(data: &[u8]) {
    let mut parts = data.splitn(3, |&b| b == 0);
    let text = |p: Option<&[u8]>| String::from_utf8_lossy(p.unwrap_or_default()).into_owned();
    let (identity, memory, topology) = (text(parts.next()), text(parts.next()), text(parts.next()));
    if let Ok(id) = DeviceIdentity::from_str(&identity) {
        let again = DeviceIdentity::from_str(&id.to_string()).expect("printed identity parses");
        assert_eq!(again, id, "identity round-trips through its text");
        assert!(id.register_bytes().len() == 16);
    }
    let _ = crate::topology::parse_memory_size(&memory);
    let _ = crate::topology::parse_device_list(std::path::Path::new("fuzz.toml"), &topology);
}

#[cfg(test)]
mod tests {
    use super::*;

    include!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../fuzz/corpus_replay.rs"
    ));

    #[test]
    fn device_mmio_corpus_replays_without_panic() {
        assert!(replay("device_mmio", mmio) >= 3, "seed corpus present");
    }

    #[test]
    fn device_control_corpus_replays_without_panic() {
        assert!(
            replay("device_control", control) >= 3,
            "seed corpus present"
        );
    }

    #[test]
    fn device_cli_corpus_replays_without_panic() {
        assert!(replay("device_cli", cli_inputs) >= 3, "seed corpus present");
    }
}
