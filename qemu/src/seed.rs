//! cloud-init NoCloud seeds: `user-data` and `meta-data` in a small ISO 9660 image labelled
//! `cidata`, written in pure Rust (the provisioned rootfs has no `genisoimage`, `xorriso` or
//! `mkfs.vfat`).
//!
//! The image is plain ISO 9660 (no Rock Ridge, no Joliet): one root directory holding
//! `USER-DATA;1` and `META-DATA;1`. Linux's isofs shows them as `user-data` and `meta-data`
//! (its default `map=normal` lowercases names and drops the `;1` version), and blkid reports
//! the volume label `cidata`, which is what cloud-init's NoCloud data source looks for.
//!
//! ```
//! let iso = qemu::seed::nocloud_iso(&qemu::seed::SeedConfig {
//!     hostname: "node1".into(),
//!     user: "mock".into(),
//!     ssh_authorized_keys: vec!["ssh-ed25519 AAAA... me@host".into()],
//! });
//! assert_eq!(&iso[0x8001..0x8006], b"CD001");
//! ```

/// ISO 9660 logical block (sector) size.
const SECTOR: usize = 2048;
/// Sector of the primary volume descriptor (after the 32 KiB system area).
const PVD_SECTOR: usize = 16;
const TERMINATOR_SECTOR: usize = 17;
const PATH_TABLE_L_SECTOR: usize = 18;
const PATH_TABLE_M_SECTOR: usize = 19;
const ROOT_DIR_SECTOR: usize = 20;
const FIRST_FILE_SECTOR: usize = 21;
/// Volume label cloud-init's NoCloud data source searches for.
pub const VOLUME_LABEL: &str = "cidata";

/// What the guest's cloud-init gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedConfig {
    /// `local-hostname` (also the instance id's suffix).
    pub hostname: String,
    /// User created with passwordless sudo and the SSH keys below.
    pub user: String,
    /// Lines of `authorized_keys`.
    pub ssh_authorized_keys: Vec<String>,
}

impl SeedConfig {
    /// `#cloud-config` user data (JSON strings are valid YAML scalars, so values are quoted
    /// with serde_json).
    pub fn user_data(&self) -> String {
        let q = |s: &str| serde_json::to_string(s).unwrap_or_default();
        let mut out = String::from("#cloud-config\n");
        out.push_str(&format!("hostname: {}\n", q(&self.hostname)));
        out.push_str("ssh_pwauth: false\n");
        out.push_str("users:\n");
        out.push_str(&format!("  - name: {}\n", q(&self.user)));
        out.push_str("    sudo: \"ALL=(ALL) NOPASSWD:ALL\"\n");
        out.push_str("    shell: /bin/bash\n");
        out.push_str("    lock_passwd: true\n");
        if !self.ssh_authorized_keys.is_empty() {
            out.push_str("    ssh_authorized_keys:\n");
            for key in &self.ssh_authorized_keys {
                out.push_str(&format!("      - {}\n", q(key.trim())));
            }
        }
        out
    }

    /// NoCloud `meta-data`.
    pub fn meta_data(&self) -> String {
        format!(
            "instance-id: mock-accel-{}\nlocal-hostname: {}\n",
            self.hostname, self.hostname
        )
    }
}

/// The NoCloud seed image for `config`.
pub fn nocloud_iso(config: &SeedConfig) -> Vec<u8> {
    iso9660(
        VOLUME_LABEL,
        &[
            ("META-DATA", config.meta_data().as_bytes()),
            ("USER-DATA", config.user_data().as_bytes()),
        ],
    )
}

/// A single-directory ISO 9660 image. `files` must be sorted by name (ISO 9660 orders
/// directory records), names at most 30 bytes.
fn iso9660(volume_id: &str, files: &[(&str, &[u8])]) -> Vec<u8> {
    let sectors_of = |len: usize| len.div_ceil(SECTOR).max(1);
    let mut extents = Vec::new();
    let mut next = FIRST_FILE_SECTOR;
    for (_, data) in files {
        extents.push(next);
        next += sectors_of(data.len());
    }
    let total_sectors = next;
    let mut image = vec![0u8; total_sectors * SECTOR];

    // Root directory: ".", "..", then the files.
    let mut root = Vec::new();
    root.extend(dir_record(&[0], ROOT_DIR_SECTOR, SECTOR, true));
    root.extend(dir_record(&[1], ROOT_DIR_SECTOR, SECTOR, true));
    for ((name, data), extent) in files.iter().zip(&extents) {
        let id = format!("{name};1");
        root.extend(dir_record(id.as_bytes(), *extent, data.len(), false));
    }
    put(&mut image, ROOT_DIR_SECTOR * SECTOR, &root);
    for ((_, data), extent) in files.iter().zip(&extents) {
        put(&mut image, extent * SECTOR, data);
    }

    // Path tables: just the root directory (name 0x00, parent 1), little and big endian.
    let mut path_l = vec![1u8, 0];
    path_l.extend(u32_le(ROOT_DIR_SECTOR));
    path_l.extend(1u16.to_le_bytes());
    path_l.extend([0, 0]);
    let mut path_m = vec![1u8, 0];
    path_m.extend(u32_be(ROOT_DIR_SECTOR));
    path_m.extend(1u16.to_be_bytes());
    path_m.extend([0, 0]);
    put(&mut image, PATH_TABLE_L_SECTOR * SECTOR, &path_l);
    put(&mut image, PATH_TABLE_M_SECTOR * SECTOR, &path_m);

    // Primary volume descriptor (ECMA-119 8.4).
    let mut pvd = vec![0u8; SECTOR];
    pvd[0] = 1;
    pvd[1..6].copy_from_slice(b"CD001");
    pvd[6] = 1;
    pvd[8..40].copy_from_slice(&padded("LINUX", 32));
    pvd[40..72].copy_from_slice(&padded(volume_id, 32));
    pvd[80..88].copy_from_slice(&both32(total_sectors));
    pvd[120..124].copy_from_slice(&both16(1));
    pvd[124..128].copy_from_slice(&both16(1));
    pvd[128..132].copy_from_slice(&both16(SECTOR as u16));
    pvd[132..140].copy_from_slice(&both32(path_l.len()));
    pvd[140..144].copy_from_slice(&u32_le(PATH_TABLE_L_SECTOR));
    pvd[148..152].copy_from_slice(&u32_be(PATH_TABLE_M_SECTOR));
    pvd[156..190].copy_from_slice(&dir_record(&[0], ROOT_DIR_SECTOR, SECTOR, true));
    for range in [
        190..318,
        318..446,
        446..574,
        574..702,
        702..739,
        739..776,
        776..813,
    ] {
        pvd[range].fill(b' ');
    }
    // Creation, modification, expiration, effective dates: fixed, so images are reproducible.
    for start in [813, 830] {
        pvd[start..start + 16].copy_from_slice(b"2025010100000000");
    }
    for start in [847, 864] {
        pvd[start..start + 16].copy_from_slice(b"0000000000000000");
    }
    pvd[881] = 1;
    put(&mut image, PVD_SECTOR * SECTOR, &pvd);

    // Volume descriptor set terminator.
    let mut term = vec![0u8; 7];
    term[0] = 255;
    term[1..6].copy_from_slice(b"CD001");
    term[6] = 1;
    put(&mut image, TERMINATOR_SECTOR * SECTOR, &term);
    image
}

/// A directory record (ECMA-119 9.1), padded to an even length.
fn dir_record(id: &[u8], extent: usize, len: usize, directory: bool) -> Vec<u8> {
    let mut r = vec![0u8; 33];
    r[2..10].copy_from_slice(&both32(extent));
    r[10..18].copy_from_slice(&both32(len));
    // 2025-01-01 00:00:00 UTC.
    r[18..25].copy_from_slice(&[125, 1, 1, 0, 0, 0, 0]);
    r[25] = if directory { 2 } else { 0 };
    r[28..32].copy_from_slice(&both16(1));
    r[32] = id.len() as u8;
    r.extend_from_slice(id);
    if r.len() % 2 == 1 {
        r.push(0);
    }
    r[0] = r.len() as u8;
    r
}

fn put(image: &mut [u8], at: usize, data: &[u8]) {
    image[at..at + data.len()].copy_from_slice(data);
}

fn padded(text: &str, len: usize) -> Vec<u8> {
    let mut v: Vec<u8> = text.bytes().take(len).collect();
    v.resize(len, b' ');
    v
}

fn u32_le(v: usize) -> [u8; 4] {
    (v as u32).to_le_bytes()
}

fn u32_be(v: usize) -> [u8; 4] {
    (v as u32).to_be_bytes()
}

fn both32(v: usize) -> [u8; 8] {
    let mut out = [0u8; 8];
    out[..4].copy_from_slice(&u32_le(v));
    out[4..].copy_from_slice(&u32_be(v));
    out
}

fn both16(v: u16) -> [u8; 4] {
    let mut out = [0u8; 4];
    out[..2].copy_from_slice(&v.to_le_bytes());
    out[2..].copy_from_slice(&v.to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> SeedConfig {
        SeedConfig {
            hostname: "node1".into(),
            user: "mock".into(),
            ssh_authorized_keys: vec!["ssh-ed25519 AAAAC3Nza key: with \"quotes\"".into()],
        }
    }

    /// Read a file back the way a reader does: PVD -> root record -> directory -> extent.
    fn read_file(iso: &[u8], name: &str) -> Option<Vec<u8>> {
        let pvd = &iso[PVD_SECTOR * SECTOR..];
        let root_extent = u32::from_le_bytes(pvd[158..162].try_into().ok()?) as usize;
        let root_len = u32::from_le_bytes(pvd[166..170].try_into().ok()?) as usize;
        let dir = &iso[root_extent * SECTOR..root_extent * SECTOR + root_len];
        let mut at = 0;
        while at < dir.len() && dir[at] != 0 {
            let r = &dir[at..at + dir[at] as usize];
            let id = &r[33..33 + r[32] as usize];
            if id == format!("{name};1").as_bytes() {
                let extent = u32::from_le_bytes(r[2..6].try_into().ok()?) as usize;
                let len = u32::from_le_bytes(r[10..14].try_into().ok()?) as usize;
                return Some(iso[extent * SECTOR..extent * SECTOR + len].to_vec());
            }
            at += r.len();
        }
        None
    }

    #[test]
    fn seed_holds_user_data_and_meta_data_under_the_cidata_label() {
        let iso = nocloud_iso(&config());
        assert_eq!(iso.len() % SECTOR, 0);
        assert_eq!(
            &iso[PVD_SECTOR * SECTOR + 1..PVD_SECTOR * SECTOR + 6],
            b"CD001"
        );
        assert_eq!(
            &iso[PVD_SECTOR * SECTOR + 40..PVD_SECTOR * SECTOR + 46],
            b"cidata"
        );
        assert_eq!(iso[TERMINATOR_SECTOR * SECTOR], 255);
        let user = read_file(&iso, "USER-DATA").expect("user-data");
        assert_eq!(user, config().user_data().as_bytes());
        let meta = read_file(&iso, "META-DATA").expect("meta-data");
        assert!(String::from_utf8_lossy(&meta).contains("local-hostname: node1"));
    }

    #[test]
    fn volume_size_matches_the_image() {
        let iso = nocloud_iso(&config());
        let pvd = &iso[PVD_SECTOR * SECTOR..];
        let sectors = u32::from_le_bytes([pvd[80], pvd[81], pvd[82], pvd[83]]) as usize;
        assert_eq!(sectors * SECTOR, iso.len());
        assert_eq!(
            u32::from_be_bytes([pvd[84], pvd[85], pvd[86], pvd[87]]) as usize,
            sectors
        );
    }

    #[test]
    fn user_data_quotes_keys_and_grants_sudo() {
        let text = config().user_data();
        assert!(text.starts_with("#cloud-config\n"));
        assert!(text.contains("- name: \"mock\""));
        assert!(text.contains("\"ssh-ed25519 AAAAC3Nza key: with \\\"quotes\\\"\""));
        assert!(text.contains("NOPASSWD:ALL"));
    }
}
