//! Bodies stream through the proxy with flat memory: a 1 GiB upload under
//! `max_body`, and an endless response read by a slow client (backpressure
//! reaches the upstream instead of piling up in the proxy).
//!
//! The proxy runs in this test process, so its memory is this process's
//! resident set, sampled while the bytes flow. Each test of this file runs
//! alone (a lock), so that one test's memory is not counted in the other's.

mod common;

use cutover_test_support::process::{rss_of, RssSampler};
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use common::{fast_settings, single_app, text, Backend, Proxy};
use cutover_proxy::ProxySettings;
use http::header::{CONTENT_LENGTH, HOST};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;
/// Allowed growth of the resident set while a stream flows. Buffering the
/// stream instead would grow it by hundreds of MiB.
const MAX_GROWTH: u64 = 64 * MIB;

static ALONE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Resident set size of this process, in bytes.
fn rss() -> u64 {
    rss_of(std::process::id())
}

/// `total` bytes (or endless with `None`) made of one shared 64 KiB chunk:
/// generating it allocates nothing. Counts what was produced.
struct Generated {
    chunk: Bytes,
    remaining: Option<u64>,
    produced: Arc<AtomicU64>,
}

impl Generated {
    fn new(total: Option<u64>, produced: Arc<AtomicU64>) -> Generated {
        Generated {
            chunk: Bytes::from(vec![b'z'; 64 * 1024]),
            remaining: total,
            produced,
        }
    }
}

impl Body for Generated {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let len = match self.remaining {
            Some(0) => return Poll::Ready(None),
            Some(n) => n.min(self.chunk.len() as u64),
            None => self.chunk.len() as u64,
        };
        if let Some(n) = &mut self.remaining {
            *n -= len;
        }
        self.produced.fetch_add(len, Ordering::Relaxed);
        Poll::Ready(Some(Ok(Frame::data(self.chunk.slice(..len as usize)))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == Some(0)
    }

    fn size_hint(&self) -> SizeHint {
        match self.remaining {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

/// A backend that reads request bodies frame by frame (keeping none) and
/// answers with the byte count.
async fn counting_backend() -> Backend {
    Backend::start(|req| async move {
        let mut body = req.into_body();
        let mut total = 0u64;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(frame) => total += frame.data_ref().map_or(0, |d| d.len() as u64),
                Err(e) => return text(StatusCode::BAD_REQUEST, e.to_string()),
            }
        }
        text(StatusCode::OK, total.to_string())
    })
    .await
}

async fn client_conn<B>(addr: std::net::SocketAddr) -> hyper::client::conn::http1::SendRequest<B>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    sender
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_upload_under_max_body_streams_through_with_flat_memory() {
    let _alone = ALONE.lock().await;
    let backend = counting_backend().await;
    let (router, _) = single_app(backend.addr);
    let settings = ProxySettings {
        max_body: 2 * GIB,
        ..fast_settings()
    };
    let proxy = Proxy::start(router, settings).await;
    let mut sender = client_conn(proxy.addr).await;

    let produced = Arc::new(AtomicU64::new(0));
    let request = Request::post("/upload")
        .header(HOST, "example.com")
        .header(CONTENT_LENGTH, GIB)
        .body(Generated::new(Some(GIB), produced.clone()))
        .expect("request");
    let before = rss();
    let sampler = RssSampler::start(std::process::id());
    let response = sender.send_request(request).await.expect("response");
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let peak = sampler.peak();
    drop(sampler);

    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        String::from_utf8_lossy(&body),
        GIB.to_string(),
        "the backend got every byte"
    );
    assert_eq!(produced.load(Ordering::Relaxed), GIB);
    let growth = peak.saturating_sub(before);
    println!(
        "1 GiB upload: rss before {} MiB, peak {} MiB",
        before / MIB,
        peak / MIB
    );
    assert!(
        growth < MAX_GROWTH,
        "memory grew by {} MiB while 1 GiB streamed through",
        growth / MIB
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_response_to_a_slow_client_is_held_back_not_buffered() {
    let _alone = ALONE.lock().await;
    let produced = Arc::new(AtomicU64::new(0));
    let backend = Backend::start({
        let produced = produced.clone();
        move |_req| {
            let produced = produced.clone();
            async move { Response::new(Generated::new(None, produced).boxed()) }
        }
    })
    .await;
    let (router, upstream) = single_app(backend.addr);
    let proxy = Proxy::start(router, fast_settings()).await;
    let mut sender = client_conn::<http_body_util::Empty<Bytes>>(proxy.addr).await;
    let request = Request::get("/stream")
        .header(HOST, "example.com")
        .body(http_body_util::Empty::new())
        .expect("request");

    let before = rss();
    let sampler = RssSampler::start(std::process::id());
    let response = sender.send_request(request).await.expect("response");
    assert_eq!(response.status(), StatusCode::OK);
    // The client reads nothing for a while: the upstream must be held back.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let held_back = produced.load(Ordering::Relaxed);
    assert!(
        held_back < MAX_GROWTH,
        "the upstream produced {} MiB that the client has not read",
        held_back / MIB
    );

    // Then 512 MiB are read, then the client goes away mid-stream.
    let mut body = response.into_body();
    let mut received = 0u64;
    while received < 512 * MIB {
        let frame = body.frame().await.expect("stream goes on").expect("frame");
        received += frame.data_ref().map_or(0, |d| d.len() as u64);
    }
    let in_transit = produced.load(Ordering::Relaxed) - received;
    let peak = sampler.peak();
    drop(sampler);
    drop(body);
    drop(sender);
    println!(
        "endless response: held back at {} KiB, in transit {} KiB, rss before {} MiB, peak {} MiB",
        held_back / 1024,
        in_transit / 1024,
        before / MIB,
        peak / MIB
    );
    assert!(
        in_transit < MAX_GROWTH,
        "{} MiB in transit",
        in_transit / MIB
    );
    let growth = peak.saturating_sub(before);
    assert!(
        growth < MAX_GROWTH,
        "memory grew by {} MiB while 512 MiB streamed through",
        growth / MIB
    );
    for _ in 0..500 {
        if upstream.in_flight() == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the endless response still counts as in flight after the client left");
}
