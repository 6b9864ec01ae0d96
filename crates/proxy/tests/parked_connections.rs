//! Idle keep-alive connections parked outside any task (the memory of an
//! idle client is its socket and a slot): they are served again when a
//! request comes, close at their idle timeout, make room at the connection
//! cap, and close or move at shutdown like any idle connection.

mod common;

use std::time::Duration;

use common::{fast_settings, metric, single_app, Backend, Proxy};
use cutover_proxy::{Admission, ProxySettings, ServeOptions, TrustedProxies};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PATIENCE: Duration = Duration::from_secs(10);
const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n";

fn parked() -> f64 {
    metric("cutover_proxy_parked_connections ").unwrap_or(-1.0)
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

#[tokio::test]
async fn idle_keepalive_connections_park_and_are_served_again_when_their_next_request_comes() {
    let backend = Backend::named("ok").await;
    let (router, _) = single_app(backend.addr);
    let proxy = Proxy::start_on_workers(router, fast_settings(), 2).await;
    let mut conns = idle_clients(&proxy, 20).await;
    wait_for_parked(20.0).await;

    for conn in &mut conns {
        request_ok(conn).await;
    }
    assert_eq!(backend.requests(), 40);
    // Idle again: parked again, on the same connections.
    wait_for_parked(20.0).await;

    // A client closing while parked leaves the lot at once.
    conns.truncate(5);
    wait_for_parked(5.0).await;
    for conn in &mut conns {
        request_ok(conn).await;
    }
}

#[tokio::test]
async fn a_parked_connection_closes_at_its_idle_timeout() {
    let backend = Backend::named("ok").await;
    let (router, _) = single_app(backend.addr);
    // Long enough past `PARK_AFTER` that a slow machine still sees them
    // parked before they expire.
    let settings = ProxySettings {
        idle_timeout: Duration::from_secs(2),
        ..fast_settings()
    };
    let proxy = Proxy::start(router, settings).await;
    let mut conns = idle_clients(&proxy, 3).await;
    wait_for_parked(3.0).await;
    for conn in &mut conns {
        assert!(closed_by_proxy(conn).await, "closed at the idle timeout");
    }
    wait_for_parked(0.0).await;
}

#[tokio::test]
async fn at_max_connections_the_oldest_parked_connection_closes_to_make_room() {
    let backend = Backend::named("ok").await;
    let (router, _) = single_app(backend.addr);
    let options = ServeOptions {
        admission: Some(Admission::new(2, 0, TrustedProxies::default())),
        ..ServeOptions::default()
    };
    let proxy = Proxy::start_with(router, fast_settings(), options).await;
    let mut conns = idle_clients(&proxy, 2).await;
    wait_for_parked(2.0).await;

    let mut fresh = TcpStream::connect(proxy.addr).await.expect("connect");
    request_ok(&mut fresh).await;
    assert!(closed_by_proxy(&mut conns[0]).await, "the oldest made room");
    request_ok(&mut conns[1]).await;
}

#[tokio::test]
async fn shutdown_closes_parked_connections_and_serve_returns() {
    let backend = Backend::named("ok").await;
    let (router, _) = single_app(backend.addr);
    let mut proxy = Proxy::start_on_workers(router, fast_settings(), 2).await;
    let mut conns = idle_clients(&proxy, 4).await;
    wait_for_parked(4.0).await;

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
