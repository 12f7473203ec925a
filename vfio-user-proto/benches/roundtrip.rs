//! Round-trip benchmark (a bench binary, not a timed test):
//!
//! * `vfio-user`: our [`Client`] sends a 4-byte REGION_READ (32-byte message) to our
//!   [`Server`] (toy device) over a Unix socket and waits for the 36-byte reply;
//! * `raw tokio`: the same sizes (32 bytes out, 36 back) ping-ponged over a tokio Unix socket
//!   pair, same runtime;
//! * `raw std`: the same over a blocking std socket pair with a thread per side.
//!
//! Prints p50/p99 latency and ops/s for each and the ratio vfio-user/raw. Then starts N idle
//! servers (default 1000) in this process and prints the RSS growth.
//!
//! ```text
//! cargo bench -p vfio-user-proto --bench roundtrip [-- ITERATIONS [SERVERS]]
//! ```

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vfio_user_proto::testing::ToyDevice;
use vfio_user_proto::{Client, Server};

const REQ: usize = 32; // header 16 + {offset, region, count} 16
const REPLY: usize = 36; // header 16 + same 16 + 4 data bytes

struct Stats {
    p50: Duration,
    p99: Duration,
    ops: f64,
}

fn stats(mut samples: Vec<Duration>, total: Duration) -> Stats {
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    Stats {
        p50: at(0.50),
        p99: at(0.99),
        ops: samples.len() as f64 / total.as_secs_f64(),
    }
}

fn print(name: &str, s: &Stats) {
    println!(
        "{name:<28} p50 {:>8.2} µs   p99 {:>8.2} µs   {:>9.0} ops/s",
        s.p50.as_secs_f64() * 1e6,
        s.p99.as_secs_f64() * 1e6,
        s.ops
    );
}

async fn bench_vfio_user(iters: usize) -> Stats {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("bench.sock");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        Server::new(ToyDevice::new()).serve_until(sock.clone(), async {
            let _ = stopped.await;
        }),
    );
    while !sock.exists() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let mut c = Client::connect(&sock).await.expect("connect");
    for _ in 0..iters / 10 {
        c.region_read(0, 0, 4).await.expect("warm-up read");
    }
    let mut samples = Vec::with_capacity(iters);
    let start = Instant::now();
    for _ in 0..iters {
        let t = Instant::now();
        let d = c.region_read(0, 0, 4).await.expect("read");
        samples.push(t.elapsed());
        debug_assert_eq!(d.len(), 4);
    }
    let total = start.elapsed();
    drop(c);
    let _ = stop.send(());
    server.await.expect("join").expect("server");
    stats(samples, total)
}

async fn bench_raw_tokio(iters: usize) -> Stats {
    let (mut a, mut b) = tokio::net::UnixStream::pair().expect("pair");
    let echo = tokio::spawn(async move {
        let mut req = [0u8; REQ];
        let reply = [0u8; REPLY];
        while b.read_exact(&mut req).await.is_ok() {
            if b.write_all(&reply).await.is_err() {
                break;
            }
        }
    });
    let req = [0u8; REQ];
    let mut reply = [0u8; REPLY];
    for _ in 0..iters / 10 {
        a.write_all(&req).await.expect("write");
        a.read_exact(&mut reply).await.expect("read");
    }
    let mut samples = Vec::with_capacity(iters);
    let start = Instant::now();
    for _ in 0..iters {
        let t = Instant::now();
        a.write_all(&req).await.expect("write");
        a.read_exact(&mut reply).await.expect("read");
        samples.push(t.elapsed());
    }
    let total = start.elapsed();
    drop(a);
    let _ = echo.await;
    stats(samples, total)
}

fn bench_raw_std(iters: usize) -> Stats {
    let (mut a, mut b) = std::os::unix::net::UnixStream::pair().expect("pair");
    let echo = std::thread::spawn(move || {
        let mut req = [0u8; REQ];
        let reply = [0u8; REPLY];
        while b.read_exact(&mut req).is_ok() {
            if b.write_all(&reply).is_err() {
                break;
            }
        }
    });
    let req = [0u8; REQ];
    let mut reply = [0u8; REPLY];
    for _ in 0..iters / 10 {
        a.write_all(&req).expect("write");
        a.read_exact(&mut reply).expect("read");
    }
    let mut samples = Vec::with_capacity(iters);
    let start = Instant::now();
    for _ in 0..iters {
        let t = Instant::now();
        a.write_all(&req).expect("write");
        a.read_exact(&mut reply).expect("read");
        samples.push(t.elapsed());
    }
    let total = start.elapsed();
    drop(a);
    let _ = echo.join();
    stats(samples, total)
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

async fn bench_many_servers(n: usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let before = rss_kib();
    let mut stops = Vec::new();
    let mut tasks = Vec::new();
    for i in 0..n {
        let sock = dir.path().join(format!("d{i}.sock"));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        stops.push(stop);
        tasks.push(tokio::spawn(Server::new(ToyDevice::new()).serve_until(
            sock,
            async {
                let _ = stopped.await;
            },
        )));
    }
    // Wait until all sockets exist, then prove the last one answers.
    let last = dir.path().join(format!("d{}.sock", n - 1));
    while std::fs::read_dir(dir.path())
        .map(|d| d.count())
        .unwrap_or(0)
        < n
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut c = Client::connect(&last).await.expect("connect");
    assert_eq!(c.read_u32(0, 0).await.expect("read"), ToyDevice::MAGIC);
    drop(c);
    let after = rss_kib();
    println!(
        "{n} idle servers (toy device, 1 process): RSS {} KiB -> {} KiB (+{:.1} KiB per server)",
        before,
        after,
        (after.saturating_sub(before)) as f64 / n as f64
    );
    for s in stops {
        let _ = s.send(());
    }
    for t in tasks {
        let _ = t.await;
    }
}

fn main() {
    // `cargo bench` passes `--bench`; ignore flags.
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let iters = args.first().copied().unwrap_or(50_000);
    let servers = args.get(1).copied().unwrap_or(1000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "4-byte REGION_READ round trip, {iters} iterations, tokio multi-thread runtime (2 workers)"
    );
    let raw_std = bench_raw_std(iters);
    let raw = rt.block_on(bench_raw_tokio(iters));
    let vfio = rt.block_on(bench_vfio_user(iters));
    print("raw std socketpair (32/36 B)", &raw_std);
    print("raw tokio socketpair (32/36 B)", &raw);
    print("vfio-user client->server", &vfio);
    println!(
        "ratio vfio-user / raw tokio: p50 {:.2}x, p99 {:.2}x, ops/s {:.2}x",
        vfio.p50.as_secs_f64() / raw.p50.as_secs_f64(),
        vfio.p99.as_secs_f64() / raw.p99.as_secs_f64(),
        vfio.ops / raw.ops
    );
    println!(
        "ratio vfio-user / raw std:   p50 {:.2}x, p99 {:.2}x, ops/s {:.2}x",
        vfio.p50.as_secs_f64() / raw_std.p50.as_secs_f64(),
        vfio.p99.as_secs_f64() / raw_std.p99.as_secs_f64(),
        vfio.ops / raw_std.ops
    );
    let ct = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let raw_ct = ct.block_on(bench_raw_tokio(iters));
    let vfio_ct = ct.block_on(bench_vfio_user(iters));
    println!("same, tokio current-thread runtime (client and server tasks share one thread)");
    print("raw tokio socketpair (32/36 B)", &raw_ct);
    print("vfio-user client->server", &vfio_ct);
    println!(
        "ratio vfio-user / raw tokio: p50 {:.2}x, p99 {:.2}x, ops/s {:.2}x",
        vfio_ct.p50.as_secs_f64() / raw_ct.p50.as_secs_f64(),
        vfio_ct.p99.as_secs_f64() / raw_ct.p99.as_secs_f64(),
        vfio_ct.ops / raw_ct.ops
    );
    if servers > 0 {
        rt.block_on(bench_many_servers(servers));
    }
}
