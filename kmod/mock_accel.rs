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
//! Status of this file (work in progress, see docs/guest-driver.md): probe/identity only;
//! the class `mock-accel`, sysfs attributes, `/dev/mockN`, firmware word list and SR-IOV
//! emulation are not implemented yet.

use kernel::{device::Core, io::Io, pci, prelude::*};

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

struct MockAccel<'bound> {
    pdev: &'bound pci::Device,
    bar: Bar0<'bound>,
    id: Identity,
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
        let entropy_varies = bar.read32(regs::ENTROPY) != bar.read32(regs::ENTROPY);
        dev_info!(
            pdev,
            "mock-accel: bound {} uuid={} memory_size={} capabilities={:#010x} status={} revision={:#010x} vf_index={} entropy_ok={}\n",
            if id.is_vf { "vf" } else { "pf" },
            id.uuid_str(),
            id.memory_size,
            id.capabilities,
            bar.read32(regs::STATUS),
            bar.read32(regs::REVISION),
            if id.is_vf { id.vf_index as i64 } else { -1 },
            entropy_varies
        );
        Ok(MockAccel { pdev, bar, id })
    }
}

impl Drop for MockAccel<'_> {
    fn drop(&mut self) {
        dev_info!(self.pdev, "mock-accel: unbound {}\n", self.id.uuid_str());
        let _ = &self.bar;
    }
}

kernel::module_pci_driver! {
    type: MockAccelDriver,
    name: "mock_accel",
    authors: ["mock-accel authors"],
    description: "mock-accel PCIe accelerator guest driver",
    license: "GPL v2",
}
