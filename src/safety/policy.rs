//! The policy in `safety/policy.toml`: for each category and direction, a threshold
//! and an action; plus the texts used for refusals and replacement answers.
//!
//! Applying the policy to a set of scores gives a [`Decision`]. When several
//! categories fire, the strongest action wins: `block` > `rewrite` (replace) >
//! `rewrite` (redact) > `escalate` > `allow`; escalation is kept alongside any of
//! them, so a blocked item can still be queued for review.

use std::collections::BTreeMap;
use std::ops::Range;

use serde::{Deserialize, Serialize};

use super::category::{Category, Direction, N_CATEGORIES};
use super::rules::Hit;

/// What to do when a category's score reaches its threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ActionKind {
    /// Nothing.
    Allow,
    /// Queue for human review; deliver or hold as the rule says.
    Escalate,
    /// Redact the matched spans, or replace the answer with `reply`.
    Rewrite,
    /// Refuse: the model never sees the prompt; the answer is cut.
    Block,
}

impl ActionKind {
    /// The name in files and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Escalate => "escalate",
            Self::Rewrite => "rewrite",
            Self::Block => "block",
        }
    }
}

fn half() -> f32 {
    0.5
}

/// One category's rule for one direction.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// The action.
    pub action: ActionKind,
    /// Score at or above which it applies.
    #[serde(default = "half")]
    pub threshold: f32,
    /// For `rewrite`: the key of a reply in `[replies]` that replaces the answer;
    /// without it, the matched spans are redacted.
    #[serde(default)]
    pub reply: Option<String>,
    /// For `escalate`: hold the answer until reviewed instead of delivering it.
    #[serde(default)]
    pub hold: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct CategoryRules {
    input: Option<Rule>,
    output: Option<Rule>,
}

/// Streaming checks.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamSettings {
    /// A streamed answer is checked every this many new characters (and at the end);
    /// text is delivered once checked.
    pub chunk_chars: usize,
    /// Each check looks at this many characters, reaching back over text already
    /// delivered, so that an unsafe phrase split across chunks is still seen.
    pub window_chars: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    refusal: String,
    held: String,
    #[serde(default)]
    replies: BTreeMap<String, String>,
    stream: StreamSettings,
    categories: BTreeMap<String, CategoryRules>,
}

/// The validated policy.
#[derive(Debug, Clone)]
pub struct Policy {
    /// The answer when something is blocked.
    pub refusal: String,
    /// The answer while an escalated item is held for review.
    pub held: String,
    replies: BTreeMap<String, String>,
    /// Streaming checks.
    pub stream: StreamSettings,
    rules: [[Option<Rule>; 2]; N_CATEGORIES],
}

/// What to do with one text.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The strongest action.
    pub action: ActionKind,
    /// Categories whose score reached a non-`allow` threshold.
    pub categories: Vec<Category>,
    /// The text that replaces the answer (block, rewrite with a reply, held escalation).
    pub replacement: Option<String>,
    /// Spans to redact (rewrite without a reply), with their placeholders.
    pub redact: Vec<(Range<usize>, &'static str)>,
    /// Queue for human review.
    pub escalate: bool,
    /// Whether the model's text must not be delivered.
    pub withhold: bool,
    /// Withheld only because a rewrite found nothing to redact: a stream check may
    /// wait for more text (the span may be still to come) instead of cutting.
    pub nothing_to_redact: bool,
}

impl Decision {
    /// Nothing to do.
    pub fn allow() -> Self {
        Self {
            action: ActionKind::Allow,
            categories: Vec::new(),
            replacement: None,
            redact: Vec::new(),
            escalate: false,
            withhold: false,
            nothing_to_redact: false,
        }
    }
}

fn slot(d: Direction) -> usize {
    match d {
        Direction::Input => 0,
        Direction::Output => 1,
    }
}

impl Policy {
    /// Parses and validates `policy.toml` text.
    pub fn parse(text: &str) -> Result<Self, String> {
        let f: PolicyFile = toml::from_str(text).map_err(|e| e.to_string())?;
        if f.stream.chunk_chars == 0 || f.stream.window_chars < f.stream.chunk_chars {
            return Err(
                "stream: chunk_chars must be at least 1 and window_chars at least chunk_chars"
                    .into(),
            );
        }
        let mut rules: [[Option<Rule>; 2]; N_CATEGORIES] = Default::default();
        for (name, cr) in f.categories {
            let c = Category::parse(&name).ok_or_else(|| {
                format!(
                    "categories: unknown category {name:?}; known: {}",
                    Category::ALL.map(|c| c.name()).join(", ")
                )
            })?;
            for (dir, rule) in [(Direction::Input, cr.input), (Direction::Output, cr.output)] {
                let Some(rule) = rule else { continue };
                let at = format!("categories.{name}.{}", dir.name());
                if !(0.0..=1.0).contains(&rule.threshold) {
                    return Err(format!("{at}: threshold must be between 0 and 1"));
                }
                if let Some(r) = &rule.reply {
                    if !f.replies.contains_key(r) {
                        return Err(format!("{at}: reply {r:?} is not defined in [replies]"));
                    }
                    if rule.action != ActionKind::Rewrite {
                        return Err(format!("{at}: only `rewrite` takes a reply"));
                    }
                }
                if rule.hold && rule.action != ActionKind::Escalate {
                    return Err(format!("{at}: only `escalate` can hold"));
                }
                rules[c.index()][slot(dir)] = Some(rule);
            }
        }
        Ok(Self {
            refusal: f.refusal,
            held: f.held,
            replies: f.replies,
            stream: f.stream,
            rules,
        })
    }

    /// The rule for `c` in `d`, if any.
    pub fn rule(&self, c: Category, d: Direction) -> Option<&Rule> {
        self.rules[c.index()][slot(d)].as_ref()
    }

    /// Applies the policy to scores and rule hits of one text.
    pub fn decide(&self, d: Direction, scores: &[f32; N_CATEGORIES], hits: &[Hit]) -> Decision {
        let mut out = Decision::allow();
        let mut replace_with: Option<String> = None;
        let mut block = false;
        let mut hold = false;
        let mut unredactable = false;
        for c in Category::ALL {
            let Some(rule) = self.rule(c, d) else {
                continue;
            };
            if rule.action == ActionKind::Allow || scores[c.index()] < rule.threshold {
                continue;
            }
            out.categories.push(c);
            out.action = out.action.max(rule.action);
            match rule.action {
                ActionKind::Block => block = true,
                ActionKind::Escalate => {
                    out.escalate = true;
                    hold |= rule.hold;
                }
                ActionKind::Rewrite => match &rule.reply {
                    Some(key) => {
                        if replace_with.is_none() {
                            replace_with = self.replies.get(key).cloned();
                        }
                    }
                    None => {
                        let spans: Vec<_> = hits
                            .iter()
                            .filter(|h| h.category == c)
                            .map(|h| (h.span.clone(), h.placeholder))
                            .collect();
                        if spans.is_empty() {
                            // Nothing to redact: the classifier fired on the whole text.
                            unredactable = true;
                        }
                        out.redact.extend(spans);
                    }
                },
                ActionKind::Allow => {}
            }
        }
        if block {
            out.replacement = Some(self.refusal.clone());
            out.withhold = true;
        } else if let Some(r) = replace_with {
            out.replacement = Some(r);
            out.withhold = true;
        } else if unredactable {
            out.replacement = Some(self.refusal.clone());
            out.withhold = true;
            out.nothing_to_redact = !hold;
        } else if hold {
            out.replacement = Some(self.held.clone());
            out.withhold = true;
        }
        if out.withhold {
            out.redact.clear();
        }
        out.redact.sort_by_key(|(r, _)| r.start);
        out
    }
}

/// `text` with `spans` replaced by their placeholders (overlaps merged).
pub fn redact(text: &str, spans: &[(Range<usize>, &'static str)]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for (r, placeholder) in spans {
        if r.end <= at || r.end > text.len() || !text.is_char_boundary(r.end) {
            continue;
        }
        let start = r.start.max(at);
        if !text.is_char_boundary(start) {
            continue;
        }
        out.push_str(&text[at..start]);
        if start == r.start {
            out.push_str(placeholder);
        }
        at = r.end;
    }
    out.push_str(&text[at..]);
    out
}
