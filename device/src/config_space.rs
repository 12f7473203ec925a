//! PCI Express configuration space of the mock-accel function (4 KiB, type 0 header).
//!
//! The space is stored as bytes plus two per-byte masks, as real hardware behaves:
//! `writable` bits take the guest's value, `w1c` bits are cleared by writing 1 (status
//! registers), every other bit is read-only. The guest path ([`ConfigSpace::guest_write`])
//! applies the masks; the device path (`set_*`) writes anything and is used only while building
//! the space. BAR sizing falls out of the masks: BAR0's address bits below its size are not
//! writable, so writing all-ones reads back the size mask with the type bits intact.
//!
//! Layout (offsets in bytes):
//!
//! | offset | what |
//! |---|---|
//! | 0x00 | vendor 0x1de5, device 0x0001 (PF) or 0x0002 (VF), command, status |
//! | 0x08 | revision 1, class code 0x120000 (processing accelerator) |
//! | 0x10 | BAR0: 4 KiB, 32-bit, non-prefetchable memory; BAR1-5 and ROM BAR absent |
//! | 0x2c | subsystem vendor 0x1de5, subsystem 0x0001/0x0002 |
//! | 0x34 | capability pointer 0x40 |
//! | 0x3c | interrupt line (RW), interrupt pin INTA |
//! | 0x40 | PCI power management capability (v3; D0/D3hot) |
//! | 0x50 | PCI Express capability v2, endpoint |
//! | 0x100 | vendor-specific extended capability (VSEC id 1, "MOCKACCL"), end of chain |

/// Size of a PCI Express configuration space.
pub const CONFIG_SPACE_SIZE: usize = 4096;

/// PCI vendor ID (Eideticom, as in the seeds).
pub const VENDOR_ID: u16 = 0x1de5;
/// Device ID of a physical function.
pub const DEVICE_ID_PF: u16 = 0x0001;
/// Device ID of a virtual function (emulated SR-IOV, DESIGN.md §5).
pub const DEVICE_ID_VF: u16 = 0x0002;
/// Class code: base class 0x12 (processing accelerator), subclass 0, prog-if 0.
pub const CLASS_CODE: u32 = 0x12_0000;
/// Revision ID in the header.
pub const REVISION_ID: u8 = 0x01;
/// Size of BAR0 (the register file).
pub const BAR0_SIZE: u32 = 4096;

/// Standard header registers (PCI Local Bus Spec 3.0, §6.1).
pub mod reg {
    pub const VENDOR_ID: usize = 0x00;
    pub const DEVICE_ID: usize = 0x02;
    pub const COMMAND: usize = 0x04;
    pub const STATUS: usize = 0x06;
    pub const REVISION_ID: usize = 0x08;
    pub const CLASS_PROG: usize = 0x09;
    pub const CACHE_LINE_SIZE: usize = 0x0c;
    pub const HEADER_TYPE: usize = 0x0e;
    pub const BAR0: usize = 0x10;
    pub const SUBSYSTEM_VENDOR_ID: usize = 0x2c;
    pub const SUBSYSTEM_ID: usize = 0x2e;
    pub const ROM_ADDRESS: usize = 0x30;
    pub const CAPABILITY_LIST: usize = 0x34;
    pub const INTERRUPT_LINE: usize = 0x3c;
    pub const INTERRUPT_PIN: usize = 0x3d;
}

/// Capability IDs and where ours live.
pub mod cap {
    /// PCI power management capability ID.
    pub const ID_PM: u8 = 0x01;
    /// PCI Express capability ID.
    pub const ID_EXP: u8 = 0x10;
    /// Offset of the power management capability.
    pub const PM: usize = 0x40;
    /// Offset of the PCI Express capability.
    pub const EXP: usize = 0x50;
    /// Length of a v2 PCI Express capability for an endpoint.
    pub const EXP_LEN: usize = 0x3c;
    /// Vendor-specific extended capability ID.
    pub const EXT_ID_VSEC: u16 = 0x000b;
    /// Offset of the first (and only) extended capability.
    pub const VSEC: usize = 0x100;
}

/// Command register bits the guest may set: I/O, memory, bus master, parity, SERR, INTx disable.
const COMMAND_WRITABLE: u16 = 0x0547;
/// Status register: capability list present.
const STATUS_CAP_LIST: u16 = 1 << 4;
/// Status register error bits, write-1-to-clear.
const STATUS_W1C: u16 = 0xf900;

/// The function's configuration space.
#[derive(Clone)]
pub struct ConfigSpace {
    bytes: [u8; CONFIG_SPACE_SIZE],
    writable: [u8; CONFIG_SPACE_SIZE],
    w1c: [u8; CONFIG_SPACE_SIZE],
}

impl std::fmt::Debug for ConfigSpace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigSpace")
            .field(
                "vendor",
                &format_args!("{:#06x}", self.read_u16(reg::VENDOR_ID)),
            )
            .field(
                "device",
                &format_args!("{:#06x}", self.read_u16(reg::DEVICE_ID)),
            )
            .field("bar0", &format_args!("{:#010x}", self.read_u32(reg::BAR0)))
            .finish()
    }
}

impl ConfigSpace {
    /// The config space of a mock-accel PF (`vf == false`) or VF.
    pub fn mock_accel(vf: bool) -> Self {
        let mut c = Self {
            bytes: [0; CONFIG_SPACE_SIZE],
            writable: [0; CONFIG_SPACE_SIZE],
            w1c: [0; CONFIG_SPACE_SIZE],
        };
        let device_id = if vf { DEVICE_ID_VF } else { DEVICE_ID_PF };
        c.set_u16(reg::VENDOR_ID, VENDOR_ID);
        c.set_u16(reg::DEVICE_ID, device_id);
        c.set_u16(reg::COMMAND, 0);
        c.set_writable_u16(reg::COMMAND, COMMAND_WRITABLE);
        c.set_u16(reg::STATUS, STATUS_CAP_LIST);
        c.set_w1c_u16(reg::STATUS, STATUS_W1C);
        c.set_u8(reg::REVISION_ID, REVISION_ID);
        let class = CLASS_CODE.to_le_bytes();
        c.bytes[reg::CLASS_PROG..reg::CLASS_PROG + 3].copy_from_slice(&class[..3]);
        c.set_writable_u8(reg::CACHE_LINE_SIZE, 0xff);
        c.set_u8(reg::HEADER_TYPE, 0x00);
        // BAR0: 32-bit non-prefetchable memory (type bits 0); address bits above the size.
        c.set_u32(reg::BAR0, 0);
        c.set_writable_u32(reg::BAR0, !(BAR0_SIZE - 1));
        c.set_u16(reg::SUBSYSTEM_VENDOR_ID, VENDOR_ID);
        c.set_u16(reg::SUBSYSTEM_ID, device_id);
        c.set_u8(reg::CAPABILITY_LIST, cap::PM as u8);
        c.set_writable_u8(reg::INTERRUPT_LINE, 0xff);
        c.set_u8(reg::INTERRUPT_PIN, 1);

        // Power management (PCI PM 1.2): PMC version 3, D0 and D3hot; PMCSR power state RW,
        // PME status W1C.
        c.set_u8(cap::PM, cap::ID_PM);
        c.set_u8(cap::PM + 1, cap::EXP as u8);
        c.set_u16(cap::PM + 2, 0x0003);
        c.set_u16(cap::PM + 4, 0x0008); // No_Soft_Reset
        c.set_writable_u16(cap::PM + 4, 0x0003);
        c.set_w1c_u16(cap::PM + 4, 0x8000);

        // PCI Express capability, version 2, device/port type 0 (endpoint), last in the list.
        let e = cap::EXP;
        c.set_u8(e, cap::ID_EXP);
        c.set_u8(e + 1, 0);
        c.set_u16(e + 2, 0x0002);
        c.set_u32(e + 4, 0x0000_8000); // DevCap: role-based error reporting, 128 B payload
        c.set_writable_u16(e + 8, 0x7cff); // DevCtl: error reporting, payload, read request
        c.set_w1c_u16(e + 0x0a, 0x000f); // DevSta: error detected bits
        c.set_u32(e + 0x0c, 0x0000_0011); // LnkCap: 2.5 GT/s, x1
        c.set_writable_u16(e + 0x10, 0x0043); // LnkCtl: ASPM control, RCB
        c.set_u16(e + 0x12, 0x0011); // LnkSta: 2.5 GT/s, x1
        c.set_writable_u16(e + 0x28, 0x0400); // DevCtl2: LTR enable (harmless)

        // Extended capability chain: one vendor-specific capability, next = 0 ends the chain.
        let v = cap::VSEC;
        c.set_u32(v, u32::from(cap::EXT_ID_VSEC) | (1 << 16));
        c.set_u32(v + 4, 0x0001 | (1 << 16) | (0x10 << 20)); // VSEC id 1, rev 1, 16 bytes
        c.bytes[v + 8..v + 16].copy_from_slice(b"MOCKACCL");
        c
    }

    /// Copy `data.len()` bytes from `offset`. The caller bounds-checks (the vfio-user server
    /// does, against the region size); out-of-range parts read as zero rather than panic.
    pub fn read(&self, offset: usize, data: &mut [u8]) {
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = offset
                .checked_add(i)
                .and_then(|o| self.bytes.get(o))
                .copied()
                .unwrap_or(0);
        }
    }

    /// A guest write: writable bits take the new value, W1C bits clear where 1 is written,
    /// read-only bits keep their value. Bytes beyond the space are ignored.
    pub fn guest_write(&mut self, offset: usize, data: &[u8]) {
        for (i, &value) in data.iter().enumerate() {
            let Some(o) = offset.checked_add(i).filter(|&o| o < CONFIG_SPACE_SIZE) else {
                return;
            };
            let old = self.bytes[o];
            let mut new = (old & !self.writable[o]) | (value & self.writable[o]);
            new &= !(value & self.w1c[o]);
            self.bytes[o] = new;
        }
    }

    /// The 32-bit value at `offset` (little endian).
    pub fn read_u32(&self, offset: usize) -> u32 {
        let mut b = [0u8; 4];
        self.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    /// The 16-bit value at `offset`.
    pub fn read_u16(&self, offset: usize) -> u16 {
        let mut b = [0u8; 2];
        self.read(offset, &mut b);
        u16::from_le_bytes(b)
    }

    /// The byte at `offset`.
    pub fn read_u8(&self, offset: usize) -> u8 {
        let mut b = [0u8; 1];
        self.read(offset, &mut b);
        b[0]
    }

    /// Whether the guest enabled memory decoding (command bit 1).
    pub fn memory_enabled(&self) -> bool {
        self.read_u16(reg::COMMAND) & 0x2 != 0
    }

    /// Device path: set the status register's error bits (e.g. to model an error); the guest
    /// clears them by writing 1.
    pub fn raise_status_bits(&mut self, bits: u16) {
        let v = self.read_u16(reg::STATUS) | (bits & STATUS_W1C);
        self.set_u16(reg::STATUS, v);
    }

    /// Reset the guest-writable state to power-on values, keeping the identity.
    pub fn reset(&mut self, vf: bool) {
        *self = Self::mock_accel(vf);
    }

    fn set_u8(&mut self, offset: usize, v: u8) {
        self.bytes[offset] = v;
    }
    fn set_u16(&mut self, offset: usize, v: u16) {
        self.bytes[offset..offset + 2].copy_from_slice(&v.to_le_bytes());
    }
    fn set_u32(&mut self, offset: usize, v: u32) {
        self.bytes[offset..offset + 4].copy_from_slice(&v.to_le_bytes());
    }
    fn set_writable_u8(&mut self, offset: usize, mask: u8) {
        self.writable[offset] = mask;
    }
    fn set_writable_u16(&mut self, offset: usize, mask: u16) {
        self.writable[offset..offset + 2].copy_from_slice(&mask.to_le_bytes());
    }
    fn set_writable_u32(&mut self, offset: usize, mask: u32) {
        self.writable[offset..offset + 4].copy_from_slice(&mask.to_le_bytes());
    }
    fn set_w1c_u16(&mut self, offset: usize, mask: u16) {
        self.w1c[offset..offset + 2].copy_from_slice(&mask.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn identity_is_mock_accel_processing_accelerator() {
        let c = ConfigSpace::mock_accel(false);
        assert_eq!(c.read_u16(reg::VENDOR_ID), 0x1de5);
        assert_eq!(c.read_u16(reg::DEVICE_ID), 0x0001);
        assert_eq!(c.read_u32(reg::REVISION_ID) >> 8, 0x12_0000);
        assert_eq!(c.read_u8(reg::HEADER_TYPE), 0);
        assert_eq!(
            ConfigSpace::mock_accel(true).read_u16(reg::DEVICE_ID),
            0x0002
        );
    }

    #[test]
    fn bar0_sizing_reads_back_size_mask_with_type_bits() {
        let mut c = ConfigSpace::mock_accel(false);
        c.guest_write(reg::BAR0, &u32::MAX.to_le_bytes());
        let mask = c.read_u32(reg::BAR0);
        assert_eq!(
            mask, 0xffff_f000,
            "32-bit non-prefetchable memory BAR of 4 KiB"
        );
        assert_eq!((!(mask & !0xf)).wrapping_add(1), BAR0_SIZE);
        c.guest_write(reg::BAR0, &0xfebf_e123u32.to_le_bytes());
        assert_eq!(
            c.read_u32(reg::BAR0),
            0xfebf_e000,
            "low bits are not address bits"
        );
    }

    #[test]
    fn absent_bars_and_rom_read_zero_after_sizing() {
        let mut c = ConfigSpace::mock_accel(false);
        for bar in 1..6 {
            let o = reg::BAR0 + 4 * bar;
            c.guest_write(o, &u32::MAX.to_le_bytes());
            assert_eq!(c.read_u32(o), 0, "BAR{bar} is not implemented");
        }
        c.guest_write(reg::ROM_ADDRESS, &u32::MAX.to_le_bytes());
        assert_eq!(c.read_u32(reg::ROM_ADDRESS), 0);
    }

    #[test]
    fn status_error_bits_are_write_one_to_clear() {
        let mut c = ConfigSpace::mock_accel(false);
        c.raise_status_bits(0x8000 | 0x2000);
        c.guest_write(reg::STATUS, &0x2000u16.to_le_bytes());
        assert_eq!(c.read_u16(reg::STATUS), 0x8000 | STATUS_CAP_LIST);
        c.guest_write(reg::STATUS, &0u16.to_le_bytes());
        assert_eq!(
            c.read_u16(reg::STATUS),
            0x8000 | STATUS_CAP_LIST,
            "writing 0 clears nothing"
        );
    }

    #[test]
    fn command_register_keeps_only_defined_bits() {
        let mut c = ConfigSpace::mock_accel(false);
        c.guest_write(reg::COMMAND, &0xffffu16.to_le_bytes());
        assert_eq!(c.read_u16(reg::COMMAND), COMMAND_WRITABLE);
        assert!(c.memory_enabled());
    }

    /// Walk the capability list: every header is well formed, pointers are dword aligned,
    /// inside the standard space, strictly increasing (no loops), and the chain ends.
    #[test]
    fn capability_chain_is_well_formed() {
        let c = ConfigSpace::mock_accel(false);
        assert_ne!(c.read_u16(reg::STATUS) & STATUS_CAP_LIST, 0);
        let mut ptr = usize::from(c.read_u8(reg::CAPABILITY_LIST));
        let mut ids = Vec::new();
        let mut last = 0x3f;
        while ptr != 0 {
            assert_eq!(ptr % 4, 0, "capability at {ptr:#x} is dword aligned");
            assert!(
                ptr > last && ptr < 0x100,
                "capability pointer {ptr:#x} moves forward"
            );
            ids.push(c.read_u8(ptr));
            last = ptr;
            ptr = usize::from(c.read_u8(ptr + 1));
        }
        assert_eq!(ids, vec![cap::ID_PM, cap::ID_EXP]);
        assert_eq!(
            c.read_u16(cap::EXP + 2) & 0xf,
            2,
            "PCIe capability version 2"
        );
        assert_eq!(
            (c.read_u16(cap::EXP + 2) >> 4) & 0xf,
            0,
            "PCI Express endpoint"
        );
    }

    #[test]
    fn extended_capability_chain_is_well_formed() {
        let c = ConfigSpace::mock_accel(false);
        let mut ptr = 0x100;
        let mut ids = Vec::new();
        while ptr != 0 {
            let header = c.read_u32(ptr);
            assert_eq!(ptr % 4, 0);
            ids.push(header & 0xffff);
            assert_eq!((header >> 16) & 0xf, 1, "version 1");
            let next = (header >> 20) as usize;
            assert!(next == 0 || next > ptr, "next {next:#x} moves forward");
            ptr = next;
        }
        assert_eq!(ids, vec![u32::from(cap::EXT_ID_VSEC)]);
    }

    #[test]
    fn out_of_range_access_neither_panics_nor_writes() {
        let mut c = ConfigSpace::mock_accel(false);
        let before = c.clone();
        c.guest_write(CONFIG_SPACE_SIZE - 1, &[0xff; 8]);
        c.guest_write(usize::MAX, &[0xff; 8]);
        let mut buf = [0xaa; 8];
        c.read(usize::MAX - 2, &mut buf);
        assert_eq!(buf, [0; 8]);
        assert_eq!(c.bytes[..], before.bytes[..]);
    }

    proptest! {
        /// Read-only bits never change through guest writes, whatever is written where.
        #[test]
        fn read_only_bits_never_change(offset in 0usize..CONFIG_SPACE_SIZE,
                                       data in proptest::collection::vec(any::<u8>(), 1..8)) {
            let mut c = ConfigSpace::mock_accel(false);
            let before = c.clone();
            c.guest_write(offset, &data);
            for o in 0..CONFIG_SPACE_SIZE {
                let ro = !(before.writable[o] | before.w1c[o]);
                prop_assert_eq!(c.bytes[o] & ro, before.bytes[o] & ro, "offset {:#x}", o);
            }
        }

        /// W1C bits clear exactly where 1 is written and are never set by the guest.
        #[test]
        fn w1c_bits_clear_only_where_one_is_written(value in any::<u16>(), raised in any::<u16>()) {
            let mut c = ConfigSpace::mock_accel(false);
            c.raise_status_bits(raised);
            let before = c.read_u16(reg::STATUS);
            c.guest_write(reg::STATUS, &value.to_le_bytes());
            let after = c.read_u16(reg::STATUS);
            prop_assert_eq!(after, before & !(value & STATUS_W1C));
        }

        /// Any value written to BAR0 reads back as a 4 KiB-aligned address with type bits 0.
        #[test]
        fn bar0_holds_only_aligned_addresses(value in any::<u32>()) {
            let mut c = ConfigSpace::mock_accel(false);
            c.guest_write(reg::BAR0, &value.to_le_bytes());
            prop_assert_eq!(c.read_u32(reg::BAR0), value & !(BAR0_SIZE - 1));
        }
    }
}
