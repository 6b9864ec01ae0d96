//! HTTP/2 from clients (h2c with prior knowledge) and to upstreams (h2c,
//! the option for gRPC servers).

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use common::{fast_settings, single_app, tcp_server, Backend, Proxy};
use cutover_proxy::{DrainOutcome, Router, Upstream, UpstreamProtocol};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Empty};
use hyper::body::{Body, Frame, Incoming};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

async fn h2_client(addr: SocketAddr) -> SendRequest<Empty<Bytes>> {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .handshake(TokioIo::new(stream))
        .await
        .expect("h2 handshake with the proxy");
    tokio::spawn(conn);
    sender
}

fn get(uri: &str) -> Request<Empty<Bytes>> {
    Request::get(uri).body(Empty::new()).expect("request")
}

async fn release_backend(name: &'static str) -> Backend {
    Backend::start(move |req| async move {
        // Upstreams get HTTP/1.1 with a Host header made from :authority.
        let host = req
            .headers()
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("")
            .to_owned();
        common::text(StatusCode::OK, format!("{name} {:?} {host}", req.version()))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_client_multiplexes_many_streams_on_one_connection_across_a_switch_without_failure() {
    let blue = release_backend("blue").await;
    let green = release_backend("green").await;
    let (router, old) = single_app(blue.addr);
    let proxy = Proxy::start(router.clone(), fast_settings()).await;
    let sender = h2_client(proxy.addr).await;

    let failures = Arc::new(AtomicUsize::new(0));
    let mut waves = Vec::new();
    for wave in 0..10 {
        if wave == 5 {
            let new = Upstream::new("web", "green", "v2", green.addr);
            router.set_live("web", Some(new));
            let old = old.clone();
            tokio::spawn(async move { old.drain(Duration::from_secs(10)).await });
        }
        let mut streams = Vec::new();
        for _ in 0..50 {
            let mut sender = sender.clone();
            let failures = failures.clone();
            streams.push(tokio::spawn(async move {
                let result = async {
                    let response = sender.send_request(get("http://app.test/x")).await?;
                    let version = response.version();
                    let status = response.status();
                    let body = response.into_body().collect().await?.to_bytes();
                    Ok::<_, hyper::Error>((version, status, body))
                }
                .await;
                match result {
                    Ok((Version::HTTP_2, StatusCode::OK, body)) => {
                        String::from_utf8_lossy(&body).into_owned()
                    }
                    other => {
                        failures.fetch_add(1, Ordering::SeqCst);
                        format!("{other:?}")
                    }
                }
            }));
        }
        let mut bodies = Vec::new();
        for stream in streams {
            bodies.push(stream.await.expect("stream task"));
        }
        waves.push(bodies);
    }
    assert_eq!(failures.load(Ordering::SeqCst), 0, "{waves:?}");
    for body in &waves[0] {
        assert_eq!(body, "blue HTTP/1.1 app.test");
    }
    for body in &waves[9] {
        assert_eq!(body, "green HTTP/1.1 app.test", "after the switch");
    }
    assert!(matches!(
        old.drain(Duration::from_secs(5)).await,
        DrainOutcome::Drained { .. }
    ));
}

/// A body with one data frame, then trailers (what a gRPC server sends).
struct WithTrailers {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl Body for WithTrailers {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(data) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }
}

/// An HTTP/2-only server (prior knowledge) that reports what it received
/// and ends each response with `grpc-status: 0` trailers.
async fn h2_backend() -> SocketAddr {
    let (addr, _) = tcp_server(move |stream| async move {
        let service = hyper::service::service_fn(|req: Request<Incoming>| async move {
            let te = req
                .headers()
                .get(http::header::TE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
                .to_owned();
            let report = format!(
                "{:?} {} {} te={te}",
                req.version(),
                req.uri().authority().map_or("-", |a| a.as_str()),
                req.uri().path()
            );
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", HeaderValue::from_static("0"));
            Ok::<_, Infallible>(Response::new(WithTrailers {
                data: Some(Bytes::from(report)),
                trailers: Some(trailers),
            }))
        });
        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(stream), service)
            .await;
    })
    .await;
    addr
}

#[tokio::test]
async fn h2c_upstream_gets_http2_with_te_trailers_and_its_trailers_reach_the_client() {
    let backend = h2_backend().await;
    let router = Router::new(vec![("grpc".into(), vec!["*".into()])]);
    router.set_upstream_protocol("grpc", UpstreamProtocol::H2c);
    let upstream = Upstream::new("grpc", "blue", "v1", backend);
    router.set_live("grpc", Some(upstream.clone()));
    let proxy = Proxy::start(router, fast_settings()).await;

    let mut sender = h2_client(proxy.addr).await;
    for _ in 0..3 {
        let request = Request::post("http://grpc.test/pkg.Service/Method")
            .header(http::header::TE, "trailers")
            .header(http::header::CONTENT_TYPE, "application/grpc")
            .body(Empty::new())
            .expect("request");
        let response = sender.send_request(request).await.expect("response");
        assert_eq!(response.status(), StatusCode::OK);
        let collected = response.into_body().collect().await.expect("body");
        let trailers = collected
            .trailers()
            .cloned()
            .expect("trailers reached the client");
        assert_eq!(
            trailers.get("grpc-status"),
            Some(&HeaderValue::from_static("0"))
        );
        assert_eq!(
            String::from_utf8_lossy(&collected.to_bytes()),
            "HTTP/2.0 grpc.test /pkg.Service/Method te=trailers"
        );
    }
    assert_eq!(upstream.stats().connect_errors, 0);
    assert_eq!(upstream.in_flight(), 0);
}
