//! Idle keep-alive connections wait outside any task (the memory of an
//! idle client is its socket and a slot): parked on epoll workers, in the
//! io_uring loop on io_uring workers. Either way they are served again when
//! a request comes, close at their idle timeout, make room at the
//! connection cap, and close or move at shutdown like any idle connection.

mod common;

use std::time::Duration;

use common::{fast_settings, metric, single_app, test_io, Backend, Proxy};
use cutover_proxy::{Admission, Io, ProxySettings, ServeOptions, TrustedProxies, Workers};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PATIENCE: Duration = Duration::from_secs(10);
const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n";

fn parked() -> f64 {
    metric("cutover_proxy_parked_connections ").unwrap_or(-1.0)
}

/// Where a test's idle connections wait.
#[derive(Clone, Copy)]
enum Idle {
    /// In the parking lot of an epoll worker.
    Parked,
    /// In the io_uring loop of a worker (where the kernel has io_uring;
    /// else parked too).
    InRing,
}

impl Idle {
    fn io(self) -> Io {
        match self {
            Idle::Parked => Io::Epoll,
            Idle::InRing => test_io(),
        }
    }

    /// A proxy on `workers` workers of this kind, with `options`.
    async fn start(
        self,
        router: cutover_proxy::Router,
        settings: ProxySettings,
        workers: usize,
        mut options: ServeOptions,
    ) -> Proxy {
        let count = std::num::NonZeroUsize::new(workers).expect("at least one worker");
        options.workers = Some(Workers::start_with(count, self.io()).expect("start workers"));
        Proxy::start_with(router, settings, options).await
    }

    /// Waits until `count` idle connections are parked (none in the loop).
    async fn wait_until_waiting(self, count: f64) {
        match (self, self.io()) {
            (Idle::InRing, Io::Uring) => {
                // Past the parking delay: a connection of the loop never parks.
                tokio::time::sleep(Duration::from_millis(300)).await;
                assert_eq!(parked(), 0.0, "the loop's idle connections park nowhere");
            }
            _ => wait_for_parked(count).await,
        }
    }
}

async fn wait_for_parked(count: f64) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while parked() != count {
        assert!(
            tokio::time::Instant::now() < deadline,
            "expected {count} parked connections, have {}",
            parked()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends one GET and reads its `200 ok` response.
async fn request_ok(conn: &mut TcpStream) {
    conn.write_all(REQUEST).await.expect("write");
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    while !data.ends_with(b"\r\n\r\nok") {
        let n = tokio::time::timeout(PATIENCE, conn.read(&mut buf))
            .await
            .expect("a response in time")
            .expect("read");
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&data));
        data.extend_from_slice(&buf[..n]);
    }
    assert!(data.starts_with(b"HTTP/1.1 200"));
}

/// Whether the proxy closed `conn` (EOF or reset) within the patience.
async fn closed_by_proxy(conn: &mut TcpStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(
        tokio::time::timeout(PATIENCE, conn.read(&mut byte)).await,
        Ok(Ok(0) | Err(_))
    )
}

async fn idle_clients(proxy: &Proxy, count: usize) -> Vec<TcpStream> {
    let mut conns = Vec::with_capacity(count);
    for _ in 0..count {
        let mut conn = TcpStream::connect(proxy.addr).await.expect("connect");
        request_ok(&mut conn).await;
        conns.push(conn);
    }
    conns
}

async fn idle_connections_are_served_again_when_their_next_request_comes(idle: Idle) {
    let backend = Backend::named("ok").await;
    let (router, _) = single_app(backend.addr);
    let proxy = idle
        .start(router, fast_settings(), 2, ServeOptions::default())
        .await;
    let mut conns = idle_clients(&proxy, 20).await;
    idle.wait_until_waiting(20.0).await;

    for conn in &mut conns {
        request_ok(conn).await;
    }
    assert_eq!(backend.requests(), 40);
    // Idle again: waiting again, on the same connections.
    idle.wait_until_waiting(20.0).await;

    // A client closing while idle leaves at once.
    conns.truncate(5);
    idle.wait_until_waiting(5.0).await;
    for conn in &mut conns {
        request_ok(conn).await;
    }
}

#[tokio::test]
async fn idle_keepalive_connections_park_and_are_served_again_when_their_next_request_comes() {
    idle_connections_are_served_again_when_their_next_request_comes(Idle::Parked).await;
}

#[tokio::test]
async fn idle_keepalive_connections_wait_in_the_io_uring_loop_and_are_served_again() {
    idle_connections_are_served_again_when_their_next_request_comes(Idle::InRing).await;
}

async fn an_idle_connection_closes_at_its_idle_timeout(idle: Idle) {
    let backend = Backend::named("ok").await;
    let (router, _) = single_app(backend.addr);
    // Long enough past `PARK_AFTER` that a slow machine still sees them
    // parked before they expire.
    let settings = ProxySettings {
        idle_timeout: Duration::from_secs(2),
        ..fast_settings()
    };
    let proxy = idle
        .start(router, settings, 1, ServeOptions::default())
        .await;
    let mut conns = idle_clients(&proxy, 3).await;
    idle.wait_until_waiting(3.0).await;
    for conn in &mut conns {
        assert!(closed_by_proxy(conn).await, "closed at the idle timeout");
    }
    wait_for_parked(0.0).await;
}

#[tokio::test]
async fn a_parked_connection_closes_at_its_idle_timeout() {
    an_idle_connection_closes_at_its_idle_timeout(Idle::Parked).await;
}

#[tokio::test]
async fn an_idle_connection_of_the_io_uring_loop_closes_at_its_idle_timeout() {
    an_idle_connection_closes_at_its_idle_timeout(Idle::InRing).await;
}

async fn at_max_connections_the_oldest_idle_connection_closes_to_make_room(idle: Idle) {
    let backend = Backend::named("ok").await;
    let (router, _) = single_app(backend.addr);
    let options = ServeOptions {
        admission: Some(Admission::new(2, 0, TrustedProxies::default())),
        ..ServeOptions::default()
    };
    let proxy = idle.start(router, fast_settings(), 1, options).await;
    let mut conns = idle_clients(&proxy, 2).await;
    idle.wait_until_waiting(2.0).await;

    let mut fresh = TcpStream::connect(proxy.addr).await.expect("connect");
    request_ok(&mut fresh).await;
    assert!(closed_by_proxy(&mut conns[0]).await, "the oldest made room");
    request_ok(&mut conns[1]).await;
}

#[tokio::test]
async fn at_max_connections_the_oldest_parked_connection_closes_to_make_room() {
    at_max_connections_the_oldest_idle_connection_closes_to_make_room(Idle::Parked).await;
}

#[tokio::test]
async fn at_max_connections_the_oldest_idle_connection_of_the_io_uring_loop_closes_to_make_room() {
    at_max_connections_the_oldest_idle_connection_closes_to_make_room(Idle::InRing).await;
}

async fn shutdown_closes_idle_connections_and_serve_returns(idle: Idle) {
    let backend = Backend::named("ok").await;
    let (router, _) = single_app(backend.addr);
    let mut proxy = idle
        .start(router, fast_settings(), 2, ServeOptions::default())
        .await;
    let mut conns = idle_clients(&proxy, 4).await;
    idle.wait_until_waiting(4.0).await;

    proxy.begin_shutdown();
    tokio::time::timeout(PATIENCE, &mut proxy.task)
        .await
        .expect("serve returned")
        .expect("join")
        .expect("serve");
    for conn in &mut conns {
        assert!(closed_by_proxy(conn).await, "closed at shutdown");
    }
    assert_eq!(parked(), 0.0);
}

#[tokio::test]
async fn shutdown_closes_parked_connections_and_serve_returns() {
    shutdown_closes_idle_connections_and_serve_returns(Idle::Parked).await;
}

#[tokio::test]
async fn shutdown_closes_the_io_uring_loops_idle_connections_and_serve_returns() {
    shutdown_closes_idle_connections_and_serve_returns(Idle::InRing).await;
}
