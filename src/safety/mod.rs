//! Reflexes: classifiers on every prompt and answer that block, rewrite or escalate,
//! without touching the model. Policy, rules and classifier weights live in the
//! `safety/` folder and are reloaded while the server runs.
//!
//! The cascade, per text and direction:
//! 1. [`normalize`] undoes obfuscation (case, leetspeak, homoglyphs, invisible
//!    characters, inserted spaces or punctuation);
//! 2. [`rules`] (lexicons, patterns, personal-data detectors) give a floor score per
//!    category and the spans they matched;
//! 3. the [`classifier`] gives a calibrated probability per category;
//! 4. the [`policy`] turns the per-category maximum into a [`Decision`].
//!
//! [`Safety`] is the shared, hot-reloadable handle: a new folder is validated in
//! full before it replaces the one in use, so a broken edit never takes effect.

pub mod category;
pub mod classifier;
pub mod normalize;
pub mod offline;
pub mod policy;
pub mod probe;
pub mod rules;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant, SystemTime};

pub use category::{Category, Direction, N_CATEGORIES};
pub use classifier::Classifier;
pub use policy::{ActionKind, Decision, Policy};
pub use probe::{Probe, PROBE_FILE};
pub use rules::{Hit, Rules};

use crate::monitoring::Metrics;

/// The policy compiled into the binary, used when the safety folder is missing.
pub const BUILTIN_POLICY: &str = include_str!("../../safety/policy.toml");
/// The rules compiled into the binary, used when the safety folder is missing.
pub const BUILTIN_RULES: &str = include_str!("../../safety/rules.toml");
/// The trained classifier compiled into the binary, so a server started anywhere
/// judges with the same weights as one started in the checkout.
pub const BUILTIN_CLASSIFIER: &[u8] = include_bytes!("../../safety/classifier.safetensors");
/// The hidden-state probe compiled into the binary (see [`probe`]).
pub const BUILTIN_PROBE: &[u8] = include_bytes!("../../safety/probe.safetensors");

/// File names inside the safety folder.
pub const POLICY_FILE: &str = "policy.toml";
/// Lexicons and patterns.
pub const RULES_FILE: &str = "rules.toml";
/// Trained classifier weights (`tether safety train`).
pub const CLASSIFIER_FILE: &str = "classifier.safetensors";

/// Errors loading the safety folder.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The configured folder does not exist.
    #[error("safety folder {path} not found (safety.dir / TETHER_SAFETY_DIR): point it at a folder with policy.toml, rules.toml and classifier.safetensors, or leave it empty to use the built-in policy")]
    Missing {
        /// The folder.
        path: PathBuf,
    },
    /// A file is invalid.
    #[error("invalid {path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// Scores and rule hits for one text (independent of the policy's thresholds).
#[derive(Debug, Clone)]
pub struct Assessment {
    /// Per category, the larger of the rules' and the classifier's score.
    pub scores: [f32; N_CATEGORIES],
    /// Spans the rules matched, in the original text.
    pub hits: Vec<Hit>,
}

/// Everything loaded from one state of the safety folder.
pub struct Cascade {
    /// The policy.
    pub policy: Policy,
    rules: Rules,
    classifier: Option<Classifier>,
    probe: Option<Probe>,
    /// Identifies this state (changes on every successful reload).
    pub generation: u64,
}

impl Cascade {
    /// Builds a cascade from file contents.
    pub fn from_parts(
        policy: &str,
        rules: &str,
        classifier: Option<Classifier>,
        generation: u64,
    ) -> Result<Self, (String, String)> {
        Ok(Self {
            policy: Policy::parse(policy).map_err(|m| (POLICY_FILE.to_string(), m))?,
            rules: Rules::parse(rules).map_err(|m| (RULES_FILE.to_string(), m))?,
            classifier,
            probe: None,
            generation,
        })
    }

    /// The same cascade with an answer probe as its second stage.
    pub fn with_probe(mut self, probe: Option<Probe>) -> Self {
        self.probe = probe;
        self
    }

    fn keep_probe(self, keep: bool) -> Self {
        if keep {
            self
        } else {
            self.with_probe(None)
        }
    }

    /// The probe, if one is loaded.
    pub fn probe(&self) -> Option<&Probe> {
        self.probe.as_ref()
    }

    /// Loads and validates the folder; the classifier must be there (see
    /// [`Cascade::load_with`] to run rules only).
    pub fn load(dir: &Path, generation: u64) -> Result<Self, Error> {
        Self::load_with(dir, generation, true)
    }

    /// Loads and validates the folder. Without `classifier.safetensors` this is an
    /// error when `require_classifier` is set, else only the rules run.
    pub fn load_with(dir: &Path, generation: u64, require_classifier: bool) -> Result<Self, Error> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path).map_err(|source| Error::Read { path, source })
        };
        let policy = read(POLICY_FILE)?;
        let rules = read(RULES_FILE)?;
        let cpath = dir.join(CLASSIFIER_FILE);
        let classifier = if cpath.exists() {
            Some(Classifier::load(&cpath).map_err(|e| Error::Invalid {
                path: cpath.clone(),
                message: e.to_string(),
            })?)
        } else if require_classifier {
            return Err(Error::Invalid {
                path: cpath,
                message: "missing: build it with `tether safety train`, or set \
                          safety.classifier = false to run the rules alone"
                    .into(),
            });
        } else {
            tracing::warn!(
                "{} is missing and safety.classifier = false: only rules will run",
                cpath.display()
            );
            None
        };
        let ppath = dir.join(PROBE_FILE);
        let probe = if ppath.exists() {
            Some(Probe::load(&ppath).map_err(|e| Error::Invalid {
                path: ppath.clone(),
                message: e.to_string(),
            })?)
        } else {
            None
        };
        let cascade = Self::from_parts(&policy, &rules, classifier, generation).map_err(
            |(file, message)| Error::Invalid {
                path: dir.join(file),
                message,
            },
        )?;
        Ok(cascade.with_probe(probe))
    }

    /// The built-in policy, rules and classifier (compiled into the binary).
    pub fn builtin() -> Result<Self, Error> {
        let classifier =
            Classifier::from_bytes(BUILTIN_CLASSIFIER).map_err(|message| Error::Invalid {
                path: PathBuf::from(format!("<built-in {CLASSIFIER_FILE}>")),
                message,
            })?;
        let probe = Probe::from_bytes(BUILTIN_PROBE).map_err(|message| Error::Invalid {
            path: PathBuf::from(format!("<built-in {PROBE_FILE}>")),
            message,
        })?;
        let cascade = Self::from_parts(BUILTIN_POLICY, BUILTIN_RULES, Some(classifier), 0)
            .map_err(|(file, message)| Error::Invalid {
                path: PathBuf::from(format!("<built-in {file}>")),
                message,
            })?;
        Ok(cascade.with_probe(Some(probe)))
    }

    /// The cascade `config` names, and the folder it came from (none: built-in).
    /// See [`resolve_dir`].
    pub fn open(
        config: &crate::config::SafetyConfig,
        data_dir: &Path,
        generation: u64,
    ) -> Result<(Self, Option<PathBuf>), Error> {
        match resolve_dir(config, data_dir)? {
            Some(dir) => Ok((
                Self::load_with(&dir, generation, config.classifier)?.keep_probe(config.probe),
                Some(dir),
            )),
            None => Ok((Self::builtin()?.keep_probe(config.probe), None)),
        }
    }

    /// The layer whose states the probe reads, for the engine's tap.
    pub fn probe_layer(&self) -> Option<usize> {
        self.probe.as_ref().map(|p| p.layer)
    }

    fn probe_harm(&self, d: Direction, state: Option<&crate::model::Tap>) -> Option<(&Probe, f32)> {
        if d != Direction::Output {
            return None;
        }
        let probe = self.probe.as_ref()?;
        Some((probe, probe.score(state?)?))
    }

    /// Whether a trained classifier is loaded.
    pub fn has_classifier(&self) -> bool {
        self.classifier.is_some()
    }

    /// Scores one text.
    pub fn assess(&self, text: &str, direction: Direction) -> Assessment {
        self.assess_answer(text, direction, None)
    }

    /// Scores one text; for an answer whose hidden states the engine tapped
    /// (`state`), the probe tempers the classifier's scores (see [`probe`]).
    pub fn assess_answer(
        &self,
        text: &str,
        direction: Direction,
        state: Option<&crate::model::Tap>,
    ) -> Assessment {
        let norm = normalize::normalize(text);
        let (mut scores, hits) = self.rules.apply(text, &norm, direction);
        if let Some(c) = &self.classifier {
            let mut p = c.score_normalized(&norm.text);
            if let Some((probe, harm)) = self.probe_harm(direction, state) {
                probe.temper(&mut p, harm);
            }
            for i in 0..N_CATEGORIES {
                scores[i] = scores[i].max(p[i]);
            }
        }
        Assessment { scores, hits }
    }
}

/// The result of checking one text.
#[derive(Debug, Clone)]
pub struct Verdict {
    /// Scores and hits.
    pub assessment: Arc<Assessment>,
    /// What the policy says to do.
    pub decision: Decision,
}

/// The folder the safety layer loads from, `None` for the built-ins:
/// - `safety.dir` set: that folder (relative to the working directory); an error
///   when it does not exist, so a typo never silently weakens the policy;
/// - empty (the default): `<data dir>/safety`, else `./safety` (running from a
///   checkout, where edits hot-reload), whichever first holds a `policy.toml`, else
///   the built-ins compiled into the binary.
pub fn resolve_dir(
    config: &crate::config::SafetyConfig,
    data_dir: &Path,
) -> Result<Option<PathBuf>, Error> {
    if !config.dir.is_empty() {
        let dir = PathBuf::from(&config.dir);
        return if dir.is_dir() {
            Ok(Some(dir))
        } else {
            Err(Error::Missing { path: dir })
        };
    }
    let in_data = data_dir.join("safety");
    if in_data.join(POLICY_FILE).is_file() {
        return Ok(Some(in_data));
    }
    let here = PathBuf::from("safety");
    if here.join(POLICY_FILE).is_file() {
        return Ok(Some(here));
    }
    Ok(None)
}

/// Fingerprint of the folder's files, to notice edits.
type Stamp = Vec<Option<(SystemTime, u64)>>;

/// The shared, hot-reloadable safety layer.
pub struct Safety {
    dir: Option<PathBuf>,
    require_classifier: bool,
    use_probe: bool,
    current: RwLock<Arc<Cascade>>,
    stamp: Mutex<Stamp>,
    cache: moka::sync::Cache<String, Arc<Assessment>>,
    metrics: Option<Arc<Metrics>>,
    on_reload: std::sync::OnceLock<ReloadHook>,
}

/// Called after every reload attempt with who asked (`file-watch`, `sighup`,
/// `operator`) and the outcome: the new generation, or the error.
pub type ReloadHook = Box<dyn Fn(&str, Result<u64, &Error>) + Send + Sync>;

fn stamp(dir: &Path) -> Stamp {
    [POLICY_FILE, RULES_FILE, CLASSIFIER_FILE, PROBE_FILE]
        .iter()
        .map(|f| {
            let m = std::fs::metadata(dir.join(f)).ok()?;
            Some((m.modified().ok()?, m.len()))
        })
        .collect()
}

fn generation_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
}

/// Texts longer than this are not cached.
const CACHE_TEXT_LIMIT: usize = 16 * 1024;

impl Safety {
    /// Opens the safety layer `config` names (see [`resolve_dir`]): a folder, which
    /// is then watched and reloaded, or the built-in policy, rules and classifier.
    /// Refuses (an error) rather than running without a classifier the operator did
    /// not turn off.
    pub fn open(
        config: &crate::config::SafetyConfig,
        data_dir: &Path,
        metrics: Option<Arc<Metrics>>,
    ) -> Result<Self, Error> {
        let (cascade, dir) = Cascade::open(config, data_dir, generation_now())?;
        match &dir {
            Some(d) => tracing::info!(
                "safety: {} from {} (reloaded on change)",
                if cascade.has_classifier() {
                    "policy, rules and classifier"
                } else {
                    "policy and rules (no classifier)"
                },
                d.display()
            ),
            None => tracing::info!("safety: the built-in policy, rules and classifier"),
        }
        Ok(Self {
            require_classifier: config.classifier,
            use_probe: config.probe,
            stamp: Mutex::new(dir.as_deref().map(stamp).unwrap_or_default()),
            dir,
            current: RwLock::new(Arc::new(cascade)),
            cache: moka::sync::Cache::new(config.cache_entries),
            metrics,
            on_reload: std::sync::OnceLock::new(),
        })
    }

    /// The cascade in use now.
    pub fn current(&self) -> Arc<Cascade> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The folder it reloads from (none when running on built-ins).
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// Sets the hook told of every reload (the server writes an audit entry).
    pub fn on_reload(&self, hook: ReloadHook) {
        let _ = self.on_reload.set(hook);
    }

    /// Re-reads the folder at `trigger`'s request (`file-watch`, `sighup`,
    /// `operator`). On error the cascade in use stays, the error is logged and
    /// counted, and returned.
    pub fn reload(&self, trigger: &str) -> Result<u64, Error> {
        let result = self.reload_inner();
        if let Some(hook) = self.on_reload.get() {
            hook(trigger, result.as_ref().map(|g| *g));
        }
        result
    }

    fn reload_inner(&self) -> Result<u64, Error> {
        let Some(dir) = &self.dir else {
            return Ok(self.current().generation);
        };
        let new_stamp = stamp(dir);
        let result = Cascade::load_with(dir, generation_now(), self.require_classifier)
            .map(|c| c.keep_probe(self.use_probe));
        *self.stamp.lock().unwrap_or_else(|e| e.into_inner()) = new_stamp;
        let outcome = if result.is_ok() { "ok" } else { "error" };
        if let Some(m) = &self.metrics {
            m.safety_reloads.with_label_values(&[outcome]).inc();
        }
        match result {
            Ok(c) => {
                let g = c.generation;
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(c);
                self.cache.invalidate_all();
                tracing::info!("safety policy reloaded from {}", dir.display());
                Ok(g)
            }
            Err(e) => {
                tracing::error!("safety reload rejected, keeping the previous policy: {e}");
                Err(e)
            }
        }
    }

    /// Reloads if any file in the folder changed since the last (attempted) load.
    pub fn reload_if_changed(&self) {
        let Some(dir) = &self.dir else { return };
        let now = stamp(dir);
        let changed = *self.stamp.lock().unwrap_or_else(|e| e.into_inner()) != now;
        if changed {
            let _ = self.reload("file-watch");
        }
    }

    /// Polls the folder every `every` on a background thread for as long as the
    /// handle lives.
    pub fn watch(self: &Arc<Self>, every: Duration) {
        if self.dir.is_none() || every.is_zero() {
            return;
        }
        let weak: Weak<Self> = Arc::downgrade(self);
        let spawned = std::thread::Builder::new()
            .name("tether-safety-watch".into())
            .spawn(move || loop {
                std::thread::sleep(every);
                match weak.upgrade() {
                    Some(s) => s.reload_if_changed(),
                    None => return,
                }
            });
        if let Err(e) = spawned {
            tracing::error!("cannot start the safety folder watcher: {e}");
        }
    }

    fn assessment(
        &self,
        cascade: &Cascade,
        text: &str,
        d: Direction,
        cache: bool,
    ) -> Arc<Assessment> {
        let cacheable = cache && text.len() <= CACHE_TEXT_LIMIT;
        let key = cacheable.then(|| format!("{}:{}:{text}", cascade.generation, d.name()));
        if let Some(k) = &key {
            if let Some(a) = self.cache.get(k) {
                return a;
            }
        }
        let a = Arc::new(cascade.assess(text, d));
        if let Some(k) = key {
            self.cache.insert(k, a.clone());
        }
        a
    }

    fn observe(&self, d: Direction, started: Instant, decision: &Decision, cascade: &Cascade) {
        let Some(m) = &self.metrics else { return };
        m.safety_latency
            .with_label_values(&[d.name()])
            .observe(started.elapsed().as_secs_f64());
        if decision.categories.is_empty() {
            m.safety_verdicts
                .with_label_values(&["none", "allow", d.name()])
                .inc();
        }
        for c in &decision.categories {
            let action = cascade
                .policy
                .rule(*c, d)
                .map_or(ActionKind::Allow, |r| r.action);
            m.safety_verdicts
                .with_label_values(&[c.name(), action.name(), d.name()])
                .inc();
        }
    }

    /// Checks one text (verdicts of short texts are cached per policy state).
    pub fn check(&self, text: &str, d: Direction) -> Verdict {
        self.check_with(&self.current(), text, d, true)
    }

    /// Checks with a given cascade (so one request uses one policy throughout).
    pub fn check_with(&self, cascade: &Cascade, text: &str, d: Direction, cache: bool) -> Verdict {
        self.check_answer(cascade, text, d, None, cache)
    }

    /// [`Safety::check_with`] for an answer with the engine's tap of its hidden
    /// states (never cached when the probe reads them: the same text can follow
    /// other prompts).
    pub fn check_answer(
        &self,
        cascade: &Cascade,
        text: &str,
        d: Direction,
        state: Option<&crate::model::Tap>,
        cache: bool,
    ) -> Verdict {
        let started = Instant::now();
        let assessment = match cascade.probe_harm(d, state) {
            Some(_) => Arc::new(cascade.assess_answer(text, d, state)),
            None => self.assessment(cascade, text, d, cache),
        };
        let decision = cascade
            .policy
            .decide(d, &assessment.scores, &assessment.hits);
        self.observe(d, started, &decision, cascade);
        Verdict {
            assessment,
            decision,
        }
    }
}
