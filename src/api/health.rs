//! `GET /health` (liveness), `GET /ready` (503 until the model is loaded), `GET /metrics`.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::state::SharedState;

/// Always 200 while the process serves HTTP.
pub async fn health() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// 200 with the serving version once the model is loaded, else 503.
pub async fn ready(State(st): State<SharedState>) -> Response {
    match st.ready.get().and_then(|r| r.registry.serving().ok()) {
        Some(v) => Json(json!({"status": "ready", "version": v.id})).into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "loading"})),
        )
            .into_response(),
    }
}

/// Prometheus text format.
pub async fn metrics(State(st): State<SharedState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        st.metrics.render(),
    )
        .into_response()
}
