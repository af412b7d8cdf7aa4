//! The engine loop: admit, build one packed batch, run it, sample, report.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Instant;

use rayon::prelude::*;

use super::prefix::PrefixCache;
use super::{EngineConfig, Event, KvStorage, Request};
use crate::model::{
    FinishReason, Generation, KvCache, LoadedModel, LoraAdapter, Mode, Outputs, SeqInput, Step, Tap,
};
use crate::monitoring::Metrics;

/// What every choice of one request shares.
struct Shared {
    prompt: Vec<u32>,
    adapter: Option<Arc<LoraAdapter>>,
    version: String,
    deadline: Instant,
    events: tokio::sync::mpsc::UnboundedSender<Event>,
    tap_layer: Option<usize>,
}

/// One choice being generated.
struct Seq {
    shared: Arc<Shared>,
    choice: usize,
    cache: KvCache,
    gen: Generation,
    /// Prompt tokens already run through the model.
    prefilled: usize,
    /// Whether the sequence has run: its cached prompt prefix is looked up and copied
    /// when it first runs, so a waiting sequence holds no cache memory and sees the
    /// prompts finished just before it.
    started: bool,
    /// The last sampled token, to be fed next.
    next: Option<u32>,
    last_token_at: Option<Instant>,
    admitted_at: Instant,
    done: bool,
    /// The answer's hidden states entering the request's tap layer (decode steps
    /// only: the prompt is not part of the answer).
    tap: Option<Tap>,
}

impl Seq {
    fn send(&self, e: Event) -> bool {
        self.shared.events.send(e).is_ok()
    }
}

pub(super) struct Scheduler {
    model: Arc<LoadedModel>,
    config: EngineConfig,
    metrics: Arc<Metrics>,
    waiting_count: Arc<AtomicUsize>,
    waiting: VecDeque<(Request, Instant)>,
    running: Vec<Seq>,
    prefixes: PrefixCache,
}

impl Scheduler {
    pub(super) fn new(
        model: Arc<LoadedModel>,
        config: EngineConfig,
        metrics: Arc<Metrics>,
        waiting_count: Arc<AtomicUsize>,
    ) -> Self {
        let prefixes = PrefixCache::new(config.prefix_cache_bytes);
        Self {
            model,
            config,
            metrics,
            waiting_count,
            waiting: VecDeque::new(),
            running: Vec::new(),
            prefixes,
        }
    }

    /// The engine loop. Each step runs inside `pool` (when there is one): the matrix
    /// products, attention and element-wise ops of a forward pass are a few hundred
    /// small parallel jobs, and a thread outside the pool would hand each to the pool
    /// and sleep until it is done, two context switches per job. Inside it, this
    /// thread works on them itself.
    pub(super) fn run(mut self, rx: mpsc::Receiver<Request>, pool: Option<rayon::ThreadPool>) {
        loop {
            if self.running.is_empty() && self.waiting.is_empty() {
                match rx.recv() {
                    Ok(r) => self.waiting.push_back((r, Instant::now())),
                    Err(_) => return,
                }
            }
            while let Ok(r) = rx.try_recv() {
                self.waiting.push_back((r, Instant::now()));
            }
            self.admit();
            self.reap();
            self.metrics.queue_length.set(self.waiting.len() as i64);
            self.metrics
                .running_sequences
                .set(self.running.len() as i64);
            if !self.running.is_empty() {
                match &pool {
                    Some(pool) => pool.install(|| self.step()),
                    None => self.step(),
                }
            }
            self.reap();
            let kv: usize = self.running.iter().map(|s| s.cache.size_in_bytes()).sum();
            self.metrics.kv_cache_bytes.set(kv as i64);
        }
    }

    fn capacity(&self) -> usize {
        if self.config.batching {
            self.config.max_batch.max(1)
        } else {
            1
        }
    }

    fn admit(&mut self) {
        while let Some((req, _)) = self.waiting.front() {
            if self.running.len() + req.n > self.capacity() && !self.running.is_empty() {
                break;
            }
            let Some((req, queued_at)) = self.waiting.pop_front() else {
                break;
            };
            self.waiting_count.fetch_sub(1, Ordering::SeqCst);
            self.metrics
                .queue_wait
                .observe(queued_at.elapsed().as_secs_f64());
            if req.events.is_closed() {
                continue;
            }
            let shared = Arc::new(Shared {
                prompt: req.prompt,
                adapter: req.adapter,
                version: req.version,
                deadline: req.deadline,
                events: req.events,
                tap_layer: req.tap_layer,
            });
            let dtype = self.dtype();
            for choice in 0..req.n {
                let mut params = req.params.clone();
                params.seed = params.seed.map(|s| s.wrapping_add(choice as u64));
                let gen =
                    match Generation::new(&params, &shared.prompt, self.model.tokenizer.stop_ids())
                    {
                        Ok(g) => g,
                        Err(e) => {
                            let _ = shared.events.send(Event::Failed(e.to_string()));
                            break;
                        }
                    };
                // The whole sequence's cache is allocated at its first step: growing it
                // by doubling would leave the smaller buffers behind in the allocator.
                let config = self.model.llama.config();
                let length = (shared.prompt.len() + params.max_tokens).min(config.context_length);
                self.running.push(Seq {
                    shared: shared.clone(),
                    choice,
                    cache: KvCache::with_dtype(config.num_layers, dtype).reserving(length),
                    started: false,
                    gen,
                    prefilled: 0,
                    next: None,
                    last_token_at: None,
                    admitted_at: Instant::now(),
                    done: false,
                    tap: shared.tap_layer.map(Tap::new),
                });
            }
        }
    }

    fn dtype(&self) -> candle_core::DType {
        match self.config.kv_cache {
            KvStorage::F32 => candle_core::DType::F32,
            KvStorage::F16 => candle_core::DType::F16,
        }
    }

    /// Drops finished sequences, and those whose client left or whose time ran out.
    fn reap(&mut self) {
        let now = Instant::now();
        for s in &mut self.running {
            if s.done {
                continue;
            }
            if s.shared.events.is_closed() {
                s.done = true;
            } else if now >= s.shared.deadline {
                let _ = s.send(Event::Failed("the request timed out".into()));
                s.done = true;
            }
        }
        self.running.retain(|s| !s.done);
    }

    /// One forward pass over every running sequence.
    fn step(&mut self) {
        let config = self.model.llama.config();
        let context = config.context_length;
        let dtype = self.dtype();
        let per_token =
            2 * config.num_layers * config.num_kv_heads * config.head_dim * dtype.size_in_bytes();
        let mut budget = self.config.prefill_chunk.max(1);
        // Prompts part-way through prefill, which sequences yet to start may wait for.
        let mut prefilling: Vec<Arc<Shared>> = self
            .running
            .iter()
            .filter(|s| s.started && s.next.is_none() && s.prefilled < s.shared.prompt.len())
            .map(|s| s.shared.clone())
            .collect();
        // Inputs per running sequence (None: not scheduled this step).
        let mut inputs: Vec<Option<Vec<u32>>> = Vec::with_capacity(self.running.len());
        for s in &mut self.running {
            if let Some(t) = s.next {
                inputs.push(Some(vec![t]));
            } else if s.prefilled < s.shared.prompt.len() && budget > 0 {
                if !s.started {
                    let prompt = &s.shared.prompt;
                    let wait = prefilling.iter().any(|p| {
                        p.version == s.shared.version
                            && self.prefixes.worth_waiting(
                                &s.shared.version,
                                prompt,
                                dtype,
                                &p.prompt,
                                per_token,
                            )
                    });
                    if wait {
                        inputs.push(None);
                        continue;
                    }
                    s.started = true;
                    start(&mut self.prefixes, &self.metrics, dtype, s);
                    prefilling.push(s.shared.clone());
                }
                let n = (s.shared.prompt.len() - s.prefilled).min(budget);
                budget -= n;
                inputs.push(Some(s.shared.prompt[s.prefilled..s.prefilled + n].to_vec()));
            } else {
                inputs.push(None);
            }
        }
        let scheduled: Vec<usize> = (0..self.running.len())
            .filter(|&i| inputs[i].is_some())
            .collect();
        if scheduled.is_empty() {
            return;
        }
        self.metrics.batch_size.observe(scheduled.len() as f64);
        let fed: Vec<usize> = scheduled
            .iter()
            .map(|&i| inputs[i].as_ref().map_or(0, Vec::len))
            .collect();
        let halves = if self.config.split_batches {
            split_batch(&fed, rayon::current_num_threads())
        } else {
            None
        };
        if halves.is_some() {
            self.metrics.split_steps.inc();
        }
        // `row_of[k]`: the logits row of the k-th scheduled sequence.
        let row_of: Vec<usize> = match &halves {
            None => (0..scheduled.len()).collect(),
            Some((a, b)) => {
                let mut row_of = vec![0; scheduled.len()];
                for (row, &k) in a.iter().chain(b).enumerate() {
                    row_of[k] = row;
                }
                row_of
            }
        };
        let result = {
            let mut seqs: Vec<Option<SeqInput<'_>>> = Vec::with_capacity(scheduled.len());
            for (s, inp) in self.running.iter_mut().zip(&inputs) {
                if let Some(tokens) = inp {
                    let decoding = s.next.is_some();
                    seqs.push(Some(SeqInput {
                        tokens,
                        cache: Some(&mut s.cache),
                        adapter: s.shared.adapter.as_deref(),
                        tap: s.tap.as_mut().filter(|_| decoding),
                    }));
                }
            }
            let llama = &self.model.llama;
            match halves {
                None => {
                    let mut all: Vec<SeqInput<'_>> = seqs.into_iter().flatten().collect();
                    llama.forward(&mut all, Outputs::LastToken, Mode::Serve)
                }
                Some((a, b)) => {
                    let mut take = |half: &[usize]| -> Vec<SeqInput<'_>> {
                        half.iter().filter_map(|&k| seqs[k].take()).collect()
                    };
                    let (mut first, mut second) = (take(&a), take(&b));
                    let (x, y) = rayon::join(
                        || llama.forward(&mut first, Outputs::LastToken, Mode::Serve),
                        || llama.forward(&mut second, Outputs::LastToken, Mode::Serve),
                    );
                    x.and_then(|x| Ok(candle_core::Tensor::cat(&[x, y?], 0)?))
                }
            }
        };
        // The batch's logits, one row per scheduled sequence, read in place.
        let logits = result.and_then(|l| Ok(Rows::new(l)?));
        let logits = match logits {
            Ok(l) => l,
            Err(e) => {
                tracing::error!("forward pass failed: {e}");
                for &i in &scheduled {
                    let s = &mut self.running[i];
                    let _ = s.send(Event::Failed(format!("generation failed: {e}")));
                    s.done = true;
                }
                return;
            }
        };
        // Sequences whose prompt is now wholly prefilled sample a token from their row.
        let mut rows: Vec<Option<usize>> = vec![None; self.running.len()];
        for ((&i, &row), &fed) in scheduled.iter().zip(&row_of).zip(&fed) {
            let s = &mut self.running[i];
            if s.next.is_none() {
                s.prefilled += fed;
                if s.prefilled < s.shared.prompt.len() {
                    continue; // more prompt chunks to go
                }
                self.metrics
                    .prompt_tokens
                    .with_label_values(&[&s.shared.version])
                    .inc_by(s.shared.prompt.len() as u64);
                if let Err(e) = self
                    .prefixes
                    .insert(&s.shared.version, &s.shared.prompt, &s.cache)
                {
                    tracing::warn!("prefix cache: cannot keep a prompt: {e}");
                }
                self.metrics
                    .prefix_cache_bytes
                    .set(self.prefixes.used() as i64);
            }
            rows[i] = Some(row);
        }
        // Sampling (a softmax over the vocabulary, a draw, incremental detokenizing)
        // is independent per sequence, so the sequences sample in parallel.
        let tokenizer = &self.model.tokenizer;
        let running = &mut self.running;
        let steps: Vec<Option<crate::model::Result<Step>>> = logits.with(|all, vocab| {
            running
                .par_iter_mut()
                .zip(&rows)
                .map(|(s, row)| {
                    row.map(|row| match all.get(row * vocab..(row + 1) * vocab) {
                        Some(l) => s.gen.step_logits(l, tokenizer),
                        None => Err(crate::model::Error::InvalidArgument(format!(
                            "no logits for batch row {row}"
                        ))),
                    })
                })
                .collect()
        });
        for (i, step) in steps.into_iter().enumerate() {
            let Some(step) = step else {
                continue;
            };
            let s = &mut self.running[i];
            let step = match step {
                Ok(step) => step,
                Err(e) => {
                    let _ = s.send(Event::Failed(format!("sampling failed: {e}")));
                    s.done = true;
                    continue;
                }
            };
            let now = Instant::now();
            match s.last_token_at {
                None => self
                    .metrics
                    .time_to_first_token
                    .with_label_values(&[&s.shared.version])
                    .observe((now - s.admitted_at).as_secs_f64()),
                Some(t) => self
                    .metrics
                    .inter_token_latency
                    .with_label_values(&[&s.shared.version])
                    .observe((now - t).as_secs_f64()),
            }
            s.last_token_at = Some(now);
            self.metrics
                .generated_tokens
                .with_label_values(&[&s.shared.version])
                .inc();
            let mut finished = step.finished;
            let mut tail = String::new();
            if finished.is_none() && s.cache.len() + 1 >= context {
                tail = s
                    .gen
                    .force_finish(FinishReason::Length, tokenizer)
                    .unwrap_or_default();
                finished = Some(FinishReason::Length);
            }
            let logprob = s
                .gen
                .logprobs()
                .last()
                .cloned()
                .filter(|_| s.gen.tokens().len() == s.gen.logprobs().len());
            let token_text = if finished.is_some() {
                String::new()
            } else {
                step.text.clone()
            };
            let state = s.tap.as_ref().filter(|t| t.rows > 0).cloned();
            let alive = match finished {
                None => s.send(Event::Token {
                    choice: s.choice,
                    token: step.token,
                    text: token_text,
                    logprob,
                    state,
                }),
                Some(reason) => {
                    // The last step's text (and anything held back) goes with Finished.
                    let sent = s.send(Event::Token {
                        choice: s.choice,
                        token: step.token,
                        text: String::new(),
                        logprob,
                        state,
                    });
                    let text = format!("{}{}", step.text, tail);
                    sent && s.send(Event::Finished {
                        choice: s.choice,
                        reason,
                        completion_tokens: s.gen.tokens().len(),
                        text,
                    })
                }
            };
            if finished.is_some() || !alive {
                s.done = true;
            } else {
                s.next = Some(step.token);
            }
        }
    }
}

/// A forward pass's cost on one thread, as tokens: about `PASS_FIXED_TOKENS + tokens`,
/// the fixed part being the weights' reading and dequantization that all of a pass's
/// tokens share (measured with `cargo bench --bench model -- --decode-only N` on one
/// thread: 4 sequences 47.6 ms a step, 8 sequences 64.5 ms).
const PASS_FIXED_TOKENS: usize = 7;
/// How much faster one pass runs with its products and attention split across two
/// threads than on one. The same bench gave 1.3 in a quiet moment (8 sequences: 124
/// tok/s on one thread, 163 on two), less when the machine is shared, since each of
/// the pass's jobs waits for the slower thread; 1.2 matches alternating runs of one
/// batch against two halves (`--split`), where two halves won at 5 to 8 sequences
/// and the two were even at 4. As a fraction: 6/5.
const SHARED_PASS_SPEEDUP: (usize, usize) = (6, 5);

/// How a step's sequences (`fed[k]`: the k-th one's new tokens) run: `None` as one
/// batch whose matrix products and attention are split across the threads, or two
/// groups of sequences (their positions in `fed`, in order) run as two batches side by
/// side, one per thread.
///
/// One batch pays for each of a forward pass's few hundred parallel jobs: waking the
/// other thread, waiting for the slower half, and the serial element-wise ops between
/// jobs, during which the other thread idles. Two batches have none of that and each
/// thread runs whole passes, at the price of each reading all the weights and of
/// fewer tokens sharing each weight block. The halves are balanced by token count
/// (largest first, into the lighter half), and the step is split when the larger half
/// on one thread should finish no later than the whole batch on two,
/// `fixed + larger <= (fixed + all) / speedup` (a tie splits: two halves are steadier
/// on a shared machine). So 4 or more decoding sequences run as
/// two halves (8 as 4 + 4: about 10% more tokens/s in the bench above, and steadier
/// when the machine is shared), 3 or fewer as one batch, and a long prefill chunk
/// next to a few decoding sequences as one batch.
///
/// Splitting changes no sequence's arithmetic while the batches stay small enough for
/// the block kernel (`MAX_KERNEL_TOKENS`), whose per-token sums do not depend on the
/// other tokens; a larger batch goes through a dense product, as without splitting.
fn split_batch(fed: &[usize], threads: usize) -> Option<(Vec<usize>, Vec<usize>)> {
    if threads < 2 || fed.len() < 2 {
        return None;
    }
    let mut largest_first: Vec<usize> = (0..fed.len()).collect();
    largest_first.sort_by_key(|&k| std::cmp::Reverse(fed[k]));
    let (mut a, mut b) = (Vec::new(), Vec::new());
    let (mut ta, mut tb) = (0, 0);
    for k in largest_first {
        if ta <= tb {
            a.push(k);
            ta += fed[k];
        } else {
            b.push(k);
            tb += fed[k];
        }
    }
    let (num, den) = SHARED_PASS_SPEEDUP;
    if num * (PASS_FIXED_TOKENS + ta.max(tb)) > den * (PASS_FIXED_TOKENS + ta + tb) {
        return None;
    }
    a.sort_unstable();
    b.sort_unstable();
    Some((a, b))
}

/// A sequence's first run: the longest cached prefix of its prompt is copied into its
/// cache, and prefill starts after it.
fn start(prefixes: &mut PrefixCache, metrics: &Metrics, dtype: candle_core::DType, s: &mut Seq) {
    let Some((source, n)) = prefixes.lookup(&s.shared.version, &s.shared.prompt, dtype) else {
        if prefixes.is_enabled() {
            metrics.prefix_cache.with_label_values(&["miss"]).inc();
        }
        return;
    };
    metrics.prefix_cache.with_label_values(&["hit"]).inc();
    match s.cache.extend_from(&source, n) {
        Ok(()) => {
            s.prefilled = n;
            metrics.prefix_cache_tokens.inc_by(n as u64);
        }
        Err(e) => {
            tracing::warn!("prefix cache: cannot copy {n} cached tokens: {e}");
            s.cache.truncate(0);
        }
    }
}

/// A forward pass's logits `(rows, vocab)`, read where they lie when they are a
/// contiguous f32 CPU buffer (at 8 sequences, 1.5 MB a step that a copy would
/// allocate, fault in and fill), copied otherwise.
struct Rows {
    logits: candle_core::Tensor,
    vocab: usize,
}

impl Rows {
    fn new(logits: candle_core::Tensor) -> candle_core::Result<Self> {
        let vocab = logits.dim(candle_core::D::Minus1)?;
        let logits = if logits.dtype() == candle_core::DType::F32 && logits.is_contiguous() {
            logits
        } else {
            logits.to_dtype(candle_core::DType::F32)?.contiguous()?
        };
        Ok(Self { logits, vocab })
    }

    /// Calls `f` with all rows as one slice and the row length.
    fn with<R>(&self, f: impl FnOnce(&[f32], usize) -> R) -> R {
        use candle_core::{CpuStorage, Storage};
        let (storage, layout) = self.logits.storage_and_layout();
        if let (Storage::Cpu(CpuStorage::F32(v)), Some((a, b))) =
            (&*storage, layout.contiguous_offsets())
        {
            return f(&v[a..b], self.vocab);
        }
        drop(storage);
        // Not on the CPU: one copy.
        let copy: Vec<f32> = self
            .logits
            .flatten_all()
            .and_then(|t| t.to_vec1())
            .unwrap_or_default();
        f(&copy, self.vocab)
    }
}

#[cfg(test)]
mod tests {
    use super::split_batch;

    #[test]
    fn many_decoding_sequences_split_into_two_balanced_halves() {
        let (a, b) = split_batch(&[1; 8], 2).expect("8 decoding sequences split");
        assert_eq!((a.len(), b.len()), (4, 4));
        // Every sequence is in exactly one half, each half in the step's order.
        let mut all: Vec<usize> = a.iter().chain(&b).copied().collect();
        assert!(a.windows(2).all(|w| w[0] < w[1]) && b.windows(2).all(|w| w[0] < w[1]));
        all.sort_unstable();
        assert_eq!(all, (0..8).collect::<Vec<_>>());
        let (a, b) = split_batch(&[1; 16], 4).expect("16 split");
        assert_eq!((a.len(), b.len()), (8, 8));
        let (a, b) = split_batch(&[1; 5], 2).expect("5 split");
        assert_eq!((a.len(), b.len()), (3, 2));
        assert!(split_batch(&[1; 4], 2).is_some());
    }

    #[test]
    fn small_or_lopsided_steps_stay_one_batch() {
        // One thread, or too few tokens for two passes to beat one shared pass.
        assert_eq!(split_batch(&[1; 8], 1), None);
        assert_eq!(split_batch(&[1; 3], 2), None);
        assert_eq!(split_batch(&[1], 2), None);
        assert_eq!(split_batch(&[], 2), None);
        // A long prefill chunk next to seven decoding sequences: one half would carry
        // nearly all the work.
        assert_eq!(split_batch(&[1, 1, 1, 40, 1, 1, 1, 1], 2), None);
        // A short chunk balances against the decoding sequences: it goes alone.
        let (a, b) = split_batch(&[1, 1, 1, 12, 1, 1, 1, 1], 2).expect("split");
        let (big, small) = if a.contains(&3) { (a, b) } else { (b, a) };
        assert_eq!(big, vec![3]);
        assert_eq!(small, vec![0, 1, 2, 4, 5, 6, 7]);
    }
}
