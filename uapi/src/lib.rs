//! Userspace ABI of the `mock_accel` guest driver (`kmod/`): the `/dev/mockN` ioctl numbers,
//! the passphrase request struct, and safe wrappers around both ioctls.
//!
//! The kernel module cannot depend on this crate (it is built by Kbuild), so it spells the
//! same numbers as literals; `tests` in this crate parse `kmod/devnode.rs` and
//! `uapi/mock_accel.h` (the C header for users) and fail if either disagrees with the
//! values computed here.
//!
//! | ioctl | number | argument | errors |
//! |---|---|---|---|
//! | `MOCK_ACCEL_IOC_STATUS` | `_IOR(0xE5, 1, __u32)` = `0x8004e501` | out: STATUS register | `ENODEV` after unbind |
//! | `MOCK_ACCEL_IOC_PASSPHRASE` | `_IOWR(0xE5, 2, struct mock_accel_passphrase)` = `0xc088e502` | in: `words` 1-12; out: `len`, `text` (NUL-terminated, words joined by `-`) | `EINVAL` for words outside 1-12, `ENODATA` without a word list, `EFAULT` |
//!
//! ```no_run
//! use std::fs::File;
//! let dev = File::open("/dev/mock0")?;
//! println!("status {}", mock_accel_uapi::status(&dev)?);
//! println!("{}", mock_accel_uapi::passphrase(&dev, 6)?);
//! # Ok::<(), std::io::Error>(())
//! ```

use std::io;
use std::os::fd::AsFd;

/// ioctl "type" byte of every mock-accel ioctl (the low byte of the PCI vendor ID 0x1de5).
pub const IOC_MAGIC: u8 = 0xe5;
/// Fewest words a passphrase request may ask for.
pub const MIN_WORDS: u32 = 1;
/// Most words a passphrase request may ask for.
pub const MAX_WORDS: u32 = 12;
/// Size of [`Passphrase::text`]: 12 words of at most 9 letters, 11 separators and a NUL fit.
pub const PASSPHRASE_TEXT_LEN: usize = 128;

const IOC_WRITE: u32 = 1;
const IOC_READ: u32 = 2;

/// Linux `_IOC(dir, type, nr, size)` (asm-generic layout: nr 8 bits, type 8, size 14, dir 2).
pub const fn ioc(dir: u32, ty: u8, nr: u8, size: usize) -> u32 {
    assert!(
        size < 1 << 14,
        "ioctl argument too large for the size field"
    );
    (dir << 30) | ((size as u32) << 16) | ((ty as u32) << 8) | nr as u32
}

/// `MOCK_ACCEL_IOC_STATUS`: read the STATUS register (BAR0 0x2C) into a `u32`.
pub const IOC_STATUS: u32 = ioc(IOC_READ, IOC_MAGIC, 1, core::mem::size_of::<u32>());
/// `MOCK_ACCEL_IOC_PASSPHRASE`: generate `words` words from the firmware word list.
pub const IOC_PASSPHRASE: u32 = ioc(
    IOC_READ | IOC_WRITE,
    IOC_MAGIC,
    2,
    core::mem::size_of::<Passphrase>(),
);

/// `struct mock_accel_passphrase`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Passphrase {
    /// In: number of words, [`MIN_WORDS`]..=[`MAX_WORDS`].
    pub words: u32,
    /// Out: bytes of `text` before the NUL.
    pub len: u32,
    /// Out: the words joined by `-`, NUL-terminated.
    pub text: [u8; PASSPHRASE_TEXT_LEN],
}

const _: () = assert!(core::mem::size_of::<Passphrase>() == 136);

impl Passphrase {
    /// A request for `words` words.
    pub fn request(words: u32) -> Self {
        Self {
            words,
            len: 0,
            text: [0; PASSPHRASE_TEXT_LEN],
        }
    }

    /// The returned text (empty if the kernel's `len` is out of range or not UTF-8).
    pub fn text(&self) -> &str {
        self.text
            .get(..self.len as usize)
            .and_then(|t| std::str::from_utf8(t).ok())
            .unwrap_or("")
    }
}

/// Reads the device's STATUS register through `MOCK_ACCEL_IOC_STATUS`.
pub fn status(dev: &impl AsFd) -> io::Result<u32> {
    let mut value = 0u32;
    sys::ioctl(dev, IOC_STATUS, (&mut value as *mut u32).cast())?;
    Ok(value)
}

/// Generates a passphrase of `words` words through `MOCK_ACCEL_IOC_PASSPHRASE`.
pub fn passphrase(dev: &impl AsFd, words: u32) -> io::Result<String> {
    let mut req = Passphrase::request(words);
    sys::ioctl(dev, IOC_PASSPHRASE, (&mut req as *mut Passphrase).cast())?;
    if req.len as usize >= PASSPHRASE_TEXT_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("driver returned len {} (> {PASSPHRASE_TEXT_LEN})", req.len),
        ));
    }
    Ok(req.text().to_owned())
}

/// Size field of an ioctl number (`_IOC_SIZE`).
pub const fn ioc_size(cmd: u32) -> usize {
    ((cmd >> 16) & 0x3fff) as usize
}

/// Any ioctl on `dev` whose argument is `buf`; refused (`InvalidInput`) when `buf` is smaller
/// than the size `cmd` encodes, so the kernel can never write past it.
pub fn ioctl_bytes(dev: &impl AsFd, cmd: u32, buf: &mut [u8]) -> io::Result<()> {
    if buf.len() < ioc_size(cmd) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "ioctl {cmd:#x} needs {} bytes, buffer has {}",
                ioc_size(cmd),
                buf.len()
            ),
        ));
    }
    sys::ioctl(dev, cmd, buf.as_mut_ptr().cast())
}

#[allow(unsafe_code)]
mod sys {
    use std::io;
    use std::os::fd::{AsFd, AsRawFd};

    /// `ioctl(fd, cmd, arg)` where `arg` points at the argument type `cmd` encodes.
    pub(super) fn ioctl(dev: &impl AsFd, cmd: u32, arg: *mut libc::c_void) -> io::Result<()> {
        // SAFETY: callers pass a pointer to a live value of exactly the size encoded in `cmd`
        // (u32 for STATUS, Passphrase for PASSPHRASE); the fd is borrowed for the call.
        let rc = unsafe { libc::ioctl(dev.as_fd().as_raw_fd(), cmd as libc::c_ulong, arg) };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo_file(rel: &str) -> String {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
        std::fs::read_to_string(format!("{path}/{rel}")).expect(rel)
    }

    /// Value of `const NAME: u32 = 0x...;` in the kernel module source (kmod/devnode.rs).
    fn kmod_const(src: &str, name: &str) -> u32 {
        let line = src
            .lines()
            .find(|l| l.contains(&format!("const {name}: u32 = ")))
            .unwrap_or_else(|| panic!("kmod/devnode.rs has no const {name}"));
        let v = line
            .split('=')
            .nth(1)
            .expect("value")
            .trim()
            .trim_end_matches(';');
        u32::from_str_radix(v.trim_start_matches("0x").replace('_', "").as_str(), 16).expect(v)
    }

    #[test]
    fn numbers_follow_the_linux_ioc_encoding() {
        assert_eq!(IOC_STATUS, 0x8004_e501);
        assert_eq!(IOC_PASSPHRASE, 0xc088_e502);
    }

    #[test]
    fn kernel_module_uses_the_same_numbers_and_limits() {
        let src = repo_file("kmod/devnode.rs");
        assert_eq!(kmod_const(&src, "IOC_STATUS"), IOC_STATUS);
        assert_eq!(kmod_const(&src, "IOC_PASSPHRASE"), IOC_PASSPHRASE);
        assert!(src.contains(&format!(
            "const PASSPHRASE_TEXT_LEN: usize = {PASSPHRASE_TEXT_LEN};"
        )));
        assert!(src.contains(&format!("const MAX_WORDS: u32 = {MAX_WORDS};")));
    }

    #[test]
    fn c_header_matches() {
        let h = repo_file("uapi/mock_accel.h");
        assert!(h.contains("#define MOCK_ACCEL_IOC_MAGIC 0xE5"), "{h}");
        assert!(h.contains("_IOR(MOCK_ACCEL_IOC_MAGIC, 1, __u32)"), "{h}");
        assert!(
            h.contains("_IOWR(MOCK_ACCEL_IOC_MAGIC, 2, struct mock_accel_passphrase)"),
            "{h}"
        );
        assert!(h.contains(&format!(
            "#define MOCK_ACCEL_PASSPHRASE_TEXT_LEN {PASSPHRASE_TEXT_LEN}"
        )));
        assert!(h.contains(&format!(
            "#define MOCK_ACCEL_PASSPHRASE_MAX_WORDS {MAX_WORDS}"
        )));
    }

    #[test]
    fn c_header_compiles_to_the_same_numbers_and_layout() {
        let dir = std::env::temp_dir().join(format!("mock-accel-uapi-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let prog = dir.join("check.c");
        std::fs::write(
            &prog,
            concat!(
                "#include <stdio.h>\n#include <stddef.h>\n#include \"",
                env!("CARGO_MANIFEST_DIR"),
                "/mock_accel.h\"\n",
                "int main(void) { printf(\"%lx %lx %zu %zu\\n\", (unsigned long)MOCK_ACCEL_IOC_STATUS,",
                " (unsigned long)MOCK_ACCEL_IOC_PASSPHRASE, sizeof(struct mock_accel_passphrase),",
                " offsetof(struct mock_accel_passphrase, text)); return 0; }\n"
            ),
        )
        .expect("write check.c");
        let exe = dir.join("check");
        let cc = std::process::Command::new("cc")
            .arg("-o")
            .arg(&exe)
            .arg(&prog)
            .output()
            .expect("cc (gcc) must be installed: scripts/install-host-deps.sh");
        assert!(
            cc.status.success(),
            "{}",
            String::from_utf8_lossy(&cc.stderr)
        );
        let out = std::process::Command::new(&exe)
            .output()
            .expect("run check");
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            format!(
                "{IOC_STATUS:x} {IOC_PASSPHRASE:x} {} {}",
                core::mem::size_of::<Passphrase>(),
                core::mem::offset_of!(Passphrase, text)
            )
        );
    }

    #[test]
    fn passphrase_text_ignores_out_of_range_len() {
        let mut p = Passphrase::request(2);
        p.len = 500;
        assert_eq!(p.text(), "");
        p.text[..7].copy_from_slice(b"alp-bet");
        p.len = 7;
        assert_eq!(p.text(), "alp-bet");
    }

    #[test]
    fn ioctl_bytes_refuses_a_buffer_smaller_than_the_command_encodes() {
        let f = std::fs::File::open("/dev/null").expect("/dev/null");
        let mut small = [0u8; 8];
        let e = ioctl_bytes(&f, IOC_PASSPHRASE, &mut small).expect_err("buffer too small");
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert_eq!(ioc_size(IOC_PASSPHRASE), 136);
        assert_eq!(ioc_size(IOC_STATUS), 4);
    }

    #[test]
    fn ioctl_on_a_non_device_is_an_error_not_a_panic() {
        let f = std::fs::File::open("/dev/null").expect("/dev/null");
        assert!(status(&f).is_err());
        assert!(passphrase(&f, 3).is_err());
    }
}
