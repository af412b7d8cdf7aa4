//! Learner figures on CPU: one training run on ten corrections with the default
//! configuration (rank-8 LoRA on the last 4 layers, anchor KL, L2-SP), as the server
//! runs it.
//!
//! ```text
//! cargo bench --bench learner
//! ```
//!
//! Prints steps, mean step time, training tokens/s and peak RSS.

use std::time::Instant;

use tether::config::Config;
use tether::learner::{train, Correction, Pair, TrainSet};
use tether::model::{ChatMessage, LoadOptions, LoadedModel, ModelSpec};

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
    let out = train(&m.llama, None, &set, &h, |_| true).expect("train");
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
