//! The evaluation gate: every trained candidate is checked before it serves any
//! traffic, against its suite in `configs/` and `safety/`:
//!
//! 1. closeness to the base on held-out probes (`configs/probes.jsonl`): KL per
//!    token and top-1 agreement, teacher-forced on the base's greedy answers, and
//!    the share of probe answers whose first tokens are unchanged;
//! 2. retention of the corrections in its lineage;
//! 3. red team (`safety/redteam.jsonl`): greedy answers generated with the
//!    classifiers off, then classified by the output checks (with the answer probe
//!    reading each answer's hidden states, as when serving); the unsafe-answer rate
//!    may not rise above the parent's;
//! 4. perplexity on reference texts (`configs/reference.jsonl`) relative to the base.
//!
//! The report names every check with its value and threshold; the version stores it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use candle_core::Tensor;
use serde::Serialize;
use serde_json::json;

use super::config::GateConfig;
use crate::learner::eval;
use crate::learner::objective::{self, Pair};
use crate::model::{ChatMessage, LoadedModel, LoraAdapter, Mode};
use crate::safety::{Direction, Safety};

/// Compiled-in probe prompts.
const PROBES: &str = include_str!("../../configs/probes.jsonl");
/// Compiled-in red-team prompts.
const REDTEAM: &str = include_str!("../../safety/redteam.jsonl");
/// Compiled-in reference texts.
const REFERENCE: &str = include_str!("../../configs/reference.jsonl");
/// Tokens of each probe answer that must stay the same for the answer to count as kept.
const PROBE_HEAD_TOKENS: usize = 8;

/// Gate errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A suite file is missing or malformed.
    #[error("gate suite: {0}")]
    Suite(String),
    /// The model failed.
    #[error(transparent)]
    Model(#[from] crate::model::Error),
}

/// One check's result.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Check {
    /// `probe_kl`, `probe_top1`, `probe_answers`, `retention`, `redteam`, `perplexity`.
    pub check: &'static str,
    /// Measured value.
    pub value: f64,
    /// Threshold it is held to.
    pub threshold: f64,
    /// Whether it passed.
    pub passed: bool,
    /// What it means.
    pub message: String,
}

/// The gate's verdict on one candidate.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Every check.
    pub checks: Vec<Check>,
    /// Details (red-team answers flagged, perplexities, correction ids not reproduced).
    pub details: serde_json::Value,
}

impl Report {
    /// Whether every check passed.
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.passed)
    }

    /// The failed checks.
    pub fn failed(&self) -> Vec<&Check> {
        self.checks.iter().filter(|c| !c.passed).collect()
    }

    /// The report as stored with the version: every check, the failed ones by name,
    /// and the headline figures at top level.
    pub fn to_json(&self) -> serde_json::Value {
        let value = |name: &str| {
            self.checks
                .iter()
                .find(|c| c.check == name)
                .map(|c| c.value)
        };
        json!({
            "passed": self.passed(),
            "checks": self.checks,
            "failed": self.failed().iter().map(|c| json!({"check": c.check, "message": c.message})).collect::<Vec<_>>(),
            "probe_kl": value("probe_kl"),
            "probe_top1": value("probe_top1"),
            "retention": value("retention"),
            "details": self.details,
        })
    }
}

/// A red-team prompt.
struct RedTeam {
    prompt: Vec<u32>,
    category: String,
}

/// The suite, prepared once (the base's answers and perplexity are fixed).
struct Suite {
    probes: Vec<Pair>,
    redteam: Vec<RedTeam>,
    reference: Vec<Pair>,
    base_perplexity: f64,
    /// The base's hidden states of probes and reference texts entering a layer, per
    /// layer: a candidate differs from the base only from its first adapted layer
    /// on, so each evaluation runs only the layers from there.
    hidden: Mutex<HashMap<usize, Arc<Hidden>>>,
}

/// Hidden states entering one layer.
struct Hidden {
    probes: Vec<Tensor>,
    reference: Vec<Tensor>,
}

/// A corrections to check for retention: its feedback id and pair.
pub struct Retained<'a> {
    /// Feedback id.
    pub id: &'a str,
    /// Prompt and corrected answer.
    pub pair: &'a Pair,
}

/// The evaluation gate.
pub struct Gate {
    config: GateConfig,
    model: Arc<LoadedModel>,
    safety: Option<Arc<Safety>>,
    suite: OnceLock<Suite>,
    /// Unsafe-answer rate per (version, policy generation).
    unsafe_rates: Mutex<HashMap<(String, u64), f64>>,
}

fn jsonl(path: &str, builtin: &str) -> Result<Vec<serde_json::Value>, Error> {
    let text = if path.is_empty() {
        builtin.to_string()
    } else {
        std::fs::read_to_string(path)
            .map_err(|e| Error::Suite(format!("cannot read {path}: {e}")))?
    };
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l).map_err(|e| {
                Error::Suite(format!(
                    "bad line in {}: {l:?}: {e}",
                    if path.is_empty() {
                        "the built-in suite"
                    } else {
                        path
                    }
                ))
            })
        })
        .collect()
}

impl Gate {
    /// A gate over `model`; `safety` classifies red-team answers (without it the
    /// red-team check is skipped and says so).
    pub fn new(config: GateConfig, model: Arc<LoadedModel>, safety: Option<Arc<Safety>>) -> Self {
        Self {
            config,
            model,
            safety,
            suite: OnceLock::new(),
            unsafe_rates: Mutex::new(HashMap::new()),
        }
    }

    /// The thresholds.
    pub fn config(&self) -> &GateConfig {
        &self.config
    }

    fn prompt(&self, text: &str) -> Result<Vec<u32>, Error> {
        Ok(self.model.encode_chat(&[ChatMessage::new("user", text)])?)
    }

    /// Prepares the suite (the base's probe answers and reference perplexity), the
    /// base's hidden states entering `layer` (where candidates' adapters begin), and
    /// the red-team rate of `serving`, the likely parent of the next candidate.
    pub fn prepare(
        &self,
        serving: (&str, Option<&LoraAdapter>),
        layer: usize,
    ) -> Result<(), Error> {
        let suite = self.suite()?;
        self.hidden(suite, layer)?;
        if self.cached_unsafe_rate(serving.0).is_none() {
            self.unsafe_rate(serving.0, serving.1)?;
        }
        Ok(())
    }

    fn suite(&self) -> Result<&Suite, Error> {
        if let Some(s) = self.suite.get() {
            return Ok(s);
        }
        let llama = &self.model.llama;
        let stop = self.model.tokenizer.stop_ids().to_vec();
        let text = |v: &serde_json::Value, key: &str| -> Result<String, Error> {
            v[key]
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| Error::Suite(format!("a line lacks \"{key}\": {v}")))
        };
        let mut prompts = Vec::new();
        for v in jsonl(&self.config.probes, PROBES)? {
            prompts.push(self.prompt(&text(&v, "prompt")?)?);
        }
        let probes = eval::base_answers(llama, &prompts, self.config.answer_tokens, &stop)?;
        let mut redteam = Vec::new();
        for v in jsonl(&self.config.redteam, REDTEAM)? {
            redteam.push(RedTeam {
                prompt: self.prompt(&text(&v, "prompt")?)?,
                category: v["category"].as_str().unwrap_or("unspecified").to_string(),
            });
        }
        let mut reference = Vec::new();
        for v in jsonl(&self.config.reference, REFERENCE)? {
            reference.push(Pair {
                prompt: self.prompt(&text(&v, "prompt")?)?,
                answer: self.model.encode_answer(&text(&v, "answer")?)?,
            });
        }
        let base_perplexity = perplexity(&self.model, None, &reference, None)?;
        let _ = self.suite.set(Suite {
            probes,
            redteam,
            reference,
            base_perplexity,
            hidden: Mutex::new(HashMap::new()),
        });
        self.suite
            .get()
            .ok_or_else(|| Error::Suite("the suite could not be prepared".into()))
    }

    /// The base's hidden states entering `layer` (computed once per layer).
    fn hidden(&self, suite: &Suite, layer: usize) -> Result<Arc<Hidden>, Error> {
        let mut map = suite.hidden.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(h) = map.get(&layer) {
            return Ok(h.clone());
        }
        let llama = &self.model.llama;
        let probes: Vec<&Pair> = suite.probes.iter().collect();
        let reference: Vec<&Pair> = suite.reference.iter().collect();
        let h = Arc::new(Hidden {
            probes: objective::hidden_before(llama, &probes, layer)?,
            reference: objective::hidden_before(llama, &reference, layer)?,
        });
        map.insert(layer, h.clone());
        Ok(h)
    }

    /// The share of red-team prompts whose greedy answer (no classifiers in the way)
    /// the output checks flag, with the flagged prompts' indices and categories.
    fn unsafe_rate(
        &self,
        version: &str,
        adapter: Option<&LoraAdapter>,
    ) -> Result<Option<(f64, Vec<serde_json::Value>)>, Error> {
        let Some(safety) = &self.safety else {
            return Ok(None);
        };
        let suite = self.suite()?;
        let cascade = safety.current();
        let prompts: Vec<Vec<u32>> = suite.redteam.iter().map(|r| r.prompt.clone()).collect();
        let stop = self.model.tokenizer.stop_ids();
        // One batch: a decode step costs little more for 24 sequences than for 16.
        // The answers' hidden states feed the answer probe, as when serving, so the
        // check counts harmful answers rather than answers that name a topic.
        let c = self.model.llama.config();
        let layer = cascade
            .probe()
            .filter(|p| p.fits(c.num_layers, c.hidden_size))
            .map(|p| p.layer);
        let mut answers = Vec::with_capacity(prompts.len());
        let mut taps = Vec::with_capacity(prompts.len());
        for chunk in prompts.chunks(32) {
            let (a, t) = eval::greedy_batch_tapped(
                &self.model.llama,
                adapter,
                chunk,
                self.config.redteam_tokens,
                stop,
                layer,
            )?;
            answers.extend(a);
            taps.extend(t);
        }
        let mut flagged = Vec::new();
        for (i, ((r, ids), tap)) in suite.redteam.iter().zip(&answers).zip(&taps).enumerate() {
            let text = self.model.tokenizer.decode(ids, true).unwrap_or_default();
            let v = safety.check_answer(
                &cascade,
                &text,
                Direction::Output,
                layer.map(|_| tap),
                false,
            );
            if !v.decision.categories.is_empty() {
                flagged.push(json!({
                    "prompt": i,
                    "category": r.category,
                    "flagged_as": v.decision.categories,
                }));
            }
        }
        let rate = flagged.len() as f64 / suite.redteam.len().max(1) as f64;
        if let Ok(mut m) = self.unsafe_rates.lock() {
            m.insert((version.to_string(), cascade.generation), rate);
        }
        Ok(Some((rate, flagged)))
    }

    fn cached_unsafe_rate(&self, version: &str) -> Option<f64> {
        let generation = self.safety.as_ref()?.current().generation;
        self.unsafe_rates
            .lock()
            .ok()?
            .get(&(version.to_string(), generation))
            .copied()
    }

    /// Evaluates `candidate` (trained from `parent`) and checks `retained`
    /// corrections.
    pub fn evaluate(
        &self,
        candidate: (&str, &LoraAdapter),
        parent: (&str, Option<&LoraAdapter>),
        retained: &[Retained<'_>],
    ) -> Result<Report, Error> {
        let c = &self.config;
        let suite = self.suite()?;
        let llama = &self.model.llama;
        let stop = self.model.tokenizer.stop_ids();
        let mut checks = Vec::new();
        let mut timings = serde_json::Map::new();
        let mut clock = std::time::Instant::now();
        let mut lap = |name: &str| {
            timings.insert(name.to_string(), json!(clock.elapsed().as_secs_f64()));
            clock = std::time::Instant::now();
        };

        // (1) Closeness on the probes.
        let layer = candidate.1.first_layer();
        let hidden = self.hidden(suite, layer)?;
        let drift = eval::drift_from(
            llama,
            candidate.1,
            &suite.probes,
            Some((layer, &hidden.probes)),
        )?;
        checks.push(Check {
            check: "probe_kl",
            value: drift.kl,
            threshold: c.max_kl,
            passed: drift.kl <= c.max_kl,
            message: format!(
                "probe KL {:.4} per token over {} tokens (at most {})",
                drift.kl, drift.tokens, c.max_kl
            ),
        });
        checks.push(Check {
            check: "probe_top1",
            value: drift.top1,
            threshold: c.min_top1,
            passed: drift.top1 >= c.min_top1,
            message: format!(
                "probe top-1 agreement {:.3} (at least {})",
                drift.top1, c.min_top1
            ),
        });
        let heads: Vec<Pair> = suite
            .probes
            .iter()
            .map(|p| Pair {
                prompt: p.prompt.clone(),
                answer: p.answer[..p.answer.len().min(PROBE_HEAD_TOKENS)].to_vec(),
            })
            .collect();
        let head_refs: Vec<&Pair> = heads.iter().collect();
        let kept = eval::reproduces(llama, Some(candidate.1), &head_refs, stop)?;
        let same = kept.iter().filter(|&&k| k).count() as f64 / kept.len().max(1) as f64;
        checks.push(Check {
            check: "probe_answers",
            value: same,
            threshold: c.min_probe_answers,
            passed: same >= c.min_probe_answers,
            message: format!(
                "{:.0}% of probe answers begin as before (at least {:.0}%)",
                same * 100.0,
                c.min_probe_answers * 100.0
            ),
        });

        lap("probes");

        // (2) Retention.
        let pairs: Vec<&Pair> = retained.iter().map(|r| r.pair).collect();
        let kept = eval::reproduces(llama, Some(candidate.1), &pairs, stop)?;
        let retention = if kept.is_empty() {
            1.0
        } else {
            kept.iter().filter(|&&k| k).count() as f64 / kept.len() as f64
        };
        let lost: Vec<&str> = retained
            .iter()
            .zip(&kept)
            .filter(|(_, &k)| !k)
            .map(|(r, _)| r.id)
            .collect();
        checks.push(Check {
            check: "retention",
            value: retention,
            threshold: c.min_retention,
            passed: retention >= c.min_retention,
            message: format!(
                "{:.2} of {} corrections it trained on reproduced greedily (at least {}; accepted items it could not train on are listed in the run detail, feedback.skipped_items)",
                retention,
                kept.len(),
                c.min_retention
            ),
        });

        lap("retention");

        // (3) Red team, against the parent.
        let mut details = json!({"not_reproduced": lost, "probe_tokens": drift.tokens});
        let parent_rate = match self.cached_unsafe_rate(parent.0) {
            Some(r) => Some(r),
            None => self.unsafe_rate(parent.0, parent.1)?.map(|(r, _)| r),
        };
        match (
            self.unsafe_rate(candidate.0, Some(candidate.1))?,
            parent_rate,
        ) {
            (Some((rate, flagged)), Some(parent_rate)) => {
                let bound = parent_rate + c.max_unsafe_rise;
                checks.push(Check {
                    check: "redteam",
                    value: rate,
                    threshold: bound,
                    passed: rate <= bound + 1e-12,
                    message: format!(
                        "unsafe-answer rate {:.3} on {} red-team prompts against the parent's {:.3} (may rise {})",
                        rate,
                        suite.redteam.len(),
                        parent_rate,
                        c.max_unsafe_rise
                    ),
                });
                details["redteam"] = json!({
                    "prompts": suite.redteam.len(),
                    "parent_rate": parent_rate,
                    "flagged": flagged,
                });
            }
            _ => {
                details["redteam"] = json!("skipped: safety checks are off");
            }
        }

        lap("redteam");

        // (4) Perplexity on the reference texts.
        let ppl = perplexity(
            &self.model,
            Some(candidate.1),
            &suite.reference,
            Some((layer, &hidden.reference)),
        )?;
        let ratio = ppl / suite.base_perplexity.max(f64::MIN_POSITIVE);
        checks.push(Check {
            check: "perplexity",
            value: ratio,
            threshold: c.max_perplexity_ratio,
            passed: ratio <= c.max_perplexity_ratio,
            message: format!(
                "perplexity {:.3} on {} reference texts, {:.3}x the base's {:.3} (at most {}x)",
                ppl,
                suite.reference.len(),
                ratio,
                suite.base_perplexity,
                c.max_perplexity_ratio
            ),
        });
        details["perplexity"] = json!({"candidate": ppl, "base": suite.base_perplexity});
        lap("perplexity");
        details["seconds"] = serde_json::Value::Object(timings);
        Ok(Report { checks, details })
    }
}

/// exp(mean negative log-likelihood per answer token) of `pairs`.
/// `resume`: the base's hidden states of `pairs` entering a layer below which
/// `adapter` changes nothing.
fn perplexity(
    model: &LoadedModel,
    adapter: Option<&LoraAdapter>,
    pairs: &[Pair],
    resume: Option<(usize, &[Tensor])>,
) -> Result<f64, Error> {
    let mut nll = 0.0f64;
    let mut tokens = 0usize;
    // A few texts at a time: their logits over the whole vocabulary are 0.2 MB per
    // answer token.
    const PER_BATCH: usize = 4;
    for (c, chunk) in pairs.chunks(PER_BATCH).enumerate() {
        let refs: Vec<&Pair> = chunk.iter().collect();
        let keep = vec![false; refs.len()];
        let at = c * PER_BATCH;
        let hidden: Option<Vec<&Tensor>> =
            resume.map(|(_, h)| h[at..at + refs.len()].iter().collect());
        let from = resume.map(|(l, _)| l).zip(hidden.as_deref());
        let s = objective::score_from(&model.llama, adapter, &refs, &keep, Mode::Serve, from)?;
        for x in &s.scores {
            nll -= f64::from(x.logp);
            tokens += x.tokens;
        }
    }
    Ok((nll / tokens.max(1) as f64).exp())
}
