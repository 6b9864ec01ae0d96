//! Fixtures of `cutover-nginx`'s tests alone: a tiny blocking backend for
//! nginx to proxy to, and a GET through nginx on a connection of its own.

#![allow(dead_code, clippy::unwrap_used)]

use cutover_test_support::http::Connection;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// One GET through a new connection (`Host: localhost`, `Connection:
/// close`): the status and body.
pub fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let response = Connection::open(port)?
        .host("localhost")
        .user_agent(None)
        .get_with(path, &[("Connection", "close")])?;
    Ok((response.status, response.text()))
}

/// A tiny keep-alive HTTP/1.1 backend answering every request with `body`;
/// `/slow?ms=N` waits N ms first. Stops when dropped.
pub struct Backend {
    pub port: u16,
    stop: Arc<AtomicBool>,
}

impl Backend {
    pub fn start(body: &str) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let (stop_accepting, body) = (stop.clone(), body.to_string());
        std::thread::spawn(move || {
            while !stop_accepting.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let body = body.clone();
                        std::thread::spawn(move || serve_connection(stream, &body));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Backend { port, stop }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn serve_connection(stream: TcpStream, body: &str) {
    let _ = stream.set_nonblocking(false);
    let mut reader = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut length = 0usize;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut discard = vec![0; length];
        if reader.read_exact(&mut discard).is_err() {
            return;
        }
        let path = request_line.split_whitespace().nth(1).unwrap_or("/");
        if let Some(ms) = path
            .strip_prefix("/slow?ms=")
            .and_then(|ms| ms.parse::<u64>().ok())
        {
            std::thread::sleep(Duration::from_millis(ms));
        }
        let answer = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if reader.get_mut().write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}
