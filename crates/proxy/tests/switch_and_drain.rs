//! Invariants 3 and 4: the switch is atomic and loses no request; a drain
//! ends as soon as the last in-flight request finishes.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{fast_settings, single_app, text, Backend, ChannelBody, Client, Proxy};
use cutover_proxy::{DrainOutcome, Router, Upstream};
use http::StatusCode;
use http_body_util::BodyExt;
use tokio::sync::{mpsc, oneshot, Mutex};

#[tokio::test]
async fn switch_sends_every_new_request_on_a_keepalive_connection_to_the_new_upstream() {
    let blue = Backend::named("blue").await;
    let green = Backend::named("green").await;
    let (router, old) = single_app(blue.addr);
    let proxy = Proxy::start(router.clone(), fast_settings()).await;

    let mut client = Client::connect(proxy.addr).await;
    for _ in 0..3 {
        assert_eq!(client.get("example.com", "/").await.expect("request").body, "blue");
    }
    let previous = router.set_live("web", Some(Upstream::new("web", "green", "v2", green.addr)));
    assert!(Arc::ptr_eq(&previous.expect("previous live"), &old));
    for _ in 0..5 {
        let reply = client.get("example.com", "/").await.expect("request");
        assert_eq!(reply.body, "green", "same client connection, after the switch");
    }
    assert!(!client.is_closed(), "the client connection was kept alive");
    assert_eq!(old.drain(Duration::from_secs(30)).await, DrainOutcome::Drained { waited: match old.drain(Duration::ZERO).await { DrainOutcome::Drained { waited } => waited, other => panic!("{other:?}") } }.max_waited());
}
