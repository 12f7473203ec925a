//! `mock-accel-ioctl`: call the mock_accel driver's ioctls from a shell.
//!
//! ```text
//! mock-accel-ioctl status /dev/mock0          # prints: status=1
//! mock-accel-ioctl passphrase /dev/mock0 6    # prints: passphrase=word-word-word-word-word-word
//! ```
//! Errors print one line naming the device, the ioctl and the errno (e.g. `EINVAL`), exit 1.

use std::fs::File;
use std::io;
use std::process::ExitCode;

const USAGE: &str = "usage: mock-accel-ioctl status DEVICE | passphrase DEVICE WORDS(1-12)";

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
