//! The mock-accel PCIe accelerator, served to QEMU's `vfio-user-pci` over vfio-user.
//!
//! A mock-accel function is vendor 0x1de5, device 0x0001 (PF) or 0x0002 (VF), class 0x12
//! (processing accelerator), with a 4 KiB PCI Express config space ([`config_space`]) and a
//! 4 KiB BAR0 register file ([`bar0`]: "MOCK", revision, UUID or label, memory size,
//! capabilities, STATUS, entropy). The host observes and steers each device through a control
//! socket next to its vfio-user socket ([`control`]); one process can serve many devices
//! ([`topology`]).
//!
//! # Example
//!
//! Serve a device in-process and read it back with the vfio-user client:
//!
//! ```
//! use device::{bar0::Bar0Config, MockAccel};
//! use vfio_user_proto::{Client, Server};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let sock = dir.path().join("mock0.sock");
//! let device = MockAccel::new(Bar0Config {
//!     identity: "NODE1-NUMA0-PF".parse()?,
//!     memory_size: 16 << 30,
//!     capabilities: 1,
//!     vf_index: None,
//!     device_id: device::bar0::DEVICE_ID_MOCK,
//! });
//! let host = device.handle();
//! let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//! let server = tokio::spawn(Server::new(device).serve_until(sock.clone(), async {
//!     let _ = stopped.await;
//! }));
//! # while !sock.exists() { tokio::task::yield_now().await; }
//! let mut client = Client::connect(&sock).await?;
//! assert_eq!(client.read_u32(0, 0x00).await?, 0x4d4f_434b); // "MOCK"
//! client.region_write(0, 0x2c, &1u32.to_le_bytes()).await?; // STATUS = allocated
//! assert_eq!(host.snapshot().status, 1); // seen from the host, not through the guest
//! let _ = stop.send(());
//! server.await??;
//! # Ok(())
//! # }
//! ```
//!
//! What it does not do: DMA or interrupts of its own (the protocol crate supports both), MSI
//! or MSI-X, or real SR-IOV (VFs are separate functions; DESIGN.md §5).

pub mod bar0;
pub mod config_space;
pub mod control;
pub mod fuzzing;
pub mod model;
pub mod topology;

pub use model::{DeviceHandle, MockAccel, Snapshot};
