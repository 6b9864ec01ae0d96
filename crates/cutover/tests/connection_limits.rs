//! A daemon whose clients hold more idle connections than
//! `max_connections`, under a small limit on open files: a fresh client,
//! `cutover status` and a deployment still succeed, and the log stays
//! short. Alone in its file: it lowers the test process's limit on open
//! files, which the daemon inherits.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use common::Daemon;
use cutover_test_support::binaries;
use rustix::process::{setrlimit, Resource, Rlimit};
use std::io::{Read, Write};
use std::net::TcpStream;

/// Open files for the test and the daemon it starts.
const NOFILE: u64 = 192;

/// Connects from the loopback address `from` (bound before connecting).
fn connect_from(from: &str, port: u16) -> TcpStream {
    use rustix::net::{AddressFamily, SocketType};
    let socket = rustix::net::socket(AddressFamily::INET, SocketType::STREAM, None).unwrap();
    let from: IpAddr = from.parse().unwrap();
    rustix::net::bind(&socket, &SocketAddr::new(from, 0)).unwrap();
    rustix::net::connect(&socket, &SocketAddr::from(([127, 0, 0, 1], port))).unwrap();
    let stream = TcpStream::from(socket);
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
}

/// One keep-alive GET: the status, or `None` if the connection closed.
fn get(conn: &mut TcpStream) -> Option<u16> {
    conn.write_all(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n")
        .ok()?;
    let mut buf = Vec::new();
    loop {
        if let Some(status) = complete_response(&buf) {
            return Some(status);
        }
        let mut chunk = [0u8; 1024];
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn complete_response(buf: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(buf).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let length: usize = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0);
    (body.len() >= length).then(|| head[9..12].parse().ok())?
}

#[test]
fn clients_holding_every_slot_leave_room_for_a_fresh_client_status_and_a_deployment() {
    let limit = Rlimit {
        current: Some(NOFILE),
        maximum: Some(NOFILE),
    };
    setrlimit(Resource::Nofile, limit).unwrap();
    let daemon = Daemon::start_with_apps(&format!(
        r#"max_connections = 50
max_connections_per_client = 30

[[app]]
name = "web"
drain_timeout = "5s"

[app.health]
path = "/health"
deploy_timeout = "20s"
interval = "1s"

[app.process]
command = ["{testapp}", "--port", "{{port}}", "--version", "{{version}}"]
stop_timeout = "5s"
"#,
        testapp = binaries::testapp().display(),
    ));
    daemon.deploy("v1");
    let port = daemon.proxy_port;
    let mut held = Vec::new();
    for from in ["127.0.0.2", "127.0.0.3"] {
        for _ in 0..32 {
            let mut conn = connect_from(from, port);
            let status = get(&mut conn);
            held.push((from, conn, status));
        }
    }
    // Each address got its 30; the 31st and 32nd were refused.
    for from in ["127.0.0.2", "127.0.0.3"] {
        let served = held
            .iter()
            .filter(|(f, _, status)| *f == from && *status == Some(200))
            .count();
        assert_eq!(served, 30, "from {from}");
    }
    let mut fresh = connect_from("127.0.0.1", port);
    assert_eq!(get(&mut fresh), Some(200), "a fresh client is served");
    daemon.ok(&["status", "web"]);
    daemon.deploy("v2");
    let mut after = connect_from("127.0.0.1", port);
    assert_eq!(get(&mut after), Some(200), "served by the new release");
    let log = daemon.serve_log();
    let warnings = log
        .lines()
        .filter(|line| line.contains("WARN") && line.contains("connection"))
        .count();
    assert!(warnings <= 4, "{warnings} connection warnings:\n{log}");
    assert!(log.contains("limit on open files nofile=\"192\""), "{log}");
    drop(held);
}
