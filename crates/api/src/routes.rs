//! The endpoints of the admin API.
//!
//! | Method | Path | Answer |
//! |---|---|---|
//! | GET | `/v1/apps` | `[AppStatus]` |
//! | GET | `/v1/apps/{app}` | `AppStatus` |
//! | POST | `/v1/apps/{app}/deployments` | 202 `DeploymentRecord`; body `{"version": "v2", "force": false, "trigger": "cli"}`, or `{"ref": "v1.2-cicd"}` to build that git ref first |
//! | GET | `/v1/apps/{app}/deployments?limit=N` | `[DeploymentRecord]`, newest first (default 20, at most 1000) |
//! | POST | `/v1/apps/{app}/rollback` | 202 `DeploymentRecord` |
//! | POST | `/v1/apps/{app}/abort` | 200 `DeploymentRecord` |
//! | POST | `/v1/apps/{app}/promote` | 200 `DeploymentRecord` |
//! | GET | `/v1/apps/{app}/logs?slot=blue\|green&tail=N&follow=true` | text/plain |
//! | GET | `/v1/deployments/{id}` | `DeploymentDetail` |
//! | GET | `/v1/deployments/{id}/events` | Server-Sent Events of `EventRecord` |
//! | GET | `/v1/groups` | `[GroupStatus]` (release groups) |
//! | GET | `/v1/groups/{group}` | `GroupStatus`: apps, current and last group deployment |
//! | POST | `/v1/groups/{group}/deployments` | 202 `GroupDeploymentDetail`; body `{"versions": {"web": "v2", "api": "v7"}}` or `{"version": "v2"}` |
//! | GET | `/v1/groups/{group}/deployments?limit=N` | `[GroupDeploymentDetail]`, newest first |
//! | GET | `/v1/groups/{group}/deployments/{id}` | `GroupDeploymentDetail` (the group's record and its member deployments) |
//! | POST | `/v1/groups/{group}/rollback` | 202 `GroupDeploymentDetail` |
//! | POST | `/v1/groups/{group}/abort` | 200 `GroupDeploymentDetail` |
//! | POST | `/v1/groups/{group}/promote` | 200 `GroupDeploymentDetail` |
//! | POST | `/v1/upgrade` | 200 `UpgradeReport`; body `{"binary": "/path"}` (optional); 500 `{"error", "steps"}` when the new process did not take over |
//! | GET | `/v1/certs`, POST `/v1/certs/{name}/renew` | see `certs` |
//! | GET | `/metrics` | Prometheus text (proxy and engine metrics, see `metrics`) |
//! | GET | `/`, `/assets/{file}` | the dashboard (see `dashboard`) |

use crate::error::HttpError;
use crate::extract::{ApiPath, ApiQuery, Expected, JsonBody};
use crate::shutdown::Shutdown;
use crate::upgrade::{UpgradeAsk, UpgradeBody, Upgrades};
use crate::{events, logs};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use cutover_config::Slot;
use cutover_engine::{AppStatus, DeployRequest, DeploymentDetail, Engine};
use cutover_store::DeploymentRecord;
use serde::Deserialize;

mod groups;

pub const DEFAULT_HISTORY_LIMIT: usize = 20;
pub const MAX_HISTORY_LIMIT: usize = 1000;
pub const DEFAULT_LOG_TAIL: usize = 100;
pub const MAX_LOG_TAIL: usize = 100_000;

#[derive(Clone)]
struct ApiState {
    engine: Engine,
    shutdown: Shutdown,
    upgrades: Option<Upgrades>,
}

/// The admin API for `engine`.
pub fn router(engine: Engine) -> Router {
    router_with_shutdown(engine, Shutdown::never(), None)
}

pub(crate) fn router_with_shutdown(
    engine: Engine,
    shutdown: Shutdown,
    upgrades: Option<Upgrades>,
) -> Router {
    groups::routes(Router::new())
        .route("/v1/apps", get(list_apps))
        .route("/v1/apps/{app}", get(app_status))
        .route("/v1/apps/{app}/deployments", post(deploy).get(history))
        .route("/v1/apps/{app}/rollback", post(rollback))
        .route("/v1/apps/{app}/abort", post(abort))
        .route("/v1/apps/{app}/promote", post(promote))
        .route("/v1/apps/{app}/logs", get(logs))
        .route("/v1/apps/{app}/events", get(app_events))
        .route("/v1/deployments/{id}", get(deployment))
        .route("/v1/deployments/{id}/events", get(deployment_events))
        .route("/v1/upgrade", post(upgrade))
        .route("/metrics", get(metrics))
        .merge(crate::dashboard::routes())
        .layer(axum::Extension(crate::metrics::HealthTransitions::start(
            &engine,
        )))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::max(
            usize::try_from(crate::transport::MAX_BODY_BYTES).unwrap_or(usize::MAX),
        ))
        .layer(axum::middleware::from_fn(crate::transport::limits))
        .with_state(ApiState {
            engine,
            shutdown,
            upgrades,
        })
}

/// Runs an upgrade and answers its report: 200 when the new process took
/// over, 500 with the steps and the reason when it did not.
async fn upgrade(
    State(state): State<ApiState>,
    JsonBody(body): JsonBody<UpgradeBody>,
) -> Result<Response, HttpError> {
    let Some(upgrades) = state.upgrades else {
        return Err(HttpError::new(
            StatusCode::NOT_IMPLEMENTED,
            "this daemon cannot upgrade itself",
        ));
    };
    let binary = body.binary;
    let (reply, report) = tokio::sync::oneshot::channel();
    let stopped = || HttpError::new(StatusCode::SERVICE_UNAVAILABLE, "cutover is stopping");
    upgrades
        .send(UpgradeAsk { binary, reply })
        .await
        .map_err(|_| stopped())?;
    let report = report.await.map_err(|_| stopped())?;
    let status = match report.error {
        None => StatusCode::OK,
        Some(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    Ok((status, Json(report)).into_response())
}

async fn metrics(
    State(state): State<ApiState>,
    axum::Extension(transitions): axum::Extension<
        std::sync::Arc<crate::metrics::HealthTransitions>,
    >,
    certs: Option<axum::Extension<crate::certs::Certs>>,
) -> Response {
    let certs = certs.and_then(|c| c.0 .0).map(|acme| acme.status());
    crate::metrics::render(&state.engine, &transitions, certs).await
}

async fn not_found(method: Method, uri: Uri) -> HttpError {
    HttpError::not_found(format!(
        "no such endpoint: {method} {}; the admin API lives under /v1/",
        uri.path()
    ))
}

async fn method_not_allowed(method: Method, uri: Uri) -> HttpError {
    HttpError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{method} is not allowed on {}", uri.path()),
    )
}

async fn list_apps(State(state): State<ApiState>) -> Result<Json<Vec<AppStatus>>, HttpError> {
    Ok(Json(state.engine.status().await?))
}

async fn app_status(
    State(state): State<ApiState>,
    ApiPath(app): ApiPath<String>,
) -> Result<Json<AppStatus>, HttpError> {
    Ok(Json(state.engine.app_status(&app).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeployBody {
    version: Option<String>,
    /// A branch, tag or full ref of the app's `[app.source]`: build it and
    /// deploy the result (instead of `version`).
    #[serde(rename = "ref")]
    git_ref: Option<String>,
    #[serde(default)]
    force: bool,
    #[serde(default)]
    trigger: Option<String>,
}

impl Expected for DeployBody {
    const EXPECTED: &'static str = r#"{"version": "v2", "force": false} or {"ref": "v1.2-cicd"} (force and trigger are optional)"#;
}

/// Triggers are stored and shown; keep them to a short, plain alphabet.
fn validate_trigger(trigger: &str) -> Result<(), HttpError> {
    let ok = !trigger.is_empty()
        && trigger.len() <= 32
        && trigger.starts_with(|c: char| c.is_ascii_lowercase())
        && trigger
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(HttpError::bad_request(format!(
            "trigger `{}` is not valid: use 1-32 lowercase letters, digits, `-` or `_`, starting with a letter",
            trigger.escape_debug()
        )))
    }
}

async fn deploy(
    State(state): State<ApiState>,
    ApiPath(app): ApiPath<String>,
    JsonBody(body): JsonBody<DeployBody>,
) -> Result<(StatusCode, Json<DeploymentRecord>), HttpError> {
    let trigger = body.trigger.unwrap_or_else(|| "cli".to_string());
    validate_trigger(&trigger)?;
    let version = match (body.version, body.git_ref) {
        (Some(_), Some(_)) => {
            return Err(HttpError::bad_request(format!(
                "give either `version` or `ref`, not both; expected {}",
                DeployBody::EXPECTED
            )))
        }
        (None, None) => {
            return Err(HttpError::bad_request(format!(
                "missing field `version` (or `ref`); expected {}",
                DeployBody::EXPECTED
            )))
        }
        (None, Some(git_ref)) => {
            let record = state
                .engine
                .deploy_ref(&app, &git_ref, body.force, &trigger)
                .await?;
            return Ok((StatusCode::ACCEPTED, Json(record)));
        }
        (Some(version), None) => version,
    };
    let request = DeployRequest {
        version,
        trigger,
        force: body.force,
        source: None,
    };
    let record = state.engine.deploy(&app, request).await?;
    Ok((StatusCode::ACCEPTED, Json(record)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryQuery {
    limit: Option<usize>,
}

async fn history(
    State(state): State<ApiState>,
    ApiPath(app): ApiPath<String>,
    ApiQuery(query): ApiQuery<HistoryQuery>,
) -> Result<Json<Vec<DeploymentRecord>>, HttpError> {
    let limit = query.limit.unwrap_or(DEFAULT_HISTORY_LIMIT);
    if !(1..=MAX_HISTORY_LIMIT).contains(&limit) {
        return Err(HttpError::bad_request(format!(
            "limit {limit} is out of range: use 1 to {MAX_HISTORY_LIMIT}"
        )));
    }
    Ok(Json(state.engine.history(&app, limit).await?))
}

async fn rollback(
    State(state): State<ApiState>,
    ApiPath(app): ApiPath<String>,
) -> Result<(StatusCode, Json<DeploymentRecord>), HttpError> {
    Ok((
        StatusCode::ACCEPTED,
        Json(state.engine.rollback(&app).await?),
    ))
}

async fn abort(
    State(state): State<ApiState>,
    ApiPath(app): ApiPath<String>,
) -> Result<Json<DeploymentRecord>, HttpError> {
    Ok(Json(state.engine.abort(&app).await?))
}

async fn promote(
    State(state): State<ApiState>,
    ApiPath(app): ApiPath<String>,
) -> Result<Json<DeploymentRecord>, HttpError> {
    Ok(Json(state.engine.promote(&app).await?))
}

fn deployment_id(text: &str) -> Result<i64, HttpError> {
    text.parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| {
            HttpError::bad_request(format!(
                "deployment id `{}` is not valid: use a positive number",
                text.escape_debug()
            ))
        })
}

async fn deployment(
    State(state): State<ApiState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<DeploymentDetail>, HttpError> {
    let id = deployment_id(&id)?;
    Ok(Json(state.engine.deployment(id).await?))
}

/// `GET /v1/apps/{app}/events`: the app's own events (its live release
/// turning unhealthy or healthy again) as Server-Sent Events, until the
/// client goes away.
async fn app_events(
    State(state): State<ApiState>,
    ApiPath(app): ApiPath<String>,
) -> Result<Response, HttpError> {
    let receiver = state.engine.app_events(&app)?;
    Ok(events::app_stream(receiver, app, state.shutdown.clone()))
}

async fn deployment_events(
    State(state): State<ApiState>,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
) -> Result<Response, HttpError> {
    let id = deployment_id(&id)?;
    let last_event_id = match headers.get("last-event-id") {
        None => None,
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .and_then(|text| text.trim().parse::<i64>().ok())
                .ok_or_else(|| {
                    HttpError::bad_request(
                        "the Last-Event-ID header must be an event id (a number)",
                    )
                })?,
        ),
    };
    events::stream(&state.engine, id, last_event_id, state.shutdown.clone()).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LogsQuery {
    slot: Option<String>,
    #[serde(default)]
    follow: Option<String>,
    tail: Option<usize>,
}

fn parse_flag(name: &str, value: Option<&str>) -> Result<bool, HttpError> {
    match value {
        None | Some("false" | "0" | "no") => Ok(false),
        Some("" | "true" | "1" | "yes") => Ok(true),
        Some(other) => Err(HttpError::bad_request(format!(
            "{name}=`{}` is not valid: use true or false",
            other.escape_debug()
        ))),
    }
}

async fn logs(
    State(state): State<ApiState>,
    ApiPath(app): ApiPath<String>,
    ApiQuery(query): ApiQuery<LogsQuery>,
) -> Result<Response, HttpError> {
    let slot = match query.slot.as_deref() {
        None | Some("") => None,
        Some(text) => Some(text.parse::<Slot>().map_err(HttpError::bad_request)?),
    };
    let follow = parse_flag("follow", query.follow.as_deref())?;
    let tail = query.tail.unwrap_or(DEFAULT_LOG_TAIL);
    if tail > MAX_LOG_TAIL {
        return Err(HttpError::bad_request(format!(
            "tail {tail} is too large: use at most {MAX_LOG_TAIL} lines"
        )));
    }
    let path = state.engine.log_path(&app, slot).await?;
    Ok(logs::stream(
        path,
        logs::LogRequest { tail, follow },
        state.shutdown.clone(),
    )
    .await?
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn triggers_are_plain_words() {
        assert!(validate_trigger("cli").is_ok());
        assert!(validate_trigger("webhook-github_2").is_ok());
        assert!(validate_trigger("").is_err());
        assert!(validate_trigger("CLI").is_err());
        assert!(validate_trigger("a b").is_err());
        assert!(validate_trigger("-x").is_err());
        assert!(validate_trigger(&"a".repeat(33)).is_err());
    }

    #[test]
    fn deployment_ids_are_positive_numbers() {
        assert_eq!(deployment_id("12"), Ok(12));
        assert!(deployment_id("0").is_err());
        assert!(deployment_id("-1").is_err());
        assert!(deployment_id("abc").is_err());
    }

    #[test]
    fn flags() {
        assert_eq!(parse_flag("follow", None), Ok(false));
        assert_eq!(parse_flag("follow", Some("true")), Ok(true));
        assert_eq!(parse_flag("follow", Some("")), Ok(true));
        assert!(parse_flag("follow", Some("maybe")).is_err());
    }
}
