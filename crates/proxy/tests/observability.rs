//! Access log and metrics of the proxy, in process.

mod common;

use std::os::fd::AsRawFd;
use std::time::Duration;

use common::{fast_settings, metric, single_app, Backend, Client, Proxy};
use cutover_proxy::{AccessLog, AccessLogFormat, AccessLogTarget, Router, ServeOptions, Upstream};
use http::StatusCode;
use tokio::net::TcpListener;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_behind_a_stalled_writer_drops_and_counts_lines_and_requests_go_on() {
    let backend = Backend::named("ok").await;
    let (router, _) = single_app(backend.addr);
    // A pipe nobody reads: once its buffer and the queue are full, the
    // writer is stuck for good.
    let (stalled, _reader) = tokio::net::unix::pipe::pipe().expect("pipe");
    let path = format!("/proc/self/fd/{}", stalled.as_raw_fd());
    let log = AccessLog::start(
        AccessLogFormat::Combined,
        AccessLogTarget::File(path.into()),
    )
    .expect("access log");
    let proxy = Proxy::start_with(
        router,
        fast_settings(),
        ServeOptions {
            access_log: Some(log),
            ..Default::default()
        },
    )
    .await;
    let addr = proxy.addr;

    let dropped_before = metric("cutover_proxy_access_log_dropped_total").unwrap_or(0.0);
    const CLIENTS: usize = 4;
    const PER_CLIENT: usize = 6_000;
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        clients.push(tokio::spawn(async move {
            let mut client = Client::connect(addr).await;
            let mut ok = 0;
            for _ in 0..PER_CLIENT {
                let reply =
                    tokio::time::timeout(Duration::from_secs(10), client.get("example.com", "/"))
                        .await
                        .expect("a request was held up by the access log")
                        .expect("request");
                if reply.status == StatusCode::OK {
                    ok += 1;
                }
            }
            ok
        }));
    }
    let mut ok = 0;
    for client in clients {
        ok += client.await.expect("client");
    }
    assert_eq!(ok, CLIENTS * PER_CLIENT, "every request was answered");
    let dropped = metric("cutover_proxy_access_log_dropped_total").unwrap_or(0.0) - dropped_before;
    assert!(
        dropped > 0.0,
        "lines beyond the queue are dropped and counted"
    );
}

#[tokio::test]
async fn metrics_count_requests_by_status_class_latency_and_connect_errors() {
    let backend = Backend::start(|req| async move {
        let status = if req.uri().path() == "/fail" {
            StatusCode::INTERNAL_SERVER_ERROR
        } else {
            StatusCode::OK
        };
        common::text(status, "x")
    })
    .await;
    let router = Router::new(vec![("metrics-app".into(), vec!["*".into()])]);
    router.set_live(
        "metrics-app",
        Some(Upstream::new("metrics-app", "blue", "v1", backend.addr)),
    );
    let proxy = Proxy::start(router.clone(), fast_settings()).await;
    let addr = proxy.addr;
    let mut client = Client::connect(addr).await;
    for _ in 0..5 {
        assert_eq!(
            client.get("a.test", "/").await.expect("request").status,
            StatusCode::OK
        );
    }
    assert_eq!(
        client.get("a.test", "/fail").await.expect("request").status,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    let series = |class: &str| {
        format!(
            "cutover_proxy_requests_total{{app=\"metrics-app\",slot=\"blue\",class=\"{class}\"}}"
        )
    };
    assert_eq!(metric(&series("2xx")), Some(5.0));
    assert_eq!(metric(&series("5xx")), Some(1.0));
    assert_eq!(
        metric("cutover_proxy_request_duration_seconds_count{app=\"metrics-app\",slot=\"blue\"}"),
        Some(6.0)
    );

    // A release that refuses connections: 502, counted as a connect error.
    let closed = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let refused = closed.local_addr().expect("addr");
    drop(closed);
    router.set_live(
        "metrics-app",
        Some(Upstream::new("metrics-app", "green", "v2", refused)),
    );
    assert_eq!(
        client.get("a.test", "/").await.expect("request").status,
        StatusCode::BAD_GATEWAY
    );
    assert_eq!(
        metric("cutover_proxy_upstream_connect_errors_total{app=\"metrics-app\",slot=\"green\"}"),
        Some(1.0)
    );
    assert_eq!(
        metric("cutover_proxy_requests_total{app=\"metrics-app\",slot=\"green\",class=\"5xx\"}"),
        Some(1.0)
    );
    // No live release at all: 503 under slot "none".
    router.set_live("metrics-app", None);
    assert_eq!(
        client.get("a.test", "/").await.expect("request").status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        metric("cutover_proxy_requests_total{app=\"metrics-app\",slot=\"none\",class=\"5xx\"}"),
        Some(1.0)
    );
}
