//! The background learner: decides when to train, turns accepted feedback into a
//! training set, runs [`train`](super::train()) on its own thread, writes the result
//! as a new immutable version, and hands it to the evaluation gate
//! ([`crate::rollout::Gate`]); a candidate that passes is placed by the rollout
//! controller (canary, or serving when canaries are off).
//!
//! A version folder is written under a temporary name and renamed into place before
//! its row is committed; the registry removes folders without a row at start-up, so
//! a process killed mid-run leaves no partial version. Feedback is never modified by
//! training: an interrupted run's feedback simply stays untrained.

use std::collections::{HashMap, HashSet};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use rand::distr::{Alphanumeric, SampleString};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::config::LearnerConfig;
use super::eval;
use super::objective::Pair;
use super::train::{self, Correction, Hyper, Preference, Rated, TrainSet};
use crate::feedback::Feedback;
use crate::model::{ChatMessage, LoadedModel, LoraConfig};
use crate::monitoring::Metrics;
use crate::privacy::Entity;
use crate::registry::{self, Registry, Status, ADAPTER_FILE, MANIFEST_FILE};
use crate::rollout::{Gate, Placement, Retained, Rollout};
use crate::storage::{self, now_unix, Consumed, FeedbackRow, Store, VersionRow};

/// Compiled-in anchor prompts.
const ANCHORS: &str = include_str!("../../configs/anchors.jsonl");

/// Why a run could not be started or failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A run is already queued or running.
    #[error("training run {0} is already in progress; wait for it to finish")]
    Busy(String),
    /// Nothing waits to be trained on.
    #[error("no accepted feedback is waiting to be trained on")]
    NothingToTrain,
    /// Every waiting item was unusable.
    #[error(
        "none of the {0} waiting feedback items can be trained on (their text still carries \
         anonymization placeholders, or the conversation they refer to is gone); they are \
         recorded as skipped"
    )]
    Untrainable(usize),
    /// The version to reproduce does not exist or has no manifest.
    #[error("{0}")]
    NotReproducible(String),
    /// The learner thread is gone.
    #[error("the learner has stopped")]
    Stopped,
    /// Storage failed.
    #[error(transparent)]
    Storage(#[from] storage::Error),
    /// The registry failed.
    #[error(transparent)]
    Registry(#[from] registry::Error),
    /// The model failed.
    #[error(transparent)]
    Model(#[from] crate::model::Error),
    /// Feedback weights could not be computed.
    #[error(transparent)]
    Feedback(#[from] crate::feedback::Error),
    /// The evaluation gate failed to run.
    #[error(transparent)]
    Gate(#[from] crate::rollout::gate::Error),
    /// A file could not be read or written.
    #[error("{0}")]
    Io(String),
}

/// What a run does.
#[derive(Debug, Clone)]
enum Job {
    /// Train on waiting feedback.
    Train { run: String, overrides: Overrides },
    /// Re-run a version's manifest and compare adapter bytes.
    Reproduce { run: String, version: String },
}

/// Hyperparameters an operator sets for one run (`POST /admin/train`).
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Overrides {
    /// Learning rate.
    pub learning_rate: Option<f64>,
    /// Step limit.
    pub max_steps: Option<usize>,
}

/// Anchor texts: prompts with the base's greedy answers.
struct References {
    anchors: Vec<Pair>,
    anchors_hash: String,
}

/// One item of a run's training set as recorded in the manifest.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Item {
    id: String,
    kind: String,
    weight: f64,
    role: String,
}

/// The learner service.
pub struct Learner {
    config: LearnerConfig,
    lora: LoraConfig,
    model: Arc<LoadedModel>,
    registry: Arc<Registry>,
    store: Arc<Store>,
    feedback: Arc<Feedback>,
    metrics: Arc<Metrics>,
    gate: Arc<Gate>,
    rollout: Arc<Rollout>,
    jobs: Mutex<mpsc::Sender<Job>>,
    active: Mutex<Option<String>>,
    references: OnceLock<References>,
    /// The base's hidden states of the anchors below the adapted layers.
    anchor_cache: Arc<super::AnchorCache>,
    /// Whether the start-up preparation (anchors, the gate's suite) has finished.
    prepared: std::sync::atomic::AtomicBool,
}

impl Learner {
    /// Whether the start-up preparation (the base's answers to the anchors and the
    /// evaluation suite, the serving version's red-team rate) has finished; runs
    /// requested before then wait for it.
    pub fn is_prepared(&self) -> bool {
        self.prepared.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Starts the learner thread; its versions go to `rollout`'s registry, its
    /// candidates through `gate`. Runs left queued or running by a previous process
    /// are marked `interrupted`.
    pub fn start(
        config: LearnerConfig,
        lora: LoraConfig,
        model: Arc<LoadedModel>,
        feedback: Arc<Feedback>,
        metrics: Arc<Metrics>,
        gate: Arc<Gate>,
        rollout: Arc<Rollout>,
    ) -> Result<Arc<Self>, Error> {
        let registry = rollout.registry().clone();
        let store = registry.store().clone();
        let interrupted = store.interrupt_runs()?;
        if interrupted > 0 {
            tracing::warn!(
                runs = interrupted,
                "training runs were interrupted by a restart"
            );
        }
        let (tx, rx) = mpsc::channel();
        let learner = Arc::new(Self {
            config,
            lora,
            model,
            registry,
            store,
            feedback,
            metrics,
            gate,
            rollout,
            jobs: Mutex::new(tx),
            active: Mutex::new(None),
            references: OnceLock::new(),
            anchor_cache: Arc::default(),
            prepared: std::sync::atomic::AtomicBool::new(false),
        });
        let me = Arc::downgrade(&learner);
        std::thread::Builder::new()
            .name("tether-learner".into())
            .spawn(move || worker(me, rx))
            .map_err(|e| Error::Io(format!("cannot start the learner thread: {e}")))?;
        Ok(learner)
    }

    /// Queues a training run on waiting feedback; returns its id.
    pub fn request_training(&self, trigger: &str, overrides: Overrides) -> Result<String, Error> {
        let mut active = self.active.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(run) = active.as_ref() {
            return Err(Error::Busy(run.clone()));
        }
        if self.pending()?.is_empty() {
            return Err(Error::NothingToTrain);
        }
        let run = new_run_id();
        self.store
            .insert_run(&run, trigger, &json!({"phase": "queued", "kind": "train"}))?;
        self.send(Job::Train {
            run: run.clone(),
            overrides,
        })?;
        *active = Some(run.clone());
        Ok(run)
    }

    /// Queues a reproduction of `version`'s training run; returns the run id.
    pub fn request_reproduction(&self, version: &str) -> Result<String, Error> {
        let mut active = self.active.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(run) = active.as_ref() {
            return Err(Error::Busy(run.clone()));
        }
        let v = self
            .registry
            .get(version)
            .ok_or_else(|| Error::NotReproducible(format!("no version {version}")))?;
        if v.number == 1 {
            return Err(Error::NotReproducible(format!(
                "{version} is the base model; it was not trained here"
            )));
        }
        let run = new_run_id();
        self.store.insert_run(
            &run,
            "operator",
            &json!({"phase": "queued", "kind": "reproduce", "version": version}),
        )?;
        self.send(Job::Reproduce {
            run: run.clone(),
            version: version.to_string(),
        })?;
        *active = Some(run.clone());
        Ok(run)
    }

    fn send(&self, job: Job) -> Result<(), Error> {
        self.jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(job)
            .map_err(|_| Error::Stopped)
    }

    /// Accepted feedback no version has trained on, with the weight each carries now.
    fn pending(&self) -> Result<Vec<(FeedbackRow, f64)>, Error> {
        let items = self.store.untrained_feedback()?;
        let weights = self.feedback.window_weights(&items)?;
        Ok(items
            .into_iter()
            .filter(|f| f.prompt.is_some())
            .filter_map(|f| {
                let w = weights.get(&f.id).copied().unwrap_or(0.0);
                (w >= self.config.min_item_weight).then_some((f, w))
            })
            .collect())
    }

    fn finish_active(&self) {
        *self.active.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Anchors with the base's greedy answers, computed once.
    fn references(&self) -> Result<&References, Error> {
        if let Some(r) = self.references.get() {
            return Ok(r);
        }
        let read = |path: &str, builtin: &str| -> Result<String, Error> {
            if path.is_empty() {
                Ok(builtin.to_string())
            } else {
                std::fs::read_to_string(path)
                    .map_err(|e| Error::Io(format!("cannot read {path}: {e}")))
            }
        };
        let anchors_text = read(&self.config.anchors, ANCHORS)?;
        let stop = self.model.tokenizer.stop_ids().to_vec();
        let encode = |text: &str| -> Result<Vec<Vec<u32>>, Error> {
            let mut out = Vec::new();
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                let v: serde_json::Value = serde_json::from_str(line)
                    .map_err(|e| Error::Io(format!("bad prompt line {line:?}: {e}")))?;
                let p = v["prompt"].as_str().unwrap_or_default();
                out.push(self.model.encode_chat(&[ChatMessage::new("user", p)])?);
            }
            Ok(out)
        };
        let n = self.config.answer_tokens;
        let anchors = eval::base_answers(&self.model.llama, &encode(&anchors_text)?, n, &stop)?;
        let refs = References {
            anchors_hash: sha256_hex(anchors_text.as_bytes()),
            anchors,
        };
        let _ = self.references.set(refs);
        self.references
            .get()
            .ok_or_else(|| Error::Io("references unavailable".into()))
    }

    /// The corrections earlier versions in `version`'s lineage trained on as new
    /// feedback and that are still accepted, newest first, at most `replay`.
    fn replay_items(&self, version: &str) -> Result<Vec<(FeedbackRow, f64)>, Error> {
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        let mut cur = self.registry.get(version);
        while let Some(v) = cur {
            for c in self.store.consumed(&v.id)?.into_iter().rev() {
                if out.len() >= self.config.replay
                    || c.role != "new"
                    || !seen.insert(c.feedback_id.clone())
                {
                    continue;
                }
                if let Some(f) = self.store.feedback(&c.feedback_id)? {
                    if f.status == "accepted" && f.kind == "correction" {
                        out.push((f, c.weight * self.config.replay_weight));
                    }
                }
            }
            cur = v.parent.as_deref().and_then(|p| self.registry.get(p));
        }
        Ok(out)
    }

    /// Builds the training set from items in manifest order (deterministic, so a
    /// manifest can be re-run), with the ids of the items it could use.
    fn build_set(
        &self,
        items: &[(FeedbackRow, f64, &str)],
    ) -> Result<(TrainSet, HashMap<String, &'static str>), Error> {
        let mut skipped = HashMap::new();
        let mut set = TrainSet {
            anchors: self.references()?.anchors.clone(),
            anchor_cache: Some(self.anchor_cache.clone()),
            ..TrainSet::default()
        };
        for (f, w, _) in items {
            let mut skip = |reason: &'static str| {
                skipped.insert(f.id.clone(), reason);
            };
            let Some(prompt) = f.prompt.as_deref() else {
                skip(NO_CONVERSATION);
                continue;
            };
            let msgs: Vec<ChatMessage> = serde_json::from_str::<Vec<serde_json::Value>>(prompt)
                .unwrap_or_default()
                .iter()
                .map(|m| {
                    ChatMessage::new(
                        m["role"].as_str().unwrap_or("user"),
                        m["content"].as_str().unwrap_or_default(),
                    )
                })
                .collect();
            if msgs.is_empty() {
                skip(NO_CONVERSATION);
                continue;
            }
            let prompt = self.model.encode_chat(&msgs)?;
            // Answers are anonymized before they are stored; one that still carries a
            // placeholder would teach the model to say `<PERSON_1>`, so it is left out.
            let pair = |answer: &str| -> Result<Pair, Error> {
                Ok(Pair {
                    prompt: prompt.clone(),
                    answer: self.model.encode_answer(answer)?,
                })
            };
            let weight = *w as f32;
            match f.kind.as_str() {
                "correction" => match f.text.as_deref() {
                    None => skip(NO_TEXT),
                    Some(t) if anonymized(t) => skip(PLACEHOLDER),
                    Some(text) => set.corrections.push(Correction {
                        id: f.id.clone(),
                        pair: pair(text)?,
                        weight,
                    }),
                },
                "rating" => {
                    let (Some(answer), Some(value)) = (&f.answer, f.value) else {
                        skip(NO_TEXT);
                        continue;
                    };
                    if (value - 0.5).abs() < 1e-9 {
                        skip(NEUTRAL);
                        continue;
                    }
                    if anonymized(answer) {
                        skip(PLACEHOLDER);
                        continue;
                    }
                    set.ratings.push(Rated {
                        id: f.id.clone(),
                        pair: pair(answer)?,
                        desirable: value > 0.5,
                        weight,
                    });
                }
                "preference" => {
                    let answers: Vec<String> = f
                        .answer
                        .as_deref()
                        .and_then(|a| serde_json::from_str(a).ok())
                        .unwrap_or_default();
                    let (Some(c), Some(r)) = (f.chosen, f.rejected) else {
                        skip(NO_TEXT);
                        continue;
                    };
                    let (Some(chosen), Some(rejected)) =
                        (answers.get(c as usize), answers.get(r as usize))
                    else {
                        skip(NO_TEXT);
                        continue;
                    };
                    if chosen == rejected {
                        skip(NO_TEXT);
                        continue;
                    }
                    if anonymized(chosen) || anonymized(rejected) {
                        skip(PLACEHOLDER);
                        continue;
                    }
                    set.preferences.push(Preference {
                        id: f.id.clone(),
                        chosen: pair(chosen)?,
                        rejected: pair(rejected)?,
                        weight,
                    });
                }
                _ => skip(OTHER_KIND),
            }
        }
        Ok((set, skipped))
    }

    fn update(&self, run: &str, status: &str, version: Option<&str>, detail: &serde_json::Value) {
        if let Err(e) = self.store.update_run(run, status, version, detail) {
            tracing::error!(run, "cannot record training progress: {e}");
        }
    }

    /// Trains on waiting feedback and hands the candidate to the gate.
    fn run_training(&self, run: &str, overrides: Overrides) -> Result<(), Error> {
        let started = Instant::now();
        let mut detail = json!({"kind": "train", "phase": "preparing"});
        self.update(run, "running", None, &detail);
        let parent = self.registry.serving()?;
        let parent_adapter = self.registry.adapter(&parent);
        let pending = self.pending()?;
        let replay = self.replay_items(&parent.id)?;
        let mut items: Vec<(FeedbackRow, f64, &str)> =
            pending.into_iter().map(|(f, w)| (f, w, "new")).collect();
        let new_ids: HashSet<String> = items.iter().map(|(f, _, _)| f.id.clone()).collect();
        items.extend(
            replay
                .into_iter()
                .filter(|(f, _)| !new_ids.contains(&f.id))
                .map(|(f, w)| (f, w, "replay")),
        );
        let (set, skipped) = self.build_set(&items)?;
        let used = |id: &String| !skipped.contains_key(id);
        // Items that cannot be trained on (still carrying personal data after
        // anonymization, or without the answers they refer to) are recorded as
        // skipped, so they do not wait forever, each with its reason.
        for item in &mut items {
            if !used(&item.0.id) && item.2 == "new" {
                item.2 = "skipped";
            }
        }
        items.retain(|(f, _, role)| *role != "replay" || used(&f.id));
        detail["feedback"] = json!({
            "skipped": items.iter().filter(|i| i.2 == "skipped").count(),
            "skipped_items": items
                .iter()
                .filter(|i| i.2 == "skipped")
                .map(|(f, _, _)| json!({"id": f.id, "kind": f.kind, "reason": skipped.get(&f.id)}))
                .collect::<Vec<_>>(),
            "corrections": set.corrections.len(),
            "preferences": set.preferences.len(),
            "ratings": set.ratings.len(),
        });
        if set.is_empty() {
            self.update(run, "running", None, &detail);
            // Nothing usable: record the waiting items as skipped (with no version)
            // so the threshold trigger does not start the same empty run again.
            let skipped: Vec<String> = items
                .iter()
                .filter(|i| i.2 == "skipped")
                .map(|i| i.0.id.clone())
                .collect();
            self.store.mark_skipped(&skipped)?;
            return Err(Error::Untrainable(skipped.len()));
        }
        let lora = parent_adapter
            .as_ref()
            .map_or_else(|| self.lora.clone(), |a| a.config().clone());
        let mut hyper = self.config.hyper(&lora);
        if let Some(lr) = overrides.learning_rate {
            hyper.learning_rate = lr;
        }
        if let Some(n) = overrides.max_steps {
            hyper.max_steps = n;
            hyper.min_steps = hyper.min_steps.min(n);
        }
        let refs = self.references()?;
        let data_hash = data_hash(&set, &hyper);
        detail["phase"] = json!("training");
        detail["parent"] = json!(parent.id);
        detail["max_steps"] = json!(hyper.max_steps);
        self.update(run, "running", None, &detail);
        let mut curve = Vec::new();
        let outcome = train::train(
            &self.model.llama,
            parent_adapter.as_deref(),
            &set,
            &hyper,
            |s| {
                self.metrics.learner_steps.inc();
                self.metrics.learner_tokens.inc_by(s.tokens as u64);
                self.metrics.learner_loss.set(s.loss as f64);
                self.metrics.learner_kl.set(s.kl as f64);
                curve.push(s.loss);
                let mut d = detail.clone();
                d["step"] = json!(s.step);
                d["loss"] = json!(curve);
                self.update(run, "running", None, &d);
                true
            },
        )?;
        let train_secs = started.elapsed().as_secs_f64();

        // Write the version folder under a temporary name, then rename it into place.
        let number = self.registry.next_number();
        let id = format!("{}@v{number}", self.registry.name());
        let dir = self.registry.version_dir(&id);
        let tmp = dir.with_file_name(format!(".tmp-{}", new_run_id()));
        let io = |what: &str, e: std::io::Error| Error::Io(format!("{what}: {e}"));
        std::fs::create_dir_all(&tmp).map_err(|e| io("creating the version folder", e))?;
        let adapter_path = tmp.join(ADAPTER_FILE);
        outcome.adapter.save(&adapter_path)?;
        let adapter_bytes =
            std::fs::read(&adapter_path).map_err(|e| io("reading the adapter back", e))?;
        let adapter_hash = sha256_hex(&adapter_bytes);
        let consumed: Vec<Item> = items
            .iter()
            .map(|(f, w, role)| Item {
                id: f.id.clone(),
                kind: f.kind.clone(),
                weight: *w,
                role: role.to_string(),
            })
            .collect();
        let created = now_unix();
        let manifest = json!({
            "id": id,
            "name": self.registry.name(),
            "number": number,
            "parent": parent.id,
            "created": created,
            "content_hash": adapter_hash,
            "adapter": ADAPTER_FILE,
            "run": run,
            "feedback": consumed,
            "hyperparameters": hyper,
            "seed": hyper.seed,
            "data_hash": data_hash,
            "anchors_hash": refs.anchors_hash,
            "loss_curve": outcome.steps,
            "train_seconds": train_secs,
        });
        let text = serde_json::to_string_pretty(&manifest).unwrap_or_default();
        std::fs::write(tmp.join(MANIFEST_FILE), text).map_err(|e| io("writing the manifest", e))?;
        std::fs::rename(&tmp, &dir).map_err(|e| io("moving the version folder into place", e))?;
        let row = VersionRow {
            id: id.clone(),
            name: self.registry.name().to_string(),
            number,
            parent: Some(parent.id.clone()),
            status: "candidate".into(),
            created,
            content_hash: adapter_hash,
            adapter_path: Some(ADAPTER_FILE.into()),
        };
        let lineage: Vec<Consumed> = consumed
            .iter()
            .map(|c| Consumed {
                feedback_id: c.id.clone(),
                weight: c.weight,
                role: c.role.clone(),
            })
            .collect();
        for c in &consumed {
            self.metrics
                .learner_feedback
                .with_label_values(&[&c.kind, &c.role])
                .inc();
        }
        self.registry.add_trained(&row, outcome.adapter, &lineage)?;
        tracing::info!(version = %id, steps = outcome.steps.len(), seconds = train_secs, "trained a candidate version");

        // The evaluation gate.
        detail["phase"] = json!("evaluating");
        detail["version"] = json!(id);
        self.update(run, "running", Some(&id), &detail);
        let adapter = self
            .registry
            .get(&id)
            .and_then(|v| self.registry.adapter(&v))
            .ok_or_else(|| Error::Io(format!("{id} has no adapter in memory")))?;
        let retained: Vec<Retained<'_>> = set
            .corrections
            .iter()
            .map(|c| Retained {
                id: &c.id,
                pair: &c.pair,
            })
            .collect();
        let report = self.gate.evaluate(
            (&id, &adapter),
            (&parent.id, parent_adapter.as_deref()),
            &retained,
        )?;
        if let Some(kl) = report.checks.iter().find(|c| c.check == "probe_kl") {
            self.metrics.learner_probe_kl.set(kl.value);
        }
        let eval_json = report.to_json();
        detail["eval"] = eval_json.clone();
        detail["steps"] = json!(outcome.steps.len());
        detail["seconds"] = json!(started.elapsed().as_secs_f64());
        detail["phase"] = json!("done");
        if report.passed() {
            self.metrics
                .gate_evaluations
                .with_label_values(&["passed"])
                .inc();
            self.registry.mark(
                &id,
                Status::Candidate,
                Some(&eval_json),
                "gate",
                "gate_pass",
                &json!({"run": run, "parent": parent.id}),
            )?;
            let placement = self.rollout.place(&id, run)?;
            if placement == Placement::Serving {
                let now_ms = storage::now_ms();
                for (f, _, role) in &items {
                    if *role == "new" && used(&f.id) {
                        self.metrics
                            .feedback_to_serving
                            .observe((now_ms - f.created_ms).max(0) as f64 / 1000.0);
                    }
                }
            }
            let (status, outcome) = match placement {
                Placement::Serving => ("promoted", "promoted"),
                Placement::Canary => ("canary", "canary"),
            };
            detail["placement"] = json!(outcome);
            self.update(run, status, Some(&id), &detail);
            self.metrics
                .learner_runs
                .with_label_values(&[outcome])
                .inc();
            tracing::info!(version = %id, placement = outcome, "a trained version passed the gate");
        } else {
            self.metrics
                .gate_evaluations
                .with_label_values(&["rejected"])
                .inc();
            let failed: Vec<&str> = report.failed().iter().map(|c| c.check).collect();
            for c in &failed {
                self.metrics
                    .gate_check_failures
                    .with_label_values(&[c])
                    .inc();
            }
            self.registry.mark(
                &id,
                Status::Rejected,
                Some(&eval_json),
                "gate",
                "gate_reject",
                &json!({"run": run, "failed": eval_json["failed"]}),
            )?;
            self.update(run, "rejected", Some(&id), &detail);
            self.metrics
                .learner_runs
                .with_label_values(&["rejected"])
                .inc();
            tracing::warn!(version = %id, ?failed, "a trained version failed the evaluation gate");
        }
        Ok(())
    }

    /// Re-runs `version`'s manifest and compares the adapter bytes.
    fn run_reproduction(&self, run: &str, version: &str) -> Result<(), Error> {
        let mut detail = json!({"kind": "reproduce", "version": version, "phase": "training"});
        self.update(run, "running", None, &detail);
        let dir = self.registry.version_dir(version);
        let text = std::fs::read_to_string(dir.join(MANIFEST_FILE)).map_err(|e| {
            Error::NotReproducible(format!("cannot read the manifest of {version}: {e}"))
        })?;
        let manifest: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::NotReproducible(format!("bad manifest of {version}: {e}")))?;
        let hyper: Hyper = serde_json::from_value(manifest["hyperparameters"].clone())
            .map_err(|e| Error::NotReproducible(format!("bad hyperparameters: {e}")))?;
        let items: Vec<Item> = serde_json::from_value(manifest["feedback"].clone())
            .map_err(|e| Error::NotReproducible(format!("bad feedback list: {e}")))?;
        let refs = self.references()?;
        if manifest["anchors_hash"].as_str() != Some(refs.anchors_hash.as_str()) {
            return Err(Error::NotReproducible(
                "the anchor prompts changed since this version was trained".into(),
            ));
        }
        let mut rows = Vec::with_capacity(items.len());
        for it in &items {
            let f = self.store.feedback(&it.id)?.ok_or_else(|| {
                Error::NotReproducible(format!("feedback {} no longer exists", it.id))
            })?;
            rows.push((f, it.weight, it.role.as_str()));
        }
        let (set, _) = self.build_set(&rows)?;
        if manifest["data_hash"].as_str() != Some(data_hash(&set, &hyper).as_str()) {
            return Err(Error::NotReproducible(
                "the training data no longer hashes as recorded".into(),
            ));
        }
        let parent = manifest["parent"].as_str().unwrap_or_default();
        let parent_adapter = self
            .registry
            .get(parent)
            .and_then(|v| self.registry.adapter(&v));
        let outcome = train::train(
            &self.model.llama,
            parent_adapter.as_deref(),
            &set,
            &hyper,
            |_| true,
        )?;
        let tmp = tempfile::tempdir().map_err(|e| Error::Io(e.to_string()))?;
        let path = tmp.path().join(ADAPTER_FILE);
        outcome.adapter.save(&path)?;
        let bytes = std::fs::read(&path).map_err(|e| Error::Io(e.to_string()))?;
        let got = sha256_hex(&bytes);
        let expected = manifest["content_hash"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        detail["phase"] = json!("done");
        detail["identical"] = json!(got == expected);
        detail["expected_sha256"] = json!(expected);
        detail["reproduced_sha256"] = json!(got);
        self.update(run, "reproduced", Some(version), &detail);
        self.metrics
            .learner_runs
            .with_label_values(&["reproduced"])
            .inc();
        Ok(())
    }

    fn execute(&self, job: Job) {
        let (run, result) = match &job {
            Job::Train { run, overrides } => (run.clone(), self.run_training(run, *overrides)),
            Job::Reproduce { run, version } => (run.clone(), self.run_reproduction(run, version)),
        };
        if let Err(e) = result {
            tracing::error!(run = %run, "training run failed: {e}");
            let detail = match self.store.run(&run) {
                Ok(Some(r)) => {
                    let mut d = r.detail;
                    d["phase"] = json!("done");
                    d["error"] = json!(e.to_string());
                    d
                }
                _ => json!({"error": e.to_string()}),
            };
            self.update(&run, "failed", None, &detail);
            self.metrics
                .learner_runs
                .with_label_values(&["failed"])
                .inc();
        }
        self.finish_active();
    }

    /// Starts a run by itself when enough feedback waits or the schedule says so.
    fn maybe_start(&self, last_run: &mut Instant) {
        let pending = match self.pending() {
            Ok(p) => p,
            Err(e) => {
                tracing::error!("cannot read waiting feedback: {e}");
                return;
            }
        };
        if pending.is_empty() {
            return;
        }
        let weight: f64 = pending.iter().map(|(_, w)| w).sum();
        let trigger = if self.config.min_weight > 0.0 && weight >= self.config.min_weight {
            "threshold"
        } else if self.config.schedule_secs > 0
            && last_run.elapsed() >= Duration::from_secs(self.config.schedule_secs)
        {
            "schedule"
        } else {
            return;
        };
        *last_run = Instant::now();
        match self.request_training(trigger, Overrides::default()) {
            Ok(run) => tracing::info!(run = %run, trigger, weight, "starting a training run"),
            Err(Error::Busy(_) | Error::NothingToTrain) => {}
            Err(e) => tracing::error!("cannot start a training run: {e}"),
        }
    }
}

/// The learner thread. Its compute runs on a worker of rayon's global pool
/// (`rayon::scope` from outside the pool moves the closure there): a thread outside the
/// pool would hand each of a step's many parallel ops to the pool and sleep until it
/// is done; a worker works on them itself (steps about 18% faster here).
fn worker(me: std::sync::Weak<Learner>, rx: mpsc::Receiver<Job>) {
    let poll = me.upgrade().map_or(5, |l| l.config.poll_secs.max(1));
    // Prepare the anchors and the gate's suite before the first run needs them.
    if let Some(l) = me.upgrade() {
        rayon::scope(|_| prepare(&l));
    }
    let mut last_run = Instant::now();
    loop {
        match rx.recv_timeout(Duration::from_secs(poll)) {
            Ok(job) => match me.upgrade() {
                Some(l) => {
                    let _bulk = crate::memory::BulkWork::begin();
                    rayon::scope(|_| l.execute(job))
                }
                None => return,
            },
            Err(RecvTimeoutError::Timeout) => match me.upgrade() {
                Some(l) => l.maybe_start(&mut last_run),
                None => return,
            },
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// Prepares the anchors and the gate's suite (the base's answers, hidden states and
/// the serving version's red-team rate) before the first run needs them.
fn prepare(l: &Learner) {
    if let Err(e) = l.references() {
        tracing::error!("cannot prepare the learner's anchors: {e}");
    }
    let serving = l.registry.serving().ok();
    let adapter = serving.as_ref().and_then(|v| l.registry.adapter(v));
    let id = serving.as_ref().map_or("", |v| v.id.as_str());
    let layers = l.model.llama.config().num_layers;
    let first = adapter.as_ref().map_or_else(
        || {
            (0..layers)
                .find(|&i| l.lora.adapts_layer(i, layers))
                .unwrap_or(0)
        },
        |a| a.first_layer(),
    );
    if let Ok(refs) = l.references() {
        if let Err(e) = l.anchor_cache.get(&l.model.llama, &refs.anchors, first) {
            tracing::error!("cannot prepare the anchors' hidden states: {e}");
        }
    }
    if let Err(e) = l.gate.prepare((id, adapter.as_deref()), first) {
        tracing::error!("cannot prepare the evaluation gate's suite: {e}");
    }
    l.prepared.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// Whether `text` carries an anonymization placeholder (`<PERSON_1>`, `<EMAIL_ADDRESS>`).
/// Why `build_set` could not use an accepted item (the run's explanation).
const NO_CONVERSATION: &str = "the conversation it refers to is no longer stored";
const NO_TEXT: &str = "its text or answers are missing, or the two answers are the same";
const PLACEHOLDER: &str = "its text still holds a placeholder where the anonymizer removed \
     personal data (a name, place or date): trained on, the model would learn to say the \
     placeholder";
const NEUTRAL: &str = "a neutral rating teaches nothing";
const OTHER_KIND: &str = "a kind of feedback the learner does not train on";

fn anonymized(text: &str) -> bool {
    Entity::ALL
        .iter()
        .any(|e| text.contains(&format!("<{}_", e.name())) || text.contains(e.placeholder()))
}

fn new_run_id() -> String {
    format!("train-{}", Alphanumeric.sample_string(&mut rand::rng(), 16))
}

fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// A hash of everything a run trains on, in order, and its hyperparameters.
fn data_hash(set: &TrainSet, hyper: &Hyper) -> String {
    let mut h = Sha256::new();
    let mut ids = |tag: &str, v: &[u32]| {
        h.update(tag.as_bytes());
        h.update((v.len() as u64).to_le_bytes());
        for x in v {
            h.update(x.to_le_bytes());
        }
    };
    for c in &set.corrections {
        ids("c", &c.pair.prompt);
        ids("a", &c.pair.answer);
        ids("w", &[c.weight.to_bits()]);
    }
    for p in &set.preferences {
        ids("p", &p.chosen.prompt);
        ids("+", &p.chosen.answer);
        ids("-", &p.rejected.answer);
        ids("w", &[p.weight.to_bits()]);
    }
    for r in &set.ratings {
        ids("r", &r.pair.prompt);
        ids("a", &r.pair.answer);
        ids("d", &[u32::from(r.desirable), r.weight.to_bits()]);
    }
    for a in &set.anchors {
        ids("k", &a.prompt);
        ids("a", &a.answer);
    }
    h.update(serde_json::to_string(hyper).unwrap_or_default().as_bytes());
    format!("{:x}", h.finalize())
}
