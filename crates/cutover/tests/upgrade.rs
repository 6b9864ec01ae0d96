//! Upgrades of cutover itself (`cutover upgrade`): the new process takes
//! the listening sockets, the admin socket and the live releases, the old
//! one hands over its idle connections and finishes what is in flight —
//! under load, no request fails.

#![allow(clippy::unwrap_used)]

mod common;

use common::nginx::{FrontOptions, NginxFront};
use common::{AppOptions, Daemon};
use cutover_test_support::http;
use cutover_test_support::load::{ClientOptions, Load};
use cutover_test_support::ports::free_port;
use cutover_test_support::wait::eventually;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::thread::JoinHandle;
use std::time::Duration;
use tokio_tungstenite::tungstenite::{self, Message, WebSocket};

type Ws = WebSocket<TcpStream>;

const UPGRADES: usize = 20;

fn ws_open(port: u16) -> Ws {
    let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let (ws, _) = tungstenite::client::client(format!("ws://127.0.0.1:{port}/ws"), stream)
        .unwrap_or_else(|e| panic!("websocket handshake through the proxy failed: {e}"));
    ws
}

fn echo(ws: &mut Ws, text: &str, daemon: &Daemon) {
    if let Err(e) = ws.send(Message::text(text)) {
        panic!(
            "sending {text:?} on the websocket failed: {e}\n{}",
            daemon.serve_log()
        );
    }
    loop {
        match ws.read() {
            Ok(Message::Text(reply)) => {
                assert_eq!(reply.as_str(), text);
                return;
            }
            Ok(Message::Ping(_) | Message::Pong(_)) => continue,
            other => {
                panic!("expected the echo of {text:?}, got {other:?}")
            }
        }
    }
}

/// Reads an SSE stream of `events` events to its end; returns the events.
fn sse_stream(port: u16, events: usize, every_ms: u64) -> JoinHandle<Vec<String>> {
    std::thread::spawn(move || {
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut reader = BufReader::new(stream);
        write!(
            reader.get_mut(),
            "GET /sse?n={events}&ms={every_ms} HTTP/1.1\r\nHost: app.test\r\nAccept: text/event-stream\r\n\r\n"
        )
        .unwrap();
        let mut received = Vec::new();
        let mut line = String::new();
        while received.len() < events {
            line.clear();
            let n = reader
                .read_line(&mut line)
                .unwrap_or_else(|e| panic!("SSE event {} did not arrive: {e}", received.len()));
            assert!(
                n > 0,
                "the SSE stream ended after {} events",
                received.len()
            );
            if let Some(data) = line.trim_end().strip_prefix("data: ") {
                received.push(data.to_owned());
            }
        }
        received
    })
}

/// Uploads `chunks` × 64 KiB to `/count`, one chunk every `every`; returns
/// the answer.
fn slow_upload(port: u16, chunks: usize, every: Duration) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let chunk = vec![b'u'; 64 * 1024];
        let total = chunk.len() * chunks;
        write!(
            stream,
            "POST /count HTTP/1.1\r\nHost: app.test\r\nContent-Length: {total}\r\n\r\n"
        )
        .unwrap();
        for _ in 0..chunks {
            stream.write_all(&chunk).unwrap();
            std::thread::sleep(every);
        }
        let mut answer = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&answer).contains("bytes=") || !answer.ends_with(b"\n") {
            let n = stream.read(&mut buf).unwrap();
            assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&answer));
            answer.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&answer).into_owned()
    })
}

fn assert_upgraded(daemon: &mut Daemon, round: usize) -> u32 {
    let output = daemon.upgrade(None);
    assert!(
        output.status.success(),
        "upgrade {round} failed:\n{}\n{}\nserve log:\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
        daemon.serve_log()
    );
    *daemon.upgraded.last().unwrap()
}

#[test]
fn twenty_upgrades_under_load_fail_no_request_and_keep_websocket_sse_and_upload_going() {
    // The first process keeps the WebSocket, the SSE stream and the upload
    // until they end: its drain bound must outlast the test.
    let mut daemon = Daemon::start(AppOptions {
        drain_timeout: "300s",
        ..AppOptions::default()
    });
    daemon.deploy("v1");
    let port = daemon.proxy_port;
    let first = daemon.first_pid().unwrap();
    let bound = Duration::from_secs(600);
    let keep_alive = Load::start(port, 8, usize::MAX, bound);
    let fresh = Load::start_with(
        port,
        2,
        usize::MAX,
        bound,
        ClientOptions {
            fresh_connections: true,
            pause: Some(Duration::from_millis(5)),
            ..ClientOptions::default()
        },
    );
    let mut ws = ws_open(port);
    echo(&mut ws, "before", &daemon);
    let sse = sse_stream(port, 40, 200);
    let upload = slow_upload(port, 40, Duration::from_millis(150));
    eventually(Duration::from_secs(10), "load before the upgrades", || {
        keep_alive.answered() > 50
    });

    let mut previous = None;
    for round in 1..=UPGRADES {
        let pid = assert_upgraded(&mut daemon, round);
        assert_ne!(Some(pid), previous);
        echo(&mut ws, &format!("after upgrade {round}"), &daemon);
        // The one that served before hands everything over and exits (the
        // first one only once the websocket closes: it holds it).
        if let Some(previous) = previous {
            eventually(
                Duration::from_secs(20),
                "the previous process to exit",
                || !daemon.is_serve_process(previous),
            );
        }
        let serving: Vec<u32> = daemon
            .upgraded
            .iter()
            .copied()
            .filter(|&p| daemon.is_serve_process(p))
            .collect();
        assert_eq!(serving, vec![pid], "after upgrade {round}");
        previous = Some(pid);
        std::thread::sleep(Duration::from_millis(700));
    }

    let events = sse.join().unwrap();
    assert_eq!(events.last().unwrap(), "version=v1 event=39");
    let answer = upload.join().unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.contains(&format!("bytes={}", 40 * 64 * 1024)),
        "{answer}"
    );
    echo(&mut ws, "at the end", &daemon);
    ws.close(None).unwrap();
    let _ = ws.flush();
    drop(ws);
    eventually(
        Duration::from_secs(30),
        "the first process to exit once its websocket closed",
        || !daemon.is_serve_process(first),
    );

    let keep_alive = keep_alive.stop();
    let fresh = fresh.stop();
    for (name, report) in [("keep-alive", &keep_alive), ("new connection", &fresh)] {
        println!("{name} clients: {} requests", report.requests());
        assert!(
            report.failures().is_empty(),
            "{name} clients: {} failed of {}: {:?}",
            report.failures().len(),
            report.requests(),
            &report.failures()[..report.failures().len().min(10)]
        );
    }
    assert!(keep_alive.requests() > 1000, "{}", keep_alive.requests());
}

/// A new binary that cannot take over: the upgrade says why and exits 1,
/// the running process serves on, and no request fails meanwhile.
#[test]
fn upgrade_to_a_binary_that_exits_at_start_or_is_not_executable_fails_and_the_old_one_serves_on() {
    let mut daemon = Daemon::start(AppOptions::default());
    daemon.deploy("v1");
    let first = daemon.first_pid().unwrap();
    let exits = daemon.dir.path().join("exits-at-start");
    std::fs::write(
        &exits,
        "#!/bin/sh\necho 'this cutover is broken' >&2\nexit 3\n",
    )
    .unwrap();
    set_mode(&exits, 0o755);
    let not_executable = daemon.dir.path().join("not-executable");
    std::fs::write(&not_executable, "not a program").unwrap();
    set_mode(&not_executable, 0o644);
    let load = Load::start(daemon.proxy_port, 8, usize::MAX, Duration::from_secs(120));
    eventually(Duration::from_secs(10), "load before the upgrades", || {
        load.answered() > 50
    });

    for (binary, reason) in [
        (&exits, "exited (exit status: 3) before it"),
        (&not_executable, "Permission denied"),
    ] {
        let output = daemon.upgrade(Some(binary));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(reason), "{}: {stderr}", binary.display());
        assert!(
            stderr.contains("the running cutover keeps serving"),
            "{stderr}"
        );
        assert!(daemon.upgraded.is_empty());
        assert!(daemon.is_serve_process(first));
        assert_eq!(daemon.status()["live_version"], "v1");
    }
    // Deployments were held only during the attempts.
    daemon.deploy("v2");
    let report = load.stop();
    assert!(report.requests() > 100, "{}", report.requests());
    assert_eq!(report.failures(), Vec::<&str>::new());
}

fn set_mode(path: &std::path::Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn release_pid(daemon: &Daemon, version: &str) -> u32 {
    daemon
        .releases()
        .into_iter()
        .find(|(_, v)| v == version)
        .unwrap_or_else(|| panic!("no release {version} runs: {:?}", daemon.releases()))
        .0
}

fn slot_state(daemon: &Daemon, slot: &str) -> String {
    let status = daemon.status();
    let slots = status["slots"].as_array().cloned().unwrap_or_default();
    slots
        .iter()
        .find(|s| s["slot"] == slot)
        .map(|s| s["state"].as_str().unwrap_or_default().to_string())
        .unwrap_or_default()
}

/// The release kept idle under `keep_old` survives a restart and an
/// upgrade (same process), and a rollback to it is still instant.
#[test]
fn keep_old_standby_survives_a_restart_and_an_upgrade_and_rollback_stays_instant() {
    let mut daemon = Daemon::start(AppOptions {
        extra: "keep_old = \"5m\"".to_string(),
        ..AppOptions::default()
    });
    daemon.deploy("v1");
    daemon.deploy("v2");
    let v1 = release_pid(&daemon, "v1");
    assert_eq!(slot_state(&daemon, "blue"), "standby");

    daemon.terminate();
    daemon.spawn();
    daemon.wait_serving("v2", Duration::from_secs(20));
    assert_eq!(release_pid(&daemon, "v1"), v1, "the standby was restarted");
    assert_eq!(slot_state(&daemon, "blue"), "standby");

    let output = daemon.upgrade(None);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(release_pid(&daemon, "v1"), v1, "the standby was restarted");
    assert_eq!(slot_state(&daemon, "blue"), "standby");

    let load = Load::start(daemon.proxy_port, 4, usize::MAX, Duration::from_secs(60));
    let rollback = daemon.ok(&["rollback", "web"]);
    assert!(rollback.contains("instant rollback"), "{rollback}");
    assert!(!rollback.contains("starting"), "{rollback}");
    daemon.wait_serving("v1", Duration::from_secs(10));
    assert_eq!(release_pid(&daemon, "v1"), v1);
    let report = load.stop();
    assert_eq!(report.failures(), Vec::<&str>::new());
}

fn deploy_awaiting_promotion(daemon: &Daemon, version: &str) {
    daemon.ok(&["deploy", "web", "--version", version, "--no-wait"]);
    eventually(Duration::from_secs(20), "awaiting promotion", || {
        daemon.status()["current_deployment"]["state"] == "awaiting_promotion"
    });
}

/// A deployment awaiting promotion survives an upgrade that fails (the
/// old process goes on awaiting), an upgrade, and a plain restart: its
/// release keeps running (same process), the preview still reaches it, and
/// `cutover promote` then switches to it.
#[test]
fn a_deployment_awaiting_promotion_survives_a_failed_upgrade_an_upgrade_and_a_restart() {
    let mut daemon = Daemon::start(AppOptions {
        extra: "promotion = \"manual\"".to_string(),
        ..AppOptions::default()
    });
    deploy_awaiting_promotion(&daemon, "v1");
    daemon.ok(&["promote", "web"]);
    daemon.wait_serving("v1", Duration::from_secs(20));
    deploy_awaiting_promotion(&daemon, "v2");
    let v2 = release_pid(&daemon, "v2");
    let still_awaiting = |daemon: &Daemon, after: &str| {
        let status = daemon.status();
        assert_eq!(
            status["current_deployment"]["state"],
            "awaiting_promotion",
            "after {after}: {status}\n{}",
            daemon.serve_log()
        );
        assert_eq!(status["live_version"], "v1", "after {after}");
        assert_eq!(
            release_pid(daemon, "v2"),
            v2,
            "after {after}: v2 was restarted"
        );
        let preview = cutover_test_support::http::Connection::open(daemon.proxy_port)
            .and_then(|mut c| c.get_with("/", &[("X-Cutover-Preview", "1")]))
            .unwrap();
        assert_eq!(
            preview.text().trim(),
            "version=v2",
            "after {after}: preview"
        );
    };

    let broken = daemon.dir.path().join("exits-at-start");
    std::fs::write(&broken, "#!/bin/sh\nexit 3\n").unwrap();
    set_mode(&broken, 0o755);
    assert_eq!(daemon.upgrade(Some(&broken)).status.code(), Some(1));
    still_awaiting(&daemon, "a failed upgrade");

    let output = daemon.upgrade(None);
    assert!(output.status.success(), "{output:?}");
    still_awaiting(&daemon, "an upgrade");

    // A plain restart of the process that took over.
    let pid = *daemon.upgraded.last().unwrap();
    cutover_test_support::process::signal(pid, nix::sys::signal::Signal::SIGTERM);
    eventually(
        Duration::from_secs(15),
        "the upgraded daemon to stop",
        || !daemon.is_serve_process(pid),
    );
    daemon.spawn();
    still_awaiting(&daemon, "a restart");

    let load = Load::start(daemon.proxy_port, 4, usize::MAX, Duration::from_secs(60));
    daemon.ok(&["promote", "web"]);
    daemon.wait_serving("v2", Duration::from_secs(20));
    let report = load.stop();
    assert_eq!(report.failures(), Vec::<&str>::new());
    assert_eq!(release_pid(&daemon, "v2"), v2);
}

/// An upgrade never cuts a running deployment in two: while one runs (here
/// a health check that takes its time) the upgrade is refused, saying which
/// one to finish or abort.
#[test]
fn upgrade_waits_for_a_running_deployment_to_end_or_with_no_wait_is_refused() {
    let mut daemon = Daemon::start(AppOptions::default());
    daemon.deploy("v1");
    daemon.behave("v2", "--healthy-after 8000");
    daemon.ok(&["deploy", "web", "--version", "v2", "--no-wait"]);
    eventually(Duration::from_secs(20), "v2 being checked", || {
        daemon.status()["current_deployment"]["state"] == "checking"
    });
    let output = daemon.upgrade_with(None, &["--no-wait"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("deployment 2 of app web is running; retry after it ends or abort it"),
        "{stderr}"
    );
    assert_eq!(daemon.status()["current_deployment"]["state"], "checking");
    // Without --no-wait the upgrade waits for the deployment, which ends in
    // the old process, and then hands over.
    let output = daemon.upgrade(None);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(daemon.status()["live_version"], "v2", "{}", daemon.status());
    daemon.wait_serving("v2", Duration::from_secs(30));
    let history = daemon.history();
    assert_eq!(history[0]["state"], "succeeded", "{history:?}");
}

/// Rewrites `[proxy] listen` in the daemon's config to these loopback ports.
fn set_listen(daemon: &Daemon, ports: &[u16]) {
    let config = std::fs::read_to_string(&daemon.config).unwrap();
    let line = config
        .lines()
        .find(|l| l.starts_with("listen = ["))
        .unwrap()
        .to_string();
    let addresses: Vec<String> = ports.iter().map(|p| format!("\"127.0.0.1:{p}\"")).collect();
    let listen = format!("listen = [{}]", addresses.join(", "));
    std::fs::write(&daemon.config, config.replacen(&line, &listen, 1)).unwrap();
}

/// An upgrade after `[proxy] listen` was edited from [kept, dropped] to
/// [kept, added]: the kept listener's keep-alive clients fail no request,
/// the added address serves, the dropped one refuses connections as soon
/// as the old process stops accepting (while it still finishes a slow
/// request, which completes), and exactly one process serves after.
#[test]
fn upgrade_with_a_changed_listen_keeps_the_kept_listeners_clients_serves_the_new_and_closes_the_dropped(
) {
    let mut daemon = Daemon::start(AppOptions::default());
    let (kept, dropped, added) = (daemon.proxy_port, free_port(), free_port());
    set_listen(&daemon, &[kept, dropped]);
    daemon.terminate();
    daemon.spawn();
    daemon.deploy("v1");
    let first = daemon.first_pid().unwrap();
    let bound = Duration::from_secs(120);
    let on_kept = Load::start(kept, 8, usize::MAX, bound);
    let on_dropped = Load::start(dropped, 2, usize::MAX, bound);
    eventually(Duration::from_secs(10), "load on both listeners", || {
        on_kept.answered() > 500 && on_dropped.answered() > 50
    });
    assert!(
        http::try_get(added, "/").is_err(),
        "{added} serves before the upgrade"
    );

    let slow = std::thread::spawn(move || http::get(kept, "/slow?ms=5000"));
    std::thread::sleep(Duration::from_millis(300));

    set_listen(&daemon, &[kept, added]);
    let new = assert_upgraded(&mut daemon, 1);
    assert_eq!(
        http::get(added, "/").text().trim(),
        "version=v1",
        "the added address serves"
    );
    eventually(
        Duration::from_secs(10),
        "the dropped address closed",
        || std::net::TcpStream::connect(("127.0.0.1", dropped)).is_err(),
    );
    assert!(
        daemon.is_serve_process(first),
        "the old process still finishes the slow request: the dropped address closed before it exits"
    );
    let slow = slow.join().unwrap();
    assert_eq!(
        (slow.status, slow.text().trim()),
        (200, "version=v1 slept=5000")
    );
    eventually(Duration::from_secs(20), "the old process to exit", || {
        !daemon.is_serve_process(first)
    });
    assert!(daemon.is_serve_process(new));
    let answered_before = on_kept.answered();
    eventually(
        Duration::from_secs(10),
        "the new process answering on the kept listener",
        || on_kept.answered() > answered_before + 500,
    );
    let (on_kept, on_dropped) = (on_kept.stop(), on_dropped.stop());

    let failed = on_kept.failures();
    assert!(
        failed.is_empty(),
        "kept listener: {} failed of {}: {:?}",
        failed.len(),
        on_kept.requests(),
        &failed[..failed.len().min(10)]
    );
    let dropped_answers: usize = on_dropped.clients.iter().map(|c| c.versions.len()).sum();
    let dropped_first_failures: Vec<&str> = on_dropped
        .clients
        .iter()
        .filter_map(|c| c.failures.first().map(String::as_str))
        .collect();
    println!(
        "kept listener: {} requests, 0 failed; dropped listener: {dropped_answers} answered before it closed, then {:?}",
        on_kept.requests(),
        dropped_first_failures
    );
    let log = daemon.serve_log();
    assert!(log.contains("took over from pid"), "{log}");
    let passed = log
        .split_once(" idle connection(s) passed on")
        .and_then(|(before, _)| before.rsplit_once('(')?.1.parse::<usize>().ok());
    println!("idle connections passed to the new process: {passed:?}");
    assert!(
        passed.is_some_and(|n| n > 0),
        "the kept listener's connections went over: {log}"
    );
}

/// nginx as the front (cutover has no listener of its own): three
/// upgrades under keep-alive load through nginx fail no request and do
/// not reload nginx (its workers stay), and a deploy after them still
/// rewrites the include and reloads nginx.
#[test]
fn upgrades_in_nginx_front_mode_fail_no_request_through_nginx_and_later_deploys_still_reload_it() {
    let mut front = NginxFront::start(FrontOptions::default());
    front.deploy_first("v1");
    let workers = front.nginx.workers();
    let include_before = front.include();
    let port = front.daemon.proxy_port;
    let load = Load::start(port, 8, usize::MAX, Duration::from_secs(120));
    eventually(Duration::from_secs(10), "load through nginx", || {
        load.answered() > 50
    });
    let mut previous = front.daemon.first_pid().unwrap();
    for round in 1..=3 {
        let pid = assert_upgraded(&mut front.daemon, round);
        eventually(
            Duration::from_secs(20),
            "the previous process to exit",
            || !front.daemon.is_serve_process(previous),
        );
        previous = pid;
        std::thread::sleep(Duration::from_millis(1000));
    }
    let report = load.stop();

    let failed = report.failures();
    assert!(
        failed.is_empty(),
        "through nginx: {} failed of {}: {:?}",
        failed.len(),
        report.requests(),
        &failed[..failed.len().min(10)]
    );
    assert!(report.requests() > 500, "{}", report.requests());
    assert!(report
        .clients
        .iter()
        .all(|c| c.versions.iter().all(|v| v == "v1")));
    assert_eq!(
        front.nginx.workers(),
        workers,
        "an upgrade must not reload nginx"
    );
    assert_eq!(
        front.include(),
        include_before,
        "an upgrade leaves the include as it is"
    );
    assert!(front.daemon.is_serve_process(previous));

    let second = front.daemon.deploy("v2");
    assert!(
        second.contains("nginx worker(s) that served before the reload have exited"),
        "{second}\n{}",
        front.daemon.serve_log()
    );
    front.daemon.wait_serving("v2", Duration::from_secs(10));
    let green = front.daemon.status()["slots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["slot"] == "green")
        .and_then(|s| s["addr"].as_str())
        .map(str::to_string)
        .unwrap();
    assert!(
        front.include().contains(&format!("server {green}")),
        "{}",
        front.include()
    );
    assert_ne!(
        front.nginx.workers(),
        workers,
        "nginx was reloaded for the deploy"
    );
    println!(
        "3 upgrades in nginx front mode: {} requests through nginx, 0 failed",
        report.requests()
    );
}
