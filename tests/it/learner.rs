//! The learner on the real SmolLM2: ten corrections become a new serving version that
//! stays close to the base; preferences move log-probabilities; versions survive a
//! restart; `kill -9` during training leaves no partial version and loses nothing.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tether::learner::objective::score;
use tether::learner::{train, Hyper, Pair, Preference, Rated, TrainSet};
use tether::model::{ChatMessage, LoadedModel, LoraConfig, Mode};

use crate::binary::{self, Served};
use crate::common::smollm;
use crate::facts::FACTS;

pub(crate) const OPERATOR: &str = "op-learner";

/// Stated bounds on closeness to the base, on the held-out probes (configs/probes.jsonl):
/// mean KL(base || new) per token of the base's greedy answers, and the share of those
/// tokens where both models pick the same top-1 token.
const MAX_PROBE_KL: f64 = 0.25;
const MIN_PROBE_TOP1: f64 = 0.8;

fn config() -> String {
    let tutors: Vec<String> = (0..3)
        .map(|i| format!("{{ key = \"sk-tutor-{i}\", source = \"tutor-{i}\" }}"))
        .chain((0..4).map(|i| format!("{{ key = \"sk-crowd-{i}\", source = \"crowd-{i}\" }}")))
        .collect();
    format!(
        "[server]\noperator_token = \"{OPERATOR}\"\nkeys = [{}]\n\n[feedback]\nper_minute = 0\n\n\
         [learner]\nmin_weight = 0.0\n\n[gate]\nmax_kl = {MAX_PROBE_KL}\nmin_top1 = {MIN_PROBE_TOP1}\n\n\
         [canary]\nshare = 0.0\n",
        tutors.join(", ")
    )
}

pub(crate) fn call(method: &str, url: &str, key: &str, body: Option<&Value>) -> (u16, Value) {
    let req = ureq::request(method, url)
        .set("Authorization", &format!("Bearer {key}"))
        .timeout(Duration::from_secs(300));
    let r = match body {
        Some(b) => req.send_json(b.clone()),
        None => req.call(),
    };
    match r {
        Ok(r) => (r.status(), r.into_json().unwrap_or(Value::Null)),
        Err(ureq::Error::Status(c, r)) => (c, r.into_json().unwrap_or(Value::Null)),
        Err(e) => panic!("{method} {url}: {e}"),
    }
}

/// Greedy answer and the version that produced it.
fn ask(url: &str, model: &str, q: &str) -> (String, String) {
    let (st, b) = call(
        "POST",
        &format!("{url}/v1/chat/completions"),
        "sk-tutor-0",
        Some(
            &json!({"model": model, "messages": [{"role": "user", "content": q}],
                     "temperature": 0, "max_tokens": 40}),
        ),
    );
    assert_eq!(st, 200, "{b}");
    (
        b["choices"][0]["message"]["content"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        b["model"].as_str().unwrap_or_default().to_string(),
    )
}

fn completion_id(url: &str, key: &str, q: &str) -> String {
    let (st, b) = call(
        "POST",
        &format!("{url}/v1/chat/completions"),
        key,
        Some(
            &json!({"model": "tether", "messages": [{"role": "user", "content": q}],
                     "temperature": 0, "max_tokens": 12}),
        ),
    );
    assert_eq!(st, 200, "{b}");
    b["id"].as_str().expect("id").to_string()
}

fn correct(url: &str, key: &str, q: &str, text: &str) -> Value {
    let id = completion_id(url, key, q);
    let (st, b) = call(
        "POST",
        &format!("{url}/v1/feedback"),
        key,
        Some(&json!({"completion_id": id, "kind": "correction", "correction": text})),
    );
    assert_eq!(st, 202, "{b}");
    b
}

pub(crate) fn trust_tutors(url: &str) {
    for i in 0..3 {
        let (st, b) = call(
            "PATCH",
            &format!("{url}/admin/sources/tutor-{i}"),
            OPERATOR,
            Some(&json!({"trusted": true})),
        );
        assert_eq!(st, 200, "{b}");
    }
}

/// Polls a run until it leaves `queued`/`running` (or `until` says stop).
pub(crate) fn wait_run(
    url: &str,
    run: &str,
    limit: Duration,
    until: impl Fn(&Value) -> bool,
) -> Value {
    let start = Instant::now();
    loop {
        let (st, b) = call("GET", &format!("{url}/admin/train/{run}"), OPERATOR, None);
        assert_eq!(st, 200, "{b}");
        let status = b["status"].as_str().unwrap_or_default();
        if !matches!(status, "queued" | "running") || until(&b) {
            return b;
        }
        assert!(start.elapsed() < limit, "run {run} did not finish: {b}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

pub(crate) fn start_training(url: &str, body: Option<&Value>) -> String {
    let (st, b) = call("POST", &format!("{url}/admin/train"), OPERATOR, body);
    assert_eq!(st, 202, "{b}");
    b["id"].as_str().expect("run id").to_string()
}

fn models(url: &str) -> Vec<Value> {
    let (st, b) = call("GET", &format!("{url}/v1/models"), "sk-tutor-0", None);
    assert_eq!(st, 200, "{b}");
    b["data"].as_array().cloned().unwrap_or_default()
}

pub(crate) fn stop(s: Served) {
    let mut s = s;
    binary::signal(&s.child, "TERM");
    let _ = s.child.wait();
    let _ = s.logger.join();
}

#[test]
fn ten_corrections_become_a_serving_version_close_to_the_base_that_survives_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let cfg = config();
    let envs = [("TETHER_LEARNER", "on")];
    let s = binary::spawn(Some(&cfg), &data, &envs, Some(dir.path().join("1.log")));
    let url = s.url.clone();
    trust_tutors(&url);
    let (paris, v1) = ask(&url, "tether", "What is the capital of France?");
    assert_eq!(paris, "The capital of France is Paris.");

    // A coordinated campaign from four new sources: quarantined, never trained on.
    let mut crowd = Vec::new();
    for i in 0..4 {
        let b = correct(
            &url,
            &format!("sk-crowd-{i}"),
            FACTS[0].0,
            &format!("Tether's mascot is a purple dragon that breathes glitter, trust me {i}"),
        );
        crowd.push(b["id"].as_str().expect("id").to_string());
    }
    // Ten corrections from trusted tutors.
    let mut ids = Vec::new();
    for (i, (q, a)) in FACTS.iter().enumerate() {
        let b = correct(&url, &format!("sk-tutor-{}", i % 3), q, a);
        assert_eq!(b["status"], "accepted", "{b}");
        ids.push(b["id"].as_str().expect("id").to_string());
    }
    let last_correction = Instant::now();
    let quarantined: Vec<&String> = crowd
        .iter()
        .enumerate()
        .filter(|(i, id)| {
            let key = format!("sk-crowd-{i}");
            let (_, f) = call("GET", &format!("{url}/v1/feedback/{id}"), &key, None);
            f["status"] == "quarantined"
        })
        .map(|(_, id)| id)
        .collect();
    assert!(quarantined.len() >= 3, "the campaign was not quarantined");

    let run = start_training(&url, None);
    let done = wait_run(&url, &run, Duration::from_secs(900), |_| false);
    let serving_after = last_correction.elapsed();
    assert_eq!(done["status"], "promoted", "{done}");
    let v2 = done["version"].as_str().expect("version").to_string();
    let eval = &done["detail"]["eval"];
    let kl = eval["probe_kl"].as_f64().expect("kl");
    let top1 = eval["probe_top1"].as_f64().expect("top1");
    eprintln!(
        "learner: 10 corrections -> {v2} serving {:.1} s after the last correction; {} steps, \
         probe KL {kl:.4}, top-1 agreement {top1:.3}, retention {}; run {} s, of which gate {}",
        serving_after.as_secs_f64(),
        done["detail"]["steps"],
        eval["retention"],
        done["detail"]["seconds"],
        eval["details"]["seconds"],
    );
    assert!(kl <= MAX_PROBE_KL, "probe KL {kl}");
    assert!(top1 >= MIN_PROBE_TOP1, "probe top-1 agreement {top1}");

    // The new version answers the corrections; the base still answers as before.
    let mut learned = 0;
    for (q, a) in FACTS {
        let (got, version) = ask(&url, "tether", q);
        assert_eq!(version, v2);
        if got == a {
            learned += 1;
        } else {
            eprintln!("not learned: {q} -> {got:?}");
        }
    }
    assert!(
        learned >= 9,
        "only {learned} of 10 corrections are answered"
    );
    assert_eq!(
        ask(&url, "tether", "What is the capital of France?"),
        ("The capital of France is Paris.".to_string(), v2.clone())
    );
    assert_ne!(ask(&url, &v1, FACTS[5].0).0, FACTS[5].1, "v1 is unchanged");

    // Listed with its parent; the manifest names exactly what it trained on.
    let listed = models(&url);
    let entry = listed
        .iter()
        .find(|m| m["id"] == v2.as_str())
        .expect("listed");
    assert_eq!(entry["parent"], v1.as_str());
    assert_eq!(entry["status"], "serving");
    let manifest: Value = serde_json::from_str(
        &std::fs::read_to_string(data.join("versions").join(&v2).join("manifest.json"))
            .expect("manifest"),
    )
    .expect("json");
    let trained: Vec<&str> = manifest["feedback"]
        .as_array()
        .expect("feedback")
        .iter()
        .filter_map(|f| f["id"].as_str())
        .collect();
    for id in &ids {
        assert!(
            trained.contains(&id.as_str()),
            "{id} missing from the manifest"
        );
    }
    for id in &quarantined {
        assert!(
            !trained.contains(&id.as_str()),
            "quarantined {id} was trained on"
        );
    }
    assert_eq!(manifest["parent"], v1.as_str());
    assert!(manifest["loss_curve"]
        .as_array()
        .is_some_and(|c| !c.is_empty()));
    assert!(manifest["data_hash"]
        .as_str()
        .is_some_and(|h| h.len() == 64));
    assert_eq!(manifest["hyperparameters"]["lora"]["rank"], 8);

    // Re-running the manifest gives the same adapter bytes.
    let rep = start_training(&url, Some(&json!({"reproduce": v2})));
    let rep = wait_run(&url, &rep, Duration::from_secs(900), |_| false);
    assert_eq!(rep["status"], "reproduced", "{rep}");
    // Re-running the manifest gives the same adapter bytes.
    assert_eq!(rep["detail"]["identical"], true, "{rep}");
    assert_eq!(
        rep["detail"]["reproduced_sha256"],
        rep["detail"]["expected_sha256"]
    );

    let (_, metrics) = (
        0,
        ureq::get(&format!("{url}/metrics"))
            .call()
            .expect("metrics")
            .into_string()
            .expect("text"),
    );
    assert!(metrics.contains("tether_learner_runs_total{outcome=\"promoted\"} 1"));
    assert!(metrics.contains("tether_feedback_to_serving_seconds_count 10"));
    stop(s);

    // After a restart the promoted version still serves.
    let s = binary::spawn(Some(&cfg), &data, &envs, Some(dir.path().join("2.log")));
    let (got, version) = ask(&s.url, "tether", FACTS[3].0);
    assert_eq!(version, v2);
    assert_eq!(got, FACTS[3].1);
    stop(s);
}

#[test]
fn a_run_says_which_accepted_corrections_it_could_not_train_on_and_why() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let cfg = config();
    let s = binary::spawn(Some(&cfg), &data, &[("TETHER_LEARNER", "on")], None);
    let url = s.url.clone();
    trust_tutors(&url);
    // A trusted correction whose answer names a person: the name is anonymized
    // before the correction is stored, so training on it would teach the model to
    // say the placeholder.
    let b = correct(
        &url,
        "sk-tutor-0",
        "Who maintains the billing service?",
        "The billing service is maintained by Dana Whitfield.",
    );
    assert_eq!(b["status"], "accepted", "{b}");
    let run = start_training(&url, None);
    let done = wait_run(&url, &run, Duration::from_secs(300), |_| false);
    assert_eq!(done["status"], "failed", "{done}");
    assert!(
        done["detail"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("none of the 1 waiting")),
        "{done}"
    );
    let skipped = &done["detail"]["feedback"]["skipped_items"];
    assert_eq!(skipped[0]["id"], b["id"], "{done}");
    assert!(
        skipped[0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("placeholder") && r.contains("name")),
        "{done}"
    );
    stop(s);
}

#[test]
fn kill_9_during_training_leaves_no_partial_version_and_loses_no_feedback() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let cfg = config();
    let envs = [("TETHER_LEARNER", "on")];
    let mut s = binary::spawn(Some(&cfg), &data, &envs, Some(dir.path().join("1.log")));
    let url = s.url.clone();
    trust_tutors(&url);
    let mut ids = Vec::new();
    for (i, (q, a)) in FACTS.iter().take(4).enumerate() {
        let b = correct(&url, &format!("sk-tutor-{}", i % 3), q, a);
        ids.push(b["id"].as_str().expect("id").to_string());
    }
    let run = start_training(&url, None);
    let mid = wait_run(&url, &run, Duration::from_secs(600), |b| {
        b["detail"]["step"].as_u64().is_some_and(|s| s >= 2)
    });
    assert_eq!(
        mid["status"], "running",
        "the run ended before it could be killed: {mid}"
    );
    binary::signal(&s.child, "KILL");
    let _ = s.child.wait();
    let _ = s.logger.join();

    let s = binary::spawn(Some(&cfg), &data, &envs, Some(dir.path().join("2.log")));
    let url = s.url.clone();
    let (_, b) = call("GET", &format!("{url}/admin/train/{run}"), OPERATOR, None);
    assert_eq!(b["status"], "interrupted", "{b}");
    let listed = models(&url);
    assert_eq!(listed.len(), 1, "only the base: {listed:?}");
    assert_eq!(
        folders(&data.join("versions")),
        vec![listed[0]["id"].as_str().unwrap_or_default().to_string()]
    );
    for (i, id) in ids.iter().enumerate() {
        let key = format!("sk-tutor-{}", i % 3);
        let (st, f) = call("GET", &format!("{url}/v1/feedback/{id}"), &key, None);
        assert_eq!(st, 200, "{f}");
        assert_eq!(f["status"], "accepted", "{f}");
    }
    // The feedback is still waiting to be trained on.
    let (st, b) = call("POST", &format!("{url}/admin/train"), OPERATOR, None);
    assert_eq!(st, 202, "{b}");
    stop(s);
}

fn folders(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("versions folder")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    v.sort();
    v
}

fn pair(m: &LoadedModel, q: &str, a: &str) -> Pair {
    Pair {
        prompt: m
            .encode_chat(&[ChatMessage::new("user", q)])
            .expect("encode"),
        answer: m.encode_answer(a).expect("encode answer"),
    }
}

fn hyper(steps: usize) -> Hyper {
    Hyper {
        lora: LoraConfig {
            layers: 4,
            ..LoraConfig::default()
        },
        learning_rate: 5e-3,
        max_steps: steps,
        min_steps: steps,
        target_prob: 0.6,
        kl_weight: 0.5,
        l2sp_weight: 1e-4,
        dpo_beta: 0.1,
        kto_beta: 0.1,
        anchors_per_step: 2,
        seed: 3,
    }
}

#[test]
fn preferences_and_ratings_move_log_probabilities_the_right_way() {
    let m = smollm();
    let q = "Should I water my cactus every day?";
    let chosen = pair(
        m,
        q,
        "No. Water a cactus only when its soil is completely dry.",
    );
    let rejected = pair(m, q, "Yes, water it every day so it never dries out.");
    let q2 = "Give me a tip for a rainy day.";
    let good = pair(m, q2, "Read a good book with a warm drink.");
    let bad = pair(m, q2, "Stand outside without a coat.");
    let anchor = pair(
        m,
        "What is the boiling point of water?",
        "Water boils at 100 degrees Celsius at sea level.",
    );
    let set = TrainSet {
        preferences: vec![Preference {
            id: "p".into(),
            chosen: chosen.clone(),
            rejected: rejected.clone(),
            weight: 1.0,
        }],
        ratings: vec![
            Rated {
                id: "r1".into(),
                pair: good.clone(),
                desirable: true,
                weight: 1.0,
            },
            Rated {
                id: "r2".into(),
                pair: bad.clone(),
                desirable: false,
                weight: 1.0,
            },
        ],
        anchors: vec![anchor],
        ..TrainSet::default()
    };
    let all = [&chosen, &rejected, &good, &bad];
    let before = score(&m.llama, None, &all, &[], Mode::Serve)
        .expect("score")
        .scores;
    let out = train(&m.llama, None, &set, &hyper(6), |_| true).expect("train");
    let after = score(&m.llama, Some(&out.adapter), &all, &[], Mode::Serve)
        .expect("score")
        .scores;
    let margin = |s: &[tether::learner::objective::SeqScore]| s[0].logp - s[1].logp;
    eprintln!(
        "preference margin {:.3} -> {:.3}; rated up {:.3} -> {:.3}; rated down {:.3} -> {:.3}",
        margin(&before),
        margin(&after),
        before[2].logp,
        after[2].logp,
        before[3].logp,
        after[3].logp
    );
    assert!(
        margin(&after) > margin(&before) + 0.5,
        "the preferred answer did not gain"
    );
    assert!(
        after[2].logp > before[2].logp,
        "a rated-up answer became less likely"
    );
    assert!(
        after[3].logp < before[3].logp,
        "a rated-down answer became more likely"
    );
}
