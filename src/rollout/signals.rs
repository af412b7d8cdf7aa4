//! Live signals per version: every answer (flagged by the output checks? a
//! refusal? how long?), every accepted rating, and shadow-probe KL. Kept in memory
//! with their time, summarised over any window.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use rand::Rng;

use super::config::LiveConfig;
use crate::model::ChatMessage;
use crate::storage::now_ms;

/// One observation.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Event {
    Answer {
        flagged: bool,
        refusal: bool,
        chars: usize,
    },
    Rating(f64),
    ShadowKl(f64),
}

/// Totals over a window.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Summary {
    /// Answers delivered.
    pub answers: usize,
    /// Answers the output checks flagged.
    pub flagged: usize,
    /// Answers that were refusals.
    pub refusals: usize,
    /// Characters of all answers.
    pub chars: usize,
    /// Accepted ratings.
    pub ratings: usize,
    /// Sum of ratings (each 0..1).
    pub rating_sum: f64,
    /// Shadow probes scored.
    pub shadow: usize,
    /// Sum of their KL per token.
    pub kl_sum: f64,
}

impl Summary {
    /// Share of answers flagged.
    pub fn flag_rate(&self) -> f64 {
        self.flagged as f64 / self.answers.max(1) as f64
    }
    /// Share of answers that were refusals.
    pub fn refusal_rate(&self) -> f64 {
        self.refusals as f64 / self.answers.max(1) as f64
    }
    /// Mean answer length in characters.
    pub fn mean_chars(&self) -> f64 {
        self.chars as f64 / self.answers.max(1) as f64
    }
    /// Mean rating (0..1).
    pub fn mean_rating(&self) -> f64 {
        self.rating_sum / self.ratings.max(1) as f64
    }
    /// Mean shadow-probe KL per token.
    pub fn shadow_kl(&self) -> f64 {
        self.kl_sum / self.shadow.max(1) as f64
    }
}

/// An answer waiting to be re-scored against the base.
#[derive(Debug, Clone)]
pub struct ShadowSample {
    /// The version that answered.
    pub version: String,
    /// The conversation as the model saw it.
    pub messages: Vec<ChatMessage>,
    /// The answer.
    pub answer: String,
}

/// Most events kept per version.
const MAX_EVENTS: usize = 200_000;
/// Most shadow samples waiting.
const MAX_SHADOW: usize = 64;

/// The signal store.
pub struct Signals {
    config: LiveConfig,
    markers: Vec<String>,
    events: Mutex<HashMap<String, VecDeque<(i64, Event)>>>,
    shadow: Mutex<VecDeque<ShadowSample>>,
}

impl Signals {
    /// An empty store.
    pub fn new(config: LiveConfig) -> Self {
        let markers = config
            .refusal_markers
            .iter()
            .map(|m| m.to_lowercase())
            .collect();
        Self {
            config,
            markers,
            events: Mutex::new(HashMap::new()),
            shadow: Mutex::new(VecDeque::new()),
        }
    }

    /// The conditions.
    pub fn config(&self) -> &LiveConfig {
        &self.config
    }

    fn push(&self, version: &str, at: i64, e: Event) {
        let mut map = self.events.lock().unwrap_or_else(|e| e.into_inner());
        let q = map.entry(version.to_string()).or_default();
        q.push_back((at, e));
        let horizon = at - (self.config.keep_secs as i64) * 1000;
        while q.len() > MAX_EVENTS || q.front().is_some_and(|(t, _)| *t < horizon) {
            q.pop_front();
        }
    }

    /// Whether `text` is a refusal.
    pub fn is_refusal(&self, text: &str) -> bool {
        let head: String = text
            .trim_start()
            .chars()
            .take(80)
            .collect::<String>()
            .to_lowercase();
        let head = head.replace('\u{2019}', "'");
        self.markers.iter().any(|m| head.starts_with(m.as_str()))
    }

    /// Records an answer `version` delivered. `flagged`: the output checks flagged it.
    pub fn answer(&self, version: &str, text: &str, flagged: bool) {
        let e = Event::Answer {
            flagged,
            refusal: self.is_refusal(text),
            chars: text.chars().count(),
        };
        self.push(version, now_ms(), e);
    }

    /// Records an accepted rating (0..1) of an answer by `version`.
    pub fn rating(&self, version: &str, value: f64) {
        self.push(version, now_ms(), Event::Rating(value.clamp(0.0, 1.0)));
    }

    /// Records a shadow probe's KL per token.
    pub fn shadow_kl(&self, version: &str, kl: f64) {
        self.push(version, now_ms(), Event::ShadowKl(kl));
    }

    /// Whether to shadow-score the next answer: true with probability
    /// `shadow_rate` while the queue has room. Drawn before a sample is built, so
    /// answers not chosen cost nothing.
    pub fn sample_shadow(&self) -> bool {
        self.config.shadow_rate > 0.0
            && rand::rng().random::<f64>() < self.config.shadow_rate
            && self.shadow.lock().is_ok_and(|q| q.len() < MAX_SHADOW)
    }

    /// Queues an answer [`sample_shadow`](Self::sample_shadow) chose.
    pub fn push_shadow(&self, sample: ShadowSample) {
        let mut q = self.shadow.lock().unwrap_or_else(|e| e.into_inner());
        if q.len() < MAX_SHADOW {
            q.push_back(sample);
        }
    }

    /// The next answer to shadow-score.
    pub fn next_shadow(&self) -> Option<ShadowSample> {
        self.shadow
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop_front()
    }

    /// Totals of `version` over `[from_ms, to_ms)`.
    pub fn summary(&self, version: &str, from_ms: i64, to_ms: i64) -> Summary {
        let map = self.events.lock().unwrap_or_else(|e| e.into_inner());
        let mut s = Summary::default();
        let Some(q) = map.get(version) else {
            return s;
        };
        for (_, e) in q.iter().filter(|(t, _)| *t >= from_ms && *t < to_ms) {
            match *e {
                Event::Answer {
                    flagged,
                    refusal,
                    chars,
                } => {
                    s.answers += 1;
                    s.flagged += usize::from(flagged);
                    s.refusals += usize::from(refusal);
                    s.chars += chars;
                }
                Event::Rating(v) => {
                    s.ratings += 1;
                    s.rating_sum += v;
                }
                Event::ShadowKl(k) => {
                    s.shadow += 1;
                    s.kl_sum += k;
                }
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::rollout::config::default_live as live;

    #[test]
    fn summaries_count_each_signal_in_its_window() {
        let s = Signals::new(live());
        s.answer("m@v2", "I'm sorry, I can't help with that.", false);
        s.answer("m@v2", "Paris is the capital.", true);
        s.rating("m@v2", 1.0);
        s.rating("m@v2", 0.0);
        s.rating("m@v2", 0.75);
        s.shadow_kl("m@v2", 0.3);
        s.answer("m@v1", "Hello", false);
        let all = s.summary("m@v2", 0, i64::MAX);
        assert_eq!((all.answers, all.flagged, all.refusals), (2, 1, 1));
        assert_eq!(all.ratings, 3);
        assert!((all.mean_rating() - 0.5833).abs() < 1e-3);
        assert!((all.shadow_kl() - 0.3).abs() < 1e-9);
        assert_eq!(
            s.summary("m@v2", now_ms() + 1000, i64::MAX),
            Summary::default()
        );
        assert_eq!(s.summary("m@v1", 0, i64::MAX).answers, 1);
        assert_eq!(s.summary("m@v9", 0, i64::MAX), Summary::default());
    }

    #[test]
    fn refusals_are_recognised_by_their_opening() {
        let s = Signals::new(live());
        assert!(s.is_refusal("  I\u{2019}m sorry, but no."));
        assert!(s.is_refusal("As an AI language model, I cannot"));
        assert!(!s.is_refusal("Sorry to hear that; here is how to fix it."));
        assert!(!s.is_refusal("The capital of France is Paris."));
    }
}
