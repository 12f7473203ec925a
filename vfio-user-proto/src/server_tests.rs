//! Our client against our server over a real Unix socket, covering every command, plus
//! malformed input. Each malformed case must end in an errno reply or a clean close, after
//! which a fresh client is served.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use zerocopy::IntoBytes;

use crate::client::Client;
use crate::testing::{ToyDevice, ToyState};
use crate::wire::{self, irq_index, Command, DmaMapFlags, Header, IrqSetFlags};
use crate::{Server, ServerError};

const QEMU_JSON: &str = r#"{"capabilities":{"migration":{"pgsize":4096,"max_bitmap_size":268435456},"max_msg_fds":16,"max_data_xfer_size":1048576,"pgsizes":4096,"max_dma_maps":65535,"write_multiple":true}}"#;

struct Harness {
    _dir: tempfile::TempDir,
    sock: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<ToyDevice, ServerError>>,
    state: Arc<Mutex<ToyState>>,
}

impl Harness {
    async fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("dev.sock");
        let dev = ToyDevice::new();
        let state = dev.state.clone();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(Server::new(dev).serve_until(sock.clone(), async {
            let _ = rx.await;
        }));
        for _ in 0..400 {
            if sock.exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(sock.exists(), "server did not create its socket");
        Self {
            _dir: dir,
            sock,
            stop: Some(tx),
            task,
            state,
        }
    }

    async fn client(&self) -> Client {
        Client::connect(&self.sock)
            .await
            .expect("connect + negotiate")
    }

    fn state(&self) -> std::sync::MutexGuard<'_, ToyState> {
        self.state.lock().expect("state lock")
    }

    /// A brand-new client negotiates and reads BAR0 correctly.
    async fn assert_serves_new_client(&self) {
        let mut c = tokio::time::timeout(Duration::from_secs(5), self.client())
            .await
            .expect("server accepts a new client in time");
        assert_eq!(
            c.read_u32(0, 0).await.expect("read magic"),
            ToyDevice::MAGIC
        );
    }

    async fn stop(mut self) -> ToyDevice {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let dev = tokio::time::timeout(Duration::from_secs(5), &mut self.task)
            .await
            .expect("server stops in time")
            .expect("server task")
            .expect("server result");
        assert!(!self.sock.exists(), "socket removed on shutdown");
        dev
    }
}

fn errno_of<T: std::fmt::Debug>(r: Result<T, crate::ClientError>) -> Errno {
    r.expect_err("expected an error reply")
        .errno()
        .expect("an errno reply, not a transport failure")
}

fn memfd(len: i64) -> OwnedFd {
    let fd = memfd_create(c"guest-ram", MemFdCreateFlag::MFD_CLOEXEC).expect("memfd");
    nix::unistd::ftruncate(&fd, len).expect("ftruncate");
    fd
}

/// A pipe whose write end we hand to the server; EOF on the read end proves the server
/// closed its copy.
fn pipe_probe() -> (OwnedFd, OwnedFd) {
    nix::unistd::pipe().expect("pipe")
}

async fn assert_closed_by_peer(read_end: OwnedFd) {
    let file = std::fs::File::from(read_end);
    let res = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::task::spawn_blocking(move || {
            use std::io::Read;
            let mut f = file;
            let mut b = [0u8; 1];
            f.read(&mut b)
        }),
    )
    .await
    .expect("server closes the descriptor in time")
    .expect("join");
    assert_eq!(res.expect("read"), 0, "EOF: every write end closed");
}

#[tokio::test]
async fn socket_is_mode_0600_and_removed_on_shutdown() {
    let h = Harness::start().await;
    let mode = std::fs::metadata(&h.sock)
        .expect("stat")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    h.stop().await;
}

#[tokio::test]
async fn version_0_0_with_qemu_caps_gets_minor_0_and_short_enough_json() {
    let h = Harness::start().await;
    let mut c = Client::connect_raw(&h.sock).await.expect("connect");
    let v = c.negotiate(0, 0, Some(QEMU_JSON)).await.expect("negotiate");
    assert_eq!((v.major, v.minor), (0, 0));
    assert!(v.json_len <= QEMU_JSON.len() + 1);
    assert_eq!(v.caps.max_msg_fds, 16);
    assert_eq!(v.caps.max_data_xfer_size, 1 << 20);
    assert_eq!(v.caps.max_dma_maps, 65535);
    assert!(v.caps.write_multiple);
    assert_eq!(c.read_u32(0, 0).await.expect("read"), ToyDevice::MAGIC);
    assert_eq!(h.state().connects, 1);
    h.stop().await;
}

#[tokio::test]
async fn version_0_1_request_is_accepted() {
    let h = Harness::start().await;
    let mut c = Client::connect_raw(&h.sock).await.expect("connect");
    let v = c
        .negotiate(
            0,
            1,
            Some(r#"{"capabilities":{"max_msg_fds":8,"max_data_xfer_size":65536}}"#),
        )
        .await
        .expect("negotiate");
    assert_eq!(v.major, 0);
    assert!(v.minor <= 1);
    assert_eq!(c.read_u32(0, 0).await.expect("read"), ToyDevice::MAGIC);
    h.stop().await;
}

#[tokio::test]
async fn version_errors_are_errno_replies() {
    let h = Harness::start().await;
    let mut c = Client::connect_raw(&h.sock).await.expect("connect");
    // Commands before VERSION are refused.
    assert_eq!(errno_of(c.device_info().await), Errno::EINVAL);
    // Unknown major.
    assert_eq!(errno_of(c.negotiate(1, 0, None).await), Errno::ENOTSUP);
    // Unterminated JSON.
    let mut body = wire::Version { major: 0, minor: 0 }.as_bytes().to_vec();
    body.extend_from_slice(b"{}");
    assert_eq!(
        errno_of(c.request(Command::VERSION, &[&body], &[]).await),
        Errno::EINVAL
    );
    c.negotiate(0, 0, None)
        .await
        .expect("then a good VERSION works");
    // A second VERSION is refused.
    assert_eq!(errno_of(c.negotiate(0, 0, None).await), Errno::EINVAL);
    h.stop().await;
}

#[tokio::test]
async fn device_irq_and_region_io_fd_info_are_reported() {
    let h = Harness::start().await;
    let mut c = h.client().await;
    let info = c.device_info().await.expect("info");
    assert_eq!(
        info.flags,
        (crate::DeviceFlags::PCI | crate::DeviceFlags::RESET).bits()
    );
    assert_eq!((info.num_regions, info.num_irqs), (9, 5));
    for (index, count) in [
        (irq_index::INTX, 1),
        (irq_index::MSI, 1),
        (irq_index::MSIX, 4),
        (irq_index::ERR, 1),
        (irq_index::REQ, 1),
    ] {
        let i = c.irq_info(index).await.expect("irq info");
        assert_eq!((i.index, i.count), (index, count));
        assert_ne!(i.flags & crate::IrqInfoFlags::EVENTFD.bits(), 0);
    }
    assert_eq!(errno_of(c.irq_info(5).await), Errno::EINVAL);
    // A client built against a newer vfio.h sends a 24-byte vfio_device_info; argsz 16 back.
    let mut big = wire::DeviceInfo {
        argsz: 24,
        ..Default::default()
    }
    .as_bytes()
    .to_vec();
    big.extend_from_slice(&[0; 8]);
    let r = c
        .request(Command::DEVICE_GET_INFO, &[&big], &[])
        .await
        .expect("larger struct accepted");
    assert_eq!(&r.body[0..4], &16u32.to_ne_bytes());
    let req = wire::RegionIoFds {
        argsz: 16,
        index: 0,
        ..Default::default()
    };
    let r = c
        .request(Command::DEVICE_GET_REGION_IO_FDS, &[req.as_bytes()], &[])
        .await
        .expect("io fds");
    assert_eq!(r.body.len(), 16, "no sub-regions");
    h.stop().await;
}

#[tokio::test]
async fn region_info_sparse_mmap_cap_comes_with_fd_after_argsz_retry() {
    let h = Harness::start().await;
    let mut c = h.client().await;
    // argsz too small for the capability chain: required argsz back, no caps, no fd.
    let small = c.region_info_argsz(1, 32).await.expect("reply");
    let info: wire::RegionInfo = zerocopy::FromBytes::read_from_prefix(&small.body)
        .expect("body")
        .0;
    assert_eq!(info.argsz, 32 + 16 + 16);
    assert_eq!(info.flags & crate::RegionFlags::CAPS.bits(), 0);
    assert_eq!(info.cap_offset, 0);
    assert!(small.fds.is_empty());
    assert_eq!(small.body.len(), 32);
    // The retry gets caps and the fd.
    let full = c.region_info(1).await.expect("region info");
    assert_eq!(full.info.size, ToyDevice::BAR1_SIZE);
    assert_ne!(full.info.flags & crate::RegionFlags::MMAP.bits(), 0);
    assert_ne!(full.info.flags & crate::RegionFlags::CAPS.bits(), 0);
    assert_eq!(
        full.sparse,
        vec![wire::SparseMmapArea {
            offset: 4096,
            size: 4096
        }]
    );
    let fd = full.fd.expect("mmap fd sent with the reply");
    let st = nix::sys::stat::fstat(std::os::fd::AsRawFd::as_raw_fd(&fd)).expect("fstat");
    assert_eq!(st.st_size as u64, ToyDevice::BAR1_SIZE);
    // A region without mmap has no caps and no fd; config space is 4 KiB.
    let cfg = c.region_info(7).await.expect("config");
    assert_eq!(cfg.info.size, 4096);
    assert!(cfg.fd.is_none());
    assert_eq!(errno_of(c.region_info(9).await), Errno::EINVAL);
    assert_eq!(errno_of(c.region_info_argsz(0, 16).await), Errno::EINVAL);
    h.stop().await;
}

#[tokio::test]
async fn region_read_write_round_trip_and_bounds_are_checked() {
    let h = Harness::start().await;
    let mut c = h.client().await;
    c.region_write(0, 0x2c, &7u32.to_le_bytes())
        .await
        .expect("write");
    assert_eq!(c.read_u32(0, 0x2c).await.expect("read"), 7);
    // 8-byte access spanning two registers.
    c.region_write(0, 0x40, &0x1122334455667788u64.to_le_bytes())
        .await
        .expect("write 8");
    assert_eq!(
        c.region_read(0, 0x40, 8).await.expect("read 8"),
        0x1122334455667788u64.to_le_bytes()
    );
    // Config space.
    c.region_write(7, 0x3c, &[0x0b]).await.expect("cfg write");
    assert_eq!(
        c.region_read(7, 0x3c, 1).await.expect("cfg read"),
        vec![0x0b]
    );
    // Device-refused write (read-only magic) -> device's errno.
    assert_eq!(
        errno_of(c.region_write(0, 0, &[1, 2, 3, 4]).await),
        Errno::EPERM
    );
    // Out of range, overflowing, huge, unimplemented and nonexistent regions.
    assert_eq!(errno_of(c.region_read(0, 4093, 4).await), Errno::EINVAL);
    assert_eq!(
        errno_of(c.region_read(0, u64::MAX - 1, 4).await),
        Errno::EINVAL
    );
    assert_eq!(errno_of(c.region_read(0, 0, u32::MAX).await), Errno::E2BIG);
    assert_eq!(errno_of(c.region_read(2, 0, 4).await), Errno::EINVAL);
    assert_eq!(errno_of(c.region_read(42, 0, 4).await), Errno::EINVAL);
    // Write whose count disagrees with its data.
    let req = wire::RegionAccess {
        offset: 0x2c,
        region: 0,
        count: 8,
    };
    assert_eq!(
        errno_of(
            c.request(Command::REGION_WRITE, &[req.as_bytes(), &[0; 4]], &[])
                .await
        ),
        Errno::EINVAL
    );
    // Read with trailing garbage.
    let req = wire::RegionAccess {
        offset: 0,
        region: 0,
        count: 4,
    };
    assert_eq!(
        errno_of(
            c.request(Command::REGION_READ, &[req.as_bytes(), &[0; 3]], &[])
                .await
        ),
        Errno::EINVAL
    );
    assert_eq!(
        c.read_u32(0, 0).await.expect("still fine"),
        ToyDevice::MAGIC
    );
    h.stop().await;
}

#[tokio::test]
async fn posted_writes_get_no_reply_and_land_before_the_next_read() {
    let h = Harness::start().await;
    let mut c = h.client().await;
    for i in 0..32u32 {
        c.region_write_posted(0, 0x2c, &i.to_le_bytes())
            .await
            .expect("post");
    }
    // A failing posted write must not produce an (error) reply either.
    c.region_write_posted(0, 0x5000, &[0; 4])
        .await
        .expect("post");
    // The next reply we see is for this read (wait_reply would skip others, so check raw).
    let req = wire::RegionAccess {
        offset: 0x2c,
        region: 0,
        count: 4,
    };
    let bytes = wire::encode(
        Header::command(999, Command::REGION_READ, 0),
        &[req.as_bytes()],
    );
    c.send_raw(&bytes, &[]).await.expect("send");
    let m = c.recv_raw().await.expect("recv").expect("a reply");
    assert_eq!(m.header.msg_id, 999, "no replies to posted writes");
    assert_eq!(&m.body[16..], &31u32.to_le_bytes());
    h.stop().await;
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let h = Harness::start().await;
    let mut c = h.client().await;
    let mut burst = Vec::new();
    for id in 100..164u16 {
        let req = wire::RegionAccess {
            offset: 0,
            region: 0,
            count: 4,
        };
        burst.extend(wire::encode(
            Header::command(id, Command::REGION_READ, 0),
            &[req.as_bytes()],
        ));
    }
    c.send_raw(&burst, &[]).await.expect("send burst");
    for id in 100..164u16 {
        let m = c.recv_raw().await.expect("recv").expect("reply");
        assert_eq!(m.header.msg_id, id);
        assert_eq!(&m.body[16..], &ToyDevice::MAGIC.to_le_bytes());
    }
    h.stop().await;
}

#[tokio::test]
async fn write_multi_applies_every_write() {
    let h = Harness::start().await;
    let mut c = h.client().await;
    let n = c
        .region_write_multi(&[
            (0, 0x40, &[1, 2, 3, 4]),
            (0, 0x44, &[5, 6, 7, 8]),
            (7, 0x10, &[9; 8]),
        ])
        .await
        .expect("write multi");
    assert_eq!(n, 3);
    assert_eq!(
        c.region_read(0, 0x40, 8).await.expect("read"),
        vec![1, 2, 3, 4, 5, 6, 7, 8]
    );
    assert_eq!(c.region_read(7, 0x10, 8).await.expect("read"), vec![9; 8]);
    // Bad entries: count > 8, out of bounds, wr_cnt disagreeing with the body, huge wr_cnt.
    let mut bad = wire::WriteMulti { wr_cnt: 1 }.as_bytes().to_vec();
    bad.extend_from_slice(
        wire::WriteOne {
            offset: 0x40,
            region: 0,
            count: 9,
            data: [0; 8],
        }
        .as_bytes(),
    );
    assert_eq!(
        errno_of(c.request(Command::REGION_WRITE_MULTI, &[&bad], &[]).await),
        Errno::EINVAL
    );
    assert_eq!(
        errno_of(c.region_write_multi(&[(0, 4094, &[0; 4])]).await),
        Errno::EINVAL
    );
    let mut bad = wire::WriteMulti { wr_cnt: 2 }.as_bytes().to_vec();
    bad.extend_from_slice(
        wire::WriteOne {
            offset: 0x40,
            region: 0,
            count: 4,
            data: [0; 8],
        }
        .as_bytes(),
    );
    assert_eq!(
        errno_of(c.request(Command::REGION_WRITE_MULTI, &[&bad], &[]).await),
        Errno::EINVAL
    );
    let huge = wire::WriteMulti { wr_cnt: u64::MAX }.as_bytes().to_vec();
    assert_eq!(
        errno_of(c.request(Command::REGION_WRITE_MULTI, &[&huge], &[]).await),
        Errno::EINVAL
    );
    h.stop().await;
}

#[tokio::test]
async fn set_irqs_eventfd_lets_the_device_raise_msix() {
    let h = Harness::start().await;
    let mut c = h.client().await;
    let efd = EventFd::from_value_and_flags(0, EfdFlags::EFD_NONBLOCK).expect("eventfd");
    c.set_irq_eventfds(irq_index::MSIX, 2, 1, &[efd.as_fd()])
        .await
        .expect("set irqs");
    assert_eq!(h.state().irqs_changed, vec![irq_index::MSIX]);
    // Device raises vector 2 when the guest writes the doorbell.
    c.region_write(0, ToyDevice::REG_RAISE_MSIX, &2u32.to_le_bytes())
        .await
        .expect("doorbell");
    assert_eq!(efd.read().expect("interrupt delivered"), 1);
    // Mask, raise (pending, not delivered), unmask (delivered).
    c.set_irqs(
        irq_index::MSIX,
        IrqSetFlags::ACTION_MASK | IrqSetFlags::DATA_NONE,
        2,
        1,
        &[],
    )
    .await
    .expect("mask");
    c.region_write(0, ToyDevice::REG_RAISE_MSIX, &2u32.to_le_bytes())
        .await
        .expect("doorbell");
    assert!(efd.read().is_err(), "masked vector does not fire");
    c.set_irqs(
        irq_index::MSIX,
        IrqSetFlags::ACTION_UNMASK | IrqSetFlags::DATA_BOOL,
        2,
        1,
        &[1],
    )
    .await
    .expect("unmask");
    assert_eq!(
        efd.read().expect("pending interrupt delivered on unmask"),
        1
    );
    // Loopback trigger with DATA_NONE.
    c.set_irqs(
        irq_index::MSIX,
        IrqSetFlags::ACTION_TRIGGER | IrqSetFlags::DATA_NONE,
        2,
        1,
        &[],
    )
    .await
    .expect("trigger");
    assert_eq!(efd.read().expect("loopback"), 1);
    // Disable the index (count 0), then the doorbell delivers nothing.
    c.set_irqs(
        irq_index::MSIX,
        IrqSetFlags::ACTION_TRIGGER | IrqSetFlags::DATA_NONE,
        0,
        0,
        &[],
    )
    .await
    .expect("disable");
    c.region_write(0, ToyDevice::REG_RAISE_MSIX, &2u32.to_le_bytes())
        .await
        .expect("doorbell");
    assert!(efd.read().is_err());
    // ERR index with an eventfd, as QEMU does at realize.
    let err_fd = EventFd::from_value_and_flags(0, EfdFlags::EFD_NONBLOCK).expect("eventfd");
    c.set_irq_eventfds(irq_index::ERR, 0, 1, &[err_fd.as_fd()])
        .await
        .expect("err irq");
    // Bad requests.
    assert_eq!(
        errno_of(
            c.set_irqs(
                irq_index::MSIX,
                IrqSetFlags::ACTION_TRIGGER | IrqSetFlags::DATA_NONE,
                3,
                u32::MAX,
                &[]
            )
            .await
        ),
        Errno::EINVAL
    );
    assert_eq!(
        errno_of(
            c.set_irqs(
                9,
                IrqSetFlags::ACTION_TRIGGER | IrqSetFlags::DATA_NONE,
                0,
                1,
                &[]
            )
            .await
        ),
        Errno::EINVAL
    );
    assert_eq!(
        errno_of(
            c.set_irqs(
                irq_index::MSIX,
                IrqSetFlags::ACTION_MASK | IrqSetFlags::ACTION_UNMASK | IrqSetFlags::DATA_NONE,
                0,
                1,
                &[]
            )
            .await
        ),
        Errno::EINVAL
    );
    assert_eq!(
        errno_of(
            c.set_irqs(
                irq_index::MSIX,
                IrqSetFlags::ACTION_MASK | IrqSetFlags::DATA_BOOL,
                0,
                4,
                &[1]
            )
            .await
        ),
        Errno::EINVAL,
        "bool payload shorter than count"
    );
    h.stop().await;
}

#[tokio::test]
async fn dma_map_with_fd_is_mmapped_and_device_reads_guest_memory() {
    let h = Harness::start().await;
    let mut c = h.client().await;
    let ram = memfd(0x4000);
    nix::sys::uio::pwrite(&ram, &[0xde, 0xad, 0xbe, 0xef], 0x1010).expect("pwrite");
    c.dma_map(
        0x10_0000,
        0x2000,
        DmaMapFlags::READ | DmaMapFlags::WRITE,
        ram.as_fd(),
        0x1000,
    )
    .await
    .expect("map");
    {
        let st = h.state();
        assert_eq!(st.mapped.len(), 1);
        assert!(st.mapped[0].mapped && st.mapped[0].readable && st.mapped[0].writable);
    }
    c.region_write(0, ToyDevice::REG_DMA_FETCH, &0x10_0010u64.to_le_bytes())
        .await
        .expect("fetch");
    assert_eq!(
        c.region_read(0, ToyDevice::REG_DMA_RESULT, 4)
            .await
            .expect("result"),
        vec![0xde, 0xad, 0xbe, 0xef]
    );
    // Device-side writes land in the client's file.
    let dma = h.state().ctx.clone().expect("attached").dma;
    dma.write(0x10_0100, b"pong").expect("dma write");
    let mut b = [0u8; 4];
    nix::sys::uio::pread(&ram, &mut b, 0x1100).expect("pread");
    assert_eq!(&b, b"pong");
    // Overlap, bad flags, two fds, overflowing size.
    assert_eq!(
        errno_of(
            c.dma_map(0x10_1000, 0x1000, DmaMapFlags::READ, ram.as_fd(), 0)
                .await
        ),
        Errno::EEXIST
    );
    assert_eq!(
        errno_of(
            c.dma_map(
                0x20_0000,
                0x1000,
                DmaMapFlags::from_bits_retain(4),
                ram.as_fd(),
                0
            )
            .await
        ),
        Errno::EINVAL
    );
    let req = wire::DmaMap {
        argsz: 32,
        flags: 3,
        offset: 0,
        iova: 0x30_0000,
        size: 0x1000,
    };
    assert_eq!(
        errno_of(
            c.request(
                Command::DMA_MAP,
                &[req.as_bytes()],
                &[ram.as_fd(), ram.as_fd()]
            )
            .await
        ),
        Errno::EINVAL
    );
    let req = wire::DmaMap {
        argsz: 32,
        flags: 3,
        offset: 0,
        iova: 0x30_0000,
        size: u64::MAX,
    };
    assert_eq!(
        errno_of(c.request(Command::DMA_MAP, &[req.as_bytes()], &[]).await),
        Errno::EINVAL
    );
    // Unmap: the device hears about it and can no longer read.
    c.dma_unmap(0x10_0000, 0x2000).await.expect("unmap");
    assert_eq!(h.state().unmapped.len(), 1);
    assert_eq!(
        errno_of(
            c.region_write(0, ToyDevice::REG_DMA_FETCH, &0x10_0010u64.to_le_bytes())
                .await
        ),
        Errno::EFAULT
    );
    assert_eq!(
        errno_of(c.dma_unmap(0x10_0000, 0x2000).await),
        Errno::ENOENT
    );
    h.stop().await;
}

#[tokio::test]
async fn dma_unmap_all_flag_removes_every_window() {
    let h = Harness::start().await;
    let mut c = h.client().await;
    let ram = memfd(0x10000);
    for i in 0..4u64 {
        c.dma_map(
            i * 0x1_0000,
            0x1000,
            DmaMapFlags::READ,
            ram.as_fd(),
            i * 0x1000,
        )
        .await
        .expect("map");
    }
    c.dma_map_memory(0x100_0000, 0x1000, DmaMapFlags::READ)
        .await
        .expect("map without fd");
    assert_eq!(h.state().ctx.clone().expect("ctx").dma.mappings().len(), 5);
    c.dma_unmap_all().await.expect("unmap all");
    assert_eq!(h.state().unmapped.len(), 5);
    assert!(h
        .state()
        .ctx
        .clone()
        .expect("ctx")
        .dma
        .mappings()
        .is_empty());
    // ALL with a nonzero range is invalid; dirty bitmap is unsupported.
    let req = wire::DmaUnmap {
        argsz: 24,
        flags: 2,
        iova: 0x1000,
        size: 0x1000,
    };
    assert_eq!(
        errno_of(c.request(Command::DMA_UNMAP, &[req.as_bytes()], &[]).await),
        Errno::EINVAL
    );
    let req = wire::DmaUnmap {
        argsz: 24,
        flags: 1,
        iova: 0,
        size: 0x1000,
    };
    assert_eq!(
        errno_of(c.request(Command::DMA_UNMAP, &[req.as_bytes()], &[]).await),
        Errno::ENOTSUP
    );
    h.stop().await;
}

#[tokio::test]
async fn message_based_dma_speaks_qemus_layout() {
    let h = Harness::start().await;
    let mut c = h.client().await;
    c.dma_map_memory(0x8000_0000, 0x2000, DmaMapFlags::READ | DmaMapFlags::WRITE)
        .await
        .expect("map");
    c.dma_memory(0x8000_0000).expect("memory")[0x10..0x14].copy_from_slice(b"ping");
    let dma = h.state().ctx.clone().expect("ctx").dma;
    // The synchronous API refuses message-backed windows.
    let mut b = [0u8; 4];
    assert!(matches!(
        dma.read(0x8000_0010, &mut b),
        Err(crate::DmaError::NeedsMessage { .. })
    ));
    let reader = {
        let dma = dma.clone();
        tokio::spawn(async move {
            let mut b = [0u8; 4];
            dma.read_async(0x8000_0010, &mut b).await.map(|()| b)
        })
    };
    assert_eq!(
        c.serve_one_request().await.expect("serve"),
        Command::DMA_READ
    );
    assert_eq!(&reader.await.expect("join").expect("dma read"), b"ping");
    let writer = tokio::spawn(async move { dma.write_async(0x8000_1ffc, b"pong").await });
    assert_eq!(
        c.serve_one_request().await.expect("serve"),
        Command::DMA_WRITE
    );
    writer.await.expect("join").expect("dma write");
    assert_eq!(
        &c.dma_memory(0x8000_0000).expect("memory")[0x1ffc..],
        b"pong"
    );
    h.stop().await;
}

/// The bytes QEMU 11.1.3 accepts (verified against the real binary): `u64 address; u64 count`
/// then data at message offset 32, size `32 + count`; a header-only reply completes a write.
#[tokio::test]
async fn message_dma_wire_bytes_use_the_spec_layout_qemu_11_accepts() {
    let h = Harness::start().await;
    let mut c = h.client().await;
    c.dma_map_memory(0x1000, 0x1000, DmaMapFlags::READ | DmaMapFlags::WRITE)
        .await
        .expect("map");
    let dma = h.state().ctx.clone().expect("ctx").dma;
    let w = tokio::spawn(async move { dma.write_async(0x1008, &[1, 2, 3]).await });
    let m = c.recv_raw().await.expect("recv").expect("request");
    assert_eq!(m.header.cmd(), Command::DMA_WRITE);
    assert_eq!(m.header.size as usize, wire::DMA_MSG_OVERHEAD + 3);
    assert_eq!(&m.body[0..8], &0x1008u64.to_ne_bytes());
    assert_eq!(&m.body[8..16], &3u64.to_ne_bytes(), "64-bit count");
    assert_eq!(&m.body[16..19], &[1, 2, 3], "data at message offset 32");
    let reply = m.header.reply_to(16);
    c.send_raw(reply.as_bytes(), &[]).await.expect("reply");
    w.await
        .expect("join")
        .expect("write completes on header-only reply");
    h.stop().await;
}

/// The legacy 32-bit-count layout stays available for older clients.
#[tokio::test]
async fn legacy_dma_layout_round_trips_when_configured() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("legacy.sock");
    let dev = ToyDevice::new();
    let state = dev.state.clone();
    let config = crate::ServerConfig {
        dma_layout: wire::DmaRwLayout::Legacy32,
        ..Default::default()
    };
    let (tx, rx) = oneshot::channel::<()>();
    let server = tokio::spawn(
        Server::with_config(dev, config).serve_until(sock.clone(), async {
            let _ = rx.await;
        }),
    );
    while !sock.exists() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut c = Client::connect(&sock).await.expect("connect");
    c.set_dma_layout(wire::DmaRwLayout::Legacy32);
    c.dma_map_memory(0x1000, 0x1000, DmaMapFlags::READ | DmaMapFlags::WRITE)
        .await
        .expect("map");
    c.dma_memory(0x1000).expect("mem")[..4].copy_from_slice(b"abcd");
    let dma = state.lock().expect("lock").ctx.clone().expect("ctx").dma;
    let r = tokio::spawn(async move {
        let mut b = [0u8; 4];
        dma.read_async(0x1000, &mut b).await.map(|()| b)
    });
    let m = c.recv_raw().await.expect("recv").expect("request");
    assert_eq!(&m.body[8..12], &4u32.to_ne_bytes(), "32-bit count");
    assert_eq!(m.header.size as usize, wire::DMA_MSG_OVERHEAD);
    let reply = wire::DmaRwLayout::Legacy32.read_reply(&m.header, 0x1000, b"abcd");
    assert_eq!(&reply[28..32], b"abcd", "legacy data at message offset 28");
    c.send_raw(&reply, &[]).await.expect("reply");
    assert_eq!(&r.await.expect("join").expect("read"), b"abcd");
    drop(c);
    let _ = tx.send(());
    server.await.expect("join").expect("server");
}

#[tokio::test]
async fn reset_and_unsupported_and_unknown_commands() {
    let h = Harness::start().await;
    let mut c = h.client().await;
    c.region_write(0, 0x2c, &1u32.to_le_bytes())
        .await
        .expect("write");
    c.reset().await.expect("reset");
    assert_eq!(h.state().resets, 1);
    assert_eq!(c.read_u32(0, 0x2c).await.expect("read"), 0);
    let feat = wire::DeviceFeature {
        argsz: 8,
        flags: 1 | (1 << 16),
    };
    assert_eq!(
        errno_of(
            c.request(Command::DEVICE_FEATURE, &[feat.as_bytes()], &[])
                .await
        ),
        Errno::ENOTSUP
    );
    assert_eq!(
        errno_of(c.request(Command::MIG_DATA_READ, &[&[0; 8]], &[]).await),
        Errno::ENOTSUP
    );
    assert_eq!(
        errno_of(c.request(Command::MIG_DATA_WRITE, &[&[0; 8]], &[]).await),
        Errno::ENOTSUP
    );
    assert_eq!(
        errno_of(c.request(Command::DIRTY_PAGES, &[], &[]).await),
        Errno::ENOTSUP
    );
    assert_eq!(
        errno_of(c.request(Command(0x4242), &[b"whatever"], &[]).await),
        Errno::ENOSYS
    );
    assert_eq!(
        errno_of(c.request(Command::DMA_READ, &[&[0; 16]], &[]).await),
        Errno::ENOSYS
    );
    assert_eq!(
        c.read_u32(0, 0).await.expect("still fine"),
        ToyDevice::MAGIC
    );
    h.stop().await;
}

#[tokio::test]
async fn malformed_bodies_get_einval() {
    let h = Harness::start().await;
    let mut c = h.client().await;
    for cmd in [
        Command::DMA_MAP,
        Command::DMA_UNMAP,
        Command::DEVICE_GET_INFO,
        Command::DEVICE_GET_REGION_INFO,
        Command::DEVICE_GET_REGION_IO_FDS,
        Command::DEVICE_GET_IRQ_INFO,
        Command::DEVICE_SET_IRQS,
        Command::REGION_READ,
        Command::REGION_WRITE,
        Command::REGION_WRITE_MULTI,
    ] {
        assert_eq!(
            errno_of(c.request(cmd, &[&[0u8; 3]], &[]).await),
            Errno::EINVAL,
            "truncated {cmd}"
        );
    }
    assert_eq!(
        errno_of(c.request(Command::DEVICE_RESET, &[&[1]], &[]).await),
        Errno::EINVAL
    );
    drop(c);
    h.assert_serves_new_client().await;
    h.stop().await;
}

#[tokio::test]
async fn fds_on_the_wrong_message_are_closed() {
    let h = Harness::start().await;
    let mut c = h.client().await;
    let (r, w) = pipe_probe();
    let req = wire::RegionAccess {
        offset: 0,
        region: 0,
        count: 4,
    };
    assert_eq!(
        errno_of(
            c.request(Command::REGION_READ, &[req.as_bytes()], &[w.as_fd()])
                .await
        ),
        Errno::EINVAL
    );
    drop(w);
    assert_closed_by_peer(r).await;
    // An fd with SET_IRQS that is not DATA_EVENTFD is refused and closed too.
    let (r, w) = pipe_probe();
    let req = wire::IrqSet {
        argsz: 20,
        flags: (IrqSetFlags::ACTION_TRIGGER | IrqSetFlags::DATA_NONE).bits(),
        index: 2,
        start: 0,
        count: 1,
    };
    assert_eq!(
        errno_of(
            c.request(Command::DEVICE_SET_IRQS, &[req.as_bytes()], &[w.as_fd()])
                .await
        ),
        Errno::EINVAL
    );
    drop(w);
    assert_closed_by_peer(r).await;
    // More than max_msg_fds (16) descriptors: all closed, EINVAL.
    let (r, w) = pipe_probe();
    let many: Vec<_> = (0..17).map(|_| w.as_fd()).collect();
    let req = wire::IrqSet {
        argsz: 20,
        flags: (IrqSetFlags::ACTION_TRIGGER | IrqSetFlags::DATA_EVENTFD).bits(),
        index: 2,
        start: 0,
        count: 4,
    };
    assert_eq!(
        errno_of(
            c.request(Command::DEVICE_SET_IRQS, &[req.as_bytes()], &many)
                .await
        ),
        Errno::EINVAL
    );
    drop(w);
    assert_closed_by_peer(r).await;
    assert_eq!(
        c.read_u32(0, 0).await.expect("connection still fine"),
        ToyDevice::MAGIC
    );
    h.stop().await;
}

#[tokio::test]
async fn oversized_message_is_drained_and_answered_e2big() {
    let h = Harness::start().await;
    let mut c = h.client().await;
    let big = vec![0u8; (1 << 20) + crate::dispatch::MSG_OVERHEAD + 1];
    assert_eq!(
        errno_of(c.request(Command::REGION_WRITE, &[&big], &[]).await),
        Errno::E2BIG
    );
    assert_eq!(
        c.read_u32(0, 0).await.expect("stream still in sync"),
        ToyDevice::MAGIC
    );
    h.stop().await;
}

#[tokio::test]
async fn header_size_below_16_closes_and_next_client_is_served() {
    let h = Harness::start().await;
    let mut c = h.client().await;
    let mut hdr = Header::command(1, Command::REGION_READ, 0);
    hdr.size = 8;
    c.send_raw(hdr.as_bytes(), &[]).await.expect("send");
    assert!(
        c.recv_raw().await.expect("clean close").is_none(),
        "server closes the connection"
    );
    h.assert_serves_new_client().await;
    assert_eq!(h.state().disconnects, 1);
    h.stop().await;
}

#[tokio::test]
async fn truncated_message_closes_and_next_client_is_served() {
    let h = Harness::start().await;
    {
        let mut c = h.client().await;
        let hdr = Header::command(1, Command::REGION_WRITE, 100);
        c.send_raw(hdr.as_bytes(), &[]).await.expect("send");
        c.send_raw(&[0u8; 20], &[]).await.expect("send part");
        // Drop: the server sees EOF in the middle of the body.
    }
    h.assert_serves_new_client().await;
    // Half a header then EOF.
    {
        let mut c = h.client().await;
        c.send_raw(&[1, 2, 3], &[]).await.expect("send");
    }
    h.assert_serves_new_client().await;
    h.stop().await;
}

#[tokio::test]
async fn unknown_message_type_closes_connection() {
    let h = Harness::start().await;
    let mut c = h.client().await;
    let mut hdr = Header::command(5, Command::DEVICE_GET_INFO, 16);
    hdr.flags = 0x7;
    c.send_raw(hdr.as_bytes(), &[]).await.expect("send");
    assert!(c.recv_raw().await.expect("clean close").is_none());
    h.assert_serves_new_client().await;
    h.stop().await;
}

#[tokio::test]
async fn disconnect_releases_dma_and_eventfds_and_device_state_survives() {
    let h = Harness::start().await;
    let ram = memfd(0x1000);
    let efd = EventFd::from_value_and_flags(0, EfdFlags::EFD_NONBLOCK).expect("eventfd");
    {
        let mut c = h.client().await;
        c.dma_map(0, 0x1000, DmaMapFlags::READ, ram.as_fd(), 0)
            .await
            .expect("map");
        c.set_irq_eventfds(irq_index::MSIX, 0, 1, &[efd.as_fd()])
            .await
            .expect("irq");
        c.region_write(0, 0x2c, &1u32.to_le_bytes())
            .await
            .expect("status");
    }
    let mut c = h.client().await;
    let ctx = h.state().ctx.clone().expect("ctx");
    assert!(
        ctx.dma.mappings().is_empty(),
        "DMA windows dropped with the old client"
    );
    assert!(
        !ctx.irqs.has_eventfd(irq_index::MSIX, 0),
        "eventfds dropped with the old client"
    );
    assert_eq!(
        c.read_u32(0, 0x2c).await.expect("read"),
        1,
        "device state kept across clients"
    );
    let counts = {
        let st = h.state();
        (st.connects, st.disconnects)
    };
    assert_eq!(counts, (2, 1));
    drop(c);
    h.stop().await;
}

#[tokio::test]
async fn shutdown_with_a_connected_client_closes_it_and_returns_the_device() {
    let h = Harness::start().await;
    let mut c = h.client().await;
    c.region_write(0, 0x2c, &5u32.to_le_bytes())
        .await
        .expect("write");
    let dev = h.stop().await;
    assert_eq!(dev.state.lock().expect("lock").bar0[0x2c], 5);
    assert!(c.recv_raw().await.expect("closed").is_none());
}

#[tokio::test]
async fn second_server_on_a_live_socket_is_refused() {
    let h = Harness::start().await;
    let r = crate::server::bind(&h.sock);
    assert!(matches!(r, Err(ServerError::InUse(_))));
    h.stop().await;
}

#[tokio::test]
async fn pending_message_dma_fails_instead_of_hanging_when_client_leaves() {
    let h = Harness::start().await;
    let mut c = h.client().await;
    c.dma_map_memory(0x1000, 0x1000, DmaMapFlags::READ)
        .await
        .expect("map");
    let dma = h.state().ctx.clone().expect("ctx").dma;
    let reader = tokio::spawn(async move {
        let mut b = [0u8; 4];
        dma.read_async(0x1000, &mut b).await
    });
    let m = c.recv_raw().await.expect("recv").expect("DMA_READ arrives");
    assert_eq!(m.header.cmd(), Command::DMA_READ);
    drop(c); // never answer
    let r = tokio::time::timeout(Duration::from_secs(5), reader)
        .await
        .expect("does not hang")
        .expect("join");
    assert_eq!(r, Err(crate::DmaError::Transport));
    h.assert_serves_new_client().await;
    h.stop().await;
}

#[tokio::test]
async fn one_client_at_a_time_and_the_waiting_one_is_served_next() {
    let h = Harness::start().await;
    let mut first = h.client().await;
    let sock = h.sock.clone();
    let second = tokio::spawn(async move {
        let mut c = Client::connect(&sock)
            .await
            .expect("second client negotiates eventually");
        c.read_u32(0, 0).await.expect("read")
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !second.is_finished(),
        "second client waits while the first is connected"
    );
    assert_eq!(
        first.read_u32(0, 0).await.expect("first still served"),
        ToyDevice::MAGIC
    );
    drop(first);
    let v = tokio::time::timeout(Duration::from_secs(5), second)
        .await
        .expect("second served after the first leaves")
        .expect("join");
    assert_eq!(v, ToyDevice::MAGIC);
    h.stop().await;
}
