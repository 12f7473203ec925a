// SPDX-License-Identifier: GPL-2.0

//! mock-accel guest driver (Rust-for-Linux, kernel 7.3).
//!
//! Binds the mock-accel PCIe functions served by the project's `device` binary over
//! vfio-user: PF 1de5:0001 and the emulated VF 1de5:0002 (DESIGN.md §3, §5). Probe enables
//! memory decoding, maps BAR0, refuses anything whose DEVICE_ID register is not "MOCK" with
//! one log line, and reports the device's identity.
//!
//! BAR0 register map (little endian, see `device/src/bar0.rs`):
//! 0x00 DEVICE_ID, 0x04 REVISION, 0x08..0x18 UUID (16 bytes), 0x18 ID_FORMAT (bit 0 label,
//! bits 8-15 label length), 0x1c FUNCTION (bit 0 VF, bits 8-15 VF index), 0x20 MEMORY_SIZE
//! (u64), 0x28 CAPABILITIES, 0x2c STATUS (RW), 0x30 ENTROPY.
//!
//! Exposed: class `mock-accel` with devices `mockN` (PFs) and `mockN_vfM` (VFs, function M+1
//! of PF N's slot) carrying `uuid`, `memory_size`, `capabilities`, `status` (RW), `numa_node`,
//! the `device` link to the PCI function, `sriov_numvfs` (RW) / `sriov_totalvfs` on PFs and
//! `physfn` on VFs; `/dev/mockN` and `/dev/mockN_vfM` (read: info text; ioctls: status,
//! passphrase, see `devnode`). VFs appear only while their PF's `sriov_numvfs` enables them
//! (`registry`). Passphrase words come from firmware `mock-accel-wordlist.txt` (`wordlist`);
//! without it the driver still binds and the passphrase ioctl fails with `ENODATA`.
//!
//! Modules: `sys` holds all unsafe code (bindings without safe abstractions), `registry` the
//! global table of bound functions, `devnode` the misc devices, `wordlist` the firmware.

use core::fmt::Write;
use kernel::{device, device::Core, io::Io, pci, prelude::*};

mod devnode;
mod registry;
mod sys;
mod wordlist;

/// PCI vendor ID of the mock-accel device (no `pci::Vendor` constant exists for it, so the
/// ID table matches the processing-accelerator class and probe checks vendor/device).
const VENDOR_MOCK: u16 = 0x1de5;
/// Physical function device ID.
const DEVICE_PF: u16 = 0x0001;
/// Emulated virtual function device ID (function 1..N of the PF's slot).
const DEVICE_VF: u16 = 0x0002;
/// PCI class 0x12 (processing accelerator), subclass 0, as a 24-bit class code.
const CLASS_ACCEL: u32 = 0x12_0000;

mod regs {
    pub(super) const DEVICE_ID: usize = 0x00;
    pub(super) const REVISION: usize = 0x04;
    pub(super) const UUID: usize = 0x08;
    pub(super) const ID_FORMAT: usize = 0x18;
    pub(super) const FUNCTION: usize = 0x1c;
    pub(super) const MEMORY_SIZE: usize = 0x20;
    pub(super) const CAPABILITIES: usize = 0x28;
    pub(super) const STATUS: usize = 0x2c;
    pub(super) const ENTROPY: usize = 0x30;
    /// Bytes of BAR0 the driver maps (the BAR is 4 KiB; registers end at 0x34).
    pub(super) const END: usize = 0x34;
    /// "MOCK" in the DEVICE_ID register.
    pub(super) const DEVICE_ID_MOCK: u32 = 0x4d4f_434b;
    /// ID_FORMAT bit 0: the UUID bytes hold a label.
    pub(super) const ID_FORMAT_LABEL: u32 = 1;
}

type Bar0<'bound> = pci::Bar<'bound, { regs::END }>;

/// Identity read from BAR0 at probe time.
struct Identity {
    /// The text given to the server's `-u`: a label or a canonical lowercase UUID.
    uuid: [u8; 36],
    uuid_len: usize,
    memory_size: u64,
    capabilities: u32,
    is_vf: bool,
    vf_index: u32,
}

impl Identity {
    fn read(bar: &Bar0<'_>) -> Self {
        let mut raw = [0u8; 16];
        for i in 0..4 {
            let w = bar.read32(regs::UUID + 4 * i).to_le_bytes();
            raw[4 * i..4 * i + 4].copy_from_slice(&w);
        }
        let fmt = bar.read32(regs::ID_FORMAT);
        let mut uuid = [0u8; 36];
        let uuid_len;
        if fmt & regs::ID_FORMAT_LABEL != 0 {
            let n = (((fmt >> 8) & 0xff) as usize).min(16);
            let mut len = 0;
            for &b in &raw[..n] {
                // Printable ASCII only; anything else is shown as '?'.
                uuid[len] = if (0x20..0x7f).contains(&b) { b } else { b'?' };
                len += 1;
            }
            uuid_len = len;
        } else {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            let mut o = 0;
            for (i, b) in raw.iter().enumerate() {
                if matches!(i, 4 | 6 | 8 | 10) {
                    uuid[o] = b'-';
                    o += 1;
                }
                uuid[o] = HEX[(b >> 4) as usize];
                uuid[o + 1] = HEX[(b & 0xf) as usize];
                o += 2;
            }
            uuid_len = o;
        }
        let func = bar.read32(regs::FUNCTION);
        Self {
            uuid,
            uuid_len,
            // Two 32-bit reads: the BAR's guaranteed alignment is 4 bytes, and the device
            // serves the high half at 0x24.
            memory_size: u64::from(bar.read32(regs::MEMORY_SIZE))
                | u64::from(bar.read32(regs::MEMORY_SIZE + 4)) << 32,
            capabilities: bar.read32(regs::CAPABILITIES),
            is_vf: func & 1 != 0,
            vf_index: (func >> 8) & 0xff,
        }
    }

    fn uuid_str(&self) -> &str {
        core::str::from_utf8(&self.uuid[..self.uuid_len]).unwrap_or("?")
    }
}

/// Per-function state shared with the sysfs callbacks and `/dev` files (heap-allocated so its
/// address is stable; the registry removes every user before it is freed).
pub(crate) struct Inner<'bound> {
    pdev: &'bound pci::Device,
    bar: Bar0<'bound>,
    id: Identity,
    numa_node: i32,
    /// Slot key shared with the PF's VFs.
    key: u32,
    /// Class device name of the PF (for VFs: `physfn`).
    pf_name: [u8; 16],
    pf_name_len: usize,
    words: Option<wordlist::WordList>,
}

impl Inner<'_> {
    /// The PCI function (parent of the class device).
    pub(crate) fn parent(&self) -> &device::Device {
        self.pdev.as_ref()
    }

    fn physfn(&self) -> Option<&str> {
        self.id
            .is_vf
            .then(|| core::str::from_utf8(&self.pf_name[..self.pf_name_len]).unwrap_or("?"))
    }

    /// The STATUS register.
    pub(crate) fn status(&self) -> u32 {
        self.bar.read32(regs::STATUS)
    }

    /// Formats attribute `name` into `out`; `None` for an unknown attribute.
    pub(crate) fn show(&self, name: &str, out: &mut sys::PageWriter<'_>) -> Option<()> {
        match name {
            "uuid" => writeln!(out, "{}", self.id.uuid_str()).ok(),
            "memory_size" => writeln!(out, "{}", self.id.memory_size).ok(),
            "capabilities" => writeln!(out, "0x{:08x}", self.id.capabilities).ok(),
            "status" => writeln!(out, "{}", self.status()).ok(),
            "numa_node" => writeln!(out, "{}", self.numa_node).ok(),
            "physfn" => writeln!(out, "{}", self.physfn()?).ok(),
            "sriov_numvfs" => writeln!(out, "{}", registry::numvfs(self.key)).ok(),
            "sriov_totalvfs" => writeln!(out, "{}", registry::totalvfs(self.key)).ok(),
            _ => None,
        }
    }

    /// Stores `input` into attribute `name`: `status` accepts `0` or `1`, `sriov_numvfs` a
    /// decimal count; anything else is `-EINVAL`.
    pub(crate) fn store(&self, name: &str, input: &[u8]) -> Result {
        match (name, trim_newline(input)) {
            ("status", b"0") => self.bar.write32(0, regs::STATUS),
            ("status", b"1") => self.bar.write32(1, regs::STATUS),
            ("sriov_numvfs", n) if !self.id.is_vf => {
                registry::set_numvfs(self.key, parse_small_decimal(n).ok_or(EINVAL)?)?
            }
            _ => return Err(EINVAL),
        }
        Ok(())
    }

    /// `words` words joined by `-` into `out`; returns the length.
    pub(crate) fn passphrase(&self, words: u32, out: &mut [u8]) -> Result<usize> {
        if !(devnode::MIN_WORDS..=devnode::MAX_WORDS).contains(&words) {
            return Err(EINVAL);
        }
        let list = self.words.as_ref().ok_or(ENODATA)?;
        let mut len = 0;
        for i in 0..words {
            let word = list.word(wordlist::pick(|| self.bar.read32(regs::ENTROPY))?);
            let sep = usize::from(i > 0);
            let dst = out.get_mut(len..len + sep + word.len()).ok_or(EOVERFLOW)?;
            if sep == 1 {
                dst[0] = b'-';
            }
            dst[sep..].copy_from_slice(word);
            len += sep + word.len();
        }
        Ok(len)
    }

    /// The `/dev` read text (with a fresh 6-word sample passphrase).
    pub(crate) fn info(&self, w: &mut sys::PageWriter<'_>) -> Result {
        let mut sample = [0u8; devnode::PASSPHRASE_TEXT_LEN];
        let sample_len = self.passphrase(6, &mut sample).ok();
        let sample = sample_len.and_then(|n| core::str::from_utf8(&sample[..n]).ok());
        devnode::write_info(
            w,
            self.id.uuid_str(),
            self.id.memory_size,
            self.status(),
            self.numa_node,
            self.physfn(),
            self.words.as_ref().map(|_| wordlist::WORDS),
            sample,
        );
        Ok(())
    }
}

/// `0`..=`255` in decimal (no sign, no spaces).
fn parse_small_decimal(b: &[u8]) -> Option<u32> {
    if b.is_empty() || b.len() > 3 || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let v = b.iter().fold(0u32, |v, d| v * 10 + u32::from(d - b'0'));
    (v <= 255).then_some(v)
}

fn trim_newline(b: &[u8]) -> &[u8] {
    match b {
        [rest @ .., b'\n'] => rest,
        _ => b,
    }
}

struct MockAccel<'bound> {
    inner: KBox<Inner<'bound>>,
    /// Registry id (class device, `/dev` node, VF visibility).
    reg_id: u64,
    /// PF number slot (`mockN`); VFs have none.
    slot: Option<usize>,
}

struct MockAccelDriver;

kernel::pci_device_table!(
    PCI_TABLE,
    <MockAccelDriver as pci::Driver>::IdInfo,
    [(pci::DeviceId::from_class(CLASS_ACCEL, 0xffff00), ())]
);

impl pci::Driver for MockAccelDriver {
    type IdInfo = ();
    type Data<'bound> = MockAccel<'bound>;

    const ID_TABLE: pci::IdTable<Self::IdInfo> = &PCI_TABLE;

    fn probe<'bound>(
        pdev: &'bound pci::Device<Core<'_>>,
        _info: Option<&'bound Self::IdInfo>,
    ) -> impl PinInit<Self::Data<'bound>, Error> + 'bound {
        let vendor = pdev.vendor_id().as_raw();
        let device = pdev.device_id();
        if vendor != VENDOR_MOCK || (device != DEVICE_PF && device != DEVICE_VF) {
            return Err(ENODEV);
        }
        pdev.enable_device_mem()?;
        let bar = pdev.iomap_region_sized::<{ regs::END }>(0, c"mock_accel")?;
        let magic = bar.read32(regs::DEVICE_ID);
        if magic != regs::DEVICE_ID_MOCK {
            dev_err!(
                pdev,
                "mock-accel: refusing device: DEVICE_ID register is {:#010x}, expected {:#010x} (\"MOCK\")\n",
                magic,
                regs::DEVICE_ID_MOCK
            );
            return Err(ENODEV);
        }
        let id = Identity::read(&bar);
        let numa_node = sys::numa_node(pdev.as_ref());
        let key = sys::slot_key(pdev.as_ref());
        let mut pf_name = [0u8; 16];
        let (slot, number, pf_name_len);
        if id.is_vf {
            // Emulated SR-IOV (DESIGN.md §5): the PF is function 0 of this slot.
            let pf = sys::pf_index(key).ok_or(EPROBE_DEFER)?;
            slot = None;
            number = id.vf_index as usize;
            pf_name_len = fmt_into(&mut pf_name, format_args!("mock{pf}"));
        } else {
            let s = sys::alloc_slot(key).ok_or(EBUSY)?;
            slot = Some(s);
            number = s;
            pf_name_len = 0;
        }
        let free = || {
            if let Some(s) = slot {
                sys::free_slot(s)
            }
        };
        let words = match wordlist::WordList::load(pdev.as_ref()) {
            Ok(list) => Some(list),
            Err(why) => {
                dev_warn!(
                    pdev,
                    "mock-accel: no word list ({}: {:?}): passphrase ioctl returns ENODATA\n",
                    wordlist::FIRMWARE.to_str().unwrap_or("?"),
                    why
                );
                None
            }
        };
        let entropy_varies = bar.read32(regs::ENTROPY) != bar.read32(regs::ENTROPY);
        dev_info!(
            pdev,
            "mock-accel: bound {} uuid={} memory_size={} capabilities={:#010x} status={} revision={:#010x} vf_index={} entropy_ok={} words={}\n",
            if id.is_vf { "vf" } else { "pf" },
            id.uuid_str(),
            id.memory_size,
            id.capabilities,
            bar.read32(regs::STATUS),
            bar.read32(regs::REVISION),
            if id.is_vf { id.vf_index as i64 } else { -1 },
            entropy_varies,
            if words.is_some() { wordlist::WORDS } else { 0 }
        );
        let is_vf = id.is_vf;
        let inner = KBox::new(
            Inner { pdev, bar, id, numa_node, key, pf_name, pf_name_len, words },
            GFP_KERNEL,
        )
        .inspect_err(|_| free())?;
        let reg_id = registry::register(&inner, key, number, is_vf).inspect_err(|_| free())?;
        Ok(MockAccel { inner, reg_id, slot })
    }
}

impl Drop for MockAccel<'_> {
    fn drop(&mut self) {
        // Remove the class device and `/dev` node (waiting for running callbacks) and make
        // open files fail with ENODEV, before `inner` goes.
        registry::unregister(self.reg_id);
        if let Some(s) = self.slot {
            sys::free_slot(s);
        }
        dev_info!(self.inner.pdev, "mock-accel: unbound {}\n", self.inner.id.uuid_str());
    }
}

/// Formats into a fixed buffer (truncating), returning the length written.
fn fmt_into(buf: &mut [u8], args: core::fmt::Arguments<'_>) -> usize {
    let mut w = sys::PageWriter::new(buf);
    let _ = w.write_fmt(args);
    w.len()
}

/// The module: the `mock-accel` class lives as long as the PCI driver registration.
#[pin_data]
struct MockAccelModule {
    // Dropped first: unbinding every device removes its class device.
    #[pin]
    _driver: kernel::driver::Registration<pci::Adapter<MockAccelDriver>>,
    // Dropped second: the class is destroyed once it is empty.
    _class: sys::Class,
}

impl kernel::InPlaceModule for MockAccelModule {
    fn init(module: &'static kernel::ThisModule) -> impl PinInit<Self, Error> {
        sys::init_registry();
        try_pin_init!(Self {
            _class: sys::Class::create()?,
            _driver <- kernel::driver::Registration::new(c"mock_accel", module),
        })
    }
}

module! {
    type: MockAccelModule,
    name: "mock_accel",
    authors: ["mock-accel authors"],
    description: "mock-accel PCIe accelerator guest driver",
    license: "GPL v2",
}
