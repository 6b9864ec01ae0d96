//! Streaming through the real daemon: a never-ending server-sent event
//! stream arrives event by event, and a 1 GiB upload passes with the
//! daemon's memory flat.

#![allow(clippy::unwrap_used)]

mod common;

use common::proxy::{daemon_with_proxy, serve_pid};
use common::AppOptions;
use cutover_test_support::process::{rss_of, RssSampler};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

#[test]
fn never_ending_sse_stream_arrives_event_by_event() {
    let daemon = daemon_with_proxy(AppOptions::default(), "", "");
    daemon.deploy("v1");
    let stream = TcpStream::connect(("127.0.0.1", daemon.proxy_port)).unwrap();
    // A buffering proxy would deliver nothing before the (never) end.
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut reader = BufReader::new(stream);
    reader
        .get_mut()
        .write_all(b"GET /sse?n=100000000&ms=100 HTTP/1.1\r\nHost: app.test\r\nAccept: text/event-stream\r\n\r\n")
        .unwrap();
    let mut head = String::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/event-stream"),
        "{head}"
    );
    let mut events = Vec::new();
    while events.len() < 5 {
        let mut line = String::new();
        reader
            .read_line(&mut line)
            .unwrap_or_else(|e| panic!("event {} did not arrive: {e}", events.len()));
        if let Some(data) = line.trim_end().strip_prefix("data: ") {
            events.push(data.to_owned());
        }
    }
    assert_eq!(events[0], "version=v1 event=0");
    assert_eq!(events[4], "version=v1 event=4");
}

#[test]
fn one_gib_upload_streams_through_the_daemon_with_flat_memory() {
    let daemon = daemon_with_proxy(AppOptions::default(), "max_body = \"2GB\"", "");
    daemon.deploy("v1");
    let pid = serve_pid(&daemon);
    let before = rss_of(pid);

    let mut stream = TcpStream::connect(("127.0.0.1", daemon.proxy_port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    let sampler = RssSampler::start(pid);
    write!(
        stream,
        "POST /count HTTP/1.1\r\nHost: app.test\r\nContent-Length: {GIB}\r\n\r\n"
    )
    .unwrap();
    let chunk = vec![b'u'; 256 * 1024];
    let mut sent = 0u64;
    while sent < GIB {
        stream.write_all(&chunk).unwrap();
        sent += chunk.len() as u64;
    }
    let mut response = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&response).contains("bytes=") || !response.ends_with(b"\n") {
        let n = stream.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "closed early: {}",
            String::from_utf8_lossy(&response)
        );
        response.extend_from_slice(&buf[..n]);
    }
    let peak = sampler.stop();
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(
        response.contains(&format!("version=v1 bytes={GIB}")),
        "{response}"
    );
    let growth = peak.saturating_sub(before);
    println!(
        "cutover serve rss: {} MiB before, {} MiB peak during a 1 GiB upload",
        before / MIB,
        peak / MIB
    );
    assert!(growth < 64 * MIB, "the daemon grew by {} MiB", growth / MIB);
}
