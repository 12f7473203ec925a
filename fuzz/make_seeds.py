#!/usr/bin/env python3
"""Write the small hand-made seed corpus for the fuzz targets (host byte order = little endian).

Run from this directory: ./make_seeds.py. Seeds are committed; rerun only to change them.
"""
import json
import os
import struct

def msg(cmd, body=b"", msg_id=1, flags=0):
    return struct.pack("<HHII I", msg_id, cmd, 16 + len(body), flags, 0) + body

QEMU_CAPS = json.dumps({"capabilities": {"migration": {"pgsize": 4096, "max_bitmap_size": 268435456},
    "max_msg_fds": 16, "max_data_xfer_size": 1048576, "pgsizes": 4096, "max_dma_maps": 65535,
    "write_multiple": True}}, separators=(",", ":")).encode() + b"\0"

def version(major=0, minor=0, caps=QEMU_CAPS):
    return msg(1, struct.pack("<HH", major, minor) + caps)

def rw(cmd, region, offset, count, data=b"", flags=0, msg_id=1):
    return msg(cmd, struct.pack("<QII", offset, region, count) + data, msg_id, flags)

NO_REPLY = 0x10
seeds = {
    "device_info": msg(4, struct.pack("<IIII", 16, 0, 0, 0)),
    "region_info_small_argsz": msg(5, struct.pack("<IIIIQQ", 32, 0, 1, 0, 0, 0)),
    "region_info_full_argsz": msg(5, struct.pack("<IIIIQQ", 64, 0, 1, 0, 0, 0)),
    "region_io_fds": msg(6, struct.pack("<IIII", 16, 0, 0, 0)),
    "irq_info_err": msg(7, struct.pack("<IIII", 16, 0, 3, 0)),
    "set_irqs_mask_bool": msg(8, struct.pack("<IIIII", 22, 0x8 | 0x2, 2, 0, 2) + b"\1\0"),
    "set_irqs_disable": msg(8, struct.pack("<IIIII", 20, 0x20 | 0x1, 2, 0, 0)),
    "region_read_bar0": rw(9, 0, 0, 4),
    "region_read_config": rw(9, 7, 0, 64),
    "region_write_status": rw(10, 0, 0x2c, 4, struct.pack("<I", 1)),
    "posted_write_then_read": rw(10, 0, 0x2c, 4, struct.pack("<I", 1), NO_REPLY) + rw(9, 0, 0x2c, 4, msg_id=2),
    "write_multi": msg(15, struct.pack("<Q", 2) + struct.pack("<QII8s", 0x40, 0, 4, b"\1\2\3\4")
                        + struct.pack("<QII8s", 0x10, 7, 8, b"ABCDEFGH")),
    "dma_map_no_fd": msg(2, struct.pack("<IIQQQ", 32, 3, 0, 0x100000, 0x2000)),
    "dma_map_unmap": msg(2, struct.pack("<IIQQQ", 32, 3, 0, 0x100000, 0x2000))
                     + msg(3, struct.pack("<IIQQ", 24, 0, 0x100000, 0x2000), msg_id=2),
    "dma_unmap_all": msg(3, struct.pack("<IIQQ", 24, 2, 0, 0)),
    "dma_fetch_doorbell": msg(2, struct.pack("<IIQQQ", 32, 3, 0, 0x100000, 0x2000))
                          + rw(10, 0, 0x18, 8, struct.pack("<Q", 0x100010), msg_id=2),
    "reset": msg(13),
    "device_feature": msg(16, struct.pack("<II", 8, 1 | (1 << 16))),
    "unknown_command": msg(0x7777, b"junk"),
    "huge_read_count": rw(9, 0, 0, 0xFFFFFFFF),
    "overflowing_offset": rw(9, 0, 0xFFFFFFFFFFFFFFFE, 4),
    "bad_header_size": struct.pack("<HHII I", 1, 9, 8, 0, 0) + b"\0" * 8,
    "second_version": version(),
}

parse_seeds = {
    "version_qemu": version(),
    "version_0_1": version(0, 1),
    "version_no_json": msg(1, struct.pack("<HH", 0, 0)),
    "version_unterminated": msg(1, struct.pack("<HH", 0, 0) + b"{}"),
    "dma_write_spec_layout": msg(12, struct.pack("<QQ", 0x1000, 3) + b"\1\2\3"),
    "dma_read_spec_layout": msg(11, struct.pack("<QQ", 0x1000, 3)),
    "mig_data_write": msg(18, struct.pack("<II", 12, 4) + b"abcd"),
}
parse_seeds.update(seeds)

for target, table in (("server_dispatch", seeds), ("wire_parse", parse_seeds)):
    d = os.path.join("corpus", target)
    os.makedirs(d, exist_ok=True)
    for name, data in table.items():
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)
    print(f"{target}: {len(table)} seeds")
