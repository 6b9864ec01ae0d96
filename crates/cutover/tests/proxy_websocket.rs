//! WebSockets through the real daemon across a blue/green switch: an open
//! session stays on its release and keeps the old slot running until it
//! closes (invariant 4), or until `drain_timeout`, when the proxy closes it
//! with a close frame 1001 "going away".

#![allow(clippy::unwrap_used)]

mod common;

use common::{AppOptions, Daemon};
use cutover_test_support::wait::eventually;
use std::net::TcpStream;
use std::time::Duration;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message, WebSocket};

type Ws = WebSocket<TcpStream>;

/// Opens a WebSocket to the test app's `/ws` through the proxy; returns it
/// with the version of the release that answered.
fn ws_open(port: u16) -> (Ws, String) {
    let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let (ws, response) = tungstenite::client::client(format!("ws://127.0.0.1:{port}/ws"), stream)
        .unwrap_or_else(|e| panic!("websocket handshake through the proxy failed: {e}"));
    let version = response
        .headers()
        .get("x-testapp-version")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (ws, version)
}

fn echo(ws: &mut Ws, text: &str) {
    ws.send(Message::text(text)).unwrap();
    loop {
        match ws.read().unwrap() {
            Message::Text(reply) => {
                assert_eq!(reply.as_str(), text);
                return;
            }
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected the echo of {text:?}, got {other:?}"),
        }
    }
}

fn last_deployment_state(daemon: &Daemon) -> String {
    let history = daemon.json(&["history", "web", "--limit", "1"]);
    history[0]["state"].as_str().unwrap_or_default().to_owned()
}

#[test]
fn websocket_session_keeps_echoing_across_a_switch_and_v1_stops_only_after_it_closes() {
    let daemon = Daemon::start(AppOptions {
        drain_timeout: "60s",
        ..AppOptions::default()
    });
    daemon.deploy("v1");
    let (mut old, version) = ws_open(daemon.proxy_port);
    assert_eq!(version, "v1");
    echo(&mut old, "before the switch");

    daemon.ok(&["deploy", "web", "--version", "v2", "--no-wait"]);
    daemon.wait_serving("v2", Duration::from_secs(30));
    let (mut new, version) = ws_open(daemon.proxy_port);
    assert_eq!(version, "v2", "new sessions land on the new release");
    echo(&mut new, "on v2");

    for i in 0..10 {
        echo(&mut old, &format!("after the switch {i}"));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        daemon.release_versions(),
        ["v1", "v2"],
        "v1 keeps running while its session is open"
    );
    assert_eq!(last_deployment_state(&daemon), "draining");

    old.close(None).unwrap();
    while old.read().is_ok() {}
    eventually(
        Duration::from_secs(15),
        "v1 stopped once its session closed",
        || daemon.release_versions() == ["v2"],
    );
    eventually(Duration::from_secs(5), "the deployment succeeded", || {
        last_deployment_state(&daemon) == "succeeded"
    });
    echo(&mut new, "v2 session unaffected");
}

#[test]
fn websocket_open_at_drain_timeout_gets_going_away_and_then_v1_stops() {
    let daemon = Daemon::start(AppOptions {
        drain_timeout: "1s",
        ..AppOptions::default()
    });
    daemon.deploy("v1");
    let (mut old, version) = ws_open(daemon.proxy_port);
    assert_eq!(version, "v1");
    echo(&mut old, "before the switch");

    let output = daemon.deploy("v2");
    assert!(output.contains("succeeded"), "{output}");
    assert!(
        output.contains("drain_timeout"),
        "the drain timed out: {output}"
    );

    let mut close = None;
    while let Ok(message) = old.read() {
        if let Message::Close(frame) = message {
            close = frame;
        }
    }
    let close = close.expect("the client got a close frame");
    assert_eq!(close.code, CloseCode::Away);
    assert_eq!(close.reason.as_str(), "going away");
    eventually(Duration::from_secs(10), "v1 stopped", || {
        daemon.release_versions() == ["v2"]
    });
    let logs = daemon.ok(&["logs", "web", "--slot", "blue"]);
    assert!(
        logs.contains("websocket closed by peer: 1001 going away"),
        "v1 saw the close frame too:\n{logs}"
    );
}
