//! Upgrades of cutover under TLS and HTTP/2 clients: these connections
//! cannot move to the new process, so the old one ends each gracefully —
//! HTTP/1.1 over TLS after a response with `Connection: close`, HTTP/2
//! (h2c and h2 over TLS) with a GOAWAY after its streams — and the clients
//! reconnect to the new one. No request fails, nothing is reset.

#![allow(clippy::unwrap_used)]

mod common;

use common::proxy::daemon_with_proxy;
use common::{AppOptions, Daemon};
use cutover_test_support::ports::free_port;
use cutover_test_support::tls::{handshake, Ca};
use cutover_test_support::wait::eventually;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const UPGRADES: usize = 20;

/// What the clients saw.
#[derive(Default)]
struct Tally {
    ok: AtomicUsize,
    /// Graceful ends that led to a new connection.
    reconnects: AtomicUsize,
    failures: Mutex<Vec<String>>,
}

impl Tally {
    fn fail(&self, what: String) {
        self.failures.lock().unwrap().push(what);
    }
}

#[derive(Clone, Copy)]
enum Kind {
    TlsHttp1,
    TlsH2,
    H2c,
}

type Body = Empty<bytes::Bytes>;

/// One request-sending handle, over whichever protocol.
enum Sender {
    Http1(hyper::client::conn::http1::SendRequest<Body>),
    Http2(hyper::client::conn::http2::SendRequest<Body>),
}

async fn connect(kind: Kind, ca: &Ca, tls: SocketAddr, plain: SocketAddr) -> Sender {
    match kind {
        Kind::H2c => {
            let tcp = tokio::net::TcpStream::connect(plain).await.unwrap();
            let (sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                    .await
                    .unwrap();
            tokio::spawn(conn);
            Sender::Http2(sender)
        }
        Kind::TlsH2 => {
            let (stream, _) = handshake(&ca.connector(&[b"h2"]), tls, "a.test")
                .await
                .unwrap();
            let (sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                    .await
                    .unwrap();
            tokio::spawn(conn);
            Sender::Http2(sender)
        }
        Kind::TlsHttp1 => {
            let (stream, _) = handshake(&ca.connector(&[b"http/1.1"]), tls, "a.test")
                .await
                .unwrap();
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .unwrap();
            tokio::spawn(conn);
            Sender::Http1(sender)
        }
    }
}

/// Whether a connection may take another request: a connection the
/// server ended gracefully (GOAWAY, `Connection: close`) is not.
async fn ready(sender: &mut Sender) -> bool {
    match sender {
        Sender::Http1(s) => s.ready().await.is_ok(),
        Sender::Http2(s) => s.ready().await.is_ok(),
    }
}

async fn send(sender: &mut Sender) -> Result<http::Response<hyper::body::Incoming>, hyper::Error> {
    let request = || {
        http::Request::get("https://a.test/")
            .body(Empty::new())
            .unwrap()
    };
    match sender {
        Sender::Http1(s) => {
            let mut request = request();
            *request.uri_mut() = "/".parse().unwrap();
            request
                .headers_mut()
                .insert(http::header::HOST, "a.test".parse().unwrap());
            s.send_request(request).await
        }
        Sender::Http2(s) => s.send_request(request()).await,
    }
}

/// Sends requests one after another until `stop`, reconnecting when the
/// server ends a connection gracefully; anything else is a failure.
async fn client(
    kind: Kind,
    ca: Arc<Ca>,
    tls: SocketAddr,
    plain: SocketAddr,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) {
    while !stop.load(Ordering::SeqCst) {
        let mut sender = connect(kind, &ca, tls, plain).await;
        while !stop.load(Ordering::SeqCst) && ready(&mut sender).await {
            match send(&mut sender).await {
                Ok(response) if response.status() == 200 => {
                    let closing = response
                        .headers()
                        .get(http::header::CONNECTION)
                        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
                    match response.into_body().collect().await {
                        Ok(_) => tally.ok.fetch_add(1, Ordering::SeqCst),
                        Err(e) => {
                            tally.fail(format!("body: {e}"));
                            break;
                        }
                    };
                    if closing {
                        break;
                    }
                }
                Ok(response) => tally.fail(format!("status {}", response.status())),
                // Never sent: the connection was closing under it.
                Err(e) if e.is_canceled() => break,
                // A stream the server's GOAWAY refused (its id is above
                // the last one the server processes): never processed, so
                // a client sends it again on a new connection (RFC 9113
                // section 6.8), as browsers do.
                Err(e) if refused_by_goaway(&e) => break,
                Err(e) => {
                    tally.fail(format!("request: {e:?}"));
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        tally.reconnects.fetch_add(1, Ordering::SeqCst);
    }
}

fn refused_by_goaway(error: &hyper::Error) -> bool {
    let text = format!("{error:?}");
    text.contains("GoAway(") && text.contains("NO_ERROR") && text.contains("Remote")
}

fn tls_daemon(ca: &Ca) -> (Daemon, u16) {
    let certs = tempfile::tempdir().unwrap().keep();
    ca.write_leaf(&certs, "a", "a.test");
    let tls_port = free_port();
    let keys = format!("tls_listen = [\"127.0.0.1:{tls_port}\"]\naccess_log = \"off\"");
    let tail = format!(
        "[[proxy.tls]]\ncert = \"{0}/a.crt\"\nkey = \"{0}/a.key\"\n",
        certs.display()
    );
    (
        daemon_with_proxy(AppOptions::default(), &keys, &tail),
        tls_port,
    )
}

#[test]
fn twenty_upgrades_under_tls_and_http2_clients_fail_nothing() {
    let ca = Arc::new(Ca::new());
    let (mut daemon, tls_port) = tls_daemon(&ca);
    daemon.deploy("v1");
    let tls: SocketAddr = ([127, 0, 0, 1], tls_port).into();
    let plain: SocketAddr = ([127, 0, 0, 1], daemon.proxy_port).into();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let clients: Vec<_> = [Kind::TlsHttp1, Kind::TlsHttp1, Kind::TlsH2, Kind::H2c]
        .into_iter()
        .map(|kind| {
            runtime.spawn(client(
                kind,
                ca.clone(),
                tls,
                plain,
                stop.clone(),
                tally.clone(),
            ))
        })
        .collect();
    eventually(
        Duration::from_secs(10),
        "requests before the upgrades",
        || tally.ok.load(Ordering::SeqCst) > 50,
    );
    for round in 1..=UPGRADES {
        let output = daemon.upgrade(None);
        assert!(
            output.status.success(),
            "upgrade {round}: {}\n{}",
            String::from_utf8_lossy(&output.stderr),
            daemon.serve_log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let before = tally.ok.load(Ordering::SeqCst);
    eventually(
        Duration::from_secs(10),
        "requests after the upgrades",
        || tally.ok.load(Ordering::SeqCst) > before + 50,
    );
    stop.store(true, Ordering::SeqCst);
    runtime.block_on(async {
        for client in clients {
            client.await.unwrap();
        }
    });
    let failures = tally.failures.lock().unwrap().clone();
    println!(
        "{} requests, {} reconnects after a graceful end",
        tally.ok.load(Ordering::SeqCst),
        tally.reconnects.load(Ordering::SeqCst)
    );
    assert!(
        failures.is_empty(),
        "{} failed: {failures:?}",
        failures.len()
    );
    assert!(tally.reconnects.load(Ordering::SeqCst) >= UPGRADES);
}
