//! Turning logits into text: sampling, stop conditions, logprobs and UTF-8-safe
//! streaming, for one sequence at a time ([`Generation`]) or a whole completion
//! ([`generate`]).

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use super::error::{Error, Result};
use super::llama::{Llama, Mode, Outputs, SeqInput};
use super::lora::LoraAdapter;
use super::sampler::{Rule, Sampler};
use super::tokenizer::{DecodeStream, Tokenizer};

/// How to choose tokens and when to stop.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SamplingParams {
    /// 0 means greedy decoding.
    pub temperature: f64,
    /// Nucleus sampling mass (1.0 or `None`: off).
    pub top_p: Option<f64>,
    /// Sample among the `k` most likely tokens (`None`: off).
    pub top_k: Option<usize>,
    /// Divides positive logits (multiplies negative ones) of recently seen tokens;
    /// 1.0 is off.
    pub repetition_penalty: f32,
    /// How many recent tokens the repetition penalty looks at.
    pub repeat_last_n: usize,
    /// Random seed; the same seed gives the same text. `None` draws one.
    pub seed: Option<u64>,
    /// Maximum number of generated tokens.
    pub max_tokens: usize,
    /// Strings that end generation; they are not included in the text.
    pub stop: Vec<String>,
    /// Report the log-probability of each generated token.
    pub logprobs: bool,
    /// With `logprobs`, also the `n` most likely alternatives at each step (0–20).
    pub top_logprobs: usize,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.7,
            top_p: None,
            top_k: None,
            repetition_penalty: 1.0,
            repeat_last_n: 64,
            seed: None,
            max_tokens: 256,
            stop: Vec::new(),
            logprobs: false,
            top_logprobs: 0,
        }
    }
}

impl SamplingParams {
    /// Greedy decoding of up to `max_tokens` tokens.
    pub fn greedy(max_tokens: usize) -> Self {
        Self {
            temperature: 0.0,
            max_tokens,
            ..Self::default()
        }
    }

    /// Checks every field's range; the message names the field.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidArgument(m));
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return bad(format!(
                "temperature must be >= 0, got {}",
                self.temperature
            ));
        }
        if let Some(p) = self.top_p {
            if !(p > 0.0 && p <= 1.0) {
                return bad(format!("top_p must be in (0, 1], got {p}"));
            }
        }
        if self.top_k == Some(0) {
            return bad("top_k must be at least 1".into());
        }
        if !self.repetition_penalty.is_finite() || self.repetition_penalty <= 0.0 {
            return bad(format!(
                "repetition_penalty must be > 0, got {}",
                self.repetition_penalty
            ));
        }
        if self.max_tokens == 0 {
            return bad("max_tokens must be at least 1".into());
        }
        if self.top_logprobs > 20 {
            return bad(format!(
                "top_logprobs must be at most 20, got {}",
                self.top_logprobs
            ));
        }
        if self.stop.iter().any(String::is_empty) {
            return bad("stop strings must not be empty".into());
        }
        Ok(())
    }

    fn rule(&self) -> Rule {
        if self.temperature < 1e-6 {
            return Rule::Greedy;
        }
        Rule::Sample {
            temperature: self.temperature as f32,
            top_k: self.top_k,
            top_p: self.top_p.filter(|&p| p < 1.0).map(|p| p as f32),
        }
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// A stop token or stop string.
    Stop,
    /// `max_tokens` reached (or the context is full).
    Length,
}

/// Log-probability of one generated token, and of its most likely alternatives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenLogprob {
    /// The generated token.
    pub token: u32,
    /// Its log-probability.
    pub logprob: f32,
    /// `(token, logprob)` of the most likely tokens, best first.
    pub top: Vec<(u32, f32)>,
}

/// What one decoding step produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// The sampled token.
    pub token: u32,
    /// Text that can be shown now (may be empty while a character or a possible stop
    /// string is incomplete).
    pub text: String,
    /// Set when this step ended the sequence.
    pub finished: Option<FinishReason>,
}

/// Holds back text that might be the start of a stop string.
#[derive(Debug, Clone, Default)]
struct StopMatcher {
    stops: Vec<String>,
    pending: String,
}

impl StopMatcher {
    /// Adds text; returns what is safe to emit and whether a stop string matched
    /// (text from the stop string on is dropped).
    fn push(&mut self, piece: &str) -> (String, bool) {
        self.pending.push_str(piece);
        let hit = self
            .stops
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()))
            .min();
        if let Some(at) = hit {
            let out = self.pending[..at].to_string();
            self.pending.clear();
            return (out, true);
        }
        // Hold back the longest suffix that is a proper prefix of some stop string.
        let mut keep = 0;
        for s in &self.stops {
            for (i, _) in s.char_indices().skip(1) {
                if i > keep && self.pending.ends_with(&s[..i]) {
                    keep = i;
                }
            }
        }
        let cut = self.pending.len() - keep;
        let out = self.pending[..cut].to_string();
        self.pending.drain(..cut);
        (out, false)
    }

    fn flush(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

/// The decoding state of one sequence: sampler, generated tokens, text stream and
/// stop conditions. The caller runs the model; this decides what the logits mean.
pub struct Generation {
    params: SamplingParams,
    sampler: Sampler,
    /// Logits with the repetition penalty applied, reused across steps.
    penalised: Vec<f32>,
    stop_ids: Vec<u32>,
    history: Vec<u32>,
    generated: Vec<u32>,
    stream: DecodeStream,
    stops: StopMatcher,
    text: String,
    logprobs: Vec<TokenLogprob>,
    finished: Option<FinishReason>,
}

impl Generation {
    /// Starts decoding after `prompt` with `params`; `stop_ids` end the sequence.
    pub fn new(params: &SamplingParams, prompt: &[u32], stop_ids: &[u32]) -> Result<Self> {
        params.validate()?;
        let seed = params.seed.unwrap_or_else(rand::random);
        let tail = prompt.len().saturating_sub(params.repeat_last_n);
        Ok(Self {
            params: params.clone(),
            sampler: Sampler::new(params.rule(), seed),
            penalised: Vec::new(),
            stop_ids: stop_ids.to_vec(),
            history: prompt[tail..].to_vec(),
            generated: Vec::new(),
            stream: DecodeStream::new(),
            stops: StopMatcher {
                stops: params.stop.clone(),
                pending: String::new(),
            },
            text: String::new(),
            logprobs: Vec::new(),
            finished: None,
        })
    }

    /// Samples the next token from `logits` (shape `(vocab,)`) and advances.
    pub fn step(&mut self, logits: &Tensor, tokenizer: &Tokenizer) -> Result<Step> {
        let logits: Vec<f32> = logits.to_dtype(DType::F32)?.to_vec1()?;
        self.step_logits(&logits, tokenizer)
    }

    /// [`Generation::step`] on one row of logits as a slice (the engine reads a whole
    /// batch's logits out at once).
    pub fn step_logits(&mut self, logits: &[f32], tokenizer: &Tokenizer) -> Result<Step> {
        if self.finished.is_some() {
            return Err(Error::InvalidArgument("generation already finished".into()));
        }
        let logits = if self.params.repetition_penalty != 1.0 && !self.history.is_empty() {
            self.penalised.clear();
            self.penalised.extend_from_slice(logits);
            apply_repeat_penalty(
                &mut self.penalised,
                self.params.repetition_penalty,
                &self.history,
            );
            &self.penalised[..]
        } else {
            logits
        };
        let token = self.sampler.sample(logits);
        if self.params.logprobs {
            self.logprobs
                .push(logprob_of(logits, token, self.params.top_logprobs));
        }
        self.generated.push(token);
        self.history.push(token);
        if self.history.len() > self.params.repeat_last_n.max(1) {
            self.history.remove(0);
        }

        let mut text = String::new();
        let mut finished = None;
        if self.stop_ids.contains(&token) {
            finished = Some(FinishReason::Stop);
        } else if let Some(piece) = self.stream.step(tokenizer, token)? {
            let (out, hit) = self.stops.push(&piece);
            text.push_str(&out);
            if hit {
                finished = Some(FinishReason::Stop);
            }
        }
        if finished.is_none() && self.generated.len() >= self.params.max_tokens {
            finished = Some(FinishReason::Length);
        }
        if let Some(reason) = finished {
            text.push_str(&self.finish_text(reason, tokenizer)?);
        }
        self.text.push_str(&text);
        self.finished = finished;
        Ok(Step {
            token,
            text,
            finished,
        })
    }

    /// Ends the sequence from outside (e.g. the context window is full).
    pub fn force_finish(&mut self, reason: FinishReason, tokenizer: &Tokenizer) -> Result<String> {
        if self.finished.is_some() {
            return Ok(String::new());
        }
        let rest = self.finish_text(reason, tokenizer)?;
        self.text.push_str(&rest);
        self.finished = Some(reason);
        Ok(rest)
    }

    fn finish_text(&mut self, reason: FinishReason, tokenizer: &Tokenizer) -> Result<String> {
        if reason == FinishReason::Stop && self.stops.pending.is_empty() {
            return Ok(String::new());
        }
        let mut rest = String::new();
        if let Some(tail) = self.stream.flush(tokenizer)? {
            let (out, hit) = self.stops.push(&tail);
            rest.push_str(&out);
            if hit {
                return Ok(rest);
            }
        }
        rest.push_str(&self.stops.flush());
        Ok(rest)
    }

    /// Tokens generated so far.
    pub fn tokens(&self) -> &[u32] {
        &self.generated
    }

    /// Text released so far.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Per-token logprobs (empty unless requested).
    pub fn logprobs(&self) -> &[TokenLogprob] {
        &self.logprobs
    }

    /// Why the sequence ended, once it has.
    pub fn finished(&self) -> Option<FinishReason> {
        self.finished
    }
}

impl std::fmt::Debug for Generation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generation")
            .field("params", &self.params)
            .field("generated", &self.generated)
            .field("finished", &self.finished)
            .finish()
    }
}

/// Divides the positive logits of tokens seen in `context` by `penalty` and multiplies
/// the negative ones (each token once), as candle-transformers' `apply_repeat_penalty`.
fn apply_repeat_penalty(logits: &mut [f32], penalty: f32, context: &[u32]) {
    let mut seen = std::collections::HashSet::new();
    for &t in context {
        if !seen.insert(t) {
            continue;
        }
        if let Some(l) = logits.get_mut(t as usize) {
            if *l >= 0.0 {
                *l /= penalty;
            } else {
                *l *= penalty;
            }
        }
    }
}

/// Log-softmax of `logits` at `token`, plus the `top` best alternatives.
fn logprob_of(v: &[f32], token: u32, top: usize) -> TokenLogprob {
    let max = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lse = max + v.iter().map(|&x| (x - max).exp()).sum::<f32>().ln();
    let lp = |i: usize| v.get(i).map_or(f32::NEG_INFINITY, |&x| x - lse);
    let mut best = Vec::new();
    if top > 0 && !v.is_empty() {
        let mut idx: Vec<usize> = (0..v.len()).collect();
        let k = top.min(v.len());
        idx.select_nth_unstable_by(k - 1, |&a, &b| v[b].total_cmp(&v[a]));
        idx.truncate(k);
        idx.sort_by(|&a, &b| v[b].total_cmp(&v[a]));
        best = idx.into_iter().map(|i| (i as u32, lp(i))).collect();
    }
    TokenLogprob {
        token,
        logprob: lp(token as usize),
        top: best,
    }
}

/// A finished completion.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    /// The generated text (stop strings and stop tokens removed).
    pub text: String,
    /// Generated token ids (a final stop token included).
    pub tokens: Vec<u32>,
    /// Why it ended.
    pub finish_reason: FinishReason,
    /// Tokens in the prompt.
    pub prompt_tokens: usize,
    /// Per-token logprobs, when requested.
    pub logprobs: Vec<TokenLogprob>,
}

/// Generates a completion of `prompt`, calling `on_text` with each piece of text as it
/// becomes final. `on_text` returns `false` to stop early (finish reason `stop`).
pub fn generate(
    model: &Llama,
    tokenizer: &Tokenizer,
    prompt: &[u32],
    params: &SamplingParams,
    adapter: Option<&LoraAdapter>,
    mut on_text: impl FnMut(&str) -> bool,
) -> Result<Completion> {
    if prompt.is_empty() {
        return Err(Error::InvalidArgument("the prompt has no tokens".into()));
    }
    let context = model.config().context_length;
    if prompt.len() >= context {
        return Err(Error::ContextOverflow {
            tokens: prompt.len() + 1,
            context,
        });
    }
    let mut gen = Generation::new(params, prompt, tokenizer.stop_ids())?;
    let mut cache = model.new_cache();
    let mut next: Vec<u32> = prompt.to_vec();
    loop {
        let logits = model.forward(
            &mut [SeqInput {
                tokens: &next,
                cache: Some(&mut cache),
                adapter,
                tap: None,
            }],
            Outputs::LastToken,
            Mode::Serve,
        )?;
        let step = gen.step(&logits.squeeze(0)?, tokenizer)?;
        let keep_going = step.text.is_empty() || on_text(&step.text);
        if step.finished.is_some() {
            break;
        }
        if !keep_going {
            gen.force_finish(FinishReason::Stop, tokenizer)?;
            break;
        }
        if cache.len() + 1 >= context {
            let rest = gen.force_finish(FinishReason::Length, tokenizer)?;
            if !rest.is_empty() {
                on_text(&rest);
            }
            break;
        }
        next = vec![step.token];
    }
    Ok(Completion {
        text: gen.text().to_string(),
        tokens: gen.tokens().to_vec(),
        finish_reason: gen.finished().unwrap_or(FinishReason::Length),
        prompt_tokens: prompt.len(),
        logprobs: gen.logprobs().to_vec(),
    })
}
