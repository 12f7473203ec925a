//! A negotiated server connection (toy device) fed arbitrary client bytes, in memory.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    vfio_user_proto::fuzzing::server_dispatch(data);
});
