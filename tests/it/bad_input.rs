//! Bad input gets a clear 4xx in OpenAI's error shape, never a 5xx or a panic, and
//! leaves the server serving.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};

use crate::server::TestServer;

fn check_4xx(status: u16, body: &Value, want: u16, what: &str) {
    assert_eq!(status, want, "{what}: {body}");
    let msg = body["error"]["message"].as_str().unwrap_or_default();
    assert!(!msg.is_empty(), "{what}: no error message in {body}");
}

#[test]
fn malformed_and_invalid_requests_are_explained() {
    let s = TestServer::start(|c| c.server.max_body_bytes = 64 * 1024);
    let chat = "/v1/chat/completions";
    let (st, b) = s.post_raw(
        chat,
        b"{\"model\": \"tether\", \"messages\": [",
        "application/json",
    );
    check_4xx(st, &b, 400, "truncated JSON");
    let (st, b) = s.post_raw(
        chat,
        b"{\"model\": \"tether\", \"messages\": []}",
        "text/plain",
    );
    check_4xx(st, &b, 400, "wrong content type");
    let (st, b) = s.post_raw(
        chat,
        b"{\"model\": \"tether\", \"messages\": [{\"role\": \"user\", \"content\": \"\xff\xfe\"}]}",
        "application/json",
    );
    check_4xx(st, &b, 400, "invalid UTF-8");
    let bad = [
        (
            json!({"model": "tether", "messages": "hello"}),
            "messages not an array",
        ),
        (
            json!({"model": 7, "messages": [{"role": "user", "content": "hi"}]}),
            "model not a string",
        ),
        (json!({"model": "tether", "messages": []}), "empty messages"),
        (
            json!({"model": "tether", "messages": [{"role": "wizard", "content": "hi"}]}),
            "unknown role",
        ),
        (
            json!({"model": "tether", "messages": [{"role": "user"}]}),
            "missing content",
        ),
        (
            json!({"model": "tether", "messages": [{"role": "user", "content": "hi"}], "temperature": 9}),
            "temperature",
        ),
        (
            json!({"model": "tether", "messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}),
            "temperature type",
        ),
        (
            json!({"model": "tether", "messages": [{"role": "user", "content": "hi"}], "n": 0}),
            "n = 0",
        ),
        (
            json!({"model": "tether", "messages": [{"role": "user", "content": "hi"}], "n": 1000}),
            "n too big",
        ),
        (
            json!({"model": "tether", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}),
            "max_tokens 0",
        ),
        (
            json!({"model": "tether", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100000}),
            "max_tokens > context",
        ),
        (
            json!({"model": "tether", "messages": [{"role": "user", "content": "hi"}], "top_p": 0}),
            "top_p",
        ),
        (
            json!({"model": "tether", "messages": [{"role": "user", "content": "hi"}], "top_logprobs": 5}),
            "top_logprobs without logprobs",
        ),
        (
            json!({"model": "tether", "messages": [{"role": "user", "content": "hi"}], "stop": ["a","b","c","d","e"]}),
            "too many stops",
        ),
        (
            json!({"model": "tether", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}),
            "image part",
        ),
    ];
    for (body, what) in bad {
        let (st, b, _) = s.post(chat, &body);
        check_4xx(st, &b, 400, what);
    }
    // Over-long prompt: more tokens than the 8192-token context, under the body limit.
    let long = "word ".repeat(9000);
    let (st, b, _) = s.post(
        chat,
        &json!({"model": "tether", "messages": [{"role": "user", "content": long}]}),
    );
    check_4xx(st, &b, 400, "prompt over the context");
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("context"),
        "{b}"
    );
    // Body over the configured limit.
    let huge = "x".repeat(2 * 1024 * 1024);
    let (st, b, _) = s.post(
        chat,
        &json!({"model": "tether", "messages": [{"role": "user", "content": huge}]}),
    );
    check_4xx(st, &b, 413, "body over the limit");
    // Unknown endpoint and method.
    let (st, _) = s.get("/v2/nothing");
    assert_eq!(st, 404);
    // Error bodies never echo what the user wrote.
    let (st, b) = s.post_raw(chat, b"{\"model\": \"tether\", \"messages\": [{\"role\": \"user\", \"content\": 12345678}], \"temperature\": \"my-secret-value\"}", "application/json");
    assert_eq!(st, 400);
    assert!(!b.to_string().contains("my-secret-value"), "{b}");
    // And the server still answers.
    let (st, b, _) = s.post(chat, &json!({"model": "tether", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}));
    assert_eq!(st, 200, "{b}");
}

fn random_json(rng: &mut ChaCha8Rng, depth: u32) -> Value {
    let keys = [
        "model",
        "messages",
        "role",
        "content",
        "temperature",
        "top_p",
        "n",
        "max_tokens",
        "stream",
        "stop",
        "seed",
        "logprobs",
        "top_logprobs",
        "text",
        "tokens",
        "source",
        "stream_options",
        "include_usage",
        "user",
        "type",
        "input",
        "decision",
        "note",
        "kind",
        "completion_id",
        "rating",
        "correction",
        "chosen",
        "ranking",
        "trusted",
    ];
    match rng.random_range(0..if depth > 3 { 5 } else { 8 }) {
        0 => Value::Null,
        1 => json!(rng.random::<bool>()),
        2 => json!(rng.random_range(-5i64..100_000)),
        3 => json!(rng.random_range(-3.0f64..3.0)),
        4 => {
            let pool = [
                "tether",
                "user",
                "system",
                "assistant",
                "",
                "hi",
                "smollm2-135m-instruct@v1",
                "\u{0}",
                "😀",
            ];
            json!(pool[rng.random_range(0..pool.len())])
        }
        5 | 6 => {
            let mut m = serde_json::Map::new();
            for _ in 0..rng.random_range(0..6) {
                m.insert(
                    keys[rng.random_range(0..keys.len())].into(),
                    random_json(rng, depth + 1),
                );
            }
            Value::Object(m)
        }
        _ => Value::Array(
            (0..rng.random_range(0..4))
                .map(|_| random_json(rng, depth + 1))
                .collect(),
        ),
    }
}

#[test]
fn random_json_documents_never_cause_a_server_error() {
    let s = TestServer::start(|c| c.server.operator_token = Some(crate::server::OPERATOR.into()));
    let mut rng = ChaCha8Rng::seed_from_u64(20261129);
    let endpoints = [
        "/v1/chat/completions",
        "/v1/tokenize",
        "/v1/detokenize",
        "/admin/keys",
        "/v1/moderations",
        "/admin/review/1",
        "/v1/feedback",
        "/admin/sources/x",
    ];
    for i in 0..560 {
        let mut body = random_json(&mut rng, 0);
        // Half the time, start from a valid chat request and break one field, so the
        // fuzzing reaches validation deep inside the handler.
        if i % 2 == 0 {
            let mut valid = json!({"model": "tether", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2});
            if let (Some(obj), Value::Object(extra)) = (valid.as_object_mut(), body.clone()) {
                for (k, v) in extra {
                    obj.insert(k, v);
                }
            }
            body = valid;
        }
        let ep = endpoints[i % endpoints.len()];
        let key = (ep.starts_with("/admin/") && i % 3 == 0).then_some(crate::server::OPERATOR);
        let (st, b, _) = s.post_with(ep, &body, key);
        assert!(st < 500, "{ep} answered {st} to {body}: {b}");
        if st >= 400 {
            assert!(
                b["error"]["message"].is_string(),
                "{ep} {st} without an error body: {b}"
            );
        }
    }
    assert_eq!(s.get("/health").0, 200);
}
