//! Offline commands: `tether privacy scan|redact` over JSONL, and `tether data
//! export`, which turns the conversation log into deduplicated, safety-filtered
//! training data.

use std::collections::HashSet;
use std::io::{BufRead, Write};

use serde::Serialize;

use super::{char_offsets, Anonymizer, Operator, Pseudonyms};
use crate::safety::{ActionKind, Cascade, Direction};
use crate::storage::Store;

/// Per line `{"text"}` in, `{"spans": [{"type","start","end","score"}]}` out
/// (character offsets). Returns the lines read.
pub fn scan(a: &Anonymizer, input: impl BufRead, out: impl Write) -> std::io::Result<usize> {
    crate::jsonl::map_texts(input, out, |t| {
        let spans = a.analyze(t);
        let list: Vec<serde_json::Value> = spans
            .iter()
            .zip(char_offsets(t, &spans))
            .map(|(s, (start, end))| {
                serde_json::json!({"type": s.entity.name(), "start": start, "end": end, "score": s.score})
            })
            .collect();
        serde_json::json!({ "spans": list })
    })
}

/// Per line `{"text"}` in, `{"text": anonymized}` out.
pub fn redact(
    a: &Anonymizer,
    op: &Operator,
    input: impl BufRead,
    out: impl Write,
) -> std::io::Result<usize> {
    crate::jsonl::map_texts(
        input,
        out,
        |t| serde_json::json!({"text": a.anonymize(t, op, &mut Pseudonyms::default())}),
    )
}

/// What an export kept and dropped.
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct ExportReport {
    /// Conversation rows read (unflagged).
    pub conversations: usize,
    /// Examples written.
    pub written: usize,
    /// Dropped: flagged when logged (not even read) are not counted here; these are
    /// flagged by the safety cascade at export time.
    pub unsafe_now: usize,
    /// Dropped as exact duplicates (after normalising case and spaces).
    pub exact_duplicates: usize,
    /// Dropped as near duplicates (SimHash within 3 bits).
    pub near_duplicates: usize,
    /// Rows that could not be parsed.
    pub malformed: usize,
}

/// 64-bit SimHash over word 3-shingles.
pub fn simhash(text: &str) -> u64 {
    let words: Vec<&str> = text.split_whitespace().collect();
    let mut v = [0i32; 64];
    let mut add = |s: &str| {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in s.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        for (bit, slot) in v.iter_mut().enumerate() {
            *slot += if h >> bit & 1 == 1 { 1 } else { -1 };
        }
    };
    if words.len() < 3 {
        add(&words.join(" "));
    } else {
        for w in words.windows(3) {
            add(&w.join(" "));
        }
    }
    v.iter().enumerate().fold(
        0u64,
        |acc, (bit, &x)| if x > 0 { acc | 1 << bit } else { acc },
    )
}

/// Writes one JSONL training example per answer of every unflagged conversation:
/// `{"messages": [...], "version", "completion_id"}`; anything the safety cascade
/// flags now is excluded, and exact and near duplicates are dropped.
pub fn export(
    store: &Store,
    safety: Option<&Cascade>,
    mut out: impl Write,
) -> Result<ExportReport, Box<dyn std::error::Error + Send + Sync>> {
    let rows = store.conversations(true)?;
    let mut r = ExportReport {
        conversations: rows.len(),
        ..Default::default()
    };
    let mut exact: HashSet<String> = HashSet::new();
    let mut hashes: Vec<u64> = Vec::new();
    for row in rows {
        let (Ok(msgs), Ok(answers)) = (
            serde_json::from_str::<Vec<serde_json::Value>>(&row.messages),
            serde_json::from_str::<Vec<String>>(&row.answers),
        ) else {
            r.malformed += 1;
            continue;
        };
        for answer in answers {
            if let Some(c) = safety {
                let bad_input = msgs.iter().any(|m| {
                    let t = m["content"].as_str().unwrap_or_default();
                    let a = c.assess(t, Direction::Input);
                    c.policy.decide(Direction::Input, &a.scores, &a.hits).action
                        != ActionKind::Allow
                });
                let a = c.assess(&answer, Direction::Output);
                let bad_output = c
                    .policy
                    .decide(Direction::Output, &a.scores, &a.hits)
                    .action
                    != ActionKind::Allow;
                if bad_input || bad_output {
                    r.unsafe_now += 1;
                    continue;
                }
            }
            let whole = msgs
                .iter()
                .map(|m| m["content"].as_str().unwrap_or_default())
                .chain(std::iter::once(answer.as_str()))
                .collect::<Vec<_>>()
                .join("\n");
            let norm = whole
                .to_lowercase()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            if !exact.insert(norm.clone()) {
                r.exact_duplicates += 1;
                continue;
            }
            let h = simhash(&norm);
            if hashes.iter().any(|&k| (k ^ h).count_ones() <= 3) {
                r.near_duplicates += 1;
                continue;
            }
            hashes.push(h);
            let mut messages = msgs.clone();
            messages.push(serde_json::json!({"role": "assistant", "content": answer}));
            writeln!(
                out,
                "{}",
                serde_json::json!({"messages": messages, "version": row.version, "completion_id": row.completion_id})
            )?;
            r.written += 1;
        }
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::simhash;

    #[test]
    fn simhash_is_close_for_near_duplicates_and_far_otherwise() {
        let a =
            simhash("the capital of france is paris and it is a lovely city to visit in spring");
        let b = simhash(
            "the capital of france is paris and it is a lovely city to visit in the spring",
        );
        let c = simhash("rust ownership rules make memory safety checkable at compile time");
        assert!((a ^ b).count_ones() < (a ^ c).count_ones());
        assert!((a ^ c).count_ones() > 10);
    }
}

/// A labelled example: `{"text", "spans": [{"type","start","end"}]}`, character offsets.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Labelled {
    /// The text.
    pub text: String,
    /// Gold spans.
    pub spans: Vec<GoldSpan>,
}

/// A gold span.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct GoldSpan {
    /// Presidio entity name; a card's security code (`CVV`) and expiry
    /// (`CARD_EXPIRY`) are scored as `CREDIT_CARD`, which is what the anonymizer
    /// replaces them with.
    #[serde(rename = "type", deserialize_with = "card_detail_as_card")]
    pub kind: String,
    /// First character.
    pub start: usize,
    /// After the last character.
    pub end: usize,
}

fn card_detail_as_card<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let kind = <String as serde::Deserialize>::deserialize(d)?;
    Ok(match kind.as_str() {
        "CVV" | "CARD_EXPIRY" => "CREDIT_CARD".into(),
        _ => kind,
    })
}

/// The 95% Wilson score interval of `k` successes in `n` trials.
pub fn wilson(k: usize, n: usize) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let (k, n, z) = (k as f64, n as f64, 1.959_964);
    let p = k / n;
    let centre = p + z * z / (2.0 * n);
    let half = z * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt();
    let denom = 1.0 + z * z / n;
    (
        ((centre - half) / denom).max(0.0),
        ((centre + half) / denom).min(1.0),
    )
}

/// Precision and recall of one entity type.
#[derive(Debug, Clone, Serialize)]
pub struct EntityScore {
    /// Presidio name.
    pub entity: String,
    /// Gold spans.
    pub gold: usize,
    /// Predicted spans.
    pub predicted: usize,
    /// Predicted spans overlapping a gold span of the same type / predicted.
    pub precision: f64,
    /// Gold spans overlapped by a predicted span of the same type / gold.
    pub recall: f64,
    /// Gold spans matched exactly (same start and end) / gold.
    pub exact_recall: f64,
    /// 95% Wilson interval of the precision.
    pub precision_ci: (f64, f64),
    /// 95% Wilson interval of the recall.
    pub recall_ci: (f64, f64),
}

/// Scores the anonymizer on labelled examples, per entity type.
pub fn evaluate(a: &Anonymizer, examples: &[Labelled]) -> Vec<EntityScore> {
    use super::Entity;
    let mut out = Vec::new();
    let preds: Vec<Vec<(Entity, usize, usize)>> = examples
        .iter()
        .map(|ex| {
            let spans = a.analyze(&ex.text);
            char_offsets(&ex.text, &spans)
                .into_iter()
                .zip(&spans)
                .map(|((s, e), sp)| (sp.entity, s, e))
                .collect()
        })
        .collect();
    for entity in Entity::ALL {
        let (mut gold, mut predicted, mut tp_pred, mut tp_gold, mut exact) = (0, 0, 0, 0, 0);
        for (ex, pred) in examples.iter().zip(&preds) {
            let g: Vec<&GoldSpan> = ex
                .spans
                .iter()
                .filter(|s| s.kind == entity.name())
                .collect();
            let p: Vec<&(Entity, usize, usize)> = pred.iter().filter(|p| p.0 == entity).collect();
            gold += g.len();
            predicted += p.len();
            let overlaps =
                |gs: &GoldSpan, ps: &(Entity, usize, usize)| ps.1 < gs.end && gs.start < ps.2;
            tp_pred += p
                .iter()
                .filter(|ps| g.iter().any(|gs| overlaps(gs, ps)))
                .count();
            tp_gold += g
                .iter()
                .filter(|gs| p.iter().any(|ps| overlaps(gs, ps)))
                .count();
            exact += g
                .iter()
                .filter(|gs| p.iter().any(|ps| ps.1 == gs.start && ps.2 == gs.end))
                .count();
        }
        if gold == 0 && predicted == 0 {
            continue;
        }
        let ratio = |a: usize, b: usize| if b == 0 { 1.0 } else { a as f64 / b as f64 };
        out.push(EntityScore {
            entity: entity.name().into(),
            gold,
            predicted,
            precision: ratio(tp_pred, predicted),
            recall: ratio(tp_gold, gold),
            exact_recall: ratio(exact, gold),
            precision_ci: wilson(tp_pred, predicted),
            recall_ci: wilson(tp_gold, gold),
        });
    }
    out
}
