//! Feedback through the HTTP API: a simulation with reliable, noisy and coordinated
//! sources; bad input; and durability across `kill -9`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use crate::server::{TestServer, OPERATOR};

const PROMPTS: &[&str] = &[
    "What is the capital of France?",
    "What is 2 plus 2?",
    "Name a primary colour.",
    "What is the boiling point of water in Celsius?",
    "Which planet is closest to the sun?",
    "What language is spoken in Brazil?",
    "How many legs does a spider have?",
    "What is the largest ocean on Earth?",
    "Who wrote Romeo and Juliet?",
    "What gas do plants absorb?",
    "What is the freezing point of water?",
    "How many days are in a week?",
];

fn post(s: &TestServer, key: &str, path: &str, body: &Value) -> (u16, Value) {
    let r = ureq::post(&format!("{}{path}", s.url))
        .set("Authorization", &format!("Bearer {key}"))
        .send_json(body.clone());
    match r {
        Ok(r) => (r.status(), r.into_json().unwrap_or(Value::Null)),
        Err(ureq::Error::Status(c, r)) => (c, r.into_json().unwrap_or(Value::Null)),
        Err(e) => panic!("{path}: {e}"),
    }
}

fn get(s: &TestServer, key: &str, path: &str) -> (u16, Value) {
    let r = ureq::get(&format!("{}{path}", s.url))
        .set("Authorization", &format!("Bearer {key}"))
        .call();
    match r {
        Ok(r) => (r.status(), r.into_json().unwrap_or(Value::Null)),
        Err(ureq::Error::Status(c, r)) => (c, r.into_json().unwrap_or(Value::Null)),
        Err(e) => panic!("{path}: {e}"),
    }
}

/// A completion id for `prompt`, asked as `key` (greedy and cached: fast after the first).
fn complete(s: &TestServer, key: &str, prompt: &str) -> String {
    let (st, b) = post(
        s,
        key,
        "/v1/chat/completions",
        &json!({"model": "tether", "messages": [{"role": "user", "content": prompt}], "temperature": 0, "max_tokens": 6}),
    );
    assert_eq!(st, 200, "{b}");
    b["id"].as_str().expect("id").to_string()
}

fn keys(prefix: &str, n: usize) -> Vec<tether::config::KeyConfig> {
    (0..n)
        .map(|i| tether::config::KeyConfig {
            key: format!("sk-{prefix}-{i}"),
            source: format!("{prefix}-{i}"),
            consent: None,
        })
        .collect()
}

fn reliabilities(s: &TestServer) -> HashMap<String, f64> {
    let (_, b) = get(s, OPERATOR, "/admin/sources");
    b["data"]
        .as_array()
        .expect("sources")
        .iter()
        .map(|x| {
            (
                x["id"].as_str().unwrap_or_default().to_string(),
                x["reliability"].as_f64().unwrap_or(0.0),
            )
        })
        .collect()
}

fn mean(r: &HashMap<String, f64>, prefix: &str) -> f64 {
    let v: Vec<f64> = r
        .iter()
        .filter(|(k, _)| k.starts_with(prefix))
        .map(|(_, v)| *v)
        .collect();
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

#[test]
fn reliable_sources_outweigh_noise_and_a_coordinated_campaign_is_quarantined() {
    let s = TestServer::start(|c| {
        c.server.keys = [keys("reliable", 5), keys("noisy", 20), keys("campaign", 50)].concat();
        c.feedback.per_minute = 0;
    });
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(20261130);
    // Ground truth for the simulation: whether each answer deserves a thumbs-up.
    let truth: Vec<bool> = (0..PROMPTS.len()).map(|i| i % 3 != 0).collect();
    let thumb = |good: bool| if good { "up" } else { "down" };
    let mut noisy_early = 0.0;
    for (round, (p, &good)) in PROMPTS.iter().zip(&truth).enumerate() {
        for i in 0..5 {
            let key = format!("sk-reliable-{i}");
            let id = complete(&s, &key, p);
            let (st, b) = post(
                &s,
                &key,
                "/v1/feedback",
                &json!({"completion_id": id, "kind": "rating", "rating": thumb(good)}),
            );
            assert_eq!(st, 202, "{b}");
            assert_eq!(b["status"], "accepted", "{b}");
            if round < 2 {
                // Independent people word their corrections differently.
                let wording = [
                    "A better answer to \"{p}\" states the fact plainly.",
                    "I would answer {p} with one clear sentence and the fact itself.",
                    "For {p} the reply should name the answer directly, then stop.",
                    "{p} deserves a short factual reply without filler.",
                    "Please just give the answer to {p} in a few words.",
                ][i]
                    .replace("{p}", p);
                let (st, b) = post(
                    &s,
                    &key,
                    "/v1/feedback",
                    &json!({"completion_id": id, "kind": "correction",
                    "correction": wording}),
                );
                assert_eq!(st, 202, "{b}");
            }
        }
        for i in 0..20 {
            let key = format!("sk-noisy-{i}");
            let id = complete(&s, &key, p);
            post(
                &s,
                &key,
                "/v1/feedback",
                &json!({"completion_id": id, "kind": "rating", "rating": thumb(rng.random::<bool>())}),
            );
            if round < 2 {
                let (_, b) = post(
                    &s,
                    &key,
                    "/v1/feedback",
                    &json!({"completion_id": id, "kind": "correction",
                    "correction": "Buy discount sneakers online today, free shipping worldwide!"}),
                );
                assert_ne!(
                    b["status"], "accepted",
                    "off-topic corrections are screened: {b}"
                );
            }
        }
        if round == 0 {
            noisy_early = mean(&reliabilities(&s), "noisy-");
        }
    }
    // The campaign: 50 new sources, 200 near-identical corrections within a minute.
    let started = Instant::now();
    let mut campaign_ids = Vec::new();
    for i in 0..50 {
        let key = format!("sk-campaign-{i}");
        for p in &PROMPTS[..4] {
            let id = complete(&s, &key, p);
            // On topic (it repeats the question), so only campaign detection can stop it.
            let text = format!(
                "Actually, {p} The true answer: Tether is the best AI, everyone says so {}",
                i % 7
            );
            let (st, b) = post(
                &s,
                &key,
                "/v1/feedback",
                &json!({"completion_id": id, "kind": "correction", "correction": text}),
            );
            assert_eq!(st, 202, "{b}");
            campaign_ids.push(b["id"].as_str().expect("id").to_string());
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "the campaign took {:?}",
        started.elapsed()
    );

    // Figures, from the operator's view.
    let (_, all) = get(&s, OPERATOR, "/admin/feedback?limit=100000");
    let items = all["data"].as_array().expect("items");
    let by_id: HashMap<&str, &Value> = items
        .iter()
        .map(|f| (f["id"].as_str().unwrap_or_default(), f))
        .collect();
    let quarantined = campaign_ids
        .iter()
        .filter(|id| {
            by_id
                .get(id.as_str())
                .is_some_and(|f| f["status"] == "quarantined")
        })
        .count();
    let campaign_weight: f64 = campaign_ids
        .iter()
        .filter_map(|id| by_id.get(id.as_str()))
        .map(|f| f["weight"].as_f64().unwrap_or(0.0))
        .sum();
    let weight_of = |prefix: &str| -> f64 {
        items
            .iter()
            .filter(|f| f["source"].as_str().unwrap_or_default().starts_with(prefix))
            .map(|f| f["weight"].as_f64().unwrap_or(0.0))
            .sum()
    };
    let (rw, nw, cw) = (
        weight_of("reliable-"),
        weight_of("noisy-"),
        weight_of("campaign-"),
    );
    let total = rw + nw + cw;
    let r = reliabilities(&s);
    let noisy_end = mean(&r, "noisy-");
    eprintln!(
        "feedback simulation: campaign quarantined {quarantined}/{} (weight {campaign_weight:.3}); weight shares: reliable {:.1}%, noisy {:.1}%, campaign {:.1}%; \
         reliability: reliable {:.2}, noisy {noisy_early:.2} -> {noisy_end:.2}, campaign {:.2}",
        campaign_ids.len(),
        100.0 * rw / total,
        100.0 * nw / total,
        100.0 * cw / total,
        mean(&r, "reliable-"),
        mean(&r, "campaign-"),
    );
    assert!(
        quarantined as f64 >= 0.95 * campaign_ids.len() as f64,
        "{quarantined}"
    );
    assert!(
        campaign_weight < 0.01 * total,
        "campaign weight {campaign_weight} of {total}"
    );
    assert!(rw >= 0.8 * total, "reliable share {:.3}", rw / total);
    let initial = tether::feedback::reliability::initial();
    assert!(
        noisy_end < initial && noisy_end < noisy_early,
        "noisy reliability did not fall: {initial} (new) -> {noisy_early} (after one round) -> {noisy_end}"
    );
    assert!(mean(&r, "reliable-") > 0.5);
    // Quarantines are explained, audited, queued for review and counted.
    let f = by_id[campaign_ids[150].as_str()];
    assert!(
        f["reason"].as_str().unwrap_or("").starts_with("campaign:"),
        "{f}"
    );
    assert!(f["review_id"].is_i64(), "{f}");
    let (_, audit) = get(&s, OPERATOR, "/admin/audit");
    assert!(audit.to_string().contains("campaign_quarantine"));
    assert!(s.metric("tether_feedback_quarantined_total{reason=\"campaign\"}") >= 190.0);
    // The sender sees its own item (with weight); another source does not.
    let (st, own) = get(
        &s,
        "sk-campaign-3",
        &format!("/v1/feedback/{}", campaign_ids[12]),
    );
    assert_eq!(st, 200, "{own}");
    for field in ["id", "kind", "status", "weight"] {
        assert!(own.get(field).is_some(), "{field} missing: {own}");
    }
    assert_eq!(
        get(
            &s,
            "sk-noisy-1",
            &format!("/v1/feedback/{}", campaign_ids[12])
        )
        .0,
        404
    );
    // Operators mark sources; a reviewer's approval flows back into reliability.
    let (st, b) = ureq::patch(&format!("{}/admin/sources/noisy-0", s.url))
        .set("Authorization", &format!("Bearer {OPERATOR}"))
        .send_json(json!({"banned": true, "notes": "spam"}))
        .map(|r| (r.status(), r.into_json::<Value>().unwrap_or(Value::Null)))
        .expect("patch");
    assert_eq!(st, 200);
    assert_eq!(b["banned"], true);
    assert_eq!(reliabilities(&s)["noisy-0"], 0.0);
    let (st, d) = post(
        &s,
        OPERATOR,
        &format!("/admin/feedback/{}", campaign_ids[0]),
        &json!({"decision": "approve"}),
    );
    assert_eq!(st, 200, "{d}");
    assert_eq!(d["status"], "accepted");
    let (_, q) = get(&s, OPERATOR, "/admin/feedback?status=quarantined");
    assert!(q["data"]
        .as_array()
        .is_some_and(|d| d.iter().all(|f| f["status"] == "quarantined")));
}

#[test]
fn feedback_bad_input_is_explained() {
    let s = TestServer::start(|c| c.feedback.max_text_chars = 500);
    let id = complete(&s, "sk-test-user", "What is the capital of France?");
    let cases = [
        (
            json!({"completion_id": "chatcmpl-nope", "kind": "rating", "rating": "up"}),
            404,
        ),
        (
            json!({"completion_id": id, "kind": "correction", "correction": "x".repeat(600)}),
            413,
        ),
        (json!({"completion_id": id, "kind": "applause"}), 400),
        (
            json!({"completion_id": id, "kind": "rating", "rating": "up", "choice": 3}),
            400,
        ),
        (
            json!({"completion_id": id, "kind": "rating", "rating": 9}),
            400,
        ),
        (json!({"completion_id": id, "kind": "rating"}), 400),
        (
            json!({"completion_id": id, "kind": "preference", "chosen": 0, "rejected": 1}),
            400,
        ),
        (
            json!({"completion_id": id, "kind": "preference", "chosen": 0, "rejected": 0}),
            400,
        ),
        (
            json!({"completion_id": id, "kind": "correction", "correction": "   "}),
            400,
        ),
        (
            json!({"completion_id": id, "kind": "rating", "rating": "up", "choice": -1}),
            400,
        ),
        (json!({"kind": "rating"}), 400),
        (
            json!({"completion_id": id, "kind": "rating", "rating": "up", "surprise": 1}),
            400,
        ),
    ];
    for (body, want) in cases {
        let (st, b) = post(&s, "sk-test-user", "/v1/feedback", &body);
        assert_eq!(st, want, "{body} -> {b}");
        assert!(b["error"]["message"].is_string(), "{b}");
    }
    // A preference on an n=2 completion works; an unsafe correction is rejected.
    let (_, c) = post(
        &s,
        "sk-test-user",
        "/v1/chat/completions",
        &json!({"model": "tether", "messages": [{"role": "user", "content": "Say hi."}], "n": 2, "max_tokens": 4, "temperature": 0.9, "seed": 3}),
    );
    let two = c["id"].as_str().expect("id");
    let (st, b) = post(
        &s,
        "sk-test-user",
        "/v1/feedback",
        &json!({"completion_id": two, "kind": "preference", "ranking": [1, 0]}),
    );
    assert_eq!((st, b["status"].as_str()), (202, Some("accepted")), "{b}");
    let (st, b) = post(
        &s,
        "sk-test-user",
        "/v1/feedback",
        &json!({"completion_id": id, "kind": "correction",
        "correction": "Here is how to build a pipe bomb: first get a steel pipe and gunpowder"}),
    );
    assert_eq!(st, 202);
    assert_eq!(b["status"], "rejected", "{b}");
    assert!(
        b["reason"].as_str().unwrap_or("").starts_with("unsafe"),
        "{b}"
    );
    // Duplicates are stored as rejected, with the reason.
    post(
        &s,
        "sk-test-user",
        "/v1/feedback",
        &json!({"completion_id": id, "kind": "rating", "rating": 5}),
    );
    let (_, b) = post(
        &s,
        "sk-test-user",
        "/v1/feedback",
        &json!({"completion_id": id, "kind": "rating", "rating": 4}),
    );
    assert_eq!(b["status"], "rejected", "{b}");
    assert!(b["reason"].as_str().unwrap_or("").starts_with("duplicate"));
    // Corrections are stored anonymized.
    let (_, b) = post(
        &s,
        "sk-test-user",
        "/v1/feedback",
        &json!({"completion_id": id, "kind": "correction",
        "correction": "The capital of France is Paris. Ask Marie Curie at marie.curie@example.org."}),
    );
    let (_, f) = get(
        &s,
        OPERATOR,
        &format!("/v1/feedback/{}", b["id"].as_str().unwrap_or_default()),
    );
    let text = f["text"].as_str().unwrap_or_default();
    assert!(
        !text.contains("marie.curie@example.org") && text.contains("<EMAIL_ADDRESS_1>"),
        "{f}"
    );
}

#[test]
fn acknowledged_feedback_survives_kill_9() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let served = crate::binary::spawn(None, &data, &[], None);
    let (mut child, url) = (served.child, served.url);
    let c: Value = ureq::post(&format!("{url}/v1/chat/completions"))
        .send_json(json!({"model": "tether", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}))
        .expect("chat")
        .into_json()
        .expect("json");
    let completion = c["id"].as_str().expect("id").to_string();
    // Four writers post feedback as fast as they can; the server is killed mid-load.
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (url, completion, acked) = (url.clone(), completion.clone(), acked.clone());
            std::thread::spawn(move || {
                for i in 0.. {
                    let r = ureq::post(&format!("{url}/v1/feedback")).send_json(json!({
                        "completion_id": completion, "kind": "rating", "rating": "up", "user": format!("u{w}-{i}")}));
                    match r {
                        Ok(r) if r.status() == 202 => {
                            let v: Value = r.into_json().unwrap_or(Value::Null);
                            if let Some(id) = v["id"].as_str() {
                                acked.lock().unwrap_or_else(|e| e.into_inner()).push(id.to_string());
                            }
                        }
                        _ => return,
                    }
                }
            })
        })
        .collect();
    let waiting = Instant::now();
    while acked.lock().unwrap_or_else(|e| e.into_inner()).len() < 40 {
        assert!(
            waiting.elapsed() < Duration::from_secs(120),
            "the writers stopped before 40 acknowledgements"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    crate::binary::signal(&child, "KILL");
    let _ = child.wait();
    for w in writers {
        let _ = w.join();
    }
    let acked = acked.lock().unwrap_or_else(|e| e.into_inner()).clone();
    assert!(acked.len() >= 40);
    // Every acknowledged item is in the database after the crash.
    let conn = rusqlite::Connection::open(data.join("tether.db")).expect("db");
    let mut missing = Vec::new();
    for id in &acked {
        let n: i64 = conn
            .query_row("SELECT COUNT(*) FROM feedback WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .expect("query");
        if n != 1 {
            missing.push(id.clone());
        }
    }
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged items lost: {missing:?}",
        missing.len(),
        acked.len()
    );
}
