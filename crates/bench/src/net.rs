//! Loopback ports and a plain HTTP/1.1 GET, to set targets up and check them.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// A port nothing listens on right now: the kernel's pick for port 0.
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("binding 127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// Waits until 127.0.0.1:`port` accepts connections; gives up early when
/// `alive` says the process that should listen is gone.
pub fn wait_listening(port: u16, within: Duration, alive: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&loopback(port), Duration::from_millis(200)).is_ok() {
            return true;
        }
        if !alive() {
            return false;
        }
        thread::sleep(Duration::from_millis(50));
    }
    false
}

/// GET http://127.0.0.1:PORT/PATH; the body of a 2xx answer.
pub fn get(port: u16, path: &str, timeout: Duration) -> Result<String> {
    let mut stream = TcpStream::connect_timeout(&loopback(port), timeout)
        .with_context(|| format!("connecting to 127.0.0.1:{port}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes())?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .with_context(|| format!("reading the answer of 127.0.0.1:{port}{path}"))?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response
        .split_once("\r\n\r\n")
        .with_context(|| format!("no complete answer from 127.0.0.1:{port}{path}"))?;
    let status_line = head.lines().next().unwrap_or_default();
    if !status_line
        .split_whitespace()
        .nth(1)
        .is_some_and(|s| s.starts_with('2'))
    {
        bail!("GET 127.0.0.1:{port}{path}: {status_line}");
    }
    Ok(body.to_string())
}

/// GET / answers with a body containing `expected` (e.g. `version=v1`).
pub fn check_version(port: u16, expected: &str) -> Result<()> {
    let body = get(port, "/", Duration::from_secs(5))?;
    if !body.contains(expected) {
        bail!(
            "GET 127.0.0.1:{port}/: expected '{expected}', got '{}'",
            body.trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serve_once(answer: &'static str) -> u16 {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut request = Vec::new();
            let mut chunk = [0u8; 1024];
            while !request.ends_with(b"\r\n\r\n") {
                match conn.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&chunk[..n]),
                }
            }
            conn.write_all(answer.as_bytes()).unwrap();
        });
        port
    }

    #[test]
    fn a_free_port_can_be_bound_and_nothing_listens_there() {
        let port = free_port().unwrap();
        assert!(!wait_listening(port, Duration::from_millis(100), || true));
        let _listener = TcpListener::bind((Ipv4Addr::LOCALHOST, port)).unwrap();
        assert!(wait_listening(port, Duration::from_secs(2), || true));
    }

    #[test]
    fn waiting_stops_when_the_listener_to_be_is_gone() {
        let port = free_port().unwrap();
        let started = Instant::now();
        assert!(!wait_listening(port, Duration::from_secs(10), || false));
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn check_version_reads_the_body_of_a_2xx_answer() {
        let port = serve_once("HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nversion=v1\n");
        check_version(port, "version=v1").unwrap();
        let port = serve_once("HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nversion=v2\n");
        assert!(check_version(port, "version=v1").is_err());
        let port = serve_once("HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n");
        assert!(check_version(port, "").is_err());
    }
}
