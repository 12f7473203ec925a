//! Extra initramfs content for test guests: a `newc` cpio writer, and a helper that packs a
//! dynamically linked host binary with the libraries `ldd` names. Linux unpacks every archive
//! of a concatenation (`cat base.cpio.gz extra.cpio > initrd`), so a test can add files to
//! the cached test guest without rebuilding it.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context};

/// A `newc` (SVR4, no CRC) cpio archive being written.
#[derive(Debug, Default)]
pub struct Cpio {
    buf: Vec<u8>,
    ino: u32,
    dirs: BTreeSet<String>,
}

impl Cpio {
    pub fn new() -> Self {
        Self::default()
    }

    fn entry(&mut self, name: &str, mode: u32, data: &[u8]) -> anyhow::Result<()> {
        let size = u32::try_from(data.len()).context("file larger than 4 GiB")?;
        self.ino += 1;
        let fields = [
            self.ino,
            mode,
            0,
            0,
            1,
            0,
            size,
            0,
            0,
            0,
            0,
            name.len() as u32 + 1,
            0,
        ];
        self.buf.extend_from_slice(b"070701");
        for f in fields {
            self.buf.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        self.pad();
        self.buf.extend_from_slice(data);
        self.pad();
        Ok(())
    }

    fn pad(&mut self) {
        while self.buf.len() % 4 != 0 {
            self.buf.push(0);
        }
    }

    /// Every missing parent directory of `path`.
    fn parents(&mut self, path: &str) -> anyhow::Result<()> {
        let mut acc = String::new();
        let parts: Vec<&str> = path.split('/').collect();
        for part in &parts[..parts.len().saturating_sub(1)] {
            if !acc.is_empty() {
                acc.push('/');
            }
            acc.push_str(part);
            if self.dirs.insert(acc.clone()) {
                let dir = acc.clone();
                self.entry(&dir, 0o040_755, &[])?;
            }
        }
        Ok(())
    }

    /// Adds a regular file at `path` (absolute in the guest) with permission bits `perm`.
    pub fn file(&mut self, path: &str, data: &[u8], perm: u32) -> anyhow::Result<()> {
        let rel = path.trim_start_matches('/');
        if rel.is_empty() || rel.split('/').any(|p| p.is_empty() || p == "..") {
            bail!("bad initramfs path {path:?}");
        }
        self.parents(rel)?;
        self.entry(rel, 0o100_000 | (perm & 0o7777), data)
    }

    /// Adds host file `host` at `path`, mode kept.
    pub fn copy(&mut self, path: &str, host: &Path) -> anyhow::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let data = std::fs::read(host).with_context(|| format!("read {}", host.display()))?;
        let perm = std::fs::metadata(host)?.permissions().mode();
        self.file(path, &data, perm)
    }

    /// The archive with its trailer.
    pub fn finish(mut self) -> anyhow::Result<Vec<u8>> {
        self.entry("TRAILER!!!", 0, &[])?;
        while self.buf.len() % 512 != 0 {
            self.buf.push(0);
        }
        Ok(self.buf)
    }
}

/// Runs `tool args...`; its stdout, or an error naming the tool and its stderr.
fn run(tool: &str, args: &[&std::ffi::OsStr]) -> anyhow::Result<Vec<u8>> {
    let out = Command::new(tool)
        .args(args)
        .output()
        .with_context(|| format!("run {tool} (binutils/libc-bin)"))?;
    if !out.status.success() {
        bail!("{tool} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(out.stdout)
}

/// Adds `binary` at `guest_path`, stripped of debug info, plus the shared libraries and the
/// loader `ldd` lists for it at their host paths.
pub fn add_dynamic_binary(cpio: &mut Cpio, binary: &Path, guest_path: &str) -> anyhow::Result<()> {
    let stripped = std::env::temp_dir().join(format!("mock-accel-strip-{}", std::process::id()));
    let copied = run(
        "strip",
        &["-o".as_ref(), stripped.as_os_str(), binary.as_os_str()],
    )
    .and_then(|_| cpio.copy(guest_path, &stripped));
    let _ = std::fs::remove_file(&stripped);
    copied?;
    let ldd = run("ldd", &[binary.as_os_str()])?;
    for line in String::from_utf8_lossy(&ldd).lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line
                .split_whitespace()
                .next()
                .filter(|p| p.starts_with('/')),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            cpio.copy(p, Path::new(p))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newc_entries_are_aligned_with_parents_and_a_trailer() {
        let mut c = Cpio::new();
        c.file("/etc/a/b.txt", b"hello", 0o644).expect("file");
        let out = c.finish().expect("finish");
        assert_eq!(out.len() % 512, 0);
        let text = String::from_utf8_lossy(&out);
        // etc, etc/a, etc/a/b.txt, trailer: four headers, parents first.
        assert_eq!(text.matches("070701").count(), 4);
        let (etc, file) = (
            text.find("etc\0").expect("etc"),
            text.find("etc/a/b.txt\0").expect("file"),
        );
        assert!(etc < file);
        assert!(text.contains("hello"));
        assert!(text.contains("TRAILER!!!"));
        // Header of the file: mode 0100644, size 5.
        assert!(text.contains(&format!("{:08x}", 0o100_644)));
    }

    #[test]
    fn paths_escaping_the_root_are_refused() {
        let mut c = Cpio::new();
        assert!(c.file("/../x", b"", 0o644).is_err());
        assert!(c.file("/", b"", 0o644).is_err());
        assert!(c.file("a//b", b"", 0o644).is_err());
    }
}
