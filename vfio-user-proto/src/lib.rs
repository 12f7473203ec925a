//! vfio-user protocol crate (skeleton: see `device` for the device-facing contract).
pub mod device;
