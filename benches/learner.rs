//! Learner figures on CPU: one training run on ten corrections with the default
//! configuration (rank-8 LoRA on the last 4 layers, anchor KL, L2-SP), as the server
//! runs it.
//!
//! ```text
//! cargo bench --bench learner                  # both figures below
//! cargo bench --bench learner -- --end-to-end  # only the second
//! ```
//!
//! 1. One training run through the library: steps, mean step time, training tokens/s
//!    and peak RSS.
//! 2. End to end on the real server (in this process, release build, default
//!    configuration except canaries off): once the learner has prepared, three trusted
//!    tutors send the ten corrections through `/v1/feedback`; an operator starts a
//!    run right after the last one is accepted; the time until that run's version
//!    serves, with its training and gate parts.

use std::time::{Duration, Instant};

use serde_json::json;
use tether::config::Config;
use tether::learner::{train, Correction, Pair, TrainSet};
use tether::model::{ChatMessage, LoadOptions, LoadedModel, ModelSpec};
use tether::server::Background;

#[path = "../tests/it/facts.rs"]
mod facts;
use facts::FACTS;

const ANCHORS: [(&str, &str); 4] = [
    (
        "Why is the sky blue?",
        "The sky looks blue because air scatters blue sunlight more than red.",
    ),
    (
        "What is photosynthesis?",
        "Photosynthesis is how plants turn light, water and carbon dioxide into sugar.",
    ),
    (
        "How do I boil an egg?",
        "Put the egg in boiling water for about nine minutes, then cool it.",
    ),
    (
        "What are the primary colours?",
        "The primary colours are red, yellow and blue.",
    ),
];

fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--end-to-end") {
        library_run();
    }
    end_to_end();
}

const OPERATOR: &str = "bench-operator";

fn call(method: &str, url: &str, key: &str, body: Option<serde_json::Value>) -> serde_json::Value {
    let req = ureq::request(method, url)
        .set("Authorization", &format!("Bearer {key}"))
        .timeout(Duration::from_secs(600));
    let r = match body {
        Some(b) => req.send_json(b),
        None => req.call(),
    };
    match r {
        Ok(r) => r.into_json().expect("json"),
        Err(ureq::Error::Status(c, r)) => panic!("{method} {url}: {c} {:?}", r.into_string()),
        Err(e) => panic!("{method} {url}: {e}"),
    }
}

fn end_to_end() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("bench.toml");
    let keys: Vec<String> = (0..3)
        .map(|i| format!("{{ key = \"sk-tutor-{i}\", source = \"tutor-{i}\" }}"))
        .collect();
    std::fs::write(
        &file,
        format!(
            "[server]\noperator_token = \"{OPERATOR}\"\nkeys = [{}]\ndata_dir = \"{}\"\n\n\
             [feedback]\nper_minute = 0\n\n[learner]\nmin_weight = 0.0\n\n[canary]\nshare = 0.0\n",
            keys.join(", "),
            dir.path().join("data").display()
        ),
    )
    .expect("config file");
    let config = Config::load(Some(&file)).expect("config");
    let server = Background::start(config, Duration::from_secs(300)).expect("server");
    let url = server.url.clone();
    for i in 0..3 {
        call(
            "PATCH",
            &format!("{url}/admin/sources/tutor-{i}"),
            OPERATOR,
            Some(json!({"trusted": true})),
        );
    }
    let prepared = Instant::now();
    while call("GET", &format!("{url}/admin/train"), OPERATOR, None)["learner"]["prepared"] != true
    {
        std::thread::sleep(Duration::from_millis(200));
    }
    let prepare_secs = prepared.elapsed().as_secs_f64();
    for (i, (q, a)) in FACTS.iter().enumerate() {
        let key = format!("sk-tutor-{}", i % 3);
        let chat = call(
            "POST",
            &format!("{url}/v1/chat/completions"),
            &key,
            Some(
                json!({"model": "tether", "messages": [{"role": "user", "content": q}],
                "max_tokens": 16, "temperature": 0}),
            ),
        );
        let id = chat["id"].as_str().expect("completion id");
        let fb = call(
            "POST",
            &format!("{url}/v1/feedback"),
            &key,
            Some(json!({"completion_id": id, "kind": "correction", "correction": a})),
        );
        assert_eq!(fb["status"], "accepted", "{fb}");
    }
    let last = Instant::now();
    let run = call("POST", &format!("{url}/admin/train"), OPERATOR, None)["id"]
        .as_str()
        .expect("run id")
        .to_string();
    let done = loop {
        let r = call("GET", &format!("{url}/admin/train/{run}"), OPERATOR, None);
        if !matches!(r["status"].as_str(), Some("queued" | "running")) {
            break r;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let total = last.elapsed().as_secs_f64();
    assert_eq!(done["status"], "promoted", "{done}");
    let detail = &done["detail"];
    let gate = &detail["eval"]["details"]["seconds"];
    let gate_total: f64 = gate
        .as_object()
        .map(|m| m.values().filter_map(|v| v.as_f64()).sum())
        .unwrap_or(0.0);
    let run_secs = detail["seconds"].as_f64().unwrap_or(0.0);
    println!();
    println!("| last correction -> serving s | run s | training s (steps) | gate s | gate checks s | probe KL | top-1 | retention | learner preparation at start-up s |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let eval = &detail["eval"];
    println!(
        "| {total:.1} | {run_secs:.1} | {:.1} ({}) | {gate_total:.1} | {} | {:.3} | {:.3} | {} | {prepare_secs:.1} |",
        run_secs - gate_total,
        detail["steps"],
        gate,
        eval["probe_kl"].as_f64().unwrap_or(f64::NAN),
        eval["probe_top1"].as_f64().unwrap_or(f64::NAN),
        eval["retention"],
    );
}

fn library_run() {
    let cfg = Config::load(None).expect("config");
    let m = LoadedModel::load(&ModelSpec::Default, &LoadOptions::default()).expect("model");
    let pair = |q: &str, a: &str| Pair {
        prompt: m
            .encode_chat(&[ChatMessage::new("user", q)])
            .expect("encode"),
        answer: m.encode_answer(a).expect("encode"),
    };
    let set = TrainSet {
        corrections: FACTS
            .iter()
            .enumerate()
            .map(|(i, (q, a))| Correction {
                id: format!("c{i}"),
                pair: pair(q, a),
                weight: 1.0,
            })
            .collect(),
        anchors: ANCHORS.iter().map(|(q, a)| pair(q, a)).collect(),
        ..TrainSet::default()
    };
    let h = cfg.learner.hyper(&cfg.lora);
    let start = Instant::now();
    let out = rayon::scope(|_| train(&m.llama, None, &set, &h, |_| true)).expect("train");
    let total = start.elapsed().as_secs_f64();
    let steps = out.steps.len();
    let step_secs: f64 = out.steps.iter().map(|s| s.secs as f64).sum::<f64>() / steps as f64;
    let tokens: usize = out.steps.iter().map(|s| s.tokens).sum();
    let step_total: f64 = out.steps.iter().map(|s| s.secs as f64).sum();
    println!("| LoRA | steps | mean step s | tokens/step | training tok/s | run s (incl. frozen-layer pass) | peak RSS MB |");
    println!("|---|---|---|---|---|---|---|");
    println!(
        "| r{} on last {} layers | {steps} | {step_secs:.2} | {} | {:.0} | {total:.1} | {:.0} |",
        cfg.lora.rank,
        cfg.lora.layers,
        tokens / steps.max(1),
        tokens as f64 / step_total,
        peak_rss_mb()
    );
}
