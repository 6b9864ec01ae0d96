//! Spawns the built `cutover-testapp` binary and checks its routes, options
//! and graceful shutdown.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::{connect, run_to_exit, App};
use cutover_test_support::ports::free_port;

#[test]
fn listening_line_and_root() {
    let app = App::start(&["--port", "0", "--version", "v1.2"]);
    assert_eq!(
        app.listening_line,
        format!("cutover-testapp v1.2 listening on 127.0.0.1:{}", app.port)
    );
    let r = app.get("/");
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "version=v1.2\n");
    assert!(r.header("content-type").unwrap().starts_with("text/plain"));
}

#[test]
fn default_version_is_dev() {
    let app = App::start(&["--port", "0"]);
    assert_eq!(app.get("/").text(), "version=dev\n");
}

#[test]
fn explicit_port_and_env_port() {
    let p = free_port();
    let app = App::start(&["--port", &p.to_string()]);
    assert_eq!(app.port, p);
    assert_eq!(app.get("/").status, 200);
    drop(app);

    let p = free_port();
    let app = App::start_with_env(&[], &[("PORT", &p.to_string())]);
    assert_eq!(app.port, p);
    assert_eq!(app.get("/health").status, 200);
    drop(app);

    // --port=N form wins over PORT.
    let p = free_port();
    let app = App::start_with_env(&[&format!("--port={p}")], &[("PORT", "1")]);
    assert_eq!(app.port, p);
}

#[test]
fn keep_alive_serves_many_requests_on_one_connection() {
    let app = App::start(&["--port", "0", "--version", "ka", "--threads", "2"]);
    let mut c = app.connect();
    for _ in 0..50 {
        let r = c.request("GET", "/", &[], b"").unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "version=ka\n");
        assert_ne!(r.header("connection"), Some("close"));
    }
    assert_eq!(c.request("GET", "/health", &[], b"").unwrap().text(), "ok");
}

#[test]
fn health_default_custom_path_status_and_body() {
    let app = App::start(&["--port", "0"]);
    let r = app.get("/health");
    assert_eq!((r.status, r.text().as_str()), (200, "ok"));

    let app = App::start(&[
        "--port",
        "0",
        "--health-path",
        "/ttt",
        "--health-status",
        "500",
    ]);
    assert_eq!(app.get("/ttt").status, 500);
    assert_eq!(app.get("/health").status, 404);
    assert_eq!(app.get("/").status, 200, "only health is affected");

    let app = App::start(&["--port", "0", "--health-body", "UP"]);
    assert_eq!(app.get("/health").text(), "UP");
}

#[test]
fn healthy_after_answers_503_first() {
    let app = App::start(&["--port", "0", "--healthy-after", "1500"]);
    assert_eq!(app.get("/health").status, 503);
    assert_eq!(app.get("/").status, 200);
    std::thread::sleep(Duration::from_millis(1600));
    assert_eq!(app.get("/health").status, 200);
}

#[test]
fn slow_sleeps_then_answers() {
    let app = App::start(&["--port", "0", "--version", "s"]);
    let t = Instant::now();
    let r = app.get("/slow?ms=300");
    assert!(t.elapsed() >= Duration::from_millis(300));
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "version=s slept=300\n");
    assert_eq!(app.get("/slow").status, 400);
    assert_eq!(app.get("/slow?ms=abc").status, 400);
}

#[test]
fn echo_with_length_and_chunked() {
    let app = App::start(&["--port", "0"]);
    let mut c = app.connect();
    let body: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let r = c
        .request(
            "POST",
            "/echo",
            &[("Content-Type", "application/x-test")],
            &body,
        )
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/x-test"));
    assert_eq!(r.body, body);

    // Chunked request body on the same keep-alive connection.
    let chunked = b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
    let r = c
        .request(
            "POST",
            "/echo",
            &[("Transfer-Encoding", "chunked")],
            chunked,
        )
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "hello world");

    let r = c.request("POST", "/echo", &[], b"").unwrap();
    assert_eq!((r.status, r.body.len()), (200, 0));
}

#[test]
fn echo_streams_before_the_request_body_ends() {
    let app = App::start(&["--port", "0"]);
    let mut c = app.connect();
    c.send(
        "POST",
        "/echo",
        &[("Transfer-Encoding", "chunked")],
        b"5\r\nfirst\r\n",
    )
    .unwrap();
    // The response head and the first chunk arrive while the request body
    // is still open.
    let (status, headers) = c.read_head().unwrap();
    assert_eq!(status, 200);
    assert!(headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v == "chunked"));
    let mut first = [0u8; 10];
    c.reader().read_exact(&mut first).unwrap();
    assert_eq!(&first, b"5\r\nfirst\r\n");
    c.stream().write_all(b"0\r\n\r\n").unwrap();
}

#[test]
fn headers_lists_request_headers() {
    let app = App::start(&["--port", "0"]);
    let r = app
        .connect()
        .request(
            "GET",
            "/headers",
            &[
                ("X-Forwarded-For", "10.1.2.3"),
                ("X-Real-IP", "10.1.2.3"),
                ("X-Forwarded-Host", "example.test"),
            ],
            b"",
        )
        .unwrap();
    assert_eq!(r.status, 200);
    let t = r.text();
    for line in [
        "host: 127.0.0.1",
        "x-forwarded-for: 10.1.2.3",
        "x-real-ip: 10.1.2.3",
        "x-forwarded-host: example.test",
    ] {
        assert!(t.lines().any(|l| l == line), "missing {line:?} in {t:?}");
    }
}

#[test]
fn bytes_returns_exact_sizes() {
    let app = App::start(&["--port", "0"]);
    let mut c = app.connect();
    for n in [0usize, 1, 65_536, 65_537, 1_048_576] {
        let r = c
            .request("GET", &format!("/bytes?n={n}"), &[], b"")
            .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-length"), Some(n.to_string().as_str()));
        assert_eq!(r.body.len(), n);
        assert!(r.body.iter().all(|&b| b == b'x'));
    }
    assert_eq!(
        c.request("GET", "/bytes?n=-1", &[], b"").unwrap().status,
        400
    );
}

#[test]
fn status_sse_and_not_found() {
    let app = App::start(&["--port", "0", "--version", "e"]);
    assert_eq!(app.get("/status?code=503").status, 503);
    assert_eq!(app.get("/status?code=204").status, 204);
    assert_eq!(app.get("/status?code=42").status, 400);
    assert_eq!(app.get("/nope").status, 404);
    assert_eq!(app.get("/health/extra").status, 404);

    let t = Instant::now();
    let r = app.get("/sse?n=3&ms=50");
    assert!(t.elapsed() >= Duration::from_millis(100));
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    assert_eq!(
        r.text(),
        "id: 0\ndata: version=e event=0\n\nid: 1\ndata: version=e event=1\n\nid: 2\ndata: version=e event=2\n\n"
    );
}

#[test]
fn upgrade_echoes_raw_bytes() {
    let app = App::start(&["--port", "0"]);
    let mut c = app.connect();
    let r = c
        .request(
            "GET",
            "/upgrade",
            &[("Connection", "Upgrade"), ("Upgrade", "echo")],
            b"",
        )
        .unwrap();
    assert_eq!(r.status, 101);
    assert_eq!(r.header("upgrade"), Some("echo"));
    c.stream().write_all(b"ping over the tunnel").unwrap();
    let mut buf = [0u8; 20];
    c.reader().read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping over the tunnel");

    assert_eq!(
        app.get("/upgrade").status,
        400,
        "no Upgrade header: plain 400"
    );
}

#[test]
fn fail_ratio_is_deterministic() {
    let app = App::start(&["--port", "0", "--fail-ratio", "0.25"]);
    let mut c = app.connect();
    let statuses: Vec<u16> = (0..8)
        .map(|_| c.request("GET", "/", &[], b"").unwrap().status)
        .collect();
    assert_eq!(statuses, [200, 200, 200, 500, 200, 200, 200, 500]);
    // Other routes do not count and never fail.
    assert_eq!(c.request("GET", "/health", &[], b"").unwrap().status, 200);

    let app = App::start(&["--port", "0", "--fail-ratio", "1"]);
    assert_eq!(app.get("/").status, 500);
}

#[test]
fn exit_at_start_exits_with_the_code() {
    let (st, out, err) = run_to_exit(&["--port", "0", "--exit-at-start", "3"], &[]);
    assert_eq!(st.code(), Some(3));
    assert!(out.is_empty(), "never listened: {out:?}");
    assert!(
        err.contains("testapp: exiting at start as asked (code 3)"),
        "{err:?}"
    );

    // Needs no port.
    let (st, _, _) = run_to_exit(&["--exit-at-start", "0"], &[]);
    assert_eq!(st.code(), Some(0));
}

#[test]
fn exit_after_crashes_later() {
    let mut app = App::start(&["--port", "0", "--exit-after", "1000"]);
    assert_eq!(app.get("/").status, 200);
    let st = app.wait_exit();
    assert_eq!(st.code(), Some(1));
    assert!(app.stderr_text().contains("exiting after 1000 ms"));
}

#[test]
fn listen_host_env_binds_another_address_and_a_bad_one_exits_2() {
    // 127.0.0.2 is loopback too, but only a listener on 0.0.0.0 answers there.
    let app = App::start_with_env(&["--port", "0"], &[("LISTEN_HOST", "0.0.0.0")]);
    assert!(std::net::TcpStream::connect(("127.0.0.2", app.port)).is_ok());
    drop(app);
    let app = App::start(&["--port", "0"]);
    assert!(std::net::TcpStream::connect(("127.0.0.2", app.port)).is_err());
    drop(app);

    let (st, _, err) = run_to_exit(&["--port", "0"], &[("LISTEN_HOST", "nowhere")]);
    assert_eq!(st.code(), Some(2));
    assert!(err.contains("LISTEN_HOST"), "{err:?}");
}

#[test]
fn bad_args_exit_2_with_a_message() {
    for args in [
        &[][..],
        &["--port"],
        &["--port", "x"],
        &["--port", "1", "--nope"],
        &["--port", "1", "--fail-ratio", "2"],
        &["--port", "1", "--health-status", "abc"],
        &["--port", "1", "--threads", "0"],
    ] {
        let (st, _, err) = run_to_exit(args, &[]);
        assert_eq!(st.code(), Some(2), "{args:?}");
        assert!(err.starts_with("cutover-testapp: "), "{args:?}: {err:?}");
    }
    let (st, _, err) = run_to_exit(&[], &[("PORT", "eighty")]);
    assert_eq!(st.code(), Some(2));
    assert!(err.contains("PORT"), "{err:?}");

    let (st, out, _) = run_to_exit(&["--help"], &[]);
    assert_eq!(st.code(), Some(0));
    assert!(out.contains("--fail-ratio"));
}

#[test]
fn port_in_use_exits_1() {
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let p = held.local_addr().unwrap().port().to_string();
    let (st, _, err) = run_to_exit(&["--port", &p], &[]);
    assert_eq!(st.code(), Some(1));
    assert!(err.contains("cannot listen"), "{err:?}");
}

#[test]
fn start_delay_delays_listening() {
    let t = Instant::now();
    let app = App::start(&["--port", "0", "--start-delay", "400"]);
    assert!(t.elapsed() >= Duration::from_millis(400));
    assert_eq!(app.get("/").status, 200);
}

#[test]
fn sigterm_lets_in_flight_requests_finish_then_exits_0() {
    let mut app = App::start(&["--port", "0", "--version", "g"]);

    // An idle keep-alive connection (one request already served).
    let mut idle = app.connect();
    assert_eq!(idle.request("GET", "/", &[], b"").unwrap().status, 200);

    // A connection that never sent anything.
    let mut silent = app.connect();

    // A request in flight.
    let port = app.port;
    let slow = std::thread::spawn(move || {
        connect(port)
            .request("GET", "/slow?ms=1500", &[], b"")
            .unwrap()
    });
    std::thread::sleep(Duration::from_millis(200));

    let t = Instant::now();
    app.signal("TERM");

    // The idle connection is closed promptly, long before the slow request ends.
    assert!(
        idle.is_closed_by_peer(),
        "idle keep-alive connection should be closed"
    );
    assert!(
        silent.is_closed_by_peer(),
        "unused connection should be closed"
    );
    assert!(
        t.elapsed() < Duration::from_millis(1000),
        "idle close took {:?}",
        t.elapsed()
    );

    // No new connections are accepted once shutdown began.
    std::thread::sleep(Duration::from_millis(50));
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "listener should be closed"
    );

    let r = slow.join().unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "version=g slept=1500\n");
    assert_eq!(r.header("connection"), Some("close"));

    let st = app.wait_exit();
    assert_eq!(st.code(), Some(0));
    assert!(
        t.elapsed() >= Duration::from_millis(1200),
        "exited before the slow request ended"
    );
    assert!(app.stderr_text().contains("testapp: shutting down"));
}

#[test]
fn sigint_shuts_down_too() {
    let mut app = App::start(&["--port", "0"]);
    app.signal("INT");
    assert_eq!(app.wait_exit().code(), Some(0));
}

#[test]
fn second_signal_exits_at_once() {
    let mut app = App::start(&["--port", "0"]);
    let port = app.port;
    let _slow = std::thread::spawn(move || {
        let _ = std::panic::catch_unwind(|| {
            connect(port)
                .request("GET", "/slow?ms=5000", &[], b"")
                .unwrap()
        });
    });
    std::thread::sleep(Duration::from_millis(200));
    let t = Instant::now();
    app.signal("TERM");
    std::thread::sleep(Duration::from_millis(100));
    app.signal("TERM");
    assert_eq!(app.wait_exit().code(), Some(1));
    assert!(t.elapsed() < Duration::from_secs(3));
}

#[test]
fn ignore_sigterm_keeps_serving() {
    let mut app = App::start(&["--port", "0", "--ignore-sigterm"]);
    app.signal("TERM");
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        app.child.try_wait().unwrap().is_none(),
        "should ignore SIGTERM"
    );
    assert_eq!(app.get("/").status, 200);
    app.signal("INT");
    assert_eq!(app.wait_exit().code(), Some(0));
}
