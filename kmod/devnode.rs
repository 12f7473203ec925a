// SPDX-License-Identifier: GPL-2.0

//! `/dev/mockN` and `/dev/mockN_vfM`: misc devices whose `read()` returns the device's info
//! text and whose ioctls read STATUS and generate passphrases.
//!
//! ioctl ABI (the same values live in `uapi/` for userspace, whose tests check these
//! literals): `MOCK_ACCEL_IOC_STATUS = _IOR(0xE5, 1, __u32)`,
//! `MOCK_ACCEL_IOC_PASSPHRASE = _IOWR(0xE5, 2, struct mock_accel_passphrase)` with
//! `struct { __u32 words; __u32 len; char text[128]; }`.
//!
//! Open files hold only the device's registry id: every operation looks the device up under
//! the registry lock, so a file outliving its device (unbind, `sriov_numvfs=0`) gets
//! `-ENODEV` instead of touching freed memory.

use core::fmt::Write;
use kernel::{
    fs::{File, Kiocb},
    ioctl::{_IOR, _IOWR},
    iov::IovIterDest,
    miscdevice::{MiscDevice, MiscDeviceOptions, MiscDeviceRegistration},
    new_mutex,
    prelude::*,
    sync::Mutex,
    uaccess::{UserPtr, UserSlice},
};

use crate::{registry, sys};

/// `MOCK_ACCEL_IOC_STATUS`.
pub(crate) const IOC_STATUS: u32 = 0x8004_e501;
/// `MOCK_ACCEL_IOC_PASSPHRASE`.
pub(crate) const IOC_PASSPHRASE: u32 = 0xc088_e502;
/// Fewest and most words per passphrase.
pub(crate) const MIN_WORDS: u32 = 1;
pub(crate) const MAX_WORDS: u32 = 12;
/// `text` field of `struct mock_accel_passphrase`.
pub(crate) const PASSPHRASE_TEXT_LEN: usize = 128;
/// Size of `struct mock_accel_passphrase`.
const PASSPHRASE_SIZE: usize = 8 + PASSPHRASE_TEXT_LEN;

const _: () = assert!(IOC_STATUS == _IOR::<u32>(0xe5, 1));
const _: () = assert!(IOC_PASSPHRASE == _IOWR::<[u8; PASSPHRASE_SIZE]>(0xe5, 2));
const _: () = assert!(MAX_WORDS as usize * 10 <= PASSPHRASE_TEXT_LEN);

// ---- names --------------------------------------------------------------------------------

/// PFs with a name (`mock0`..`mock63`) and VFs per PF with one (`mockN_vf0`..`mockN_vf7`).
pub(crate) const NAMED_PFS: usize = 64;
pub(crate) const NAMED_VFS: usize = 8;
const NAME_LEN: usize = 16;

/// Every device name, NUL-terminated, built at compile time: misc devices need `'static`
/// names, and a static table needs neither leaks nor unsafe lifetime extension.
static NAMES: [[u8; NAME_LEN]; NAMED_PFS * (1 + NAMED_VFS)] = build_names();

const fn put_num(buf: &mut [u8; NAME_LEN], mut at: usize, n: usize) -> usize {
    if n >= 10 {
        buf[at] = b'0' + (n / 10) as u8;
        at += 1;
    }
    buf[at] = b'0' + (n % 10) as u8;
    at + 1
}

const fn build_names() -> [[u8; NAME_LEN]; NAMED_PFS * (1 + NAMED_VFS)] {
    let mut out = [[0u8; NAME_LEN]; NAMED_PFS * (1 + NAMED_VFS)];
    let mut pf = 0;
    while pf < NAMED_PFS {
        let mut vf = 0;
        while vf <= NAMED_VFS {
            let mut b = [0u8; NAME_LEN];
            b[0] = b'm';
            b[1] = b'o';
            b[2] = b'c';
            b[3] = b'k';
            let mut at = put_num(&mut b, 4, pf);
            if vf > 0 {
                b[at] = b'_';
                b[at + 1] = b'v';
                b[at + 2] = b'f';
                at = put_num(&mut b, at + 3, vf - 1);
            }
            let _ = at;
            out[pf * (1 + NAMED_VFS) + vf] = b;
            vf += 1;
        }
        pf += 1;
    }
    out
}

/// `mock{pf}` or, with `vf`, `mock{pf}_vf{vf}`; `None` beyond the named range.
pub(crate) fn name(pf: usize, vf: Option<usize>) -> Option<&'static CStr> {
    let col = match vf {
        None => 0,
        Some(v) if v < NAMED_VFS => v + 1,
        Some(_) => return None,
    };
    let row = NAMES.get(pf.checked_mul(1 + NAMED_VFS)?..)?;
    CStr::from_bytes_until_nul(row.get(col)?).ok()
}

// ---- the misc device ----------------------------------------------------------------------

/// A registered `/dev` node and the registry id of its device.
#[pin_data]
pub(crate) struct DevNode {
    /// Written before `reg` registers, so `open` always finds it.
    pub(crate) id: u64,
    #[pin]
    pub(crate) reg: MiscDeviceRegistration<DevFile>,
}

impl DevNode {
    /// Registers `/dev/{name}` for device `id`.
    pub(crate) fn register(id: u64, name: &'static CStr) -> Result<Pin<KBox<Self>>> {
        KBox::try_pin_init(
            try_pin_init!(DevNode {
                id,
                reg <- MiscDeviceRegistration::register(MiscDeviceOptions { name }),
            }),
            GFP_KERNEL,
        )
    }
}

/// Info text of one open file, generated when a read starts at offset 0.
struct InfoText {
    buf: [u8; 512],
    len: usize,
}

/// An open `/dev/mock*` file.
#[pin_data]
pub(crate) struct DevFile {
    id: u64,
    #[pin]
    text: Mutex<InfoText>,
}

#[vtable]
impl MiscDevice for DevFile {
    type Ptr = Pin<KBox<Self>>;

    fn open(_file: &File, misc: &MiscDeviceRegistration<Self>) -> Result<Pin<KBox<Self>>> {
        // Runs under the misc core's lock: must not take the registry lock (registration
        // happens under it), so the id comes from the enclosing `DevNode`.
        let id = sys::devnode_id(misc);
        KBox::try_pin_init(
            try_pin_init!(DevFile {
                id,
                text <- new_mutex!(InfoText { buf: [0; 512], len: 0 }),
            }),
            GFP_KERNEL,
        )
    }

    fn read_iter(mut kiocb: Kiocb<'_, Self::Ptr>, iov: &mut IovIterDest<'_>) -> Result<usize> {
        let me = kiocb.file();
        let mut text = me.text.lock();
        if kiocb.ki_pos() == 0 {
            let t = &mut *text;
            let mut w = sys::PageWriter::new(&mut t.buf);
            registry::with_device(me.id, |inner| inner.info(&mut w))?;
            t.len = w.len();
        }
        iov.simple_read_from_buffer(kiocb.ki_pos_mut(), &text.buf[..text.len])
    }

    fn ioctl(me: Pin<&DevFile>, _file: &File, cmd: u32, arg: usize) -> Result<isize> {
        let user = UserPtr::from_addr(arg);
        match cmd {
            IOC_STATUS => {
                let status = registry::with_device(me.id, |inner| Ok(inner.status()))?;
                UserSlice::new(user, 4).writer().write_slice(&status.to_ne_bytes())?;
            }
            IOC_PASSPHRASE => {
                let (mut reader, mut writer) = UserSlice::new(user, PASSPHRASE_SIZE).reader_writer();
                let mut words = [0u8; 4];
                reader.read_slice(&mut words)?;
                let words = u32::from_ne_bytes(words);
                let mut out = [0u8; PASSPHRASE_SIZE];
                out[..4].copy_from_slice(&words.to_ne_bytes());
                let len = registry::with_device(me.id, |inner| {
                    inner.passphrase(words, &mut out[8..8 + PASSPHRASE_TEXT_LEN - 1])
                })?;
                out[4..8].copy_from_slice(&(len as u32).to_ne_bytes());
                writer.write_slice(&out)?;
            }
            _ => return Err(ENOTTY),
        }
        Ok(0)
    }
}

/// Writes the info text the seeds show for `cat /dev/mockN`.
pub(crate) fn write_info(
    w: &mut sys::PageWriter<'_>,
    uuid: &str,
    memory: u64,
    status: u32,
    numa: i32,
    physfn: Option<&str>,
    words: Option<usize>,
    sample: Option<&str>,
) {
    let _ = writeln!(w, "Mock Accelerator Device");
    let _ = writeln!(w, "UUID: {uuid}");
    let _ = writeln!(w, "Memory: {memory} bytes");
    let _ = writeln!(w, "Status: 0x{status:08x}");
    let _ = writeln!(w, "NUMA Node: {numa}");
    if let Some(pf) = physfn {
        let _ = writeln!(w, "Physical Function: {pf}");
    }
    match words {
        Some(n) => {
            let _ = writeln!(w, "Wordlist: {n} words loaded");
        }
        None => {
            let _ = writeln!(w, "Wordlist: not loaded");
        }
    }
    match sample {
        Some(s) => {
            let _ = writeln!(w, "Sample Passphrase (6 words): {s}");
        }
        None => {
            let _ = writeln!(w, "Sample Passphrase: unavailable (no word list)");
        }
    }
}
