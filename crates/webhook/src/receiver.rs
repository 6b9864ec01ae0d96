//! The HTTP receiver: `POST {path_prefix}/github|gitlab|gitea|bitbucket`.
//!
//! Per request, in this order: route, size cap (413), body read within
//! `read_timeout` (408), signature on the raw bytes (401 — nothing else
//! happens), event header and JSON (400), normalisation, rules, then one
//! insert into the persisted inbox (`webhook_deliveries`, unique on the
//! delivery id) and an answer: 202 when something will be built, 200 for
//! pings, redeliveries and events that deploy nothing (with the reason,
//! also logged). The build runs later, in the dispatcher and the engine, so
//! the answer never waits for it.

use crate::provider::{normalize, normalize_url, Normalized, Provider, PushEvent};
use crate::secrets::{self, Secret};
use crate::signature;
use crate::WebhookError;
use bytes::Bytes;
use cutover_config::git_ref::{check_ref_name, validate_commit};
use cutover_config::{Config, WebhookConfig};
use cutover_store::{DeliveryStatus, NewDelivery, Store};
use http::{header, HeaderMap, Method, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::Notify;

/// Where the receiver listens when the proxy's listeners take its requests
/// (`[webhook] listen` unset): loopback, a free port.
const INTERNAL: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);

/// The webhook receiver, bound and ready to serve.
pub struct Receiver {
    listener: TcpListener,
    shared: Arc<Shared>,
}

struct Shared {
    config: Arc<Config>,
    webhook: WebhookConfig,
    secrets: HashMap<Provider, Vec<Secret>>,
    store: Store,
    wake: Arc<Notify>,
}

impl Receiver {
    /// Reads the secrets and binds `[webhook] listen`.
    pub async fn bind(config: Arc<Config>, store: Store) -> Result<Receiver, WebhookError> {
        Receiver::bind_or_adopt(config, store, None).await
    }

    /// [`Receiver::bind`], serving on `inherited` instead of binding when
    /// given: the listener of the process this one took over from (an
    /// upgrade of cutover).
    pub async fn bind_or_adopt(
        config: Arc<Config>,
        store: Store,
        inherited: Option<std::net::TcpListener>,
    ) -> Result<Receiver, WebhookError> {
        let webhook = config.webhook.clone().ok_or(WebhookError::NotConfigured)?;
        let mut secrets = HashMap::new();
        for provider in Provider::ALL {
            let (sources, key) = match provider {
                Provider::GitHub => (&webhook.github, "github_secret"),
                Provider::GitLab => (&webhook.gitlab, "gitlab_token"),
                Provider::Gitea => (&webhook.gitea, "gitea_secret"),
                Provider::Bitbucket => (&webhook.bitbucket, "bitbucket_secret"),
            };
            let read = sources
                .iter()
                .map(|source| secrets::read(source, key))
                .collect::<Result<Vec<_>, _>>()
                .map_err(WebhookError::Secret)?;
            secrets.insert(provider, read);
        }
        // Without a listener of its own, the receiver listens on a loopback
        // port of the kernel's choosing that only the proxy forwards to.
        let addr = webhook.listen.unwrap_or(INTERNAL);
        let listen_error = |source| WebhookError::Listen { addr, source };
        let listener = match inherited {
            Some(listener) => listener
                .set_nonblocking(true)
                .and_then(|()| TcpListener::from_std(listener))
                .map_err(listen_error)?,
            None => TcpListener::bind(addr).await.map_err(listen_error)?,
        };
        Ok(Receiver {
            listener,
            shared: Arc::new(Shared {
                config,
                webhook,
                secrets,
                store,
                wake: Arc::new(Notify::new()),
            }),
        })
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// A second descriptor of the listening socket, to hand to a new process.
    pub fn listener_fd(&self) -> std::io::Result<std::os::fd::OwnedFd> {
        std::os::fd::AsFd::as_fd(&self.listener).try_clone_to_owned()
    }

    /// Notified whenever a delivery was queued; give it to the dispatcher.
    pub fn wake(&self) -> Arc<Notify> {
        self.shared.wake.clone()
    }

    /// Serves until `shutdown` resolves (requests in progress finish on
    /// their own tasks).
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), WebhookError> {
        let mut builder = http1::Builder::new();
        builder
            .keep_alive(false)
            .timer(TokioTimer::new())
            .header_read_timeout(self.shared.webhook.read_timeout);
        let builder = Arc::new(builder);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                biased;
                () = &mut shutdown => return Ok(()),
                accepted = self.listener.accept() => {
                    let (stream, peer) = match accepted {
                        Ok(accepted) => accepted,
                        Err(e) => {
                            tracing::warn!(error = %e, "accepting a webhook connection failed");
                            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let shared = self.shared.clone();
                    let builder = builder.clone();
                    tokio::spawn(async move {
                        let service = service_fn(move |request| {
                            let shared = shared.clone();
                            async move { Ok::<_, Infallible>(handle(&shared, request, peer).await) }
                        });
                        if let Err(e) = builder.serve_connection(TokioIo::new(stream), service).await {
                            tracing::debug!(%peer, error = %e, "webhook connection ended with an error");
                        }
                    });
                }
            }
        }
    }
}

type Answer = Response<Full<Bytes>>;

fn answer(status: StatusCode, body: Value) -> Answer {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

fn error(status: StatusCode, message: impl Into<String>) -> Answer {
    answer(status, json!({ "error": message.into() }))
}

async fn handle(shared: &Shared, request: http::Request<Incoming>, peer: SocketAddr) -> Answer {
    let peer = client_of(shared, request.headers(), peer);
    let (provider, secrets) = match endpoint(shared, &request) {
        Ok(endpoint) => endpoint,
        Err(refused) => return *refused,
    };
    let (parts, body) = request.into_parts();
    let body = match read_body(shared, &parts.headers, body).await {
        Ok(body) => body,
        Err(refused) => return *refused,
    };
    if let Err(unauthorized) = signature::verify(provider, &parts.headers, &body, secrets) {
        tracing::warn!(provider = provider.as_str(), %peer, "webhook refused: {}", unauthorized.0);
        return error(StatusCode::UNAUTHORIZED, unauthorized.0);
    }
    match accept(shared, provider, &parts.headers, &body).await {
        Ok(answer) => answer,
        Err((status, message)) => {
            tracing::warn!(provider = provider.as_str(), %peer, "webhook rejected: {message}");
            error(status, message)
        }
    }
}

/// Who sent the request, for logs: behind the proxy (no listener of the
/// receiver's own) the client address the proxy put in `X-Real-IP`.
fn client_of(shared: &Shared, headers: &HeaderMap, peer: SocketAddr) -> String {
    let forwarded = headers
        .get("x-real-ip")
        .and_then(|value| value.to_str().ok())
        .filter(|_| shared.webhook.listen.is_none() && peer.ip().is_loopback());
    match forwarded {
        Some(client) => client.escape_debug().to_string(),
        None => peer.to_string(),
    }
}

/// The provider a request is for, and its secrets: the path names an
/// endpoint that is on, and the method is POST.
fn endpoint<'s>(
    shared: &'s Shared,
    request: &http::Request<Incoming>,
) -> Result<(Provider, &'s [Secret]), Box<Answer>> {
    let prefix = shared.webhook.path_prefix.as_str();
    let path = request.uri().path();
    let Some(provider) = path
        .strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('/'))
        .and_then(Provider::from_segment)
    else {
        return Err(Box::new(error(
            StatusCode::NOT_FOUND,
            format!("no such endpoint: {path}; webhooks go to POST {prefix}/github, /gitlab, /gitea or /bitbucket"),
        )));
    };
    if request.method() != Method::POST {
        let mut response = error(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{} is not allowed on {path}; use POST", request.method()),
        );
        response
            .headers_mut()
            .insert(header::ALLOW, http::HeaderValue::from_static("POST"));
        return Err(Box::new(response));
    }
    let secrets = shared
        .secrets
        .get(&provider)
        .map(Vec::as_slice)
        .unwrap_or_default();
    if secrets.is_empty() {
        return Err(Box::new(error(
            StatusCode::NOT_FOUND,
            format!(
                "the {0} endpoint is off: no {0} secret is configured in [webhook]",
                provider.as_str()
            ),
        )));
    }
    Ok((provider, secrets))
}

/// The whole body, at most `max_body` bytes, within `read_timeout`.
async fn read_body(
    shared: &Shared,
    headers: &HeaderMap,
    body: Incoming,
) -> Result<Bytes, Box<Answer>> {
    let max = shared.webhook.max_body;
    let too_large = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is larger than max_body ({max} bytes)"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > max) {
        return Err(Box::new(too_large()));
    }
    let limit = usize::try_from(max).unwrap_or(usize::MAX);
    match tokio::time::timeout(
        shared.webhook.read_timeout,
        Limited::new(body, limit).collect(),
    )
    .await
    {
        Err(_) => Err(Box::new(error(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the body did not arrive within read_timeout ({:?})",
                shared.webhook.read_timeout
            ),
        ))),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(Box::new(too_large())),
        Ok(Err(e)) => Err(Box::new(error(
            StatusCode::BAD_REQUEST,
            format!("reading the body failed: {e}"),
        ))),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    }
}

type Rejection = (StatusCode, String);

fn bad(message: String) -> Rejection {
    (StatusCode::BAD_REQUEST, message)
}

/// A verified delivery: normalise, apply the rules, record, answer.
async fn accept(
    shared: &Shared,
    provider: Provider,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Answer, Rejection> {
    let event = event(provider, headers)?;
    let delivery = delivery_id(provider, headers, body)?;
    let json = parse_body(headers, body).map_err(bad)?;
    let normalized = normalize(provider, &event, &json).map_err(|why| {
        bad(format!(
            "{why}: this is not a {} push payload",
            provider.as_str()
        ))
    })?;
    let pushes = match normalized {
        Normalized::Ping => {
            tracing::info!(provider = provider.as_str(), %delivery, "webhook ping");
            return Ok(answer(StatusCode::OK, json!({ "status": "pong" })));
        }
        Normalized::Ignored(reason) => {
            let row = NewDelivery {
                provider: provider.as_str().to_string(),
                delivery_id: delivery.clone(),
                event: event.clone(),
                repository: None,
                ref_kind: None,
                ref_name: None,
                commit: None,
                apps: Vec::new(),
                status: DeliveryStatus::Ignored.as_str().to_string(),
                reason: Some(reason.clone()),
            };
            record(shared, vec![row]).await?;
            return Ok(ignored(provider, &delivery, reason));
        }
        Normalized::Pushes(pushes) if pushes.is_empty() => {
            let reason = "the push changed no branch or tag".to_string();
            return Ok(ignored(provider, &delivery, reason));
        }
        Normalized::Pushes(pushes) => pushes,
    };
    let rows = delivery_rows(shared, provider, &delivery, &event, &pushes);
    let Some(recorded) = record(shared, rows.clone()).await? else {
        tracing::info!(provider = provider.as_str(), %delivery, "webhook redelivered; already accepted, not building again");
        return Ok(answer(
            StatusCode::OK,
            json!({ "status": "duplicate", "delivery": delivery, "reason": "this delivery was received before; it is not built again" }),
        ));
    };
    log_rows(provider, &rows);
    let queued: Vec<&NewDelivery> = rows
        .iter()
        .filter(|r| r.status == DeliveryStatus::Queued.as_str())
        .collect();
    if queued.is_empty() {
        let reasons: Vec<&str> = rows.iter().filter_map(|r| r.reason.as_deref()).collect();
        return Ok(answer(
            StatusCode::OK,
            json!({ "status": "ignored", "delivery": delivery, "reason": reasons.join("; ") }),
        ));
    }
    shared.wake.notify_one();
    let apps: Vec<&str> = queued
        .iter()
        .flat_map(|r| r.apps.iter().map(String::as_str))
        .collect();
    Ok(answer(
        StatusCode::ACCEPTED,
        json!({ "status": "accepted", "delivery": delivery, "id": recorded, "apps": apps }),
    ))
}

fn event(provider: Provider, headers: &HeaderMap) -> Result<String, Rejection> {
    provider.event(headers).ok_or_else(|| {
        bad(format!(
            "the event header is missing ({})",
            match provider {
                Provider::GitHub => "X-GitHub-Event",
                Provider::GitLab => "X-Gitlab-Event",
                Provider::Gitea => "X-Gitea-Event or X-Forgejo-Event",
                Provider::Bitbucket => "X-Event-Key",
            }
        ))
    })
}

/// The provider's delivery id; without one, the same body is the same
/// delivery.
fn delivery_id(provider: Provider, headers: &HeaderMap, body: &[u8]) -> Result<String, Rejection> {
    match provider.delivery(headers) {
        Some(id) if valid_delivery_id(&id) => Ok(id),
        Some(id) => Err(bad(format!(
            "the delivery id `{}` is not valid (1-200 printable characters)",
            id.escape_debug()
        ))),
        None => Ok(format!(
            "sha256-{}",
            signature::sign_sha256(b"cutover-delivery", body)
        )),
    }
}

/// A delivery that deploys nothing: logged, answered 200 with the reason.
fn ignored(provider: Provider, delivery: &str, reason: String) -> Answer {
    tracing::info!(provider = provider.as_str(), %delivery, "webhook ignored: {reason}");
    answer(
        StatusCode::OK,
        json!({ "status": "ignored", "delivery": delivery, "reason": reason }),
    )
}

/// One inbox row per pushed ref: the first under the delivery's own id,
/// the others as `<id>#<n>`; queued for the apps whose rules match it.
fn delivery_rows(
    shared: &Shared,
    provider: Provider,
    delivery: &str,
    event: &str,
    pushes: &[PushEvent],
) -> Vec<NewDelivery> {
    let mut rows = Vec::with_capacity(pushes.len());
    for (index, push) in pushes.iter().enumerate() {
        let delivery_id = if index == 0 {
            delivery.to_string()
        } else {
            format!("{delivery}#{index}")
        };
        let (apps, reason) = match route(&shared.config, push) {
            Ok(apps) => (apps, None),
            Err(reason) => (Vec::new(), Some(reason)),
        };
        let status = if apps.is_empty() {
            DeliveryStatus::Ignored
        } else {
            DeliveryStatus::Queued
        };
        rows.push(NewDelivery {
            provider: provider.as_str().to_string(),
            delivery_id,
            event: event.to_string(),
            repository: Some(push.repository.describe()),
            ref_kind: push.kind.map(|k| k.as_str().to_string()),
            ref_name: Some(push.name.clone()),
            commit: push.commit.clone(),
            status: status.as_str().to_string(),
            apps,
            reason,
        });
    }
    rows
}

fn log_rows(provider: Provider, rows: &[NewDelivery]) {
    for row in rows {
        match &row.reason {
            Some(reason) => {
                tracing::info!(provider = provider.as_str(), delivery = %row.delivery_id, "webhook ignored: {reason}")
            }
            None => tracing::info!(
                provider = provider.as_str(),
                delivery = %row.delivery_id,
                "webhook accepted: {} {} at {} deploys {}",
                row.ref_kind.as_deref().unwrap_or("ref"),
                row.ref_name.as_deref().unwrap_or(""),
                row.commit.as_deref().unwrap_or(""),
                row.apps.join(", ")
            ),
        }
    }
}

/// Inserts the rows; `None` when the first (the delivery's own id) was
/// recorded before.
async fn record(shared: &Shared, rows: Vec<NewDelivery>) -> Result<Option<i64>, Rejection> {
    let store = shared.store.clone();
    tokio::task::spawn_blocking(move || {
        let mut first = None;
        for (index, row) in rows.iter().enumerate() {
            match store.insert_delivery(row)? {
                Some(recorded) if index == 0 => first = Some(recorded.id),
                Some(_) => {}
                None if index == 0 => return Ok(None),
                None => {}
            }
        }
        Ok(first)
    })
    .await
    .map_err(|e| {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("recording the delivery failed: {e}"),
        )
    })?
    .map_err(|e: cutover_store::StoreError| {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("recording the delivery failed: {e}"),
        )
    })
}

fn valid_delivery_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 200 && id.chars().all(|c| c.is_ascii_graphic())
}

/// JSON, or GitHub's `application/x-www-form-urlencoded` with `payload=<json>`.
fn parse_body(headers: &HeaderMap, body: &[u8]) -> Result<Value, String> {
    let form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    let json = if form {
        let payload = body
            .split(|b| *b == b'&')
            .find_map(|pair| pair.strip_prefix(b"payload="))
            .ok_or("the form body has no `payload` field")?;
        percent_decode(payload)?
    } else {
        body.to_vec()
    };
    serde_json::from_slice(&json).map_err(|e| format!("the body is not valid JSON: {e}"))
}

fn percent_decode(input: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        match input[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = input
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or("the form body has a bad %-escape")?;
                out.push(hex);
                i += 2;
            }
            byte => out.push(byte),
        }
        i += 1;
    }
    Ok(out)
}

/// The apps a push deploys, or why it deploys none.
pub fn route(config: &Config, push: &PushEvent) -> Result<Vec<String>, String> {
    let what = format!(
        "{} `{}`",
        push.kind.map_or("ref", |k| k.as_str()),
        push.name.escape_debug()
    );
    if push.deleted {
        return Err(format!("{what} was deleted; deletions deploy nothing"));
    }
    let Some(kind) = push.kind else {
        return Err(format!("{what} is neither a branch nor a tag"));
    };
    check_ref_name(&push.name)?;
    let Some(commit) = &push.commit else {
        return Err(format!("the push of {what} names no commit"));
    };
    validate_commit(commit)?;
    let mut sources = 0;
    let mut apps = Vec::new();
    for app in &config.apps {
        let Some(source) = &app.source else { continue };
        if !same_repository(source, push) {
            continue;
        }
        sources += 1;
        if source.deploy_on.matches(kind, &push.name) {
            apps.push(app.name.clone());
        }
    }
    if sources == 0 {
        return Err(format!(
            "repository {} is not the [app.source] of any app",
            push.repository.describe()
        ));
    }
    if apps.is_empty() {
        return Err(format!(
            "no app's deploy_on rule matches {what} (rules match branch names with `branches` and tag names with `tags`)"
        ));
    }
    Ok(apps)
}

/// Whether the event's repository is the app's: by `repository` (the full
/// name) when configured, else by URL, or by the full name against the
/// path of `repo`.
fn same_repository(source: &cutover_config::SourceConfig, push: &PushEvent) -> bool {
    let full_name = push
        .repository
        .full_name
        .as_deref()
        .map(|n| n.trim_matches('/').to_ascii_lowercase());
    if let Some(wanted) = &source.repository {
        return full_name.as_deref() == Some(wanted.to_ascii_lowercase().as_str());
    }
    let repo = normalize_url(&source.repo);
    if push
        .repository
        .urls
        .iter()
        .any(|url| normalize_url(url) == repo)
    {
        return true;
    }
    match (full_name, repo.split_once('/')) {
        (Some(name), Some((_, path))) if !name.is_empty() => path.trim_matches('/') == name,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_bodies_are_decoded() {
        assert_eq!(
            percent_decode(b"%7B%22a%22%3A1%7D+x").ok(),
            Some(b"{\"a\":1} x".to_vec())
        );
        assert!(percent_decode(b"%zz").is_err());
        assert!(percent_decode(b"%4").is_err());
    }

    #[test]
    fn delivery_ids() {
        assert!(valid_delivery_id("72d3162e-cc78-11e3-81ab-4c9367dc0958"));
        assert!(!valid_delivery_id(""));
        assert!(!valid_delivery_id("a b"));
        assert!(!valid_delivery_id(&"x".repeat(201)));
    }
}
