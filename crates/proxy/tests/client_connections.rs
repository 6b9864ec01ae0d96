//! Client-side connection handling: header-read and idle timeouts, and
//! graceful shutdown.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{fast_settings, get, single_app, Backend, ChannelBody, Client, Proxy};
use cutover_proxy::ProxySettings;
use http::StatusCode;
use http_body_util::BodyExt;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Mutex};

/// Reads until the peer closes the connection; returns what was read.
async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> Vec<u8> {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(within, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => data.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .expect("the proxy closed the connection in time");
    data
}

/// Reads one complete `200` response whose body is `ok`.
async fn read_ok_response(stream: &mut TcpStream) {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    while !data.ends_with(b"\r\n\r\nok") {
        let n = stream.read(&mut buf).await.expect("response");
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&data));
        data.extend_from_slice(&buf[..n]);
    }
    assert!(
        data.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&data)
    );
}

#[tokio::test]
async fn header_read_timeout_closes_a_slow_client_while_others_are_served() {
    let backend = Backend::named("ok").await;
    let (router, _) = single_app(backend.addr);
    let settings = ProxySettings {
        header_read_timeout: Duration::from_millis(300),
        ..fast_settings()
    };
    let proxy = Proxy::start(router, settings).await;

    // A slowloris: an incomplete head, never finished.
    let mut slow = TcpStream::connect(proxy.addr).await.expect("connect");
    slow.write_all(b"GET / HTTP/1.1\r\nHost: example.com\r\nX-Slow: ")
        .await
        .expect("write");
    // A client that connects and sends nothing at all.
    let mut silent = TcpStream::connect(proxy.addr).await.expect("connect");

    // Meanwhile a normal client is served.
    let mut client = Client::connect(proxy.addr).await;
    for _ in 0..3 {
        assert_eq!(
            client.get("example.com", "/").await.expect("request").body,
            "ok"
        );
    }

    read_until_closed(&mut slow, Duration::from_secs(5)).await;
    read_until_closed(&mut silent, Duration::from_secs(5)).await;
    assert_eq!(
        backend.requests(),
        3,
        "the slow request never reached the upstream"
    );
    assert_eq!(
        client
            .get("example.com", "/")
            .await
            .expect("request")
            .status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn idle_keepalive_connection_outlives_the_header_timeout_and_closes_at_the_idle_timeout() {
    let backend = Backend::named("ok").await;
    let (router, _) = single_app(backend.addr);
    let settings = ProxySettings {
        header_read_timeout: Duration::from_millis(200),
        idle_timeout: Duration::from_millis(1500),
        ..fast_settings()
    };
    let proxy = Proxy::start(router, settings).await;

    let mut raw = TcpStream::connect(proxy.addr).await.expect("connect");
    let request = b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n";
    raw.write_all(request).await.expect("write");
    read_ok_response(&mut raw).await;

    // Idle longer than the header timeout: an idle client is not a slow one.
    tokio::time::sleep(Duration::from_millis(500)).await;
    raw.write_all(request).await.expect("write");
    read_ok_response(&mut raw).await;

    // Then idle past the idle timeout: closed by the proxy.
    let rest = read_until_closed(&mut raw, Duration::from_secs(10)).await;
    assert!(rest.is_empty());
}

#[tokio::test]
async fn serve_returns_after_shutdown_once_the_in_flight_request_finishes() {
    let (tx, rx) = mpsc::channel::<Bytes>(4);
    let rx = Arc::new(Mutex::new(Some(rx)));
    let backend = Backend::start(move |_req| {
        let rx = rx.clone();
        async move {
            let rx = rx.lock().await.take().expect("one request");
            http::Response::new(ChannelBody(rx).boxed())
        }
    })
    .await;
    let (router, upstream) = single_app(backend.addr);
    let mut proxy = Proxy::start(router, fast_settings()).await;

    let mut idle_client = Client::connect(proxy.addr).await;
    tx.send(Bytes::from_static(b"first ")).await.expect("chunk");
    let mut client = Client::connect(proxy.addr).await;
    let response = client
        .send(get("example.com", "/"))
        .await
        .expect("response head");
    let mut body = response.into_body();
    body.frame().await.expect("frame").expect("frame ok");

    proxy.begin_shutdown();
    // The idle connection is closed; new connections are no longer served.
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        idle_client.get("example.com", "/").await.is_err()
    })
    .await
    .expect("idle connection handled");
    assert!(closed, "an idle connection is closed at shutdown");
    tokio::task::yield_now().await;
    assert!(!proxy.task.is_finished(), "a response is still streaming");
    assert_eq!(upstream.in_flight(), 1);

    tx.send(Bytes::from_static(b"last")).await.expect("chunk");
    drop(tx);
    let rest = body
        .collect()
        .await
        .expect("the in-flight response completes")
        .to_bytes();
    assert_eq!(&rest[..], b"last");
    tokio::time::timeout(Duration::from_secs(5), &mut proxy.task)
        .await
        .expect("serve returns once the last request ended")
        .expect("serve task")
        .expect("serve result");
    assert!(
        TcpStream::connect(proxy.addr).await.is_err(),
        "no longer listening"
    );
}
