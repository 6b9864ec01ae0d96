//! The admin API over TCP (`[admin] listen`) against a real engine: every
//! endpoint with no, a wrong, a read-only and a good token; the Host
//! check; the dashboard's free paths; CORS; TLS with a test certificate;
//! token files others may read. Nothing here deploys: actions that pass
//! the guard are refused by the engine (nothing to roll back, a bad
//! version), which proves they got through.

#![allow(clippy::unwrap_used)]

mod common;

use cutover_api::AdminTcp;
use cutover_test_support::http::{Connection, Response};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use tokio::sync::oneshot;

const TOKEN: &str = "full-token-for-tests-0123456789";
const NEXT_TOKEN: &str = "next-token-for-rotation-0123456789";
const READ_TOKEN: &str = "read-only-token-for-tests-0123456789";

struct Remote {
    _dir: tempfile::TempDir,
    addr: SocketAddr,
    _stop: oneshot::Sender<()>,
}

fn write_private(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// A daemon's engine and its admin API on TCP, with `admin` appended to
/// the `[admin]` table (TLS files, hosts, origins).
async fn start(admin: &str, prepare: impl FnOnce(&Path)) -> Remote {
    let dir = tempfile::tempdir().unwrap();
    write_private(
        &dir.path().join("tokens"),
        &format!("{TOKEN}\n{NEXT_TOKEN}\n"),
    );
    write_private(&dir.path().join("read-tokens"), &format!("{READ_TOKEN}\n"));
    prepare(dir.path());
    let text = format!(
        r#"
state_dir = "state"
[proxy]
listen = ["127.0.0.1:0"]
[admin]
listen = "127.0.0.1:0"
token_file = "tokens"
read_tokens_file = "read-tokens"
{admin}
[[app]]
name = "web"
[app.process]
command = ["sleep", "60"]
"#
    );
    let (engine, config) = common::engine(dir.path(), &text).await;
    let remote = config.admin.remote.clone().unwrap();
    let admin = AdminTcp::bind(&remote, None).await.unwrap();
    let addr = admin.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(admin.serve(engine, async move {
        let _ = stopped.await;
    }));
    Remote {
        _dir: dir,
        addr,
        _stop: stop,
    }
}

/// One request on its own connection, with `Host: <addr>` unless given;
/// only the head is read when `head_only` (event streams never end).
async fn call(
    addr: SocketAddr,
    method: &'static str,
    path: String,
    headers: Vec<(&'static str, String)>,
    body: &'static str,
) -> Response {
    tokio::task::spawn_blocking(move || {
        let mut connection = Connection::to(addr).unwrap();
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let host = headers.iter().find(|(n, _)| *n == "Host").map(|(_, v)| *v);
        if let Some(host) = host {
            connection = connection.host(host);
        }
        let headers: Vec<(&str, &str)> =
            headers.into_iter().filter(|(n, _)| *n != "Host").collect();
        let streams = path.ends_with("/events") || path.contains("follow=true");
        connection
            .send(method, &path, &headers, body.as_bytes())
            .unwrap();
        let (status, headers) = connection.read_head().unwrap();
        let mut response = Response {
            status,
            headers,
            body: Vec::new(),
        };
        if !(streams && status == 200) {
            let length = response
                .header("content-length")
                .map_or(0, |l| l.parse().unwrap());
            response.body.resize(length, 0);
            std::io::Read::read_exact(connection.reader(), &mut response.body).unwrap();
        }
        response
    })
    .await
    .unwrap()
}

fn bearer(token: &str) -> Vec<(&'static str, String)> {
    vec![("Authorization", format!("Bearer {token}"))]
}

/// Every endpoint of the API: method, path, body.
const ENDPOINTS: &[(&str, &str, &str)] = &[
    ("GET", "/v1/apps", ""),
    ("GET", "/v1/apps/web", ""),
    (
        "POST",
        "/v1/apps/web/deployments",
        r#"{"version": "not a version!"}"#,
    ),
    ("GET", "/v1/apps/web/deployments", ""),
    ("POST", "/v1/apps/web/rollback", ""),
    ("POST", "/v1/apps/web/abort", ""),
    ("POST", "/v1/apps/web/promote", ""),
    ("GET", "/v1/apps/web/logs", ""),
    ("GET", "/v1/apps/web/events", ""),
    ("GET", "/v1/deployments/1", ""),
    ("GET", "/v1/deployments/1/events", ""),
    ("POST", "/v1/upgrade", "{}"),
    ("GET", "/metrics", ""),
];

fn assert_refused(response: &Response, status: u16, what: &str) {
    assert_eq!(response.status, status, "{what}: {}", response.text());
    assert_eq!(
        response.header("content-type"),
        Some("application/json"),
        "{what}"
    );
    let message = response.json()["error"].as_str().unwrap().to_string();
    assert!(
        !message.contains(TOKEN) && !message.contains(READ_TOKEN),
        "{what}: {message}"
    );
    if status == 401 {
        assert_eq!(
            response.header("www-authenticate"),
            Some("Bearer realm=\"cutover\""),
            "{what}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_needs_a_token_and_a_read_only_token_only_reads() {
    let remote = start("", |_| {}).await;
    for (method, path, body) in ENDPOINTS {
        let what = format!("{method} {path}");
        let none = call(remote.addr, method, path.to_string(), vec![], body).await;
        assert_refused(&none, 401, &format!("{what} without a token"));
        let wrong = call(
            remote.addr,
            method,
            path.to_string(),
            bearer("wrong-token-0123456789"),
            body,
        )
        .await;
        assert_refused(&wrong, 401, &format!("{what} with a wrong token"));
        let basic = vec![("Authorization", format!("Basic {TOKEN}"))];
        let not_bearer = call(remote.addr, method, path.to_string(), basic, body).await;
        assert_refused(&not_bearer, 401, &format!("{what} with another scheme"));
        let read = call(
            remote.addr,
            method,
            path.to_string(),
            bearer(READ_TOKEN),
            body,
        )
        .await;
        if *method == "GET" {
            assert!(
                ![401, 403].contains(&read.status),
                "{what} read-only: {}",
                read.text()
            );
        } else {
            assert_refused(&read, 403, &format!("{what} with a read-only token"));
        }
        for token in [TOKEN, NEXT_TOKEN] {
            let good = call(remote.addr, method, path.to_string(), bearer(token), body).await;
            assert!(
                ![401, 403, 421].contains(&good.status),
                "{what}: {} {}",
                good.status,
                good.text()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_action_changes_nothing() {
    let remote = start("", |_| {}).await;
    let deploy = || r#"{"version": "v1"}"#;
    for headers in [vec![], bearer("wrong-token-0123456789"), bearer(READ_TOKEN)] {
        let refused = call(
            remote.addr,
            "POST",
            "/v1/apps/web/deployments".into(),
            headers,
            deploy(),
        )
        .await;
        assert!([401, 403].contains(&refused.status), "{}", refused.text());
    }
    let history = call(
        remote.addr,
        "GET",
        "/v1/apps/web/deployments".into(),
        bearer(READ_TOKEN),
        "",
    )
    .await;
    assert_eq!(history.status, 200);
    assert_eq!(history.json(), serde_json::json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_listen_address_loopback_names_and_configured_hosts_are_answered() {
    let remote = start(r#"hosts = ["cutover.example.test"]"#, |_| {}).await;
    let port = remote.addr.port();
    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        format!("cutover.example.test:{port}"),
        "CUTOVER.example.test".to_string(),
    ] {
        let mut headers = bearer(TOKEN);
        headers.push(("Host", host.clone()));
        let answered = call(remote.addr, "GET", "/v1/apps".into(), headers, "").await;
        assert_eq!(answered.status, 200, "{host}: {}", answered.text());
    }
    for host in [
        format!("rebound.attacker.test:{port}"),
        "10.9.8.7".to_string(),
    ] {
        let mut headers = bearer(TOKEN);
        headers.push(("Host", host.clone()));
        let refused = call(remote.addr, "GET", "/v1/apps".into(), headers, "").await;
        assert_refused(&refused, 421, &host);
        // The page too: a rebound name gets nothing at all.
        let page = call(
            remote.addr,
            "GET",
            "/".into(),
            vec![("Host", host.clone())],
            "",
        )
        .await;
        assert_refused(&page, 421, &host);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_page_and_its_assets_need_no_token_and_nothing_else_is_free() {
    let remote = start("", |_| {}).await;
    for path in ["/", "/assets/app.js"] {
        let page = call(remote.addr, "GET", path.into(), vec![], "").await;
        assert!(
            ![401, 403].contains(&page.status),
            "{path}: {}",
            page.text()
        );
    }
    for (method, path) in [
        ("POST", "/"),
        ("GET", "/v1/apps/../../v1/apps"),
        ("GET", "/assetsx"),
    ] {
        let refused = call(remote.addr, method, path.into(), vec![], "").await;
        assert_refused(&refused, 401, path);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_headers_are_sent_only_to_configured_origins() {
    let remote = start(r#"cors_origins = ["https://ops.example.test"]"#, |_| {}).await;
    let preflight = vec![
        ("Origin", "https://ops.example.test".to_string()),
        ("Access-Control-Request-Method", "POST".to_string()),
        (
            "Access-Control-Request-Headers",
            "authorization".to_string(),
        ),
    ];
    let allowed = call(
        remote.addr,
        "OPTIONS",
        "/v1/apps/web/rollback".into(),
        preflight,
        "",
    )
    .await;
    assert_eq!(allowed.status, 204);
    assert_eq!(
        allowed.header("access-control-allow-origin"),
        Some("https://ops.example.test")
    );
    assert!(allowed
        .header("access-control-allow-headers")
        .unwrap()
        .contains("authorization"));
    let mut headers = bearer(TOKEN);
    headers.push(("Origin", "https://ops.example.test".to_string()));
    let read = call(remote.addr, "GET", "/v1/apps".into(), headers, "").await;
    assert_eq!(read.status, 200);
    assert_eq!(
        read.header("access-control-allow-origin"),
        Some("https://ops.example.test")
    );

    let foreign = vec![
        ("Origin", "https://evil.example.test".to_string()),
        ("Access-Control-Request-Method", "POST".to_string()),
    ];
    let refused = call(
        remote.addr,
        "OPTIONS",
        "/v1/apps/web/rollback".into(),
        foreign,
        "",
    )
    .await;
    assert_eq!(refused.status, 401);
    assert_eq!(refused.header("access-control-allow-origin"), None);
    let mut headers = bearer(TOKEN);
    headers.push(("Origin", "https://evil.example.test".to_string()));
    let read = call(remote.addr, "GET", "/v1/apps".into(), headers, "").await;
    assert_eq!(read.status, 200);
    assert_eq!(read.header("access-control-allow-origin"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tls_listener_serves_the_api_over_http1_with_its_certificate() {
    let ca = cutover_test_support::tls::Ca::new();
    let leaf = ca.leaf(&["localhost"]);
    let remote = start(
        r#"tls = { cert = "admin.crt", key = "admin.key" }"#,
        |dir| {
            leaf.write(dir, "admin");
        },
    )
    .await;
    // A browser offers h2 first; the admin API takes HTTP/1.1.
    let connector = ca.connector(&[b"h2", b"http/1.1"]);
    let (stream, _) = cutover_test_support::tls::handshake(&connector, remote.addr, "localhost")
        .await
        .unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let port = remote.addr.port();
    let request = format!(
        "GET /v1/apps HTTP/1.1\r\nHost: localhost:{port}\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"
    );
    let answer = exchange_tls(stream, request.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(answer.contains(r#""name":"web""#), "{answer}");

    let (stream, _) = cutover_test_support::tls::handshake(&connector, remote.addr, "localhost")
        .await
        .unwrap();
    let request =
        format!("GET /v1/apps HTTP/1.1\r\nHost: localhost:{port}\r\nConnection: close\r\n\r\n");
    let answer = exchange_tls(stream, request.as_bytes()).await;
    assert!(
        answer.starts_with("HTTP/1.1 401 Unauthorized\r\n"),
        "{answer}"
    );

    // Cleartext on the TLS port gets no answer from the API.
    let plain = tokio::task::spawn_blocking(move || {
        let mut connection = Connection::to(remote.addr).unwrap();
        connection.send("GET", "/v1/apps", &[], b"").unwrap();
        connection.read_response().is_err()
    })
    .await
    .unwrap();
    assert!(plain, "the TLS listener answered cleartext");
}

async fn exchange_tls(
    mut stream: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    request: &[u8],
) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn a_token_file_others_may_read_stops_the_start_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, format!("{TOKEN}\n")).unwrap();
    std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(0o644)).unwrap();
    let remote = cutover_config::RemoteAdmin {
        listen: "127.0.0.1:0".parse().unwrap(),
        token_file: tokens,
        read_tokens_file: None,
        tls: None,
        hosts: Vec::new(),
        cors_origins: Vec::new(),
    };
    let error = AdminTcp::bind(&remote, None).await.unwrap_err().to_string();
    assert!(
        error.contains("mode 0644") && error.contains("chmod 600"),
        "{error}"
    );
    assert!(!error.contains(TOKEN), "{error}");
}
