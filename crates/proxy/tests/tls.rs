//! TLS termination: SNI picks the certificate, files are reloaded without a
//! restart (a broken replacement keeps the old certificate serving), HTTP/2
//! via ALPN, and the cleartext listener's redirect to HTTPS.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{fast_settings, single_app, Backend};
use cutover_proxy::{CertKeyFiles, Router, ServeOptions, Tls, TlsError};
use http::{Request, StatusCode, Version};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio_rustls::TlsConnector;

/// A test CA that signs leaf certificates.
struct Ca {
    params: rcgen::CertificateParams,
    key: rcgen::KeyPair,
    der: CertificateDer<'static>,
}

impl Ca {
    fn new() -> Ca {
        let key = rcgen::KeyPair::generate().expect("ca key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "cutover test CA");
        let cert = params.self_signed(&key).expect("ca cert");
        Ca {
            der: cert.der().clone(),
            params,
            key,
        }
    }

    /// A leaf for `names`: (cert PEM, key PEM, cert DER).
    fn leaf(&self, names: &[&str]) -> (String, String, CertificateDer<'static>) {
        let key = rcgen::KeyPair::generate().expect("key");
        let params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("params");
        let issuer = rcgen::Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).expect("leaf");
        (cert.pem(), key.serialize_pem(), cert.der().clone())
    }

    fn connector(&self, alpn: &[&[u8]]) -> TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.der.clone()).expect("root");
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        TlsConnector::from(Arc::new(config))
    }
}

/// Writes a leaf's files under `dir` as `<name>.crt` / `<name>.key`.
fn write_pair(
    dir: &Path,
    name: &str,
    pem: &(String, String, CertificateDer<'static>),
) -> CertKeyFiles {
    let cert = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    std::fs::write(&cert, &pem.0).expect("write cert");
    std::fs::write(&key, &pem.1).expect("write key");
    CertKeyFiles { cert, key }
}

/// Replaces a file the way deployment tools do: write aside, then rename.
fn replace(path: &Path, content: &str) {
    let tmp: PathBuf = path.with_extension("tmp");
    std::fs::write(&tmp, content).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

async fn start(router: Router, options: ServeOptions) -> (SocketAddr, oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = oneshot::channel::<()>();
    tokio::spawn(cutover_proxy::serve_with(
        listener,
        router,
        fast_settings(),
        options,
        async move {
            let _ = rx.await;
        },
    ));
    (addr, tx)
}

/// Handshakes with `name` as SNI; returns the stream and the leaf certificate served.
async fn handshake(
    connector: &TlsConnector,
    addr: SocketAddr,
    name: &str,
) -> Result<
    (
        tokio_rustls::client::TlsStream<TcpStream>,
        CertificateDer<'static>,
    ),
    std::io::Error,
> {
    let tcp = TcpStream::connect(addr).await?;
    let server_name = ServerName::try_from(name.to_owned()).expect("name");
    let stream = connector.connect(server_name, tcp).await?;
    let leaf = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first().cloned())
        .expect("a certificate");
    Ok((stream, leaf))
}

async fn served_cert(
    connector: &TlsConnector,
    addr: SocketAddr,
    name: &str,
) -> CertificateDer<'static> {
    handshake(connector, addr, name).await.expect("handshake").1
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
    let (addr, _stop) = start(
        router,
        ServeOptions {
            tls: Some(tls),
            ..Default::default()
        },
    )
    .await;

    let connector = ca.connector(&[b"http/1.1"]);
    assert_eq!(served_cert(&connector, addr, "a.test").await, a.2);
    assert_eq!(served_cert(&connector, addr, "b.test").await, b.2);
    assert_eq!(
        served_cert(&connector, addr, "www.b.test").await,
        b.2,
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
    let (addr, _stop) = start(
        router,
        ServeOptions {
            tls: Some(tls),
            ..Default::default()
        },
    )
    .await;

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
    let (addr, _stop) = start(
        router,
        ServeOptions {
            tls: Some(tls),
            ..Default::default()
        },
    )
    .await;
    let connector = ca.connector(&[b"http/1.1"]);
    assert_eq!(served_cert(&connector, addr, "a.test").await, first.2);

    let second = ca.leaf(&["a.test"]);
    replace(&files.key, &second.1);
    replace(&files.cert, &second.0);
    for _ in 0..200 {
        if served_cert(&connector, addr, "a.test").await == second.2 {
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
    let (addr, _stop) = start(
        router,
        ServeOptions {
            tls: Some(tls.clone()),
            ..Default::default()
        },
    )
    .await;
    let connector = ca.connector(&[b"http/1.1"]);

    // A key that belongs to another certificate.
    let other = ca.leaf(&["a.test"]);
    replace(&files.key, &other.1);
    assert!(tls.changed_on_disk());
    let error = tls.reload().expect_err("a mismatched key is refused");
    assert!(matches!(error, TlsError::BadKey { .. }), "{error}");
    assert!(error.to_string().contains("a.key"), "{error}");
    assert_eq!(served_cert(&connector, addr, "a.test").await, good.2);
    assert!(
        !tls.changed_on_disk(),
        "a broken set is not retried until it changes again"
    );

    // Not PEM at all.
    replace(&files.cert, "this is not a certificate\n");
    let error = tls.reload().expect_err("garbage is refused");
    assert!(matches!(error, TlsError::NoCert { .. }), "{error}");
    assert!(error.to_string().contains("a.crt"), "{error}");
    // A missing key file (next to a good certificate).
    replace(&files.cert, &good.0);
    std::fs::remove_file(&files.key).expect("remove");
    let error = tls.reload().expect_err("a missing key is refused");
    assert!(error.to_string().contains("a.key"), "{error}");
    assert_eq!(
        served_cert(&connector, addr, "a.test").await,
        good.2,
        "still the old certificate"
    );

    // Fixed files are taken again.
    let fixed = ca.leaf(&["a.test"]);
    replace(&files.key, &fixed.1);
    replace(&files.cert, &fixed.0);
    assert_eq!(tls.reload().expect("reload"), ["a.test"]);
    assert_eq!(served_cert(&connector, addr, "a.test").await, fixed.2);
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
    let (addr, _stop) = start(
        router,
        ServeOptions {
            redirect_https: Some(8443),
            ..Default::default()
        },
    )
    .await;
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
