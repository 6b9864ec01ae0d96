//! Accept errors from running out of file descriptors: backed off and
//! logged once per interval, not once per attempt; serving resumes when
//! descriptors free up. Alone in its file: it lowers the process's limit
//! on open files.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{fast_settings, single_app, Backend, Proxy};
use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

/// Log lines written by the proxy, kept for the test to read.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The lowest descriptor number free now: a limit equal to it lets the
/// process open nothing more.
fn lowest_free_fd() -> u64 {
    let probe = std::fs::File::open("/dev/null").unwrap();
    use std::os::fd::AsRawFd;
    u64::try_from(probe.as_raw_fd()).unwrap()
}

/// One request with `Connection: close`; the whole response.
async fn get_closing(client: &mut tokio::net::TcpStream) -> Vec<u8> {
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut response))
        .await
        .expect("served in time")
        .unwrap();
    response
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_errors_from_too_many_open_files_are_logged_a_few_times_not_per_attempt() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .init();
    let backend = Backend::named("ok").await;
    let (router, _) = single_app(backend.addr);
    let proxy = Proxy::start_with(router, fast_settings(), Default::default()).await;
    // Served once: the accept loop runs (it needs descriptors to start).
    let mut warm = TcpSocket::new_v4()
        .unwrap()
        .connect(proxy.addr)
        .await
        .unwrap();
    assert!(get_closing(&mut warm).await.starts_with(b"HTTP/1.1 200"));
    // Client sockets made while descriptors are still free; they connect
    // after the limit was lowered, so the proxy cannot accept them.
    let sockets: Vec<TcpSocket> = (0..8).map(|_| TcpSocket::new_v4().unwrap()).collect();
    let original = getrlimit(Resource::Nofile);
    let exhausted = Rlimit {
        current: Some(lowest_free_fd()),
        maximum: original.maximum,
    };
    setrlimit(Resource::Nofile, exhausted).unwrap();
    let mut clients = Vec::new();
    for socket in sockets {
        clients.push(socket.connect(proxy.addr).await.unwrap());
    }
    // Long enough for hundreds of attempts without a backoff.
    tokio::time::sleep(Duration::from_secs(3)).await;
    setrlimit(Resource::Nofile, original).unwrap();

    // Descriptors are free again: every waiting client is served.
    for client in &mut clients {
        let response = get_closing(client).await;
        assert!(response.starts_with(b"HTTP/1.1 200"), "{response:?}");
    }
    let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let warnings = log
        .lines()
        .filter(|line| line.contains("accepting connections failed"))
        .count();
    assert!(
        (1..=2).contains(&warnings),
        "accept failures logged {warnings} times:\n{log}"
    );
}
