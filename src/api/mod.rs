//! The HTTP API: OpenAI-compatible chat, models, tokenization, health, metrics and
//! operator endpoints. This is the only module that knows HTTP and wire formats.

mod admin;
mod auth;
mod chat;
mod error;
mod feedback;
mod guard;
mod health;
mod json;
mod limit;
mod models;
mod moderations;
mod review;
pub mod state;
mod train;
mod users;
mod versions;
pub mod wire;

use std::time::Instant;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, patch, post};
use axum::Router;

pub use error::ApiError;
pub use state::{AppState, Ready, SharedState};

/// Every route, in one table.
pub mod routes {
    /// Chat completions.
    pub const CHAT: &str = "/v1/chat/completions";
    /// Versions that can serve.
    pub const MODELS: &str = "/v1/models";
    /// Text to token ids.
    pub const TOKENIZE: &str = "/v1/tokenize";
    /// Token ids to text.
    pub const DETOKENIZE: &str = "/v1/detokenize";
    /// Liveness.
    pub const HEALTH: &str = "/health";
    /// Readiness.
    pub const READY: &str = "/ready";
    /// Prometheus metrics.
    pub const METRICS: &str = "/metrics";
    /// Operator: create a user key.
    pub const ADMIN_KEYS: &str = "/admin/keys";
    /// Moderation with the safety cascade.
    pub const MODERATIONS: &str = "/v1/moderations";
    /// Operator: the human review queue.
    pub const ADMIN_REVIEW: &str = "/admin/review";
    /// Operator: decide one review item.
    pub const ADMIN_REVIEW_ITEM: &str = "/admin/review/{id}";
    /// Operator: reload the safety folder now.
    pub const ADMIN_SAFETY_RELOAD: &str = "/admin/safety/reload";
    /// Erase an end user's data.
    pub const USER_DATA: &str = "/v1/users/{user}/data";
    /// Operator: the audit log.
    pub const ADMIN_AUDIT: &str = "/admin/audit";
    /// Submit feedback on a completion.
    pub const FEEDBACK: &str = "/v1/feedback";
    /// One feedback item.
    pub const FEEDBACK_ITEM: &str = "/v1/feedback/{id}";
    /// Operator: feedback sources.
    pub const ADMIN_SOURCES: &str = "/admin/sources";
    /// Operator: one source.
    pub const ADMIN_SOURCE: &str = "/admin/sources/{id}";
    /// Operator: feedback items.
    pub const ADMIN_FEEDBACK: &str = "/admin/feedback";
    /// Operator: decide one feedback item.
    pub const ADMIN_FEEDBACK_ITEM: &str = "/admin/feedback/{id}";
    /// Operator: start a training run; list runs.
    pub const ADMIN_TRAIN: &str = "/admin/train";
    /// Operator: one training run.
    pub const ADMIN_TRAIN_RUN: &str = "/admin/train/{id}";
    /// Operator: versions, lineage, evaluations, rollout state.
    pub const ADMIN_VERSIONS: &str = "/admin/versions";
    /// Operator: the version serving at a time.
    pub const ADMIN_VERSIONS_AT: &str = "/admin/versions/at";
    /// Operator: make a version serve.
    pub const ADMIN_VERSION_PROMOTE: &str = "/admin/versions/{id}/promote";
    /// Operator: retire a version.
    pub const ADMIN_VERSION_RETIRE: &str = "/admin/versions/{id}/retire";
    /// Operator: roll back.
    pub const ADMIN_ROLLBACK: &str = "/admin/rollback";
}

/// The application router over `state`.
pub fn router(state: SharedState) -> Router {
    let limit = state.config.max_body_bytes;
    Router::new()
        .route(routes::CHAT, post(chat::chat_completions))
        .route(routes::MODELS, get(models::list))
        .route(routes::TOKENIZE, post(models::tokenize))
        .route(routes::DETOKENIZE, post(models::detokenize))
        .route(routes::HEALTH, get(health::health))
        .route(routes::READY, get(health::ready))
        .route(routes::METRICS, get(health::metrics))
        .route(routes::ADMIN_KEYS, post(admin::create_key))
        .route(routes::MODERATIONS, post(moderations::moderations))
        .route(routes::ADMIN_REVIEW, get(review::list))
        .route(routes::ADMIN_REVIEW_ITEM, post(review::decide))
        .route(routes::ADMIN_SAFETY_RELOAD, post(review::reload))
        .route(routes::USER_DATA, delete(users::erase))
        .route(routes::ADMIN_AUDIT, get(users::audit))
        .route(routes::FEEDBACK, post(feedback::submit))
        .route(routes::FEEDBACK_ITEM, get(feedback::get))
        .route(routes::ADMIN_SOURCES, get(feedback::sources))
        .route(routes::ADMIN_SOURCE, patch(feedback::patch_source))
        .route(routes::ADMIN_FEEDBACK, get(feedback::list))
        .route(routes::ADMIN_FEEDBACK_ITEM, post(feedback::decide))
        .route(routes::ADMIN_TRAIN, post(train::start).get(train::list))
        .route(routes::ADMIN_TRAIN_RUN, get(train::get))
        .route(routes::ADMIN_VERSIONS, get(versions::list))
        .route(routes::ADMIN_VERSIONS_AT, get(versions::at))
        .route(routes::ADMIN_VERSION_PROMOTE, post(versions::promote))
        .route(routes::ADMIN_VERSION_RETIRE, post(versions::retire))
        .route(routes::ADMIN_ROLLBACK, post(versions::rollback))
        .fallback(|| async { ApiError::not_found(None, "no such endpoint").into_response() })
        .method_not_allowed_fallback(|| async {
            let mut e = ApiError::invalid(None, "this endpoint does not accept that HTTP method");
            e.status = axum::http::StatusCode::METHOD_NOT_ALLOWED;
            e.into_response()
        })
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            limit::limit_body,
        ))
        .layer(middleware::from_fn_with_state(state.clone(), track))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(|_| {
            ApiError::internal("a request handler panicked").into_response()
        }))
        .with_state(state)
}

/// Counts requests by endpoint and status, and times them.
async fn track(State(st): State<SharedState>, req: Request, next: Next) -> Response {
    let endpoint = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched".to_string(), |p| p.as_str().to_string());
    let start = Instant::now();
    let resp = next.run(req).await;
    st.metrics
        .http_requests
        .with_label_values(&[&endpoint, resp.status().as_str()])
        .inc();
    st.metrics
        .request_duration
        .with_label_values(&[&endpoint])
        .observe(start.elapsed().as_secs_f64());
    resp
}
