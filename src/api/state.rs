//! Shared state of the HTTP layer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use crate::config::ServerConfig;
use crate::engine::Engine;
use crate::feedback::Feedback;
use crate::model::LoadedModel;
use crate::monitoring::Metrics;
use crate::privacy::conversations::Privacy;
use crate::registry::Registry;
use crate::safety::Safety;
use crate::storage::Store;

/// What exists once the model has loaded.
pub struct Ready {
    /// The model (tokenizer and template are used by handlers).
    pub model: Arc<LoadedModel>,
    /// The batching engine.
    pub engine: Engine,
    /// Versions.
    pub registry: Arc<Registry>,
    /// The background learner (`None` when turned off).
    pub learner: Option<Arc<crate::learner::Learner>>,
    /// Canary, drift monitor, promote and rollback.
    pub rollout: Arc<crate::rollout::Rollout>,
}

/// A token bucket per source.
#[derive(Debug)]
pub struct Bucket {
    /// Tokens left.
    pub tokens: f64,
    /// Last refill.
    pub at: Instant,
}

/// A cached non-streaming response to a deterministic request.
#[derive(Clone)]
pub struct Cached {
    /// The response (its id and time are replaced when served again).
    pub response: Arc<super::wire::ChatCompletion>,
    /// The version that produced it.
    pub version: String,
}

/// Everything handlers share.
pub struct AppState {
    /// Server settings.
    pub config: ServerConfig,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Durable state.
    pub store: Arc<Store>,
    /// Set once the model is loaded (`/ready` is 503 until then).
    pub ready: OnceLock<Ready>,
    /// Per-source rate-limit buckets.
    pub buckets: Mutex<HashMap<String, Bucket>>,
    /// Responses to deterministic requests, keyed by version and request.
    pub cache: moka::sync::Cache<String, Cached>,
    /// Safety checks on prompts and answers (`None` when turned off).
    pub safety: Option<Arc<Safety>>,
    /// The anonymizer and conversation-log settings.
    pub privacy: Arc<Privacy>,
    /// Feedback intake and source reliability.
    pub feedback: Arc<Feedback>,
}

/// Cloneable handle to the state.
pub type SharedState = Arc<AppState>;

impl AppState {
    /// State with nothing loaded yet.
    pub fn new(
        config: ServerConfig,
        metrics: Arc<Metrics>,
        store: Arc<Store>,
        safety: Option<Arc<Safety>>,
        privacy: Arc<Privacy>,
        feedback: Arc<Feedback>,
    ) -> Self {
        let cache = moka::sync::Cache::builder()
            .max_capacity(config.response_cache_bytes)
            .weigher(|k: &String, v: &Cached| {
                let body = serde_json::to_string(&*v.response).map_or(0, |s| s.len());
                (k.len() + body).try_into().unwrap_or(u32::MAX)
            })
            .build();
        Self {
            config,
            metrics,
            store,
            ready: OnceLock::new(),
            buckets: Mutex::new(HashMap::new()),
            cache,
            safety,
            privacy,
            feedback,
        }
    }
}
