//! WebSocket and other HTTP/1.1 upgrades through the proxy: tunnelled both
//! ways, part of their upstream's drain, closed (with a WebSocket close
//! frame 1001 to both sides) when the drain times out.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{fast_settings, read_more, single_app, tcp_server, Proxy};
use cutover_proxy::{DrainOutcome, ProxySettings, Upstream};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::handshake::server::{
    ErrorResponse, Request as ServerRequest, Response as ServerResponse,
};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

type Ws = WebSocketStream<TcpStream>;

/// A WebSocket echo server naming itself in the handshake (`x-backend`);
/// reports what it receives: `binary <len>`, `close <code> <reason>`.
struct WsBackend {
    addr: SocketAddr,
    events: mpsc::UnboundedReceiver<String>,
    task: JoinHandle<()>,
}

impl Drop for WsBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn ws_backend(name: &'static str) -> WsBackend {
    let (tx, events) = mpsc::unbounded_channel();
    let (addr, task) = tcp_server(move |stream| {
        let tx = tx.clone();
        async move {
            #[allow(clippy::result_large_err)] // tungstenite's callback signature
            let callback = |_req: &ServerRequest, mut res: ServerResponse| {
                res.headers_mut()
                    .insert("x-backend", http::HeaderValue::from_static(name));
                Ok::<_, ErrorResponse>(res)
            };
            let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else {
                return;
            };
            while let Some(Ok(message)) = ws.next().await {
                if let Message::Binary(data) = &message {
                    let _ = tx.send(format!("binary {}", data.len()));
                }
                if let Message::Close(frame) = &message {
                    let text = frame.as_ref().map_or("close none".into(), |f| {
                        format!("close {} {}", u16::from(f.code), f.reason)
                    });
                    let _ = tx.send(text);
                }
                if (message.is_text() || message.is_binary()) && ws.send(message).await.is_err() {
                    return;
                }
            }
        }
    })
    .await;
    WsBackend { addr, events, task }
}

/// Opens a WebSocket through the proxy; returns it with the backend's name.
async fn ws_connect(proxy: SocketAddr) -> (Ws, String) {
    let stream = TcpStream::connect(proxy).await.expect("connect");
    let request: Request = Request::builder()
        .uri("ws://app.test/ws")
        .header("host", "app.test")
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header(
            "sec-websocket-key",
            tokio_tungstenite::tungstenite::handshake::client::generate_key(),
        )
        .body(())
        .expect("request");
    let (ws, response) = tokio_tungstenite::client_async(request, stream)
        .await
        .expect("websocket handshake through the proxy");
    let name = response
        .headers()
        .get("x-backend")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    (ws, name)
}

async fn echo(ws: &mut Ws, text: &str) -> String {
    ws.send(Message::text(text)).await.expect("send");
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Text(reply)))) => return reply.to_string(),
            Ok(Some(Ok(_))) => continue,
            other => panic!("no echo: {other:?}"),
        }
    }
}

async fn until<F: Fn() -> bool>(what: &str, condition: F) {
    for _ in 0..1000 {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn websocket_session_keeps_echoing_across_a_switch_and_the_drain_ends_when_it_closes() {
    let blue = ws_backend("blue").await;
    let green = ws_backend("green").await;
    let (router, old) = single_app(blue.addr);
    let proxy = Proxy::start(router.clone(), fast_settings()).await;

    let (mut session, name) = ws_connect(proxy.addr).await;
    assert_eq!(name, "blue");
    assert_eq!(echo(&mut session, "one").await, "one");
    assert_eq!(old.upgraded(), 1);
    assert_eq!(old.in_flight(), 1, "the tunnel counts as in flight");

    let new = Upstream::new("web", "green", "v2", green.addr);
    router.set_live("web", Some(new.clone()));
    let drain = tokio::spawn({
        let old = old.clone();
        async move { old.drain(Duration::from_secs(30)).await }
    });

    let (mut fresh, name) = ws_connect(proxy.addr).await;
    assert_eq!(name, "green", "a new session lands on the new release");
    assert_eq!(echo(&mut fresh, "two").await, "two");
    for i in 0..20 {
        let text = format!("still {i}");
        assert_eq!(
            echo(&mut session, &text).await,
            text,
            "the old session keeps working"
        );
    }
    assert!(!drain.is_finished(), "the drain waits for the open session");

    session.close(None).await.expect("close");
    while let Some(Ok(_)) = session.next().await {}
    let outcome = tokio::time::timeout(Duration::from_secs(10), drain)
        .await
        .expect("the drain ends once the session closed")
        .expect("drain task");
    assert!(
        matches!(outcome, DrainOutcome::Drained { .. }),
        "{outcome:?}"
    );
    assert_eq!(old.upgraded(), 0);
    assert_eq!(new.upgraded(), 1);
    assert_eq!(echo(&mut fresh, "three").await, "three");
}

#[tokio::test]
async fn drain_timeout_closes_websockets_with_going_away_sent_to_both_sides() {
    let mut blue = ws_backend("blue").await;
    let (router, old) = single_app(blue.addr);
    let proxy = Proxy::start(router.clone(), fast_settings()).await;
    let (mut session, _) = ws_connect(proxy.addr).await;
    assert_eq!(echo(&mut session, "hello").await, "hello");
    // A long message split in frames, so that the tracker follows real data.
    session
        .send(Message::binary(vec![7u8; 200_000]))
        .await
        .expect("send");
    match tokio::time::timeout(Duration::from_secs(10), session.next()).await {
        Ok(Some(Ok(Message::Binary(data)))) => assert_eq!(data.len(), 200_000),
        other => panic!("no binary echo: {other:?}"),
    }

    router.set_live("web", None);
    let outcome = tokio::time::timeout(
        Duration::from_secs(15),
        old.drain(Duration::from_millis(300)),
    )
    .await
    .expect("the drain returns a few seconds after its timeout at most");
    assert_eq!(outcome, DrainOutcome::TimedOut { still_in_flight: 1 });
    assert_eq!(
        old.upgraded(),
        0,
        "the tunnel is gone when the drain returns"
    );

    let mut close = None;
    while let Ok(Some(Ok(message))) =
        tokio::time::timeout(Duration::from_secs(5), session.next()).await
    {
        if let Message::Close(frame) = message {
            close = frame;
        }
    }
    let close = close.expect("the client got a close frame");
    assert_eq!(close.code, CloseCode::Away);
    assert_eq!(close.reason.as_str(), "going away");
    assert_eq!(blue.events.recv().await.as_deref(), Some("binary 200000"));
    let backend_saw = tokio::time::timeout(Duration::from_secs(5), blue.events.recv())
        .await
        .expect("the backend got a close frame")
        .expect("channel");
    assert_eq!(backend_saw, "close 1001 going away");
}

/// The WebSocket handshake by hand, so that frames can be cut anywhere.
async fn raw_ws_connect(proxy: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(proxy).await.expect("connect");
    stream
        .write_all(
            b"GET /ws HTTP/1.1\r\nhost: app.test\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\
              sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        )
        .await
        .expect("write");
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    stream
}

#[tokio::test]
async fn close_frame_waits_for_the_end_of_a_frame_in_progress() {
    let mut blue = ws_backend("blue").await;
    let (router, old) = single_app(blue.addr);
    let proxy = Proxy::start(router.clone(), fast_settings()).await;
    let mut stream = raw_ws_connect(proxy.addr).await;

    // A masked binary frame of 1000 bytes, sent in two parts around the
    // drain timeout.
    let mut frame = vec![0x82, 0x80 | 126];
    frame.extend_from_slice(&1000u16.to_be_bytes());
    frame.extend_from_slice(&[0, 0, 0, 0]); // mask key 0: payload as is
    frame.extend(std::iter::repeat_n(9u8, 1000));
    stream.write_all(&frame[..300]).await.expect("first part");
    until("the tunnel to open", || old.upgraded() == 1).await;

    router.set_live("web", None);
    let drain = tokio::spawn({
        let old = old.clone();
        async move { old.drain(Duration::from_millis(100)).await }
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    stream.write_all(&frame[300..]).await.expect("second part");

    let outcome = tokio::time::timeout(Duration::from_secs(15), drain)
        .await
        .expect("drain returns")
        .expect("drain task");
    assert_eq!(outcome, DrainOutcome::TimedOut { still_in_flight: 1 });
    assert_eq!(
        blue.events.recv().await.as_deref(),
        Some("binary 1000"),
        "the frame in progress reached the backend whole"
    );
    assert_eq!(
        blue.events.recv().await.as_deref(),
        Some("close 1001 going away"),
        "then the close frame"
    );
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
    assert!(
        rest.windows(12).any(|w| w == b"\x03\xe9going away"),
        "the client got a close frame 1001: {rest:?}"
    );
}

/// A backend for `Upgrade: raw-echo`: 101, then echoes raw bytes.
async fn raw_upgrade_backend() -> (SocketAddr, JoinHandle<()>) {
    let (addr, task) = tcp_server(move |mut stream| {
        async move {
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                if stream.read(&mut byte).await.unwrap_or(0) == 0 {
                    return;
                }
                head.push(byte[0]);
            }
            let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
            if !head.contains("upgrade: raw-echo") || !head.contains("connection: upgrade") {
                let _ = stream
                    .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 2\r\n\r\nno")
                    .await;
                return;
            }
            let _ = stream
                .write_all(b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: raw-echo\r\n\r\n")
                .await;
            let (mut r, mut w) = stream.split();
            let _ = tokio::io::copy(&mut r, &mut w).await;
        }
    })
    .await;
    (addr, task)
}

async fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    // A byte at a time: what the tunnel sends after the head stays unread.
    while !head.ends_with(b"\r\n\r\n") {
        read_more(stream, &mut head, 1).await;
    }
    String::from_utf8_lossy(&head).into_owned()
}

#[tokio::test]
async fn other_upgrades_are_tunnelled_and_cut_at_the_drain_timeout() {
    let (backend, _task) = raw_upgrade_backend().await;
    let (router, old) = single_app(backend);
    let proxy = Proxy::start(router.clone(), fast_settings()).await;
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    stream
        .write_all(b"GET /tunnel HTTP/1.1\r\nhost: app.test\r\nconnection: upgrade\r\nupgrade: raw-echo\r\n\r\n")
        .await
        .expect("write");
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("upgrade: raw-echo"),
        "{head}"
    );
    for round in 0..3 {
        let text = format!("bytes {round}\n");
        stream.write_all(text.as_bytes()).await.expect("write");
        let mut back = vec![0u8; text.len()];
        tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut back))
            .await
            .expect("echo in time")
            .expect("echo");
        assert_eq!(back, text.as_bytes());
    }
    assert_eq!(old.upgraded(), 1);

    router.set_live("web", None);
    let outcome = old.drain(Duration::from_millis(200)).await;
    assert_eq!(outcome, DrainOutcome::TimedOut { still_in_flight: 1 });
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest))
        .await
        .expect("the proxy closed the tunnel");
    assert!(read.is_ok() && rest.is_empty(), "{read:?} {rest:?}");
    // The proxy's worker lets go of the tunnel right after closing it.
    tokio::time::timeout(Duration::from_secs(5), async {
        while old.upgraded() != 0 || old.in_flight() != 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the tunnel no longer counts once closed");
}

#[tokio::test]
async fn upgrade_refused_by_the_upstream_is_an_ordinary_response() {
    let (backend, _task) = raw_upgrade_backend().await;
    let (router, upstream) = single_app(backend);
    let proxy = Proxy::start(router, fast_settings()).await;
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    stream
        .write_all(
            b"GET / HTTP/1.1\r\nhost: app.test\r\nconnection: upgrade\r\nupgrade: other\r\n\r\n",
        )
        .await
        .expect("write");
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    let mut body = [0u8; 2];
    stream.read_exact(&mut body).await.expect("body");
    assert_eq!(&body, b"no");
    until("the request to end", || upstream.in_flight() == 0).await;
    assert_eq!(upstream.upgraded(), 0);
}

#[tokio::test]
async fn upgraded_connection_is_not_closed_by_the_client_idle_or_header_timeouts() {
    let blue = ws_backend("blue").await;
    let (router, upstream) = single_app(blue.addr);
    let settings = ProxySettings {
        header_read_timeout: Duration::from_millis(200),
        idle_timeout: Duration::from_millis(200),
        ..fast_settings()
    };
    let proxy = Proxy::start(router, settings).await;
    let (mut session, _) = ws_connect(proxy.addr).await;
    assert_eq!(echo(&mut session, "a").await, "a");
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(echo(&mut session, "b").await, "b");
    drop(session);
    until("the tunnel to close", || upstream.upgraded() == 0).await;
    assert_eq!(upstream.in_flight(), 0);
}
