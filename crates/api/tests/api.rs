//! The admin API against a real engine over a real unix socket: error
//! mapping and bad input. Nothing here deploys, so the app's command never
//! runs.

#![allow(clippy::unwrap_used)]

mod common;

use bytes::Bytes;
use cutover_api::{serve_unix, AdminSocket, ApiError};
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::net::UnixStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

struct Daemon {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    served: Option<JoinHandle<Result<(), ApiError>>>,
}

impl Daemon {
    async fn start() -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let text = r#"
state_dir = "state"
[proxy]
listen = ["127.0.0.1:0"]
[[app]]
name = "web"
[app.process]
command = ["sleep", "60"]
[[app]]
name = "crash"
hosts = ["crash.test"]
[app.health]
deploy_timeout = "10s"
[app.process]
command = ["sh", "-c", "echo first line; echo boom at start; exit 3"]
"#;
        let (engine, config) = common::engine(dir.path(), text).await;
        let socket = config.admin.socket.clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let served = tokio::spawn({
            let socket = socket.clone();
            async move {
                serve_unix(&socket, engine, async move {
                    let _ = stopped.await;
                })
                .await
            }
        });
        // Served once the socket answers.
        for _ in 0..200 {
            if UnixStream::connect(&socket).await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Daemon {
            _dir: dir,
            socket,
            stop: Some(stop),
            served: Some(served),
        }
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&str>,
    ) -> (StatusCode, String, Option<String>) {
        let stream = UnixStream::connect(&self.socket).await.unwrap();
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(connection);
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "cutover")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.unwrap_or("").to_string())))
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        let status = response.status();
        let content_type = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string());
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            String::from_utf8(body.to_vec()).unwrap(),
            content_type,
        )
    }

    /// Calls and expects a JSON error with `status`; returns its message.
    async fn error(
        &self,
        method: Method,
        path: &str,
        body: Option<&str>,
        status: StatusCode,
    ) -> String {
        let (got, text, content_type) = self.call(method.clone(), path, body).await;
        assert_eq!(got, status, "{method} {path}: {text}");
        assert_eq!(
            content_type.as_deref(),
            Some("application/json"),
            "{method} {path}: {text}"
        );
        let json: Value = serde_json::from_str(&text).unwrap();
        json["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error field in {text}"))
            .to_string()
    }

    async fn json(&self, method: Method, path: &str) -> (StatusCode, Value) {
        let (status, text, _) = self.call(method, path, None).await;
        (
            status,
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}")),
        )
    }

    async fn stop(mut self) -> PathBuf {
        let _ = self.stop.take().unwrap().send(());
        let served = self.served.take().unwrap();
        tokio::time::timeout(Duration::from_secs(10), served)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        self.socket.clone()
    }
}

#[tokio::test]
async fn malformed_json_bodies_are_400_json_errors_that_name_the_problem() {
    let daemon = Daemon::start().await;
    let path = "/v1/apps/web/deployments";
    let post = Method::POST;

    let empty = daemon
        .error(post.clone(), path, None, StatusCode::BAD_REQUEST)
        .await;
    assert!(
        empty.contains("no JSON body") && empty.contains(r#"{"version": "v2""#),
        "{empty}"
    );

    let syntax = daemon
        .error(
            post.clone(),
            path,
            Some("{version: v2}"),
            StatusCode::BAD_REQUEST,
        )
        .await;
    assert!(
        syntax.contains("not valid JSON") && syntax.contains("expected {\"version\""),
        "{syntax}"
    );

    let truncated = daemon
        .error(
            post.clone(),
            path,
            Some(r#"{"version": "v2""#),
            StatusCode::BAD_REQUEST,
        )
        .await;
    assert!(truncated.contains("ends too early"), "{truncated}");

    let missing = daemon
        .error(post.clone(), path, Some("{}"), StatusCode::BAD_REQUEST)
        .await;
    assert!(missing.contains("missing field `version`"), "{missing}");

    let typo = daemon
        .error(
            post.clone(),
            path,
            Some(r#"{"versoin": "v2"}"#),
            StatusCode::BAD_REQUEST,
        )
        .await;
    assert!(typo.contains("unknown field `versoin`"), "{typo}");

    let wrong_type = daemon
        .error(
            post.clone(),
            path,
            Some(r#"{"version": 2}"#),
            StatusCode::BAD_REQUEST,
        )
        .await;
    assert!(wrong_type.contains("invalid type"), "{wrong_type}");

    let not_object = daemon
        .error(post, path, Some("[1, 2]"), StatusCode::BAD_REQUEST)
        .await;
    assert!(not_object.contains("expected"), "{not_object}");

    // Nothing was queued by any of it.
    let (status, history) = daemon.json(Method::GET, path).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(history, serde_json::json!([]));
    daemon.stop().await;
}

#[tokio::test]
async fn bad_versions_and_triggers_are_400_and_change_nothing() {
    let daemon = Daemon::start().await;
    let path = "/v1/apps/web/deployments";
    for version in [
        "",
        "-rf",
        ".hidden",
        "v1 v2",
        "../../etc",
        "v1;reboot",
        "$(id)",
        &"x".repeat(129),
    ] {
        let body = serde_json::json!({ "version": version }).to_string();
        let message = daemon
            .error(Method::POST, path, Some(&body), StatusCode::BAD_REQUEST)
            .await;
        assert!(message.contains("is not valid"), "{version:?}: {message}");
    }
    for trigger in ["", "CLI", "a b", "x\ny", &"t".repeat(33)] {
        let body = serde_json::json!({ "version": "v2", "trigger": trigger }).to_string();
        let message = daemon
            .error(Method::POST, path, Some(&body), StatusCode::BAD_REQUEST)
            .await;
        assert!(message.contains("trigger"), "{trigger:?}: {message}");
    }
    let (_, history) = daemon.json(Method::GET, path).await;
    assert_eq!(history, serde_json::json!([]));
    let (_, app) = daemon.json(Method::GET, "/v1/apps/web").await;
    assert_eq!(app["current_deployment"], Value::Null, "{app}");
    daemon.stop().await;
}

#[tokio::test]
async fn unknown_apps_deployments_and_paths_are_404_json() {
    let daemon = Daemon::start().await;
    let not_found = StatusCode::NOT_FOUND;
    let message = daemon
        .error(Method::GET, "/v1/apps/nope", None, not_found)
        .await;
    assert!(message.contains("no app named `nope`"), "{message}");
    for (method, path, body) in [
        (
            Method::POST,
            "/v1/apps/nope/deployments",
            Some(r#"{"version": "v2"}"#),
        ),
        (Method::GET, "/v1/apps/nope/deployments", None),
        (Method::POST, "/v1/apps/nope/rollback", None),
        (Method::POST, "/v1/apps/nope/abort", None),
        (Method::POST, "/v1/apps/nope/promote", None),
        (Method::GET, "/v1/apps/nope/logs", None),
    ] {
        let message = daemon.error(method, path, body, not_found).await;
        assert!(message.contains("no app named `nope`"), "{path}: {message}");
    }
    let message = daemon
        .error(Method::GET, "/v1/deployments/999", None, not_found)
        .await;
    assert!(message.contains("no deployment with id 999"), "{message}");
    let message = daemon
        .error(Method::GET, "/v1/deployments/999/events", None, not_found)
        .await;
    assert!(message.contains("999"), "{message}");
    let message = daemon
        .error(Method::GET, "/v2/whatever", None, not_found)
        .await;
    assert!(
        message.contains("no such endpoint: GET /v2/whatever"),
        "{message}"
    );
    let message = daemon
        .error(
            Method::DELETE,
            "/v1/apps",
            None,
            StatusCode::METHOD_NOT_ALLOWED,
        )
        .await;
    assert!(
        message.contains("DELETE is not allowed on /v1/apps"),
        "{message}"
    );
    daemon.stop().await;
}

#[tokio::test]
async fn bad_path_and_query_parameters_are_400_json() {
    let daemon = Daemon::start().await;
    let bad = StatusCode::BAD_REQUEST;
    let message = daemon
        .error(Method::GET, "/v1/deployments/abc", None, bad)
        .await;
    assert!(
        message.contains("deployment id `abc` is not valid"),
        "{message}"
    );
    let message = daemon
        .error(Method::GET, "/v1/deployments/-3/events", None, bad)
        .await;
    assert!(message.contains("is not valid"), "{message}");
    let message = daemon
        .error(Method::GET, "/v1/apps/web/deployments?limit=abc", None, bad)
        .await;
    assert!(message.contains("limit"), "{message}");
    let message = daemon
        .error(
            Method::GET,
            "/v1/apps/web/deployments?limit=1001",
            None,
            bad,
        )
        .await;
    assert!(message.contains("1 to 1000"), "{message}");
    let message = daemon
        .error(Method::GET, "/v1/apps/web/deployments?limit=0", None, bad)
        .await;
    assert!(message.contains("1 to 1000"), "{message}");
    let message = daemon
        .error(Method::GET, "/v1/apps/web/deployments?limti=5", None, bad)
        .await;
    assert!(message.contains("limti"), "{message}");
    let message = daemon
        .error(Method::GET, "/v1/apps/web/logs?slot=red", None, bad)
        .await;
    assert!(message.contains("`red` is not a slot"), "{message}");
    let message = daemon
        .error(Method::GET, "/v1/apps/web/logs?follow=maybe", None, bad)
        .await;
    assert!(message.contains("follow"), "{message}");
    let message = daemon
        .error(Method::GET, "/v1/apps/web/logs?tail=-1", None, bad)
        .await;
    assert!(message.contains("tail"), "{message}");
    daemon.stop().await;
}

#[tokio::test]
async fn actions_without_a_deployment_are_409_json() {
    let daemon = Daemon::start().await;
    let conflict = StatusCode::CONFLICT;
    let message = daemon
        .error(Method::POST, "/v1/apps/web/rollback", None, conflict)
        .await;
    assert!(message.contains("web"), "{message}");
    let message = daemon
        .error(Method::POST, "/v1/apps/web/abort", None, conflict)
        .await;
    assert!(message.contains("no deployment in progress"), "{message}");
    let message = daemon
        .error(Method::POST, "/v1/apps/web/promote", None, conflict)
        .await;
    assert!(message.contains("promot"), "{message}");
    let message = daemon
        .error(Method::GET, "/v1/apps/web/logs", None, conflict)
        .await;
    assert!(message.contains("no live release"), "{message}");
    daemon.stop().await;
}

#[tokio::test]
async fn status_lists_the_configured_apps() {
    let daemon = Daemon::start().await;
    let (status, apps) = daemon.json(Method::GET, "/v1/apps").await;
    assert_eq!(status, StatusCode::OK);
    let apps = apps.as_array().unwrap();
    let web = apps.iter().find(|app| app["name"] == "web").unwrap();
    assert_eq!(web["live_slot"], Value::Null);
    assert_eq!(apps.len(), 2);
    let (status, app) = daemon.json(Method::GET, "/v1/apps/web").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(app["name"], "web");
    daemon.stop().await;
}

/// Splits an SSE body into its events' fields.
fn sse_events(text: &str) -> Vec<Vec<(String, String)>> {
    text.split("\n\n")
        .filter(|block| !block.trim().is_empty())
        .map(|block| {
            block
                .lines()
                .filter(|line| !line.starts_with(':'))
                .filter_map(|line| {
                    line.split_once(": ")
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                })
                .collect()
        })
        .collect()
}

#[tokio::test]
async fn a_deployment_is_accepted_and_its_events_stream_until_it_ends() {
    let daemon = Daemon::start().await;
    let body = r#"{"version": "v1", "trigger": "webhook-test"}"#;
    let (status, text, _) = daemon
        .call(Method::POST, "/v1/apps/crash/deployments", Some(body))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{text}");
    let record: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(record["trigger"], "webhook-test");
    assert_eq!(record["version"], "v1");
    let id = record["id"].as_i64().unwrap();

    // The stream ends by itself after the terminal event.
    let events_path = format!("/v1/deployments/{id}/events");
    let (status, text, content_type) = tokio::time::timeout(
        Duration::from_secs(20),
        daemon.call(Method::GET, &events_path, None),
    )
    .await
    .expect("the event stream ends after the terminal event");
    assert_eq!(status, StatusCode::OK);
    assert_eq!(content_type.as_deref(), Some("text/event-stream"));
    let events = sse_events(&text);
    assert!(events.len() >= 2, "{text}");
    let mut ids = Vec::new();
    for fields in &events {
        let field = |name: &str| {
            fields
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
                .unwrap()
        };
        let data: Value = serde_json::from_str(&field("data")).unwrap();
        assert_eq!(data["deployment_id"], id);
        assert_eq!(field("id"), data["id"].to_string());
        assert_eq!(field("event"), data["state"].as_str().unwrap());
        ids.push(data["id"].as_i64().unwrap());
    }
    let last = events.last().unwrap();
    assert!(
        last.contains(&("event".to_string(), "failed".to_string())),
        "{text}"
    );

    // Last-Event-ID resumes after that event.
    let stream = UnixStream::connect(&daemon.socket).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let request = Request::builder()
        .uri(&events_path)
        .header("host", "cutover")
        .header("last-event-id", ids[ids.len() - 2].to_string())
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let resumed = String::from_utf8(
        response
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap();
    let resumed = sse_events(&resumed);
    assert_eq!(resumed.len(), 1, "{resumed:?}");
    assert!(resumed[0].contains(&("id".to_string(), ids[ids.len() - 1].to_string())));

    let (status, detail) = daemon
        .json(Method::GET, &format!("/v1/deployments/{id}"))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(detail["state"], "failed");
    assert!(
        detail["reason"].as_str().unwrap().contains("boom at start"),
        "{detail}"
    );
    assert_eq!(detail["events"].as_array().unwrap().len(), ids.len());

    let (_, history) = daemon
        .json(Method::GET, "/v1/apps/crash/deployments?limit=1")
        .await;
    assert_eq!(history[0]["id"], id);
    daemon.stop().await;
}

#[tokio::test]
async fn the_socket_is_private_exclusive_and_removed_on_shutdown() {
    let daemon = Daemon::start().await;
    let mode = std::fs::metadata(&daemon.socket)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    let second = AdminSocket::bind(&daemon.socket).await.unwrap_err();
    assert!(
        matches!(second, ApiError::AlreadyRunning { .. }),
        "{second}"
    );
    assert!(
        second
            .to_string()
            .contains("another `cutover serve` is already running"),
        "{second}"
    );

    let socket = daemon.stop().await;
    assert!(!socket.exists(), "the socket file is removed on shutdown");
}

#[tokio::test]
async fn a_stale_socket_is_replaced_and_other_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("nested/admin.sock");
    std::fs::create_dir_all(socket.parent().unwrap()).unwrap();
    // A socket file nobody listens on, as a crash leaves it.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    assert!(socket.exists());
    let bound = AdminSocket::bind(&socket).await.unwrap();
    assert_eq!(bound.path(), socket.as_path());
    assert!(UnixStream::connect(&socket).await.is_ok());
    drop(bound);
    assert!(
        !socket.exists(),
        "dropping an unserved socket removes its file"
    );

    let plain: &Path = &dir.path().join("plain-file");
    std::fs::write(plain, "keep me").unwrap();
    let refused = AdminSocket::bind(plain).await.unwrap_err();
    assert!(matches!(refused, ApiError::NotASocket { .. }), "{refused}");
    assert_eq!(std::fs::read_to_string(plain).unwrap(), "keep me");

    // The parent directory is created.
    let fresh = dir.path().join("a/b/admin.sock");
    drop(AdminSocket::bind(&fresh).await.unwrap());
}
