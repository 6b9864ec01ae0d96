//! The io_uring loop (where the kernel has io_uring; on epoll the same
//! requests take the full path, and these tests hold there too): a
//! connection whose requests the loop serves moves to the full path for a
//! request it does not serve, in the middle of pipelined bytes, and comes
//! out with every response in order; large responses, relayed by a task of
//! the worker, come out whole, also when their upstream closes at once.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{
    fast_settings, get, read_more, read_ok_response, read_request_head, single_app, tcp_server,
    test_io, text, Backend, ChannelBody, Client, Proxy,
};
use cutover_test_support::wait::eventually_async;
use http::{Response, StatusCode};
use http_body_util::BodyExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// An upstream's response head with everything the proxy rewrites:
/// hop-by-hop fields, a field its `Connection` names, its own request id,
/// two cookies, names in mixed case; and a field called `Close` (the
/// `close` option of `Connection` names no field).
const UPSTREAM_HEAD: &str =
    "HTTP/1.1 200 OK\r\nServer: raw\r\nConnection: keep-alive, X-Secret, close\r\n\
    Keep-Alive: timeout=5\r\nX-Secret: s\r\nX-Request-Id: upstream-id\r\nSet-Cookie: a=1\r\n\
    X-Trace: t\r\nset-cookie: b=2\r\nClose: 1\r\nContent-Length: 2\r\n\r\nok";

/// A response head as the client got it: its lines after the status line,
/// `Date` left out (its value moves), sorted (a map keeps no order across
/// names; values of one name keep theirs, checked apart).
fn field_lines(response: &str) -> (String, Vec<String>) {
    let head = response.split("\r\n\r\n").next().unwrap_or_default();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or_default().to_owned();
    let mut fields: Vec<String> = lines
        .filter(|line| !line.starts_with("date: "))
        .map(str::to_owned)
        .collect();
    let cookies: Vec<&String> = fields
        .iter()
        .filter(|l| l.starts_with("set-cookie"))
        .collect();
    assert_eq!(
        cookies,
        ["set-cookie: a=1", "set-cookie: b=2"],
        "{response}"
    );
    fields.sort();
    (status, fields)
}

/// The loop rewrites a response head where it lies, without a map; the
/// full path rewrites a map. Both send the client the same head: no
/// hop-by-hop field nor one that `Connection` names, the client's request
/// id in place of the upstream's, every other field, names in lower case.
#[tokio::test]
async fn the_loop_and_the_full_path_rewrite_a_response_head_alike() {
    let (addr, backend) = tcp_server(|mut stream| async move {
        while read_request_head(&mut stream).await.is_some() {
            if stream.write_all(UPSTREAM_HEAD.as_bytes()).await.is_err() {
                return;
            }
        }
    })
    .await;
    let mut heads = Vec::new();
    for io in [cutover_proxy::Io::Epoll, test_io()] {
        let (router, _upstream) = single_app(addr);
        let proxy = Proxy::start_on_workers_with_io(router, fast_settings(), 1, io).await;
        let mut client = TcpStream::connect(proxy.addr).await.expect("connect");
        for _ in 0..2 {
            client
                .write_all(b"GET / HTTP/1.1\r\nHost: a\r\nX-Request-Id: client-id\r\n\r\n")
                .await
                .expect("send");
            heads.push((io, field_lines(&read_ok_response(&mut client).await)));
        }
    }
    let expected = [
        "close: 1",
        "content-length: 2",
        "server: raw",
        "set-cookie: a=1",
        "set-cookie: b=2",
        "x-request-id: client-id",
        "x-trace: t",
    ];
    for (io, (status, fields)) in &heads {
        assert_eq!(status, "HTTP/1.1 200 OK", "{io:?}");
        assert_eq!(fields, &expected, "{io:?}");
    }
    backend.abort();
}

/// Reads until `count` responses with `Content-Length` bodies came; their
/// bodies, in order.
async fn read_bodies(conn: &mut TcpStream, count: usize) -> Vec<String> {
    let mut data = Vec::new();
    let mut bodies = Vec::new();
    while bodies.len() < count {
        read_more(conn, &mut data, 8192).await;
        while let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&data[..end]).to_ascii_lowercase();
            assert!(head.starts_with("http/1.1 200"), "{head}");
            let length: usize = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length: "))
                .and_then(|n| n.trim().parse().ok())
                .expect("a content-length");
            if data.len() < end + 4 + length {
                break;
            }
            let body = data[end + 4..end + 4 + length].to_vec();
            bodies.push(String::from_utf8_lossy(&body).into_owned());
            data.drain(..end + 4 + length);
        }
    }
    bodies
}

#[tokio::test]
async fn pipelined_requests_the_loop_does_not_serve_go_to_the_full_path_in_order() {
    let backend = Backend::start(|req| async move {
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        let body = req.into_body().collect().await.expect("body").to_bytes();
        let body = String::from_utf8_lossy(&body).into_owned();
        text(StatusCode::OK, format!("{method} {path} {body}"))
    })
    .await;
    let (router, upstream) = single_app(backend.addr);
    let proxy = Proxy::start(router, fast_settings()).await;
    let mut conn = TcpStream::connect(proxy.addr).await.expect("connect");

    // Served by the loop, then a POST with a body (the full path), then a
    // GET after it, all in one write.
    conn.write_all(
        b"GET /one HTTP/1.1\r\nHost: a\r\n\r\n\
          POST /two HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello\
          GET /three HTTP/1.1\r\nHost: a\r\n\r\n",
    )
    .await
    .expect("write");
    let bodies = read_bodies(&mut conn, 3).await;
    assert_eq!(bodies, ["GET /one ", "POST /two hello", "GET /three "]);

    // The connection stays open and keeps serving.
    conn.write_all(b"GET /four HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .expect("write");
    assert_eq!(read_bodies(&mut conn, 1).await, ["GET /four "]);
    assert_eq!(upstream.in_flight(), 0);
}

#[tokio::test]
async fn a_request_head_split_across_many_writes_is_served_once_whole() {
    let backend = Backend::named("ok").await;
    let (router, _) = single_app(backend.addr);
    let proxy = Proxy::start(router, fast_settings()).await;
    let mut conn = TcpStream::connect(proxy.addr).await.expect("connect");
    for _ in 0..3 {
        for piece in [&b"GET / HT"[..], b"TP/1.1\r\nHo", b"st: a\r\n", b"\r\n"] {
            conn.write_all(piece).await.expect("write");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(read_bodies(&mut conn, 1).await, ["ok"]);
    }
    assert_eq!(backend.requests(), 3);
    assert_eq!(backend.connections(), 1, "one upstream connection, reused");
}

/// Bytes that show any reordering, loss or repetition (251 is prime: no
/// power-of-two sized piece lines up with the pattern).
fn patterned(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

#[tokio::test]
async fn large_responses_reach_a_slow_client_whole_and_their_upstream_connection_is_reused() {
    // 200 KB arrives whole with its head (read ahead by the link's
    // receive); 3 MB does not.
    const SMALL: usize = 200_000;
    const LARGE: usize = 3 * 1024 * 1024 + 17;
    let backend = Backend::start(|req| async move {
        let len = if req.uri().query() == Some("large") {
            LARGE
        } else {
            SMALL
        };
        let body = Bytes::from(patterned(len));
        if req.uri().path() != "/chunked" {
            return text(StatusCode::OK, body);
        }
        // Chunked, in pieces of uneven size.
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            let mut rest = body;
            while !rest.is_empty() {
                let piece = rest.split_to(rest.len().min(50_001));
                if tx.send(piece).await.is_err() {
                    return;
                }
            }
        });
        Response::new(ChannelBody(rx).boxed())
    })
    .await;
    let (router, upstream) = single_app(backend.addr);
    let proxy = Proxy::start(router, fast_settings()).await;
    let mut client = Client::connect(proxy.addr).await;
    let requests = [
        ("/exact?large", LARGE),
        ("/exact?small", SMALL),
        ("/chunked?large", LARGE),
        ("/chunked?small", SMALL),
        ("/exact?small", SMALL),
        ("/exact?large", LARGE),
    ];
    for (path, len) in requests {
        let response = client.send(get("a", path)).await.expect("response");
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let mut body = response.into_body();
        let mut got = Vec::with_capacity(len);
        // A slow reader: the proxy's writes to it have to wait.
        let read = async {
            while let Some(frame) = body.frame().await {
                let frame = frame.expect("body frame");
                if let Some(data) = frame.data_ref() {
                    got.extend_from_slice(data);
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(20), read)
            .await
            .unwrap_or_else(|_| panic!("{path}: the body ended"));
        assert_eq!(got.len(), len, "{path}: whole body");
        assert!(got == patterned(len), "{path}: bytes in order");
    }
    assert_eq!(backend.requests(), requests.len());
    assert_eq!(backend.connections(), 1, "one upstream connection, reused");
    released_when_the_relay_reports(&upstream).await;
}

#[tokio::test]
async fn a_large_response_whose_upstream_closes_right_after_it_comes_out_whole() {
    const LEN: usize = 200_000;
    // Raw HTTP/1.1: the whole response, then the end of the stream at
    // once — with a length and `Connection: close`, or delimited by the
    // close itself.
    let (addr, backend) = tcp_server(|mut stream| async move {
        let Some(request) = read_request_head(&mut stream).await else {
            return;
        };
        let head = if request.starts_with(b"GET /length") {
            format!("HTTP/1.1 200 OK\r\nContent-Length: {LEN}\r\nConnection: close\r\n\r\n")
        } else {
            "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n".to_owned()
        };
        let mut response = head.into_bytes();
        response.extend_from_slice(&patterned(LEN));
        let _ = stream.write_all(&response).await;
        let _ = stream.shutdown().await;
    })
    .await;
    let (router, upstream) = single_app(addr);
    let proxy = Proxy::start(router, fast_settings()).await;
    let mut client = Client::connect(proxy.addr).await;
    for path in ["/length", "/until-close", "/length", "/until-close"] {
        let reply = tokio::time::timeout(Duration::from_secs(10), client.send(get("a", path)))
            .await
            .unwrap_or_else(|_| panic!("{path}: a response head"))
            .expect("response");
        assert_eq!(reply.status(), StatusCode::OK, "{path}");
        let body = tokio::time::timeout(Duration::from_secs(10), reply.into_body().collect())
            .await
            .unwrap_or_else(|_| panic!("{path}: the body ended"))
            .expect("body")
            .to_bytes();
        assert_eq!(body.len(), LEN, "{path}: whole body");
        assert!(body == patterned(LEN), "{path}: bytes in order");
    }
    released_when_the_relay_reports(&upstream).await;
    backend.abort();
}

/// A large body's last bytes reach the client from its relay task; the
/// loop ends the exchange (and releases the in-flight count) when it hears
/// the task's report, which may come a moment after the client read them.
async fn released_when_the_relay_reports(upstream: &cutover_proxy::Upstream) {
    eventually_async(
        Duration::from_secs(5),
        Duration::from_millis(5),
        "no request left in flight",
        || upstream.in_flight() == 0,
    )
    .await;
}
