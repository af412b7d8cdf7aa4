//! Model-core figures for the default model on this machine, one compute path per
//! process (so peak RSS is per path):
//!
//! ```text
//! cargo bench --bench model                 # all paths
//! cargo bench --bench model -- --compute qf32
//! cargo bench --bench model -- --decode-only 8 --prompt 40   # batched decode only, in a pool as the engine runs it
//! cargo bench --bench model -- --decode-only 8 --prompt 40 --split   # the same as two halves side by side
//! ```
//!
//! Prints decode tokens/s (one sequence: 128 tokens after a 200-token prompt), prefill
//! tokens/s (200- and 512-token prompts), aggregate decode tokens/s at 4 and 8
//! sequences, LoRA training step time (rank 8, one 256-token example) and peak RSS.

use std::process::Command;
use std::time::Instant;

use tether::learner::{SftExample, SftTrainer};
use tether::model::{
    ComputePath, KvCache, LoadOptions, LoadedModel, LoraConfig, Mode, ModelSpec, Outputs, SeqInput,
};

const TEXT: &str = "The history of cartography is the study of maps and map making. Early maps \
were drawn on clay tablets, papyrus and animal skins, and they recorded rivers, roads, fields \
and the boundaries of kingdoms. Greek scholars measured the size of the earth and drew the first \
grids of latitude and longitude; medieval maps mixed geography with legend, and the age of \
exploration brought charts that sailors trusted with their lives. ";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let compute = flag(&args, "--compute")
        .map(|c| c.parse::<ComputePath>().expect("--compute qf32|f32|f16|q8"));
    // `--decode-only N`: only batched decode of N sequences, inside a thread pool as
    // the engine runs it (for profiling).
    if let Some(n) = flag(&args, "--decode-only").and_then(|n| n.parse::<usize>().ok()) {
        let opts = LoadOptions {
            compute: compute.unwrap_or_default(),
            ..LoadOptions::default()
        };
        let m = LoadedModel::load(&ModelSpec::Default, &opts).expect("load default model");
        let pool = rayon::ThreadPoolBuilder::new().build().expect("pool");
        let prompt = flag(&args, "--prompt")
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or(200);
        let split = args.iter().any(|a| a == "--split");
        let rate = pool.install(|| decode_rate(&m, n, prompt, 128, split));
        println!("aggregate decode, {n} sequences after {prompt}-token prompts: {rate:.1} tok/s");
        return;
    }
    match compute {
        Some(c) => run(c),
        None => {
            println!(
                "| compute | load s | decode tok/s (1 seq) | prefill tok/s (200) | prefill tok/s (512) | \
                 aggregate decode tok/s (4) | aggregate decode tok/s (8) | peak RSS serving MB | LoRA step s (r8, 256 tok) | LoRA tok/s | peak RSS with training MB |"
            );
            println!("|---|---|---|---|---|---|---|---|---|---|---|");
            let exe = std::env::current_exe().expect("current exe");
            for c in ["qf32", "f32", "f16", "q8"] {
                let status = Command::new(&exe)
                    .args(["--bench", "--compute", c])
                    .status()
                    .expect("spawn");
                assert!(status.success(), "{c} failed");
            }
        }
    }
}

/// The argument after `name`, if given.
fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    let i = args.iter().position(|a| a == name)?;
    args.get(i + 1).map(String::as_str)
}

fn prompt_tokens(m: &LoadedModel, n: usize, salt: usize) -> Vec<u32> {
    let mut ids = Vec::new();
    while ids.len() < n + salt {
        ids.extend(m.tokenizer.encode(TEXT).expect("encode"));
    }
    ids[salt..salt + n].to_vec()
}

fn argmax(logits: &candle_core::Tensor) -> Vec<u32> {
    logits.argmax(1).and_then(|t| t.to_vec1()).expect("argmax")
}

fn prefill(m: &LoadedModel, tokens: &[u32], cache: &mut KvCache) -> Vec<u32> {
    let logits = m
        .llama
        .forward(
            &mut [SeqInput {
                tokens,
                cache: Some(cache),
                adapter: None,
                tap: None,
            }],
            Outputs::LastToken,
            Mode::Serve,
        )
        .expect("prefill");
    argmax(&logits)
}

fn prefill_rate(m: &LoadedModel, n: usize) -> f64 {
    let tokens = prompt_tokens(m, n, 0);
    let mut best = f64::MAX;
    for _ in 0..3 {
        let mut cache = m.llama.new_cache();
        let t = Instant::now();
        prefill(m, &tokens, &mut cache);
        best = best.min(t.elapsed().as_secs_f64());
    }
    n as f64 / best
}

/// Aggregate decode tokens/s for `batch` sequences after `prompt`-token prompts.
///
/// With `split`, each step runs as two halves side by side (one forward pass per
/// thread), as the engine runs steps of many sequences.
fn decode_rate(m: &LoadedModel, batch: usize, prompt: usize, steps: usize, split: bool) -> f64 {
    let mut caches: Vec<KvCache> = (0..batch).map(|_| m.llama.new_cache()).collect();
    let mut next: Vec<u32> = (0..batch)
        .map(|i| prefill(m, &prompt_tokens(m, prompt, i * 7), &mut caches[i])[0])
        .collect();
    let t = Instant::now();
    for _ in 0..steps {
        let toks: Vec<[u32; 1]> = next.iter().map(|&t| [t]).collect();
        let mut seqs: Vec<SeqInput<'_>> = toks
            .iter()
            .zip(caches.iter_mut())
            .map(|(t, c)| SeqInput {
                tokens: t,
                cache: Some(c),
                adapter: None,
                tap: None,
            })
            .collect();
        let logits = if split && seqs.len() >= 2 {
            let k = seqs.len().div_ceil(2);
            let (a, b) = seqs.split_at_mut(k);
            let (la, lb) = rayon::join(
                || m.llama.forward(a, Outputs::LastToken, Mode::Serve),
                || m.llama.forward(b, Outputs::LastToken, Mode::Serve),
            );
            candle_core::Tensor::cat(&[la.expect("a"), lb.expect("b")], 0).expect("cat")
        } else {
            m.llama
                .forward(&mut seqs, Outputs::LastToken, Mode::Serve)
                .expect("decode")
        };
        next = argmax(&logits);
    }
    (batch * steps) as f64 / t.elapsed().as_secs_f64()
}

fn lora_step(m: &LoadedModel) -> Option<f64> {
    if !m.llama.is_trainable() {
        return None;
    }
    let ids = prompt_tokens(m, 256, 3);
    let example = SftExample {
        prompt: ids[..64].to_vec(),
        answer: ids[64..].to_vec(),
        weight: 1.0,
    };
    let mut trainer = SftTrainer::new(&m.llama, &LoraConfig::default(), 1, 1e-4).expect("trainer");
    trainer
        .step(&m.llama, std::slice::from_ref(&example))
        .expect("warm-up");
    let n = 3;
    let t = Instant::now();
    for _ in 0..n {
        trainer
            .step(&m.llama, std::slice::from_ref(&example))
            .expect("step");
    }
    Some(t.elapsed().as_secs_f64() / n as f64)
}

fn peak_rss_mb() -> f64 {
    tether::monitoring::peak_rss_bytes().map_or(f64::NAN, |b| b as f64 / 1048576.0)
}

fn run(compute: ComputePath) {
    let t = Instant::now();
    let opts = LoadOptions {
        compute,
        ..LoadOptions::default()
    };
    let m = LoadedModel::load(&ModelSpec::Default, &opts).expect("load default model");
    let load = t.elapsed().as_secs_f64();
    let p200 = prefill_rate(&m, 200);
    let p512 = prefill_rate(&m, 512);
    let d1 = decode_rate(&m, 1, 200, 128, false);
    let d4 = decode_rate(&m, 4, 200, 64, false);
    let d8 = decode_rate(&m, 8, 200, 64, false);
    let serving_rss = peak_rss_mb();
    let step = lora_step(&m);
    let (step_s, step_tps) = match step {
        Some(s) => (format!("{s:.2}"), format!("{:.0}", 256.0 / s)),
        None => ("n/a (no backward)".into(), "n/a".into()),
    };
    println!(
        "| {compute} | {load:.1} | {d1:.1} | {p200:.0} | {p512:.0} | {d4:.1} | {d8:.1} | {serving_rss:.0} | {step_s} | {step_tps} | {:.0} |",
        peak_rss_mb()
    );
}
