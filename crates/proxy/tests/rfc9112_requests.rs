//! RFC 9112 / RFC 9110 MUSTs on client requests, tried on a real socket
//! against a real proxy in front of a recording backend: every head a
//! server must refuse is answered with its 4xx/5xx and the connection
//! closed, and nothing of it reaches the backend.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{fast_settings, single_app, text, Backend, Proxy};
use cutover_proxy::{Router, Upstream};
use http::StatusCode;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What the backend received, one line per complete request:
/// `METHOD target host=<Host> body=<len>`.
type Seen = Arc<Mutex<Vec<String>>>;

async fn recording_backend() -> (Backend, Seen) {
    let seen: Seen = Arc::default();
    let record = seen.clone();
    let backend = Backend::start(move |req| {
        let record = record.clone();
        async move {
            let line = format!(
                "{} {} host={}",
                req.method(),
                req.uri(),
                req.headers()
                    .get("host")
                    .and_then(|h| h.to_str().ok())
                    .unwrap_or("-")
            );
            // Only a request whose body arrived whole counts as received.
            match req.into_body().collect().await {
                Ok(body) => {
                    let line = format!("{line} body={}", body.to_bytes().len());
                    record.lock().expect("lock").push(line);
                    text(StatusCode::OK, "ok")
                }
                Err(e) => text(StatusCode::BAD_REQUEST, e.to_string()),
            }
        }
    })
    .await;
    (backend, seen)
}

/// Sends `raw` on a new connection and reads until the proxy closes it.
async fn exchange_raw(proxy: SocketAddr, raw: &[u8]) -> String {
    let mut stream = TcpStream::connect(proxy).await.expect("connect");
    stream.write_all(raw).await.expect("write");
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response))
        .await
        .expect("the proxy answered and closed within 5 s")
        .expect("read");
    String::from_utf8_lossy(&response).into_owned()
}

/// Each refused head, and the status it must get. Every one is followed on
/// the same connection by a valid request, which must not be served
/// either: after a refusal the connection closes.
const REFUSED: &[(&str, &[u8])] = &[
    ("400", b"GET / HTTP/1.1\r\nHost : example.com\r\n\r\n"),
    ("400", b"GET / HTTP/1.1\r\nHost: example.com\r\nX-A: 1\r\n folded\r\n\r\n"),
    ("400", b"GET / HTTP/1.1\r\nHost: example.com\r\nX-A: a\x00b\r\n\r\n"),
    ("400", b"GET / HTTP/1.1\r\nHost: example.com\r\nX-A: a\rb\r\n\r\n"),
    ("400", b"GET / HTTP/1.1\r\nHost: example.com\r\nX-A: a\x7fb\r\n\r\n"),
    ("400", b"GET / HTTP/1.1\r\nHost: example.com\r\nX\x01A: 1\r\n\r\n"),
    ("400", b"GET / HTTP/1.1\r\nHost: user@example.com\r\n\r\n"),
    ("400", b"GET / HTTP/1.1\r\nHost: example.com/x\r\n\r\n"),
    ("400", b"GET example.com:80 HTTP/1.1\r\nHost: example.com\r\n\r\n"),
    ("400", b"GET * HTTP/1.1\r\nHost: example.com\r\n\r\n"),
    ("400", b"GET ftp://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n"),
    ("400", b"GET http://u:p@example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n"),
    ("405", b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"),
    ("505", b"GET / HTTP/1.2\r\nHost: example.com\r\n\r\n"),
    ("505", b"GET / HTTP/2.0\r\nHost: example.com\r\n\r\n"),
    ("400", b"GET / HTTP/one\r\nHost: example.com\r\n\r\n"),
    ("400", b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    (
        "400",
        b"POST / HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
    ),
    (
        "400",
        b"POST / HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ),
    (
        "501",
        b"POST / HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    ),
    (
        "400",
        b"POST / HTTP/1.1\r\nHost: example.com\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
    ),
];

const FOLLOW_UP: &[u8] = b"GET /smuggled HTTP/1.1\r\nHost: example.com\r\n\r\n";

#[tokio::test]
async fn request_heads_breaking_rfc_9112_get_their_status_and_reach_nothing() {
    let (backend, seen) = recording_backend().await;
    let (router, _) = single_app(backend.addr);
    let proxy = Proxy::start(router, fast_settings()).await;
    for (status, head) in REFUSED {
        let raw = [*head, FOLLOW_UP].concat();
        let response = exchange_raw(proxy.addr, &raw).await;
        let shown = String::from_utf8_lossy(head);
        assert!(
            response.starts_with(&format!("HTTP/1.1 {status} ")),
            "{shown:?} → {response}"
        );
        assert!(
            response.contains("connection: close\r\n"),
            "{shown:?} → {response}"
        );
        assert_eq!(
            response
                .lines()
                .filter(|line| line.starts_with("HTTP/1.1 "))
                .count(),
            1,
            "one response, then the close: {shown:?} → {response}"
        );
        let body = response.split_once("\r\n\r\n").map_or("", |(_, body)| body);
        assert!(
            body.starts_with("cutover: ") && body.contains(": ") && body.len() > 20,
            "the body says what was wrong: {shown:?} → {body:?}"
        );
    }
    assert_eq!(
        *seen.lock().expect("lock"),
        Vec::<String>::new(),
        "no refused request reached the backend"
    );
    assert_eq!(backend.requests(), 0);
}

#[tokio::test]
async fn a_request_head_over_the_size_or_field_limits_gets_431() {
    let (backend, _seen) = recording_backend().await;
    let (router, _) = single_app(backend.addr);
    let proxy = Proxy::start(router, fast_settings()).await;
    let big = format!(
        "GET / HTTP/1.1\r\nHost: example.com\r\nX-Big: {}\r\n\r\n",
        "a".repeat(70 * 1024)
    );
    let many: String = (0..101).map(|i| format!("X-{i}: 1\r\n")).collect();
    let many = format!("GET / HTTP/1.1\r\nHost: example.com\r\n{many}\r\n");
    for raw in [big, many] {
        let response = exchange_raw(proxy.addr, raw.as_bytes()).await;
        assert!(response.starts_with("HTTP/1.1 431 "), "{response}");
    }
    assert_eq!(backend.requests(), 0);
}

#[tokio::test]
async fn a_malformed_chunk_line_in_a_request_body_gets_400_and_no_complete_request_upstream() {
    let (backend, seen) = recording_backend().await;
    let (router, _) = single_app(backend.addr);
    let proxy = Proxy::start(router, fast_settings()).await;
    let bodies: [&[u8]; 5] = [
        b"5\nhello\r\n0\r\n\r\n",
        b" 5\r\nhello\r\n0\r\n\r\n",
        b"5;ext\nX\r\nhello\r\n0\r\n\r\n",
        b"5\r\nhelloXX0\r\n\r\n",
        b"0x5\r\nhello\r\n0\r\n\r\n",
    ];
    for body in bodies {
        let head = b"POST / HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n";
        let response = exchange_raw(proxy.addr, &[&head[..], body, FOLLOW_UP].concat()).await;
        let shown = String::from_utf8_lossy(body);
        assert!(
            response.starts_with("HTTP/1.1 400 "),
            "{shown:?} → {response}"
        );
        assert_eq!(response.matches("HTTP/1.1 ").count(), 1, "{response}");
    }
    assert_eq!(
        *seen.lock().expect("lock"),
        Vec::<String>::new(),
        "no request with a malformed body arrived whole upstream"
    );
}

#[tokio::test]
async fn an_absolute_form_target_routes_by_its_authority_and_becomes_the_upstream_host() {
    let (a, seen_a) = recording_backend().await;
    let (b, seen_b) = recording_backend().await;
    let router = Router::new(vec![
        ("a".into(), vec!["a.example".into()]),
        ("b".into(), vec!["b.example".into()]),
    ]);
    router.set_live("a", Some(Upstream::new("a", "blue", "v1", a.addr)));
    router.set_live("b", Some(Upstream::new("b", "blue", "v1", b.addr)));
    let proxy = Proxy::start(router, fast_settings()).await;
    let raw = b"GET http://a.example/x?y HTTP/1.1\r\nHost: b.example\r\nConnection: close\r\n\r\n";
    let response = exchange_raw(proxy.addr, raw).await;
    assert!(response.starts_with("HTTP/1.1 200 "), "{response}");
    assert_eq!(
        *seen_a.lock().expect("lock"),
        ["GET /x?y host=a.example body=0"]
    );
    assert!(seen_b.lock().expect("lock").is_empty());
}

#[tokio::test]
async fn well_formed_edge_cases_are_served() {
    let (backend, seen) = recording_backend().await;
    let (router, _) = single_app(backend.addr);
    let proxy = Proxy::start(router, fast_settings()).await;
    let served: [&[u8]; 4] = [
        b"OPTIONS * HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: [::1]:8080\r\nX-Tab: a\tb\r\nConnection: close\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n05 ;a=b\r\nhello\r\n0\r\n\r\n",
        b"GET / HTTP/1.0\r\n\r\n",
    ];
    for raw in served {
        let response = exchange_raw(proxy.addr, raw).await;
        assert!(
            response.starts_with("HTTP/1.1 200 "),
            "{:?} → {response}",
            String::from_utf8_lossy(raw)
        );
    }
    let seen = seen.lock().expect("lock").clone();
    assert_eq!(seen.len(), 4, "{seen:?}");
    assert_eq!(seen[0], "OPTIONS * host=example.com body=0");
    assert_eq!(seen[2], "POST / host=example.com body=5");
}
