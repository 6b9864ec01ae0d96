//! Automatic HTTPS against a real ACME server (Debian's pebble): each
//! challenge type takes a daemon from no certificate to one served by name
//! (trusted through pebble's root) with no failed request; renewal under
//! keep-alive HTTPS load swaps the certificate for new connections only;
//! pebble down leaves the old certificate serving with the error in
//! status, and the order succeeds once pebble is back; a restart reuses
//! the stored certificate; a name that cannot be validated holds up no
//! other; configs that cannot work are located errors.

#![allow(clippy::unwrap_used)]

mod common;

use common::{AppOptions, Daemon};
use cutover_test_support::binaries;
use cutover_test_support::pebble::{Pebble, PebbleOptions};
use cutover_test_support::ports::free_port;
use cutover_test_support::tls::TlsConnector;
use cutover_test_support::tls::{connector_trusting, handshake};
use cutover_test_support::wait::eventually;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rustls::pki_types::CertificateDer;
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const NAME: &str = "shop.acme.test";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A daemon with `[proxy.acme]` against `pebble` (started for it), v1 of
/// the app deployed; the HTTPS port and how long the start took until the
/// daemon answered.
struct AcmeSetup {
    daemon: Daemon,
    pebble: Pebble,
    tls_port: u16,
    started: Instant,
}

fn acme_setup(
    challenge: &str,
    domains: &[&str],
    proxy_keys: &str,
    options: &PebbleOptions,
) -> AcmeSetup {
    let mut daemon = Daemon::start(AppOptions::default());
    daemon.kill9();
    let tls_port = free_port();
    let pebble = Pebble::start(daemon.proxy_port, tls_port, options);
    let config = std::fs::read_to_string(&daemon.config).unwrap();
    let listen = format!("listen = [\"127.0.0.1:{}\"]", daemon.proxy_port);
    let domains: Vec<String> = domains.iter().map(|d| format!("\"{d}\"")).collect();
    let keys = format!(
        "{listen}\ntls_listen = [\"127.0.0.1:{tls_port}\"]\naccess_log = \"off\"\n{proxy_keys}"
    );
    let acme = format!(
        "[proxy.acme]\ndirectory = \"{}\"\ncontact = [\"mailto:ops@acme.test\"]\ndomains = [{}]\nchallenge = \"{challenge}\"\nca_file = \"{}\"\n",
        pebble.directory,
        domains.join(", "),
        pebble.ca_file.display()
    );
    let config = config.replacen(&listen, &keys, 1);
    // [proxy.acme] right after the [proxy] keys, before [[app]].
    let config = config.replacen("[[app]]", &format!("{acme}\n[[app]]"), 1);
    std::fs::write(&daemon.config, config).unwrap();
    let started = Instant::now();
    daemon.spawn();
    daemon.deploy("v1");
    AcmeSetup {
        daemon,
        pebble,
        tls_port,
        started,
    }
}

/// The certificate served for `name`, if a client trusting `connector`'s
/// roots accepts it.
async fn trusted_cert(
    connector: &TlsConnector,
    port: u16,
    name: &str,
) -> Option<CertificateDer<'static>> {
    handshake(connector, local(port), name)
        .await
        .ok()
        .map(|(_, leaf)| leaf)
}

/// The certificate served for `name` to a new client (no TLS session to
/// resume: a resumed session keeps the certificate of its first handshake)
/// trusting pebble's current root.
fn served_now(
    root: &str,
    port: u16,
    rt: &tokio::runtime::Runtime,
    name: &str,
) -> Option<CertificateDer<'static>> {
    let fresh = connector_trusting(root, &[b"http/1.1"]);
    rt.block_on(trusted_cert(&fresh, port, name))
}

/// Waits until a client trusting pebble's current root gets a certificate
/// for `name`; the certificate.
fn wait_for_trusted(
    setup: &AcmeSetup,
    rt: &tokio::runtime::Runtime,
    name: &str,
) -> CertificateDer<'static> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(served) = served_now(&setup.pebble.root_pem(), setup.tls_port, rt, name) {
            return served;
        }
        assert!(
            Instant::now() < deadline,
            "no trusted certificate for {name}:\nserve log:\n{}\npebble log:\n{}",
            setup.daemon.serve_log(),
            setup.pebble.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `requests` GETs of `/` on one keep-alive HTTPS connection to `name`;
/// (answered 200 with v1, failures).
async fn https_requests(
    connector: &TlsConnector,
    port: u16,
    name: &str,
    requests: usize,
) -> (usize, Vec<String>) {
    let mut failures = Vec::new();
    let mut ok = 0;
    let stream = match handshake(connector, local(port), name).await {
        Ok((stream, _)) => stream,
        Err(e) => return (0, vec![format!("handshake: {e}")]),
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    for _ in 0..requests {
        if let Err(e) = sender.ready().await {
            failures.push(format!("connection: {e}"));
            break;
        }
        let request = http::Request::get("/")
            .header("host", name)
            .body(Empty::<bytes::Bytes>::new())
            .unwrap();
        match sender.send_request(request).await {
            Ok(response) => {
                let status = response.status();
                let body = response.into_body().collect().await.map(|b| b.to_bytes());
                match body {
                    Ok(body) if status == 200 && body.starts_with(b"version=v1") => ok += 1,
                    Ok(body) => {
                        failures.push(format!("{status}: {}", String::from_utf8_lossy(&body)))
                    }
                    Err(e) => failures.push(format!("body: {e}")),
                }
            }
            Err(e) => failures.push(format!("request: {e}")),
        }
    }
    (ok, failures)
}

fn certs(daemon: &Daemon) -> Vec<serde_json::Value> {
    daemon
        .json(&["certs"])
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn cert_of(daemon: &Daemon, name: &str) -> serde_json::Value {
    certs(daemon)
        .into_iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no certificate status for {name}"))
}

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .mode()
        & 0o777
}

/// The whole first-certificate check for one challenge type; returns the
/// time from start to the first certificate served.
fn first_certificate(challenge: &str, proxy_keys: &str) -> (AcmeSetup, Duration) {
    let setup = acme_setup(challenge, &[NAME], proxy_keys, &PebbleOptions::default());
    let rt = runtime();
    wait_for_trusted(&setup, &rt, NAME);
    let took = setup.started.elapsed();
    eprintln!("{challenge}: first certificate served {took:?} after start");
    let connector = connector_trusting(&setup.pebble.root_pem(), &[b"http/1.1"]);
    let (ok, failures) = rt.block_on(https_requests(&connector, setup.tls_port, NAME, 50));
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    assert_eq!(ok, 50);
    let state = setup.daemon.state_dir();
    assert_eq!(mode(&state.join(format!("acme/certs/{NAME}.pem"))), 0o600);
    assert_eq!(mode(&state.join("acme/account.pem")), 0o600);
    let status = cert_of(&setup.daemon, NAME);
    assert_eq!(status["state"], "valid", "{status}");
    assert!(
        status["issuer"].as_str().unwrap().contains("Pebble"),
        "{status}"
    );
    (setup, took)
}

#[test]
fn tls_alpn_01_takes_a_name_from_no_certificate_to_a_trusted_one_with_no_failed_request() {
    let (setup, _) = first_certificate("tls-alpn-01", "");
    // Visible in `cutover status` and /metrics.
    let status = setup.daemon.ok(&["status"]);
    assert!(
        status.contains("certificates:") && status.contains(NAME) && status.contains("valid"),
        "{status}"
    );
    let metrics = setup.daemon.admin_request("/metrics").text();
    assert!(
        metrics.contains(&format!(
            "cutover_certificate_not_after_seconds{{name=\"{NAME}\"}}"
        )),
        "{metrics}"
    );
}

#[test]
fn http_01_takes_a_name_from_no_certificate_to_a_trusted_one_even_with_redirect_http() {
    let (setup, _) = first_certificate("http-01", "redirect_http = true\n");
    // Plain HTTP still redirects; only the challenge path is exempt.
    let answer = setup.daemon.get("/");
    assert_eq!(answer.status, 308, "{answer:?}");
}

#[test]
fn a_name_that_cannot_be_validated_holds_up_no_other_and_reports_its_error() {
    let refused = "refused.acme.test";
    // Refused before the daemon starts: its first order must already fail.
    let options = PebbleOptions {
        unresolvable: vec![refused.to_string()],
        ..PebbleOptions::default()
    };
    let setup = acme_setup("tls-alpn-01", &[refused, NAME], "", &options);
    let rt = runtime();
    wait_for_trusted(&setup, &rt, NAME);
    eventually(Duration::from_secs(30), "the failure is in status", || {
        certs(&setup.daemon)
            .iter()
            .any(|c| c["name"] == refused && c["state"] == "failing")
    });
    let status = cert_of(&setup.daemon, refused);
    assert!(
        status["last_error"].as_str().unwrap().contains(refused),
        "{status}"
    );
    assert_eq!(cert_of(&setup.daemon, NAME)["state"], "valid");
    let text = setup.daemon.ok(&["certs"]);
    assert!(text.contains(refused) && text.contains("failing"), "{text}");
}

/// Keep-alive HTTPS clients that each send requests on one connection
/// until stopped; the failures.
fn https_load(
    rt: &tokio::runtime::Runtime,
    connector: TlsConnector,
    port: u16,
    clients: usize,
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicUsize>,
) -> Vec<tokio::task::JoinHandle<Vec<String>>> {
    (0..clients)
        .map(|_| {
            let (connector, stop, answered) = (connector.clone(), stop.clone(), answered.clone());
            rt.spawn(async move {
                let mut failures = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    let (ok, failed) = https_requests(&connector, port, NAME, 20).await;
                    answered.fetch_add(ok, Ordering::SeqCst);
                    failures.extend(failed);
                }
                failures
            })
        })
        .collect()
}

#[test]
fn forced_renewal_under_keep_alive_https_load_serves_the_new_certificate_to_new_connections() {
    let setup = acme_setup("tls-alpn-01", &[NAME], "", &PebbleOptions::default());
    let rt = runtime();
    let first = wait_for_trusted(&setup, &rt, NAME);
    let connector = connector_trusting(&setup.pebble.root_pem(), &[b"http/1.1"]);
    let (stop, answered) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicUsize::new(0)),
    );
    let clients = https_load(
        &rt,
        connector.clone(),
        setup.tls_port,
        4,
        stop.clone(),
        answered.clone(),
    );
    eventually(Duration::from_secs(10), "load is flowing", || {
        answered.load(Ordering::SeqCst) > 50
    });
    let renewed = setup.daemon.ok(&["certs", "renew", NAME]);
    assert!(renewed.contains("new certificate served"), "{renewed}");
    let second = served_now(&setup.pebble.root_pem(), setup.tls_port, &rt, NAME).unwrap();
    assert_ne!(first, second, "a new connection gets the new certificate");
    let before = answered.load(Ordering::SeqCst);
    eventually(Duration::from_secs(10), "load goes on", || {
        answered.load(Ordering::SeqCst) > before + 50
    });
    stop.store(true, Ordering::SeqCst);
    let failures: Vec<String> = clients
        .into_iter()
        .flat_map(|c| rt.block_on(c).unwrap())
        .collect();
    assert!(failures.is_empty(), "failed requests: {failures:?}");
}

#[test]
fn short_lived_certificates_are_renewed_at_two_thirds_of_their_lifetime() {
    let options = PebbleOptions {
        validity_seconds: Some(9),
        ..PebbleOptions::default()
    };
    let setup = acme_setup("http-01", &[NAME], "", &options);
    let rt = runtime();
    let first = wait_for_trusted(&setup, &rt, NAME);
    eventually(
        Duration::from_secs(30),
        "a renewed certificate is served",
        || {
            served_now(&setup.pebble.root_pem(), setup.tls_port, &rt, NAME)
                .is_some_and(|c| c != first)
        },
    );
}

#[test]
fn acme_server_down_keeps_the_old_certificate_serving_and_the_order_succeeds_once_it_is_back() {
    let mut setup = acme_setup("tls-alpn-01", &[NAME], "", &PebbleOptions::default());
    let rt = runtime();
    let first = wait_for_trusted(&setup, &rt, NAME);
    let root = setup.pebble.root_pem();
    let connector = connector_trusting(&root, &[b"http/1.1"]);
    setup.pebble.stop();
    let failed = setup.daemon.cli(&["certs", "renew", NAME]);
    assert_eq!(failed.status.code(), Some(1), "{failed:?}");
    let message = String::from_utf8_lossy(&failed.stderr).into_owned();
    assert!(
        message.contains("cannot reach the ACME server"),
        "{message}"
    );
    let status = cert_of(&setup.daemon, NAME);
    assert_eq!(status["state"], "failing", "{status}");
    assert!(
        status["last_error"]
            .as_str()
            .unwrap()
            .contains("cannot reach"),
        "{status}"
    );
    // The old certificate keeps serving, and requests keep working.
    assert_eq!(
        served_now(&root, setup.tls_port, &rt, NAME),
        Some(first.clone())
    );
    let (ok, failures) = rt.block_on(https_requests(&connector, setup.tls_port, NAME, 20));
    assert!(failures.is_empty() && ok == 20, "{failures:?}");
    let text = setup.daemon.ok(&["status"]);
    assert!(text.contains("cannot reach"), "{text}");
    // Back: the retry (with backoff) succeeds by itself.
    setup.pebble.spawn();
    eventually(
        Duration::from_secs(30),
        "the retried order succeeds",
        || cert_of(&setup.daemon, NAME)["state"] == "valid",
    );
    let renewed = wait_for_trusted(&setup, &rt, NAME);
    assert_ne!(renewed, first);
}

#[test]
fn a_restart_serves_the_stored_certificate_without_a_new_order() {
    let mut setup = acme_setup("tls-alpn-01", &[NAME], "", &PebbleOptions::default());
    let rt = runtime();
    let first = wait_for_trusted(&setup, &rt, NAME);
    assert_eq!(cert_of(&setup.daemon, NAME)["orders"], 1);
    // Orders pebble created, not requests for one: pebble refuses 5 % of
    // nonces, and the client then sends the same new-order request again.
    let orders = || setup.pebble.log().matches("Added order").count();
    assert_eq!(orders(), 1, "{}", setup.pebble.log());
    setup.daemon.terminate();
    setup.daemon.spawn();
    assert_eq!(
        served_now(&setup.pebble.root_pem(), setup.tls_port, &rt, NAME),
        Some(first)
    );
    let status = cert_of(&setup.daemon, NAME);
    assert_eq!(status["orders"], 0, "no order after the restart: {status}");
    assert_eq!(status["state"], "valid", "{status}");
    assert_eq!(
        orders(),
        1,
        "pebble saw no new order:\n{}",
        setup.pebble.log()
    );
}

fn config_check(config: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cutover.toml");
    std::fs::write(&path, config).unwrap();
    let output = std::process::Command::new(binaries::cutover())
        .args(["config", "check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stderr)
        .replace(&path.display().to_string(), "cutover.toml");
    (output.status.code().unwrap_or(-1), text)
}

#[test]
fn acme_configs_that_cannot_work_are_located_errors_with_exit_2() {
    let app = "[[app]]\nname = \"web\"\n[app.process]\ncommand = [\"app\", \"{port}\"]\n";
    let proxy = "[proxy]\ntls_listen = [\"127.0.0.1:8443\"]\n[proxy.acme]\ndirectory = \"https://127.0.0.1:14000/dir\"\ndomains = [\"a.test\"]\n";
    let cases = [
        (
            "challenge = \"dns-01\"\n",
            "cutover.toml:6:",
            "challenge `dns-01` is not known",
        ),
        (
            "ca_file = \"/nonexistent/pebble.pem\"\n",
            "cutover.toml:6:",
            "cannot read ca_file",
        ),
    ];
    for (line, location, problem) in cases {
        let (code, text) = config_check(&format!("{proxy}{line}{app}"));
        assert_eq!(code, 2, "{text}");
        assert!(
            text.contains(location) && text.contains(problem),
            "{line}: {text}"
        );
    }
    let wildcard = "[proxy]\ntls_listen = [\"127.0.0.1:8443\"]\n[proxy.acme]\ndirectory = \"https://127.0.0.1:14000/dir\"\nchallenge = \"http-01\"\ndomains = [\"*.a.test\"]\n";
    let (code, text) = config_check(&format!("{wildcard}{app}"));
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains("cutover.toml:6:") && text.contains("wildcard"),
        "{text}"
    );
}
