//! `device::fuzzing::mmio` on arbitrary bytes (see that function for the rule it checks).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    device::fuzzing::mmio(data);
});
