//! Client connections handed between two listeners at a request boundary,
//! as an upgrade of cutover passes them from the old process to the new
//! one: the client keeps its connection and never sees it close.

mod common;

use std::time::Duration;

use common::{fast_settings, read_ok_response, single_app, text, Backend, Proxy};
use cutover_proxy::{HandedConn, Handoff, IntakeSender, ServeOptions};
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The "new process": a listener serving adopted connections.
async fn adopting_listener(router: cutover_proxy::Router) -> IntakeSender {
    let (sender, intake) = cutover_proxy::intake();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    tokio::spawn(cutover_proxy::serve_adopting(
        listener,
        router,
        fast_settings(),
        ServeOptions::default(),
        intake,
        std::future::pending(),
    ));
    sender
}

/// Arms `handoff`, stops `proxy` and returns the first connection it hands over.
async fn stop_and_receive(proxy: &mut Proxy, handoff: &Handoff) -> HandedConn {
    let (sink, handed) = std::sync::mpsc::channel();
    handoff.arm(sink);
    proxy.begin_shutdown();
    tokio::task::spawn_blocking(move || handed.recv_timeout(Duration::from_secs(10)))
        .await
        .expect("join")
        .expect("a connection handed over")
}

/// One idle connection (idle for `idle_for` after its first request)
/// handed over at shutdown, then served by the adopting listener.
async fn idle_connection_handed_over(idle_for: Duration) {
    let backend = Backend::named("ok").await;
    let (router, _) = single_app(backend.addr);
    let handoff = Handoff::default();
    let options = ServeOptions {
        handoff: Some(handoff.clone()),
        ..ServeOptions::default()
    };
    let mut old = Proxy::start_with(router.clone(), fast_settings(), options).await;
    let new = adopting_listener(router).await;
    let mut client = TcpStream::connect(old.addr).await.expect("connect");
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .expect("write");
    read_ok_response(&mut client).await;
    tokio::time::sleep(idle_for).await;

    let handed = stop_and_receive(&mut old, &handoff).await;
    assert_eq!(handed.listener, old.addr);
    assert!(handed.prefix.is_empty());
    assert!(!handed.fresh);
    new.adopt(handed).expect("adopted");
    // The old listener is done: nothing of the connection is left there.
    tokio::time::timeout(Duration::from_secs(10), &mut old.task)
        .await
        .expect("the old listener stopped")
        .expect("join")
        .expect("serve");

    client
        .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .expect("write on the same connection");
    read_ok_response(&mut client).await;
    assert_eq!(backend.requests(), 2);
}

#[tokio::test]
async fn an_idle_connection_is_handed_over_at_shutdown_and_served_by_the_adopting_listener() {
    idle_connection_handed_over(Duration::ZERO).await;
}

#[tokio::test]
async fn a_parked_idle_connection_is_handed_over_at_shutdown_like_any_idle_one() {
    // Long enough to have left its task for the parking lot.
    idle_connection_handed_over(Duration::from_millis(500)).await;
}

#[tokio::test]
async fn a_busy_connection_is_handed_over_after_its_response_with_the_bytes_read_ahead() {
    let backend = Backend::start(|_req| async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        text(StatusCode::OK, "ok")
    })
    .await;
    let (router, _) = single_app(backend.addr);
    let handoff = Handoff::default();
    let options = ServeOptions {
        handoff: Some(handoff.clone()),
        ..ServeOptions::default()
    };
    let mut old = Proxy::start_with(router.clone(), fast_settings(), options).await;
    let new = adopting_listener(router).await;
    let mut client = TcpStream::connect(old.addr).await.expect("connect");
    // A request, and the start of a pipelined second one.
    client
        .write_all(b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\nGET /next HT")
        .await
        .expect("write");
    tokio::time::sleep(Duration::from_millis(100)).await;

    let (sink, handed) = std::sync::mpsc::channel();
    handoff.arm(sink);
    old.begin_shutdown();
    let first = read_ok_response(&mut client).await;
    assert!(
        !first.to_ascii_lowercase().contains("connection: close"),
        "a connection that moves on is not closed: {first}"
    );
    let handed = tokio::task::spawn_blocking(move || handed.recv_timeout(Duration::from_secs(10)))
        .await
        .expect("join")
        .expect("the connection handed over after its response");
    assert_eq!(&handed.prefix[..], b"GET /next HT");
    new.adopt(handed).expect("adopted");
    client
        .write_all(b"TP/1.1\r\nHost: a\r\n\r\n")
        .await
        .expect("the rest of the second request");
    read_ok_response(&mut client).await;
    assert_eq!(backend.requests(), 2);
}

#[tokio::test]
async fn without_an_armed_handoff_an_idle_connection_closes_at_shutdown() {
    let backend = Backend::named("ok").await;
    let (router, _) = single_app(backend.addr);
    let options = ServeOptions {
        handoff: Some(Handoff::default()),
        ..ServeOptions::default()
    };
    let mut old = Proxy::start_with(router, fast_settings(), options).await;
    let mut client = TcpStream::connect(old.addr).await.expect("connect");
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .expect("write");
    read_ok_response(&mut client).await;
    old.begin_shutdown();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(10), client.read(&mut buf))
        .await
        .expect("closed in time");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
}
