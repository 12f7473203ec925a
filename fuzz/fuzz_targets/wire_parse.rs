//! Framing + typed body parsing + VERSION negotiation on arbitrary bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    vfio_user_proto::fuzzing::wire_parse(data);
});
