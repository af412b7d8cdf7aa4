//! Load generator against the real server on loopback:
//!
//! ```text
//! cargo bench --bench serve                 # throughput/TTFT table, then memory
//! cargo bench --bench serve -- --batching-on-only
//! cargo bench --bench serve -- --batching-on-only --clients 8   # one load level
//! cargo bench --bench serve -- --memory     # only peak RSS with 8 x 1k-token contexts
//! cargo bench --bench serve -- --memory --f32-kv   # the same with an f32 KV cache
//! cargo bench --bench serve -- --memory --no-learner   # serving alone
//! cargo bench --bench serve -- --batching-on-only --clients 8 --no-probe   # answers
//!                                           # judged without the hidden-state probe
//! ```
//!
//! For 1, 4, 8 and 16 concurrent streaming clients, with batching on and off: aggregate
//! completion tokens/s and p50/p99 time to first token. Each client sends requests
//! back to back (64-token completions). Then, in a fresh process, peak RSS while
//! serving 8 sequences whose contexts reach 1k tokens.

use std::io::{BufRead, BufReader};
use std::process::Command;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use serde_json::json;
use tether::config::Config;
use tether::server::Background;

/// Whether the servers judge answers with the hidden-state probe (the engine then
/// taps layer 16 on every decode step); `--no-probe` turns it off, for comparison.
static PROBE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Operator token of the bench's servers.
const OPERATOR: &str = "bench-operator-token";

/// The server with batching on or off, `max_batch` slots, no response cache, and no
/// learner: its one-off preparation at start-up (the evaluation suite's base answers)
/// would compete with the measured requests for the two cores.
fn start_server(batching: bool, max_batch: usize) -> (tempfile::TempDir, Background) {
    start_server_with(
        batching,
        max_batch,
        tether::engine::KvStorage::default(),
        false,
    )
}

fn start_server_with(
    batching: bool,
    max_batch: usize,
    kv: tether::engine::KvStorage,
    learner: bool,
) -> (tempfile::TempDir, Background) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = Config::load(None).expect("config");
    config.learner.enabled = learner;
    config.server.data_dir = dir.path().display().to_string();
    config.server.response_cache_bytes = 0;
    config.server.operator_token = Some(OPERATOR.into());
    config.engine.batching = batching;
    config.engine.max_batch = max_batch;
    config.engine.kv_cache = kv;
    config.safety.probe = PROBE.load(std::sync::atomic::Ordering::Relaxed);
    let server = Background::start(config, Duration::from_secs(300)).expect("server");
    (dir, server)
}

/// One streaming request; returns (time to first token, completion tokens).
fn stream(url: &str, prompt: &str, max_tokens: usize, seed: u64) -> (Duration, usize) {
    let t = Instant::now();
    let resp = ureq::post(&format!("{url}/v1/chat/completions"))
        .send_json(
            json!({"model": "tether", "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens, "temperature": 0.7, "seed": seed, "stream": true,
            "stream_options": {"include_usage": true}}),
        )
        .expect("request");
    let mut ttft = None;
    let mut tokens = 0;
    for line in BufReader::new(resp.into_reader()).lines() {
        let line = line.expect("line");
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        if data == "[DONE]" {
            break;
        }
        let v: serde_json::Value = serde_json::from_str(data).expect("json");
        if ttft.is_none()
            && v["choices"][0]["delta"]["content"]
                .as_str()
                .is_some_and(|s| !s.is_empty())
        {
            ttft = Some(t.elapsed());
        }
        if let Some(n) = v["usage"]["completion_tokens"].as_u64() {
            tokens = n as usize;
        }
    }
    (ttft.unwrap_or_else(|| t.elapsed()), tokens)
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn load(batching: bool, clients: usize, requests_per_client: usize) {
    let (_dir, server) = start_server(batching, 16);
    // Warm-up.
    stream(&server.url, "Hello", 4, 0);
    let barrier = Arc::new(Barrier::new(clients));
    let start = Instant::now();
    let handles: Vec<_> = (0..clients)
        .map(|c| {
            let url = server.url.clone();
            let b = barrier.clone();
            std::thread::spawn(move || {
                b.wait();
                (0..requests_per_client)
                    .map(|r| {
                        let prompt = format!(
                            "Write a short story about a {} who finds a {}.",
                            ["cat", "robot", "sailor", "baker"][c % 4],
                            ["key", "map", "song", "door", "lamp", "coin", "letter", "garden"]
                                [r % 8]
                        );
                        stream(&url, &prompt, 64, (c * 100 + r) as u64)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let results: Vec<(Duration, usize)> = handles
        .into_iter()
        .flat_map(|h| h.join().expect("join"))
        .collect();
    let wall = start.elapsed().as_secs_f64();
    let tokens: usize = results.iter().map(|r| r.1).sum();
    let mut ttft: Vec<f64> = results.iter().map(|r| r.0.as_secs_f64() * 1000.0).collect();
    println!(
        "| {} | {clients} | {} | {:.1} | {:.0} | {:.0} |",
        if batching { "on" } else { "off" },
        results.len(),
        tokens as f64 / wall,
        percentile(&mut ttft, 0.5),
        percentile(&mut ttft, 0.99)
    );
}

fn peak_rss_mb() -> f64 {
    tether::monitoring::peak_rss_bytes().map_or(f64::NAN, |b| b as f64 / 1048576.0)
}

/// Waits until the learner has done its start-up preparation.
fn wait_until_prepared(url: &str) {
    let deadline = Instant::now() + Duration::from_secs(900);
    while Instant::now() < deadline {
        let prepared = ureq::get(&format!("{url}/admin/train"))
            .set("Authorization", &format!("Bearer {OPERATOR}"))
            .call()
            .ok()
            .and_then(|r| r.into_json::<serde_json::Value>().ok())
            .is_some_and(|v| v["learner"]["prepared"] == true);
        if prepared {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("the learner did not prepare within 15 minutes");
}

/// Resets the process's peak RSS (`VmHWM`) to its current RSS.
fn reset_peak_rss() {
    if let Err(e) = std::fs::write("/proc/self/clear_refs", "5") {
        eprintln!("cannot reset the peak RSS ({e}); the figure includes start-up");
    }
}

fn memory(kv: tether::engine::KvStorage, learner: bool) {
    // The whole server, learner included unless `--no-learner`. Its one-off start-up
    // preparation (the evaluation suite's base answers) is waited for and its peak
    // reported apart: the figure is serving with the learner resident.
    let (_dir, server) = start_server_with(true, 8, kv, learner);
    if learner {
        wait_until_prepared(&server.url);
        println!(
            "peak RSS of start-up (load and the learner's preparation): {:.0} MB",
            peak_rss_mb()
        );
        reset_peak_rss();
    }
    let before = peak_rss_mb();
    stream(&server.url, "Hello", 4, 0);
    let warm = peak_rss_mb();
    // ~900-token prompts + 124 generated tokens: contexts reach about 1k tokens.
    let filler = "The quick brown fox jumps over the lazy dog. ".repeat(85);
    let barrier = Arc::new(Barrier::new(8));
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let url = server.url.clone();
            let b = barrier.clone();
            let prompt =
                format!("{filler}\nSummarise the text above in one word, then count to {i}.");
            std::thread::spawn(move || {
                b.wait();
                stream(&url, &prompt, 124, i)
            })
        })
        .collect();
    let tokens: usize = handles.into_iter().map(|h| h.join().expect("join").1).sum();
    println!(
        "peak RSS serving 8 sequences with ~1k-token contexts, {kv:?} KV cache: {:.0} MB (after load: {before:.0} MB; after one short request: {warm:.0} MB; {tokens} tokens generated)",
        peak_rss_mb()
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--no-probe") {
        PROBE.store(false, std::sync::atomic::Ordering::Relaxed);
    }
    if args.iter().any(|a| a == "--memory") {
        let kv = if args.iter().any(|a| a == "--f32-kv") {
            tether::engine::KvStorage::F32
        } else {
            tether::engine::KvStorage::F16
        };
        memory(kv, !args.iter().any(|a| a == "--no-learner"));
        return;
    }
    println!("| batching | clients | requests | aggregate completion tok/s | TTFT p50 ms | TTFT p99 ms |");
    println!("|---|---|---|---|---|---|");
    let modes: &[bool] = if args.iter().any(|a| a == "--batching-on-only") {
        &[true]
    } else {
        &[true, false]
    };
    // `--clients N`: only that many (for profiling one load level).
    let only: Option<usize> = args
        .iter()
        .position(|a| a == "--clients")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok());
    for &batching in modes {
        for clients in [1, 4, 8, 16] {
            if only.is_some_and(|n| n != clients) {
                continue;
            }
            // Enough requests that one slow moment on a shared machine does not decide
            // the figure (fewer with batching off, where 16 clients queue for minutes).
            let per_client = match (clients, batching) {
                (1, _) => 8,
                (_, true) => 4,
                (_, false) => 2,
            };
            load(batching, clients, per_client);
        }
    }
    if only.is_some() {
        return;
    }
    let exe = std::env::current_exe().expect("exe");
    let status = Command::new(exe)
        .args(["--bench", "--memory"])
        .status()
        .expect("spawn");
    assert!(status.success());
}
