//! Configuration: `configs/default.toml` (compiled in), then a `--config` file (only
//! the keys it sets), then `TETHER_*` environment variables, then command-line flags.
//!
//! Raw TOML is merged first and deserialised once, so a partial file never resets
//! values it does not mention.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::engine::EngineConfig;
use crate::learner::LearnerConfig;
use crate::model::{ComputePath, LoraConfig};
use crate::privacy::consent::Consent;
use crate::privacy::Operator;
use crate::rollout::{CanaryConfig, DriftConfig, GateConfig, LiveConfig};

/// The compiled-in defaults.
pub const DEFAULT_TOML: &str = include_str!("../configs/default.toml");

/// Errors reading configuration.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The TOML is malformed or has wrong types.
    #[error("invalid config {origin}: {message}")]
    Parse {
        /// Which layer (file name, `defaults`, or an environment variable).
        origin: String,
        /// What is wrong.
        message: String,
    },
}

/// Which model to load and how.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// `default`, a GGUF path, a Hugging Face folder or `hf:ORG/NAME[@rev]`.
    pub spec: String,
    /// Compute path for linear layers.
    pub compute: ComputePath,
}

/// Defaults for generation requests that do not say otherwise.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerationConfig {
    /// Sampling temperature (0: greedy).
    pub temperature: f64,
    /// Maximum generated tokens.
    pub max_tokens: usize,
    /// Repetition penalty (1.0: off).
    pub repetition_penalty: f32,
}

/// A user API key given in the configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// The key as clients send it.
    pub key: String,
    /// The feedback source it speaks for.
    pub source: String,
    /// Logging consent for this key's requests (default: `privacy.consent`).
    #[serde(default)]
    pub consent: Option<Consent>,
}

/// The HTTP server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to bind.
    pub host: String,
    /// Port to bind (0: any free port).
    pub port: u16,
    /// Where the database and version snapshots live (empty: `$TETHER_HOME/data`).
    pub data_dir: String,
    /// The deployment name clients may use as `model`.
    pub deployment: String,
    /// Serve requests without a key as the `anonymous` source.
    pub allow_anonymous: bool,
    /// Token for `/admin/` endpoints (empty: disabled; `TETHER_OPERATOR_TOKEN`).
    pub operator_token: Option<String>,
    /// User keys known from the configuration (more are created at run time).
    pub keys: Vec<KeyConfig>,
    /// Requests per minute per source (0: unlimited).
    pub rate_limit_per_minute: u32,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// A request is abandoned after this long.
    pub request_timeout_secs: u64,
    /// After a shutdown signal, in-flight streams get this long to finish.
    pub shutdown_grace_secs: u64,
    /// Bytes of responses cached for deterministic requests (0: off).
    pub response_cache_bytes: u64,
    /// Most choices (`n`) per request.
    pub max_n: usize,
    /// `max_tokens` when a request gives none (capped by the context).
    pub default_max_tokens: usize,
    /// `temperature` when a request gives none.
    pub default_temperature: f64,
}

/// The safety layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SafetyConfig {
    /// Check prompts and answers at all.
    pub enabled: bool,
    /// The folder with `policy.toml`, `rules.toml` and `classifier.safetensors`
    /// (relative paths are from the working directory). Empty: `<data dir>/safety`,
    /// else `./safety`, else the built-ins (`safety::resolve_dir`).
    pub dir: String,
    /// Require the trained classifier: a folder without a loadable one stops the
    /// server from starting. `false` runs the policy and rules alone.
    pub classifier: bool,
    /// Judge answers with the probe on the model's hidden states as well (when the
    /// folder or the binary has `probe.safetensors` made for the served model).
    /// `false` leaves answers to the rules and the classifier.
    pub probe: bool,
    /// Poll the folder for changes this often (0: only SIGHUP and the reload endpoint).
    pub watch_secs: u64,
    /// Verdicts kept for repeated texts.
    pub cache_entries: u64,
}

/// Conversation logging and anonymization.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrivacyConfig {
    /// Default consent for keys that do not set their own (and anonymous callers).
    pub consent: Consent,
    /// Share of consenting conversations that are logged (0..=1).
    pub sample_rate: f64,
    /// Logged conversations are deleted after this many seconds.
    pub retention_secs: u64,
    /// How often the retention job runs.
    pub retention_sweep_secs: u64,
    /// How logged text is anonymized.
    pub operator: Operator,
    /// Salt for user-id hashes and the hash operator (`TETHER_PRIVACY_SALT`; empty:
    /// a random salt kept in the data directory).
    pub salt: String,
}

/// Feedback intake.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedbackConfig {
    /// Longest correction or reason, in characters (longer: 413).
    pub max_text_chars: usize,
    /// Items per source per minute (more: 429; 0: unlimited).
    pub per_minute: u32,
    /// Corrections within this window are compared for campaigns.
    pub campaign_window_secs: u64,
    /// Distinct sources that make a group of near-identical corrections.
    pub campaign_min_sources: usize,
    /// SimHash bits two corrections may differ by and still be near-identical.
    pub campaign_max_bits: u32,
    /// A source is young for this long after its first item.
    pub young_secs: u64,
    /// Most of an update window's weight one source may hold.
    pub share_cap: f64,
    /// Judgements lose half their weight in reliability estimates after this many days.
    pub forgetting_days: f64,
    /// Recent completions kept in memory for feedback (entries, seconds).
    pub context_entries: u64,
    /// How long a completion's prompt and answers stay available to feedback.
    pub context_secs: u64,
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Model selection.
    pub model: ModelConfig,
    /// Generation defaults for the command line.
    pub generation: GenerationConfig,
    /// Adapter shape used by the learner.
    pub lora: LoraConfig,
    /// HTTP server.
    pub server: ServerConfig,
    /// Batching engine.
    pub engine: EngineConfig,
    /// Safety classifiers and policy.
    pub safety: SafetyConfig,
    /// Conversation logging and anonymization.
    pub privacy: PrivacyConfig,
    /// Feedback intake.
    pub feedback: FeedbackConfig,
    /// The background learner.
    pub learner: LearnerConfig,
    /// The evaluation gate.
    pub gate: GateConfig,
    /// Canary rollout.
    pub canary: CanaryConfig,
    /// Drift monitor.
    pub drift: DriftConfig,
    /// Live signals.
    pub live: LiveConfig,
}

impl Config {
    /// Defaults, overlaid with `file` if given, then the environment.
    pub fn load(file: Option<&Path>) -> Result<Self, Error> {
        let mut merged: toml::Table = parse(DEFAULT_TOML, "defaults")?;
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
                path: path.to_path_buf(),
                source,
            })?;
            merge(&mut merged, parse(&text, &path.display().to_string())?);
        }
        let mut cfg: Config =
            toml::Value::Table(merged)
                .try_into()
                .map_err(|e: toml::de::Error| Error::Parse {
                    origin: file.map_or("defaults".into(), |p| p.display().to_string()),
                    message: e.to_string(),
                })?;
        cfg.apply_env()?;
        Ok(cfg)
    }

    fn apply_env(&mut self) -> Result<(), Error> {
        if let Ok(v) = std::env::var("TETHER_MODEL") {
            self.model.spec = v;
        }
        if let Ok(v) = std::env::var("TETHER_COMPUTE") {
            self.model.compute = v.parse().map_err(|message| Error::Parse {
                origin: "TETHER_COMPUTE".into(),
                message,
            })?;
        }
        if let Ok(v) = std::env::var("TETHER_HOST") {
            self.server.host = v;
        }
        if let Ok(v) = std::env::var("TETHER_PORT") {
            self.server.port = v.parse().map_err(|e| Error::Parse {
                origin: "TETHER_PORT".into(),
                message: format!("{e}"),
            })?;
        }
        if let Ok(v) = std::env::var("TETHER_DATA_DIR") {
            self.server.data_dir = v;
        }
        if let Ok(v) = std::env::var("TETHER_DEPLOYMENT") {
            self.server.deployment = v;
        }
        if let Ok(v) = std::env::var("TETHER_OPERATOR_TOKEN") {
            self.server.operator_token = Some(v);
        }
        if let Ok(v) = std::env::var("TETHER_SAFETY_DIR") {
            self.safety.dir = v;
        }
        if let Ok(v) = std::env::var("TETHER_SAFETY") {
            self.safety.enabled = !matches!(v.as_str(), "0" | "false" | "no" | "off");
        }
        if let Ok(v) = std::env::var("TETHER_LEARNER") {
            self.learner.enabled = !matches!(v.as_str(), "0" | "false" | "no" | "off");
        }
        if let Ok(v) = std::env::var("TETHER_PRIVACY_SALT") {
            self.privacy.salt = v;
        }
        if let Ok(v) = std::env::var("TETHER_ALLOW_ANONYMOUS") {
            self.server.allow_anonymous = matches!(v.as_str(), "1" | "true" | "yes" | "on");
        }
        if self.server.operator_token.as_deref() == Some("") {
            self.server.operator_token = None;
        }
        Ok(())
    }
}

fn parse(text: &str, origin: &str) -> Result<toml::Table, Error> {
    text.parse::<toml::Table>().map_err(|e| Error::Parse {
        origin: origin.to_string(),
        message: e.to_string(),
    })
}

/// Recursively overlays `top` on `base`.
fn merge(base: &mut toml::Table, top: toml::Table) {
    for (k, v) in top {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(t)) => merge(b, t),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_parse_and_partial_files_only_override_their_keys() {
        let cfg = Config::load(None).expect("defaults parse");
        assert_eq!(cfg.model.compute, ComputePath::Qf32);
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "[generation]\ntemperature = 0.0\n").expect("write");
        let c2 = Config::load(Some(&p)).expect("partial file");
        assert_eq!(c2.generation.temperature, 0.0);
        assert_eq!(c2.generation.max_tokens, cfg.generation.max_tokens);
        assert_eq!(c2.lora, cfg.lora);
    }

    #[test]
    fn unknown_keys_are_rejected_with_the_file_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("bad.toml");
        std::fs::write(&p, "[model]\nspecc = \"x\"\n").expect("write");
        let err = Config::load(Some(&p)).expect_err("unknown key").to_string();
        assert!(err.contains("bad.toml") && err.contains("specc"), "{err}");
    }
}
