/* SPDX-License-Identifier: (GPL-2.0 WITH Linux-syscall-note) OR Apache-2.0 */
/*
 * Userspace ABI of the mock_accel guest driver (/dev/mockN).
 * The Rust crate mock-accel-uapi (uapi/src/lib.rs) holds the same values and its tests
 * check this header and the kernel module against them.
 */
#ifndef MOCK_ACCEL_H
#define MOCK_ACCEL_H

#include <linux/ioctl.h>
#include <linux/types.h>

#define MOCK_ACCEL_IOC_MAGIC 0xE5
#define MOCK_ACCEL_PASSPHRASE_MIN_WORDS 1
#define MOCK_ACCEL_PASSPHRASE_MAX_WORDS 12
#define MOCK_ACCEL_PASSPHRASE_TEXT_LEN 128

struct mock_accel_passphrase {
	__u32 words; /* in: 1..12 */
	__u32 len;   /* out: bytes of text before the NUL */
	char text[MOCK_ACCEL_PASSPHRASE_TEXT_LEN]; /* out: words joined by '-' */
};

/* Read the STATUS register (BAR0 0x2C): 0x8004e501 */
#define MOCK_ACCEL_IOC_STATUS _IOR(MOCK_ACCEL_IOC_MAGIC, 1, __u32)
/* Generate a passphrase; EINVAL outside 1..12 words, ENODATA without a word list: 0xc088e502 */
#define MOCK_ACCEL_IOC_PASSPHRASE _IOWR(MOCK_ACCEL_IOC_MAGIC, 2, struct mock_accel_passphrase)

#endif /* MOCK_ACCEL_H */
