//! DRA benchmarks without an API server: `cargo bench -p dra --bench dra_bench`.
//! Prints p50/p99/max per operation; numbers go into docs/performance.md.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dra::prepare::{allocated_claim, ClaimRef, Config, MapSource, Preparer};
use dra::slices::{build_slices, NodeRef};

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

fn report(name: &str, mut v: Vec<Duration>) {
    let p50 = pct(&mut v, 0.50);
    let p99 = pct(&mut v, 0.99);
    let max = v.last().copied().unwrap_or(Duration::ZERO);
    println!(
        "{name:<52} n={:<5} p50={:>10.3?} p99={:>10.3?} max={:>10.3?}",
        v.len(),
        p50,
        p99,
        max
    );
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let t = tempfile::tempdir()?;
    let root = t.path().join("root");
    let n = dra::fixture::write_many(&root, 1000)?;
    println!("fixture: {n} devices under {}", root.display());

    // 1. sysfs scan (page cache warm after the first iteration).
    let mut v = Vec::new();
    let mut found = 0;
    for _ in 0..30 {
        let s = Instant::now();
        let scan = dra::sysfs::scan(&root);
        v.push(s.elapsed());
        found = scan.devices.len();
    }
    assert_eq!(found, n);
    report(&format!("sysfs scan ({n} devices)"), v);

    // 2. slice building.
    let scan = dra::sysfs::scan(&root);
    let node = NodeRef {
        name: "node1".into(),
        uid: "uid".into(),
    };
    let mut v = Vec::new();
    let mut slices = 0;
    for _ in 0..200 {
        let s = Instant::now();
        let out = build_slices("mock-accel.example.com", &node, &scan.devices, 1);
        v.push(s.elapsed());
        slices = out.len();
    }
    report(&format!("build slices ({n} devices -> {slices} slices)"), v);
    let out = build_slices("mock-accel.example.com", &node, &scan.devices, 1);
    let mut v = Vec::new();
    let mut bytes = 0;
    for _ in 0..50 {
        let s = Instant::now();
        bytes = out
            .iter()
            .map(|x| serde_json::to_vec(x).map(|b| b.len()).unwrap_or(0))
            .sum::<usize>();
        v.push(s.elapsed());
    }
    report(&format!("serialize slices to JSON ({bytes} bytes)"), v);

    // 3. prepare/unprepare of one-device claims, in-memory claim source, 1000-device node.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let src = Arc::new(MapSource::default());
    let iters = 500;
    for i in 0..iters {
        let dev = dra::slices::device_name(&scan.devices[i % scan.devices.len()].name);
        src.insert(allocated_claim(
            "default",
            &format!("c{i}"),
            &format!("uid-{i}"),
            &[("r", "mock-accel.example.com", "node1", &dev)],
        ));
    }
    let cfg = Config {
        driver: "mock-accel.example.com".into(),
        node: "node1".into(),
        sysfs_root: root.clone(),
        cdi_root: t.path().join("cdi"),
        checkpoint: t.path().join("plugin/checkpoint.json"),
    };
    let p = Preparer::new(cfg, src)?;
    let (mut prep, mut unprep) = (Vec::new(), Vec::new());
    rt.block_on(async {
        for i in 0..iters {
            let c = ClaimRef {
                namespace: "default".into(),
                name: format!("c{i}"),
                uid: format!("uid-{i}"),
            };
            let s = Instant::now();
            let r = p.prepare(&c).await;
            prep.push(s.elapsed());
            assert!(r.is_ok(), "{r:?}");
            let s = Instant::now();
            let r = p.unprepare(&c).await;
            unprep.push(s.elapsed());
            assert!(r.is_ok(), "{r:?}");
        }
    });
    report("NodePrepare logic, 1-device claim (in-memory GET)", prep);
    report("NodeUnprepare logic, 1-device claim", unprep);
    Ok(())
}
