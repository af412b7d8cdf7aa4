//! `DELETE /v1/users/{user}/data`: erase everything stored about one end user.
//! `GET /admin/audit`: the audit log (operator).

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::{self, Caller};
use super::error::ApiError;
use super::state::SharedState;

/// Erases the conversations, completion records, feedback and review items of
/// `user` (the `user` field of chat requests). A key erases its own source's users;
/// the operator erases across sources. The audit log records who erased which
/// user hash, and how many rows, never the content.
pub async fn erase(
    State(st): State<SharedState>,
    headers: HeaderMap,
    Path(user): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let caller = auth::caller(&st, &headers)?;
    if user.is_empty() || user.len() > 256 {
        return Err(ApiError::invalid(
            Some("user"),
            "user must be 1-256 characters",
        ));
    }
    let hash = st.privacy.user_hash(&user);
    let (scope, actor) = match &caller {
        Caller::Operator => (None, "operator".to_string()),
        other => (Some(other.source().to_string()), other.source().to_string()),
    };
    let store = st.store.clone();
    let h = hash.clone();
    let erased =
        tokio::task::spawn_blocking(move || store.erase_user(&h, scope.as_deref(), &actor))
            .await
            .map_err(ApiError::internal)?
            .map_err(ApiError::internal)?;
    st.metrics.erasures.inc();
    if let Ok(n) = st.store.pending_reviews() {
        st.metrics.review_queue_length.set(n);
    }
    tracing::info!(user_hash = %hash, "erased an end user's data");
    Ok(Json(
        json!({"object": "user.erasure", "user_hash": hash, "erased": erased}),
    ))
}

/// Query of `GET /admin/audit`.
#[derive(Debug, Deserialize)]
pub struct AuditQuery {
    #[serde(default)]
    limit: Option<usize>,
}

/// `GET /admin/audit`: newest entries first.
pub async fn audit(
    State(st): State<SharedState>,
    headers: HeaderMap,
    query: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    auth::operator(&st, &headers)?;
    let Query(q) = query.map_err(|_| ApiError::invalid(Some("limit"), "limit must be a number"))?;
    let items = st
        .store
        .audit(q.limit.unwrap_or(100).clamp(1, 1000))
        .map_err(ApiError::internal)?;
    Ok(Json(json!({"object": "list", "data": items})))
}
