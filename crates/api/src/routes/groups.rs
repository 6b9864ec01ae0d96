//! Release groups' endpoints (see the table in `routes.rs`).

use super::{validate_trigger, ApiState, HistoryQuery, DEFAULT_HISTORY_LIMIT, MAX_HISTORY_LIMIT};
use crate::error::HttpError;
use crate::extract::{ApiPath, ApiQuery, Expected, JsonBody};
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use cutover_engine::{GroupDeployRequest, GroupDeploymentDetail, GroupStatus};
use serde::Deserialize;
use std::collections::BTreeMap;

pub(super) fn routes(router: Router<ApiState>) -> Router<ApiState> {
    router
        .route("/v1/groups", get(list_groups))
        .route("/v1/groups/{group}", get(group_status))
        .route(
            "/v1/groups/{group}/deployments",
            post(deploy_group).get(group_history),
        )
        .route("/v1/groups/{group}/deployments/{id}", get(group_deployment))
        .route("/v1/groups/{group}/rollback", post(rollback_group))
        .route("/v1/groups/{group}/abort", post(abort_group))
        .route("/v1/groups/{group}/promote", post(promote_group))
}

async fn list_groups(State(state): State<ApiState>) -> Result<Json<Vec<GroupStatus>>, HttpError> {
    let mut all = Vec::new();
    for group in state.engine.groups() {
        all.push(state.engine.group_status(&group.name).await?);
    }
    Ok(Json(all))
}

async fn group_status(
    State(state): State<ApiState>,
    ApiPath(group): ApiPath<String>,
) -> Result<Json<GroupStatus>, HttpError> {
    Ok(Json(state.engine.group_status(&group).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupDeployBody {
    #[serde(default)]
    versions: BTreeMap<String, String>,
    /// The version of every app `versions` does not name.
    version: Option<String>,
    #[serde(default)]
    trigger: Option<String>,
}

impl Expected for GroupDeployBody {
    const EXPECTED: &'static str =
        r#"{"versions": {"web": "v2", "api": "v7"}} or {"version": "v2"} (trigger is optional)"#;
}

async fn deploy_group(
    State(state): State<ApiState>,
    ApiPath(group): ApiPath<String>,
    JsonBody(body): JsonBody<GroupDeployBody>,
) -> Result<(StatusCode, Json<GroupDeploymentDetail>), HttpError> {
    let trigger = body.trigger.unwrap_or_else(|| "cli".to_string());
    validate_trigger(&trigger)?;
    let request = GroupDeployRequest {
        version: body.version,
        versions: body.versions,
        trigger,
    };
    let detail = state.engine.deploy_group(&group, request).await?;
    Ok((StatusCode::ACCEPTED, Json(detail)))
}

async fn group_history(
    State(state): State<ApiState>,
    ApiPath(group): ApiPath<String>,
    ApiQuery(query): ApiQuery<HistoryQuery>,
) -> Result<Json<Vec<GroupDeploymentDetail>>, HttpError> {
    let limit = query.limit.unwrap_or(DEFAULT_HISTORY_LIMIT);
    if !(1..=MAX_HISTORY_LIMIT).contains(&limit) {
        return Err(HttpError::bad_request(format!(
            "limit {limit} is out of range: use 1 to {MAX_HISTORY_LIMIT}"
        )));
    }
    Ok(Json(state.engine.group_history(&group, limit).await?))
}

async fn group_deployment(
    State(state): State<ApiState>,
    ApiPath((group, id)): ApiPath<(String, String)>,
) -> Result<Json<GroupDeploymentDetail>, HttpError> {
    let id = super::deployment_id(&id)?;
    let detail = state.engine.group_deployment(id).await?;
    if detail.group_deployment.group != group {
        return Err(HttpError::not_found(format!(
            "group `{group}` has no deployment {id}"
        )));
    }
    Ok(Json(detail))
}

async fn rollback_group(
    State(state): State<ApiState>,
    ApiPath(group): ApiPath<String>,
) -> Result<(StatusCode, Json<GroupDeploymentDetail>), HttpError> {
    let detail = state.engine.rollback_group(&group).await?;
    Ok((StatusCode::ACCEPTED, Json(detail)))
}

async fn abort_group(
    State(state): State<ApiState>,
    ApiPath(group): ApiPath<String>,
) -> Result<Json<GroupDeploymentDetail>, HttpError> {
    Ok(Json(state.engine.abort_group(&group).await?))
}

async fn promote_group(
    State(state): State<ApiState>,
    ApiPath(group): ApiPath<String>,
) -> Result<Json<GroupDeploymentDetail>, HttpError> {
    Ok(Json(state.engine.promote_group(&group).await?))
}
