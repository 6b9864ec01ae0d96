//! Bounded fuzzing of the admin API's request bodies, paths and query
//! strings, through a real engine on a real unix socket, on stable Rust.
//!
//! Deploy bodies (valid ones, mutated as JSON values and as bytes), app
//! names and query strings built to break the extractors go to the
//! endpoints that read them. Every answer must be a JSON object — an
//! `{"error": …}` with a 4xx for anything refused — never a 5xx, never a
//! closed connection without an answer, never a deployment: the apps
//! named do not exist or the body is refused, so nothing may change.
//!
//! `CUTOVER_FUZZ_CASES` sets the budget (requests = cases / 20; default
//! 100,000 → 5,000 requests in CI); `CUTOVER_FUZZ_SEED` the seed.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cutover_api::serve_unix;
use cutover_engine::Engine;
use cutover_test_support::fuzz::{cases, rng};
use serde_json::{json, Value};

fn requests() -> usize {
    cases() / 20
}

/// App path segments: none of them is a configured app.
const APPS: &[&str] = &["nosuch", "%00", "..", "a%2Fb", "%E2%80%AE", "%ff", "web%20"];

const STRINGS: &[&str] = &[
    "v2",
    "",
    " ",
    "v2\n",
    "../x",
    "\u{202e}v2",
    "<script>",
    "main",
    "refs/heads/main",
    "-x",
];

fn random_value(rng: &mut fastrand::Rng) -> Value {
    match rng.u8(..7) {
        0 => Value::Null,
        1 => json!(rng.bool()),
        2 => json!(rng.i64(..)),
        3 => json!([STRINGS[rng.usize(..STRINGS.len())]]),
        4 => json!({"version": "v2"}),
        _ => json!(STRINGS[rng.usize(..STRINGS.len())]),
    }
}

/// A deploy body: a valid one, changed in one to three places.
fn deploy_body(rng: &mut fastrand::Rng) -> Vec<u8> {
    let mut body = json!({"version": "v2", "force": false, "trigger": "ci"});
    let keys = ["version", "ref", "force", "trigger", "extra", ""];
    for _ in 0..rng.usize(..=3) {
        let key = keys[rng.usize(..keys.len())];
        match rng.u8(..3) {
            0 => {
                body.as_object_mut().unwrap().remove(key);
            }
            _ => {
                body[key] = random_value(rng);
            }
        }
    }
    let mut bytes = serde_json::to_vec(&body).unwrap();
    if rng.u8(..3) == 0 && !bytes.is_empty() {
        let at = rng.usize(..bytes.len());
        match rng.u8(..3) {
            0 => {
                const DAMAGE: &[u8] = b"{}[]\",:\\\x00\xff";
                bytes[at] = DAMAGE[rng.usize(..DAMAGE.len())];
            }
            1 => bytes.truncate(at),
            _ => bytes.insert(at, b' '),
        }
    }
    bytes
}

fn query(rng: &mut fastrand::Rng) -> String {
    let keys = ["limit", "tail", "slot", "follow", "x", "", "limit[]"];
    let values = [
        "1",
        "0",
        "-1",
        "99999999999999999999",
        "blue",
        "green",
        "red",
        "%zz",
        "",
        "true",
        "1e3",
    ];
    let pairs: Vec<String> = (0..rng.usize(..4))
        .map(|_| {
            format!(
                "{}={}",
                keys[rng.usize(..keys.len())],
                values[rng.usize(..values.len())]
            )
        })
        .collect();
    pairs.join("&")
}

/// One request over a kept-alive connection: (status, body), or what went
/// wrong.
fn exchange(
    stream: &mut BufReader<UnixStream>,
    method: &str,
    target: &str,
    body: &[u8],
) -> Result<(u16, Vec<u8>), String> {
    let head = format!(
        "{method} {target} HTTP/1.1\r\nHost: cutover\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    // One write: a server that answers a refused head at once and closes
    // would turn a second write into EPIPE before its answer is read.
    let mut request = head.into_bytes();
    request.extend_from_slice(body);
    let written = stream.get_mut().write_all(&request);
    let mut status_line = String::new();
    stream
        .read_line(&mut status_line)
        .map_err(|e| format!("read: {e} (write: {written:?})"))?;
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("status line {status_line:?}"))?;
    let mut length = None;
    loop {
        let mut line = String::new();
        stream
            .read_line(&mut line)
            .map_err(|e| format!("read: {e}"))?;
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().ok();
            }
        }
    }
    let length = length.ok_or_else(|| format!("{status} without a Content-Length"))?;
    let mut body = vec![0u8; length];
    stream
        .read_exact(&mut body)
        .map_err(|e| format!("read body: {e}"))?;
    Ok((status, body))
}

fn check_answer(request: &str, status: u16, body: &[u8]) {
    assert!(
        status < 500,
        "{request}: {status} {}",
        String::from_utf8_lossy(body)
    );
    let json: Value = serde_json::from_slice(body).unwrap_or_else(|e| {
        panic!(
            "{request}: not JSON ({e}): {}",
            String::from_utf8_lossy(body)
        )
    });
    if status >= 400 {
        let error = json["error"].as_str().unwrap_or_default();
        assert!(
            !error.is_empty(),
            "{request}: {status} without an error: {json}"
        );
    } else {
        assert!(json.is_object() || json.is_array(), "{request}: {json}");
    }
}

fn fuzz(socket: &Path) -> (usize, usize) {
    let connect = || BufReader::new(UnixStream::connect(socket).unwrap());
    let mut stream = connect();
    stream
        .get_mut()
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut rng = rng(6);
    let (mut refused, mut answered) = (0, 0);
    for case in 0..requests() {
        let app = APPS[rng.usize(..APPS.len())];
        let (method, target, body) = if case % 3 == 0 {
            let path = ["deployments", "logs"][rng.usize(..2)];
            (
                "GET",
                format!("/v1/apps/web/{path}?{}", query(&mut rng)),
                Vec::new(),
            )
        } else {
            (
                "POST",
                format!("/v1/apps/{app}/deployments"),
                deploy_body(&mut rng),
            )
        };
        let request = format!("{method} {target} {:?}", String::from_utf8_lossy(&body));
        // `follow` streams until the client goes: not an answer to check.
        if target.contains("follow=true") {
            continue;
        }
        // A connection the server closed (it may after a refusal) is
        // replaced once; a second failure is a finding.
        let answer = exchange(&mut stream, method, &target, &body).or_else(|_| {
            stream = connect();
            exchange(&mut stream, method, &target, &body)
        });
        let (status, body) = answer.unwrap_or_else(|e| panic!("{request}: {e}"));
        check_answer(&request, status, &body);
        answered += 1;
        refused += usize::from(status >= 400);
    }
    (answered, refused)
}

async fn engine(dir: &Path) -> (Engine, PathBuf) {
    let text = r#"
state_dir = "state"
[proxy]
listen = ["127.0.0.1:0"]
[[app]]
name = "web"
[app.process]
command = ["sleep", "60"]
"#;
    let (engine, config) = common::engine(dir, text).await;
    (engine, config.admin.socket.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_bodies_paths_and_queries_get_json_answers_and_deploy_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, socket) = engine(dir.path()).await;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn({
        let (socket, engine) = (socket.clone(), engine.clone());
        async move { serve_unix(&socket, engine, async move { drop(stopped.await) }).await }
    });
    cutover_test_support::wait::eventually_async(
        Duration::from_secs(5),
        Duration::from_millis(10),
        "the admin socket answers",
        || UnixStream::connect(&socket).is_ok(),
    )
    .await;
    let fuzzed = socket.clone();
    let (answered, refused) = tokio::task::spawn_blocking(move || fuzz(&fuzzed))
        .await
        .unwrap();
    println!("{answered} requests answered, {refused} refused");
    assert!(
        refused > 0 && refused < answered,
        "{refused} of {answered} refused"
    );
    let history = engine.history("web", 10).await.unwrap();
    assert!(history.is_empty(), "a fuzzed request deployed: {history:?}");
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(10), served)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
