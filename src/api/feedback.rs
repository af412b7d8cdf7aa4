//! Feedback endpoints: `POST /v1/feedback`, `GET /v1/feedback/{id}`, and the operator
//! views of sources and feedback.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::{self, Caller};
use super::error::ApiError;
use super::json::ApiJson;
use super::state::SharedState;
use crate::feedback::{Error, Kind, RatingValue, Submission};
use crate::storage::FeedbackRow;

/// `POST /v1/feedback`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedbackRequest {
    /// The chat completion's `id`.
    #[serde(alias = "id")]
    completion_id: String,
    /// `correction`, `rating` or `preference`.
    kind: String,
    /// Which choice a correction or rating is about (default 0).
    #[serde(default)]
    choice: Option<i64>,
    /// The answer it should have given.
    #[serde(default)]
    correction: Option<String>,
    /// `"up"`, `"down"`, `true`, `false`, or 1 to 5.
    #[serde(default)]
    rating: Option<RatingValue>,
    /// Preference: the better choice.
    #[serde(default)]
    chosen: Option<i64>,
    /// Preference: the worse choice.
    #[serde(default)]
    rejected: Option<i64>,
    /// Preference: every choice, best first.
    #[serde(default)]
    ranking: Option<Vec<i64>>,
    /// Why (free text).
    #[serde(default)]
    reason: Option<String>,
    /// The end user, as in chat requests.
    #[serde(default)]
    user: Option<String>,
}

fn index(v: i64, param: &str) -> Result<usize, ApiError> {
    usize::try_from(v).map_err(|_| {
        ApiError::invalid(
            Some(param),
            format!("{param} must be a choice index (0 or more)"),
        )
    })
}

fn kind(req: &FeedbackRequest) -> Result<Kind, ApiError> {
    let choice = index(req.choice.unwrap_or(0), "choice")?;
    match req.kind.as_str() {
        "correction" => Ok(Kind::Correction {
            choice,
            text: req.correction.clone().ok_or_else(|| {
                ApiError::invalid(
                    Some("correction"),
                    "a correction needs `correction`: the answer it should have given",
                )
            })?,
        }),
        "rating" => {
            let r = req.rating.as_ref().ok_or_else(|| {
                ApiError::invalid(
                    Some("rating"),
                    "a rating needs `rating`: \"up\", \"down\" or 1 to 5",
                )
            })?;
            Ok(Kind::Rating {
                choice,
                value: r
                    .normalised()
                    .map_err(|m| ApiError::invalid(Some("rating"), m))?,
            })
        }
        "preference" => {
            let ranking: Vec<usize> = match (&req.ranking, req.chosen, req.rejected) {
                (Some(r), None, None) => r
                    .iter()
                    .map(|&v| index(v, "ranking"))
                    .collect::<Result<_, _>>()?,
                (None, Some(c), Some(r)) => vec![index(c, "chosen")?, index(r, "rejected")?],
                _ => return Err(ApiError::invalid(
                    Some("preference"),
                    "a preference needs `chosen` and `rejected`, or a full `ranking` (best first)",
                )),
            };
            let distinct: std::collections::HashSet<usize> = ranking.iter().copied().collect();
            if ranking.len() < 2 || distinct.len() != ranking.len() {
                return Err(ApiError::invalid(
                    Some("preference"),
                    "a preference names at least two different choices",
                ));
            }
            Ok(Kind::Preference { ranking })
        }
        _ => Err(ApiError::invalid(
            Some("kind"),
            "kind must be correction, rating or preference",
        )),
    }
}

fn to_api(e: Error) -> ApiError {
    match e {
        Error::UnknownCompletion(_) => ApiError::not_found(Some("completion_id"), e.to_string()),
        Error::Invalid { param, message } => ApiError::invalid(Some(param), message),
        Error::TooLarge(param, _) => {
            let mut err = ApiError::invalid(Some(param), e.to_string());
            err.status = StatusCode::PAYLOAD_TOO_LARGE;
            err
        }
        Error::RateLimited(_) => ApiError::too_many(e.to_string(), 60),
        Error::Storage(s) => ApiError::internal(s),
    }
}

fn view(st: &SharedState, f: &FeedbackRow, operator: bool) -> Value {
    let source = st.store.source(&f.source).ok().flatten();
    let weight = st.feedback.weight(f, source.as_ref());
    let mut v = json!({
        "id": f.id,
        "object": "feedback",
        "kind": f.kind,
        "status": f.status,
        "weight": weight,
        "completion_id": f.completion_id,
        "version": f.version,
        "created_ms": f.created_ms,
    });
    if let Some(r) = &f.status_reason {
        v["reason"] = json!(r);
    }
    if operator {
        v["source"] = json!(f.source);
        v["reliability"] = json!(source.map(|s| s.reliability));
        v["diversity"] = json!(f.diversity);
        v["screening"] = json!(f.screening);
        v["text"] = json!(f.text);
        v["review_id"] = json!(f.review_id);
        v["decision"] = json!(f.decision);
    }
    v
}

/// `POST /v1/feedback`: `202` once the item is durably stored, with its status.
pub async fn submit(
    State(st): State<SharedState>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<FeedbackRequest>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let caller = auth::caller(&st, &headers)?;
    let kind = kind(&req)?;
    let sub = Submission {
        completion_id: req.completion_id.clone(),
        kind,
        reason: req.reason.clone(),
        source: caller.source().to_string(),
        user: req.user.clone(),
    };
    let fb = st.feedback.clone();
    let row = tokio::task::spawn_blocking(move || fb.submit(sub))
        .await
        .map_err(ApiError::internal)?
        .map_err(to_api)?;
    st.metrics
        .feedback
        .with_label_values(&[&row.kind, &row.status])
        .inc();
    if row.status == "quarantined" {
        let reason = row
            .status_reason
            .as_deref()
            .and_then(|r| r.split(':').next())
            .unwrap_or("other");
        st.metrics
            .feedback_quarantined
            .with_label_values(&[reason])
            .inc();
    }
    // Accepted ratings are live signals of the version that answered.
    if let (true, Some(value), Some(ready)) = (
        row.kind == "rating" && row.status == "accepted",
        row.value,
        st.ready.get(),
    ) {
        ready.rollout.signals().rating(&row.version, value);
    }
    refresh_gauges(&st);
    Ok((StatusCode::ACCEPTED, Json(view(&st, &row, false))))
}

fn refresh_gauges(st: &SharedState) {
    if let Ok(sources) = st.store.sources() {
        let mut bands = [0i64; 5];
        for s in sources {
            bands[((s.reliability * 5.0) as usize).min(4)] += 1;
        }
        for (i, n) in bands.iter().enumerate() {
            let label = format!("{:.1}-{:.1}", i as f64 / 5.0, (i + 1) as f64 / 5.0);
            st.metrics
                .source_reliability
                .with_label_values(&[&label])
                .set(*n);
        }
    }
    if let Ok(n) = st.store.pending_reviews() {
        st.metrics.review_queue_length.set(n);
    }
}

/// `GET /v1/feedback/{id}`: for the source that sent it, and operators.
pub async fn get(
    State(st): State<SharedState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let caller = auth::caller(&st, &headers)?;
    let not_found = || ApiError::not_found(Some("id"), format!("no feedback {id} for this caller"));
    let f = st
        .store
        .feedback(&id)
        .map_err(ApiError::internal)?
        .ok_or_else(not_found)?;
    let operator = caller == Caller::Operator;
    let own = f.source == caller.source() || f.source.starts_with(&format!("{}/", caller.source()));
    if !operator && !own {
        return Err(not_found());
    }
    Ok(Json(view(&st, &f, operator)))
}

/// `GET /admin/sources`.
pub async fn sources(
    State(st): State<SharedState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    auth::operator(&st, &headers)?;
    let list = st.store.sources().map_err(ApiError::internal)?;
    Ok(Json(json!({"object": "list", "data": list})))
}

/// `PATCH /admin/sources/{id}` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourcePatch {
    #[serde(default)]
    trusted: Option<bool>,
    #[serde(default)]
    banned: Option<bool>,
    #[serde(default)]
    notes: Option<String>,
}

/// `PATCH /admin/sources/{id}`: mark trusted or banned, add notes.
pub async fn patch_source(
    State(st): State<SharedState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    ApiJson(p): ApiJson<SourcePatch>,
) -> Result<Json<Value>, ApiError> {
    auth::operator(&st, &headers)?;
    if id.is_empty() || id.len() > 128 {
        return Err(ApiError::invalid(
            Some("id"),
            "a source id is 1-128 characters",
        ));
    }
    if p.notes.as_ref().is_some_and(|n| n.len() > 4096) {
        return Err(ApiError::invalid(
            Some("notes"),
            "notes are limited to 4096 bytes",
        ));
    }
    let notes = p.notes.as_deref().map(|n| st.privacy.anonymizer.scrub(n));
    st.store
        .update_source(
            &id,
            p.trusted,
            p.banned,
            notes.as_deref(),
            crate::feedback::reliability::initial(),
        )
        .map_err(ApiError::internal)?;
    let fb = st.feedback.clone();
    tokio::task::spawn_blocking(move || fb.recompute())
        .await
        .map_err(ApiError::internal)?
        .map_err(to_api)?;
    st.store
        .audit_event(
            "operator",
            "update_source",
            Some(&id),
            &json!({"trusted": p.trusted, "banned": p.banned}),
        )
        .map_err(ApiError::internal)?;
    refresh_gauges(&st);
    let s = st.store.source(&id).map_err(ApiError::internal)?;
    Ok(Json(json!(s)))
}

/// Query of `GET /admin/feedback`.
#[derive(Debug, Deserialize)]
pub struct FeedbackQuery {
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    limit: Option<usize>,
}

/// `GET /admin/feedback?status=accepted|quarantined|rejected`: items with their
/// current weight (any one source's share of the listed items capped).
pub async fn list(
    State(st): State<SharedState>,
    headers: HeaderMap,
    query: Result<Query<FeedbackQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    auth::operator(&st, &headers)?;
    let Query(q) =
        query.map_err(|_| ApiError::invalid(None, "query parameters: status=..., limit=N"))?;
    if let Some(s) = q.status.as_deref() {
        if !matches!(s, "accepted" | "quarantined" | "rejected") {
            return Err(ApiError::invalid(
                Some("status"),
                "status must be accepted, quarantined or rejected",
            ));
        }
    }
    let items = st
        .store
        .feedback_list(
            q.status.as_deref(),
            0,
            q.limit.unwrap_or(1000).clamp(1, 100_000),
        )
        .map_err(ApiError::internal)?;
    let capped = st.feedback.window_weights(&items).map_err(to_api)?;
    let data: Vec<Value> = items
        .iter()
        .map(|f| {
            let mut v = view(&st, f, true);
            v["window_weight"] = json!(capped.get(&f.id).copied().unwrap_or(0.0));
            v
        })
        .collect();
    Ok(Json(json!({"object": "list", "data": data})))
}

/// `POST /admin/feedback/{id}` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Decision {
    decision: String,
}

/// `POST /admin/feedback/{id}`: `approve` or `reject`; flows into reliability.
pub async fn decide(
    State(st): State<SharedState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    ApiJson(d): ApiJson<Decision>,
) -> Result<Json<Value>, ApiError> {
    auth::operator(&st, &headers)?;
    let approve = match d.decision.as_str() {
        "approve" => true,
        "reject" => false,
        _ => {
            return Err(ApiError::invalid(
                Some("decision"),
                "decision must be approve or reject",
            ))
        }
    };
    let fb = st.feedback.clone();
    let id2 = id.clone();
    let row = tokio::task::spawn_blocking(move || fb.decide(&id2, approve))
        .await
        .map_err(ApiError::internal)?
        .map_err(to_api)?
        .ok_or_else(|| ApiError::not_found(Some("id"), format!("no feedback {id}")))?;
    st.store
        .audit_event(
            "operator",
            "feedback_decision",
            Some(&id),
            &json!({"decision": d.decision}),
        )
        .map_err(ApiError::internal)?;
    refresh_gauges(&st);
    Ok(Json(view(&st, &row, true)))
}
