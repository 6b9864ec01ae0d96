//! The probe in front of a tiny echo backend on real loopback sockets.
#![cfg(target_os = "linux")]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cutover_uring_probe::{start, Options, RecvMode, TaskRun};

/// A backend answering every request with the head it received, then its
/// body; counts the connections it accepted.
fn echo_backend() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind backend");
    let addr = listener.local_addr().expect("backend address");
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            counter.fetch_add(1, Ordering::SeqCst);
            std::thread::spawn(move || echo_requests(stream));
        }
    });
    (addr, accepted)
}

fn echo_requests(stream: TcpStream) {
    let mut writer = stream.try_clone().expect("clone backend stream");
    let mut reader = BufReader::new(stream);
    while let Some((head, body)) = read_message(&mut reader) {
        let mut echoed = head.into_bytes();
        echoed.extend_from_slice(&body);
        let answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n",
            echoed.len()
        );
        if writer.write_all(answer.as_bytes()).is_err() || writer.write_all(&echoed).is_err() {
            return;
        }
    }
}

/// One head (up to the empty line) and its Content-Length body; `None` at
/// the end of the stream.
fn read_message(reader: &mut impl BufRead) -> Option<(String, Vec<u8>)> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        head.push_str(&line);
        if line == "\r\n" {
            break;
        }
    }
    let length = header(&head, "content-length").map_or(0, |v| v.parse().unwrap_or(0));
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some((head, body))
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn probe(upstream: SocketAddr, recv: RecvMode) -> SocketAddr {
    let options = Options {
        listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        upstream,
        workers: 2,
        recv,
        taskrun: TaskRun::Defer,
    };
    start(&options).expect("start the probe").addr
}

fn connect(addr: SocketAddr) -> (TcpStream, BufReader<TcpStream>) {
    let stream = TcpStream::connect(addr).expect("connect to the probe");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let reader = BufReader::new(stream.try_clone().expect("clone"));
    (stream, reader)
}

fn keep_alive_requests_are_forwarded_with_forwarding_headers(recv: RecvMode) {
    let (backend, accepted) = echo_backend();
    let (mut client, mut reader) = connect(probe(backend, recv));
    let mut ids = Vec::new();
    for n in 0..3 {
        let request = format!(
            "GET /n/{n} HTTP/1.1\r\nHost: app\r\nConnection: keep-alive\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n"
        );
        client.write_all(request.as_bytes()).expect("send request");
        let (head, body) = read_message(&mut reader).expect("a response");
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        let seen = String::from_utf8(body).expect("utf-8 echo");
        assert!(
            seen.starts_with(&format!("GET /n/{n} HTTP/1.1\r\n")),
            "{seen}"
        );
        assert_eq!(header(&seen, "x-forwarded-for"), Some("127.0.0.1"));
        assert_eq!(header(&seen, "x-real-ip"), Some("127.0.0.1"));
        assert_eq!(header(&seen, "x-forwarded-proto"), Some("http"));
        assert_eq!(header(&seen, "connection"), None, "hop-by-hop forwarded");
        let id = header(&seen, "x-request-id").expect("a request id upstream");
        assert_eq!(header(&head, "x-request-id"), Some(id));
        assert_eq!(id.len(), 32);
        ids.push(id.to_string());
    }
    ids.dedup();
    assert_eq!(ids.len(), 3, "request ids repeat: {ids:?}");
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "one upstream connection"
    );
}

#[test]
fn keep_alive_requests_get_forwarding_headers_with_multishot_receives() {
    keep_alive_requests_are_forwarded_with_forwarding_headers(RecvMode::Multishot);
}

#[test]
fn keep_alive_requests_get_forwarding_headers_with_oneshot_receives() {
    keep_alive_requests_are_forwarded_with_forwarding_headers(RecvMode::Oneshot);
}

#[test]
fn a_content_length_body_goes_upstream_and_a_large_response_comes_back() {
    let (backend, _) = echo_backend();
    let (mut client, mut reader) = connect(probe(backend, RecvMode::Multishot));
    // Larger than a provided buffer and than one socket buffer's worth.
    let body = vec![b'x'; 300_000];
    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: app\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    client.write_all(head.as_bytes()).expect("send head");
    client.write_all(&body).expect("send body");
    let (head, echoed) = read_message(&mut reader).expect("a response");
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(echoed.ends_with(&body), "the body came back whole");
    let seen = String::from_utf8_lossy(&echoed[..echoed.len() - body.len()]).into_owned();
    assert_eq!(header(&seen, "content-length"), Some("300000"));
}

#[test]
fn a_chunked_request_is_answered_501_and_the_connection_closed() {
    let (backend, accepted) = echo_backend();
    let (mut client, mut reader) = connect(probe(backend, RecvMode::Multishot));
    let request = "POST / HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    client.write_all(request.as_bytes()).expect("send request");
    let (head, _) = read_message(&mut reader).expect("a response");
    assert!(head.starts_with("HTTP/1.1 501 "), "{head}");
    assert_eq!(header(&head, "connection"), Some("close"));
    let mut rest = Vec::new();
    reader.read_to_end(&mut rest).expect("closed cleanly");
    assert!(rest.is_empty());
    // The paired upstream connection was opened, but nothing went over it.
    assert!(accepted.load(Ordering::SeqCst) <= 1);
}
