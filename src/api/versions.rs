//! Operator endpoints for versions: the lineage tree with evaluations, promote,
//! rollback, retire, and which version served at a given time.

use std::time::UNIX_EPOCH;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth;
use super::error::ApiError;
use super::state::{Ready, SharedState};
use crate::registry::{self, Version};

/// Optional body of promote and retire.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReasonRequest {
    /// Why (kept in the audit log).
    #[serde(default)]
    reason: Option<String>,
}

/// Optional body of `POST /admin/rollback`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    /// The version to roll back to (default: the last good version).
    #[serde(default)]
    to: Option<String>,
    /// Why (kept in the audit log).
    #[serde(default)]
    reason: Option<String>,
}

/// Query of `GET /admin/versions/at`.
#[derive(Debug, Deserialize)]
pub struct AtQuery {
    /// Unix seconds (may have a fraction) or an RFC 3339 time.
    time: Option<String>,
}

fn ready(st: &SharedState) -> Result<&Ready, ApiError> {
    st.ready
        .get()
        .ok_or_else(|| ApiError::unavailable("the model is still loading; retry shortly"))
}

fn error(e: registry::Error) -> ApiError {
    match e {
        registry::Error::Unknown(id) => ApiError::not_found(
            Some("id"),
            format!("no version {id}; GET /admin/versions lists them"),
        ),
        registry::Error::Conflict(m) => ApiError::conflict(m),
        other => ApiError::internal(other),
    }
}

/// An optional JSON body: empty means the default.
fn body<T: Default + serde::de::DeserializeOwned>(
    bytes: &[u8],
    shape: &str,
) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::invalid(None, format!("body must be empty or {shape}: {e}")))
}

fn reason(given: Option<String>, default: &str) -> Result<String, ApiError> {
    let r = given.unwrap_or_else(|| default.to_string());
    if r.chars().count() > 1000 {
        return Err(ApiError::invalid(
            Some("reason"),
            "reason must be at most 1000 characters",
        ));
    }
    Ok(r)
}

fn version_json(v: &Version, ready: &Ready) -> Value {
    let mut j = serde_json::to_value(v).unwrap_or(Value::Null);
    j["feedback"] = json!(ready
        .registry
        .store()
        .consumed(&v.id)
        .map(|c| c.len())
        .unwrap_or(0));
    j
}

/// `GET /admin/versions`: every version (with evaluation and the feedback count it
/// trained on), the lineage tree, the serving log, canary and drift-monitor state.
pub async fn list(
    State(st): State<SharedState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    auth::operator(&st, &headers)?;
    let ready = ready(&st)?;
    let versions = ready.registry.list();
    let mut out: Vec<Value> = versions.iter().map(|v| version_json(v, ready)).collect();
    for (i, v) in versions.iter().enumerate() {
        let kids: Vec<&str> = versions
            .iter()
            .filter(|c| c.parent.as_deref() == Some(v.id.as_str()))
            .map(|c| c.id.as_str())
            .collect();
        out[i]["children"] = json!(kids);
    }
    fn tree(id: &str, versions: &[Version]) -> Value {
        let v = versions.iter().find(|v| v.id == id);
        json!({
            "id": id,
            "status": v.map(|v| v.status),
            "children": versions
                .iter()
                .filter(|c| c.parent.as_deref() == Some(id))
                .map(|c| tree(&c.id, versions))
                .collect::<Vec<_>>(),
        })
    }
    let roots: Vec<Value> = versions
        .iter()
        .filter(|v| v.parent.is_none())
        .map(|v| tree(&v.id, &versions))
        .collect();
    let serving = ready.registry.serving().ok().map(|v| v.id);
    let log = ready.registry.serving_log().map_err(error)?;
    Ok(Json(json!({
        "object": "list",
        "serving": serving,
        "canary": ready.registry.canary().map(|v| v.id),
        "data": out,
        "tree": roots,
        "serving_log": log,
        "rollout": ready.rollout.status(),
    })))
}

/// Runs an operator action off the async runtime (it writes to SQLite).
async fn act<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, registry::Error> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(ApiError::internal)?
        .map_err(error)
}

/// `POST /admin/versions/{id}/promote`: the version serves every unpinned request
/// from now on (a canary is promoted early; a retired version returns).
pub async fn promote(
    State(st): State<SharedState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    bytes: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    auth::operator(&st, &headers)?;
    let rollout = ready(&st)?.rollout.clone();
    let req: ReasonRequest = body(&bytes, "{\"reason\": \"...\"}")?;
    let why = reason(req.reason, "operator promotion")?;
    let target = id.clone();
    let previous = act(move || rollout.promote(&target, "operator", &why)).await?;
    Ok(Json(json!({"serving": id, "previous": previous})))
}

/// `POST /admin/rollback`: to `to`, or to the last good version.
pub async fn rollback(
    State(st): State<SharedState>,
    headers: HeaderMap,
    bytes: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    auth::operator(&st, &headers)?;
    let rollout = ready(&st)?.rollout.clone();
    let req: RollbackRequest = body(&bytes, "{\"to\": \"NAME@vN\", \"reason\": \"...\"}")?;
    let why = reason(req.reason, "operator rollback")?;
    let (from, to) =
        act(move || rollout.rollback(req.to.as_deref(), "operator", &why, &json!({}))).await?;
    Ok(Json(json!({"serving": to, "previous": from})))
}

/// `POST /admin/versions/{id}/retire`.
pub async fn retire(
    State(st): State<SharedState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    bytes: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    auth::operator(&st, &headers)?;
    let ready = ready(&st)?;
    let rollout = ready.rollout.clone();
    let req: ReasonRequest = body(&bytes, "{\"reason\": \"...\"}")?;
    let why = reason(req.reason, "operator retirement")?;
    let target = id.clone();
    act(move || rollout.retire(&target, "operator", &why)).await?;
    let v = ready
        .registry
        .get(&id)
        .ok_or_else(|| error(registry::Error::Unknown(id)))?;
    Ok(Json(version_json(&v, ready)))
}

/// Parses unix seconds or an RFC 3339 time into unix milliseconds.
fn parse_time(t: &str) -> Option<i64> {
    let t = t.trim();
    if let Ok(secs) = t.parse::<f64>() {
        return (secs.is_finite() && secs.abs() < 1e13).then(|| (secs * 1000.0).floor() as i64);
    }
    let at = humantime::parse_rfc3339_weak(t).ok()?;
    let ms = at.duration_since(UNIX_EPOCH).ok()?.as_millis();
    i64::try_from(ms).ok()
}

/// `GET /admin/versions/at?time=T`: the version serving at `T` (unix seconds or
/// RFC 3339), how it came to serve, and its lineage down to the feedback ids each
/// ancestor trained on.
pub async fn at(
    State(st): State<SharedState>,
    headers: HeaderMap,
    Query(q): Query<AtQuery>,
) -> Result<Json<Value>, ApiError> {
    auth::operator(&st, &headers)?;
    let ready = ready(&st)?;
    let raw = q.time.ok_or_else(|| {
        ApiError::invalid(
            Some("time"),
            "time is required: unix seconds or an RFC 3339 time such as 2026-11-30T12:00:00Z",
        )
    })?;
    let ms = parse_time(&raw).ok_or_else(|| {
        ApiError::invalid(
            Some("time"),
            format!("cannot read time {raw:?}: give unix seconds or an RFC 3339 time such as 2026-11-30T12:00:00Z"),
        )
    })?;
    let entry = ready
        .registry
        .serving_at(ms)
        .map_err(error)?
        .ok_or_else(|| {
            ApiError::not_found(
                Some("time"),
                format!(
                    "no version of {} was serving at {raw}",
                    ready.registry.name()
                ),
            )
        })?;
    let store = ready.registry.store();
    let mut lineage = Vec::new();
    for v in ready.registry.lineage(&entry.version) {
        let feedback = store.consumed(&v.id).map_err(ApiError::internal)?;
        lineage.push(json!({
            "id": v.id,
            "parent": v.parent,
            "created": v.created,
            "status": v.status,
            "content_hash": v.content_hash,
            "feedback": feedback,
        }));
    }
    Ok(Json(json!({
        "time_ms": ms,
        "version": entry.version,
        "since_ms": entry.at_ms,
        "how": {"action": entry.action, "actor": entry.actor, "reason": entry.reason, "previous": entry.previous},
        "lineage": lineage,
    })))
}
