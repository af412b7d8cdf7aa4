//! Fast rules from `safety/rules.toml`: lexicons (whole words and phrases) and
//! regular expressions over the normalised text, and personal-data detectors over
//! the original text. A rule that matches sets its category's score to at least
//! the rule's `score` and records the matched spans (for redaction).

use std::ops::Range;

use regex::Regex;
use serde::Deserialize;

use super::category::{Category, Direction, N_CATEGORIES};
use super::normalize::Normalized;
use crate::privacy::Entity;

/// One rule as written in `rules.toml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    #[serde(default)]
    rule: Vec<RuleSpec>,
    #[serde(default)]
    pii: Vec<PiiSpec>,
}

fn default_score() -> f32 {
    1.0
}

fn both() -> Vec<Direction> {
    vec![Direction::Input, Direction::Output]
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSpec {
    /// A name for logs and errors.
    name: String,
    category: String,
    #[serde(default = "both")]
    directions: Vec<Direction>,
    #[serde(default = "default_score")]
    score: f32,
    /// Whole words or phrases, written plainly (they are normalised too).
    #[serde(default)]
    words: Vec<String>,
    /// Regular expressions over the normalised text.
    #[serde(default)]
    patterns: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PiiSpec {
    category: String,
    #[serde(default = "both")]
    directions: Vec<Direction>,
    #[serde(default = "default_score")]
    score: f32,
    /// Presidio entity names the privacy anonymizer recognises.
    entities: Vec<String>,
}

struct Rule {
    name: String,
    category: Category,
    directions: Vec<Direction>,
    score: f32,
    regex: Regex,
}

struct PiiRule {
    category: Category,
    directions: Vec<Direction>,
    score: f32,
    entities: Vec<Entity>,
}

/// A span a rule matched, in the original text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    /// The category.
    pub category: Category,
    /// Byte range in the original text.
    pub span: Range<usize>,
    /// What replaces it when redacted.
    pub placeholder: &'static str,
    /// The rule's name.
    pub rule: String,
}

/// The compiled rules.
#[derive(Default)]
pub struct Rules {
    rules: Vec<Rule>,
    pii: Vec<PiiRule>,
}

impl Rules {
    /// Compiles `rules.toml` text; every error names the rule.
    pub fn parse(text: &str) -> Result<Self, String> {
        let file: RuleFile = toml::from_str(text).map_err(|e| e.to_string())?;
        let category = |name: &str, owner: &str| {
            Category::parse(name).ok_or_else(|| format!("{owner}: unknown category {name:?}"))
        };
        let score_ok = |s: f32, owner: &str| {
            if (0.0..=1.0).contains(&s) {
                Ok(())
            } else {
                Err(format!("{owner}: score must be between 0 and 1"))
            }
        };
        let mut rules = Vec::new();
        for r in file.rule {
            let owner = format!("rule {:?}", r.name);
            score_ok(r.score, &owner)?;
            let mut alts: Vec<String> = r
                .words
                .iter()
                .map(|w| super::normalize::normalize(w).text)
                .filter(|w| !w.is_empty())
                .map(|w| regex::escape(&w))
                .collect();
            for p in &r.patterns {
                Regex::new(p).map_err(|e| format!("{owner}: pattern {p:?}: {e}"))?;
                alts.push(format!("(?:{p})"));
            }
            if alts.is_empty() {
                return Err(format!("{owner}: has neither words nor patterns"));
            }
            let regex = Regex::new(&format!(r"\b(?:{})\b", alts.join("|")))
                .map_err(|e| format!("{owner}: {e}"))?;
            rules.push(Rule {
                category: category(&r.category, &owner)?,
                name: r.name,
                directions: r.directions,
                score: r.score,
                regex,
            });
        }
        let mut pii = Vec::new();
        for p in file.pii {
            let owner = format!("pii rule for {:?}", p.category);
            score_ok(p.score, &owner)?;
            let entities = p
                .entities
                .iter()
                .map(|e| {
                    Entity::parse(e).ok_or_else(|| {
                        format!(
                            "{owner}: unknown entity {e:?}; known: {}",
                            Entity::ALL.map(|e| e.name()).join(", ")
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            pii.push(PiiRule {
                category: category(&p.category, &owner)?,
                directions: p.directions,
                score: p.score,
                entities,
            });
        }
        Ok(Self { rules, pii })
    }

    /// Scores (0 where nothing matched) and hits for `original` / `normalized`.
    pub fn apply(
        &self,
        original: &str,
        normalized: &Normalized,
        direction: Direction,
    ) -> ([f32; N_CATEGORIES], Vec<Hit>) {
        let mut scores = [0f32; N_CATEGORIES];
        let mut hits = Vec::new();
        for r in self
            .rules
            .iter()
            .filter(|r| r.directions.contains(&direction))
        {
            for m in r.regex.find_iter(&normalized.text) {
                let c = r.category.index();
                scores[c] = scores[c].max(r.score);
                if let Some(span) = normalized.original_span(m.range()) {
                    hits.push(Hit {
                        category: r.category,
                        span,
                        placeholder: "[REDACTED]",
                        rule: r.name.clone(),
                    });
                }
            }
        }
        let active: Vec<&PiiRule> = self
            .pii
            .iter()
            .filter(|p| p.directions.contains(&direction))
            .collect();
        if !active.is_empty() {
            // The privacy anonymizer's recognizers, so both layers agree on what
            // personal data is.
            let found = crate::privacy::global().analyze(original);
            for p in active {
                for m in found.iter().filter(|m| p.entities.contains(&m.entity)) {
                    let c = p.category.index();
                    scores[c] = scores[c].max(p.score);
                    hits.push(Hit {
                        category: p.category,
                        span: m.start..m.end,
                        placeholder: m.entity.placeholder(),
                        rule: format!("pii:{}", m.entity.name()),
                    });
                }
            }
        }
        (scores, hits)
    }
}
