// Seed-corpus replay shared by the `fuzzing` test modules of vfio-user-proto, device and dra
// (pulled in with `include!`, so the corpus path stays relative to each crate).

/// Runs `f` on every seed in `fuzz/corpus/<target>`; returns how many seeds ran.
fn replay(target: &str, f: fn(&[u8])) -> usize {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let entries =
        std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("corpus {} missing: {e}", dir.display()));
    let mut n = 0;
    for e in entries {
        let path = e.expect("dir entry").path();
        let data = std::fs::read(&path).expect("read seed");
        f(&data);
        n += 1;
    }
    n
}
