//! TLS and HTTP/2 through the real daemon: SNI picks each host's
//! certificate, replaced files are served without a restart, a broken
//! replacement leaves the old certificate serving; HTTP/2 (h2c and over
//! TLS) streams fail nothing across a blue/green switch; plain HTTP can
//! redirect to HTTPS.

#![allow(clippy::unwrap_used)]

mod common;

use common::proxy::{daemon_with_proxy, serve_pid};
use common::{AppOptions, Daemon};
use cutover_test_support::http::Connection;
use cutover_test_support::ports::free_port;
use cutover_test_support::tls::{handshake, replace_file, served_cert, Ca};
use cutover_test_support::wait::eventually;
use cutover_test_support::{binaries, process};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::CertificateDer;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// 127.0.0.1:`port`.
fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A daemon with an HTTPS listener serving `a.test` and `b.test` from
/// `<dir>/a.*` and `<dir>/b.*`; returns it with the HTTPS port.
fn tls_daemon(
    ca: &Ca,
    extra_proxy_keys: &str,
) -> (
    Daemon,
    u16,
    CertificateDer<'static>,
    CertificateDer<'static>,
) {
    let certs = tempfile::tempdir().unwrap().keep();
    let a = ca.write_leaf(&certs, "a", "a.test");
    let b = ca.write_leaf(&certs, "b", "b.test");
    let tls_port = free_port();
    let keys = format!(
        "tls_listen = [\"127.0.0.1:{tls_port}\"]\naccess_log = \"off\"\n{extra_proxy_keys}"
    );
    let tail = format!(
        "[[proxy.tls]]\ncert = \"{0}/a.crt\"\nkey = \"{0}/a.key\"\n[[proxy.tls]]\ncert = \"{0}/b.crt\"\nkey = \"{0}/b.key\"\n",
        certs.display()
    );
    (
        daemon_with_proxy(AppOptions::default(), &keys, &tail),
        tls_port,
        a,
        b,
    )
}

fn cert_dir(daemon: &Daemon) -> std::path::PathBuf {
    let config = std::fs::read_to_string(&daemon.config).unwrap();
    let line = config.lines().find(|l| l.starts_with("cert = ")).unwrap();
    Path::new(line.trim_start_matches("cert = ").trim_matches('"'))
        .parent()
        .unwrap()
        .to_path_buf()
}

#[test]
fn sni_picks_each_hosts_certificate_and_replaced_files_are_served_without_restart() {
    let ca = Ca::new();
    let (daemon, tls_port, a, b) = tls_daemon(&ca, "");
    daemon.deploy("v1");
    let rt = runtime();
    let connector = ca.connector(&[b"http/1.1"]);
    rt.block_on(async {
        assert_eq!(served_cert(&connector, local(tls_port), "a.test").await, a);
        assert_eq!(served_cert(&connector, local(tls_port), "b.test").await, b);
        // A request over TLS reaches the release, marked as HTTPS.
        let stream = handshake(&connector, local(tls_port), "a.test")
            .await
            .unwrap()
            .0;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let request = http::Request::get("/headers")
            .header("host", "a.test")
            .body(Empty::<bytes::Bytes>::new())
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let body = String::from_utf8_lossy(&body);
        assert!(body.contains("x-forwarded-proto: https"), "{body}");
    });

    // New files for a.test: picked up by the file watch, no restart.
    let dir = cert_dir(&daemon);
    let a2 = ca.write_leaf(&dir, "a", "a.test");
    eventually(
        Duration::from_secs(15),
        "the replaced certificate is served",
        || rt.block_on(served_cert(&connector, local(tls_port), "a.test")) == a2,
    );

    // A broken replacement for b.test (a key of another certificate): the
    // reload fails loudly and b.test keeps its certificate.
    let stray = rcgen::KeyPair::generate().unwrap();
    replace_file(&dir.join("b.key"), &stray.serialize_pem());
    process::signal(serve_pid(&daemon), nix::sys::signal::Signal::SIGHUP);
    eventually(
        Duration::from_secs(15),
        "the failed reload is reported",
        || {
            daemon
                .serve_log()
                .contains("reloading the TLS certificates failed")
        },
    );
    let log = daemon.serve_log();
    assert!(log.contains("b.key"), "the error names the file:\n{log}");
    assert_eq!(
        rt.block_on(served_cert(&connector, local(tls_port), "b.test")),
        b
    );
    assert_eq!(
        rt.block_on(served_cert(&connector, local(tls_port), "a.test")),
        a2
    );
    assert_eq!(daemon.get("/").status, 200, "still serving");
}

/// Runs waves of concurrent requests on one HTTP/2 connection until `stop`;
/// records the versions each wave saw (consecutive repeats collapsed) and
/// counts failures.
async fn h2_load(
    sender: hyper::client::conn::http2::SendRequest<Empty<bytes::Bytes>>,
    uri: &'static str,
    stop: Arc<AtomicBool>,
    failures: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<String>>>,
) {
    while !stop.load(Ordering::SeqCst) {
        let mut wave = Vec::new();
        for _ in 0..20 {
            let mut sender = sender.clone();
            wave.push(tokio::spawn(async move {
                let response = sender
                    .send_request(http::Request::get(uri).body(Empty::new()).unwrap())
                    .await?;
                let ok = response.status() == 200 && response.version() == http::Version::HTTP_2;
                let body = response.into_body().collect().await?.to_bytes();
                Ok::<_, hyper::Error>((ok, String::from_utf8_lossy(&body).trim().to_owned()))
            }));
        }
        // Streams of one wave run concurrently: one routed just before the
        // switch may answer after another routed just after. The wave as a
        // whole is recorded: `v1`, `v2`, or `v1+v2` (the wave of the switch).
        let mut versions = Vec::new();
        for stream in wave {
            match stream.await.unwrap() {
                Ok((true, body)) => {
                    let version = body.trim_start_matches("version=").to_owned();
                    if !versions.contains(&version) {
                        versions.push(version);
                    }
                }
                other => {
                    eprintln!("failed stream: {other:?}");
                    failures.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
        versions.sort();
        let wave = versions.join("+");
        let mut seen = seen.lock().unwrap();
        if seen.last() != Some(&wave) {
            seen.push(wave);
        }
    }
}

#[test]
fn http2_streams_over_h2c_and_tls_fail_nothing_across_a_switch() {
    let ca = Ca::new();
    let (daemon, tls_port, _, _) = tls_daemon(&ca, "");
    daemon.deploy("v1");
    let rt = runtime();
    let proxy: SocketAddr = ([127, 0, 0, 1], daemon.proxy_port).into();
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let seen_h2c = Arc::new(Mutex::new(Vec::new()));
    let seen_tls = Arc::new(Mutex::new(Vec::new()));
    let connector = ca.connector(&[b"h2"]);
    let loads = rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(proxy).await.unwrap();
        let (h2c, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                .await
                .unwrap();
        tokio::spawn(conn);
        let stream = handshake(&connector, local(tls_port), "a.test")
            .await
            .unwrap()
            .0;
        assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let (h2, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        [
            tokio::spawn(h2_load(
                h2c,
                "http://a.test/",
                stop.clone(),
                failures.clone(),
                seen_h2c.clone(),
            )),
            tokio::spawn(h2_load(
                h2,
                "https://a.test/",
                stop.clone(),
                failures.clone(),
                seen_tls.clone(),
            )),
        ]
    });
    std::thread::sleep(Duration::from_millis(300));
    let output = daemon.deploy("v2");
    assert!(output.contains("succeeded"), "{output}");
    eventually(Duration::from_secs(10), "both connections reach v2", || {
        seen_h2c.lock().unwrap().last().map(String::as_str) == Some("v2")
            && seen_tls.lock().unwrap().last().map(String::as_str) == Some("v2")
    });
    stop.store(true, Ordering::SeqCst);
    rt.block_on(async {
        for load in loads {
            load.await.unwrap();
        }
    });
    assert_eq!(failures.load(Ordering::SeqCst), 0, "failed HTTP/2 streams");
    // v1 waves, at most one wave in flight during the switch, then only v2:
    // no wave that started after v2 answered went back to v1.
    for seen in [&seen_h2c, &seen_tls] {
        let seen = seen.lock().unwrap().clone();
        assert!(
            seen == ["v1", "v2"] || seen == ["v1", "v1+v2", "v2"],
            "{seen:?}"
        );
    }
}

#[test]
fn plain_http_is_redirected_to_https_when_asked() {
    let ca = Ca::new();
    let (daemon, tls_port, _, _) = tls_daemon(&ca, "redirect_http = true");
    daemon.deploy("v1");
    let mut conn = Connection::open(daemon.proxy_port).unwrap();
    let reply = conn.get("/path?q=1").unwrap();
    assert_eq!(reply.status, 308);
    assert_eq!(
        reply.header("location"),
        Some(format!("https://127.0.0.1:{tls_port}/path?q=1").as_str())
    );
}

#[test]
fn missing_certificate_file_stops_the_start_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cutover.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = \"state\"\n[proxy]\nlisten = [\"127.0.0.1:{}\"]\ntls_listen = [\"127.0.0.1:{}\"]\n\
             [[proxy.tls]]\ncert = \"missing.crt\"\nkey = \"missing.key\"\n",
            free_port(),
            free_port()
        ),
    )
    .unwrap();
    let output = std::process::Command::new(binaries::cutover())
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("missing.crt"), "{stderr}");
}
