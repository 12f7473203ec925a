//! `Server::serve` stops on SIGTERM and SIGINT and removes its socket. Its own test binary
//! (= its own process) because it raises real signals at itself.

use std::time::Duration;

use nix::sys::signal::{raise, Signal};
use vfio_user_proto::testing::ToyDevice;
use vfio_user_proto::{Client, Server};

async fn serve_then_raise(sig: Signal) {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("sig.sock");
    let server = tokio::spawn(Server::new(ToyDevice::new()).serve(sock.clone()));
    for _ in 0..400 {
        if sock.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // A connected client does not keep the server alive.
    let mut c = Client::connect(&sock).await.expect("connect");
    assert_eq!(c.read_u32(0, 0).await.expect("read"), ToyDevice::MAGIC);
    raise(sig).expect("raise");
    let dev = tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("server stops on the signal")
        .expect("join")
        .expect("clean shutdown");
    assert!(!sock.exists(), "socket removed");
    assert_eq!(dev.state.lock().expect("lock").connects, 1);
    assert!(
        c.recv_raw().await.expect("clean close").is_none(),
        "client sees EOF"
    );
}

#[tokio::test]
async fn sigterm_and_sigint_stop_the_server_and_remove_the_socket() {
    serve_then_raise(Signal::SIGTERM).await;
    serve_then_raise(Signal::SIGINT).await;
}
