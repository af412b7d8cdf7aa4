//! The HTTP server, run for real on a loopback port with the real model.

use std::io::{BufRead, BufReader};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tether::config::Config;

/// A server running in this process on 127.0.0.1:PORT with its own data directory,
/// stopped on drop.
pub struct TestServer {
    pub url: String,
    // Field order matters: the server stops before its data directory is removed.
    _server: tether::server::Background,
    pub dir: tempfile::TempDir,
}

pub const OPERATOR: &str = "test-operator-token";

impl TestServer {
    pub fn start(tweak: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = Config::load(None).expect("config");
        config.server.data_dir = dir.path().join("data").display().to_string();
        config.server.operator_token = Some(OPERATOR.into());
        config.server.keys = vec![tether::config::KeyConfig {
            key: "sk-test-user".into(),
            source: "test-user".into(),
            consent: None,
        }];
        // The learner trains in the background once feedback accumulates; tests that
        // are about it turn it on.
        config.learner.enabled = false;
        tweak(&mut config);
        let server = tether::server::Background::start(config, Duration::from_secs(120))
            .expect("server starts");
        Self {
            url: server.url.clone(),
            _server: server,
            dir,
        }
    }

    pub fn post(&self, path: &str, body: &Value) -> (u16, Value, Option<String>) {
        self.post_with(path, body, None)
    }

    pub fn post_with(
        &self,
        path: &str,
        body: &Value,
        key: Option<&str>,
    ) -> (u16, Value, Option<String>) {
        let mut req = ureq::post(&format!("{}{path}", self.url));
        if let Some(k) = key {
            req = req.set("Authorization", &format!("Bearer {k}"));
        }
        into_parts(req.send_json(body.clone()))
    }

    pub fn post_raw(&self, path: &str, body: &[u8], content_type: &str) -> (u16, Value) {
        let r = ureq::post(&format!("{}{path}", self.url))
            .set("Content-Type", content_type)
            .send_bytes(body);
        let (s, v, _) = into_parts(r);
        (s, v)
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        match ureq::get(&format!("{}{path}", self.url)).call() {
            Ok(r) => (r.status(), r.into_string().unwrap_or_default()),
            Err(ureq::Error::Status(c, r)) => (c, r.into_string().unwrap_or_default()),
            Err(e) => panic!("GET {path}: {e}"),
        }
    }

    pub fn metric(&self, name: &str) -> f64 {
        let (_, text) = self.get("/metrics");
        text.lines()
            .find(|l| l.starts_with(name) && !l.starts_with('#'))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::NAN)
    }
}

fn into_parts(r: Result<ureq::Response, ureq::Error>) -> (u16, Value, Option<String>) {
    match r {
        Ok(r) => {
            let v = r.header("x-tether-version").map(str::to_string);
            (r.status(), r.into_json().unwrap_or(Value::Null), v)
        }
        Err(ureq::Error::Status(c, r)) => (c, r.into_json().unwrap_or(Value::Null), None),
        Err(e) => panic!("request failed: {e}"),
    }
}

fn chat(content: &str) -> Value {
    json!({"model": "tether", "messages": [{"role": "user", "content": content}], "temperature": 0, "max_tokens": 32})
}

/// Reads an SSE response: the JSON of every `data:` line until `[DONE]`.
pub fn sse(resp: ureq::Response) -> Vec<Value> {
    let mut out = Vec::new();
    for line in BufReader::new(resp.into_reader()).lines() {
        let line = line.expect("line");
        if let Some(data) = line.strip_prefix("data: ") {
            if data == "[DONE]" {
                return out;
            }
            out.push(serde_json::from_str(data).expect("chunk json"));
        }
    }
    panic!("stream ended without [DONE]");
}

fn assert_error(status: u16, body: &Value, want: u16) {
    assert_eq!(status, want, "{body}");
    let e = &body["error"];
    assert!(
        e["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(e["type"].is_string(), "{body}");
    assert!(
        e.get("param").is_some() && e.get("code").is_some(),
        "{body}"
    );
}

/// Asks the France question greedily; asserts the faithful answer and returns the
/// body and the `x-tether-version` header.
fn answers_paris(s: &TestServer) -> (Value, Option<String>) {
    let (status, body, version) = s.post(
        "/v1/chat/completions",
        &chat("What is the capital of France?"),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "The capital of France is Paris."
    );
    (body, version)
}

#[test]
fn chat_completion_answers_with_version_and_durable_id() {
    let s = TestServer::start(|_| {});
    let (body, version) = answers_paris(&s);
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(body["model"], "smollm2-135m-instruct@v1");
    assert_eq!(version.as_deref(), Some("smollm2-135m-instruct@v1"));
    assert_eq!(body["usage"]["prompt_tokens"], 37);
    // Ids are unique even for identical (cached) requests, and durable.
    let (_, again, _) = s.post(
        "/v1/chat/completions",
        &chat("What is the capital of France?"),
    );
    assert_ne!(body["id"], again["id"]);
    assert_eq!(again["choices"], body["choices"]);
    assert!(s.metric("tether_response_cache_requests_total{result=\"hit\"}") >= 1.0);
    let db = tether::storage::Store::open(&s.dir.path().join("data")).expect("db");
    for b in [&body, &again] {
        let id = b["id"].as_str().expect("id");
        assert_eq!(
            db.completion_version(id).expect("query").as_deref(),
            Some("smollm2-135m-instruct@v1")
        );
    }
}

#[test]
fn streaming_n_logprobs_pinning_and_unknown_models() {
    let s = TestServer::start(|_| {});
    let resp = ureq::post(&format!("{}/v1/chat/completions", s.url))
        .send_json(json!({
            "model": "smollm2-135m-instruct@v1",
            "messages": [{"role": "user", "content": "What is the capital of France?"}],
            "temperature": 0, "stream": true, "stream_options": {"include_usage": true}
        }))
        .expect("stream");
    assert_eq!(
        resp.header("x-tether-version"),
        Some("smollm2-135m-instruct@v1")
    );
    assert!(resp.content_type().starts_with("text/event-stream"));
    let chunks = sse(resp);
    let text: String = chunks
        .iter()
        .filter_map(|c| {
            c["choices"].get(0)?["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect();
    assert_eq!(text, "The capital of France is Paris.");
    let last_choice = chunks
        .iter()
        .rev()
        .find(|c| c["choices"].as_array().is_some_and(|a| !a.is_empty()));
    assert_eq!(
        last_choice.expect("chunk")["choices"][0]["finish_reason"],
        "stop"
    );
    let usage = &chunks.last().expect("usage chunk")["usage"];
    assert_eq!(usage["prompt_tokens"], 37);
    assert_eq!(usage["completion_tokens"], 8);

    let (status, body, _) = s.post(
        "/v1/chat/completions",
        &json!({"model": "tether", "messages": [{"role": "user", "content": "Tell me a fun fact."}],
                "n": 2, "temperature": 1.0, "seed": 5, "max_tokens": 12, "logprobs": true, "top_logprobs": 3}),
    );
    assert_eq!(status, 200, "{body}");
    let choices = body["choices"].as_array().expect("choices");
    assert_eq!(choices.len(), 2);
    for c in choices {
        let lps = c["logprobs"]["content"].as_array().expect("logprobs");
        assert!(!lps.is_empty());
        for lp in lps {
            assert!(lp["logprob"].as_f64().expect("logprob") <= 0.0);
            assert_eq!(lp["top_logprobs"].as_array().expect("top").len(), 3);
        }
    }
    assert_ne!(
        choices[0]["message"], choices[1]["message"],
        "two choices with different seeds"
    );

    let (status, body, _) = s.post(
        "/v1/chat/completions",
        &json!({"model": "smollm2-135m-instruct@v7", "messages": [{"role": "user", "content": "hi"}]}),
    );
    assert_error(status, &body, 404);
    assert_eq!(body["error"]["param"], "model");

    let (status, models) = s.get("/v1/models");
    assert_eq!(status, 200);
    let models: Value = serde_json::from_str(&models).expect("json");
    assert_eq!(models["data"][0]["id"], "smollm2-135m-instruct@v1");
    assert_eq!(models["data"][0]["status"], "serving");
    assert!(models["data"][0]["parent"].is_null());
}

#[test]
fn tokenize_detokenize_health_ready_and_metrics() {
    let s = TestServer::start(|_| {});
    let (status, body, _) = s.post("/v1/tokenize", &json!({"text": "Hello, world!"}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["tokens"], json!([19556, 28, 905, 17]));
    let (status, body, _) = s.post("/v1/detokenize", &json!({"tokens": [19556, 28, 905, 17]}));
    assert_eq!(status, 200);
    assert_eq!(body["text"], "Hello, world!");
    let (status, body, _) = s.post("/v1/detokenize", &json!({"tokens": [99999999]}));
    assert_error(status, &body, 400);
    let (status, body, _) = s.post(
        "/v1/tokenize",
        &json!({"messages": [{"role": "user", "content": "What is the capital of France?"}]}),
    );
    assert_eq!(status, 200);
    assert_eq!(body["count"], 37);
    assert_eq!(s.get("/health").0, 200);
    assert_eq!(s.get("/ready").0, 200);
    let (_, m) = s.get("/metrics");
    for name in [
        "tether_http_requests_total",
        "tether_request_duration_seconds_bucket",
        "tether_model_load_seconds",
        "tether_queue_length",
        "tether_running_sequences",
    ] {
        assert!(m.contains(name), "metrics lack {name}");
    }
}

#[test]
fn metrics_pass_promtool_check() {
    let s = TestServer::start(|_| {});
    s.post("/v1/chat/completions", &chat("Say hi."));
    let (_, text) = s.get("/metrics");
    for name in [
        "tether_time_to_first_token_seconds_bucket",
        "tether_inter_token_latency_seconds_bucket",
        "tether_prompt_tokens_total",
        "tether_generated_tokens_total",
        "tether_batch_size_bucket",
        "tether_split_steps_total",
        "tether_queue_wait_seconds_bucket",
        "tether_kv_cache_bytes",
    ] {
        assert!(text.contains(name), "metrics lack {name}");
    }
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool is needed (Debian package `prometheus`; .ci/run installs it)");
    use std::io::Write;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn keys_operator_token_and_anonymous_access() {
    let s = TestServer::start(|_| {});
    // A wrong key is refused even though anonymous access is on.
    let (status, body, _) = s.post_with("/v1/chat/completions", &chat("hi"), Some("sk-wrong"));
    assert_error(status, &body, 401);
    // Admin: no token 401, user key 403, operator 201.
    let (status, body, _) = s.post("/admin/keys", &json!({"source": "team-a"}));
    assert_error(status, &body, 401);
    let (status, body, _) = s.post_with(
        "/admin/keys",
        &json!({"source": "team-a"}),
        Some("sk-test-user"),
    );
    assert_error(status, &body, 403);
    let (status, body, _) =
        s.post_with("/admin/keys", &json!({"source": "team-a"}), Some(OPERATOR));
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["source"], "team-a");
    let key = body["key"].as_str().expect("key").to_string();
    let (status, _, _) = s.post_with("/v1/models", &json!({}), Some(&key));
    assert_eq!(status, 405, "POST to a GET endpoint");
    let (status, body, _) = s.post_with("/v1/chat/completions", &chat("hi"), Some(&key));
    assert_eq!(status, 200, "{body}");
    let (status, body, _) = s.post_with(
        "/admin/keys",
        &json!({"source": "bad source!"}),
        Some(OPERATOR),
    );
    assert_error(status, &body, 400);

    // Without anonymous access, a missing key is 401.
    let closed = TestServer::start(|c| c.server.allow_anonymous = false);
    let (status, body, _) = closed.post("/v1/chat/completions", &chat("hi"));
    assert_error(status, &body, 401);
    let (status, _, _) =
        closed.post_with("/v1/chat/completions", &chat("hi"), Some("sk-test-user"));
    assert_eq!(status, 200);
}

#[test]
fn rate_limits_and_a_full_queue_answer_429_with_retry_after() {
    let s = TestServer::start(|c| c.server.rate_limit_per_minute = 2);
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let r = ureq::post(&format!("{}/v1/chat/completions", s.url)).send_json(json!({
            "model": "tether", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}));
        match r {
            Ok(r) => statuses.push((r.status(), None)),
            Err(ureq::Error::Status(c, r)) => {
                statuses.push((c, r.header("retry-after").map(str::to_string)))
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(statuses[0].0, 200);
    assert_eq!(statuses[1].0, 200);
    assert_eq!(statuses[2].0, 429);
    assert!(statuses[2].1.is_some(), "429 carries Retry-After");

    // One slot, one queue place: of six simultaneous long requests some are refused.
    let q = TestServer::start(|c| {
        c.engine.max_batch = 1;
        c.engine.max_queue = 1;
    });
    let url = q.url.clone();
    let barrier = Arc::new(Barrier::new(6));
    let handles: Vec<_> = (0..6)
        .map(|_| {
            let url = url.clone();
            let b = barrier.clone();
            std::thread::spawn(move || {
                b.wait();
                match ureq::post(&format!("{url}/v1/chat/completions")).send_json(json!({
                    "model": "tether", "messages": [{"role": "user", "content": "Write a poem."}],
                    "max_tokens": 40, "temperature": 0.5}))
                {
                    Ok(r) => (r.status(), None),
                    Err(ureq::Error::Status(c, r)) => {
                        (c, r.header("retry-after").map(str::to_string))
                    }
                    Err(e) => panic!("{e}"),
                }
            })
        })
        .collect();
    let results: Vec<(u16, Option<String>)> = handles
        .into_iter()
        .map(|h| h.join().expect("join"))
        .collect();
    assert!(results.iter().any(|r| r.0 == 200), "{results:?}");
    let refused: Vec<_> = results.iter().filter(|r| r.0 == 429).collect();
    assert!(!refused.is_empty(), "{results:?}");
    assert!(refused.iter().all(|r| r.1.is_some()));
    assert!(
        results.iter().all(|r| r.0 == 200 || r.0 == 429),
        "{results:?}"
    );
}

#[test]
fn sixteen_concurrent_streams_all_progress_and_cancelled_clients_free_their_slots() {
    let s = TestServer::start(|c| c.engine.max_batch = 16);
    let url = s.url.clone();
    let barrier = Arc::new(Barrier::new(16));
    let start = Instant::now();
    let handles: Vec<_> = (0..16)
        .map(|i| {
            let url = url.clone();
            let b = barrier.clone();
            std::thread::spawn(move || {
                b.wait();
                let resp = ureq::post(&format!("{url}/v1/chat/completions"))
                    .send_json(json!({"model": "tether",
                        "messages": [{"role": "user", "content": format!("Tell a long story about a dragon named Number {i}.")}],
                        "max_tokens": 24, "temperature": 0, "stream": true}))
                    .expect("stream");
                let mut first = None;
                let mut reader = BufReader::new(resp.into_reader());
                let mut line = String::new();
                let mut tokens = 0;
                loop {
                    line.clear();
                    if reader.read_line(&mut line).expect("read") == 0 {
                        panic!("stream {i} ended without [DONE]");
                    }
                    if line.starts_with("data: [DONE]") {
                        break;
                    }
                    if line.contains("\"content\":\"") && !line.contains("\"content\":\"\"") {
                        tokens += 1;
                        first.get_or_insert_with(Instant::now);
                    }
                }
                (first.expect("a first token"), Instant::now(), tokens)
            })
        })
        .collect();
    let results: Vec<(Instant, Instant, usize)> = handles
        .into_iter()
        .map(|h| h.join().expect("join"))
        .collect();
    let last_first = results.iter().map(|r| r.0).max().expect("max");
    let first_done = results.iter().map(|r| r.1).min().expect("min");
    let timeline: Vec<String> = results
        .iter()
        .map(|r| {
            format!(
                "first {:?} done {:?} chunks {}",
                r.0.duration_since(start),
                r.1.duration_since(start),
                r.2
            )
        })
        .collect();
    assert!(
        last_first < first_done,
        "some stream got its first token only after another had finished: streams were serialised\n{}",
        timeline.join("\n")
    );
    assert!(results.iter().all(|r| r.2 > 0));
    assert!(
        s.metric("tether_batch_size_sum") / s.metric("tether_batch_size_count") > 4.0,
        "batches were small"
    );

    // Cancel: open long streams, read one chunk, hang up; the slots must empty.
    let mut readers = Vec::new();
    for _ in 0..4 {
        let resp = ureq::post(&format!("{}/v1/chat/completions", s.url))
            .send_json(json!({"model": "tether", "messages": [{"role": "user", "content": "Write a very long essay."}],
                "max_tokens": 2000, "temperature": 0.8, "stream": true}))
            .expect("stream");
        let mut r = BufReader::new(resp.into_reader());
        let mut line = String::new();
        r.read_line(&mut line).expect("first chunk");
        readers.push(r);
    }
    assert!(s.metric("tether_running_sequences") >= 1.0);
    drop(readers);
    // Generous: under a parallel test run a decode step can take long, and a hang-up
    // is noticed when the next chunk fails to send.
    let mut freed = false;
    for _ in 0..600 {
        if s.metric("tether_running_sequences") == 0.0 {
            freed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(freed, "cancelled streams still hold their slots");
}

#[test]
fn an_f32_kv_cache_serves_the_same_answer() {
    let s = TestServer::start(|c| c.engine.kv_cache = tether::engine::KvStorage::F32);
    answers_paris(&s);
}

/// Eight choices decoding together run as two half-batches side by side, one per
/// thread, and every choice's answer is the one a server that never splits gives: the
/// halves' logits go back to the right sequences.
#[test]
fn split_batches_answer_as_one_batch_does() {
    let req = json!({"model": "tether", "n": 8, "temperature": 0.9, "seed": 5, "max_tokens": 16,
        "messages": [{"role": "user", "content": "Invent a name for a small bakery and say why."}]});
    let on = TestServer::start(|c| c.server.response_cache_bytes = 0);
    let off = TestServer::start(|c| {
        c.server.response_cache_bytes = 0;
        c.engine.split_batches = false;
    });
    let (status, a, _) = on.post("/v1/chat/completions", &req);
    assert_eq!(status, 200, "{a}");
    let (status, b, _) = off.post("/v1/chat/completions", &req);
    assert_eq!(status, 200, "{b}");
    let texts = |v: &Value| -> Vec<String> {
        (0..8)
            .map(|i| {
                v["choices"][i]["message"]["content"]
                    .as_str()
                    .expect("content")
                    .to_string()
            })
            .collect()
    };
    let (a, b) = (texts(&a), texts(&b));
    assert_eq!(a, b, "split and unsplit servers answered differently");
    // The choices differ from one another, so rows given to the wrong sequence would
    // have shown.
    let distinct: std::collections::HashSet<&String> = a.iter().collect();
    assert!(
        distinct.len() >= 4,
        "choices too alike to tell apart: {a:?}"
    );
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    if threads >= 2 {
        assert!(
            on.metric("tether_split_steps_total") >= 4.0,
            "the eight choices never ran as two halves"
        );
    }
    assert_eq!(off.metric("tether_split_steps_total"), 0.0);
}

/// A prompt that starts like an earlier one (here the chat template's system prompt)
/// reuses that prefix's keys and values and answers exactly as a server without the
/// prefix cache does; repeated prompts reuse all but their last token.
#[test]
fn shared_prompt_prefixes_are_reused_and_answers_do_not_change() {
    let ask = |s: &TestServer, q: &str| -> String {
        let (status, body, _) = s.post("/v1/chat/completions", &chat(q));
        assert_eq!(status, 200, "{body}");
        body["choices"][0]["message"]["content"]
            .as_str()
            .expect("content")
            .to_string()
    };
    let questions = [
        "Write a haiku about the sea.",
        "Name three colours of the rainbow.",
        "Write a haiku about the sea.",
    ];
    let on = TestServer::start(|c| c.server.response_cache_bytes = 0);
    let off = TestServer::start(|c| {
        c.server.response_cache_bytes = 0;
        c.engine.prefix_cache_bytes = 0;
    });
    let reused = |s: &TestServer| s.metric("tether_prefix_cache_reused_tokens_total");
    let before = reused(&on);
    for q in questions {
        assert_eq!(ask(&on, q), ask(&off, q), "answers to {q:?} differ");
    }
    answers_paris(&on);
    // The second and third questions and the France question reused at least the
    // system prompt; the repeated question all but its last token.
    let gained = reused(&on) - before;
    assert!(
        gained >= 3.0 * 20.0,
        "only {gained} prompt tokens were reused"
    );
    assert!(
        on.metric(r#"tether_prefix_cache_requests_total{result="hit"}"#) >= 3.0,
        "hits were not counted"
    );
    assert!(on.metric("tether_prefix_cache_bytes") > 0.0);

    // Two choices of one request share their whole prompt: the second waits while the
    // first computes it, then reuses all of it but the last token (before, both could
    // reuse only the cached system prompt). Sampled answers stay those of the server
    // without the cache.
    let two = json!({"model": "tether", "n": 2, "temperature": 0.8, "seed": 11, "max_tokens": 12,
        "messages": [{"role": "user", "content": "Describe, in two sentences, how a lighthouse keeper on a small rocky island spends a stormy winter night."}]});
    let before = reused(&on);
    let (status, a, _) = on.post("/v1/chat/completions", &two);
    assert_eq!(status, 200, "{a}");
    let gained = reused(&on) - before;
    let (status, b, _) = off.post("/v1/chat/completions", &two);
    assert_eq!(status, 200, "{b}");
    for i in 0..2 {
        assert_eq!(
            a["choices"][i]["message"]["content"], b["choices"][i]["message"]["content"],
            "choice {i} differs"
        );
    }
    let prompt = a["usage"]["prompt_tokens"].as_f64().expect("prompt tokens");
    assert!(
        gained >= prompt - 1.0 + 8.0,
        "the two choices reused {gained} tokens of a {prompt}-token prompt"
    );
    assert_eq!(
        reused(&off),
        0.0,
        "a server with the cache off reused tokens"
    );
}
