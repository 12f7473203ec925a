//! Host-side evidence of DMA windows in a device server process, from `/proc/PID/maps`.
//!
//! QEMU names the memfds of `memory-backend-memfd` objects `memory-backend-memfd`; a vfio-user
//! server that received them with DMA_MAP and mapped them shows mappings of
//! `/memfd:memory-backend-memfd (deleted)`. This works for any server process (no cooperation
//! from the device needed): which guest RAM files it maps, and which byte ranges of each.

use std::collections::BTreeMap;

/// The memfd name QEMU gives guest RAM of a `memory-backend-memfd`.
pub const GUEST_RAM_MEMFD: &str = "/memfd:memory-backend-memfd";

/// Byte ranges (file offsets, merged) that a process maps of each guest RAM memfd, keyed by
/// inode.
pub fn guest_ram_mappings(pid: u32) -> std::io::Result<BTreeMap<u64, Vec<(u64, u64)>>> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))?;
    Ok(parse_guest_ram_mappings(&maps))
}

/// [`guest_ram_mappings`] on the text of a maps file.
pub fn parse_guest_ram_mappings(maps: &str) -> BTreeMap<u64, Vec<(u64, u64)>> {
    let mut by_inode: BTreeMap<u64, Vec<(u64, u64)>> = BTreeMap::new();
    for line in maps.lines() {
        // start-end perms offset dev inode [path]
        let mut fields = line.split_whitespace();
        let (Some(range), Some(_perms), Some(offset), Some(_dev), Some(inode)) = (
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
        ) else {
            continue;
        };
        let path: Vec<&str> = fields.collect();
        if path.first() != Some(&GUEST_RAM_MEMFD) {
            continue;
        }
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let parse = |s: &str| u64::from_str_radix(s, 16).ok();
        let (Some(start), Some(end), Some(offset), Ok(inode)) = (
            parse(start),
            parse(end),
            parse(offset),
            inode.parse::<u64>(),
        ) else {
            continue;
        };
        let Some(len) = end.checked_sub(start) else {
            continue;
        };
        by_inode
            .entry(inode)
            .or_default()
            .push((offset, offset.saturating_add(len)));
    }
    for ranges in by_inode.values_mut() {
        ranges.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::new();
        for &(s, e) in ranges.iter() {
            match merged.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                _ => merged.push((s, e)),
            }
        }
        *ranges = merged;
    }
    by_inode
}

/// Sizes of the guest RAM memfds a process maps completely (one contiguous range from offset
/// 0), sorted; `Err` names a memfd that is only partly mapped.
pub fn fully_mapped_guest_ram(
    mappings: &BTreeMap<u64, Vec<(u64, u64)>>,
) -> Result<Vec<u64>, String> {
    let mut sizes = Vec::new();
    for (inode, ranges) in mappings {
        match ranges.as_slice() {
            [(0, end)] => sizes.push(*end),
            other => return Err(format!("memfd inode {inode} is partly mapped: {other:x?}")),
        }
    }
    sizes.sort_unstable();
    Ok(sizes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
7fdc20100000-7fdc28000000 rw-s 00100000 00:01 730078                     /memfd:memory-backend-memfd (deleted)
7fdc2c000000-7fdc30000000 rw-s 00000000 00:01 730079                     /memfd:memory-backend-memfd (deleted)
7fdc34bfa000-7fdc34c0a000 r--s 000f0000 00:01 730078                     /memfd:memory-backend-memfd (deleted)
7fdc34c0a000-7fdc34c12000 rw-s 000e8000 00:01 730078                     /memfd:memory-backend-memfd (deleted)
7fdc34c12000-7fdc34c37000 r--s 000c3000 00:01 730078                     /memfd:memory-backend-memfd (deleted)
7fdc34c37000-7fdc34cfa000 rw-s 00000000 00:01 730078                     /memfd:memory-backend-memfd (deleted)
7fdc34d00000-7fdc34d01000 rw-s 00000000 00:01 730090                     /memfd:toy-bar1 (deleted)
55d0c0a00000-55d0c0a20000 r--p 00000000 08:01 123                        /usr/bin/device
";

    #[test]
    fn pieces_of_one_memfd_merge_into_its_file_range() {
        let m = parse_guest_ram_mappings(MAPS);
        assert_eq!(m.len(), 2, "only QEMU guest RAM memfds count");
        assert_eq!(m[&730078], [(0, 128 << 20)]);
        assert_eq!(m[&730079], [(0, 64 << 20)]);
        assert_eq!(fully_mapped_guest_ram(&m), Ok(vec![64 << 20, 128 << 20]));
    }

    #[test]
    fn a_hole_in_a_memfd_is_reported() {
        let maps = "7f0000000000-7f0000100000 rw-s 00000000 00:01 5 /memfd:memory-backend-memfd (deleted)\n\
                    7f0000200000-7f0000300000 rw-s 00200000 00:01 5 /memfd:memory-backend-memfd (deleted)\n";
        let m = parse_guest_ram_mappings(maps);
        assert!(fully_mapped_guest_ram(&m).is_err());
    }

    #[test]
    fn garbage_lines_are_ignored() {
        assert!(parse_guest_ram_mappings(
            "nonsense\n-\n zz-yy rw-s q 0 x /memfd:memory-backend-memfd\n"
        )
        .is_empty());
    }
}
