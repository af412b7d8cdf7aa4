//! The conversation log: consenting, sampled conversations, anonymized with one
//! placeholder numbering per conversation, written with version, safety verdicts,
//! latency and token counts; deleted when their retention runs out.

use std::path::Path;
use std::sync::{Arc, Weak};
use std::time::Duration;

use rand::distr::{Alphanumeric, SampleString};
use rand::Rng;
use sha2::{Digest, Sha256};

use super::{Anonymizer, Pseudonyms};
use crate::config::PrivacyConfig;
use crate::model::ChatMessage;
use crate::monitoring::Metrics;
use crate::storage::{now_unix, NewConversation, Store};

/// File in the data directory holding the generated salt.
const SALT_FILE: &str = "privacy.salt";

/// Errors setting privacy up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The salt file could not be read or written.
    #[error("privacy salt {path}: {source}")]
    Salt {
        /// The file.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
}

/// Privacy settings plus the anonymizer, shared by the server.
pub struct Privacy {
    /// The anonymizer (salted like the user hashes).
    pub anonymizer: Anonymizer,
    /// Settings.
    pub config: PrivacyConfig,
    salt: String,
}

/// One finished conversation, before anonymization.
pub struct Entry<'a> {
    /// The completion id.
    pub completion_id: &'a str,
    /// The key's source.
    pub source: &'a str,
    /// The end user's salted hash.
    pub user_hash: Option<&'a str>,
    /// The version that answered.
    pub version: &'a str,
    /// The messages as the model saw them.
    pub messages: &'a [ChatMessage],
    /// The delivered answers.
    pub answers: &'a [String],
    /// Safety verdicts (JSON).
    pub safety: serde_json::Value,
    /// Whether a safety check acted.
    pub flagged: bool,
    /// End-to-end latency.
    pub latency: Duration,
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Completion tokens.
    pub completion_tokens: usize,
}

impl Privacy {
    /// Settings from `config`; an empty salt is replaced by one generated once and
    /// kept in `data_dir`.
    pub fn new(config: PrivacyConfig, data_dir: &Path) -> Result<Self, Error> {
        let salt = if config.salt.is_empty() {
            let path = data_dir.join(SALT_FILE);
            let err = |source| Error::Salt {
                path: path.display().to_string(),
                source,
            };
            match std::fs::read_to_string(&path) {
                Ok(s) if !s.trim().is_empty() => s.trim().to_string(),
                _ => {
                    let s = Alphanumeric.sample_string(&mut rand::rng(), 32);
                    std::fs::create_dir_all(data_dir).map_err(err)?;
                    std::fs::write(&path, &s).map_err(err)?;
                    s
                }
            }
        } else {
            config.salt.clone()
        };
        Ok(Self {
            anonymizer: Anonymizer::new(salt.clone()),
            config,
            salt,
        })
    }

    /// The salted hash that stands for an end-user id everywhere on disk.
    pub fn user_hash(&self, user: &str) -> String {
        let mut h = Sha256::new();
        h.update(self.salt.as_bytes());
        h.update(b"\0user\0");
        h.update(user.as_bytes());
        h.finalize()
            .iter()
            .take(12)
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// Whether this consenting conversation falls in the logged sample.
    pub fn sampled(&self) -> bool {
        let r = self.config.sample_rate;
        r >= 1.0 || (r > 0.0 && rand::rng().random::<f64>() < r)
    }

    /// Anonymizes and stores one conversation. Failures are logged, not returned:
    /// a logging problem never fails the user's request.
    pub fn log(&self, store: &Store, e: &Entry<'_>) {
        let mut names = Pseudonyms::default();
        let op = &self.config.operator;
        let messages: Vec<serde_json::Value> = e
            .messages
            .iter()
            .map(|m| {
                serde_json::json!({
                    "role": m.role,
                    "content": self.anonymizer.anonymize(&m.content, op, &mut names),
                })
            })
            .collect();
        let answers: Vec<String> = e
            .answers
            .iter()
            .map(|a| self.anonymizer.anonymize(a, op, &mut names))
            .collect();
        let retention = i64::try_from(self.config.retention_secs).unwrap_or(i64::MAX / 2);
        let row = NewConversation {
            completion_id: e.completion_id,
            source: e.source,
            user_hash: e.user_hash,
            version: e.version,
            expires: now_unix().saturating_add(retention),
            messages: &serde_json::Value::from(messages).to_string(),
            answers: &serde_json::Value::from(answers).to_string(),
            safety: &e.safety.to_string(),
            flagged: e.flagged,
            latency_ms: e.latency.as_millis() as i64,
            prompt_tokens: e.prompt_tokens as i64,
            completion_tokens: e.completion_tokens as i64,
        };
        if let Err(err) = store.insert_conversation(&row) {
            tracing::error!("logging conversation {}: {err}", e.completion_id);
        }
    }

    /// Deletes expired conversations every `retention_sweep_secs` on a background
    /// thread for as long as `store` lives.
    pub fn spawn_retention(&self, store: &Arc<Store>, metrics: &Arc<Metrics>) {
        let every = Duration::from_secs(self.config.retention_sweep_secs.max(1));
        let store: Weak<Store> = Arc::downgrade(store);
        let metrics = metrics.clone();
        let spawned = std::thread::Builder::new()
            .name("tether-retention".into())
            .spawn(move || loop {
                let Some(s) = store.upgrade() else { return };
                match s.delete_expired(now_unix()) {
                    Ok(n) => {
                        metrics.retention_deleted.inc_by(n as u64);
                        if n > 0 {
                            tracing::info!("retention deleted {n} expired conversations");
                        }
                    }
                    Err(e) => tracing::error!("retention sweep failed: {e}"),
                }
                drop(s);
                std::thread::sleep(every);
            });
        if let Err(e) = spawned {
            tracing::error!("cannot start the retention job: {e}");
        }
    }
}
