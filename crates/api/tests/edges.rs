//! The admin API's transport edges, on the unix socket and over TCP alike:
//! a client that sends a request line and then nothing is closed after a
//! few seconds; a body announced larger than the limit is answered 413 at
//! once; a head hyper cannot parse (400), a target too long (414) and
//! headers too large (431) are answered with a JSON `{"error": …}` body.

#![allow(clippy::unwrap_used)]

mod common;

use cutover_api::{serve_unix, AdminTcp};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

const TOKEN: &str = "edge-token-for-tests-0123456789";

/// Where the API listens: both transports of one daemon.
struct Api {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    tcp: SocketAddr,
    _stops: Vec<oneshot::Sender<()>>,
}

async fn start() -> Api {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, format!("{TOKEN}\n")).unwrap();
    std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(0o600)).unwrap();
    let text = r#"
state_dir = "state"
[proxy]
listen = ["127.0.0.1:0"]
[admin]
listen = "127.0.0.1:0"
token_file = "tokens"
[[app]]
name = "web"
[app.process]
command = ["sleep", "60"]
"#;
    let (engine, config) = common::engine(dir.path(), text).await;
    let socket = config.admin.socket.clone();
    let remote = config.admin.remote.clone().unwrap();
    let (stop_unix, unix_stopped) = oneshot::channel::<()>();
    tokio::spawn({
        let (socket, engine) = (socket.clone(), engine.clone());
        async move {
            serve_unix(&socket, engine, async move {
                let _ = unix_stopped.await;
            })
            .await
        }
    });
    let admin = AdminTcp::bind(&remote, None).await.unwrap();
    let tcp = admin.local_addr().unwrap();
    let (stop_tcp, tcp_stopped) = oneshot::channel::<()>();
    tokio::spawn(admin.serve(engine, async move {
        let _ = tcp_stopped.await;
    }));
    cutover_test_support::wait::eventually_async(
        Duration::from_secs(5),
        Duration::from_millis(10),
        "the admin socket answers",
        || UnixStream::connect(&socket).is_ok(),
    )
    .await;
    Api {
        _dir: dir,
        socket,
        tcp,
        _stops: vec![stop_unix, stop_tcp],
    }
}

/// A raw connection to one transport.
enum Raw {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Raw {
    fn stream(&mut self) -> &mut dyn ReadWrite {
        match self {
            Raw::Unix(stream) => stream,
            Raw::Tcp(stream) => stream,
        }
    }
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

impl Api {
    /// Both transports, each with the headers it needs to pass its guard.
    fn transports(&self) -> Vec<(&'static str, Raw, String)> {
        let unix = UnixStream::connect(&self.socket).unwrap();
        unix.set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let tcp = TcpStream::connect(self.tcp).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        vec![
            (
                "unix socket",
                Raw::Unix(unix),
                "Host: cutover\r\n".to_string(),
            ),
            (
                "TCP",
                Raw::Tcp(tcp),
                format!("Host: {}\r\nAuthorization: Bearer {TOKEN}\r\n", self.tcp),
            ),
        ]
    }
}

/// Writes `bytes` (errors ignored: the server may close first) and reads
/// until the server closes; the answer and how long it took.
fn exchange(raw: &mut Raw, bytes: &[u8]) -> (String, Duration) {
    let started = Instant::now();
    let _ = raw.stream().write_all(bytes);
    let mut answer = Vec::new();
    let _ = raw.stream().read_to_end(&mut answer);
    (
        String::from_utf8_lossy(&answer).into_owned(),
        started.elapsed(),
    )
}

fn assert_json_error(answer: &str, status: &str, what: &str) {
    assert!(
        answer.starts_with(&format!("HTTP/1.1 {status}")),
        "{what}: {answer}"
    );
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{what}: {answer}"
    );
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
    let json: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{what}: {e}: {answer}"));
    assert!(
        json["error"].as_str().is_some_and(|m| !m.is_empty()),
        "{what}: {answer}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_line_with_nothing_after_it_is_closed_after_a_few_seconds() {
    let api = start().await;
    tokio::task::spawn_blocking(move || {
        for (what, mut raw, _) in api.transports() {
            let (answer, took) = exchange(&mut raw, b"GET /v1/apps HTTP/1.1\r\n");
            assert!(!answer.contains("200 OK"), "{what}: {answer}");
            assert!(took < Duration::from_secs(20), "{what}: open for {took:?}");
        }
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_announced_over_the_limit_is_answered_413_at_once() {
    let api = start().await;
    tokio::task::spawn_blocking(move || {
        for (what, mut raw, auth) in api.transports() {
            let request = format!(
                "POST /v1/apps/web/deployments HTTP/1.1\r\n{auth}Content-Type: application/json\r\nContent-Length: 10000000000\r\n\r\n{{\"version\""
            );
            let (answer, took) = exchange(&mut raw, request.as_bytes());
            assert_json_error(&answer, "413", what);
            // Not waited for: the header read timeout is longer than this.
            assert!(took < Duration::from_secs(4), "{what}: took {took:?}");
        }
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transport_errors_are_answered_with_json_bodies() {
    let api = start().await;
    tokio::task::spawn_blocking(move || {
        let long_target = format!("/v1/apps?{}", "a".repeat(10_000));
        let huge_header = "x".repeat(100_000);
        for (what, _, auth) in api.transports() {
            let cases = [
                ("400", "GARBAGE\r\n\r\n".to_string()),
                (
                    "400",
                    format!("GET /v1/apps HTTP/1.1\r\n{auth}Bad Header Line\r\n\r\n"),
                ),
                ("414", format!("GET {long_target} HTTP/1.1\r\n{auth}\r\n")),
                (
                    "431",
                    format!("GET /v1/apps HTTP/1.1\r\n{auth}X-Big: {huge_header}\r\n\r\n"),
                ),
            ];
            for (status, request) in cases {
                let mut raw = api
                    .transports()
                    .into_iter()
                    .find(|(name, _, _)| *name == what)
                    .unwrap()
                    .1;
                let (answer, _) = exchange(&mut raw, request.as_bytes());
                assert_json_error(&answer, status, &format!("{what}, {status}"));
            }
        }
    })
    .await
    .unwrap();
}
