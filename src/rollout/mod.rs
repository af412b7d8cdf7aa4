//! Versions under control: the evaluation gate a candidate must pass, the canary
//! that serves a share of traffic while its live signals are compared with the
//! serving version's, the drift monitor that rolls the serving version back by
//! itself, and the operator's promote, rollback and retire.
//!
//! Every change of status goes through the registry, which writes the change, the
//! serving log and the audit entry in one SQLite transaction; this module decides
//! *when*. The monitor runs on its own thread and never blocks the async runtime.

pub mod analysis;
pub mod config;
pub mod gate;
pub mod signals;

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use rand::Rng;
use serde_json::json;

pub use analysis::{compare, Analysis, Condition, Minimums};
pub use config::{CanaryConfig, DriftConfig, GateConfig, LiveConfig};
pub use gate::{Gate, Report, Retained};
pub use signals::{ShadowSample, Signals, Summary};

use crate::learner::eval;
use crate::learner::objective::Pair;
use crate::model::{ChatMessage, LoadedModel};
use crate::monitoring::Metrics;
use crate::registry::{self, Registry, Status, Version};
use crate::storage::now_ms;

/// Most answer tokens re-scored per shadow probe.
const SHADOW_TOKENS: usize = 96;

/// A canary under analysis.
#[derive(Debug, Clone, serde::Serialize)]
struct CanaryRun {
    version: String,
    since_ms: i64,
    analyses: usize,
    passes_in_row: usize,
    failures: usize,
    last: Option<Analysis>,
}

/// The serving version under watch.
#[derive(Debug, Clone, serde::Serialize)]
struct Watch {
    version: String,
    since_ms: i64,
    last: Option<Analysis>,
    /// Drift was seen but there was nothing to roll back to.
    stuck: bool,
}

#[derive(Default)]
struct State {
    canary: Option<CanaryRun>,
    watch: Option<Watch>,
    next_canary_ms: i64,
    next_drift_ms: i64,
}

/// What became of a candidate that passed the gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// It serves a share of traffic under analysis.
    Canary,
    /// It serves all unpinned traffic.
    Serving,
}

/// The rollout controller.
pub struct Rollout {
    registry: Arc<Registry>,
    model: Arc<LoadedModel>,
    canary: CanaryConfig,
    drift: DriftConfig,
    signals: Arc<Signals>,
    metrics: Arc<Metrics>,
    state: Mutex<State>,
    started_ms: i64,
}

impl Rollout {
    /// Starts the controller and its monitor thread.
    pub fn start(
        registry: Arc<Registry>,
        model: Arc<LoadedModel>,
        canary: CanaryConfig,
        drift: DriftConfig,
        live: LiveConfig,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        let r = Arc::new(Self {
            registry,
            model,
            canary,
            drift,
            signals: Arc::new(Signals::new(live)),
            metrics,
            state: Mutex::new(State::default()),
            started_ms: now_ms(),
        });
        r.gauge_serving();
        let weak = Arc::downgrade(&r);
        if let Err(e) = std::thread::Builder::new()
            .name("tether-rollout".into())
            .spawn(move || monitor(weak))
        {
            tracing::error!("cannot start the rollout monitor: {e}");
        }
        r
    }

    /// The live signals.
    pub fn signals(&self) -> &Signals {
        &self.signals
    }

    /// The registry.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Resolves what a request names. Unpinned requests (the deployment or model
    /// name) go to the canary with probability `canary.share`, else to the serving
    /// version; `NAME@vN` pins one.
    pub fn route(&self, requested: &str, deployment: &str) -> Option<Version> {
        let v = self.registry.resolve(requested, deployment)?;
        let unpinned = requested == deployment || requested == self.registry.name();
        if unpinned && self.canary.share > 0.0 {
            if let Some(c) = self.registry.canary() {
                if rand::rng().random::<f64>() < self.canary.share {
                    return Some(c);
                }
            }
        }
        Some(v)
    }

    /// Records the answers a version delivered (not answers the policy gave in the
    /// model's place): output flags, refusals, lengths, and shadow probes.
    pub fn answered(
        &self,
        version: &str,
        answers: &[String],
        flagged: &[bool],
        messages: &[ChatMessage],
    ) {
        for (i, a) in answers.iter().enumerate() {
            let f = flagged.get(i).copied().unwrap_or(false);
            self.signals.answer(version, a, f);
            // Shadow probes re-score trained versions' answers against the base;
            // the draw comes first so unsampled answers cost nothing more.
            if !a.is_empty()
                && self.signals.sample_shadow()
                && self.registry.get(version).is_some_and(|v| v.number > 1)
            {
                self.signals.push_shadow(ShadowSample {
                    version: version.to_string(),
                    messages: messages.to_vec(),
                    answer: a.clone(),
                });
            }
        }
    }

    /// Places a candidate that passed the gate: as the canary when canaries are on
    /// (a canary already running is retired, superseded), else as the serving
    /// version.
    pub fn place(&self, id: &str, run: &str) -> Result<Placement, registry::Error> {
        if self.canary.share <= 0.0 {
            self.switch(
                id,
                "promote",
                "learner",
                "passed the evaluation gate (canaries are off)",
                &json!({"run": run}),
            )?;
            return Ok(Placement::Serving);
        }
        if let Some(old) = self.registry.canary() {
            self.registry.mark(
                &old.id,
                Status::Retired,
                None,
                "learner",
                "canary_superseded",
                &json!({"by": id, "reason": "a newer candidate passed the gate"}),
            )?;
            self.metrics
                .canary_outcomes
                .with_label_values(&["superseded"])
                .inc();
        }
        self.registry.mark(
            id,
            Status::Canary,
            None,
            "learner",
            "canary_start",
            &json!({"run": run, "share": self.canary.share, "reason": "passed the evaluation gate"}),
        )?;
        self.state().canary = Some(CanaryRun::new(id));
        tracing::info!(version = id, share = self.canary.share, "canary started");
        Ok(Placement::Canary)
    }

    fn switch(
        &self,
        id: &str,
        action: &str,
        actor: &str,
        reason: &str,
        detail: &serde_json::Value,
    ) -> Result<Option<String>, registry::Error> {
        let was_canary = self
            .registry
            .get(id)
            .is_some_and(|v| v.status == Status::Canary);
        let previous = self.registry.switch(id, action, actor, reason, detail)?;
        self.metrics
            .version_switches
            .with_label_values(&[action, actor])
            .inc();
        if was_canary {
            self.metrics
                .canary_outcomes
                .with_label_values(&["promoted"])
                .inc();
        }
        {
            let mut st = self.state();
            if st.canary.as_ref().is_some_and(|c| c.version == id) {
                st.canary = None;
            }
            st.watch = None;
        }
        self.gauge_serving();
        tracing::info!(version = id, from = ?previous, action, actor, reason, "serving version changed");
        Ok(previous)
    }

    fn gauge_serving(&self) {
        let serving = self.registry.serving().ok().map(|v| v.id);
        for v in self.registry.list() {
            self.metrics
                .version_serving
                .with_label_values(&[&v.id])
                .set(i64::from(serving.as_deref() == Some(v.id.as_str())));
        }
    }

    /// Operator: makes `id` serve (a canary is promoted early; a retired version
    /// returns).
    pub fn promote(
        &self,
        id: &str,
        actor: &str,
        reason: &str,
    ) -> Result<Option<String>, registry::Error> {
        self.switch(id, "promote", actor, reason, &json!({}))
    }

    /// Rolls back to `to`, or to the last good version (the most recent earlier
    /// serving version that was never rolled back from). Returns (from, to).
    pub fn rollback(
        &self,
        to: Option<&str>,
        actor: &str,
        reason: &str,
        detail: &serde_json::Value,
    ) -> Result<(String, String), registry::Error> {
        let current = self.registry.serving()?;
        let target = match to {
            Some(id) => self
                .registry
                .get(id)
                .ok_or_else(|| registry::Error::Unknown(id.to_string()))?,
            None => self.registry.rollback_target()?.ok_or_else(|| {
                registry::Error::Conflict(format!(
                    "there is no earlier good version to roll back to from {}",
                    current.id
                ))
            })?,
        };
        self.switch(&target.id, "rollback", actor, reason, detail)?;
        Ok((current.id, target.id))
    }

    /// Operator: retires a candidate, canary or earlier version.
    pub fn retire(&self, id: &str, actor: &str, reason: &str) -> Result<(), registry::Error> {
        let was_canary = self
            .registry
            .get(id)
            .is_some_and(|v| v.status == Status::Canary);
        self.registry.retire(id, actor, reason)?;
        if was_canary {
            self.state().canary = None;
            self.metrics
                .canary_outcomes
                .with_label_values(&["retired"])
                .inc();
        }
        Ok(())
    }

    /// The canary and drift monitor as operators see them.
    pub fn status(&self) -> serde_json::Value {
        let st = self.state();
        json!({
            "canary": st.canary,
            "canary_config": self.canary,
            "drift": st.watch,
            "drift_config": self.drift,
        })
    }

    /// One pass of the monitor: shadow probes, canary analysis, drift check.
    fn tick(&self) {
        for _ in 0..2 {
            let Some(s) = self.signals.next_shadow() else {
                break;
            };
            if let Err(e) = self.shadow(&s) {
                tracing::warn!(version = %s.version, "shadow probe failed: {e}");
            }
        }
        let now = now_ms();
        let (canary_due, drift_due) = {
            let mut st = self.state();
            let c = now >= st.next_canary_ms;
            let d = self.drift.enabled && now >= st.next_drift_ms;
            if c {
                st.next_canary_ms = now + (self.canary.interval_secs.max(1) as i64) * 1000;
            }
            if d {
                st.next_drift_ms = now + (self.drift.interval_secs.max(1) as i64) * 1000;
            }
            (c, d)
        };
        if canary_due {
            if let Err(e) = self.analyse_canary(now) {
                tracing::error!("canary analysis failed: {e}");
            }
        }
        if drift_due {
            if let Err(e) = self.check_drift(now) {
                tracing::error!("drift check failed: {e}");
            }
        }
    }

    fn shadow(&self, s: &ShadowSample) -> Result<(), crate::model::Error> {
        let Some(adapter) = self
            .registry
            .get(&s.version)
            .and_then(|v| self.registry.adapter(&v))
        else {
            return Ok(());
        };
        let prompt = self.model.encode_chat(&s.messages)?;
        let mut answer = self.model.encode_answer(&s.answer)?;
        answer.truncate(SHADOW_TOKENS);
        let context = self.model.llama.config().context_length;
        if prompt.is_empty() || answer.is_empty() || prompt.len() + answer.len() > context {
            return Ok(());
        }
        let d = eval::drift(&self.model.llama, &adapter, &[Pair { prompt, answer }])?;
        self.signals.shadow_kl(&s.version, d.kl);
        Ok(())
    }

    fn analyse_canary(&self, now: i64) -> Result<(), registry::Error> {
        let Some(canary) = self.registry.canary() else {
            self.state().canary = None;
            return Ok(());
        };
        let serving = self.registry.serving()?;
        let mut run = {
            let mut st = self.state();
            match &st.canary {
                Some(r) if r.version == canary.id => r.clone(),
                _ => {
                    // A canary found in the registry (after a restart): its
                    // analysis starts over.
                    let r = CanaryRun::new(&canary.id);
                    st.canary = Some(r.clone());
                    r
                }
            }
        };
        let observed = self.signals.summary(&canary.id, run.since_ms, now);
        let reference = self.signals.summary(&serving.id, run.since_ms, now);
        let a = compare(
            &observed,
            &reference,
            &Condition::ALL,
            self.signals.config(),
            Minimums {
                answers: self.canary.min_answers,
                ratings: self.canary.min_ratings,
            },
        );
        run.analyses += 1;
        let result = match a.verdict() {
            Some(true) => {
                run.passes_in_row += 1;
                "pass"
            }
            Some(false) => {
                run.passes_in_row = 0;
                run.failures += 1;
                "fail"
            }
            None => "inconclusive",
        };
        self.metrics
            .canary_analyses
            .with_label_values(&[result])
            .inc();
        run.last = Some(a.clone());
        let summary = json!({
            "analyses": run.analyses,
            "failures": run.failures,
            "passes_in_row": run.passes_in_row,
            "canary": observed,
            "serving": {"version": serving.id, "signals": reference},
            "last": a,
        });
        let mut eval = canary.eval.clone().unwrap_or_else(|| json!({}));
        eval["canary"] = summary.clone();
        let timed_out =
            self.canary.max_secs > 0 && now - run.since_ms > (self.canary.max_secs as i64) * 1000;
        if run.failures >= self.canary.failure_limit.max(1) || timed_out {
            let reason = if timed_out && run.failures < self.canary.failure_limit.max(1) {
                format!(
                    "the canary was not promoted within {} seconds",
                    self.canary.max_secs
                )
            } else {
                format!(
                    "canary analysis failed {} times: {}",
                    run.failures,
                    a.reasons()
                )
            };
            return self.abort_canary(&canary.id, &eval, &reason, &summary);
        }
        if run.passes_in_row >= self.canary.successes.max(1) {
            let reason = format!(
                "{} consecutive canary analyses passed against {}",
                run.passes_in_row, serving.id
            );
            self.registry.set_eval(&canary.id, &eval)?;
            self.switch(
                &canary.id,
                "promote",
                "canary",
                &reason,
                &json!({"analysis": summary}),
            )?;
            return Ok(());
        }
        self.state().canary = Some(run);
        Ok(())
    }

    /// Rejects the canary with `reason`, keeping its analysis in its evaluation.
    fn abort_canary(
        &self,
        id: &str,
        eval: &serde_json::Value,
        reason: &str,
        summary: &serde_json::Value,
    ) -> Result<(), registry::Error> {
        self.registry.mark(
            id,
            Status::Rejected,
            Some(eval),
            "canary",
            "canary_abort",
            &json!({"reason": reason, "analysis": summary}),
        )?;
        self.state().canary = None;
        self.metrics
            .canary_outcomes
            .with_label_values(&["aborted"])
            .inc();
        tracing::warn!(version = id, reason, "canary aborted");
        Ok(())
    }

    fn check_drift(&self, now: i64) -> Result<(), registry::Error> {
        let serving = self.registry.serving()?;
        let mut watch = {
            let st = self.state();
            match &st.watch {
                Some(w) if w.version == serving.id => w.clone(),
                _ => {
                    let began = self
                        .registry
                        .serving_log()?
                        .iter()
                        .rev()
                        .find(|e| e.version == serving.id)
                        .map_or(now, |e| e.at_ms);
                    Watch {
                        version: serving.id.clone(),
                        since_ms: began.max(self.started_ms),
                        last: None,
                        stuck: false,
                    }
                }
            }
        };
        let window = (self.drift.window_secs as i64) * 1000;
        let recent_from = watch.since_ms.max(now - window);
        let baseline_from = watch
            .since_ms
            .max(recent_from - (self.drift.baseline_secs as i64) * 1000);
        let recent = self.signals.summary(&serving.id, recent_from, now);
        let baseline = self
            .signals
            .summary(&serving.id, baseline_from, recent_from);
        for (name, value) in [
            ("flag_rate", recent.flag_rate()),
            ("refusal_rate", recent.refusal_rate()),
            ("mean_rating", recent.mean_rating()),
            ("mean_chars", recent.mean_chars()),
            ("shadow_kl", recent.shadow_kl()),
        ] {
            self.metrics
                .live_signal
                .with_label_values(&[&serving.id, name])
                .set(value);
        }
        let a = compare(
            &recent,
            &baseline,
            &Condition::DRIFT,
            self.signals.config(),
            Minimums {
                answers: self.drift.min_answers,
                ratings: self.drift.min_ratings,
            },
        );
        // Shadow KL is judged against its bound, not the baseline, so it needs no
        // baseline; the other conditions do.
        let drifted = a.verdict() == Some(false);
        watch.last = Some(a.clone());
        if drifted && !watch.stuck {
            let reason = format!("drift: {}", a.reasons());
            match self.registry.rollback_target()? {
                Some(target) => {
                    let detail = json!({
                        "recent": recent,
                        "baseline": baseline,
                        "window_secs": self.drift.window_secs,
                        "analysis": a,
                    });
                    self.switch(&target.id, "rollback", "drift-monitor", &reason, &detail)?;
                    for m in a.failed() {
                        self.metrics
                            .drift_rollbacks
                            .with_label_values(&[m.condition.name()])
                            .inc();
                    }
                    tracing::warn!(from = %serving.id, to = %target.id, %reason, "rolled back automatically");
                    return Ok(());
                }
                None => {
                    tracing::warn!(version = %serving.id, %reason, "drift detected, but there is no earlier good version to roll back to");
                    watch.stuck = true;
                }
            }
        }
        self.state().watch = Some(watch);
        Ok(())
    }
}

impl CanaryRun {
    fn new(version: &str) -> Self {
        Self {
            version: version.to_string(),
            since_ms: now_ms(),
            analyses: 0,
            passes_in_row: 0,
            failures: 0,
            last: None,
        }
    }
}

fn monitor(me: Weak<Rollout>) {
    loop {
        std::thread::sleep(Duration::from_millis(250));
        match me.upgrade() {
            Some(r) => r.tick(),
            None => return,
        }
    }
}
