//! Fuzz entry points, shared by the cargo-fuzz targets in `fuzz/` and by the corpus replay
//! test that runs under plain `cargo test` (so CI needs no nightly toolchain).
//!
//! Both must never panic for any input; they also assert invariants of what comes out.

use zerocopy::IntoBytes;

use crate::dispatch::{self, Core};
use crate::negotiate::{self, Caps};
use crate::testing::ToyDevice;
use crate::wire::{self, Command, Header, MessageType, Request, HEADER_SIZE};

/// Target `wire_parse`: frame a byte stream and decode every frame's body; VERSION bodies also
/// go through negotiation, whose reply must respect the length rule.
pub fn wire_parse(data: &[u8]) {
    let limits = crate::transport::Limits {
        max_msg_size: 1 << 16,
        max_fds: 16,
    };
    for frame in dispatch::frames(data, limits) {
        let Ok(msg) = frame else { continue };
        let _ = Request::parse(msg.header.cmd(), &msg.body);
        if msg.header.cmd() == Command::VERSION {
            if let Ok(v) = negotiate::parse(&msg.body) {
                if let Ok(reply) = negotiate::server_reply(&v, &Caps::default()) {
                    assert!(
                        reply.len() <= msg.body.len(),
                        "VERSION reply longer than request"
                    );
                    let back = negotiate::parse(&reply).expect("our own VERSION reply parses");
                    assert_eq!(back.major, 0);
                }
            }
        }
    }
}

/// A valid VERSION frame (QEMU's capabilities), prepended by [`server_dispatch`].
pub fn version_frame() -> Vec<u8> {
    let json = negotiate::proposal_json(&Caps::default());
    let mut body = wire::Version { major: 0, minor: 0 }.as_bytes().to_vec();
    body.extend_from_slice(json.as_bytes());
    body.push(0);
    wire::encode(Header::command(0, Command::VERSION, 0), &[&body])
}

/// Target `server_dispatch`: a negotiated connection to the toy device, fed `data` as the
/// client's byte stream. Every reply must be a well-formed reply message of its own size.
pub fn server_dispatch(data: &[u8]) {
    let mut core = Core::new(ToyDevice::new(), Caps::default());
    let max = core.limits().max_msg_size;
    let mut stream = version_frame();
    stream.extend_from_slice(data);
    for reply in dispatch::dispatch_stream(&mut core, &stream) {
        let h = Header::parse(&reply).expect("reply has a header");
        assert_eq!(
            h.size as usize,
            reply.len(),
            "reply size field matches its length"
        );
        assert!(reply.len() >= HEADER_SIZE && reply.len() <= max);
        assert_eq!(h.message_type(), MessageType::Reply);
        if h.is_error() {
            assert_eq!(reply.len(), HEADER_SIZE, "error replies are header-only");
            assert_ne!(h.error, 0);
        }
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
    fn wire_parse_corpus_replays_without_panic() {
        assert!(replay("wire_parse", wire_parse) >= 5, "seed corpus present");
    }

    #[test]
    fn server_dispatch_corpus_replays_without_panic() {
        assert!(
            replay("server_dispatch", server_dispatch) >= 5,
            "seed corpus present"
        );
    }

    #[test]
    fn server_dispatch_survives_truncations_of_every_seed() {
        // Cheap deterministic mutation: every prefix of every seed.
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/server_dispatch");
        for e in std::fs::read_dir(dir).expect("corpus") {
            let data = std::fs::read(e.expect("entry").path()).expect("seed");
            for cut in 0..data.len().min(256) {
                server_dispatch(&data[..cut]);
                wire_parse(&data[cut..]);
            }
        }
    }
}
