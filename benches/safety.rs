//! Latency of the safety cascade (normalisation, rules, classifier, policy) on one
//! thread, for the committed `safety/` folder:
//!
//! ```text
//! cargo bench --bench safety
//! ```
//!
//! Prints p50/p99/max per check for a 200-token prompt (input direction), a
//! 200-token answer (output direction) and a 400-character stream window, with the
//! verdict cache bypassed so every check does the full work; and the stream window
//! again with a tap of the answer's hidden states, so the answer probe runs too (the
//! tap is the engine's: its cost inside a forward pass is measured by the serve
//! bench).

use std::path::Path;
use std::time::{Duration, Instant};

use tether::model::Tap;
use tether::safety::{Direction, Safety};

/// About 200 SmolLM2 tokens of ordinary prose (counted with the model's tokenizer
/// when it is cached; see the printed count).
const PROMPT: &str = "I'm planning a two-week trip through northern Italy next spring and I would \
love some help putting together an itinerary. We land in Milan and fly home from Venice. I'm \
travelling with my partner and our two children, who are nine and twelve, so we want a mix of \
museums, outdoor time and good food without rushing from one city to the next every day. We \
are thinking about Lake Como, Verona, Bologna and maybe a few days in the Dolomites for some \
easy hiking. Could you suggest how many nights to spend in each place, which towns make a good \
base, and whether it is better to rent a car or take trains? We also need to know which \
museums should be booked in advance, what the weather is usually like in April, and any \
restaurants or local dishes the kids might enjoy. Finally, please include a rough daily \
budget for a family of four, including hotels, meals, transport and entrance tickets.";

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn measure(
    safety: &Safety,
    text: &str,
    d: Direction,
    tap: Option<&Tap>,
    iters: usize,
) -> Vec<Duration> {
    let cascade = safety.current();
    let mut times = Vec::with_capacity(iters);
    for i in 0..iters {
        // A different text each time (a digit changes), so nothing is reused.
        let t = format!("{text} {i}");
        let start = Instant::now();
        let v = safety.check_answer(&cascade, &t, d, tap, false);
        times.push(start.elapsed());
        std::hint::black_box(v);
    }
    times.sort();
    times
}

fn main() {
    let config = tether::config::SafetyConfig {
        dir: "safety".into(),
        cache_entries: 0,
        ..tether::config::Config::load(None)
            .expect("default config")
            .safety
    };
    let safety = Safety::open(&config, Path::new("."), None).expect("safety folder loads");
    assert!(
        safety.current().has_classifier(),
        "safety/classifier.safetensors is missing"
    );
    let opts = tether::model::LoadOptions::default();
    let cached = tether::model::fetch::default_model_path(&opts.home);
    let tokens = cached
        .exists()
        .then(|| {
            tether::model::LoadedModel::load(&tether::model::ModelSpec::Gguf(cached), &opts).ok()
        })
        .flatten()
        .and_then(|m| m.tokenizer.encode(PROMPT).ok().map(|ids| ids.len()));
    match tokens {
        Some(n) => println!("prompt: {n} tokens, {} characters", PROMPT.len()),
        None => println!(
            "prompt: {} characters (model not cached; ~200 tokens)",
            PROMPT.len()
        ),
    }
    let window: String = PROMPT.chars().take(400).collect();
    // Warm up.
    let _ = measure(&safety, PROMPT, Direction::Input, None, 200);
    // A tap as the engine sends it: 576 summed states over 60 answer tokens.
    let probe = safety
        .current()
        .probe()
        .cloned()
        .expect("safety/probe.safetensors");
    let tap = Tap {
        layer: probe.layer,
        sum: (0..probe.weights.len())
            .map(|i| ((i * 7919) % 101) as f32 / 10.0 - 5.0)
            .collect(),
        rows: 60,
    };
    println!("| check | p50 µs | p99 µs | max µs |");
    println!("|---|---|---|---|");
    for (name, text, d, tap) in [
        ("200-token prompt (input)", PROMPT, Direction::Input, None),
        ("200-token answer (output)", PROMPT, Direction::Output, None),
        (
            "400-char stream window (output)",
            window.as_str(),
            Direction::Output,
            None,
        ),
        (
            "400-char stream window with the answer probe (output)",
            window.as_str(),
            Direction::Output,
            Some(&tap),
        ),
    ] {
        let t = measure(&safety, text, d, tap, 3000);
        println!(
            "| {name} | {:.0} | {:.0} | {:.0} |",
            percentile(&t, 0.5).as_secs_f64() * 1e6,
            percentile(&t, 0.99).as_secs_f64() * 1e6,
            t[t.len() - 1].as_secs_f64() * 1e6
        );
    }
}
