//! The safety layer as chat sees it: checking a request's messages before the
//! model runs, checking answers (whole, or incrementally while they stream), and
//! queueing escalations for human review.

use std::sync::Arc;

use super::state::SharedState;
use super::wire::{SafetyReport, TokenLogprobWire};
use crate::model::{ChatMessage, Tap};
use crate::safety::{policy, ActionKind, Cascade, Category, Decision, Direction, Safety};
use crate::storage::NewReview;

/// The safety layer and the policy state one request uses from start to end.
#[derive(Clone)]
pub struct Guard {
    safety: Arc<Safety>,
    cascade: Arc<Cascade>,
}

/// What checking the prompt decided.
pub struct InputCheck {
    /// The answer to give instead of running the model.
    pub withhold: Option<String>,
    /// Whether some message was redacted (the prompt must be rebuilt).
    pub redacted: bool,
    /// What to report to the client.
    pub report: Option<SafetyReport>,
    /// An escalation to queue once the completion id exists.
    pub escalation: Option<Escalation>,
}

/// An item to put in the review queue.
pub struct Escalation {
    direction: Direction,
    categories: Vec<Category>,
    scores: serde_json::Value,
    text: String,
    held: bool,
}

fn report(d: Direction, decision: &Decision) -> Option<SafetyReport> {
    (decision.action != ActionKind::Allow).then(|| SafetyReport {
        direction: d.name(),
        action: decision.action.name(),
        categories: decision
            .categories
            .iter()
            .map(|c| c.name().to_string())
            .collect(),
        review_id: None,
    })
}

fn scores_json(categories: &[Category], scores: &[f32]) -> serde_json::Value {
    categories
        .iter()
        .map(|c| (c.name().to_string(), serde_json::json!(scores[c.index()])))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

impl Guard {
    /// The guard for one request, if safety is on.
    pub fn new(st: &SharedState) -> Option<Self> {
        st.safety.as_ref().map(|s| Self {
            cascade: s.current(),
            safety: s.clone(),
        })
    }

    /// The policy's generation (part of response-cache keys).
    pub fn generation(&self) -> u64 {
        self.cascade.generation
    }

    /// Streaming settings.
    pub fn stream(&self) -> policy::StreamSettings {
        self.cascade.policy.stream
    }

    /// The layer whose hidden states the engine should tap for the answer probe, if
    /// the cascade has one made for a model of this shape.
    pub fn tap_layer(&self, layers: usize, hidden: usize) -> Option<usize> {
        self.cascade
            .probe()
            .filter(|p| p.fits(layers, hidden))
            .map(|p| p.layer)
    }

    /// How many answer tokens the probe needs before it judges, when the engine taps
    /// states for it (see [`Guard::tap_layer`]).
    pub fn probe_min_rows(&self, layers: usize, hidden: usize) -> Option<usize> {
        self.tap_layer(layers, hidden)?;
        self.cascade.probe().map(|p| p.min_rows.max(1))
    }

    /// Checks every message; redacts in place where the policy says so.
    pub fn check_input(&self, msgs: &mut [ChatMessage]) -> InputCheck {
        let mut strongest = Decision::allow();
        let mut escalated_text = Vec::new();
        let mut scores = [0f32; crate::safety::N_CATEGORIES];
        let mut redacted = false;
        for m in msgs.iter_mut() {
            let v = self
                .safety
                .check_with(&self.cascade, &m.content, Direction::Input, true);
            let d = v.decision;
            for (s, x) in scores.iter_mut().zip(v.assessment.scores) {
                *s = s.max(x);
            }
            if d.escalate {
                escalated_text.push(m.content.clone());
            }
            if !d.redact.is_empty() && !d.withhold {
                m.content = policy::redact(&m.content, &d.redact);
                redacted = true;
            }
            let stronger = (d.withhold, d.action) > (strongest.withhold, strongest.action);
            for c in &d.categories {
                if !strongest.categories.contains(c) {
                    strongest.categories.push(*c);
                }
            }
            strongest.escalate |= d.escalate;
            if stronger {
                strongest.action = d.action;
                strongest.withhold = d.withhold;
                strongest.replacement = d.replacement;
            }
        }
        strongest.categories.sort();
        InputCheck {
            withhold: strongest.replacement.clone().filter(|_| strongest.withhold),
            redacted,
            report: report(Direction::Input, &strongest),
            escalation: strongest.escalate.then(|| Escalation {
                direction: Direction::Input,
                scores: scores_json(&strongest.categories, &scores),
                categories: strongest.categories.clone(),
                text: escalated_text.join("\n\n"),
                held: strongest.withhold,
            }),
        }
    }

    /// Checks a whole answer (with the engine's tap of its hidden states, when
    /// there is one): the text to deliver, and what happened.
    pub fn check_output(&self, text: &str, state: Option<&Tap>) -> OutputCheck {
        let v = self
            .safety
            .check_answer(&self.cascade, text, Direction::Output, state, true);
        let d = v.decision;
        let content = if d.withhold {
            d.replacement.clone().unwrap_or_default()
        } else if !d.redact.is_empty() {
            policy::redact(text, &d.redact)
        } else {
            text.to_string()
        };
        OutputCheck {
            content,
            filtered: d.withhold,
            report: report(Direction::Output, &d),
            escalation: d.escalate.then(|| Escalation {
                direction: Direction::Output,
                scores: scores_json(&d.categories, &v.assessment.scores),
                categories: d.categories.clone(),
                text: text.to_string(),
                held: d.withhold,
            }),
        }
    }
}

/// The result of checking a whole answer.
pub struct OutputCheck {
    /// What to deliver.
    pub content: String,
    /// Whether the model's answer was withheld (finish reason `content_filter`).
    pub filtered: bool,
    /// What to report on the choice.
    pub report: Option<SafetyReport>,
    /// An escalation to queue.
    pub escalation: Option<Escalation>,
}

/// Queues `e` for review (anonymized before it is stored); returns the id.
pub fn enqueue(
    st: &SharedState,
    completion_id: &str,
    user_hash: Option<&str>,
    e: &Escalation,
) -> Option<i64> {
    let text = st.privacy.anonymizer.scrub(&e.text);
    let categories: Vec<String> = e.categories.iter().map(|c| c.name().to_string()).collect();
    let r = st.store.insert_review(&NewReview {
        completion_id: Some(completion_id),
        direction: e.direction.name(),
        categories: &categories,
        scores: &e.scores,
        text: &text,
        held: e.held,
        user_hash,
    });
    match r {
        Ok(id) => {
            if let Ok(n) = st.store.pending_reviews() {
                st.metrics.review_queue_length.set(n);
            }
            Some(id)
        }
        Err(e) => {
            tracing::error!("queueing an item for review: {e}");
            None
        }
    }
}

/// What a streaming choice should do after a check.
pub enum Step {
    /// Deliver this text (possibly redacted) and these logprobs.
    Emit(String, Vec<TokenLogprobWire>),
    /// Stop the choice: deliver `tail` (a replacement answer), finish with
    /// `content_filter`, and report.
    Cut {
        /// Text to deliver last.
        tail: Option<String>,
    },
}

/// Incremental checking of one streamed choice: text is delivered only once it
/// has been checked, in chunks, each check looking back over a window of text
/// already delivered so a phrase split across chunks is still seen.
#[derive(Default)]
pub struct StreamCheck {
    delivered: String,
    pending: String,
    pending_lp: Vec<TokenLogprobWire>,
    /// Set once the choice was cut.
    pub cut: bool,
    escalated: bool,
    /// Bytes of the first pending logprob's token already delivered.
    lp_carry: usize,
    /// Bytes of `pending` that the last check held back (already judged once).
    held_bytes: usize,
    /// The last non-allow report, to attach to the final chunk.
    pub report: Option<SafetyReport>,
    /// The engine's latest tap of the answer's hidden states (for the probe).
    state: Option<Tap>,
    /// With an answer probe: the tokens it needs. A verdict to withhold reached
    /// before then (the n-grams alone, which read topics) waits, undelivered, for the
    /// probe to read the answer.
    probe_min_rows: Option<usize>,
}

impl StreamCheck {
    /// A check for a choice whose answer the probe judges once it has `min_rows`
    /// tokens (`None`: no probe; see [`Guard::probe_min_rows`]).
    pub fn with_probe(min_rows: Option<usize>) -> Self {
        Self {
            probe_min_rows: min_rows,
            ..Self::default()
        }
    }

    /// Adds generated text (and its logprob, and the engine's tap of the answer's
    /// states so far).
    pub fn push(&mut self, text: &str, lp: Option<TokenLogprobWire>, state: Option<Tap>) {
        self.pending.push_str(text);
        self.pending_lp.extend(lp);
        if state.is_some() {
            self.state = state;
        }
    }

    /// Whether enough text waits for a check. The first text is checked as soon as
    /// it exists, so the safety layer does not delay the time to first token; after
    /// that, every `chunk_chars`.
    pub fn due(&self, chunk_chars: usize) -> bool {
        let fresh = self.pending.get(self.held_bytes..).unwrap_or(&self.pending);
        if self.delivered.is_empty() {
            // Until something is out, check whenever a word ends.
            return !self.pending.trim().is_empty()
                && (self.held_bytes == 0 || fresh.contains(char::is_whitespace));
        }
        fresh.chars().count() >= chunk_chars
    }

    /// Checks what is pending. Returns the step and an escalation to queue (once).
    /// Unless this is the `last` check, text that may be the start of personal data
    /// continued by the next tokens (a partial word, a run of digits, capitalised
    /// words, or a redaction reaching the end) stays pending for the next check, so
    /// no prefix of an entity leaks across a chunk boundary.
    pub fn check(&mut self, g: &Guard, last: bool) -> (Step, Option<Escalation>) {
        if self.pending.is_empty() {
            return (
                Step::Emit(String::new(), std::mem::take(&mut self.pending_lp)),
                None,
            );
        }
        // What may be delivered now; the rest waits, unjudged, for the tokens that
        // complete it (an address cut in half reads as neither safe nor unsafe).
        let mut cut = if last {
            self.pending.len()
        } else {
            hold_from(&self.pending)
        };
        if cut == 0 {
            self.held_bytes = self.pending.len();
            return (Step::Emit(String::new(), Vec::new()), None);
        }
        let window_chars = g.stream().window_chars;
        let pending_chars = self.pending[..cut].chars().count();
        let back = window_chars.saturating_sub(pending_chars);
        let start = self
            .delivered
            .char_indices()
            .rev()
            .nth(back.saturating_sub(1))
            .map_or(0, |(i, _)| i);
        let start = if back == 0 {
            self.delivered.len()
        } else {
            start
        };
        let mut window = self.delivered[start..].to_string();
        let offset = window.len();
        window.push_str(&self.pending[..cut]);
        let v = g.safety.check_answer(
            &g.cascade,
            &window,
            Direction::Output,
            self.state.as_ref(),
            false,
        );
        let d = v.decision;
        let probe_pending = self
            .probe_min_rows
            .is_some_and(|n| self.state.as_ref().map_or(0, |s| s.rows) < n);
        if d.withhold && probe_pending && !last {
            // Flagged before the probe can judge: hold everything (nothing of it is
            // delivered) and judge again once it can; the engine's tap grows by one
            // row a token, so this waits at most the probe's minimum.
            self.held_bytes = self.pending.len();
            return (Step::Emit(String::new(), Vec::new()), None);
        }
        let mut escalation = None;
        if d.escalate && !self.escalated {
            self.escalated = true;
            escalation = Some(Escalation {
                direction: Direction::Output,
                scores: scores_json(&d.categories, &v.assessment.scores),
                categories: d.categories.clone(),
                text: format!("{}{}", self.delivered, &self.pending[..cut]),
                held: d.withhold,
            });
        }
        if let Some(r) = report(Direction::Output, &d) {
            self.report = Some(r);
        }
        if d.withhold && d.nothing_to_redact && !last && self.pending.len() < 2 * HOLD_LIMIT {
            // A rewrite with nothing to redact yet ("the address is: ..."): judge it
            // again with the text that follows, which may hold the span; a while,
            // not forever.
            self.held_bytes = self.pending.len();
            return (Step::Emit(String::new(), Vec::new()), escalation);
        }
        if d.withhold {
            self.cut = true;
            self.pending.clear();
            self.pending_lp.clear();
            let tail = (d.action == ActionKind::Rewrite)
                .then(|| d.replacement.map(|r| format!("\n\n{r}")))
                .flatten();
            return (Step::Cut { tail }, escalation);
        }
        let spans: Vec<_> = d
            .redact
            .iter()
            .filter(|(r, _)| r.end > offset)
            .map(|(r, p)| (r.start.max(offset) - offset..r.end - offset, *p))
            .collect();
        // A redaction that reaches the end of what was checked may grow with the
        // next tokens: hold it whole, unredacted, for the next check.
        if !last {
            while let Some((r, _)) = spans.iter().find(|(r, _)| r.start < cut && r.end >= cut) {
                cut = r.start;
            }
        }
        let held = self.pending.split_off(cut);
        let spans: Vec<_> = spans.into_iter().filter(|(r, _)| r.end <= cut).collect();
        let text = if spans.is_empty() {
            std::mem::take(&mut self.pending)
        } else {
            let t = policy::redact(&self.pending, &spans);
            self.pending.clear();
            t
        };
        self.pending = held;
        self.held_bytes = self.pending.len();
        // Logprobs go out once their token's text has: as many as the delivered
        // bytes cover (the rest wait with the held text). A token inside a redacted
        // span shows the placeholder, not itself or its alternatives.
        let carry = self.lp_carry;
        let n = if last {
            self.lp_carry = 0;
            self.pending_lp.len()
        } else {
            let mut budget = carry + cut;
            let mut n = 0;
            for lp in &self.pending_lp {
                if lp.token.len() > budget {
                    break;
                }
                budget -= lp.token.len();
                n += 1;
            }
            self.lp_carry = budget;
            n
        };
        let mut at = 0usize;
        let lps: Vec<_> = self
            .pending_lp
            .drain(..n)
            .map(|mut lp| {
                // The token's bytes in `pending`, which began `carry` bytes earlier.
                let (start, end) = (
                    at.saturating_sub(carry),
                    (at + lp.token.len()).saturating_sub(carry),
                );
                at += lp.token.len();
                if let Some((_, placeholder)) =
                    spans.iter().find(|(r, _)| r.start < end && start < r.end)
                {
                    lp.token = (*placeholder).to_string();
                    lp.bytes = placeholder.as_bytes().to_vec();
                    lp.top_logprobs.clear();
                }
                lp
            })
            .collect();
        self.delivered.push_str(&text);
        (Step::Emit(text, lps), escalation)
    }
}

/// Where to stop delivering `pending` before the next check: the start of a trailing
/// word not yet ended by a space, extended back over trailing digit groups ("call
/// +44 20 79") and capitalised words ("Dear Jon Whit"), which the next tokens may
/// turn into personal data. Byte offset on a character boundary.
pub fn hold_from(pending: &str) -> usize {
    // Where the last word of `s` starts.
    let word_start = |s: &str| {
        s.char_indices()
            .rev()
            .find(|(_, c)| c.is_whitespace())
            .map_or(0, |(i, c)| i + c.len_utf8())
    };
    // The last word if nothing ends it yet.
    let mut cut = word_start(pending);
    let mut held_words = usize::from(cut < pending.len());
    let mut digits_run = false;
    loop {
        let head = pending[..cut].trim_end();
        let start = word_start(head);
        let word = &head[start..];
        if word.is_empty() {
            break;
        }
        // Digit groups, with letters too ("GB82", "SW1A", "x579").
        let numberish = word.chars().any(|c| c.is_ascii_digit())
            && word
                .chars()
                .all(|c| c.is_alphanumeric() || "+-().x/:#".contains(c));
        let capital = word.chars().next().is_some_and(char::is_uppercase);
        let all_caps = word.chars().all(|c| !c.is_lowercase());
        let (extend, limit) = if numberish {
            (true, 8)
        } else if capital && (!digits_run || all_caps) {
            (true, 4)
        } else {
            (false, 0)
        };
        if !extend || held_words >= limit {
            break;
        }
        digits_run |= numberish;
        held_words += 1;
        cut = start;
    }
    // A word with no end in sight (a long code line) is not held forever.
    let mut floor = pending.len().saturating_sub(HOLD_LIMIT);
    while !pending.is_char_boundary(floor) {
        floor += 1;
    }
    cut.max(floor)
}

/// Most bytes a check holds back (an e-mail address or phone number is shorter).
const HOLD_LIMIT: usize = 96;

#[cfg(test)]
mod tests {
    use super::*;

    fn guard() -> Guard {
        let mut config = crate::config::Config::load(None).expect("defaults").safety;
        config.dir = "safety".into();
        let safety =
            Arc::new(Safety::open(&config, std::path::Path::new("."), None).expect("safety"));
        Guard {
            cascade: safety.current(),
            safety,
        }
    }

    /// Streams `tokens` through a check every `every` tokens; returns what reached
    /// the client.
    fn stream(g: &Guard, tokens: &[&str], every: usize) -> String {
        let mut c = StreamCheck::default();
        let mut out = String::new();
        for (i, t) in tokens.iter().enumerate() {
            c.push(t, None, None);
            if (i + 1) % every == 0 {
                if let (Step::Emit(text, _), _) = c.check(g, false) {
                    out.push_str(&text);
                }
            }
        }
        if let (Step::Emit(text, _), _) = c.check(g, true) {
            out.push_str(&text);
        }
        out
    }

    #[test]
    fn holds_back_what_the_next_tokens_may_extend() {
        assert_eq!(hold_from("Write to jon.whit"), "Write to ".len());
        assert_eq!(hold_from("ok. "), "ok. ".len());
        assert_eq!(hold_from("call +44 20 79"), "call ".len());
        assert_eq!(hold_from("thanks, Jon "), "thanks, ".len());
        assert_eq!(hold_from("the end"), "the ".len());
        assert_eq!(hold_from("IBAN GB82 WEST 1234 5698"), "IBAN ".len());
        let long = "x".repeat(500);
        assert_eq!(hold_from(&long), 500 - HOLD_LIMIT);
    }

    #[test]
    fn an_email_split_across_checks_never_reaches_the_client() {
        let g = guard();
        let tokens = [
            "You", " can", " write", " to", " jon", ".", "whit", "ney", "@", "example", ".", "com",
            " or", " call", " +", "44", " 20", " 79", "46", " 0958", " today", ".",
        ];
        for every in 1..=4 {
            let out = stream(&g, &tokens, every);
            for secret in ["jon", "whit", "example.com", "0958", "79"] {
                assert!(!out.contains(secret), "every {every}: {out:?}");
            }
            assert!(
                out.starts_with("You can write to "),
                "every {every}: {out:?}"
            );
            assert!(out.ends_with(" today."), "every {every}: {out:?}");
        }
    }
}
