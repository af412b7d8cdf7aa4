//! Privacy: the anonymizer that runs before anything reaches disk (conversation
//! logs, feedback texts, review-queue items, tracing output), consent, and the
//! conversation log with retention and erasure.
//!
//! - [`entity`]: entity types (Presidio's names) and spans.
//! - [`patterns`]: structured recognizers (regex candidates, checksums, context).
//! - [`names`]: PERSON and LOCATION from gazetteers, capitalisation and context.
//! - [`logging`]: tracing output passed through the anonymizer.
//!
//! [`Anonymizer::analyze`] finds spans; [`Anonymizer::anonymize`] replaces them
//! with an [`Operator`]: typed placeholders consistent within a conversation
//! (`<PERSON_1>`), redaction, masking, or a salted hash.

pub mod consent;
pub mod conversations;
pub mod entity;
pub mod logging;
pub mod names;
pub mod offline;
pub mod patterns;

use std::collections::HashMap;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

pub use entity::{Entity, Span};
use names::Gazetteers;

/// How recognised entities are replaced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Operator {
    /// `<PERSON_1>`: typed, numbered, the same value keeps its number.
    #[default]
    Replace,
    /// `<PERSON>`: typed, no number.
    Redact,
    /// Every character but separators becomes `*`.
    Mask,
    /// `<PERSON_3fa2c1d09b8e7a61>`: salted sha256, stable across conversations
    /// for the same salt (joins without revealing).
    Hash,
}

/// Placeholder numbering for one conversation, and the names and places seen in
/// it: once "Zora Quillfeather" has been recognised (say after "my name is"), a
/// later bare "Zora Quillfeather" or "Quillfeather" in the same conversation is the
/// same person, even where no cue or gazetteer would find it.
#[derive(Debug, Default, Clone)]
pub struct Pseudonyms {
    seen: HashMap<(Entity, String), usize>,
    next: HashMap<Entity, usize>,
    /// Lower-cased alias → (entity, canonical lower-cased value).
    aliases: HashMap<String, (Entity, String)>,
}

impl Pseudonyms {
    fn number(&mut self, e: Entity, value: &str) -> usize {
        let lower = value.to_lowercase();
        let key = match self.aliases.get(&lower) {
            Some((ae, canonical)) if *ae == e => (e, canonical.clone()),
            _ => (e, lower.clone()),
        };
        if let Some(n) = self.seen.get(&key) {
            return *n;
        }
        let n = self.next.entry(e).or_insert(0);
        *n += 1;
        let n = *n;
        self.seen.insert(key, n);
        if matches!(e, Entity::Person | Entity::Location) {
            self.aliases.insert(lower.clone(), (e, lower.clone()));
            if e == Entity::Person {
                for part in value.split_whitespace() {
                    let p = part
                        .trim_matches(|c: char| !c.is_alphanumeric())
                        .to_lowercase();
                    if p.chars().count() >= 3 {
                        self.aliases.entry(p).or_insert((e, lower.clone()));
                    }
                }
            }
        }
        n
    }

    /// Spans of names and places seen earlier in this conversation.
    fn known(&self, text: &str) -> Vec<Span> {
        if self.aliases.is_empty() {
            return Vec::new();
        }
        let mut alts: Vec<&String> = self.aliases.keys().collect();
        alts.sort_by_key(|a| std::cmp::Reverse(a.len()));
        let pattern = format!(
            r"(?i)\b(?:{})\b",
            alts.iter()
                .map(|a| regex::escape(a))
                .collect::<Vec<_>>()
                .join("|")
        );
        let Ok(re) = regex::Regex::new(&pattern) else {
            return Vec::new();
        };
        re.find_iter(text)
            .filter_map(|m| {
                let (e, _) = self.aliases.get(&m.as_str().to_lowercase())?;
                Some(Span {
                    entity: *e,
                    start: m.start(),
                    end: m.end(),
                    score: 0.9,
                })
            })
            .collect()
    }
}

/// The anonymizer: structured recognizers plus gazetteers.
pub struct Anonymizer {
    gazetteers: &'static Gazetteers,
    /// Spans scoring below this are ignored.
    pub min_score: f32,
    salt: String,
}

impl Anonymizer {
    /// An anonymizer with the built-in gazetteers; `salt` keys the hash operator.
    pub fn new(salt: impl Into<String>) -> Self {
        Self {
            gazetteers: Gazetteers::builtin(),
            min_score: 0.5,
            salt: salt.into(),
        }
    }

    /// Non-overlapping entity spans (byte offsets), in text order. Where candidates
    /// overlap, the higher score wins, then the longer span.
    pub fn analyze(&self, text: &str) -> Vec<Span> {
        let mut all = Vec::new();
        patterns::find(text, &mut all);
        names::find(self.gazetteers, text, &mut all);
        all.retain(|s| s.score >= self.min_score && s.end > s.start);
        all.sort_by(|a, b| {
            b.score
                .total_cmp(&a.score)
                .then((b.end - b.start).cmp(&(a.end - a.start)))
                .then(a.start.cmp(&b.start))
        });
        let mut kept: Vec<Span> = Vec::with_capacity(all.len());
        for s in all {
            if kept.iter().all(|k| s.end <= k.start || k.end <= s.start) {
                kept.push(s);
            }
        }
        kept.sort_by_key(|s| s.start);
        kept
    }

    /// `text` with every entity replaced by `op`; names and places seen earlier in
    /// the same conversation (`names`) are found again wherever they recur.
    pub fn anonymize(&self, text: &str, op: &Operator, names: &mut Pseudonyms) -> String {
        let mut spans = self.analyze(text);
        let known = names.known(text);
        if !known.is_empty() {
            for k in known {
                if spans.iter().all(|s| k.end <= s.start || s.end <= k.start) {
                    spans.push(k);
                }
            }
            spans.sort_by_key(|s| s.start);
        }
        self.apply(text, &spans, op, names)
    }

    /// Replaces `spans` (as returned by [`Anonymizer::analyze`]) in `text`.
    pub fn apply(
        &self,
        text: &str,
        spans: &[Span],
        op: &Operator,
        names: &mut Pseudonyms,
    ) -> String {
        let mut out = String::with_capacity(text.len());
        let mut at = 0;
        for s in spans {
            if s.start < at || s.end > text.len() {
                continue;
            }
            out.push_str(&text[at..s.start]);
            let value = &text[s.start..s.end];
            let n = names.number(s.entity, value);
            match op {
                Operator::Replace => out.push_str(&format!("<{}_{n}>", s.entity.name())),
                Operator::Redact => out.push_str(s.entity.placeholder()),
                Operator::Mask => {
                    out.extend(
                        value
                            .chars()
                            .map(|c| if c.is_alphanumeric() { '*' } else { c }),
                    )
                }
                Operator::Hash => out.push_str(&format!(
                    "<{}_{}>",
                    s.entity.name(),
                    patterns::salted_hash(&self.salt, value)
                )),
            }
            at = s.end;
        }
        out.push_str(&text[at..]);
        out
    }

    /// Typed placeholders with fresh numbering: for one-off texts (errors, review items).
    pub fn scrub(&self, text: &str) -> String {
        self.anonymize(text, &Operator::Replace, &mut Pseudonyms::default())
    }

    /// Like [`Anonymizer::scrub`], for log lines: loopback and unspecified addresses
    /// (`127.0.0.1`, `::1`, `0.0.0.0`, `localhost` URLs) identify no one and are what
    /// a server logs about itself ("listening on http://127.0.0.1:8080"), so they stay.
    pub fn scrub_log(&self, text: &str) -> String {
        let spans: Vec<Span> = self
            .analyze(text)
            .into_iter()
            .filter(|s| !is_local(&text[s.start..s.end]))
            .collect();
        self.apply(text, &spans, &Operator::Replace, &mut Pseudonyms::default())
    }
}

fn is_local(value: &str) -> bool {
    let host = value
        .split("://")
        .nth(1)
        .unwrap_or(value)
        .split(['/', '?'])
        .next()
        .unwrap_or_default();
    let host = host
        .rsplit_once(':')
        .filter(|(h, p)| {
            !h.is_empty() && p.chars().all(|c| c.is_ascii_digit()) && !h.ends_with(':')
        })
        .map_or(host, |(h, _)| h);
    host == "localhost"
        || host.starts_with("127.")
        || host == "0.0.0.0"
        || host == "::1"
        || host == "[::1]"
        || host == "::"
}

/// The process-wide anonymizer (used where no configuration reaches, such as the
/// tracing writer). Its hash salt comes from `TETHER_PRIVACY_SALT` when set.
pub fn global() -> &'static Anonymizer {
    static A: OnceLock<Anonymizer> = OnceLock::new();
    A.get_or_init(|| Anonymizer::new(std::env::var("TETHER_PRIVACY_SALT").unwrap_or_default()))
}

/// Converts byte offsets to character offsets (for JSON output).
pub fn char_offsets(text: &str, spans: &[Span]) -> Vec<(usize, usize)> {
    spans
        .iter()
        .map(|s| {
            (
                text[..s.start].chars().count(),
                text[..s.end].chars().count(),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn types(text: &str) -> Vec<(&'static str, String)> {
        let a = Anonymizer::new("salt");
        a.analyze(text)
            .into_iter()
            .map(|s| (s.entity.name(), text[s.start..s.end].to_string()))
            .collect()
    }

    #[test]
    fn structured_types_with_validators() {
        let t = types(
            "Mail jane.doe@example.com, call +44 20 7946 0958 or (415) 555-0132. Card 5425 2334 3010 9903, \
             IBAN DE89 3704 0044 0532 0130 00, SSN 123-45-6789, host 192.168.1.20 and fe80::1ff:fe23:4567:890a, \
             MAC 00:1A:2B:3C:4D:5E, see https://example.org/a?b=1. Key sk-proj-abcdefghijklmnopqrstuvwxyz0123.",
        );
        let names: Vec<&str> = t.iter().map(|x| x.0).collect();
        for want in [
            "EMAIL_ADDRESS",
            "PHONE_NUMBER",
            "CREDIT_CARD",
            "IBAN_CODE",
            "US_SSN",
            "IP_ADDRESS",
            "MAC_ADDRESS",
            "URL",
            "SECRET",
        ] {
            assert!(names.contains(&want), "{want} missing in {t:?}");
        }
        assert!(
            t.contains(&("CREDIT_CARD", "5425 2334 3010 9903".into())),
            "{t:?}"
        );
        assert!(
            t.contains(&("URL", "https://example.org/a?b=1".into())),
            "{t:?}"
        );
    }

    #[test]
    fn hard_negatives_are_not_entities() {
        for text in [
            "Order #4111111111111112 ships tomorrow.",
            "Upgrade to version 1.2.3.4 tonight.",
            "The total was $1,234.56 at 10:30.",
            "Invalid: 000-12-3456 and 666-12-3456.",
            "Commit 3f2a9c1d4e5b6a7c8d9e0f1a2b3c4d5e6f7a8b9c and uuid 123e4567-e89b-12d3-a456-426614174000.",
            "I will grant you that the rose garden is nice.",
        ] {
            assert!(types(text).is_empty(), "{text}: {:?}", types(text));
        }
    }

    #[test]
    fn names_found_once_are_found_again_in_the_conversation() {
        let a = Anonymizer::new("salt");
        let mut p = Pseudonyms::default();
        let q = a.anonymize("My name is Zora Quillfeather.", &Operator::Replace, &mut p);
        assert_eq!(q, "My name is <PERSON_1>.");
        let ans = a.anonymize(
            "Zora Quillfeather, hello! Quillfeather is a rare name.",
            &Operator::Replace,
            &mut p,
        );
        assert_eq!(ans, "<PERSON_1>, hello! <PERSON_1> is a rare name.");
    }

    #[test]
    fn placeholders_are_consistent_within_a_conversation() {
        let a = Anonymizer::new("salt");
        let mut p = Pseudonyms::default();
        let one = a.anonymize(
            "Write to jane@example.com or bob@example.com.",
            &Operator::Replace,
            &mut p,
        );
        let two = a.anonymize("Again: jane@example.com", &Operator::Replace, &mut p);
        assert_eq!(one, "Write to <EMAIL_ADDRESS_1> or <EMAIL_ADDRESS_2>.");
        assert_eq!(two, "Again: <EMAIL_ADDRESS_1>");
        assert_eq!(
            a.anonymize("jane@example.com", &Operator::Mask, &mut p),
            "****@*******.***"
        );
        let h1 = a.anonymize("jane@example.com", &Operator::Hash, &mut p);
        let h2 = Anonymizer::new("other").anonymize("jane@example.com", &Operator::Hash, &mut p);
        assert!(h1.starts_with("<EMAIL_ADDRESS_") && h1 != h2);
    }
}
