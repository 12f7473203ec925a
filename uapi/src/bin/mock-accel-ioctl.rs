//! `mock-accel-ioctl`: call the mock_accel driver's ioctls from a shell.
//!
//! ```text
//! mock-accel-ioctl status /dev/mock0          # prints: status=1
//! mock-accel-ioctl passphrase /dev/mock0 6    # prints: passphrase=word-word-word-word-word-word
//! mock-accel-ioctl bench /dev/mock0 2000      # per-op latency, one line per operation
//! ```
//! `bench` times, N times each: an ioctl number the driver does not know (`ENOTTY`: syscall
//! and driver dispatch, no device access — the baseline), `MOCK_ACCEL_IOC_STATUS` (one BAR0
//! read), `MOCK_ACCEL_IOC_PASSPHRASE` with 1 and 12 words (one ENTROPY read per word, almost
//! never more), and a full `read()` of the info text (status + 6 entropy reads).
//! Errors print one line naming the device, the ioctl and the errno (e.g. `EINVAL`), exit 1.

use std::fs::File;
use std::io;
use std::process::ExitCode;

const USAGE: &str =
    "usage: mock-accel-ioctl status DEVICE | passphrase DEVICE WORDS(1-12) | bench DEVICE N";

/// p50 and p99 of `n` timed runs of `op`, in nanoseconds.
fn time_op(n: usize, mut op: impl FnMut() -> io::Result<()>) -> io::Result<(u128, u128)> {
    let mut ns = Vec::with_capacity(n);
    for _ in 0..n {
        let t = std::time::Instant::now();
        op()?;
        ns.push(t.elapsed().as_nanos());
    }
    ns.sort_unstable();
    let at = |q: usize| ns[(ns.len() - 1) * q / 100];
    Ok((at(50), at(99)))
}

fn bench(dev: &str, file: &File, n: usize) -> io::Result<String> {
    use std::io::Read;
    // Same magic, a number the driver does not implement: answered ENOTTY by the driver.
    let unknown = mock_accel_uapi::ioc(2, mock_accel_uapi::IOC_MAGIC, 0x7f, 4);
    let mut buf = [0u8; 4];
    let noop = || match mock_accel_uapi::ioctl_bytes(file, unknown, &mut buf) {
        Err(e) if e.raw_os_error() == Some(libc::ENOTTY) => Ok(()),
        Err(e) => Err(e),
        Ok(()) => Err(io::Error::other("unknown ioctl succeeded")),
    };
    let mut rows = vec![("noop_enotty", time_op(n, noop)?)];
    rows.push((
        "status",
        time_op(n, || mock_accel_uapi::status(file).map(drop))?,
    ));
    for words in [1, 12] {
        let name = if words == 1 {
            "passphrase_1"
        } else {
            "passphrase_12"
        };
        rows.push((
            name,
            time_op(n, || mock_accel_uapi::passphrase(file, words).map(drop))?,
        ));
    }
    let mut text = Vec::with_capacity(512);
    rows.push((
        "read_info",
        time_op(n, || {
            text.clear();
            File::open(dev)?.read_to_end(&mut text).map(drop)
        })?,
    ));
    Ok(rows
        .iter()
        .map(|(op, (p50, p99))| format!("bench op={op} n={n} p50_ns={p50} p99_ns={p99}"))
        .collect::<Vec<_>>()
        .join("\n"))
}

fn errno_name(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::EINVAL) => "EINVAL",
        Some(libc::ENODATA) => "ENODATA",
        Some(libc::ENODEV) => "ENODEV",
        Some(libc::ENOTTY) => "ENOTTY",
        Some(libc::EFAULT) => "EFAULT",
        Some(libc::ENOENT) => "ENOENT",
        Some(libc::EACCES) => "EACCES",
        _ => "error",
    }
}

fn run(args: &[String]) -> Result<String, String> {
    let (op, dev) = match args {
        [op, dev, ..] => (op.as_str(), dev.as_str()),
        _ => return Err(USAGE.to_owned()),
    };
    let file = File::open(dev).map_err(|e| format!("{dev}: open: {} {e}", errno_name(&e)))?;
    match (op, &args[2..]) {
        ("status", []) => mock_accel_uapi::status(&file)
            .map(|v| format!("status={v}"))
            .map_err(|e| format!("{dev}: MOCK_ACCEL_IOC_STATUS: {} {e}", errno_name(&e))),
        ("passphrase", [n]) => {
            let words: u32 = n
                .parse()
                .map_err(|_| format!("WORDS must be a number, got {n:?}\n{USAGE}"))?;
            mock_accel_uapi::passphrase(&file, words)
                .map(|p| format!("passphrase={p}"))
                .map_err(|e| {
                    format!(
                        "{dev}: MOCK_ACCEL_IOC_PASSPHRASE({words}): {} {e}",
                        errno_name(&e)
                    )
                })
        }
        ("bench", [n]) => {
            let n: usize = n
                .parse()
                .ok()
                .filter(|n| (1..=1_000_000).contains(n))
                .ok_or_else(|| format!("N must be 1-1000000, got {n:?}\n{USAGE}"))?;
            bench(dev, &file, n).map_err(|e| format!("{dev}: bench: {} {e}", errno_name(&e)))
        }
        _ => Err(USAGE.to_owned()),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mock-accel-ioctl: {e}");
            ExitCode::FAILURE
        }
    }
}
