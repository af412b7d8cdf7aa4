//! `GET /v1/models`, `POST /v1/tokenize`, `POST /v1/detokenize`.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use serde_json::{json, Value};

use super::auth;
use super::error::ApiError;
use super::json::ApiJson;
use super::state::{Ready, SharedState};
use super::wire::{Content, DetokenizeRequest, ModelEntry, TokenizeRequest};
use crate::model::ChatMessage;
use crate::registry::Status;

fn ready(st: &SharedState) -> Result<&Ready, ApiError> {
    st.ready
        .get()
        .ok_or_else(|| ApiError::unavailable("the model is still loading; retry shortly"))
}

fn check_model(st: &SharedState, r: &Ready, model: Option<&str>) -> Result<(), ApiError> {
    match model {
        Some(m) if r.registry.resolve(m, &st.config.deployment).is_none() => {
            Err(ApiError::not_found(
                Some("model"),
                format!("model {m:?} does not exist; GET /v1/models lists the versions"),
            ))
        }
        _ => Ok(()),
    }
}

/// The versions that can serve.
pub async fn list(
    State(st): State<SharedState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    auth::caller(&st, &headers)?;
    let r = ready(&st)?;
    let data: Vec<ModelEntry> = r
        .registry
        .list()
        .into_iter()
        .filter(|v| v.status != Status::Rejected)
        .map(|v| ModelEntry {
            id: v.id,
            object: "model",
            created: v.created,
            owned_by: "tether",
            parent: v.parent,
            status: v.status,
        })
        .collect();
    Ok(Json(json!({"object": "list", "data": data})))
}

/// Token ids of a text, or of messages rendered with the chat template.
pub async fn tokenize(
    State(st): State<SharedState>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<TokenizeRequest>,
) -> Result<Json<Value>, ApiError> {
    auth::caller(&st, &headers)?;
    let r = ready(&st)?;
    check_model(&st, r, req.model.as_deref())?;
    let m = &r.model;
    let ids = match (&req.text, &req.messages) {
        (Some(t), None) => m.tokenizer.encode(t),
        (None, Some(msgs)) => {
            let msgs: Vec<ChatMessage> = msgs
                .iter()
                .map(|w| match &w.content {
                    Some(Content::Text(t)) => Ok(ChatMessage::new(w.role.clone(), t.clone())),
                    _ => Err(ApiError::invalid(
                        Some("messages"),
                        "each message needs text content",
                    )),
                })
                .collect::<Result<_, _>>()?;
            m.encode_chat(&msgs)
        }
        _ => {
            return Err(ApiError::invalid(
                None,
                "send exactly one of `text` or `messages`",
            ))
        }
    }
    .map_err(|e| ApiError::invalid(None, e.to_string()))?;
    Ok(Json(
        json!({"tokens": ids, "count": ids.len(), "max_model_len": m.llama.config().context_length}),
    ))
}

/// Text of token ids.
pub async fn detokenize(
    State(st): State<SharedState>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<DetokenizeRequest>,
) -> Result<Json<Value>, ApiError> {
    auth::caller(&st, &headers)?;
    let r = ready(&st)?;
    check_model(&st, r, req.model.as_deref())?;
    let vocab = r.model.tokenizer.vocab_size();
    if let Some((i, bad)) = req
        .tokens
        .iter()
        .enumerate()
        .find(|(_, &t)| t as usize >= vocab)
    {
        return Err(ApiError::invalid(
            Some(&format!("tokens[{i}]")),
            format!("token id {bad} is outside the vocabulary of {vocab} tokens"),
        ));
    }
    let text = r
        .model
        .tokenizer
        .decode(&req.tokens, false)
        .map_err(|e| ApiError::invalid(Some("tokens"), e.to_string()))?;
    Ok(Json(json!({"text": text})))
}
