//! `serve`: binds nothing itself (the caller passes a listener), loads the model in
//! the background while `/health` already answers, and shuts down gracefully.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;

use crate::api::{self, AppState, Ready};
use crate::config::Config;
use crate::engine::Engine;
use crate::model::{fetch, LoadOptions, LoadedModel, ModelSpec};
use crate::monitoring::Metrics;
use crate::privacy::conversations::Privacy;
use crate::registry::Registry;
use crate::safety::Safety;
use crate::storage::Store;

/// Errors that stop the server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The model could not be loaded.
    #[error(transparent)]
    Model(#[from] crate::model::Error),
    /// The database could not be opened.
    #[error(transparent)]
    Storage(#[from] crate::storage::Error),
    /// The learner could not start.
    #[error(transparent)]
    Learner(#[from] crate::learner::Error),
    /// The registry could not be opened.
    #[error(transparent)]
    Registry(#[from] crate::registry::Error),
    /// Metrics could not be registered.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// Serving HTTP failed.
    #[error("http server: {0}")]
    Io(#[from] std::io::Error),
    /// The safety folder is invalid.
    #[error("safety: {0}")]
    Safety(#[from] crate::safety::Error),
    /// Privacy could not be set up.
    #[error(transparent)]
    Privacy(#[from] crate::privacy::conversations::Error),
    /// The loading task died.
    #[error("model loading task failed: {0}")]
    Join(String),
}

/// The data directory a configuration names.
pub fn data_dir(config: &Config) -> PathBuf {
    if config.server.data_dir.is_empty() {
        fetch::tether_home().join("data")
    } else {
        PathBuf::from(&config.server.data_dir)
    }
}

/// sha256 identifying the base weights (the default model's is known).
fn content_hash(spec: &ModelSpec) -> Result<String, crate::model::Error> {
    match spec {
        ModelSpec::Default => Ok(fetch::DEFAULT_SHA256.to_string()),
        ModelSpec::Gguf(p) => fetch::sha256_file(p),
        ModelSpec::HfDir(d) => {
            use sha2::{Digest, Sha256};
            let mut files: Vec<PathBuf> = std::fs::read_dir(d)
                .map_err(|e| crate::model::Error::io("read", d, e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.extension().is_some_and(|x| x == "safetensors")
                        || p.file_name()
                            .is_some_and(|n| n == "config.json" || n == "tokenizer.json")
                })
                .collect();
            files.sort();
            let mut h = Sha256::new();
            for f in files {
                h.update(fetch::sha256_file(&f)?.as_bytes());
            }
            Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
        }
        ModelSpec::Hub { repo, revision } => {
            use sha2::{Digest, Sha256};
            let id = format!("hf:{repo}@{}", revision.as_deref().unwrap_or("main"));
            Ok(Sha256::digest(id.as_bytes())
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect())
        }
    }
}

fn load(state: &AppState, config: &Config, data_dir: PathBuf) -> Result<(), Error> {
    let start = Instant::now();
    let spec: ModelSpec = config.model.spec.parse()?;
    let opts = LoadOptions {
        compute: config.model.compute,
        ..LoadOptions::default()
    };
    let model = Arc::new(LoadedModel::load(&spec, &opts)?);
    let hash = content_hash(&spec)?;
    let registry = Arc::new(Registry::open(
        state.store.clone(),
        &data_dir,
        &model.name,
        &hash,
        model.llama.config(),
        model.llama.device(),
    )?);
    let engine = Engine::start(model.clone(), config.engine.clone(), state.metrics.clone());
    state
        .metrics
        .model_load_seconds
        .set(start.elapsed().as_secs_f64());
    let serving = registry.serving()?;
    tracing::info!(
        version = %serving.id,
        compute = %model.llama.compute(),
        seconds = start.elapsed().as_secs_f64(),
        "model loaded; ready"
    );
    let rollout = crate::rollout::Rollout::start(
        registry.clone(),
        model.clone(),
        config.canary.clone(),
        config.drift.clone(),
        config.live.clone(),
        state.metrics.clone(),
    );
    let learner = if config.learner.enabled {
        let gate = Arc::new(crate::rollout::Gate::new(
            config.gate.clone(),
            model.clone(),
            state.safety.clone(),
        ));
        Some(crate::learner::Learner::start(
            config.learner.clone(),
            config.lora.clone(),
            model.clone(),
            state.feedback.clone(),
            state.metrics.clone(),
            gate,
            rollout.clone(),
        )?)
    } else {
        None
    };
    let _ = state.ready.set(Ready {
        model,
        engine,
        registry,
        learner,
        rollout,
    });
    Ok(())
}

/// Reloads the safety folder whenever the process receives SIGHUP.
fn reload_on_sighup(safety: &Arc<Safety>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let weak = Arc::downgrade(safety);
        match signal(SignalKind::hangup()) {
            Ok(mut hup) => {
                tokio::spawn(async move {
                    while hup.recv().await.is_some() {
                        let Some(s) = weak.upgrade() else { return };
                        tracing::info!("SIGHUP: reloading the safety folder");
                        let _ = tokio::task::spawn_blocking(move || s.reload("sighup")).await;
                    }
                });
            }
            Err(e) => tracing::warn!("cannot listen for SIGHUP: {e}"),
        }
    }
    #[cfg(not(unix))]
    let _ = safety;
}

/// Serves the API on `listener` until `shutdown` resolves, then lets in-flight
/// requests finish for up to `server.shutdown_grace_secs`.
pub async fn serve(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    crate::memory::tune_for_serving();
    let data_dir = data_dir(&config);
    let store = Arc::new(Store::open(&data_dir)?);
    let metrics = Arc::new(Metrics::new()?);
    let mut server_cfg = config.server.clone();
    if server_cfg.default_max_tokens == 0 {
        server_cfg.default_max_tokens = config.generation.max_tokens;
    }
    let safety = if config.safety.enabled {
        let s = Arc::new(Safety::open(
            &config.safety,
            &data_dir,
            Some(metrics.clone()),
        )?);
        let audit = Arc::downgrade(&store);
        s.on_reload(Box::new(move |trigger, result| {
            let Some(store) = audit.upgrade() else { return };
            let detail = match result {
                Ok(g) => serde_json::json!({"ok": true, "generation": g}),
                Err(e) => serde_json::json!({"ok": false, "error": e.to_string(), "kept": "the previous policy"}),
            };
            if let Err(e) = store.audit_event(trigger, "policy_reload", Some("safety"), &detail) {
                tracing::error!("cannot audit a safety reload: {e}");
            }
        }));
        s.watch(Duration::from_secs(config.safety.watch_secs));
        reload_on_sighup(&s);
        Some(s)
    } else {
        tracing::warn!("safety checks are off (safety.enabled = false)");
        None
    };
    if let Ok(n) = store.pending_reviews() {
        metrics.review_queue_length.set(n);
    }
    let privacy = Arc::new(Privacy::new(config.privacy.clone(), &data_dir)?);
    privacy.spawn_retention(&store, &metrics);
    let feedback = Arc::new(crate::feedback::Feedback::new(
        config.feedback.clone(),
        store.clone(),
        privacy.clone(),
        safety.clone(),
    ));
    let state = Arc::new(AppState::new(
        server_cfg, metrics, store, safety, privacy, feedback,
    ));
    let addr = listener.local_addr()?;
    tracing::info!("listening on http://{addr}");

    let loader_state = state.clone();
    let loader_cfg = config.clone();
    let loading = tokio::task::spawn_blocking(move || load(&loader_state, &loader_cfg, data_dir));

    let (signalled_tx, signalled_rx) = tokio::sync::oneshot::channel::<()>();
    let graceful =
        axum::serve(listener, api::router(state.clone())).with_graceful_shutdown(async move {
            shutdown.await;
            tracing::info!("shutting down: no new connections; finishing in-flight requests");
            let _ = signalled_tx.send(());
        });
    let grace = Duration::from_secs(config.server.shutdown_grace_secs);
    let server = async move {
        tokio::select! {
            r = graceful => r,
            _ = async {
                let _ = signalled_rx.await;
                tokio::time::sleep(grace).await;
            } => {
                tracing::warn!("grace period over; closing remaining connections");
                Ok(())
            }
        }
    };
    tokio::pin!(server);
    tokio::select! {
        r = &mut server => return Ok(r?),
        loaded = loading => match loaded {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(e) => return Err(Error::Join(e.to_string())),
        },
    }
    Ok(server.await?)
}

/// A server on its own thread and runtime, bound to a free loopback port: for tests,
/// benchmarks and programs that embed Tether. Dropping it shuts the server down.
pub struct Background {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Background {
    /// Starts `serve` with `config` on 127.0.0.1 (any free port) and waits, up to
    /// `ready_within`, until `/ready` answers 200.
    pub fn start(config: Config, ready_within: Duration) -> Result<Self, Error> {
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("tether-server".into())
            .spawn(move || {
                let rt = match tokio::runtime::Runtime::new() {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = addr_tx.send(Err(e));
                        return;
                    }
                };
                rt.block_on(async move {
                    let listener = match TcpListener::bind("127.0.0.1:0").await {
                        Ok(l) => l,
                        Err(e) => {
                            let _ = addr_tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = addr_tx.send(listener.local_addr());
                    if let Err(e) = serve(listener, config, async {
                        let _ = stop_rx.await;
                    })
                    .await
                    {
                        tracing::error!("background server stopped: {e}");
                    }
                });
            })?;
        let addr = addr_rx
            .recv()
            .map_err(|_| Error::Join("the server thread ended before binding".into()))??;
        let server = Self {
            url: format!("http://{addr}"),
            stop: Some(stop_tx),
            thread: Some(thread),
        };
        let deadline = Instant::now() + ready_within;
        while Instant::now() < deadline {
            if ureq::get(&format!("{}/ready", server.url))
                .call()
                .is_ok_and(|r| r.status() == 200)
            {
                return Ok(server);
            }
            if server.thread.as_ref().is_some_and(|t| t.is_finished()) {
                return Err(Error::Join(
                    "the server stopped while loading; see the log".into(),
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(Error::Join(format!(
            "the server was not ready within {ready_within:?}"
        )))
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
