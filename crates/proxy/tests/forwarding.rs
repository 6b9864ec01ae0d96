//! Forwarding: routing by Host, rewritten headers, error statuses, body
//! limits, and the per-upstream keep-alive pool.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{
    fast_settings, read_request_head, single_app, tcp_server, text, Backend, Client, Proxy,
};
use cutover_proxy::{Io, ProxySettings, Router, Upstream};
use http::header::{CONTENT_LENGTH, HOST};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A backend that answers with the request's headers, one `name: value` a line.
async fn echo_headers_backend() -> Backend {
    Backend::start(|req| async move {
        let mut out = String::new();
        for (name, value) in req.headers() {
            out.push_str(&format!(
                "{}: {}\n",
                name,
                value.to_str().unwrap_or("<binary>")
            ));
        }
        let mut response = text(StatusCode::OK, out);
        let headers = response.headers_mut();
        headers.insert("keep-alive", "timeout=5".parse().expect("value"));
        headers.insert("connection", "x-hop".parse().expect("value"));
        headers.insert("x-hop", "secret".parse().expect("value"));
        headers.insert("x-app", "kept".parse().expect("value"));
        response
    })
    .await
}

fn header_lines(body: &str, name: &str) -> Vec<String> {
    let prefix = format!("{name}: ");
    body.lines()
        .filter_map(|line| line.strip_prefix(&prefix).map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn forwarded_headers_reach_the_upstream_and_hop_by_hop_headers_do_not() {
    let backend = echo_headers_backend().await;
    let (router, _) = single_app(backend.addr);
    let proxy = Proxy::start(router, fast_settings()).await;
    let mut client = Client::connect(proxy.addr).await;

    let request = Request::builder()
        .uri("/path?q=1")
        .header(HOST, "App.Example.com:8080")
        .header("x-forwarded-for", "10.1.1.1")
        .header("x-forwarded-proto", "https-spoofed")
        .header("x-real-ip", "10.9.9.9")
        .header("x-request-id", "client-id-42")
        .header("connection", "x-secret")
        .header("x-secret", "hop")
        .header("proxy-authorization", "Basic Zm9vOmJhcg==")
        .header("te", "trailers")
        .header("x-custom", "end-to-end")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let reply = client.request(request).await.expect("request");
    assert_eq!(reply.status, StatusCode::OK);
    let seen = &reply.body;
    assert_eq!(
        header_lines(seen, "host"),
        ["App.Example.com:8080"],
        "Host kept as sent"
    );
    // The client is no trusted proxy (none by default): its chain is
    // replaced (extended only for `trusted_proxies`: forwarded_trust.rs).
    assert_eq!(header_lines(seen, "x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(header_lines(seen, "x-real-ip"), ["127.0.0.1"]);
    assert_eq!(header_lines(seen, "x-forwarded-proto"), ["http"]);
    assert_eq!(
        header_lines(seen, "x-forwarded-host"),
        ["App.Example.com:8080"]
    );
    assert_eq!(header_lines(seen, "x-request-id"), ["client-id-42"]);
    assert_eq!(header_lines(seen, "x-custom"), ["end-to-end"]);
    for hop in ["x-secret", "proxy-authorization", "te", "connection"] {
        assert!(
            header_lines(seen, hop).is_empty(),
            "{hop} reached the upstream:\n{seen}"
        );
    }

    assert_eq!(
        reply.headers.get("x-request-id").expect("request id"),
        "client-id-42"
    );
    assert_eq!(
        reply.headers.get("x-app").expect("end-to-end header"),
        "kept"
    );
    for hop in ["keep-alive", "x-hop"] {
        assert!(reply.headers.get(hop).is_none(), "{hop} reached the client");
    }
}

#[tokio::test]
async fn missing_request_id_is_generated_and_returned_to_the_client() {
    let backend = echo_headers_backend().await;
    let (router, _) = single_app(backend.addr);
    let proxy = Proxy::start(router, fast_settings()).await;
    let mut client = Client::connect(proxy.addr).await;

    let reply = client.get("example.com", "/").await.expect("request");
    let id = reply
        .headers
        .get("x-request-id")
        .expect("request id")
        .to_str()
        .expect("ascii");
    assert_eq!(id.len(), 32);
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(
        header_lines(&reply.body, "x-request-id"),
        [id],
        "upstream saw the same id"
    );
    assert_eq!(header_lines(&reply.body, "x-forwarded-for"), ["127.0.0.1"]);

    let other = client.get("example.com", "/").await.expect("request");
    assert_ne!(other.headers.get("x-request-id").expect("request id"), id);
}

#[tokio::test]
async fn host_routing_picks_app_by_exact_host_and_falls_back_to_star() {
    let web = Backend::named("web").await;
    let api = Backend::named("api").await;
    let router = Router::new(vec![
        ("web".into(), vec!["*".into()]),
        ("api".into(), vec!["api.example.com".into()]),
    ]);
    router.set_live("web", Some(Upstream::new("web", "blue", "v1", web.addr)));
    router.set_live("api", Some(Upstream::new("api", "blue", "v1", api.addr)));
    let proxy = Proxy::start(router, fast_settings()).await;
    let mut client = Client::connect(proxy.addr).await;

    for (host, app) in [
        ("api.example.com", "api"),
        ("API.Example.COM:80", "api"),
        ("www.example.com", "web"),
        ("127.0.0.1:8080", "web"),
        ("api.example.com", "api"),
    ] {
        let reply = client.get(host, "/").await.expect("request");
        assert_eq!(reply.body, app, "Host {host}");
    }
}

#[tokio::test]
async fn unknown_host_without_default_app_gets_404() {
    let api = Backend::named("api").await;
    let router = Router::new(vec![("api".into(), vec!["api.example.com".into()])]);
    router.set_live("api", Some(Upstream::new("api", "blue", "v1", api.addr)));
    let proxy = Proxy::start(router, fast_settings()).await;
    let mut client = Client::connect(proxy.addr).await;

    let reply = client.get("other.example.com", "/").await.expect("request");
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(
        reply.body,
        "cutover: no app serves host 'other.example.com'\n"
    );
    assert_eq!(
        reply.headers.get("content-type").expect("type"),
        "text/plain; charset=utf-8"
    );
    assert!(reply.headers.get("x-request-id").is_some());
    assert_eq!(api.requests(), 0);
    // The connection stays usable after an error response.
    assert_eq!(
        client
            .get("api.example.com", "/")
            .await
            .expect("request")
            .body,
        "api"
    );
}

#[tokio::test]
async fn app_without_live_release_gets_503() {
    let router = Router::new(vec![("web".into(), vec!["*".into()])]);
    let proxy = Proxy::start(router.clone(), fast_settings()).await;
    let mut client = Client::connect(proxy.addr).await;

    let reply = client.get("example.com", "/").await.expect("request");
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.body, "cutover: app 'web' has no live release\n");

    let backend = Backend::named("up").await;
    router.set_live(
        "web",
        Some(Upstream::new("web", "blue", "v1", backend.addr)),
    );
    assert_eq!(
        client.get("example.com", "/").await.expect("request").body,
        "up"
    );
    router.set_live("web", None);
    let reply = client.get("example.com", "/").await.expect("request");
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn refused_upstream_connection_gets_502() {
    let closed_port = {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        listener.local_addr().expect("addr")
    };
    let (router, upstream) = single_app(closed_port);
    let proxy = Proxy::start(router, fast_settings()).await;
    let mut client = Client::connect(proxy.addr).await;

    let reply = client.get("example.com", "/").await.expect("request");
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert_eq!(
        reply.body,
        "cutover: app 'web': its release refused the connection\n"
    );
    let stats = upstream.stats();
    assert_eq!(
        (stats.requests, stats.connect_errors, stats.responses_5xx),
        (1, 1, 1)
    );
    assert_eq!(upstream.in_flight(), 0);
}

#[tokio::test]
async fn upstream_that_does_not_answer_in_time_gets_504() {
    let stuck = Backend::start(|_req| async {
        std::future::pending::<()>().await;
        text(StatusCode::OK, "never")
    })
    .await;
    let (router, upstream) = single_app(stuck.addr);
    let settings = ProxySettings {
        upstream_response_timeout: Duration::from_millis(300),
        ..fast_settings()
    };
    let proxy = Proxy::start(router, settings).await;
    let mut client = Client::connect(proxy.addr).await;

    let reply = client.get("example.com", "/").await.expect("request");
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(
        reply.body,
        "cutover: app 'web': its release did not answer within 300ms\n"
    );
    assert_eq!(upstream.in_flight(), 0);
    assert_eq!(upstream.stats().responses_5xx, 1);
}

#[tokio::test]
async fn upstream_that_does_not_accept_the_connection_in_time_gets_504() {
    // A listener that never accepts and whose accept queue is full: further
    // connection attempts hang in SYN retries.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    let listener = socket.listen(1).expect("listen");
    let addr = listener.local_addr().expect("addr");
    let mut fillers = Vec::new();
    let mut full = false;
    for _ in 0..16 {
        match tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => fillers.push(stream),
            Ok(Err(e)) => panic!("filling the accept queue: {e}"),
            Err(_) => {
                full = true;
                break;
            }
        }
    }
    assert!(full, "the accept queue never filled up");

    let (router, upstream) = single_app(addr);
    let settings = ProxySettings {
        upstream_connect_timeout: Duration::from_millis(300),
        ..fast_settings()
    };
    let proxy = Proxy::start(router, settings).await;
    let mut client = Client::connect(proxy.addr).await;
    let reply = client.get("example.com", "/").await.expect("request");
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(
        reply.body.contains("connecting to its release timed out"),
        "{}",
        reply.body
    );
    assert_eq!(upstream.stats().connect_errors, 1);
}

/// A backend that reads the whole request body and answers with its length.
async fn body_length_backend() -> Backend {
    Backend::start(|req| async move {
        match req.into_body().collect().await {
            Ok(body) => text(StatusCode::OK, body.to_bytes().len().to_string()),
            Err(e) => text(StatusCode::BAD_REQUEST, e.to_string()),
        }
    })
    .await
}

fn small_body_settings() -> ProxySettings {
    ProxySettings {
        max_body: 1000,
        ..fast_settings()
    }
}

#[tokio::test]
async fn body_with_declared_length_over_max_body_is_rejected_with_413_before_reaching_the_upstream()
{
    let backend = body_length_backend().await;
    let (router, _) = single_app(backend.addr);
    let proxy = Proxy::start(router, small_body_settings()).await;

    let mut client = Client::connect(proxy.addr).await;
    let ok = Request::post("/upload")
        .header(HOST, "example.com")
        .body(Full::new(Bytes::from(vec![b'a'; 1000])))
        .expect("request");
    let reply = client.request(ok).await.expect("request");
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (StatusCode::OK, "1000")
    );

    // Only the head is sent: the proxy must answer from Content-Length alone.
    let mut raw = TcpStream::connect(proxy.addr).await.expect("connect");
    raw.write_all(b"POST /upload HTTP/1.1\r\nHost: example.com\r\nContent-Length: 1001\r\n\r\n")
        .await
        .expect("write");
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), raw.read_to_end(&mut response))
        .await
        .expect("answered without the body")
        .expect("read");
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    assert!(
        response.contains("larger than the limit of 1000 bytes"),
        "{response}"
    );
    assert_eq!(
        backend.requests(),
        1,
        "the rejected request never reached the upstream"
    );
}

#[tokio::test]
async fn streamed_body_growing_over_max_body_is_cut_off_with_413() {
    let backend = body_length_backend().await;
    let (router, upstream) = single_app(backend.addr);
    let proxy = Proxy::start(router, small_body_settings()).await;

    let mut raw = TcpStream::connect(proxy.addr).await.expect("connect");
    raw.write_all(
        b"POST /upload HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n",
    )
    .await
    .expect("write head");
    for _ in 0..3 {
        // 3 x 500 bytes > 1000
        raw.write_all(b"1f4\r\n").await.expect("write");
        raw.write_all(&[b'a'; 500]).await.expect("write");
        raw.write_all(b"\r\n").await.expect("write");
    }
    raw.write_all(b"0\r\n\r\n").await.expect("write end");
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), raw.read_to_end(&mut response))
        .await
        .expect("answered")
        .expect("read");
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    assert_eq!(
        upstream.stats().responses_5xx,
        0,
        "not the upstream's fault"
    );
    assert_eq!(upstream.in_flight(), 0);
}

#[tokio::test]
async fn request_and_response_bodies_stream_through() {
    let backend = body_length_backend().await;
    let (router, _) = single_app(backend.addr);
    let proxy = Proxy::start(router, fast_settings()).await;
    let mut client = Client::connect(proxy.addr).await;
    let body = Bytes::from(vec![b'x'; 3 * 1024 * 1024]);
    let request = Request::put("/big")
        .header(HOST, "example.com")
        .header(CONTENT_LENGTH, body.len())
        .body(Full::new(body))
        .expect("request");
    let reply = client.request(request).await.expect("request");
    assert_eq!(reply.body, (3 * 1024 * 1024).to_string());
}

#[tokio::test]
async fn upstream_connections_are_reused_and_never_shared_between_upstreams() {
    let backend = Backend::named("ok").await;
    let (router, first) = single_app(backend.addr);
    let proxy = Proxy::start(router.clone(), fast_settings()).await;
    let mut client = Client::connect(proxy.addr).await;

    for _ in 0..20 {
        assert_eq!(
            client.get("example.com", "/").await.expect("request").body,
            "ok"
        );
    }
    assert_eq!(
        backend.connections(),
        1,
        "one keep-alive upstream connection for sequential requests"
    );
    assert_eq!(first.idle_connections(), 1);

    // A new release on the same address gets its own connections.
    let second = Upstream::new("web", "green", "v2", backend.addr);
    router.set_live("web", Some(second.clone()));
    for _ in 0..5 {
        assert_eq!(
            client.get("example.com", "/").await.expect("request").body,
            "ok"
        );
    }
    assert_eq!(backend.connections(), 2);
    assert_eq!(second.idle_connections(), 1);
}

#[tokio::test]
async fn bodyless_responses_pass_through_and_keep_both_connections_reusable() {
    let backend = Backend::start(|req| async move {
        match req.uri().path() {
            "/no-content" => text(StatusCode::NO_CONTENT, ""),
            "/not-modified" => text(StatusCode::NOT_MODIFIED, ""),
            _ => text(StatusCode::OK, "hello"),
        }
    })
    .await;
    let (router, upstream) = single_app(backend.addr);
    let proxy = Proxy::start(router, fast_settings()).await;
    let mut client = Client::connect(proxy.addr).await;

    for _ in 0..3 {
        let head = Request::head("/")
            .header(HOST, "example.com")
            .body(Full::new(Bytes::new()))
            .expect("request");
        let reply = client.request(head).await.expect("HEAD");
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.headers.get(CONTENT_LENGTH).expect("length"), "5");
        assert_eq!(reply.body, "");
        let reply = client.get("example.com", "/no-content").await.expect("204");
        assert_eq!(
            (reply.status, reply.body.as_str()),
            (StatusCode::NO_CONTENT, "")
        );
        let reply = client
            .get("example.com", "/not-modified")
            .await
            .expect("304");
        assert_eq!(reply.status, StatusCode::NOT_MODIFIED);
        let reply = client.get("example.com", "/").await.expect("GET");
        assert_eq!(reply.body, "hello");
    }
    assert_eq!(
        backend.connections(),
        1,
        "the upstream connection was reused throughout"
    );
    assert_eq!(upstream.in_flight(), 0);
    assert!(!client.is_closed());
}

/// How the raw backend below treats a keep-alive connection.
#[derive(Clone, Copy)]
enum CloseMode {
    /// Closes a connection that stays idle this long after a response, like
    /// a server's keep-alive timeout.
    WhenIdleFor(Duration),
    /// Answers the first request; closes the connection when the second one
    /// arrives, without answering: the keep-alive timeout firing just as a
    /// reused connection carries a request.
    OnSecondRequest,
}

/// A raw HTTP/1.1 backend answering `ok` with keep-alive responses.
async fn closing_backend(mode: CloseMode) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let (addr, task) = tcp_server(move |mut stream| {
        async move {
            let mut answered = 0;
            loop {
                let head = match mode {
                    CloseMode::WhenIdleFor(idle) if answered > 0 => {
                        match tokio::time::timeout(idle, read_request_head(&mut stream)).await {
                            Ok(head) => head.is_some(),
                            Err(_) => return, // idle too long: close
                        }
                    }
                    _ => read_request_head(&mut stream).await.is_some(),
                };
                if !head || (matches!(mode, CloseMode::OnSecondRequest) && answered == 1) {
                    return; // dropping the stream closes the connection
                }
                let response = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                if stream.write_all(response).await.is_err() {
                    return;
                }
                answered += 1;
            }
        }
    })
    .await;
    (addr, task)
}

#[tokio::test]
async fn pooled_connection_closed_by_backend_is_retried_transparently() {
    let (addr, backend) = closing_backend(CloseMode::WhenIdleFor(Duration::from_millis(50))).await;
    let (router, upstream) = single_app(addr);
    let proxy = Proxy::start(router, fast_settings()).await;
    let mut client = Client::connect(proxy.addr).await;

    for _ in 0..5 {
        let reply = client.get("example.com", "/").await.expect("request");
        assert_eq!((reply.status, reply.body.as_str()), (StatusCode::OK, "ok"));
        // Longer than the backend's keep-alive timeout: the pooled
        // connection is closed by the time the next request needs it.
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert_eq!(upstream.stats().responses_5xx, 0);
    assert_eq!(upstream.stats().connect_errors, 0);
    backend.abort();
}

#[tokio::test]
async fn idempotent_request_on_a_connection_closed_as_it_was_sent_is_replayed() {
    let (addr, backend) = closing_backend(CloseMode::OnSecondRequest).await;
    let (router, upstream) = single_app(addr);
    let proxy = Proxy::start(router, fast_settings()).await;
    let mut client = Client::connect(proxy.addr).await;

    for _ in 0..3 {
        let reply = client.get("example.com", "/").await.expect("request");
        assert_eq!((reply.status, reply.body.as_str()), (StatusCode::OK, "ok"));
        // Idle long enough that the proxy expects a keep-alive timeout race.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(upstream.stats().responses_5xx, 0);
    backend.abort();
}

#[tokio::test]
async fn a_post_on_a_connection_closed_as_it_was_sent_is_never_replayed() {
    let (addr, backend) = closing_backend(CloseMode::OnSecondRequest).await;
    let (router, _) = single_app(addr);
    // On epoll workers every request takes the full path, so the GET and
    // the POST share the endpoint's pool (the io_uring loop keeps its own
    // connections, and never serves a POST).
    let proxy = Proxy::start_on_workers_with_io(router, fast_settings(), 1, Io::Epoll).await;
    let mut client = Client::connect(proxy.addr).await;
    let reply = client.get("example.com", "/").await.expect("request");
    assert_eq!(reply.status, StatusCode::OK);

    // A POST is never sent twice: the upstream may have acted on it. (It
    // reuses the connection the GET went on, and meets the close.)
    let post = Request::post("/")
        .header(HOST, "example.com")
        .body(Full::new(Bytes::from_static(b"data")))
        .expect("request");
    let reply = client.request(post).await.expect("request");
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    backend.abort();
}

/// A raw HTTP/1.1 backend answering by path with hand-written framings;
/// counts the connections it accepted.
async fn framing_backend() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
    tokio::task::JoinHandle<()>,
) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let accepted = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    let (addr, task) = tcp_server(move |mut stream| {
        counter.fetch_add(1, Ordering::SeqCst);
        async move {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 1024];
            loop {
                let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                    continue;
                };
                let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                buf.drain(..end + 4);
                let target = head.split(' ').nth(1).unwrap_or("/").to_owned();
                let (response, close): (&[u8], bool) = match target.as_str() {
                    "/chunked" => (
                        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6;x=y\r\n world\r\n0\r\nx-trailer: t\r\n\r\n",
                        false,
                    ),
                    "/close" => (b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nuntil close", true),
                    "/nobody" => (b"HTTP/1.1 204 No Content\r\n\r\n", false),
                    "/head" => (b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", false),
                    "/early" => (
                        b"HTTP/1.1 103 Early Hints\r\nlink: </s>\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
                        false,
                    ),
                    "/hop" => (
                        b"HTTP/1.1 200 OK\r\nkeep-alive: timeout=5\r\nconnection: keep-alive, x-hop\r\nx-hop: 1\r\nx-end: 2\r\ncontent-length: 3\r\n\r\nhop",
                        false,
                    ),
                    _ => (b"NOT HTTP AT ALL\r\n\r\n", true),
                };
                if stream.write_all(response).await.is_err() || close {
                    return;
                }
            }
        }
    })
    .await;
    (addr, accepted, task)
}

#[tokio::test]
async fn every_response_framing_passes_through_and_only_reusable_connections_are_reused() {
    use std::sync::atomic::Ordering;
    let (addr, accepted, backend) = framing_backend().await;
    let (router, upstream) = single_app(addr);
    let proxy = Proxy::start(router, fast_settings()).await;
    let mut client = Client::connect(proxy.addr).await;

    for _ in 0..3 {
        let reply = client
            .get("example.com", "/chunked")
            .await
            .expect("request");
        assert_eq!(
            (reply.status, reply.body.as_str()),
            (StatusCode::OK, "hello world")
        );
        let reply = client.get("example.com", "/nobody").await.expect("request");
        assert_eq!(
            (reply.status, reply.body.as_str()),
            (StatusCode::NO_CONTENT, "")
        );
        let reply = client.get("example.com", "/early").await.expect("request");
        assert_eq!((reply.status, reply.body.as_str()), (StatusCode::OK, "ok"));
        let head = Request::head("/head")
            .header(HOST, "example.com")
            .body(Full::new(Bytes::new()))
            .expect("request");
        let reply = client.request(head).await.expect("request");
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(
            reply.headers.get(CONTENT_LENGTH).map(|v| v.as_bytes()),
            Some(&b"5"[..])
        );
        let reply = client.get("example.com", "/hop").await.expect("request");
        assert_eq!(reply.body, "hop");
        assert!(
            reply.headers.get("x-hop").is_none(),
            "a Connection-named header"
        );
        assert!(reply.headers.get("keep-alive").is_none());
        assert_eq!(
            reply.headers.get("x-end").map(|v| v.as_bytes()),
            Some(&b"2"[..])
        );
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "one upstream connection carried every reusable exchange"
    );

    // A body delimited by the connection's close: whole, and not reused.
    let reply = client.get("example.com", "/close").await.expect("request");
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (StatusCode::OK, "until close")
    );
    let reply = client
        .get("example.com", "/chunked")
        .await
        .expect("request");
    assert_eq!(reply.body, "hello world");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);

    // Not HTTP: 502, the client connection stays usable.
    let reply = client
        .get("example.com", "/garbage")
        .await
        .expect("request");
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    let reply = client.get("example.com", "/nobody").await.expect("request");
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    assert_eq!(upstream.in_flight(), 0);
    backend.abort();
}

#[tokio::test]
async fn forwarded_headers_are_the_same_for_requests_with_a_body() {
    let backend = echo_headers_backend().await;
    let (router, _) = single_app(backend.addr);
    let proxy = Proxy::start(router, fast_settings()).await;
    let mut client = Client::connect(proxy.addr).await;
    let request = Request::post("/path")
        .header(HOST, "app.example.com")
        .header("x-forwarded-for", "10.1.1.1")
        .header("x-real-ip", "10.9.9.9")
        .header("connection", "x-secret")
        .header("x-secret", "hop")
        .body(Full::new(Bytes::from_static(b"body")))
        .expect("request");
    let reply = client.request(request).await.expect("request");
    let seen = &reply.body;
    assert_eq!(header_lines(seen, "host"), ["app.example.com"]);
    // The client is no trusted proxy (none by default): its chain is
    // replaced (extended only for `trusted_proxies`: forwarded_trust.rs).
    assert_eq!(header_lines(seen, "x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(header_lines(seen, "x-real-ip"), ["127.0.0.1"]);
    assert_eq!(header_lines(seen, "x-forwarded-host"), ["app.example.com"]);
    assert!(header_lines(seen, "x-secret").is_empty());
}

/// RFC 9112 3.2 and RFC 9110 8.6: heads another server could read
/// differently (no Host in HTTP/1.1, two Hosts, a Content-Length that is not
/// `1*DIGIT`) are answered 400, the connection closed, nothing forwarded.
#[tokio::test]
async fn ambiguous_request_heads_are_refused_with_400_and_never_forwarded() {
    let backend = body_length_backend().await;
    let (router, _) = single_app(backend.addr);
    let proxy = Proxy::start(router, fast_settings()).await;
    let heads: [&[u8]; 4] = [
        b"GET / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: example.com\r\nContent-Length: +3\r\n\r\nabc",
        b"POST / HTTP/1.1\r\nHost: example.com\r\nContent-Length: 3 3\r\n\r\nabc",
    ];
    for head in heads {
        let mut raw = TcpStream::connect(proxy.addr).await.expect("connect");
        raw.write_all(head).await.expect("write");
        let mut response = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), raw.read_to_end(&mut response))
            .await
            .expect("answered and closed")
            .expect("read");
        let response = String::from_utf8_lossy(&response);
        assert!(
            response.starts_with("HTTP/1.1 400"),
            "{:?} → {response}",
            String::from_utf8_lossy(head)
        );
    }
    assert_eq!(
        backend.requests(),
        0,
        "no refused request reached the upstream"
    );
}
