//! `ApiError`: the one place HTTP status codes are chosen. Bodies are OpenAI-shaped:
//! `{"error": {"message", "type", "param", "code"}}`, and say how to fix the request.

use axum::extract::rejection::JsonRejection;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// An error answered to an HTTP client.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// What went wrong and what to do.
    pub message: String,
    /// OpenAI error type.
    pub kind: &'static str,
    /// The offending parameter, if one.
    pub param: Option<String>,
    /// A short machine-readable code.
    pub code: Option<&'static str>,
    /// Seconds to wait before retrying (429, 503).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub(super) fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
            retry_after: None,
        }
    }

    /// 400: the request is malformed or out of range.
    pub fn invalid(param: Option<&str>, message: impl Into<String>) -> Self {
        let mut e = Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message);
        e.param = param.map(str::to_string);
        e
    }

    /// 401: no valid credentials.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        let mut e = Self::new(StatusCode::UNAUTHORIZED, "authentication_error", message);
        e.code = Some("invalid_api_key");
        e
    }

    /// 403: valid credentials without the right.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "permission_error", message)
    }

    /// 404: unknown model or resource.
    pub fn not_found(param: Option<&str>, message: impl Into<String>) -> Self {
        let mut e = Self::new(StatusCode::NOT_FOUND, "not_found_error", message);
        e.param = param.map(str::to_string);
        e.code = Some("model_not_found");
        e
    }

    /// 409: the request conflicts with the resource's current state.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict_error", message)
    }

    /// 429: too many requests (queue full or rate limit).
    pub fn too_many(message: impl Into<String>, retry_after: u64) -> Self {
        let mut e = Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", message);
        e.retry_after = Some(retry_after);
        e
    }

    /// 503: not ready yet.
    pub fn unavailable(message: impl Into<String>) -> Self {
        let mut e = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "service_unavailable",
            message,
        );
        e.retry_after = Some(1);
        e
    }

    /// 500: our fault. The cause is logged, not sent.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!("internal error: {cause}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "something went wrong on our side; the error has been logged",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }});
        let mut resp = (self.status, axum::Json(body)).into_response();
        if let Some(s) = self.retry_after {
            if let Ok(v) = HeaderValue::from_str(&s.to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        resp
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        let status = r.status();
        let text = r.body_text();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            let mut e = Self::new(
                status,
                "invalid_request_error",
                "the request body is larger than the server accepts",
            );
            e.code = Some("body_too_large");
            return e;
        }
        match r {
            JsonRejection::MissingJsonContentType(_) => Self::invalid(
                None,
                "send the body as JSON with `Content-Type: application/json`",
            ),
            _ => Self::invalid(
                None,
                format!(
                    "the body is not valid JSON for this endpoint: {}",
                    redact_quoted(&text)
                ),
            ),
        }
    }
}

/// Replaces the contents of double-quoted strings in a parser message, so error
/// bodies never echo what a user wrote (field names, in backticks, stay).
fn redact_quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut inside = false;
    for c in text.chars() {
        if c == '"' {
            if inside {
                out.push_str("…\"");
            } else {
                out.push('"');
            }
            inside = !inside;
        } else if !inside {
            out.push(c);
        }
    }
    out
}
