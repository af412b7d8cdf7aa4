//! The `[gate]`, `[canary]`, `[drift]` and `[live]` sections of the configuration.

use serde::{Deserialize, Serialize};

/// What a candidate must pass before it serves any traffic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GateConfig {
    /// Largest mean KL(base ‖ candidate) per token on the probes.
    pub max_kl: f64,
    /// Smallest top-1 agreement with the base on the probes.
    pub min_top1: f64,
    /// Smallest share of probe answers whose first 8 greedy tokens are unchanged.
    pub min_probe_answers: f64,
    /// Smallest share of the corrections in the candidate's lineage (this run's and
    /// the earlier ones replayed) that greedy decoding reproduces.
    pub min_retention: f64,
    /// How far the unsafe-answer rate on the red-team prompts may rise above the
    /// parent's (0: not at all).
    pub max_unsafe_rise: f64,
    /// Largest ratio of the candidate's perplexity on the reference texts to the
    /// base's.
    pub max_perplexity_ratio: f64,
    /// Probe prompts (JSONL `{"prompt"}`; empty: `configs/probes.jsonl`, compiled in).
    pub probes: String,
    /// Red-team prompts (JSONL `{"prompt", "category"}`; empty:
    /// `safety/redteam.jsonl`, compiled in).
    pub redteam: String,
    /// Reference texts (JSONL `{"prompt", "answer"}`; empty:
    /// `configs/reference.jsonl`, compiled in).
    pub reference: String,
    /// Tokens of the base's greedy answers to the probes.
    pub answer_tokens: usize,
    /// Tokens generated for each red-team prompt.
    pub redteam_tokens: usize,
}

/// Canary rollout of candidates that passed the gate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CanaryConfig {
    /// Share of unpinned requests the canary answers (0: candidates that pass the
    /// gate serve at once).
    pub share: f64,
    /// Seconds between analyses.
    pub interval_secs: u64,
    /// Answers the canary needs before an analysis can pass on answer signals.
    pub min_answers: usize,
    /// Ratings each side needs before ratings are compared.
    pub min_ratings: usize,
    /// Consecutive passing analyses that promote the canary.
    pub successes: usize,
    /// Failed analyses that abort it.
    pub failure_limit: usize,
    /// A canary not promoted after this long is aborted (0: never).
    pub max_secs: u64,
}

/// Drift monitor of the serving version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriftConfig {
    /// Watch the serving version and roll back by itself.
    pub enabled: bool,
    /// Seconds between checks.
    pub interval_secs: u64,
    /// The recent window compared with the baseline.
    pub window_secs: u64,
    /// The baseline: this long before the recent window (from when the version
    /// began serving, at the earliest).
    pub baseline_secs: u64,
    /// Answers each window needs before answer signals are compared.
    pub min_answers: usize,
    /// Ratings each window needs before ratings are compared.
    pub min_ratings: usize,
}

/// Live signals and the conditions under which they count as failing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LiveConfig {
    /// Share of answers of trained versions re-scored against the base (shadow
    /// probes: KL per token of the live answer).
    pub shadow_rate: f64,
    /// An answer starting with one of these (case-insensitive) is a refusal.
    pub refusal_markers: Vec<String>,
    /// The output-flag rate fails when it is this many times the reference rate...
    pub flag_ratio: f64,
    /// ...and at least this much above it.
    pub flag_margin: f64,
    /// Mean rating (0..1) may fall at most this far below the reference's.
    pub rating_drop: f64,
    /// The refusal rate may rise at most this far above the reference's.
    pub refusal_margin: f64,
    /// Mean answer length must stay within this factor of the reference's.
    pub length_ratio: f64,
    /// Largest mean shadow-probe KL per token.
    pub max_shadow_kl: f64,
    /// Shadow probes needed before the KL is judged.
    pub min_shadow: usize,
    /// Signals older than this are forgotten.
    pub keep_secs: u64,
}

/// The `[live]` defaults of `configs/default.toml` (unit tests).
#[cfg(test)]
pub(crate) fn default_live() -> LiveConfig {
    toml::from_str::<crate::config::Config>(crate::config::DEFAULT_TOML)
        .map(|c| c.live)
        .expect("defaults parse")
}
