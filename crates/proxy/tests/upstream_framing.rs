//! Misbehaving upstreams: a raw-TCP upstream writes fixed bytes (that is
//! the component under test's counterpart: a release that frames its
//! responses wrongly). The client gets a 502 that says what happened, the
//! upstream connection is closed by the proxy and never reused, and
//! nothing malformed reaches the client.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{fast_settings, single_app, tcp_server, Proxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

const GOOD: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

/// Each malformed response, by path, and what the 502's text must say.
const MALFORMED: &[(&str, &[u8], &str)] = &[
    (
        "/two-lengths",
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok",
        "malformed response: invalid message framing: conflicting content-length",
    ),
    (
        "/bad-length",
        b"HTTP/1.1 200 OK\r\ncontent-length: 2x\r\n\r\nok",
        "malformed response: invalid message framing: invalid content-length",
    ),
    (
        "/te-and-cl",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 7\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        "both transfer-encoding and content-length",
    ),
    (
        "/double-chunked",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        "chunked applied more than once",
    ),
    (
        "/folded",
        b"HTTP/1.1 200 OK\r\nx-a: 1\r\n folded\r\ncontent-length: 2\r\n\r\nok",
        "malformed response: malformed head",
    ),
    (
        "/nul",
        b"HTTP/1.1 200 OK\r\nx-a: a\x00b\r\ncontent-length: 2\r\n\r\nok",
        "malformed response: malformed head",
    ),
    (
        "/unasked-101",
        b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: evil\r\n\r\nGET / HTTP/1.1\r\n",
        "switched protocols without being asked to",
    ),
    (
        "/1xx-flood",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
        "too many informational responses",
    ),
    (
        "/not-http",
        b"SSH-2.0-OpenSSH_9.6\r\n\r\n",
        "malformed response: malformed head",
    ),
];

/// Connections the fake upstream accepted, and those the proxy closed
/// after a malformed response.
#[derive(Default)]
struct Counts {
    accepted: AtomicUsize,
    closed_by_proxy: AtomicUsize,
}

/// Reads one request head; `None` at EOF.
async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            buf.drain(..end + 4);
            return Some(head);
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// The fake upstream: answers by path, keeps every connection open itself.
async fn misbehaving_upstream(counts: Arc<Counts>) -> (SocketAddr, JoinHandle<()>) {
    tcp_server(move |mut stream| {
        let counts = counts.clone();
        counts.accepted.fetch_add(1, Ordering::SeqCst);
        async move {
            let mut buf = Vec::new();
            while let Some(head) = read_head(&mut stream, &mut buf).await {
                let path = head.split(' ').nth(1).unwrap_or("/").to_owned();
                let bad = MALFORMED.iter().find(|(p, _, _)| *p == path);
                let answer: Vec<u8> = match (bad, path.as_str()) {
                    (Some((_, bytes, _)), _) => bytes.to_vec(),
                    (None, "/extra") => [GOOD, b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nextra"].concat(),
                    (None, "/bad-chunk") => {
                        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n5\nhello\r\n0\r\n\r\n"
                            .to_vec()
                    }
                    _ => GOOD.to_vec(),
                };
                if stream.write_all(&answer).await.is_err() {
                    return;
                }
                if path == "/late" {
                    // An unsolicited response while the connection is idle in
                    // the pool: a response-splitting attempt.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    let stale = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nstale";
                    if stream.write_all(stale).await.is_err() {
                        return;
                    }
                }
                if bad.is_some() || path == "/bad-chunk" {
                    // Wait for the proxy to close this connection.
                    let mut rest = [0u8; 256];
                    while matches!(stream.read(&mut rest).await, Ok(n) if n > 0) {}
                    counts.closed_by_proxy.fetch_add(1, Ordering::SeqCst);
                    return;
                }
            }
        }
    })
    .await
}

/// One request on a new client connection; the whole raw response.
async fn get_raw(proxy: SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect(proxy).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = Vec::new();
    // A response cut off by the proxy ends in a reset: what came is kept.
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        let mut chunk = [0u8; 4096];
        while let Ok(n) = stream.read(&mut chunk).await {
            if n == 0 {
                break;
            }
            response.extend_from_slice(&chunk[..n]);
        }
    })
    .await;
    String::from_utf8_lossy(&response).into_owned()
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_malformed_upstream_response_gets_502_saying_why_and_its_connection_is_never_reused() {
    let counts = Arc::new(Counts::default());
    let (addr, upstream_task) = misbehaving_upstream(counts.clone()).await;
    let (router, upstream) = single_app(addr);
    let proxy = Proxy::start(router, fast_settings()).await;
    let good = get_raw(proxy.addr, "/good").await;
    assert!(
        good.starts_with("HTTP/1.1 200 ") && good.ends_with("\r\n\r\nok"),
        "{good}"
    );
    for (i, (path, _, why)) in MALFORMED.iter().enumerate() {
        // The bad response comes on the pooled connection of the last good one.
        let accepted_before = counts.accepted.load(Ordering::SeqCst);
        let response = get_raw(proxy.addr, path).await;
        assert!(response.starts_with("HTTP/1.1 502 "), "{path} → {response}");
        assert!(response.contains(why), "{path} → {response}");
        for leaked in ["evil", "SSH-", "folded", "\r\n\r\nok"] {
            assert!(
                !response.contains(leaked),
                "{path} leaked {leaked:?}: {response}"
            );
        }
        wait_for(
            &format!("{path}: the proxy closed the upstream connection"),
            || counts.closed_by_proxy.load(Ordering::SeqCst) == i + 1,
        )
        .await;
        let good = get_raw(proxy.addr, "/good").await;
        assert!(good.ends_with("\r\n\r\nok"), "after {path}: {good}");
        assert_eq!(
            counts.accepted.load(Ordering::SeqCst),
            accepted_before + 1,
            "after {path} the next request used one new upstream connection"
        );
    }
    assert_eq!(upstream.in_flight(), 0);
    upstream_task.abort();
}

#[tokio::test]
async fn bad_chunking_in_an_upstream_body_cuts_the_client_response_and_the_connection_is_dropped() {
    let counts = Arc::new(Counts::default());
    let (addr, upstream_task) = misbehaving_upstream(counts.clone()).await;
    let (router, _) = single_app(addr);
    let proxy = Proxy::start(router, fast_settings()).await;
    let response = get_raw(proxy.addr, "/bad-chunk").await;
    // The head had gone out; the body stops at the bad chunk line and the
    // client sees no end of the chunked body (so never a complete message).
    assert!(response.starts_with("HTTP/1.1 200 "), "{response}");
    assert!(!response.contains("hello"), "{response}");
    assert!(!response.ends_with("0\r\n\r\n"), "{response}");
    wait_for("the proxy closed the upstream connection", || {
        counts.closed_by_proxy.load(Ordering::SeqCst) == 1
    })
    .await;
    let good = get_raw(proxy.addr, "/good").await;
    assert!(good.ends_with("\r\n\r\nok"), "{good}");
    assert_eq!(counts.accepted.load(Ordering::SeqCst), 2);
    upstream_task.abort();
}

#[tokio::test]
async fn bytes_after_an_upstream_response_never_reach_a_client_and_the_connection_is_not_reused() {
    let counts = Arc::new(Counts::default());
    let (addr, upstream_task) = misbehaving_upstream(counts.clone()).await;
    let (router, _) = single_app(addr);
    let proxy = Proxy::start(router, fast_settings()).await;
    // A second response glued to the first one.
    let response = get_raw(proxy.addr, "/extra").await;
    assert!(response.ends_with("\r\n\r\nok"), "{response}");
    assert!(!response.contains("extra"), "{response}");
    let good = get_raw(proxy.addr, "/good").await;
    assert!(
        good.ends_with("\r\n\r\nok") && !good.contains("extra"),
        "{good}"
    );
    assert_eq!(
        counts.accepted.load(Ordering::SeqCst),
        2,
        "a new connection"
    );
    // An unsolicited response arriving while the connection sits in the pool.
    let response = get_raw(proxy.addr, "/late").await;
    assert!(response.ends_with("\r\n\r\nok"), "{response}");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let good = get_raw(proxy.addr, "/good").await;
    assert!(
        good.ends_with("\r\n\r\nok") && !good.contains("stale"),
        "{good}"
    );
    assert_eq!(
        counts.accepted.load(Ordering::SeqCst),
        3,
        "a new connection"
    );
    upstream_task.abort();
}
