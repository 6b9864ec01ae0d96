//! TLS termination: SNI picks the certificate, files are reloaded without a
//! restart (a broken replacement keeps the old certificate serving), HTTP/2
//! via ALPN, and the cleartext listener's redirect to HTTPS.

mod common;

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use common::{fast_settings, single_app, Backend, Proxy};
use cutover_proxy::{CertKeyFiles, Router, ServeOptions, Tls, TlsError};
use cutover_test_support::tls::{handshake, replace_file, served_cert, Ca, Leaf};
use http::{Request, StatusCode, Version};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Writes a leaf's files under `dir` as `<name>.crt` / `<name>.key`.
fn write_pair(dir: &Path, name: &str, leaf: &Leaf) -> CertKeyFiles {
    let (cert, key) = leaf.write(dir, name);
    CertKeyFiles { cert, key }
}

/// The proxy with the test's fast settings and `options`.
async fn start(router: Router, options: ServeOptions) -> Proxy {
    Proxy::start_with(router, fast_settings(), options).await
}

/// A backend that answers with the `X-Forwarded-Proto` it got and the HTTP
/// version it was spoken to in.
async fn proto_backend() -> Backend {
    Backend::start(|req| async move {
        let proto = req
            .headers()
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_owned();
        common::text(StatusCode::OK, format!("proto={proto} {:?}", req.version()))
    })
    .await
}

#[tokio::test]
async fn sni_picks_the_certificate_whose_names_match_and_unknown_names_get_the_first() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new();
    let a = ca.leaf(&["a.test"]);
    let b = ca.leaf(&["b.test", "*.b.test"]);
    let tls = Tls::load(vec![
        write_pair(dir.path(), "a", &a),
        write_pair(dir.path(), "b", &b),
    ])
    .expect("load");
    assert_eq!(tls.names(), ["a.test", "b.test", "*.b.test"]);
    let backend = proto_backend().await;
    let (router, _) = single_app(backend.addr);
    let proxy = start(
        router,
        ServeOptions {
            tls: Some(tls),
            ..Default::default()
        },
    )
    .await;
    let addr = proxy.addr;

    let connector = ca.connector(&[b"http/1.1"]);
    assert_eq!(served_cert(&connector, addr, "a.test").await, a.der);
    assert_eq!(served_cert(&connector, addr, "b.test").await, b.der);
    assert_eq!(
        served_cert(&connector, addr, "www.b.test").await,
        b.der,
        "wildcard"
    );
    // An unknown name gets the default (first) certificate, which the
    // client then rejects for that name: the handshake fails.
    assert!(handshake(&connector, addr, "c.test").await.is_err());
}

#[tokio::test]
async fn https_requests_reach_the_upstream_with_x_forwarded_proto_https() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new();
    let tls = Tls::load(vec![write_pair(dir.path(), "a", &ca.leaf(&["a.test"]))]).expect("load");
    let backend = proto_backend().await;
    let (router, _) = single_app(backend.addr);
    let proxy = start(
        router,
        ServeOptions {
            tls: Some(tls),
            ..Default::default()
        },
    )
    .await;
    let addr = proxy.addr;

    // HTTP/1.1 (ALPN http/1.1).
    let (stream, _) = handshake(&ca.connector(&[b"http/1.1"]), addr, "a.test")
        .await
        .expect("tls");
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("h1");
    tokio::spawn(conn);
    for _ in 0..3 {
        let request = Request::get("/")
            .header("host", "a.test")
            .body(Empty::<Bytes>::new())
            .expect("request");
        let response = sender.send_request(request).await.expect("response");
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        assert_eq!(body, "proto=https HTTP/1.1");
    }

    // HTTP/2 (ALPN h2), many streams on one connection.
    let (stream, _) = handshake(&ca.connector(&[b"h2", b"http/1.1"]), addr, "a.test")
        .await
        .expect("tls");
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2");
    tokio::spawn(conn);
    let mut streams = Vec::new();
    for _ in 0..100 {
        let mut sender = sender.clone();
        streams.push(tokio::spawn(async move {
            let request = Request::get("https://a.test/")
                .body(Empty::<Bytes>::new())
                .expect("request");
            let response = sender.send_request(request).await.expect("response");
            assert_eq!(response.version(), Version::HTTP_2);
            response
                .into_body()
                .collect()
                .await
                .expect("body")
                .to_bytes()
        }));
    }
    for stream in streams {
        assert_eq!(stream.await.expect("stream"), "proto=https HTTP/1.1");
    }
}

#[tokio::test]
async fn replaced_certificate_files_are_picked_up_without_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new();
    let first = ca.leaf(&["a.test"]);
    let files = write_pair(dir.path(), "a", &first);
    let tls = Tls::load(vec![files.clone()]).expect("load");
    let _watch = tls.watch(Duration::from_millis(50));
    let backend = proto_backend().await;
    let (router, _) = single_app(backend.addr);
    let proxy = start(
        router,
        ServeOptions {
            tls: Some(tls),
            ..Default::default()
        },
    )
    .await;
    let addr = proxy.addr;
    let connector = ca.connector(&[b"http/1.1"]);
    assert_eq!(served_cert(&connector, addr, "a.test").await, first.der);

    let second = ca.leaf(&["a.test"]);
    replace_file(&files.key, &second.key_pem);
    replace_file(&files.cert, &second.cert_pem);
    for _ in 0..200 {
        if served_cert(&connector, addr, "a.test").await == second.der {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the new certificate was never served");
}

#[tokio::test]
async fn broken_replacement_is_reported_and_the_old_certificate_keeps_serving() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new();
    let good = ca.leaf(&["a.test"]);
    let files = write_pair(dir.path(), "a", &good);
    let tls = Tls::load(vec![files.clone()]).expect("load");
    let backend = proto_backend().await;
    let (router, _) = single_app(backend.addr);
    let proxy = start(
        router,
        ServeOptions {
            tls: Some(tls.clone()),
            ..Default::default()
        },
    )
    .await;
    let addr = proxy.addr;
    let connector = ca.connector(&[b"http/1.1"]);

    // A key that belongs to another certificate.
    let other = ca.leaf(&["a.test"]);
    replace_file(&files.key, &other.key_pem);
    assert!(tls.changed_on_disk());
    let error = tls.reload().expect_err("a mismatched key is refused");
    assert!(matches!(error, TlsError::BadKey { .. }), "{error}");
    assert!(error.to_string().contains("a.key"), "{error}");
    assert_eq!(served_cert(&connector, addr, "a.test").await, good.der);
    assert!(
        !tls.changed_on_disk(),
        "a broken set is not retried until it changes again"
    );

    // Not PEM at all.
    replace_file(&files.cert, "this is not a certificate\n");
    let error = tls.reload().expect_err("garbage is refused");
    assert!(matches!(error, TlsError::NoCert { .. }), "{error}");
    assert!(error.to_string().contains("a.crt"), "{error}");
    // A missing key file (next to a good certificate).
    replace_file(&files.cert, &good.cert_pem);
    std::fs::remove_file(&files.key).expect("remove");
    let error = tls.reload().expect_err("a missing key is refused");
    assert!(error.to_string().contains("a.key"), "{error}");
    assert_eq!(
        served_cert(&connector, addr, "a.test").await,
        good.der,
        "still the old certificate"
    );

    // Fixed files are taken again.
    let fixed = ca.leaf(&["a.test"]);
    replace_file(&files.key, &fixed.key_pem);
    replace_file(&files.cert, &fixed.cert_pem);
    assert_eq!(tls.reload().expect("reload"), ["a.test"]);
    assert_eq!(served_cert(&connector, addr, "a.test").await, fixed.der);
}

#[test]
fn missing_or_unusable_files_are_clear_errors_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = CertKeyFiles {
        cert: dir.path().join("nope.crt"),
        key: dir.path().join("nope.key"),
    };
    let error = Tls::load(vec![missing]).expect_err("missing files");
    assert!(error.to_string().contains("nope.crt"), "{error}");
    assert!(matches!(Tls::load(vec![]), Err(TlsError::NoCertificates)));
    let ca = Ca::new();
    let leaf = ca.leaf(&["a.test"]);
    let files = write_pair(dir.path(), "a", &leaf);
    std::fs::write(
        &files.key,
        "-----BEGIN PRIVATE KEY-----\nnot base64!\n-----END PRIVATE KEY-----\n",
    )
    .expect("write");
    let error = Tls::load(vec![files]).expect_err("bad key");
    assert!(error.to_string().contains("a.key"), "{error}");
}

#[tokio::test]
async fn cleartext_listener_redirects_to_https_except_acme_challenges() {
    let backend = Backend::named("challenge-answer").await;
    let (router, _) = single_app(backend.addr);
    let proxy = start(
        router,
        ServeOptions {
            redirect_https: Some(8443),
            ..Default::default()
        },
    )
    .await;
    let addr = proxy.addr;
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(b"GET /a/b?c=d HTTP/1.1\r\nHost: example.com:8080\r\n\r\n")
        .await
        .expect("write");
    let mut buf = vec![0u8; 4096];
    let n = stream.read(&mut buf).await.expect("read");
    let head = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 308"), "{head}");
    assert!(
        head.contains("location: https://example.com:8443/a/b?c=d"),
        "{head}"
    );
    assert_eq!(backend.requests(), 0);

    let mut client = common::Client::connect(addr).await;
    let reply = client
        .get("example.com", "/.well-known/acme-challenge/token")
        .await
        .expect("request");
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (StatusCode::OK, "challenge-answer")
    );
}

#[tokio::test]
async fn acme_certificates_swap_in_beside_the_files_and_challenge_certificates_go_only_to_the_validator(
) {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new();
    let file = ca.leaf(&["a.test", "*.b.test"]);
    let tls = Tls::with_acme(vec![write_pair(dir.path(), "a", &file)]).expect("load");
    let backend = proto_backend().await;
    let (router, _) = single_app(backend.addr);
    let proxy = start(
        router,
        ServeOptions {
            tls: Some(tls.clone()),
            ..Default::default()
        },
    )
    .await;
    let addr = proxy.addr;
    let connector = ca.connector(&[b"http/1.1"]);

    // An ACME certificate for an exact name wins over a file's wildcard,
    // and a new one replaces it for new connections.
    assert_eq!(served_cert(&connector, addr, "x.b.test").await, file.der);
    for _ in 0..2 {
        let acme = ca.leaf(&["x.b.test"]);
        tls.set_acme_certificate("x.b.test", &acme.cert_pem, &acme.key_pem)
            .expect("usable");
        let fresh = ca.connector(&[b"http/1.1"]);
        assert_eq!(served_cert(&fresh, addr, "x.b.test").await, acme.der);
    }
    assert_eq!(served_cert(&connector, addr, "a.test").await, file.der);

    // The challenge certificate is served only to a client offering
    // acme-tls/1 (and nothing is served to it without one).
    let challenge = ca.leaf(&["x.b.test"]);
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(challenge.key_pem.as_bytes())
        .expect("key");
    tls.set_alpn_challenge(
        "x.b.test",
        challenge.der.to_vec(),
        key.secret_der().to_vec(),
    )
    .expect("usable");
    let validator = ca.connector(&[b"acme-tls/1"]);
    let (stream, served) = handshake(&validator, addr, "x.b.test")
        .await
        .expect("handshake");
    assert_eq!(served, challenge.der);
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"acme-tls/1"[..]));
    let fresh = ca.connector(&[b"http/1.1"]);
    assert_ne!(served_cert(&fresh, addr, "x.b.test").await, challenge.der);
    tls.clear_alpn_challenge("x.b.test");
    assert!(handshake(&validator, addr, "x.b.test").await.is_err());
}

#[tokio::test]
async fn tls_for_acme_starts_without_files_and_serves_nothing_until_a_certificate_arrives() {
    let ca = Ca::new();
    let tls = Tls::with_acme(Vec::new()).expect("no files is fine with ACME");
    assert!(matches!(
        Tls::load(Vec::new()),
        Err(TlsError::NoCertificates)
    ));
    let backend = proto_backend().await;
    let (router, _) = single_app(backend.addr);
    let proxy = start(
        router,
        ServeOptions {
            tls: Some(tls.clone()),
            ..Default::default()
        },
    )
    .await;
    let connector = ca.connector(&[b"http/1.1"]);
    assert!(handshake(&connector, proxy.addr, "a.test").await.is_err());
    let acme = ca.leaf(&["a.test"]);
    tls.set_acme_certificate("a.test", &acme.cert_pem, &acme.key_pem)
        .expect("usable");
    assert_eq!(
        served_cert(&connector, proxy.addr, "a.test").await,
        acme.der
    );
    // The names served include the ACME certificates.
    assert_eq!(tls.names(), ["a.test"]);
}
