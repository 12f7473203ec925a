//! BAR0: the mock-accel register file (4 KiB, little endian; DESIGN.md §3).
//!
//! | offset | width | name | access | meaning |
//! |---|---|---|---|---|
//! | 0x00 | 32 | DEVICE_ID | RO | 0x4d4f434b, "MOCK" |
//! | 0x04 | 32 | REVISION | RO | 0x00010000 (v1.0) |
//! | 0x08 | 128 | UUID | RO | RFC 4122 bytes, or a label's ASCII bytes padded with NUL |
//! | 0x18 | 32 | ID_FORMAT | RO | bit 0: 1 = UUID holds a label, 0 = RFC 4122 UUID; bits 8-15: label length |
//! | 0x1c | 32 | FUNCTION | RO | bit 0: 1 = virtual function; bits 8-15: VF index |
//! | 0x20 | 64 | MEMORY_SIZE | RO | device memory in bytes (default 16 GiB) |
//! | 0x28 | 32 | CAPABILITIES | RO | feature flags (default 0x1) |
//! | 0x2c | 32 | STATUS | RW | 0 free, 1 allocated (any value is stored) |
//! | 0x30 | 32 | ENTROPY | RO | a fresh random value on every read (passphrases) |
//!
//! Every other offset below 4 KiB reads as zero and ignores writes. Accesses are 1, 2, 4 or 8
//! bytes, naturally aligned; an 8-byte access may span two 32-bit registers (QEMU reads BAR0 8
//! bytes at a time). Anything else is refused with an [`AccessError`].

use std::fmt;
use std::str::FromStr;

/// Register offsets.
pub mod reg {
    pub const DEVICE_ID: u64 = 0x00;
    pub const REVISION: u64 = 0x04;
    pub const UUID: u64 = 0x08;
    pub const ID_FORMAT: u64 = 0x18;
    pub const FUNCTION: u64 = 0x1c;
    pub const MEMORY_SIZE: u64 = 0x20;
    pub const CAPABILITIES: u64 = 0x28;
    pub const STATUS: u64 = 0x2c;
    pub const ENTROPY: u64 = 0x30;
}

/// "MOCK" read as a little-endian u32.
pub const DEVICE_ID_MOCK: u32 = 0x4d4f_434b;
/// Register-map revision 1.0.
pub const REVISION: u32 = 0x0001_0000;
/// Default MEMORY_SIZE: 16 GiB.
pub const DEFAULT_MEMORY_SIZE: u64 = 16 << 30;
/// Default CAPABILITIES.
pub const DEFAULT_CAPABILITIES: u32 = 0x1;
/// ID_FORMAT bit 0: the UUID registers hold a label.
pub const ID_FORMAT_LABEL: u32 = 1;
/// Size of the register file.
pub const BAR0_SIZE: u64 = 4096;

/// A short, human-readable help text for `--help`.
pub const REGISTER_MAP_HELP: &str = "\
BAR0 registers (4 KiB, little endian):
  0x00 DEVICE_ID     RO 32  0x4d4f434b \"MOCK\"
  0x04 REVISION      RO 32  0x00010000
  0x08 UUID          RO 128 RFC 4122 bytes, or label bytes padded with NUL
  0x18 ID_FORMAT     RO 32  bit0 1=label 0=UUID; bits 8-15 label length
  0x1c FUNCTION      RO 32  bit0 1=VF; bits 8-15 VF index
  0x20 MEMORY_SIZE   RO 64  bytes (--memory-size)
  0x28 CAPABILITIES  RO 32  (--capabilities)
  0x2c STATUS        RW 32  0 free, 1 allocated
  0x30 ENTROPY       RO 32  fresh random value per read";

/// What `-u` gave: an RFC 4122 UUID or a label of at most 16 printable ASCII bytes. The
/// guest driver prints back exactly this text, using ID_FORMAT to tell the two apart.
#[derive(Clone, PartialEq, Eq)]
pub enum DeviceIdentity {
    /// An RFC 4122 UUID (stored as its 16 bytes, printed in lowercase hyphenated form).
    Uuid([u8; 16]),
    /// A label such as `NODE1-NUMA0-PF` (stored as ASCII, NUL padded).
    Label(String),
}

/// Why a `-u` value was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    #[error("identity is empty: give an RFC 4122 UUID or a label of 1-16 printable ASCII bytes")]
    Empty,
    #[error("label is {0} bytes long; labels hold at most 16 bytes (or give an RFC 4122 UUID)")]
    TooLong(usize),
    #[error("label has a byte that is not printable ASCII at position {0}")]
    NotPrintable(usize),
}

impl FromStr for DeviceIdentity {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(bytes) = parse_uuid(s) {
            return Ok(Self::Uuid(bytes));
        }
        if s.is_empty() {
            return Err(IdentityError::Empty);
        }
        if let Some(pos) = s.bytes().position(|b| !(0x20..0x7f).contains(&b)) {
            return Err(IdentityError::NotPrintable(pos));
        }
        if s.len() > 16 {
            return Err(IdentityError::TooLong(s.len()));
        }
        Ok(Self::Label(s.to_owned()))
    }
}

impl fmt::Display for DeviceIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Label(l) => f.write_str(l),
            Self::Uuid(b) => {
                for (i, byte) in b.iter().enumerate() {
                    if matches!(i, 4 | 6 | 8 | 10) {
                        f.write_str("-")?;
                    }
                    write!(f, "{byte:02x}")?;
                }
                Ok(())
            }
        }
    }
}

impl fmt::Debug for DeviceIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl DeviceIdentity {
    /// The 16 bytes of the UUID registers.
    pub fn register_bytes(&self) -> [u8; 16] {
        match self {
            Self::Uuid(b) => *b,
            Self::Label(l) => {
                let mut b = [0u8; 16];
                b[..l.len()].copy_from_slice(l.as_bytes());
                b
            }
        }
    }

    /// The ID_FORMAT register value.
    pub fn format_register(&self) -> u32 {
        match self {
            Self::Uuid(_) => 0,
            Self::Label(l) => ID_FORMAT_LABEL | ((l.len() as u32) << 8),
        }
    }
}

/// `8-4-4-4-12` hex digits, case-insensitive.
fn parse_uuid(s: &str) -> Option<[u8; 16]> {
    let b = s.as_bytes();
    if b.len() != 36 || [8, 13, 18, 23].iter().any(|&i| b[i] != b'-') {
        return None;
    }
    let hex: Vec<u8> = b.iter().copied().filter(|&c| c != b'-').collect();
    if hex.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, pair) in hex.chunks(2).enumerate() {
        let text = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(text, 16).ok()?;
    }
    Some(out)
}

/// A refused BAR0 access.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AccessError {
    #[error("access of {len} bytes at {offset:#x} is not 1, 2, 4 or 8 bytes")]
    BadSize { offset: u64, len: usize },
    #[error("access of {len} bytes at {offset:#x} is not naturally aligned")]
    Misaligned { offset: u64, len: usize },
    #[error("access of {len} bytes at {offset:#x} is beyond BAR0 (4 KiB)")]
    OutOfRange { offset: u64, len: usize },
}

/// Static configuration of one device's registers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bar0Config {
    pub identity: DeviceIdentity,
    pub memory_size: u64,
    pub capabilities: u32,
    /// `Some(index)` for a virtual function.
    pub vf_index: Option<u8>,
    /// DEVICE_ID register: [`DEVICE_ID_MOCK`] except when testing a driver's refusal path.
    pub device_id: u32,
}

/// The register file's state.
#[derive(Debug, Clone)]
pub struct Bar0 {
    config: Bar0Config,
    status: u32,
}

impl Bar0 {
    /// Registers at power-on (STATUS 0).
    pub fn new(config: Bar0Config) -> Self {
        Self { config, status: 0 }
    }

    /// The static configuration.
    pub fn config(&self) -> &Bar0Config {
        &self.config
    }

    /// STATUS.
    pub fn status(&self) -> u32 {
        self.status
    }

    /// Host-side change of STATUS (the guest sees it on its next read).
    pub fn set_status(&mut self, value: u32) {
        self.status = value;
    }

    /// Back to power-on state.
    pub fn reset(&mut self) {
        self.status = 0;
    }

    /// The value of the 32-bit register at `offset` (a multiple of 4).
    fn register(&self, offset: u64) -> u32 {
        let uuid = self.config.identity.register_bytes();
        let word = |i: usize| u32::from_le_bytes([uuid[i], uuid[i + 1], uuid[i + 2], uuid[i + 3]]);
        match offset {
            reg::DEVICE_ID => self.config.device_id,
            reg::REVISION => REVISION,
            0x08 | 0x0c | 0x10 | 0x14 => word((offset - reg::UUID) as usize),
            reg::ID_FORMAT => self.config.identity.format_register(),
            reg::FUNCTION => match self.config.vf_index {
                Some(i) => 1 | (u32::from(i) << 8),
                None => 0,
            },
            reg::MEMORY_SIZE => self.config.memory_size as u32,
            0x24 => (self.config.memory_size >> 32) as u32,
            reg::CAPABILITIES => self.config.capabilities,
            reg::STATUS => self.status,
            reg::ENTROPY => {
                let mut b = [0u8; 4];
                // The OS RNG does not fail on Linux once booted; a zero read is harmless.
                let _ = getrandom::fill(&mut b);
                u32::from_le_bytes(b)
            }
            _ => 0,
        }
    }

    fn check(offset: u64, len: usize) -> Result<(), AccessError> {
        if !matches!(len, 1 | 2 | 4 | 8) {
            return Err(AccessError::BadSize { offset, len });
        }
        if offset % len as u64 != 0 {
            return Err(AccessError::Misaligned { offset, len });
        }
        match offset.checked_add(len as u64) {
            Some(end) if end <= BAR0_SIZE => Ok(()),
            _ => Err(AccessError::OutOfRange { offset, len }),
        }
    }

    /// A guest read of `data.len()` bytes at `offset`.
    pub fn read(&self, offset: u64, data: &mut [u8]) -> Result<(), AccessError> {
        Self::check(offset, data.len())?;
        let first = offset & !3;
        let mut bytes = [0u8; 12];
        let words = (offset + data.len() as u64 - first).div_ceil(4);
        for w in 0..words {
            let value = self.register(first + 4 * w).to_le_bytes();
            bytes[4 * w as usize..4 * w as usize + 4].copy_from_slice(&value);
        }
        let start = (offset - first) as usize;
        data.copy_from_slice(&bytes[start..start + data.len()]);
        Ok(())
    }

    /// A guest write. Only STATUS is writable; bytes landing elsewhere are ignored.
    /// Returns the new STATUS when the write touched it.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Result<Option<u32>, AccessError> {
        Self::check(offset, data.len())?;
        let mut touched = false;
        let mut status = self.status.to_le_bytes();
        for (i, &byte) in data.iter().enumerate() {
            let o = offset + i as u64;
            if (reg::STATUS..reg::STATUS + 4).contains(&o) {
                status[(o - reg::STATUS) as usize] = byte;
                touched = true;
            }
        }
        if touched {
            self.status = u32::from_le_bytes(status);
            Ok(Some(self.status))
        } else {
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bar(identity: &str) -> Bar0 {
        Bar0::new(Bar0Config {
            identity: identity.parse().expect("valid identity"),
            memory_size: DEFAULT_MEMORY_SIZE,
            capabilities: DEFAULT_CAPABILITIES,
            vf_index: None,
            device_id: DEVICE_ID_MOCK,
        })
    }

    fn read_u32(b: &Bar0, offset: u64) -> u32 {
        let mut d = [0u8; 4];
        b.read(offset, &mut d).expect("aligned read");
        u32::from_le_bytes(d)
    }

    #[test]
    fn device_id_reads_mock_and_revision_1_0() {
        let b = bar("NODE1-NUMA0-PF");
        assert_eq!(read_u32(&b, reg::DEVICE_ID), 0x4d4f_434b);
        assert_eq!(read_u32(&b, reg::REVISION), 0x0001_0000);
    }

    #[test]
    fn label_is_stored_as_ascii_with_format_bit_and_length() {
        let b = bar("NODE1-NUMA0-PF");
        let mut uuid = [0u8; 16];
        for i in 0..4 {
            uuid[4 * i..4 * i + 4].copy_from_slice(&read_u32(&b, 8 + 4 * i as u64).to_le_bytes());
        }
        assert_eq!(&uuid[..14], b"NODE1-NUMA0-PF");
        assert_eq!(&uuid[14..], &[0, 0]);
        assert_eq!(read_u32(&b, reg::ID_FORMAT), 1 | (14 << 8));
    }

    #[test]
    fn rfc4122_uuid_is_stored_as_bytes_and_prints_back_identically() {
        let text = "123e4567-e89b-12d3-a456-426614174000";
        let id: DeviceIdentity = text.parse().expect("uuid");
        assert!(matches!(id, DeviceIdentity::Uuid(_)));
        assert_eq!(id.to_string(), text);
        let b = bar(text);
        assert_eq!(read_u32(&b, reg::ID_FORMAT), 0);
        assert_eq!(
            read_u32(&b, reg::UUID),
            u32::from_le_bytes([0x12, 0x3e, 0x45, 0x67])
        );
    }

    #[test]
    fn identity_rules_refuse_long_empty_and_unprintable_labels() {
        assert_eq!("".parse::<DeviceIdentity>(), Err(IdentityError::Empty));
        assert_eq!(
            "NODE1-NUMA0-VF0-TOOLONG".parse::<DeviceIdentity>(),
            Err(IdentityError::TooLong(23))
        );
        assert_eq!(
            "a\tb".parse::<DeviceIdentity>(),
            Err(IdentityError::NotPrintable(1))
        );
        assert!(
            "0123456789abcdef".parse::<DeviceIdentity>().is_ok(),
            "16 bytes fit"
        );
    }

    #[test]
    fn eight_byte_read_spans_two_registers() {
        let b = bar("X");
        let mut d = [0u8; 8];
        b.read(reg::MEMORY_SIZE, &mut d).expect("8-byte read");
        assert_eq!(u64::from_le_bytes(d), 16 << 30);
        b.read(reg::DEVICE_ID, &mut d).expect("8-byte read");
        assert_eq!(
            u64::from_le_bytes(d),
            u64::from(REVISION) << 32 | u64::from(DEVICE_ID_MOCK)
        );
    }

    #[test]
    fn status_is_the_only_writable_register() {
        let mut b = bar("X");
        assert_eq!(b.write(reg::STATUS, &1u32.to_le_bytes()), Ok(Some(1)));
        assert_eq!(read_u32(&b, reg::STATUS), 1);
        assert_eq!(b.write(reg::DEVICE_ID, &0u32.to_le_bytes()), Ok(None));
        assert_eq!(read_u32(&b, reg::DEVICE_ID), DEVICE_ID_MOCK);
        // An 8-byte write over CAPABILITIES+STATUS changes only STATUS.
        assert_eq!(
            b.write(reg::CAPABILITIES, &(7u64 << 32 | 0xffff).to_le_bytes()),
            Ok(Some(7))
        );
        assert_eq!(read_u32(&b, reg::CAPABILITIES), DEFAULT_CAPABILITIES);
        b.reset();
        assert_eq!(b.status(), 0);
    }

    #[test]
    fn misaligned_oversized_and_out_of_range_accesses_are_refused() {
        let mut b = bar("X");
        let mut d = [0u8; 4];
        assert!(matches!(
            b.read(0x2e, &mut d),
            Err(AccessError::Misaligned { .. })
        ));
        let mut three = [0u8; 3];
        assert!(matches!(
            b.read(0, &mut three),
            Err(AccessError::BadSize { .. })
        ));
        assert!(matches!(
            b.read(4096, &mut d),
            Err(AccessError::OutOfRange { .. })
        ));
        assert!(matches!(
            b.read(u64::MAX - 3, &mut d),
            Err(AccessError::OutOfRange { .. })
        ));
        assert!(matches!(
            b.write(0x2d, &[1, 0]),
            Err(AccessError::Misaligned { .. })
        ));
        assert_eq!(b.status(), 0);
    }

    #[test]
    fn entropy_register_changes_between_reads() {
        let b = bar("X");
        let reads: std::collections::HashSet<u32> =
            (0..8).map(|_| read_u32(&b, reg::ENTROPY)).collect();
        assert!(reads.len() > 1, "8 reads gave one value: {reads:?}");
    }

    #[test]
    fn vf_function_register_carries_index() {
        let mut cfg = bar("X").config().clone();
        cfg.vf_index = Some(1);
        assert_eq!(read_u32(&Bar0::new(cfg), reg::FUNCTION), 1 | (1 << 8));
        assert_eq!(read_u32(&bar("X"), reg::FUNCTION), 0);
    }

    #[test]
    fn device_id_register_follows_config_and_stays_read_only() {
        let mut cfg = bar("X").config().clone();
        cfg.device_id = 0x4241_4421;
        let mut b = Bar0::new(cfg);
        assert_eq!(read_u32(&b, reg::DEVICE_ID), 0x4241_4421);
        assert_eq!(
            b.write(reg::DEVICE_ID, &DEVICE_ID_MOCK.to_le_bytes()),
            Ok(None)
        );
        assert_eq!(read_u32(&b, reg::DEVICE_ID), 0x4241_4421);
    }

    #[test]
    fn unassigned_offsets_read_zero() {
        let b = bar("X");
        assert_eq!(read_u32(&b, 0x800), 0);
        assert_eq!(read_u32(&b, 0xffc), 0);
    }
}
