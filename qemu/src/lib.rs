//! qemu (skeleton).
