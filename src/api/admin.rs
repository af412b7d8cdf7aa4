//! Operator endpoints under `/admin/` (operator token required).

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use rand::distr::{Alphanumeric, SampleString};
use serde_json::{json, Value};

use super::auth;
use super::error::ApiError;
use super::json::ApiJson;
use super::state::SharedState;
use super::wire::CreateKeyRequest;

/// `POST /admin/keys`: a new user key for a source; only its hash is stored.
pub async fn create_key(
    State(st): State<SharedState>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<CreateKeyRequest>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    auth::operator(&st, &headers)?;
    let source = req.source.trim();
    if source.is_empty()
        || source.len() > 64
        || !source
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c))
    {
        return Err(ApiError::invalid(
            Some("source"),
            "source must be 1-64 characters of letters, digits, '-', '_', '.' or ':'",
        ));
    }
    let key = format!("tth-{}", Alphanumeric.sample_string(&mut rand::rng(), 40));
    st.store
        .insert_key(&auth::hash_key(&key), source)
        .map_err(ApiError::internal)?;
    tracing::info!(source, "created an API key");
    Ok((
        StatusCode::CREATED,
        Json(json!({"key": key, "source": source})),
    ))
}
