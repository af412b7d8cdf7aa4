//! The batching engine: one thread that owns the model's compute and runs every
//! admitted sequence together, step by step (continuous batching).
//!
//! Requests come in through [`Engine::submit`]; each gets a channel of [`Event`]s
//! (tokens as they are sampled, then one `Finished` per choice). Between two forward
//! passes the scheduler admits waiting requests, gives prefilling sequences a bounded
//! chunk of their prompt, and drops sequences whose client went away or whose deadline
//! passed. A prompt that starts like a recent one takes the shared tokens' keys and
//! values from the prefix cache ([`prefix`]). Nothing here knows HTTP.

mod prefix;
mod scheduler;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Instant;

use crate::model::{FinishReason, LoadedModel, LoraAdapter, SamplingParams, TokenLogprob};
use crate::monitoring::Metrics;

/// Limits of the engine.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineConfig {
    /// Most sequences decoded together.
    pub max_batch: usize,
    /// Most requests waiting for a slot; more are refused (HTTP 429).
    pub max_queue: usize,
    /// Most prompt tokens prefilled in one step, shared by prefilling sequences, so a
    /// long prompt does not stall running streams.
    pub prefill_chunk: usize,
    /// Run sequences one at a time instead of batching (for comparison benchmarks).
    pub batching: bool,
    /// KV-cache storage: `f16` (default, half the memory) or `f32` (exact).
    pub kv_cache: KvStorage,
    /// Bytes of recent prompts' keys and values kept so that prompts starting with the
    /// same tokens skip recomputing them (0: off).
    pub prefix_cache_bytes: usize,
    /// Let a step whose sequences can be split evenly run as two half-batches side by
    /// side, one per thread, instead of one batch whose every product is split across
    /// the threads (see `scheduler::split_batch`). Answers are the same either way.
    pub split_batches: bool,
}

/// How the KV cache stores keys and values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KvStorage {
    /// Exact, twice the memory.
    F32,
    /// Half the memory; keys and values are rounded to f16 when stored (as in
    /// llama.cpp's default), attention computes in f32.
    #[default]
    F16,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_batch: 16,
            max_queue: 64,
            prefill_chunk: 256,
            batching: true,
            kv_cache: KvStorage::F16,
            prefix_cache_bytes: 16 << 20,
            split_batches: true,
        }
    }
}

/// One generation request: a tokenized prompt and `n` choices to sample.
pub struct Request {
    /// Prompt token ids.
    pub prompt: Vec<u32>,
    /// Sampling parameters; choice `i` uses `seed + i` when a seed is given.
    pub params: SamplingParams,
    /// Number of choices.
    pub n: usize,
    /// Adapter of the version that serves this request (`None`: the base).
    pub adapter: Option<Arc<LoraAdapter>>,
    /// Version id, for metrics.
    pub version: String,
    /// The request is abandoned after this instant.
    pub deadline: Instant,
    /// Where events go; dropping the receiver cancels the request.
    pub events: tokio::sync::mpsc::UnboundedSender<Event>,
    /// When set, token events carry the hidden states entering this layer, summed
    /// over the answer so far (for the safety probe).
    pub tap_layer: Option<usize>,
}

/// What the engine reports about a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A token of one choice, with the text it completes (possibly empty).
    Token {
        /// Choice index.
        choice: usize,
        /// Token id.
        token: u32,
        /// Text released by this token.
        text: String,
        /// Its logprob, when requested.
        logprob: Option<TokenLogprob>,
        /// With [`Request::tap_layer`]: the hidden states entering that layer, summed
        /// over the answer's tokens run so far (`None` before the first, or without
        /// a tap).
        state: Option<crate::model::Tap>,
    },
    /// A choice ended.
    Finished {
        /// Choice index.
        choice: usize,
        /// Why.
        reason: FinishReason,
        /// Tokens generated for this choice.
        completion_tokens: usize,
        /// Text released at the end (held back for stop-string matching).
        text: String,
    },
    /// The request failed; no further events follow.
    Failed(String),
}

/// Why a request was not accepted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SubmitError {
    /// Too many requests are waiting.
    #[error("the server is busy: {0} requests are already waiting")]
    QueueFull(usize),
    /// The engine thread has stopped.
    #[error("the generation engine has stopped")]
    Stopped,
}

/// Handle to the engine thread.
pub struct Engine {
    tx: mpsc::Sender<Request>,
    waiting: Arc<AtomicUsize>,
    config: EngineConfig,
}

impl Engine {
    /// Starts the engine thread for `model`.
    pub fn start(model: Arc<LoadedModel>, config: EngineConfig, metrics: Arc<Metrics>) -> Self {
        let (tx, rx) = mpsc::channel();
        let waiting = Arc::new(AtomicUsize::new(0));
        let sched = scheduler::Scheduler::new(model, config.clone(), metrics, waiting.clone());
        // The engine's own compute threads, as many as the global pool's (one per
        // core); the learner keeps using the global pool.
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(rayon::current_num_threads())
            .thread_name(|i| format!("tether-compute-{i}"))
            .build()
            .map_err(|e| {
                tracing::warn!("no compute pool for the engine ({e}); using the global one")
            })
            .ok();
        std::thread::Builder::new()
            .name("tether-engine".into())
            .spawn(move || sched.run(rx, pool))
            .map(|_| ())
            .unwrap_or_else(|e| tracing::error!("cannot start the engine thread: {e}"));
        Self {
            tx,
            waiting,
            config,
        }
    }

    /// Queues a request, or refuses it when the queue is full.
    pub fn submit(&self, req: Request) -> Result<(), SubmitError> {
        let prev = self.waiting.fetch_add(1, Ordering::SeqCst);
        if prev >= self.config.max_queue {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(SubmitError::QueueFull(prev));
        }
        self.tx.send(req).map_err(|_| {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            SubmitError::Stopped
        })
    }

    /// Requests waiting for a slot.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    /// The engine's limits.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }
}
