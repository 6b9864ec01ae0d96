//! Client-side connection handling: header-read and idle timeouts, and
//! graceful shutdown.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{
    fast_settings, get, read_more, read_ok_response, single_app, Backend, ChannelBody, Client,
    Proxy,
};
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
    let backend = Backend::start(move |req| {
        let rx = rx.clone();
        async move {
            if req.uri().path() == "/ping" {
                return http::Response::new(
                    http_body_util::Full::new(Bytes::from_static(b"ok"))
                        .map_err(|never| match never {})
                        .boxed(),
                );
            }
            let rx = rx.lock().await.take().expect("one streaming request");
            http::Response::new(ChannelBody(rx).boxed())
        }
    })
    .await;
    let (router, upstream) = single_app(backend.addr);
    let mut proxy = Proxy::start(router, fast_settings()).await;

    // Served once, then idle.
    let mut idle_client = TcpStream::connect(proxy.addr).await.expect("connect");
    idle_client
        .write_all(b"GET /ping HTTP/1.1\r\nHost: example.com\r\n\r\n")
        .await
        .expect("write");
    read_ok_response(&mut idle_client).await;
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
    let rest = read_until_closed(&mut idle_client, Duration::from_secs(5)).await;
    assert!(rest.is_empty(), "an idle connection is closed at shutdown");
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

/// A backend answering with the Host header it got.
async fn host_backend() -> Backend {
    Backend::start(|req| async move {
        let host = req
            .headers()
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("-")
            .to_owned();
        common::text(StatusCode::OK, host)
    })
    .await
}

#[tokio::test]
async fn http_1_0_clients_get_close_or_keep_alive_as_they_ask() {
    let backend = host_backend().await;
    let (router, _) = single_app(backend.addr);
    let proxy = Proxy::start(router, fast_settings()).await;

    // No Host, no keep-alive: the upstream's address as Host; then closed.
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    stream
        .write_all(b"GET / HTTP/1.0\r\n\r\n")
        .await
        .expect("write");
    let answer = read_until_closed(&mut stream, Duration::from_secs(5)).await;
    let answer = String::from_utf8_lossy(&answer).to_ascii_lowercase();
    assert!(answer.starts_with("http/1.1 200"), "{answer}");
    assert!(answer.contains("connection: close"), "{answer}");
    assert!(answer.ends_with(&backend.addr.to_string()), "{answer}");

    // Keep-alive asked: two requests on one connection.
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    for _ in 0..2 {
        stream
            .write_all(b"GET / HTTP/1.0\r\nHost: a.test\r\nConnection: keep-alive\r\n\r\n")
            .await
            .expect("write");
        let mut data = Vec::new();
        while !data.ends_with(b"a.test") {
            read_more(&mut stream, &mut data, 1024).await;
        }
        let head = String::from_utf8_lossy(&data).to_ascii_lowercase();
        assert!(head.contains("connection: keep-alive"), "{head}");
        assert!(head.contains("content-length: 6"), "{head}");
    }
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let backend =
        Backend::start(
            |req| async move { common::text(StatusCode::OK, req.uri().path().to_owned()) },
        )
        .await;
    let (router, _) = single_app(backend.addr);
    let proxy = Proxy::start(router, fast_settings()).await;
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    stream
        .write_all(b"GET /one HTTP/1.1\r\nHost: a\r\n\r\nGET /two HTTP/1.1\r\nHost: a\r\n\r\nGET /three HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let answer = read_until_closed(&mut stream, Duration::from_secs(5)).await;
    let answer = String::from_utf8_lossy(&answer);
    let one = answer.find("\r\n\r\n/one").expect("first");
    let two = answer.find("\r\n\r\n/two").expect("second");
    let three = answer.find("\r\n\r\n/three").expect("third");
    assert!(one < two && two < three, "{answer}");
    assert_eq!(answer.matches("HTTP/1.1 200").count(), 3, "{answer}");
}

#[tokio::test]
async fn malformed_or_oversized_request_heads_get_400_or_431_and_a_close() {
    let backend = Backend::named("ok").await;
    let (router, _) = single_app(backend.addr);
    let proxy = Proxy::start(router, fast_settings()).await;
    let cases: [(Vec<u8>, &str); 3] = [
        (b"GARBAGE\r\n\r\n".to_vec(), "HTTP/1.1 400"),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n".to_vec(),
            "HTTP/1.1 400",
        ),
        (
            format!(
                "GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
                "a".repeat(70_000)
            )
            .into_bytes(),
            "HTTP/1.1 431",
        ),
    ];
    for (request, expected) in cases {
        let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
        let _ = stream.write_all(&request).await;
        let answer = read_until_closed(&mut stream, Duration::from_secs(5)).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with(expected), "{expected}: {answer}");
    }
    assert_eq!(
        backend.requests(),
        0,
        "nothing malformed reached the upstream"
    );
}

#[tokio::test]
async fn chunked_request_bodies_stream_upstream_and_the_connection_stays_usable() {
    let backend = Backend::start(|req| async move {
        let body = req.into_body().collect().await.expect("body").to_bytes();
        common::text(StatusCode::OK, format!("got {}", body.len()))
    })
    .await;
    let (router, _) = single_app(backend.addr);
    let proxy = Proxy::start(router, fast_settings()).await;
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    for _ in 0..2 {
        stream
            .write_all(b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n")
            .await
            .expect("write head");
        let mut data = Vec::new();
        let mut buf = [0u8; 1024];
        while !data.ends_with(b"\r\n\r\n") {
            let n = stream.read(&mut buf).await.expect("read");
            assert!(n > 0);
            data.extend_from_slice(&buf[..n]);
        }
        assert!(
            data.starts_with(b"HTTP/1.1 100 Continue"),
            "{}",
            String::from_utf8_lossy(&data)
        );
        stream
            .write_all(b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
            .await
            .expect("write body");
        let mut data = Vec::new();
        while !data.ends_with(b"got 11") {
            let n = stream.read(&mut buf).await.expect("read");
            assert!(n > 0, "closed: {}", String::from_utf8_lossy(&data));
            data.extend_from_slice(&buf[..n]);
        }
        assert!(
            data.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&data)
        );
    }
}

/// A new cleartext connection whose first bytes are there at its accept
/// goes to the io_uring loop straight from the accept; one whose bytes come
/// later, or begin like HTTP/2's preface, takes a task first. Each is
/// served: the request sent with the connect, after a pause, split after
/// its first byte, and HTTP/2 with prior knowledge split after its `P`.
#[tokio::test]
async fn a_new_connection_is_served_however_its_first_bytes_arrive() {
    let backend = Backend::named("ok").await;
    let (router, _) = single_app(backend.addr);
    let proxy = Proxy::start(router, fast_settings()).await;
    let request: &[u8] = b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n";
    let pause = Duration::from_millis(200);
    for split in [0, request.len(), 1] {
        let mut conn = TcpStream::connect(proxy.addr).await.expect("connect");
        if split == request.len() {
            tokio::time::sleep(pause).await;
        }
        let (head, rest) = request.split_at(split.min(1));
        conn.write_all(head).await.expect("write");
        if split == 1 {
            tokio::time::sleep(pause).await;
        }
        conn.write_all(rest).await.expect("write");
        // A second request on the same connection: the first went where it
        // stays.
        read_ok_response(&mut conn).await;
        conn.write_all(request).await.expect("write");
        read_ok_response(&mut conn).await;
    }

    let mut h2 = TcpStream::connect(proxy.addr).await.expect("connect");
    h2.write_all(b"P").await.expect("write");
    tokio::time::sleep(pause).await;
    // The rest of the preface, then an empty SETTINGS frame.
    h2.write_all(b"RI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .expect("write");
    let mut frame_head = [0u8; 9];
    tokio::time::timeout(Duration::from_secs(10), h2.read_exact(&mut frame_head))
        .await
        .expect("the server's first frame in time")
        .expect("a frame");
    assert_eq!(
        frame_head[3], 0x4,
        "the server speaks HTTP/2: SETTINGS first"
    );
}
