//! `POST /v1/moderations`: OpenAI-compatible moderation running the same cascade
//! that guards chat (input direction).

use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use rand::distr::{Alphanumeric, SampleString};
use serde_json::{json, Value};

use super::auth;
use super::error::ApiError;
use super::json::ApiJson;
use super::state::SharedState;
use super::wire::{ModerationInput, ModerationItem, ModerationRequest};
use crate::safety::{offline, Direction};

/// Most texts in one request.
const MAX_INPUTS: usize = 256;

/// The handler.
pub async fn moderations(
    State(st): State<SharedState>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<ModerationRequest>,
) -> Result<Json<Value>, ApiError> {
    let caller = auth::caller(&st, &headers)?;
    auth::rate_limit(&st, &caller)?;
    let safety = st
        .safety
        .as_ref()
        .ok_or_else(|| ApiError::unavailable("safety checks are turned off on this server"))?;
    let texts: Vec<String> = match req.input {
        ModerationInput::One(t) => vec![t],
        ModerationInput::Many(items) => items
            .into_iter()
            .enumerate()
            .map(|(i, item)| match item {
                ModerationItem::Text(t) => Ok(t),
                ModerationItem::Part(p) if p.kind == "text" => p.text.ok_or_else(|| {
                    ApiError::invalid(
                        Some(&format!("input[{i}].text")),
                        "a text part needs `text`",
                    )
                }),
                ModerationItem::Part(_) => Err(ApiError::invalid(
                    Some(&format!("input[{i}]")),
                    "only text inputs are supported",
                )),
            })
            .collect::<Result<_, _>>()?,
    };
    if texts.is_empty() || texts.len() > MAX_INPUTS {
        return Err(ApiError::invalid(
            Some("input"),
            format!("input must hold 1 to {MAX_INPUTS} texts"),
        ));
    }
    let cascade = safety.current();
    let safety = safety.clone();
    let results = tokio::task::spawn_blocking(move || {
        texts
            .iter()
            .map(|t| {
                let v = safety.check_with(&cascade, t, Direction::Input, true);
                let mut m = serde_json::to_value(offline::moderate(
                    &cascade,
                    &v.assessment.scores,
                    Direction::Input,
                ))
                .unwrap_or(Value::Null);
                m["action"] = v.decision.action.name().into();
                m
            })
            .collect::<Vec<Value>>()
    })
    .await
    .map_err(ApiError::internal)?;
    Ok(Json(json!({
        "id": format!("modr-{}", Alphanumeric.sample_string(&mut rand::rng(), 24)),
        "model": "tether-safety",
        "results": results,
    })))
}
