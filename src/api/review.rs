//! Operator endpoints for the safety layer: the human review queue and reloading
//! the safety folder.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth;
use super::error::ApiError;
use super::json::ApiJson;
use super::state::SharedState;
use super::wire::ReviewDecisionRequest;

/// Query of `GET /admin/review`.
#[derive(Debug, Deserialize)]
pub struct ReviewQuery {
    /// `pending` (default), `decided` or `all`.
    #[serde(default)]
    status: Option<String>,
    /// Most items returned (default 100, at most 1000).
    #[serde(default)]
    limit: Option<usize>,
}

/// `GET /admin/review`: escalated items, oldest first.
pub async fn list(
    State(st): State<SharedState>,
    headers: HeaderMap,
    query: Result<Query<ReviewQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    auth::operator(&st, &headers)?;
    let Query(q) = query.map_err(|_| {
        ApiError::invalid(
            None,
            "query parameters: status=pending|decided|all, limit=N",
        )
    })?;
    let status = match q.status.as_deref().unwrap_or("pending") {
        "all" => None,
        s @ ("pending" | "decided") => Some(s),
        _ => {
            return Err(ApiError::invalid(
                Some("status"),
                "status must be pending, decided or all",
            ))
        }
    };
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let items = st
        .store
        .reviews(status, limit)
        .map_err(ApiError::internal)?;
    let pending = st.store.pending_reviews().map_err(ApiError::internal)?;
    Ok(Json(
        json!({"object": "list", "pending": pending, "data": items}),
    ))
}

/// `POST /admin/review/{id}`: records a reviewer's decision.
pub async fn decide(
    State(st): State<SharedState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<ReviewDecisionRequest>,
) -> Result<Json<Value>, ApiError> {
    auth::operator(&st, &headers)?;
    let id: i64 = id
        .parse()
        .map_err(|_| ApiError::invalid(Some("id"), "a review id is a number"))?;
    if !matches!(req.decision.as_str(), "approve" | "reject") {
        return Err(ApiError::invalid(
            Some("decision"),
            "decision must be `approve` (acceptable) or `reject` (not acceptable)",
        ));
    }
    if req.note.as_ref().is_some_and(|n| n.len() > 4096) {
        return Err(ApiError::invalid(
            Some("note"),
            "note is limited to 4096 bytes",
        ));
    }
    let Some(item) = st.store.review(id).map_err(ApiError::internal)? else {
        return Err(ApiError::not_found(
            Some("id"),
            format!("no review item {id}"),
        ));
    };
    if !st
        .store
        .decide_review(id, &req.decision, req.note.as_deref())
        .map_err(ApiError::internal)?
    {
        return Err(ApiError::conflict(format!(
            "review item {id} was already decided ({})",
            item.decision.unwrap_or_default()
        )));
    }
    if let Ok(n) = st.store.pending_reviews() {
        st.metrics.review_queue_length.set(n);
    }
    tracing::info!(id, decision = %req.decision, "review decided");
    let item = st.store.review(id).map_err(ApiError::internal)?;
    Ok(Json(json!(item)))
}

/// `POST /admin/safety/reload`: re-reads the safety folder now. An invalid folder
/// is rejected (422, with the reason) and the policy in use stays.
pub async fn reload(
    State(st): State<SharedState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    auth::operator(&st, &headers)?;
    let safety = st
        .safety
        .clone()
        .ok_or_else(|| ApiError::unavailable("safety checks are turned off on this server"))?;
    let result = tokio::task::spawn_blocking(move || safety.reload("operator"))
        .await
        .map_err(ApiError::internal)?;
    match result {
        Ok(generation) => Ok(Json(json!({"reloaded": true, "generation": generation}))),
        Err(e) => {
            let mut err = ApiError::invalid(
                None,
                format!(
                    "the new safety files were rejected and the previous policy stays in use: {e}"
                ),
            );
            err.status = StatusCode::UNPROCESSABLE_ENTITY;
            err.code = Some("invalid_safety_policy");
            Err(err)
        }
    }
}
