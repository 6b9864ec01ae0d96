//! `cutover serve` under systemd: listeners from socket activation
//! (`LISTEN_FDS`), `READY=1` on the notification socket, and a crash
//! (`kill -9`) and restart that refuses no connection — they wait in the
//! listen backlog the socket's holder (systemd) keeps open.

#![allow(clippy::unwrap_used)]

mod common;

use common::{AppOptions, Daemon};
use cutover_test_support::load::{ClientOptions, Load};
use cutover_test_support::process::{signal, spawn_logged, wait_exit};
use cutover_test_support::{binaries, http, wait::eventually};
use nix::sys::signal::Signal;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::process::{Child, Command};
use std::time::Duration;

/// A daemon with v1 live whose `cutover serve` was stopped (kill -9: its
/// release keeps running), ready to be started another way.
fn stopped_daemon_with_v1() -> Daemon {
    let mut daemon = Daemon::start(AppOptions::default());
    daemon.deploy("v1");
    daemon.kill9();
    daemon
}

/// Stops a process this test started, by PID.
fn stop(mut child: Child) {
    signal(child.id(), Signal::SIGTERM);
    if wait_exit(&mut child, Duration::from_secs(15)).is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

#[test]
fn socket_activated_serve_takes_the_passed_listener_and_notifies_systemd() {
    let daemon = stopped_daemon_with_v1();
    let notify_path = daemon.dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let activator = spawn_logged(
        Command::new("systemd-socket-activate")
            .arg(format!("--listen=127.0.0.1:{}", daemon.proxy_port))
            .arg(format!("--setenv=NOTIFY_SOCKET={}", notify_path.display()))
            .arg(binaries::cutover())
            .arg("serve")
            .arg("--config")
            .arg(&daemon.config),
        &daemon.dir.path().join("serve.log"),
    )
    .unwrap();
    // systemd-socket-activate starts cutover on the first connection; this
    // request waits in the backlog until cutover serves it.
    let mut first = None;
    eventually(Duration::from_secs(10), "the activated socket", || {
        first = http::try_get(daemon.proxy_port, "/").ok();
        first.is_some()
    });
    let first = first.unwrap();
    assert_eq!(first.status, 200, "{}", daemon.serve_log());
    assert_eq!(first.text().trim(), "version=v1");
    let mut buf = [0u8; 256];
    let n = notify.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"READY=1");
    assert!(
        daemon
            .serve_log()
            .contains("listening on the socket systemd passed"),
        "{}",
        daemon.serve_log()
    );
    stop(activator);
}

/// Starts `cutover serve` with `listener` as its socket-activated fd 3,
/// as systemd does from a socket unit (`LISTEN_PID` is the shell's PID,
/// which `exec` keeps).
fn start_activated(daemon: &Daemon, listener: &std::net::TcpListener) -> Child {
    let fd = listener.as_raw_fd();
    spawn_logged(
        Command::new("sh")
            .arg("-c")
            .arg(r#"[ "$0" = 3 ] || eval "exec 3<&$0 $0<&-"; LISTEN_FDS=1 LISTEN_PID=$$ exec "$1" serve --config "$2""#)
            .arg(fd.to_string())
            .arg(binaries::cutover())
            .arg(&daemon.config),
        &daemon.dir.path().join("serve.log"),
    )
    .unwrap()
}

#[test]
fn kill_9_and_restart_under_socket_activation_refuses_no_connection() {
    let daemon = stopped_daemon_with_v1();
    // This test holds the listening socket, as systemd's socket unit does.
    let listener = std::net::TcpListener::bind(("127.0.0.1", daemon.proxy_port)).unwrap();
    rustix::io::fcntl_setfd(&listener, rustix::io::FdFlags::empty()).unwrap();
    let mut serve = start_activated(&daemon, &listener);
    eventually(Duration::from_secs(20), "cutover serving", || {
        http::try_get(daemon.proxy_port, "/").is_ok_and(|r| r.status == 200)
    });
    let load = Load::start_with(
        daemon.proxy_port,
        4,
        usize::MAX,
        Duration::from_secs(120),
        ClientOptions {
            fresh_connections: true,
            ..ClientOptions::default()
        },
    );
    eventually(Duration::from_secs(10), "load before the crash", || {
        load.answered() > 50
    });
    serve.kill().unwrap();
    serve.wait().unwrap();
    let answered_at_kill = load.answered();
    std::thread::sleep(Duration::from_millis(300));
    let serve = start_activated(&daemon, &listener);
    eventually(Duration::from_secs(20), "load after the restart", || {
        load.answered() > answered_at_kill + 50
    });
    let report = load.stop();
    stop(serve);

    let failures = report.failures();
    let refused: Vec<&&str> = failures
        .iter()
        .filter(|f| f.starts_with("connect"))
        .collect();
    println!(
        "{} requests; {} failed: requests in flight at the kill -9 ({:?})",
        report.requests(),
        failures.len(),
        failures
    );
    assert!(refused.is_empty(), "refused connections: {refused:?}");
    // Only what cutover had accepted when it was killed can fail: at most
    // one request per client.
    assert!(failures.len() <= 4, "{failures:?}");
}
