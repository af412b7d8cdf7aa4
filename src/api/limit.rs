//! The request-body limit, enforced so that clients can read the 413.
//!
//! axum's `DefaultBodyLimit` rejects an oversized body without reading it; hyper
//! then closes a connection with unread bytes in it, and a client still writing
//! its body sees "broken pipe" or "connection reset" instead of our error. Like
//! nginx's lingering close, this layer reads and discards an oversized body (up
//! to a bounded amount, for a bounded time) before answering, so the client gets
//! the `413` and its JSON explanation.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;

use super::error::ApiError;
use super::state::SharedState;

/// How long an oversized body is drained before the server gives up on it.
const DRAIN_FOR: Duration = Duration::from_secs(10);

/// Buffers the request body up to `max_body_bytes`; answers `413` past it.
pub async fn limit_body(State(st): State<SharedState>, req: Request, next: Next) -> Response {
    let limit = st.config.max_body_bytes;
    // Bodies far beyond the limit are not worth draining: the client is told at once.
    let drain_cap = limit.saturating_mul(8).max(8 << 20);
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > drain_cap) {
        return too_large();
    }
    let (parts, body) = req.into_parts();
    let mut stream = body.into_data_stream();
    let mut buf: Vec<u8> = Vec::new();
    let mut over = declared.is_some_and(|n| n > limit);
    let mut seen = 0usize;
    let read_all = async {
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|_| ())?;
            seen += chunk.len();
            if !over && buf.len() + chunk.len() > limit {
                over = true;
                buf = Vec::new();
            }
            if !over {
                buf.extend_from_slice(&chunk);
            }
            if seen > drain_cap {
                break;
            }
        }
        Ok::<(), ()>(())
    };
    match tokio::time::timeout(DRAIN_FOR, read_all).await {
        Ok(Ok(())) => {}
        Ok(Err(())) => {
            return ApiError::invalid(None, "the request body could not be read").into_response()
        }
        Err(_) if over => return too_large(),
        Err(_) => {
            let mut e = ApiError::invalid(None, "the request body did not arrive in time");
            e.status = StatusCode::REQUEST_TIMEOUT;
            return e.into_response();
        }
    }
    if over {
        return too_large();
    }
    next.run(Request::from_parts(parts, Body::from(buf))).await
}

fn too_large() -> Response {
    let mut e = ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "invalid_request_error",
        "the request body is larger than the server accepts",
    );
    e.code = Some("body_too_large");
    let mut resp = e.into_response();
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}
