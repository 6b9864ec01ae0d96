//! Streaming semantics: server-sent events pass one by one as the upstream
//! sends them, and `max_body` stops an endless upload at the limit.

mod common;

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use common::{fast_settings, single_app, text, Backend, ChannelBody, Proxy};
use cutover_proxy::ProxySettings;
use http::header::{CONTENT_TYPE, HOST};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Mutex};

#[tokio::test]
async fn sse_events_reach_the_client_one_at_a_time_as_the_upstream_sends_them() {
    let (tx, rx) = mpsc::channel::<Bytes>(1);
    let rx = Arc::new(Mutex::new(Some(rx)));
    let backend = Backend::start(move |_req| {
        let rx = rx.clone();
        async move {
            let rx = rx.lock().await.take().expect("one stream");
            let mut response = Response::new(ChannelBody(rx).boxed());
            response.headers_mut().insert(
                CONTENT_TYPE,
                http::HeaderValue::from_static("text/event-stream"),
            );
            response
        }
    })
    .await;
    let (router, upstream) = single_app(backend.addr);
    let proxy = Proxy::start(router, fast_settings()).await;

    let stream = TcpStream::connect(proxy.addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let request = Request::get("/events")
        .header(HOST, "example.com")
        .header("accept", "text/event-stream")
        .body(http_body_util::Empty::<Bytes>::new())
        .expect("request");
    let response = sender.send_request(request).await.expect("response head");
    assert_eq!(
        response.headers().get(CONTENT_TYPE).map(|v| v.as_bytes()),
        Some(&b"text/event-stream"[..])
    );
    let mut body = response.into_body();
    // Lock-step: the next event is sent only once the previous one arrived,
    // so a proxy that buffered anything would stall here.
    for i in 0..50 {
        let event = format!("id: {i}\ndata: event {i}\n\n");
        tx.send(Bytes::from(event.clone())).await.expect("send");
        let mut got = Vec::new();
        while got.len() < event.len() {
            let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
                .await
                .unwrap_or_else(|_| panic!("event {i} did not arrive on its own"))
                .expect("stream goes on")
                .expect("frame");
            if let Some(data) = frame.data_ref() {
                got.extend_from_slice(data);
            }
        }
        assert_eq!(String::from_utf8_lossy(&got), event);
    }
    assert_eq!(upstream.in_flight(), 1, "the stream is still in flight");
    drop(tx);
    assert!(
        tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .expect("the end arrives")
            .is_none(),
        "the stream ends when the upstream ends it"
    );
}

/// An endless request body; counts what it produced.
struct Endless {
    chunk: Bytes,
    produced: Arc<AtomicU64>,
}

impl Body for Endless {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.produced
            .fetch_add(self.chunk.len() as u64, Ordering::Relaxed);
        Poll::Ready(Some(Ok(Frame::data(self.chunk.clone()))))
    }
}

#[tokio::test]
async fn endless_chunked_upload_is_stopped_at_max_body_with_413() {
    let received = Arc::new(AtomicU64::new(0));
    let backend = Backend::start({
        let received = received.clone();
        move |req| {
            let received = received.clone();
            async move {
                let mut body = req.into_body();
                while let Some(Ok(frame)) = body.frame().await {
                    let len = frame.data_ref().map_or(0, |d| d.len() as u64);
                    received.fetch_add(len, Ordering::Relaxed);
                }
                text(StatusCode::OK, "read")
            }
        }
    })
    .await;
    let (router, upstream) = single_app(backend.addr);
    const LIMIT: u64 = 1 << 20;
    let settings = ProxySettings {
        max_body: LIMIT,
        ..fast_settings()
    };
    let proxy = Proxy::start(router, settings).await;

    let stream = TcpStream::connect(proxy.addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let produced = Arc::new(AtomicU64::new(0));
    let request = Request::post("/upload")
        .header(HOST, "example.com")
        .body(Endless {
            chunk: Bytes::from(vec![b'u'; 16 * 1024]),
            produced: produced.clone(),
        })
        .expect("request");
    let response = tokio::time::timeout(Duration::from_secs(10), sender.send_request(request))
        .await
        .expect("answered in time");
    match response {
        Ok(response) => assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE),
        // The proxy may close the connection while the client still writes;
        // then the client sees the close (or its write refused by a reset)
        // instead of the 413.
        Err(e) => assert!(
            e.is_closed() || e.is_incomplete_message() || write_refused_by_close(&e),
            "{e}"
        ),
    }
    assert!(
        received.load(Ordering::Relaxed) <= LIMIT,
        "the upstream got {} bytes, more than max_body",
        received.load(Ordering::Relaxed)
    );
    // What the client managed to write is bounded by socket buffers: the
    // proxy stopped reading at the limit.
    assert!(
        produced.load(Ordering::Relaxed) < 64 * LIMIT,
        "the client wrote {} bytes",
        produced.load(Ordering::Relaxed)
    );
    for _ in 0..500 {
        if upstream.in_flight() == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the request still counts as in flight");
}

/// A client's body write that failed because the peer closed or reset
/// the connection.
fn write_refused_by_close(e: &hyper::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
            );
        }
        source = cause.source();
    }
    false
}
