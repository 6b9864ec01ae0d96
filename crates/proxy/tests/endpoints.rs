//! A release with several endpoints: balancing, ejection of an endpoint
//! that goes away, the engine's health marks, replacing the set while live,
//! and the retry rule across endpoints. Real sockets on loopback.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{fast_settings, tcp_server, text, Backend, Client, Proxy};
use cutover_proxy::{Balance, DrainOutcome, EndpointSpec, Router, Upstream};
use cutover_test_support::load::{Load, LoadReport};
use http::StatusCode;
use http_body_util::Full;
use tokio::io::AsyncReadExt;
use tokio::sync::Notify;

/// A router with app `app` on every host, live on `upstream`.
fn router_for(app: &str, upstream: &Arc<Upstream>) -> Router {
    let router = Router::new(vec![(app.into(), vec!["*".into()])]);
    router.set_live(app, Some(upstream.clone()));
    router
}

fn specs(backends: &[&Backend]) -> Vec<EndpointSpec> {
    backends
        .iter()
        .enumerate()
        .map(|(i, b)| EndpointSpec::new(b.addr, format!("task-{i}")))
        .collect()
}

async fn until_answered(load: &Load, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while load.answered() < count {
        assert!(
            Instant::now() < deadline,
            "load stalled at {}",
            load.answered()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits until `condition` holds (bounded).
async fn until(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn stop_load(load: Load) -> LoadReport {
    tokio::task::spawn_blocking(move || load.stop())
        .await
        .expect("load stops")
}

fn assert_no_failure(report: &LoadReport) {
    let failures = report.failures();
    assert!(
        failures.is_empty(),
        "{} failed of {} requests: {:?}",
        failures.len(),
        report.requests(),
        &failures[..failures.len().min(10)]
    );
}

/// The proxy's metrics as Prometheus text.
fn metrics_text() -> String {
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register_collector(Box::new(cutover_proxy::metrics::collector()));
    let mut text = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut text, &registry).expect("encode");
    text
}

fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series))
        .and_then(|rest| rest.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_spread_over_every_endpoint_and_a_switch_between_endpoint_sets_loses_none() {
    let (v1a, v1b) = (Backend::named("v1").await, Backend::named("v1").await);
    let blue = Upstream::with_endpoints(
        "spread",
        "blue",
        "v1",
        specs(&[&v1a, &v1b]),
        Balance::LeastRequests,
    );
    let router = router_for("spread", &blue);
    let proxy = Proxy::start(router.clone(), fast_settings()).await;

    let load = Load::start(proxy.addr.port(), 8, 100_000, Duration::from_secs(60));
    until_answered(&load, 300).await;
    let (v2a, v2b) = (Backend::named("v2").await, Backend::named("v2").await);
    let green = Upstream::with_endpoints(
        "spread",
        "green",
        "v2",
        specs(&[&v2a, &v2b]),
        Balance::RoundRobin,
    );
    let old = router
        .set_live("spread", Some(green.clone()))
        .expect("live");
    let outcome = old.drain(Duration::from_secs(10)).await;
    assert!(
        matches!(outcome, DrainOutcome::Drained { .. }),
        "{outcome:?}"
    );
    let drained_at = load.answered();
    until_answered(&load, drained_at + 300).await;
    let report = stop_load(load).await;

    assert_no_failure(&report);
    report.assert_versions_in_order(&["v1", "v2"]);
    for (name, backend) in [("v1a", &v1a), ("v1b", &v1b), ("v2a", &v2a), ("v2b", &v2b)] {
        assert!(backend.requests() > 0, "endpoint {name} got no request");
    }
    assert_eq!(old.in_flight(), 0);
    let stats = green.endpoints();
    assert_eq!(stats.len(), 2);
    assert_eq!(stats[0].label, "task-0");
    assert!(stats
        .iter()
        .all(|e| e.healthy && e.requests > 0 && e.failures == 0));

    let text = metrics_text();
    for backend in [&v2a, &v2b] {
        let series = format!(
            "cutover_proxy_endpoint_requests_total{{app=\"spread\",slot=\"green\",endpoint=\"{}\"}}",
            backend.addr
        );
        let sent = metric(&text, &series).unwrap_or_else(|| panic!("{series} in {text}"));
        assert_eq!(sent, backend.requests() as f64, "{series}");
    }
    let in_flight = format!(
        "cutover_proxy_endpoint_in_flight_requests{{app=\"spread\",slot=\"green\",endpoint=\"{}\"}}",
        v2a.addr
    );
    assert_eq!(metric(&text, &in_flight), Some(0.0), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_that_goes_away_is_ejected_without_a_failed_request_and_served_again_when_back()
{
    let (a, b) = (Backend::named("v1").await, Backend::named("v1").await);
    let a_addr = a.addr;
    let upstream = Upstream::with_endpoints(
        "eject",
        "blue",
        "v1",
        specs(&[&a, &b]),
        Balance::LeastRequests,
    );
    let proxy = Proxy::start(router_for("eject", &upstream), fast_settings()).await;
    let load = Load::start(proxy.addr.port(), 8, 100_000, Duration::from_secs(60));
    until_answered(&load, 200).await;
    assert!(a.requests() > 0 && b.requests() > 0);

    // The endpoint's listener and connections close, as when a task dies.
    a.stop();
    let stopped_at = load.answered();
    until_answered(&load, stopped_at + 300).await;
    let ejected = &upstream.endpoints()[0];
    assert!(!ejected.healthy && ejected.ejected, "{ejected:?}");
    assert!(ejected.failures > 0);

    // Back on the same address: a trial request after the backoff (1 s)
    // finds it and it is in rotation again.
    let a_again = Backend::start_at(a_addr, |_req| async { text(StatusCode::OK, "v1") }).await;
    until("the endpoint back after its backoff to get traffic", || {
        a_again.requests() > 10
    })
    .await;
    assert!(upstream.endpoints()[0].healthy);

    // Gone again, then back and marked healthy by the engine: at once.
    a_again.stop();
    until("the endpoint to be ejected again", || {
        upstream.endpoints()[0].ejected
    })
    .await;
    let a_third = Backend::start_at(a_addr, |_req| async { text(StatusCode::OK, "v1") }).await;
    upstream.set_endpoint_healthy(a_addr, true);
    assert!(upstream.endpoints()[0].healthy);
    until("the endpoint marked healthy to get traffic", || {
        a_third.requests() > 10
    })
    .await;

    let report = stop_load(load).await;
    assert_no_failure(&report);
    assert_eq!(upstream.stats().responses_5xx, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_marked_unhealthy_gets_no_new_request_until_marked_healthy() {
    let (a, b) = (Backend::named("a").await, Backend::named("b").await);
    let upstream = Upstream::with_endpoints(
        "health",
        "blue",
        "v1",
        specs(&[&a, &b]),
        Balance::LeastRequests,
    );
    let proxy = Proxy::start(router_for("health", &upstream), fast_settings()).await;
    let mut client = Client::connect(proxy.addr).await;

    upstream.set_endpoint_healthy(a.addr, false);
    assert!(!upstream.endpoints()[0].healthy);
    for _ in 0..40 {
        let reply = client.get("example.com", "/").await.expect("request");
        assert_eq!(reply.body, "b");
    }
    assert_eq!(a.requests(), 0);

    upstream.set_endpoint_healthy(a.addr, true);
    for _ in 0..40 {
        let reply = client.get("example.com", "/").await.expect("request");
        assert_eq!(reply.status, StatusCode::OK);
    }
    assert!(a.requests() > 0, "back in rotation, it gets requests again");
    assert_eq!(a.requests() + b.requests(), 80);
}

/// A backend whose `/slow` requests wait until the test releases them.
async fn holding_backend(release: Arc<Notify>, held: Arc<AtomicUsize>) -> Backend {
    Backend::start(move |req| {
        let (release, held) = (release.clone(), held.clone());
        async move {
            if req.uri().path() == "/slow" {
                let released = release.notified();
                held.fetch_add(1, Ordering::SeqCst);
                released.await;
            }
            text(StatusCode::OK, "v1")
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replacing_endpoints_under_load_fails_nothing_and_drain_waits_for_a_removed_endpoints_request(
) {
    let (release, held) = (Arc::new(Notify::new()), Arc::new(AtomicUsize::new(0)));
    let a = holding_backend(release.clone(), held.clone()).await;
    let (b, c) = (Backend::named("v1").await, Backend::named("v1").await);
    let upstream = Upstream::with_endpoints(
        "replace",
        "blue",
        "v1",
        specs(&[&a, &b]),
        Balance::LeastRequests,
    );
    let router = router_for("replace", &upstream);
    let proxy = Proxy::start(router.clone(), fast_settings()).await;

    // A slow request held on endpoint a.
    upstream.set_endpoint_healthy(b.addr, false);
    let addr = proxy.addr;
    let slow = tokio::spawn(async move {
        let mut client = Client::connect(addr).await;
        client
            .get("example.com", "/slow")
            .await
            .expect("slow request")
    });
    until("the slow request to reach a", || {
        held.load(Ordering::SeqCst) == 1
    })
    .await;
    upstream.set_endpoint_healthy(b.addr, true);

    let load = Load::start(proxy.addr.port(), 8, 100_000, Duration::from_secs(60));
    until_answered(&load, 200).await;
    upstream.set_endpoints(specs(&[&b, &c]));
    assert_eq!(upstream.addr(), b.addr);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let a_requests = a.requests();
    let replaced_at = load.answered();
    until_answered(&load, replaced_at + 300).await;
    assert_eq!(
        a.requests(),
        a_requests,
        "a removed endpoint got a new request"
    );
    assert!(c.requests() > 0, "the new endpoint gets traffic");
    let endpoints: Vec<SocketAddr> = upstream.endpoints().iter().map(|e| e.addr).collect();
    assert_eq!(endpoints, [b.addr, c.addr]);

    // The slow request on the removed endpoint still holds the drain.
    let next = Upstream::new("replace", "green", "v2", c.addr);
    let old = router.set_live("replace", Some(next)).expect("live");
    let drain = tokio::spawn(async move { old.drain(Duration::from_secs(30)).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!drain.is_finished(), "drain ended with a request in flight");
    assert_eq!(upstream.in_flight(), 1);
    release.notify_waiters();
    let reply = slow.await.expect("slow task");
    assert_eq!(reply.status, StatusCode::OK);
    let outcome = tokio::time::timeout(Duration::from_secs(10), drain)
        .await
        .expect("drain ends once the request completes")
        .expect("drain task");
    assert!(
        matches!(outcome, DrainOutcome::Drained { .. }),
        "{outcome:?}"
    );

    let report = stop_load(load).await;
    assert_no_failure(&report);
}

/// Requests the slow endpoint got while 8 keep-alive clients ran for
/// `duration` against an upstream balanced by `balance`.
async fn slow_endpoint_share(balance: Balance, duration: Duration) -> (usize, usize) {
    let slow = Backend::start(|_req| async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        text(StatusCode::OK, "slow")
    })
    .await;
    let fast = Backend::named("fast").await;
    let app = format!("balance-{balance}");
    let upstream = Upstream::with_endpoints(&app, "blue", "v1", specs(&[&slow, &fast]), balance);
    assert_eq!(upstream.balance(), balance);
    let proxy = Proxy::start(router_for(&app, &upstream), fast_settings()).await;
    let load = Load::start(proxy.addr.port(), 8, 1_000_000, duration);
    let report = tokio::task::spawn_blocking(move || load.stop_when_done())
        .await
        .expect("load");
    assert_no_failure(&report);
    (slow.requests(), fast.requests())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_requests_sends_fewer_requests_than_round_robin_to_a_slow_endpoint() {
    let window = Duration::from_secs(2);
    let (slow_lr, fast_lr) = slow_endpoint_share(Balance::LeastRequests, window).await;
    let (slow_rr, fast_rr) = slow_endpoint_share(Balance::RoundRobin, window).await;
    println!(
        "slow endpoint (200 ms) vs fast, 8 clients, {window:?}: \
         least_requests slow={slow_lr} fast={fast_lr}; round_robin slow={slow_rr} fast={fast_rr}"
    );
    assert!(
        slow_lr < slow_rr,
        "least_requests sent {slow_lr} to the slow endpoint, round_robin {slow_rr}"
    );
}

/// A server that reads what a request sends, then closes without answering.
async fn hanging_up_server(connections: Arc<AtomicUsize>) -> SocketAddr {
    let (addr, _task) = tcp_server(move |mut stream| {
        connections.fetch_add(1, Ordering::SeqCst);
        async move {
            let mut buf = [0u8; 4096];
            while let Ok(Ok(n)) =
                tokio::time::timeout(Duration::from_millis(100), stream.read(&mut buf)).await
            {
                if n == 0 {
                    break;
                }
            }
        }
    })
    .await;
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_that_was_sent_is_never_replayed_on_another_endpoint_but_a_get_is() {
    let hang_ups = Arc::new(AtomicUsize::new(0));
    let hanging = hanging_up_server(hang_ups.clone()).await;
    let other = Backend::named("other").await;
    let upstream = Upstream::with_endpoints(
        "replay",
        "blue",
        "v1",
        vec![
            EndpointSpec::new(hanging, "hangs-up"),
            EndpointSpec::new(other.addr, "answers"),
        ],
        Balance::RoundRobin,
    );
    // Every first attempt goes to the endpoint that hangs up; a retry could
    // still reach the other one (tried when nothing else is left).
    upstream.set_endpoint_healthy(other.addr, false);
    let proxy = Proxy::start(router_for("replay", &upstream), fast_settings()).await;

    let mut client = Client::connect(proxy.addr).await;
    let post = http::Request::post("/orders")
        .header(http::header::HOST, "example.com")
        .body(Full::new(Bytes::from_static(b"{\"pay\":100}")))
        .expect("request");
    let reply = client.request(post).await.expect("answer");
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{}", reply.body);
    assert_eq!(hang_ups.load(Ordering::SeqCst), 1, "sent once, not again");
    assert_eq!(other.requests(), 0, "a sent POST went to a second endpoint");

    let mut client = Client::connect(proxy.addr).await;
    let reply = client.get("example.com", "/").await.expect("answer");
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body, "other");
    assert_eq!(hang_ups.load(Ordering::SeqCst), 2);
    assert_eq!(other.requests(), 1, "the bodiless GET was replayed once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_sends_even_a_post_to_another_endpoint_and_one_endpoint_still_answers_502(
) {
    let refusing = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr")
        // Dropped: connections to it are refused.
    };
    let other = Backend::start(|req| async move {
        let body = http_body_util::BodyExt::collect(req.into_body())
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        text(StatusCode::OK, body)
    })
    .await;
    let upstream = Upstream::with_endpoints(
        "refused",
        "blue",
        "v1",
        vec![
            EndpointSpec::new(refusing, "gone"),
            EndpointSpec::new(other.addr, "answers"),
        ],
        Balance::RoundRobin,
    );
    let proxy = Proxy::start(router_for("refused", &upstream), fast_settings()).await;
    let mut client = Client::connect(proxy.addr).await;
    for i in 0..6 {
        let post = http::Request::post("/orders")
            .header(http::header::HOST, "example.com")
            .body(Full::new(Bytes::from(format!("order {i}"))))
            .expect("request");
        let reply = client.request(post).await.expect("answer");
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.body, format!("order {i}"));
    }
    let gone = &upstream.endpoints()[0];
    assert!(gone.ejected);
    assert_eq!(
        gone.failures, 1,
        "ejected at the first refusal, not tried again"
    );
    assert_eq!(upstream.stats().connect_errors, 1);

    let alone = Upstream::new("refused", "green", "v2", refusing);
    let proxy = Proxy::start(router_for("refused", &alone), fast_settings()).await;
    let mut client = Client::connect(proxy.addr).await;
    for _ in 0..2 {
        let reply = client.get("example.com", "/").await.expect("answer");
        assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    }
    assert_eq!(
        alone.stats().connect_errors,
        2,
        "a lone endpoint is always tried"
    );
}

/// An h2c (HTTP/2 prior knowledge) server answering `name`, counting
/// connections and requests.
async fn h2c_backend(name: &'static str) -> (SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let (connections, requests) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (conns, reqs) = (connections.clone(), requests.clone());
    let (addr, _task) = tcp_server(move |stream| {
        conns.fetch_add(1, Ordering::SeqCst);
        let reqs = reqs.clone();
        async move {
            let service = hyper::service::service_fn(move |req: http::Request<_>| {
                reqs.fetch_add(1, Ordering::SeqCst);
                let version = req.version();
                async move {
                    Ok::<_, std::convert::Infallible>(text(
                        StatusCode::OK,
                        format!("{name} {version:?}"),
                    ))
                }
            });
            let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        }
    })
    .await;
    (addr, connections, requests)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_endpoints_each_get_their_own_connection_and_a_refusing_one_is_skipped() {
    let (a, a_conns, a_reqs) = h2c_backend("a").await;
    let (b, b_conns, b_reqs) = h2c_backend("b").await;
    let refusing = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr")
    };
    let upstream = Upstream::with_endpoints(
        "grpc-spread",
        "blue",
        "v1",
        vec![
            EndpointSpec::new(refusing, "gone"),
            EndpointSpec::new(a, "a"),
            EndpointSpec::new(b, "b"),
        ],
        Balance::RoundRobin,
    );
    let router = router_for("grpc-spread", &upstream);
    router.set_upstream_protocol("grpc-spread", cutover_proxy::UpstreamProtocol::H2c);
    let proxy = Proxy::start(router, fast_settings()).await;

    let mut client = Client::connect(proxy.addr).await;
    for _ in 0..20 {
        let reply = client.get("grpc.test", "/").await.expect("answer");
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        assert!(reply.body.ends_with("HTTP/2.0"), "{}", reply.body);
    }
    assert_eq!(
        a_reqs.load(Ordering::SeqCst) + b_reqs.load(Ordering::SeqCst),
        20
    );
    assert!(a_reqs.load(Ordering::SeqCst) > 0 && b_reqs.load(Ordering::SeqCst) > 0);
    assert_eq!(
        a_conns.load(Ordering::SeqCst),
        1,
        "one multiplexed connection per endpoint"
    );
    assert_eq!(b_conns.load(Ordering::SeqCst), 1);
    let gone = &upstream.endpoints()[0];
    assert!(gone.ejected && gone.failures == 1, "{gone:?}");
}
