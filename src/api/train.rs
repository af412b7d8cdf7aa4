//! Operator endpoints for the learner: start a training run (or a reproduction of a
//! version's run) and follow its progress.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth;
use super::error::ApiError;
use super::state::{Ready, SharedState};
use crate::learner::{Error, Learner, Overrides};

/// Body of `POST /admin/train` (optional).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainRequest {
    /// Re-run this version's manifest instead of training on new feedback, and
    /// report whether the adapter bytes are identical.
    #[serde(default)]
    reproduce: Option<String>,
    /// Learning rate for this run only (recorded in its manifest).
    #[serde(default)]
    learning_rate: Option<f64>,
    /// Step limit for this run only.
    #[serde(default)]
    max_steps: Option<usize>,
}

fn learner(st: &SharedState) -> Result<(&Ready, &Learner), ApiError> {
    let ready = st
        .ready
        .get()
        .ok_or_else(|| ApiError::unavailable("the model is still loading; retry shortly"))?;
    let learner = ready.learner.as_deref().ok_or_else(|| {
        ApiError::conflict("the learner is turned off ([learner] enabled = false)")
    })?;
    Ok((ready, learner))
}

fn error(e: Error) -> ApiError {
    match e {
        Error::Busy(_) | Error::NothingToTrain => ApiError::conflict(e.to_string()),
        Error::NotReproducible(m) => ApiError::not_found(Some("reproduce"), m),
        other => ApiError::internal(other),
    }
}

/// `POST /admin/train`: queues a run; answers 202 with its id.
pub async fn start(
    State(st): State<SharedState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    auth::operator(&st, &headers)?;
    let (_, learner) = learner(&st)?;
    // The body is optional: empty means "train on waiting feedback".
    let req: TrainRequest = if body.iter().all(u8::is_ascii_whitespace) {
        TrainRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::invalid(
                None,
                format!(
                    "body must be empty, {{\"reproduce\": \"NAME@vN\"}}, or \
                     {{\"learning_rate\": X, \"max_steps\": N}} (either optional): {e}"
                ),
            )
        })?
    };
    if let Some(lr) = req.learning_rate {
        if !(lr.is_finite() && lr > 0.0 && lr <= 10.0) {
            return Err(ApiError::invalid(
                Some("learning_rate"),
                "learning_rate must be a number in (0, 10]",
            ));
        }
    }
    if req.max_steps.is_some_and(|n| n == 0 || n > 10_000) {
        return Err(ApiError::invalid(
            Some("max_steps"),
            "max_steps must be 1 to 10000",
        ));
    }
    let overrides = Overrides {
        learning_rate: req.learning_rate,
        max_steps: req.max_steps,
    };
    let id = match &req.reproduce {
        Some(v) => learner.request_reproduction(v).map_err(error)?,
        None => learner
            .request_training("operator", overrides)
            .map_err(error)?,
    };
    let _ = st.store.audit_event(
        "operator",
        "train",
        Some(&id),
        &json!({"reproduce": req.reproduce, "overrides": overrides}),
    );
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"id": id, "status": "queued", "url": format!("/admin/train/{id}")})),
    ))
}

/// `GET /admin/train`: recent runs, newest first.
pub async fn list(
    State(st): State<SharedState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    auth::operator(&st, &headers)?;
    let runs = st.store.runs(100).map_err(ApiError::internal)?;
    let learner = st
        .ready
        .get()
        .and_then(|r| r.learner.as_deref())
        .map_or_else(
            || json!({"enabled": false}),
            |l| json!({"enabled": true, "prepared": l.is_prepared()}),
        );
    Ok(Json(
        json!({"object": "list", "data": runs, "learner": learner}),
    ))
}

/// `GET /admin/train/{id}`: one run's progress and outcome.
pub async fn get(
    State(st): State<SharedState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    auth::operator(&st, &headers)?;
    let run = st
        .store
        .run(&id)
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::not_found(Some("id"), "no training run with this id"))?;
    Ok(Json(json!(run)))
}
