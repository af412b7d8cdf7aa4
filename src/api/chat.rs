//! `POST /v1/chat/completions`: validation, version resolution, submission to the
//! engine, and the JSON or server-sent-event answer.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use rand::distr::{Alphanumeric, SampleString};

use super::auth;
use super::error::ApiError;
use super::guard::{self, Guard, Step, StreamCheck};
use super::json::ApiJson;
use super::state::{Cached, Ready, SharedState};
use super::wire::*;
use crate::engine::{Event, Request, SubmitError};
use crate::model::{
    ChatMessage, FinishReason, LoadedModel, SamplingParams, Tap, TokenLogprob, Tokenizer,
};
use crate::privacy::consent;
use crate::registry::Version;
use crate::storage::now_unix;

/// A validated request, ready for the engine.
struct Plan {
    prompt: Vec<u32>,
    params: SamplingParams,
    n: usize,
    stream: bool,
    include_usage: bool,
    cache_key: Option<String>,
}

/// Who asked, and what the conversation log needs at the end.
struct Meta {
    id: String,
    version: String,
    /// The key's source (never the raw end-user id).
    source: String,
    /// Salted hash of the request's `user`, for erasure.
    user_hash: Option<String>,
    /// Log this conversation (consent given and sampled).
    log: bool,
    started: Instant,
    /// The messages as the model saw them (after any safety redaction).
    messages: Vec<ChatMessage>,
    input_report: Option<SafetyReport>,
}

impl Meta {
    /// Records the completion id (before any answer is sent).
    fn record(&self, st: &SharedState, n: usize, prompt_tokens: usize) -> Result<(), ApiError> {
        st.store
            .insert_completion(
                &self.id,
                &self.version,
                &self.source,
                self.user_hash.as_deref(),
                n,
                prompt_tokens,
            )
            .map_err(ApiError::internal)
    }

    /// Keeps the prompt and answers in memory for feedback, records the version's
    /// live signals (`from_model`: the answers are the model's, not the policy's),
    /// and logs the finished conversation when consented and sampled.
    fn log(
        &self,
        st: &SharedState,
        answers: &[String],
        outputs: &[Option<SafetyReport>],
        tokens: (usize, usize),
        from_model: bool,
    ) {
        let (prompt_tokens, completion_tokens) = tokens;
        if let (true, Some(ready)) = (from_model, st.ready.get()) {
            let flagged: Vec<bool> = outputs.iter().map(Option::is_some).collect();
            ready
                .rollout
                .answered(&self.version, answers, &flagged, &self.messages);
        }
        st.feedback.contexts.insert(
            self.id.clone(),
            Arc::new(crate::feedback::Context {
                messages: self.messages.clone(),
                answers: answers.to_vec(),
            }),
        );
        if !self.log {
            return;
        }
        let flagged = self.input_report.is_some() || outputs.iter().any(Option::is_some);
        let safety = serde_json::json!({"input": self.input_report, "output": outputs});
        st.privacy.log(
            &st.store,
            &crate::privacy::conversations::Entry {
                completion_id: &self.id,
                source: &self.source,
                user_hash: self.user_hash.as_deref(),
                version: &self.version,
                messages: &self.messages,
                answers,
                safety,
                flagged,
                latency: self.started.elapsed(),
                prompt_tokens,
                completion_tokens,
            },
        );
        st.metrics.conversations_logged.inc();
    }
}

fn messages(req: &ChatRequest) -> Result<Vec<ChatMessage>, ApiError> {
    if req.messages.is_empty() {
        return Err(ApiError::invalid(
            Some("messages"),
            "messages must contain at least one message",
        ));
    }
    req.messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let role = match m.role.as_str() {
                "system" | "developer" => "system",
                "user" => "user",
                "assistant" => "assistant",
                _ => {
                    return Err(ApiError::invalid(
                        Some(&format!("messages[{i}].role")),
                        format!("messages[{i}] has an unsupported role; use system, developer, user or assistant"),
                    ))
                }
            };
            let content = match &m.content {
                Some(Content::Text(t)) => t.clone(),
                Some(Content::Parts(parts)) => {
                    let mut text = String::new();
                    for p in parts {
                        match (p.kind.as_str(), &p.text) {
                            ("text", Some(t)) => text.push_str(t),
                            _ => {
                                return Err(ApiError::invalid(
                                    Some(&format!("messages[{i}].content")),
                                    "only text content parts are supported",
                                ))
                            }
                        }
                    }
                    text
                }
                None => {
                    return Err(ApiError::invalid(
                        Some(&format!("messages[{i}].content")),
                        format!("messages[{i}] has no content"),
                    ))
                }
            };
            Ok(ChatMessage::new(role, content))
        })
        .collect()
}

fn plan(
    st: &SharedState,
    ready: &Ready,
    version: &Version,
    req: &ChatRequest,
    msgs: &[ChatMessage],
    safety_generation: Option<u64>,
) -> Result<Plan, ApiError> {
    let temperature = req.temperature.unwrap_or(st.config.default_temperature);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::invalid(
            Some("temperature"),
            "temperature must be between 0 and 2",
        ));
    }
    let n = req.n.unwrap_or(1);
    if n == 0 || n > st.config.max_n as u64 {
        return Err(ApiError::invalid(
            Some("n"),
            format!("n must be between 1 and {}", st.config.max_n),
        ));
    }
    let top_logprobs = req.top_logprobs.unwrap_or(0);
    let logprobs = req.logprobs.unwrap_or(false);
    if top_logprobs > 20 {
        return Err(ApiError::invalid(
            Some("top_logprobs"),
            "top_logprobs must be between 0 and 20",
        ));
    }
    if top_logprobs > 0 && !logprobs {
        return Err(ApiError::invalid(
            Some("top_logprobs"),
            "top_logprobs needs logprobs: true",
        ));
    }
    let stop = match &req.stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s.clone()],
        Some(Stop::Many(v)) => v.clone(),
    };
    if stop.len() > 4 || stop.iter().any(String::is_empty) {
        return Err(ApiError::invalid(
            Some("stop"),
            "stop takes up to 4 non-empty strings",
        ));
    }
    let model = &ready.model;
    let text = model
        .template
        .render(msgs, true)
        .map_err(|e| ApiError::invalid(Some("messages"), e.to_string()))?;
    let prompt = model
        .tokenizer
        .encode_prompt(&text)
        .map_err(|e| ApiError::invalid(Some("messages"), e.to_string()))?;
    let context = model.llama.config().context_length;
    if prompt.len() >= context {
        return Err(ApiError::invalid(
            Some("messages"),
            format!(
                "the prompt is {} tokens but the model's context is {context} tokens; shorten the conversation",
                prompt.len()
            ),
        ));
    }
    let room = context - prompt.len();
    let max_tokens = match req.max_completion_tokens.or(req.max_tokens) {
        Some(0) => return Err(ApiError::invalid(Some("max_tokens"), "max_tokens must be at least 1")),
        Some(m) if m as usize > room => {
            return Err(ApiError::invalid(
                Some("max_tokens"),
                format!(
                    "max_tokens {m} plus the prompt's {} tokens exceed the model's context of {context} tokens; \
                     lower max_tokens to at most {room} or shorten the prompt",
                    prompt.len()
                ),
            ))
        }
        Some(m) => m as usize,
        None => st.config.default_max_tokens.min(room),
    };
    let params = SamplingParams {
        temperature,
        top_p: req.top_p,
        top_k: req.top_k,
        repetition_penalty: req.repetition_penalty.unwrap_or(1.0),
        seed: req.seed,
        max_tokens,
        stop,
        logprobs,
        top_logprobs: top_logprobs as usize,
        ..SamplingParams::default()
    };
    params
        .validate()
        .map_err(|e| ApiError::invalid(None, e.to_string()))?;
    let stream = req.stream.unwrap_or(false);
    let deterministic = temperature == 0.0 || req.seed.is_some();
    let cache_key = (!stream && deterministic && st.config.response_cache_bytes > 0).then(|| {
        format!(
            "{}\n{:?}\n{:?}\n{}\n{:?}",
            version.id, prompt, params, n, safety_generation
        )
    });
    Ok(Plan {
        prompt,
        params,
        n: n as usize,
        stream,
        include_usage: req.stream_options.as_ref().is_some_and(|o| o.include_usage),
        cache_key,
    })
}

fn new_id() -> String {
    format!(
        "chatcmpl-{}",
        Alphanumeric.sample_string(&mut rand::rng(), 24)
    )
}

fn finish_str(r: FinishReason) -> String {
    match r {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
    }
    .to_string()
}

fn wire_logprob(tok: &Tokenizer, lp: &TokenLogprob) -> TokenLogprobWire {
    let text = |id: u32| tok.decode(&[id], false).unwrap_or_default();
    let t = text(lp.token);
    TokenLogprobWire {
        bytes: t.as_bytes().to_vec(),
        token: t,
        logprob: lp.logprob,
        top_logprobs: lp
            .top
            .iter()
            .map(|&(id, l)| {
                let t = text(id);
                TopLogprob {
                    bytes: t.as_bytes().to_vec(),
                    token: t,
                    logprob: l,
                }
            })
            .collect(),
    }
}

fn with_version(mut resp: Response, version: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(version) {
        resp.headers_mut().insert("x-tether-version", v);
    }
    resp
}

/// The handler.
pub async fn chat_completions(
    State(st): State<SharedState>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<ChatRequest>,
) -> Result<Response, ApiError> {
    let caller = auth::caller(&st, &headers)?;
    auth::rate_limit(&st, &caller)?;
    let ready = st
        .ready
        .get()
        .ok_or_else(|| ApiError::unavailable("the model is still loading; retry shortly"))?;
    let version = ready
        .rollout
        .route(&req.model, &st.config.deployment)
        .ok_or_else(|| {
            ApiError::not_found(
                Some("model"),
                format!(
                "model {:?} does not exist; use {:?}, {:?} or a version listed by GET /v1/models",
                req.model,
                st.config.deployment,
                ready.registry.name()
            ),
            )
        })?;
    let mut msgs = messages(&req)?;
    let guard = Guard::new(&st);
    let generation = guard.as_ref().map(Guard::generation);
    let mut plan = plan(&st, ready, &version, &req, &msgs, generation)?;
    let id = new_id();
    let source = caller.source().to_string();
    let user_hash = req.user.as_deref().map(|u| st.privacy.user_hash(u));
    let log = consents(&st, &caller, &headers)? && st.privacy.sampled();

    // Reflexes on the prompt, before the model sees it.
    let started = Instant::now();
    let mut input_report = None;
    let mut withheld = None;
    if let Some(g) = &guard {
        let check = g.check_input(&mut msgs);
        if check.redacted {
            plan = self::plan(&st, ready, &version, &req, &msgs, generation)?;
        }
        input_report = check.report;
        if let (Some(e), Some(r)) = (&check.escalation, input_report.as_mut()) {
            r.review_id = guard::enqueue(&st, &id, user_hash.as_deref(), e);
        }
        withheld = check.withhold;
    }
    let meta = Meta {
        id: id.clone(),
        version: version.id.clone(),
        source: source.clone(),
        user_hash: user_hash.clone(),
        log,
        started,
        messages: msgs,
        input_report: input_report.clone(),
    };
    if let Some(reply) = withheld {
        st.metrics.prompts_withheld.inc();
        meta.record(&st, plan.n, 0)?;
        finish_record(&st, &id, 0, &vec!["content_filter".to_string(); plan.n]);
        meta.log(
            &st,
            &vec![reply.clone(); plan.n],
            &vec![None; plan.n],
            (0, 0),
            false,
        );
        let resp = filtered(&id, &version.id, &plan, reply, input_report);
        return Ok(with_version(resp, &version.id));
    }

    if let Some(key) = &plan.cache_key {
        if let Some(hit) = st.cache.get(key) {
            st.metrics.response_cache.with_label_values(&["hit"]).inc();
            let mut body: ChatCompletion = (*hit.response).clone();
            body.id = id.clone();
            body.created = now_unix();
            body.safety = input_report;
            meta.record(&st, plan.n, plan.prompt.len())?;
            let reasons: Vec<String> = body
                .choices
                .iter()
                .map(|c| c.finish_reason.clone())
                .collect();
            finish_record(&st, &id, body.usage.completion_tokens, &reasons);
            let answers: Vec<String> = body
                .choices
                .iter()
                .map(|c| c.message.content.clone())
                .collect();
            let outputs: Vec<Option<SafetyReport>> =
                body.choices.iter().map(|c| c.safety.clone()).collect();
            meta.log(
                &st,
                &answers,
                &outputs,
                (body.usage.prompt_tokens, body.usage.completion_tokens),
                true,
            );
            return Ok(with_version(axum::Json(body).into_response(), &hit.version));
        }
        st.metrics.response_cache.with_label_values(&["miss"]).inc();
    }

    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    ready
        .engine
        .submit(Request {
            prompt: plan.prompt.clone(),
            params: plan.params.clone(),
            n: plan.n,
            adapter: ready.registry.adapter(&version),
            version: version.id.clone(),
            deadline: Instant::now() + Duration::from_secs(st.config.request_timeout_secs),
            events: tx,
            tap_layer: guard.as_ref().and_then(|g| {
                let c = ready.model.llama.config();
                g.tap_layer(c.num_layers, c.hidden_size)
            }),
        })
        .map_err(|e| match e {
            SubmitError::QueueFull(_) => ApiError::too_many(format!("{e}; retry in a moment"), 1),
            SubmitError::Stopped => ApiError::internal(e),
        })?;
    meta.record(&st, plan.n, plan.prompt.len())?;

    if plan.stream {
        let stream = stream_events(st.clone(), ready.model.clone(), meta, plan, guard, rx);
        let sse = Sse::new(stream).keep_alive(KeepAlive::default());
        return Ok(with_version(sse.into_response(), &version.id));
    }
    let mut body = collect(
        &st,
        &ready.model.tokenizer,
        &meta,
        &plan,
        guard.as_ref(),
        rx,
    )
    .await?;
    if let Some(key) = plan.cache_key {
        st.cache.insert(
            key,
            Cached {
                response: Arc::new(body.clone()),
                version: version.id.clone(),
            },
        );
    }
    body.safety = input_report;
    Ok(with_version(axum::Json(body).into_response(), &version.id))
}

/// The answer to a request whose prompt the policy withheld from the model.
fn filtered(
    id: &str,
    version: &str,
    plan: &Plan,
    reply: String,
    report: Option<SafetyReport>,
) -> Response {
    let created = now_unix();
    let usage = Usage {
        prompt_tokens: 0,
        completion_tokens: 0,
        total_tokens: 0,
    };
    if !plan.stream {
        let choices = (0..plan.n)
            .map(|index| Choice {
                index,
                message: AssistantMessage {
                    role: "assistant",
                    content: reply.clone(),
                },
                logprobs: None,
                finish_reason: "content_filter".into(),
                safety: None,
            })
            .collect();
        let body = ChatCompletion {
            id: id.to_string(),
            object: "chat.completion",
            created,
            model: version.to_string(),
            choices,
            usage,
            safety: report,
        };
        return axum::Json(body).into_response();
    }
    let chunk = |choices: Vec<ChunkChoice>, usage: Option<Usage>| {
        let c = ChatChunk {
            id: id.to_string(),
            object: "chat.completion.chunk",
            created,
            model: version.to_string(),
            choices,
            usage,
        };
        Ok::<_, Infallible>(SseEvent::default().data(serde_json::to_string(&c).unwrap_or_default()))
    };
    let mut events = Vec::new();
    for index in 0..plan.n {
        events.push(chunk(
            vec![ChunkChoice {
                index,
                delta: Delta {
                    role: Some("assistant"),
                    content: Some(reply.clone()),
                },
                logprobs: None,
                finish_reason: Some("content_filter".into()),
                safety: report.clone(),
            }],
            None,
        ));
    }
    if plan.include_usage {
        events.push(chunk(Vec::new(), Some(usage)));
    }
    events.push(Ok(SseEvent::default().data("[DONE]")));
    Sse::new(futures_util::stream::iter(events)).into_response()
}

/// Whether this request's conversation may be logged: the key's default (or the
/// server's), overridden by the `x-tether-log` header.
fn consents(
    st: &SharedState,
    caller: &auth::Caller,
    headers: &HeaderMap,
) -> Result<bool, ApiError> {
    let default = st
        .config
        .keys
        .iter()
        .find(|k| k.source == caller.source())
        .and_then(|k| k.consent)
        .unwrap_or(st.privacy.config.consent);
    let header = headers
        .get(consent::HEADER)
        .map(|v| v.to_str().unwrap_or("invalid"));
    consent::allowed(default, header)
        .map_err(|e| ApiError::invalid(Some(consent::HEADER), e.to_string()))
}

fn finish_record(st: &SharedState, id: &str, completion_tokens: usize, reasons: &[String]) {
    if let Err(e) = st
        .store
        .finish_completion(id, completion_tokens, &reasons.join(","))
    {
        tracing::error!("recording completion {id}: {e}");
    }
}

fn failure(message: String) -> ApiError {
    if message.contains("timed out") {
        let mut e = ApiError::unavailable(message);
        e.status = axum::http::StatusCode::GATEWAY_TIMEOUT;
        e.kind = "timeout";
        e
    } else {
        ApiError::internal(message)
    }
}

async fn collect(
    st: &SharedState,
    tok: &Tokenizer,
    meta: &Meta,
    plan: &Plan,
    guard: Option<&Guard>,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<Event>,
) -> Result<ChatCompletion, ApiError> {
    let mut texts = vec![String::new(); plan.n];
    let mut lps: Vec<Vec<TokenLogprobWire>> = vec![Vec::new(); plan.n];
    let mut reasons: Vec<Option<FinishReason>> = vec![None; plan.n];
    let mut states: Vec<Option<Tap>> = vec![None; plan.n];
    let mut completion_tokens = 0;
    while reasons.iter().any(Option::is_none) {
        match rx.recv().await {
            Some(Event::Token {
                choice,
                text,
                logprob,
                state,
                ..
            }) => {
                texts[choice].push_str(&text);
                if state.is_some() {
                    states[choice] = state;
                }
                if let Some(lp) = logprob {
                    lps[choice].push(wire_logprob(tok, &lp));
                }
            }
            Some(Event::Finished {
                choice,
                reason,
                completion_tokens: c,
                text,
            }) => {
                texts[choice].push_str(&text);
                reasons[choice] = Some(reason);
                completion_tokens += c;
            }
            Some(Event::Failed(m)) => return Err(failure(m)),
            None => return Err(ApiError::internal("the engine dropped a request")),
        }
    }
    let mut reasons: Vec<String> = reasons
        .into_iter()
        .map(|r| finish_str(r.unwrap_or(FinishReason::Stop)))
        .collect();
    // Reflexes on the answers.
    let mut reports: Vec<Option<SafetyReport>> = vec![None; plan.n];
    if let Some(g) = guard {
        for i in 0..plan.n {
            let check = g.check_output(&texts[i], states[i].as_ref());
            texts[i] = check.content;
            if check.filtered {
                reasons[i] = "content_filter".into();
                lps[i].clear();
            }
            reports[i] = check.report;
            if let (Some(e), Some(r)) = (&check.escalation, reports[i].as_mut()) {
                r.review_id = guard::enqueue(st, &meta.id, meta.user_hash.as_deref(), e);
            }
        }
    }
    finish_record(st, &meta.id, completion_tokens, &reasons);
    meta.log(
        st,
        &texts,
        &reports,
        (plan.prompt.len(), completion_tokens),
        true,
    );
    let choices = texts
        .into_iter()
        .zip(lps)
        .zip(reasons)
        .zip(reports)
        .enumerate()
        .map(|(index, (((content, lp), reason), safety))| Choice {
            index,
            message: AssistantMessage {
                role: "assistant",
                content,
            },
            logprobs: plan
                .params
                .logprobs
                .then_some(ChoiceLogprobs { content: lp }),
            finish_reason: reason,
            safety,
        })
        .collect();
    Ok(ChatCompletion {
        id: meta.id.clone(),
        object: "chat.completion",
        created: now_unix(),
        model: meta.version.clone(),
        choices,
        usage: Usage {
            prompt_tokens: plan.prompt.len(),
            completion_tokens,
            total_tokens: plan.prompt.len() + completion_tokens,
        },
        safety: None,
    })
}

/// State of one SSE stream.
struct StreamState {
    st: SharedState,
    /// The loaded model, for its tokenizer (shared, never cloned per request).
    model: Arc<LoadedModel>,
    id: String,
    version: String,
    meta: Meta,
    /// Text delivered per choice (for the conversation log).
    texts: Vec<String>,
    created: i64,
    n: usize,
    logprobs: bool,
    include_usage: bool,
    prompt_tokens: usize,
    completion_tokens: usize,
    /// Tokens seen per choice (for choices cut before the engine finishes them).
    tokens: Vec<usize>,
    reasons: Vec<Option<String>>,
    guard: Option<Guard>,
    checks: Vec<StreamCheck>,
    rx: tokio::sync::mpsc::UnboundedReceiver<Event>,
    out: VecDeque<SseEvent>,
    done: bool,
}

impl StreamState {
    fn chunk(&self, choices: Vec<ChunkChoice>, usage: Option<Usage>) -> SseEvent {
        let c = ChatChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk",
            created: self.created,
            model: self.version.clone(),
            choices,
            usage,
        };
        SseEvent::default().data(serde_json::to_string(&c).unwrap_or_default())
    }

    fn content(&mut self, choice: usize, text: String, lps: Vec<TokenLogprobWire>) {
        let lp = (self.logprobs && !lps.is_empty()).then_some(ChoiceLogprobs { content: lps });
        if text.is_empty() && lp.is_none() {
            return;
        }
        self.texts[choice].push_str(&text);
        let e = self.chunk(
            vec![ChunkChoice {
                index: choice,
                delta: Delta {
                    role: None,
                    content: Some(text),
                },
                logprobs: lp,
                finish_reason: None,
                safety: None,
            }],
            None,
        );
        self.out.push_back(e);
    }

    fn end_choice(
        &mut self,
        choice: usize,
        reason: String,
        tail: Option<String>,
        report: Option<SafetyReport>,
    ) {
        self.reasons[choice] = Some(reason.clone());
        if let Some(t) = &tail {
            self.texts[choice].push_str(t);
        }
        let e = self.chunk(
            vec![ChunkChoice {
                index: choice,
                delta: Delta {
                    role: None,
                    content: tail.filter(|t| !t.is_empty()),
                },
                logprobs: None,
                finish_reason: Some(reason),
                safety: report,
            }],
            None,
        );
        self.out.push_back(e);
        if self.reasons.iter().all(Option::is_some) {
            self.finish();
        }
    }

    /// Runs the safety check of `choice` and delivers or cuts. True if cut. The
    /// `last` check delivers everything left.
    fn check(&mut self, choice: usize, last: bool) -> bool {
        let Some(g) = self.guard.clone() else {
            return false;
        };
        let (step, escalation) = self.checks[choice].check(&g, last);
        if let Some(e) = escalation {
            let review_id = guard::enqueue(&self.st, &self.id, self.meta.user_hash.as_deref(), &e);
            if let Some(r) = self.checks[choice].report.as_mut() {
                r.review_id = review_id;
            }
        }
        match step {
            Step::Emit(text, lps) => {
                self.content(choice, text, lps);
                false
            }
            Step::Cut { tail } => {
                let report = self.checks[choice].report.clone();
                self.end_choice(choice, "content_filter".into(), tail, report);
                true
            }
        }
    }

    fn on_token(
        &mut self,
        choice: usize,
        text: String,
        lp: Option<TokenLogprobWire>,
        state: Option<Tap>,
    ) {
        self.tokens[choice] += 1;
        let Some(g) = &self.guard else {
            self.content(choice, text, lp.into_iter().collect());
            return;
        };
        if self.checks[choice].cut {
            return;
        }
        let chunk_chars = g.stream().chunk_chars;
        self.checks[choice].push(&text, lp, state);
        if self.checks[choice].due(chunk_chars) {
            self.check(choice, false);
        }
    }

    fn on_finished(&mut self, choice: usize, reason: FinishReason, tokens: usize, text: String) {
        if self.guard.is_none() {
            self.completion_tokens += tokens;
            self.reasons[choice] = Some(finish_str(reason));
            self.end_choice(choice, finish_str(reason), Some(text), None);
            return;
        }
        if self.checks[choice].cut {
            self.completion_tokens += tokens.saturating_sub(self.tokens[choice]);
            return;
        }
        self.completion_tokens += tokens;
        self.tokens[choice] = tokens;
        self.checks[choice].push(&text, None, None);
        if !self.check(choice, true) {
            let report = self.checks[choice].report.clone();
            self.end_choice(choice, finish_str(reason), None, report);
        }
    }

    fn finish(&mut self) {
        // Choices cut early: count the tokens they produced.
        for (i, c) in self.checks.iter().enumerate() {
            if c.cut {
                self.completion_tokens += self.tokens[i];
            }
        }
        let reasons: Vec<String> = self
            .reasons
            .iter()
            .map(|r| r.clone().unwrap_or_default())
            .collect();
        finish_record(&self.st, &self.id, self.completion_tokens, &reasons);
        let outputs: Vec<Option<SafetyReport>> =
            self.checks.iter().map(|c| c.report.clone()).collect();
        self.meta.log(
            &self.st,
            &self.texts,
            &outputs,
            (self.prompt_tokens, self.completion_tokens),
            true,
        );
        if self.include_usage {
            let usage = Usage {
                prompt_tokens: self.prompt_tokens,
                completion_tokens: self.completion_tokens,
                total_tokens: self.prompt_tokens + self.completion_tokens,
            };
            let e = self.chunk(Vec::new(), Some(usage));
            self.out.push_back(e);
        }
        self.out.push_back(SseEvent::default().data("[DONE]"));
        self.done = true;
    }
}

fn stream_events(
    st: SharedState,
    model: Arc<LoadedModel>,
    meta: Meta,
    plan: Plan,
    guard: Option<Guard>,
    rx: tokio::sync::mpsc::UnboundedReceiver<Event>,
) -> impl futures_util::Stream<Item = Result<SseEvent, Infallible>> {
    let probe_min_rows = guard.as_ref().and_then(|g| {
        let c = model.llama.config();
        g.probe_min_rows(c.num_layers, c.hidden_size)
    });
    let mut state = StreamState {
        st,
        model,
        id: meta.id.clone(),
        version: meta.version.clone(),
        texts: vec![String::new(); plan.n],
        meta,
        created: now_unix(),
        n: plan.n,
        logprobs: plan.params.logprobs,
        include_usage: plan.include_usage,
        prompt_tokens: plan.prompt.len(),
        completion_tokens: 0,
        tokens: vec![0; plan.n],
        reasons: vec![None; plan.n],
        guard,
        checks: (0..plan.n)
            .map(|_| StreamCheck::with_probe(probe_min_rows))
            .collect(),
        rx,
        out: VecDeque::new(),
        done: false,
    };
    for i in 0..state.n {
        let e = state.chunk(
            vec![ChunkChoice {
                index: i,
                delta: Delta {
                    role: Some("assistant"),
                    content: Some(String::new()),
                },
                logprobs: None,
                finish_reason: None,
                safety: None,
            }],
            None,
        );
        state.out.push_back(e);
    }
    futures_util::stream::unfold(state, |mut s| async move {
        loop {
            if let Some(e) = s.out.pop_front() {
                return Some((Ok(e), s));
            }
            if s.done {
                return None;
            }
            match s.rx.recv().await {
                Some(Event::Token {
                    choice,
                    text,
                    logprob,
                    state,
                    ..
                }) => {
                    let lp = logprob
                        .filter(|_| s.logprobs)
                        .map(|lp| wire_logprob(&s.model.tokenizer, &lp));
                    s.on_token(choice, text, lp, state);
                }
                Some(Event::Finished {
                    choice,
                    reason,
                    completion_tokens,
                    text,
                }) => s.on_finished(choice, reason, completion_tokens, text),
                Some(Event::Failed(m)) => {
                    let body = serde_json::json!({"error": {"message": m, "type": "server_error", "param": null, "code": null}});
                    s.out.push_back(SseEvent::default().data(body.to_string()));
                    s.out.push_back(SseEvent::default().data("[DONE]"));
                    s.done = true;
                }
                None => {
                    s.done = true;
                }
            }
        }
    })
}
