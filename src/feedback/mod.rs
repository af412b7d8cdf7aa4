//! Feedback intake: corrections, ratings and preferences on completions, screened
//! before anything can train (anonymized, safety-checked, deduplicated, checked
//! against the completion, rate-limited), weighted by learned source reliability,
//! with coordinated campaigns quarantined.
//!
//! - [`reliability`]: Dawid–Skene-style EM over every judgement sources made.
//! - [`campaign`]: groups of sources sending near-identical corrections.
//!
//! An item's weight is `reliability(source) × diversity × screening` while it is
//! accepted, and 0 otherwise; it is computed when read, so it follows the source's
//! reliability as evidence accumulates.

pub mod campaign;
pub mod reliability;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use rand::distr::{Alphanumeric, SampleString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::FeedbackConfig;
use crate::model::ChatMessage;
use crate::privacy::conversations::Privacy;
use crate::privacy::Pseudonyms;
use crate::safety::{Direction, Safety};
use crate::storage::{FeedbackRow, NewReview, SourceRow, Store};

/// Why feedback was refused outright (no item is stored).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The completion id is unknown.
    #[error("no completion {0}; send the `id` of a chat completion this server returned")]
    UnknownCompletion(String),
    /// A field is wrong.
    #[error("{message}")]
    Invalid {
        /// The field.
        param: &'static str,
        /// What is wrong.
        message: String,
    },
    /// A text is longer than allowed.
    #[error("{0} is longer than {1} characters")]
    TooLarge(&'static str, usize),
    /// The source sent too much feedback too quickly.
    #[error("too much feedback from this source; at most {0} items per minute")]
    RateLimited(u32),
    /// Storage failed.
    #[error(transparent)]
    Storage(#[from] crate::storage::Error),
}

/// What was said about the completion.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    /// The answer it should have given.
    Correction {
        /// Which choice.
        choice: usize,
        /// The corrected answer.
        text: String,
    },
    /// Good or bad, normalised to 0..1.
    Rating {
        /// Which choice.
        choice: usize,
        /// 0 (down, 1 star) to 1 (up, 5 stars).
        value: f64,
    },
    /// Which choices are better, best first.
    Preference {
        /// At least two distinct choice indices.
        ranking: Vec<usize>,
    },
}

impl Kind {
    fn name(&self) -> &'static str {
        match self {
            Kind::Correction { .. } => "correction",
            Kind::Rating { .. } => "rating",
            Kind::Preference { .. } => "preference",
        }
    }
}

/// A validated submission.
#[derive(Debug, Clone)]
pub struct Submission {
    /// The completion.
    pub completion_id: String,
    /// What was said.
    pub kind: Kind,
    /// Free-text reason.
    pub reason: Option<String>,
    /// The key's source.
    pub source: String,
    /// End user, if any (hashed before storage).
    pub user: Option<String>,
}

/// The prompt and answers of a recent completion, kept in memory so feedback can be
/// checked against (and trained on) what was actually said.
#[derive(Debug, Clone)]
pub struct Context {
    /// Messages as the model saw them.
    pub messages: Vec<ChatMessage>,
    /// The delivered answers.
    pub answers: Vec<String>,
}

/// The feedback service.
pub struct Feedback {
    config: FeedbackConfig,
    store: Arc<Store>,
    privacy: Arc<Privacy>,
    safety: Option<Arc<Safety>>,
    /// Recent completions (memory only, never written as is).
    pub contexts: moka::sync::Cache<String, Arc<Context>>,
    /// Per-source timestamps of recent submissions (rate limit).
    recent: Mutex<HashMap<String, Vec<std::time::Instant>>>,
    /// Serialises intake so campaign detection sees every earlier item.
    intake: Mutex<()>,
}

fn simhash(text: &str) -> u64 {
    let norm: String = crate::safety::normalize::normalize(text).text;
    crate::privacy::offline::simhash(&norm)
}

fn content_words(text: &str) -> HashSet<String> {
    const STOP: &[&str] = &[
        "the", "a", "an", "is", "are", "was", "of", "to", "in", "and", "or", "it", "that", "this",
        "for", "on", "with", "as", "be", "at", "by", "i", "you", "what", "which", "its",
    ];
    crate::safety::normalize::normalize(text)
        .text
        .split(' ')
        .filter(|w| w.len() > 1 && !STOP.contains(w))
        .map(str::to_string)
        .collect()
}

fn hash_key(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    h.finalize()
        .iter()
        .take(10)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The outcome of screening.
struct Screen {
    status: &'static str,
    reason: Option<String>,
    screening: f64,
}

impl Feedback {
    /// The service over `store`.
    pub fn new(
        config: FeedbackConfig,
        store: Arc<Store>,
        privacy: Arc<Privacy>,
        safety: Option<Arc<Safety>>,
    ) -> Self {
        Self {
            contexts: moka::sync::Cache::builder()
                .max_capacity(config.context_entries)
                .time_to_live(std::time::Duration::from_secs(config.context_secs))
                .build(),
            config,
            store,
            privacy,
            safety,
            recent: Mutex::new(HashMap::new()),
            intake: Mutex::new(()),
        }
    }

    fn rate_limit(&self, source: &str) -> Result<(), Error> {
        let limit = self.config.per_minute;
        if limit == 0 {
            return Ok(());
        }
        let now = std::time::Instant::now();
        let mut map = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        let v = map.entry(source.to_string()).or_default();
        v.retain(|t| now.duration_since(*t).as_secs() < 60);
        if v.len() >= limit as usize {
            return Err(Error::RateLimited(limit));
        }
        v.push(now);
        Ok(())
    }

    /// Screens, stores (durably) and returns the new item. Refusals that store
    /// nothing are errors; everything else is an item with a status.
    pub fn submit(&self, sub: Submission) -> Result<FeedbackRow, Error> {
        let (version, choices, _) = self
            .store
            .completion_info(&sub.completion_id)?
            .ok_or_else(|| Error::UnknownCompletion(sub.completion_id.clone()))?;
        let n = usize::try_from(choices).unwrap_or(1);
        let check_choice = |c: usize, param: &'static str| {
            if c >= n {
                Err(Error::Invalid {
                    param,
                    message: format!(
                        "{param} {c} is out of range: the completion has {n} choice(s)"
                    ),
                })
            } else {
                Ok(())
            }
        };
        match &sub.kind {
            Kind::Correction { choice, text } => {
                check_choice(*choice, "choice")?;
                if text.trim().is_empty() {
                    return Err(Error::Invalid {
                        param: "correction",
                        message: "correction must not be empty".into(),
                    });
                }
                if text.chars().count() > self.config.max_text_chars {
                    return Err(Error::TooLarge("correction", self.config.max_text_chars));
                }
            }
            Kind::Rating { choice, .. } => check_choice(*choice, "choice")?,
            Kind::Preference { ranking } => {
                if n < 2 {
                    return Err(Error::Invalid {
                        param: "preference",
                        message:
                            "a preference needs a completion with at least two choices (n >= 2)"
                                .into(),
                    });
                }
                for &c in ranking {
                    check_choice(c, "preference")?;
                }
            }
        }
        if sub
            .reason
            .as_ref()
            .is_some_and(|r| r.chars().count() > self.config.max_text_chars)
        {
            return Err(Error::TooLarge("reason", self.config.max_text_chars));
        }
        let user_hash = sub.user.as_deref().map(|u| self.privacy.user_hash(u));
        let source = match &user_hash {
            Some(h) => format!("{}/{}", sub.source, &h[..12.min(h.len())]),
            None => sub.source.clone(),
        };
        self.rate_limit(&source)?;

        let _guard = self.intake.lock().unwrap_or_else(|e| e.into_inner());
        // Anonymize everything that will be stored, with one numbering.
        let ctx = self.contexts.get(&sub.completion_id);
        let mut names = Pseudonyms::default();
        let anon = &self.privacy.anonymizer;
        let op = &self.privacy.config.operator;
        let prompt = ctx.as_ref().map(|c| {
            let msgs: Vec<serde_json::Value> = c
                .messages
                .iter()
                .map(|m| serde_json::json!({"role": m.role, "content": anon.anonymize(&m.content, op, &mut names)}))
                .collect();
            serde_json::Value::from(msgs).to_string()
        });
        let choice = match &sub.kind {
            Kind::Correction { choice, .. } | Kind::Rating { choice, .. } => Some(*choice),
            Kind::Preference { .. } => None,
        };
        // A correction or rating is about one answer; a preference keeps every
        // choice (a JSON array indexed by `chosen`/`rejected`) so it can be trained on.
        let answer = match &sub.kind {
            Kind::Preference { .. } => ctx.as_ref().map(|c| {
                let all: Vec<String> = c
                    .answers
                    .iter()
                    .map(|a| anon.anonymize(a, op, &mut names))
                    .collect();
                serde_json::to_string(&all).unwrap_or_default()
            }),
            _ => ctx
                .as_ref()
                .and_then(|c| choice.and_then(|i| c.answers.get(i)))
                .map(|a| anon.anonymize(a, op, &mut names)),
        };
        let text = match &sub.kind {
            Kind::Correction { text, .. } => Some(anon.anonymize(text, op, &mut names)),
            _ => None,
        };
        let reason = sub
            .reason
            .as_ref()
            .map(|r| anon.anonymize(r, op, &mut names));
        let last_user = ctx
            .as_ref()
            .and_then(|c| c.messages.iter().rev().find(|m| m.role == "user"))
            .map(|m| m.content.clone());
        let item_key = match (&last_user, &sub.kind) {
            (Some(p), Kind::Preference { .. }) => hash_key(&[p]),
            (Some(p), _) => hash_key(&[
                p,
                ctx.as_ref()
                    .and_then(|c| choice.and_then(|i| c.answers.get(i)))
                    .map_or("", String::as_str),
            ]),
            (None, _) => hash_key(&[&sub.completion_id, &choice.unwrap_or(0).to_string()]),
        };
        let (value, chosen, rejected, ranking) = match &sub.kind {
            Kind::Rating { value, .. } => (Some(*value), None, None, None),
            Kind::Preference { ranking } => (
                None,
                ranking.first().map(|&c| c as i64),
                ranking.last().map(|&c| c as i64),
                Some(serde_json::to_string(ranking).unwrap_or_default()),
            ),
            Kind::Correction { .. } => (None, None, None, None),
        };
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let repeats = self.store.feedback_repeats(&source, &item_key)?;
        let mut row = FeedbackRow {
            id: format!("fb-{}", Alphanumeric.sample_string(&mut rand::rng(), 20)),
            created_ms: now_ms,
            completion_id: sub.completion_id.clone(),
            version,
            source: source.clone(),
            user_hash,
            kind: sub.kind.name().into(),
            choice: choice.map(|c| c as i64),
            value,
            chosen,
            rejected,
            ranking,
            text,
            reason,
            prompt,
            answer,
            item_key,
            simhash: match &sub.kind {
                Kind::Correction { text, .. } => Some(simhash(text) as i64),
                _ => None,
            },
            status: "accepted".into(),
            status_reason: None,
            diversity: 1.0 / (1.0 + repeats as f64).sqrt(),
            screening: 1.0,
            review_id: None,
            decision: None,
        };
        let screen = self.screen(&sub, &row, last_user.as_deref(), ctx.as_deref())?;
        row.status = screen.status.into();
        row.status_reason = screen.reason.clone();
        row.screening = screen.screening;
        self.store.insert_feedback(&row, reliability::initial())?;

        // Coordinated campaigns: this item and the group it joins are quarantined.
        if row.kind == "correction" && row.status != "rejected" {
            if let Some(c) = self.campaign(&row)? {
                for id in &c.ids {
                    let review = self.quarantine_review(id, &c.reason)?;
                    self.store
                        .set_feedback_status(id, "quarantined", Some(&c.reason), review)?;
                }
                self.store.audit_event(
                    "system",
                    "campaign_quarantine",
                    None,
                    &serde_json::json!({
                        "items": c.ids.len(), "sources": c.sources, "reason": c.reason
                    }),
                )?;
                tracing::warn!(
                    items = c.ids.len(),
                    sources = c.sources,
                    "quarantined a feedback campaign"
                );
                row.status = "quarantined".into();
                row.status_reason = Some(c.reason);
            }
        }
        if row.status == "quarantined" && row.review_id.is_none() {
            let reason = row.status_reason.clone().unwrap_or_default();
            let review = self.quarantine_review(&row.id, &reason)?;
            self.store
                .set_feedback_status(&row.id, "quarantined", Some(&reason), review)?;
            row.review_id = review;
        }
        drop(_guard);
        self.recompute()?;
        Ok(self.store.feedback(&row.id)?.unwrap_or(row))
    }

    fn quarantine_review(&self, id: &str, reason: &str) -> Result<Option<i64>, Error> {
        let Some(f) = self.store.feedback(id)? else {
            return Ok(None);
        };
        if f.review_id.is_some() {
            return Ok(f.review_id);
        }
        let text = f.text.clone().or(f.reason.clone()).unwrap_or_default();
        let id = self.store.insert_review(&NewReview {
            completion_id: Some(&f.completion_id),
            direction: "feedback",
            categories: &[format!(
                "feedback:{}",
                reason.split(':').next().unwrap_or("quarantined")
            )],
            scores: &serde_json::json!({"feedback_id": f.id, "reason": reason}),
            text: &text,
            held: true,
            user_hash: f.user_hash.as_deref(),
        })?;
        Ok(Some(id))
    }

    fn screen(
        &self,
        sub: &Submission,
        row: &FeedbackRow,
        prompt: Option<&str>,
        ctx: Option<&Context>,
    ) -> Result<Screen, Error> {
        let src = self.store.source(&row.source)?;
        if src.as_ref().is_some_and(|s| s.banned) {
            return Ok(Screen {
                status: "rejected",
                reason: Some("the source is banned".into()),
                screening: 0.0,
            });
        }
        if self
            .store
            .feedback_exists(&row.source, &row.completion_id, &row.kind, row.choice)?
        {
            return Ok(Screen {
                status: "rejected",
                reason: Some(format!(
                    "duplicate: this source already sent a {} on this completion",
                    row.kind
                )),
                screening: 0.0,
            });
        }
        let mut screening = 1.0;
        let texts: Vec<&str> = match &sub.kind {
            Kind::Correction { text, .. } => vec![text.as_str()],
            _ => Vec::new(),
        }
        .into_iter()
        .chain(sub.reason.as_deref())
        .collect();
        if let Some(safety) = &self.safety {
            let cascade = safety.current();
            for t in &texts {
                let v = safety.check_with(&cascade, t, Direction::Output, false);
                if v.decision.withhold {
                    let cats: Vec<&str> = v.decision.categories.iter().map(|c| c.name()).collect();
                    return Ok(Screen {
                        status: "rejected",
                        reason: Some(format!("unsafe: {}", cats.join(", "))),
                        screening: 0.0,
                    });
                }
                // Borderline: within half the distance to a blocking threshold.
                let borderline: Vec<&str> = crate::safety::Category::ALL
                    .iter()
                    .filter(|c| {
                        cascade
                            .policy
                            .rule(**c, Direction::Output)
                            .is_some_and(|r| {
                                r.action != crate::safety::ActionKind::Allow
                                    && v.assessment.scores[c.index()] >= r.threshold * 0.5
                            })
                    })
                    .map(|c| c.name())
                    .collect();
                if !borderline.is_empty() {
                    screening = 0.5;
                    return Ok(Screen {
                        status: "quarantined",
                        reason: Some(format!("borderline: {}", borderline.join(", "))),
                        screening,
                    });
                }
            }
        }
        // Off-topic corrections share no content word with what they correct.
        if let (Kind::Correction { text, .. }, Some(p)) = (&sub.kind, prompt) {
            let words = content_words(text);
            let mut about = content_words(p);
            if let Some(c) = ctx {
                for a in &c.answers {
                    about.extend(content_words(a));
                }
            }
            if words.len() >= 3 && words.is_disjoint(&about) {
                return Ok(Screen {
                    status: "quarantined",
                    reason: Some(
                        "off_topic: the correction shares no words with the prompt or answer"
                            .into(),
                    ),
                    screening,
                });
            }
        }
        Ok(Screen {
            status: "accepted",
            reason: None,
            screening,
        })
    }

    fn campaign(&self, row: &FeedbackRow) -> Result<Option<campaign::Campaign>, Error> {
        let window_ms = (self.config.campaign_window_secs * 1000) as i64;
        let recent: Vec<campaign::Recent> = self
            .store
            .feedback_list(None, row.created_ms - window_ms, 100_000)?
            .into_iter()
            .filter(|f| f.kind == "correction" && f.status != "rejected" && f.source != row.source)
            .filter_map(|f| {
                Some(campaign::Recent {
                    words: content_words(f.text.as_deref()?),
                    id: f.id,
                    source: f.source,
                    created_ms: f.created_ms,
                    simhash: f.simhash? as u64,
                    item_key: f.item_key,
                })
            })
            .collect();
        let sources: HashMap<String, SourceRow> = self.store.sources_by_id()?;
        let now = crate::storage::now_unix();
        let young_secs = self.config.young_secs as i64;
        let new = campaign::Recent {
            words: content_words(row.text.as_deref().unwrap_or_default()),
            id: row.id.clone(),
            source: row.source.clone(),
            created_ms: row.created_ms,
            simhash: row.simhash.unwrap_or(0) as u64,
            item_key: row.item_key.clone(),
        };
        let rules = campaign::Rules {
            max_bits: self.config.campaign_max_bits,
            min_jaccard: 0.6,
            min_sources: self.config.campaign_min_sources,
            young_share: 0.6,
            burst_ms: 120_000,
        };
        Ok(campaign::detect(
            &new,
            &recent,
            rules,
            |s| {
                sources
                    .get(s)
                    .is_none_or(|x| now - x.first_seen < young_secs && x.items <= 20)
            },
            |s| {
                sources
                    .get(s)
                    .is_some_and(|x| x.trusted || x.reliability >= 0.6)
            },
        ))
    }

    /// Re-estimates every source's reliability from all judgements.
    pub fn recompute(&self) -> Result<(), Error> {
        let items = self.store.feedback_list(None, 0, 1_000_000)?;
        let sources = self.store.sources()?;
        let trusted: HashSet<String> = sources
            .iter()
            .filter(|s| s.trusted)
            .map(|s| s.id.clone())
            .collect();
        let banned: HashSet<String> = sources
            .iter()
            .filter(|s| s.banned)
            .map(|s| s.id.clone())
            .collect();
        let now_ms = items.iter().map(|f| f.created_ms).max().unwrap_or(0);
        let half_life_ms = self.config.forgetting_days * 86_400_000.0;
        let mut js = Vec::new();
        let mut fixed = HashMap::new();
        for f in &items {
            let weight = 0.5f64.powf((now_ms - f.created_ms).max(0) as f64 / half_life_ms.max(1.0));
            // Outcomes of screening and review are judgements with a known truth.
            let verdict = match (
                f.decision.as_deref(),
                f.status.as_str(),
                f.status_reason.as_deref(),
            ) {
                (Some("approve"), _, _) => Some(1.0),
                (Some("reject"), _, _) => Some(0.0),
                (None, "quarantined" | "rejected", Some(r)) if !r.starts_with("duplicate") => {
                    Some(0.0)
                }
                _ => None,
            };
            if let Some(t) = verdict {
                let item = format!("verdict:{}", f.id);
                fixed.insert(item.clone(), t);
                js.push(reliability::Judgement {
                    source: f.source.clone(),
                    item,
                    label: 1.0,
                    weight,
                });
                continue;
            }
            if f.status != "accepted" {
                continue;
            }
            match f.kind.as_str() {
                "rating" => {
                    if let Some(v) = f.value.filter(|v| (*v - 0.5).abs() > 1e-9) {
                        js.push(reliability::Judgement {
                            source: f.source.clone(),
                            item: format!("rating:{}", f.item_key),
                            label: if v > 0.5 { 1.0 } else { 0.0 },
                            weight,
                        });
                    }
                }
                "preference" => {
                    if let (Some(a), Some(b)) = (f.chosen, f.rejected) {
                        let (lo, hi) = (a.min(b), a.max(b));
                        js.push(reliability::Judgement {
                            source: f.source.clone(),
                            item: format!("pref:{}:{lo}:{hi}", f.item_key),
                            label: if a == lo { 1.0 } else { 0.0 },
                            weight,
                        });
                    }
                }
                _ => {}
            }
        }
        let r = reliability::estimate(&js, &fixed, &trusted, &banned);
        let values: Vec<(String, f64)> = sources
            .iter()
            .map(|s| {
                let v = if s.banned {
                    0.0
                } else if s.trusted {
                    1.0
                } else {
                    r.get(&s.id).copied().unwrap_or(reliability::initial())
                };
                (s.id.clone(), v)
            })
            .collect();
        self.store.set_reliabilities(&values)?;
        Ok(())
    }

    /// The weight an item carries now.
    pub fn weight(&self, f: &FeedbackRow, source: Option<&SourceRow>) -> f64 {
        if f.status != "accepted" {
            return 0.0;
        }
        let r = source.map_or(reliability::initial(), |s| {
            if s.banned {
                0.0
            } else if s.trusted {
                1.0
            } else {
                s.reliability
            }
        });
        r * f.diversity * f.screening
    }

    /// Weights of accepted items in one update window, with any one source's share
    /// capped at `share_cap` of the total (the excess is scaled away).
    pub fn window_weights(&self, items: &[FeedbackRow]) -> Result<HashMap<String, f64>, Error> {
        let sources: HashMap<String, SourceRow> = self.store.sources_by_id()?;
        let mut w: HashMap<String, f64> = items
            .iter()
            .map(|f| (f.id.clone(), self.weight(f, sources.get(&f.source))))
            .collect();
        let total: f64 = w.values().sum();
        let cap = self.config.share_cap * total;
        let mut per_source: HashMap<&str, f64> = HashMap::new();
        for f in items {
            *per_source.entry(f.source.as_str()).or_insert(0.0) += w[&f.id];
        }
        for f in items {
            let s = per_source[f.source.as_str()];
            if s > cap && s > 0.0 {
                if let Some(x) = w.get_mut(&f.id) {
                    *x *= cap / s;
                }
            }
        }
        Ok(w)
    }

    /// A reviewer's decision on an item: `approve` accepts it (and credits its
    /// source), `reject` rejects it (and counts against the source).
    pub fn decide(&self, id: &str, approve: bool) -> Result<Option<FeedbackRow>, Error> {
        let Some(f) = self.store.feedback(id)? else {
            return Ok(None);
        };
        let decision = if approve { "approve" } else { "reject" };
        self.store.decide_feedback(id, decision)?;
        let status = if approve { "accepted" } else { "rejected" };
        let reason = if approve {
            None
        } else {
            Some("rejected by a reviewer")
        };
        self.store.set_feedback_status(id, status, reason, None)?;
        if let Some(r) = f.review_id {
            let _ = self
                .store
                .decide_review(r, decision, Some("decided through /admin/feedback"));
        }
        self.recompute()?;
        Ok(self.store.feedback(id)?)
    }
}

/// The wire form of a rating value: `"up"`/`"down"`, `true`/`false`, or 1–5 stars.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum RatingValue {
    /// `up` or `down`.
    Thumb(String),
    /// `true` is up.
    Bool(bool),
    /// 1 to 5.
    Stars(i64),
}

impl RatingValue {
    /// Normalised to 0..1, or why not.
    pub fn normalised(&self) -> Result<f64, String> {
        match self {
            RatingValue::Thumb(t) if t == "up" => Ok(1.0),
            RatingValue::Thumb(t) if t == "down" => Ok(0.0),
            RatingValue::Thumb(_) => {
                Err("rating is \"up\", \"down\", true, false or 1 to 5".into())
            }
            RatingValue::Bool(b) => Ok(if *b { 1.0 } else { 0.0 }),
            RatingValue::Stars(s) if (1..=5).contains(s) => Ok((*s - 1) as f64 / 4.0),
            RatingValue::Stars(_) => Err("a star rating is 1 to 5".into()),
        }
    }
}
