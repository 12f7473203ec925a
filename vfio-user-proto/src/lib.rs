//! An async (tokio), pure-Rust implementation of the
//! [vfio-user](https://www.qemu.org/docs/master/interop/vfio-user.html) protocol: wire types,
//! fd passing, a server for your [`Device`] model and a client.
//!
//! QEMU's `vfio-user-pci` (QEMU >= 10.1) connects to the server's Unix socket and presents
//! the device to its guest as a PCI function. The server handles everything protocol-side —
//! version negotiation, DMA windows (mmapped when the client passes a file descriptor,
//! message-based otherwise), interrupt eventfds, region capability chains, posted writes —
//! and calls the [`Device`] only for the questions and accesses that are the device's own.
//!
//! Layers, lowest first: [`wire`] (zerocopy structs, no I/O, no unsafe), [`transport`]
//! (framing over a tokio `UnixStream`), [`negotiate`], [`dispatch`] (one command in, one
//! reply out, no I/O; the fuzz target drives it), [`server`] and [`client`]. The only
//! `unsafe` lives in the private `sys` module (adopting received fds, mmap).
//!
//! # Example
//!
//! A server with the bundled toy device, and a client reading a register:
//!
//! ```
//! use vfio_user_proto::{testing::ToyDevice, Client, Server};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let sock = dir.path().join("toy.sock");
//! let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//! let server = tokio::spawn(Server::new(ToyDevice::new()).serve_until(sock.clone(), async {
//!     let _ = stopped.await;
//! }));
//! # while !sock.exists() { tokio::task::yield_now().await; }
//!
//! let mut client = Client::connect(&sock).await?; // VERSION 0.0 + capabilities
//! let bar0 = 0;
//! assert_eq!(client.read_u32(bar0, 0).await?, ToyDevice::MAGIC);
//! client.region_write(bar0, 0x2c, &1u32.to_le_bytes()).await?;
//! assert_eq!(client.read_u32(bar0, 0x2c).await?, 1);
//! // Out of range: an errno reply, not a crash.
//! assert!(client.region_read(bar0, 4095, 4).await.is_err());
//!
//! let _ = stop.send(());
//! server.await??; // socket file removed
//! assert!(!sock.exists());
//! # Ok(())
//! # }
//! ```
//!
//! In a binary use [`Server::serve`], which stops on SIGINT/SIGTERM.
//!
//! # Interoperability notes (verified with QEMU 11.1.3, 2026-11-23)
//!
//! The `minimal_pci` example served a PCIe function that QEMU's `vfio-user-pci` realized
//! (VERSION with QEMU's capabilities, DMA_MAP with memfd descriptors for guest RAM and without
//! for ROMs, REGION_INFO, IRQ setup), SeaBIOS assigned BAR0, the monitor's `xp` read BAR0
//! through the socket, a second and third QEMU connected after the first quit, and SIGTERM
//! removed the socket. Message-based DMA: QEMU 11.1.3 accepts DMA_READ/DMA_WRITE only in
//! the spec layout (`u64 address; u64 count`, data at offset 32; see
//! [`wire::DmaRwLayout`]); the older 32-bit-count layout is refused with `E2BIG`.
//!
//! Other facts the server follows: QEMU receives replies into its request buffer, so the
//! VERSION reply is never longer than the request; REGION_INFO with too small an `argsz`
//! reports the needed size with CAPS clear and no fd (QEMU rejects CAPS with `cap_offset`
//! 0); posted writes (`no_reply`) never get a reply, even on error.
//!
//! # What it does not do
//!
//! Live migration (DEVICE_FEATURE, MIG_DATA_*: `ENOTSUP`), dirty page logging, ioeventfds
//! (GET_REGION_IO_FDS reports none), twin-socket mode, several clients at once.

pub mod client;
pub mod device;
pub mod dispatch;
pub mod dma;
pub mod fuzzing;
pub mod irq;
pub mod negotiate;
pub mod server;
mod sys;
pub mod testing;
pub mod transport;
pub mod wire;

pub use client::{Client, ClientError};
pub use device::{
    Device, DeviceContext, DeviceFlags, DeviceInfo, Errno, IrqInfo, IrqInfoFlags, RegionFlags,
    RegionInfo, RegionMmap, SparseArea,
};
pub use dma::{DmaError, DmaHandle, DmaMapping};
pub use irq::{IrqError, IrqHandle};
pub use negotiate::Caps;
pub use server::{Server, ServerConfig, ServerError};
