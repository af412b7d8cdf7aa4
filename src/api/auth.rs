//! Who is calling: API keys (each maps to a feedback source), the operator token, or
//! anonymous access when the configuration allows it; and per-source rate limits.

use std::time::Instant;

use axum::http::HeaderMap;
use sha2::{Digest, Sha256};

use super::error::ApiError;
use super::state::{AppState, Bucket};

/// The authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A user key, speaking for `source`.
    User {
        /// Feedback source id.
        source: String,
    },
    /// No key, and anonymous access is on.
    Anonymous,
    /// The operator token.
    Operator,
}

impl Caller {
    /// The feedback source this caller speaks for.
    pub fn source(&self) -> &str {
        match self {
            Caller::User { source } => source,
            Caller::Anonymous => "anonymous",
            Caller::Operator => "operator",
        }
    }
}

/// sha256 of a key, as stored.
pub fn hash_key(key: &str) -> String {
    Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn bearer(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    let Some(v) = headers.get(axum::http::header::AUTHORIZATION) else {
        return Ok(None);
    };
    let v = v
        .to_str()
        .map_err(|_| ApiError::unauthorized("the Authorization header is not valid text"))?;
    match v
        .strip_prefix("Bearer ")
        .or_else(|| v.strip_prefix("bearer "))
    {
        Some(k) if !k.trim().is_empty() => Ok(Some(k.trim())),
        _ => Err(ApiError::unauthorized("use `Authorization: Bearer KEY`")),
    }
}

/// Identifies the caller of a user endpoint.
pub fn caller(state: &AppState, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let Some(key) = bearer(headers)? else {
        return if state.config.allow_anonymous {
            Ok(Caller::Anonymous)
        } else {
            Err(ApiError::unauthorized(
                "an API key is required: send `Authorization: Bearer KEY` (operators create keys with POST /admin/keys)",
            ))
        };
    };
    if let Some(op) = state.config.operator_token.as_deref() {
        if constant_time_eq(op.as_bytes(), key.as_bytes()) {
            return Ok(Caller::Operator);
        }
    }
    if let Some(k) = state
        .config
        .keys
        .iter()
        .find(|k| constant_time_eq(k.key.as_bytes(), key.as_bytes()))
    {
        return Ok(Caller::User {
            source: k.source.clone(),
        });
    }
    match state.store.key_source(&hash_key(key)) {
        Ok(Some(source)) => Ok(Caller::User { source }),
        Ok(None) => Err(ApiError::unauthorized("the API key is not valid")),
        Err(e) => Err(ApiError::internal(e)),
    }
}

/// Requires the operator token: 401 without credentials, 403 with a user key.
pub fn operator(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    if state.config.operator_token.is_none() {
        return Err(ApiError::forbidden(
            "operator endpoints are disabled: set server.operator_token or TETHER_OPERATOR_TOKEN",
        ));
    }
    if bearer(headers)?.is_none() {
        return Err(ApiError::unauthorized(
            "operator endpoints need `Authorization: Bearer OPERATOR_TOKEN`",
        ));
    }
    match caller(state, headers)? {
        Caller::Operator => Ok(()),
        _ => Err(ApiError::forbidden("this key is not the operator token")),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Takes one request from `caller`'s bucket, or answers 429 with how long to wait.
pub fn rate_limit(state: &AppState, caller: &Caller) -> Result<(), ApiError> {
    let per_minute = state.config.rate_limit_per_minute;
    if per_minute == 0 || *caller == Caller::Operator {
        return Ok(());
    }
    let capacity = per_minute as f64;
    let refill = capacity / 60.0;
    let mut buckets = state.buckets.lock().unwrap_or_else(|e| e.into_inner());
    let now = Instant::now();
    let b = buckets
        .entry(caller.source().to_string())
        .or_insert(Bucket {
            tokens: capacity,
            at: now,
        });
    b.tokens = (b.tokens + (now - b.at).as_secs_f64() * refill).min(capacity);
    b.at = now;
    if b.tokens >= 1.0 {
        b.tokens -= 1.0;
        Ok(())
    } else {
        let wait = ((1.0 - b.tokens) / refill).ceil().max(1.0) as u64;
        Err(ApiError::too_many(
            format!("rate limit of {per_minute} requests per minute reached for this key; retry in {wait} s"),
            wait,
        ))
    }
}
