//! Invariants 3 and 4: the switch is atomic and loses no request; a drain
//! ends as soon as the last in-flight request (or response body) finishes.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{fast_settings, get, single_app, text, Backend, ChannelBody, Client, Proxy};
use cutover_proxy::{DrainOutcome, Router, Upstream};
use cutover_test_support::load::Load;
use http::StatusCode;
use http_body_util::BodyExt;
use tokio::sync::{mpsc, Mutex};

/// A backend that names its release in every response.
async fn release_backend(release: usize) -> Backend {
    let name = Bytes::from(format!("r{release}"));
    Backend::start(move |_req| {
        let name = name.clone();
        async move { text(StatusCode::OK, name) }
    })
    .await
}

/// Waits (bounded) until `upstream` has `n` requests in flight.
async fn until_in_flight(upstream: &Upstream, n: usize) {
    for _ in 0..1000 {
        if upstream.in_flight() == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("upstream never reached {n} in-flight requests");
}

/// Waits (bounded) until `load` got `n` answers.
async fn until_at_least(load: &Load, n: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while load.answered() < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "load stalled below {n} requests"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::test]
async fn switch_sends_every_new_request_on_a_keepalive_connection_to_the_new_upstream() {
    let blue = Backend::named("blue").await;
    let green = Backend::named("green").await;
    let (router, old) = single_app(blue.addr);
    let proxy = Proxy::start(router.clone(), fast_settings()).await;

    let mut client = Client::connect(proxy.addr).await;
    for _ in 0..3 {
        assert_eq!(
            client.get("example.com", "/").await.expect("request").body,
            "blue"
        );
    }
    let new = Upstream::new("web", "green", "v2", green.addr);
    let previous = router.set_live("web", Some(new.clone()));
    assert!(Arc::ptr_eq(&previous.expect("previous live"), &old));
    for _ in 0..5 {
        let reply = client.get("example.com", "/").await.expect("request");
        assert_eq!(
            reply.body, "green",
            "same client connection, after the switch"
        );
    }
    assert!(!client.is_closed(), "the client connection was kept alive");
    assert_eq!(blue.requests(), 3);
    assert_eq!(green.requests(), 5);
    assert!(matches!(
        old.drain(Duration::from_secs(30)).await,
        DrainOutcome::Drained { .. }
    ));
    assert_eq!(old.stats().requests, 3);
    assert_eq!(new.stats().requests, 5);
}

/// On epoll workers (`[proxy] io = "epoll"`): every write a system call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_fails_across_many_switches_under_keepalive_load_on_epoll_workers() {
    let (router, backend) = web_live_on_release_0().await;
    let proxy = Proxy::start_on_workers_with_io(
        router.clone(),
        fast_settings(),
        2,
        cutover_proxy::Io::Epoll,
    )
    .await;
    switches_under_keepalive_load_fail_no_request(router, backend, proxy.addr).await;
}

/// The same on several io_uring workers (each client connection and its
/// upstream connections live on one of them; their sends are batched per
/// event-loop turn), as in `cutover serve`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_fails_across_many_switches_on_proxy_worker_threads() {
    let (router, backend) = web_live_on_release_0().await;
    let mut proxy = Proxy::start_on_workers(router.clone(), fast_settings(), 3).await;
    let addr = proxy.addr;
    switches_under_keepalive_load_fail_no_request(router, backend, addr).await;

    // Shutdown with workers: accepting stops and the serve call returns.
    proxy.begin_shutdown();
    tokio::time::timeout(Duration::from_secs(10), proxy.task)
        .await
        .expect("serve returns after shutdown")
        .expect("serve task")
        .expect("serve ends cleanly");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the listener is closed after shutdown"
    );
}

/// App `web` on every host, live on release `r0`.
async fn web_live_on_release_0() -> (Router, Backend) {
    let router = Router::new(vec![("web".into(), vec!["*".into()])]);
    let backend = release_backend(0).await;
    router.set_live(
        "web",
        Some(Upstream::new("web", "blue", "r0", backend.addr)),
    );
    (router, backend)
}

async fn switches_under_keepalive_load_fail_no_request(
    router: Router,
    mut backend: Backend,
    proxy: std::net::SocketAddr,
) {
    const CLIENTS: usize = 8;
    const SWITCHES: usize = 50;
    const MAX_REQUESTS_PER_CLIENT: usize = 50_000;
    const MAX_LOAD_TIME: Duration = Duration::from_secs(120);

    // Keep-alive clients on threads of their own, each on one connection.
    let load = Load::start(
        proxy.port(),
        CLIENTS,
        MAX_REQUESTS_PER_CLIENT,
        MAX_LOAD_TIME,
    );
    until_at_least(&load, 100).await;

    // Each switch: start the new release, publish it, drain the old one,
    // then stop the old process, as the engine does.
    let mut retired = Vec::new();
    for release in 1..=SWITCHES {
        let next_backend = release_backend(release).await;
        let next = Upstream::new("web", "green", &format!("r{release}"), next_backend.addr);
        let old = router.set_live("web", Some(next)).expect("a live upstream");
        let outcome = old.drain(Duration::from_secs(10)).await;
        assert!(
            matches!(outcome, DrainOutcome::Drained { .. }),
            "{outcome:?}"
        );
        backend.stop();
        backend = next_backend;
        retired.push((old.clone(), old.stats().requests));
        let before = load.answered();
        until_at_least(&load, before + 20).await;
    }
    let report = tokio::task::spawn_blocking(move || load.stop())
        .await
        .expect("load stops");

    let failures = report.failures();
    assert!(
        failures.is_empty(),
        "{} failed requests: {:?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    for client in &report.clients {
        for version in &client.versions {
            assert!(
                version.starts_with('r'),
                "answered by no release: {version}"
            );
        }
    }
    assert!(report.requests() >= 100 + 20 * SWITCHES);
    for (old, served_when_drained) in retired {
        assert_eq!(old.in_flight(), 0);
        assert_eq!(
            old.stats().requests,
            served_when_drained,
            "release {} got a request after its drain ended",
            old.release()
        );
        assert_eq!(old.stats().responses_5xx, 0);
    }
}

/// A backend whose response head goes out at once and whose body streams
/// the chunks the test sends, ending when the test drops the sender.
async fn streaming_backend() -> (Backend, mpsc::Sender<Bytes>) {
    let (tx, rx) = mpsc::channel::<Bytes>(4);
    let rx = Arc::new(Mutex::new(Some(rx)));
    let backend = Backend::start(move |_req| {
        let rx = rx.clone();
        async move {
            match rx.lock().await.take() {
                Some(rx) => http::Response::new(ChannelBody(rx).boxed()),
                None => text(StatusCode::OK, "second request"),
            }
        }
    })
    .await;
    (backend, tx)
}

#[tokio::test]
async fn drain_waits_for_in_flight_request_and_ends_as_soon_as_it_finishes() {
    let (slow, chunks) = streaming_backend().await;
    let green = Backend::named("green").await;
    let (router, old) = single_app(slow.addr);
    let proxy = Proxy::start(router.clone(), fast_settings()).await;

    // A response whose head and first chunk have arrived, body still open.
    chunks
        .send(Bytes::from_static(b"part1 "))
        .await
        .expect("chunk");
    let mut slow_client = Client::connect(proxy.addr).await;
    let response = slow_client
        .send(get("example.com", "/slow"))
        .await
        .expect("response head");
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let first = body
        .frame()
        .await
        .expect("a frame")
        .expect("frame ok")
        .into_data()
        .expect("data");
    assert_eq!(&first[..], b"part1 ");
    assert_eq!(
        old.in_flight(),
        1,
        "in flight until the body ends, not just the head"
    );

    router.set_live("web", Some(Upstream::new("web", "green", "v2", green.addr)));
    let drain = tokio::spawn({
        let old = old.clone();
        async move { old.drain(Duration::from_secs(30)).await }
    });
    // New requests already go to green while the old body still streams.
    let mut client = Client::connect(proxy.addr).await;
    assert_eq!(
        client.get("example.com", "/").await.expect("request").body,
        "green"
    );
    tokio::task::yield_now().await;
    assert!(
        !drain.is_finished(),
        "drain must wait for the open response body"
    );
    assert_eq!(old.in_flight(), 1);

    chunks
        .send(Bytes::from_static(b"part2"))
        .await
        .expect("chunk");
    drop(chunks);
    let rest = body.collect().await.expect("rest of body").to_bytes();
    assert_eq!(&rest[..], b"part2");

    let outcome = tokio::time::timeout(Duration::from_secs(5), drain)
        .await
        .expect("drain ends right after the body, well before its 30 s timeout")
        .expect("drain task");
    match outcome {
        DrainOutcome::Drained { waited } => assert!(waited < Duration::from_secs(30)),
        other => panic!("expected Drained, got {other:?}"),
    }
    assert_eq!(old.in_flight(), 0);
    assert!(old.is_retired());
    assert_eq!(
        old.idle_connections(),
        0,
        "a drained upstream keeps no pooled connection"
    );
}

#[tokio::test]
async fn drain_of_an_idle_upstream_returns_at_once() {
    let blue = Backend::named("blue").await;
    let (router, old) = single_app(blue.addr);
    let proxy = Proxy::start(router.clone(), fast_settings()).await;
    let mut client = Client::connect(proxy.addr).await;
    assert_eq!(
        client.get("example.com", "/").await.expect("request").body,
        "blue"
    );
    router.set_live("web", None);
    let outcome = tokio::time::timeout(Duration::from_secs(5), old.drain(Duration::from_secs(30)))
        .await
        .expect("no sleep when nothing is in flight");
    assert!(matches!(outcome, DrainOutcome::Drained { .. }));
}

#[tokio::test]
async fn drain_times_out_with_request_still_in_flight() {
    let stuck = Backend::start(|_req| async {
        std::future::pending::<()>().await;
        text(StatusCode::OK, "never")
    })
    .await;
    let green = Backend::named("green").await;
    let (router, old) = single_app(stuck.addr);
    let proxy = Proxy::start(router.clone(), fast_settings()).await;

    let addr = proxy.addr;
    let request = tokio::spawn(async move {
        Client::connect(addr)
            .await
            .get("example.com", "/")
            .await
            .map(|r| r.status)
    });
    until_in_flight(&old, 1).await;
    router.set_live("web", Some(Upstream::new("web", "green", "v2", green.addr)));
    let outcome = old.drain(Duration::from_millis(300)).await;
    assert_eq!(outcome, DrainOutcome::TimedOut { still_in_flight: 1 });
    assert!(!request.is_finished());
    request.abort();
}
