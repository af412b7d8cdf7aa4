//! Offline work on the safety folder: training the classifier from labelled
//! JSONL, classifying JSONL, and measuring precision, recall and ROC-AUC.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::category::{Category, Direction, N_CATEGORIES};
use super::classifier::{self, read_examples, roc_auc, Classifier, Example, TrainOptions};
use super::Cascade;

/// Every `*.jsonl` file in `dir`, sorted, read as labelled examples.
pub fn read_dir_examples(dir: &Path) -> Result<(Vec<Example>, Vec<PathBuf>), classifier::Error> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| classifier::Error::Data(format!("cannot read {}: {e}", dir.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(classifier::Error::Data(format!(
            "{} has no .jsonl files",
            dir.display()
        )));
    }
    let mut all = Vec::new();
    for f in &files {
        all.extend(read_examples(f)?);
    }
    Ok((all, files))
}

/// Trains on every JSONL file in `data` and writes the weights to `out`.
pub fn train(data: &Path, out: &Path, o: &TrainOptions) -> Result<usize, classifier::Error> {
    let (examples, _) = read_dir_examples(data)?;
    let model = Classifier::train(&examples, o)?;
    model.save(out)?;
    Ok(examples.len())
}

/// The texts the answer probe trains on: from the training folder `data`, every
/// answer file (`answers_*`) and the external dev half (`external_*`) whole, and every
/// third line of the rest (prompts, which read as harmful or harmless text all the
/// same); and every file of `model_answers` whole (the served model's own answers to
/// harmless prompts, `safety/data/probe/`), when given.
pub fn probe_training_set(
    data: &Path,
    model_answers: Option<&Path>,
) -> Result<Vec<Example>, classifier::Error> {
    let (_, files) = read_dir_examples(data)?;
    let mut out = Vec::new();
    if let Some(dir) = model_answers {
        out.extend(read_dir_examples(dir)?.0);
    }
    for f in files {
        let name = f.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let whole = name.starts_with("answers_") || name.starts_with("external_");
        let examples = read_examples(&f)?;
        out.extend(
            examples
                .into_iter()
                .enumerate()
                .filter(|(i, _)| whole || i % 3 == 0)
                .map(|(_, e)| e),
        );
    }
    Ok(out)
}

/// Runs `model` over `examples` as answers and fits the answer probe.
pub fn train_probe(
    model: &crate::model::LoadedModel,
    examples: &[Example],
    o: &super::probe::TrainOptions,
) -> Result<super::Probe, super::probe::Error> {
    let texts: Vec<&str> = examples.iter().map(|e| e.text.as_str()).collect();
    let per_text = super::probe::answer_states(model, &texts, o.layer, o.max_tokens, &o.prefixes)?;
    let (mut states, mut labels) = (Vec::new(), Vec::new());
    for (e, taps) in examples.iter().zip(per_text) {
        labels.extend(std::iter::repeat_n(!e.labels.is_empty(), taps.len()));
        states.extend(taps);
    }
    let mut probe = super::Probe::train(&states, &labels, o)?;
    probe.model_layers = model.llama.config().num_layers;
    Ok(probe)
}

/// The score at which a category counts as flagged in moderation results and
/// evaluations: the threshold of the rule for `d` when it acts, else that of the
/// other direction's rule when it acts, else 0.5.
pub fn flag_threshold(cascade: &Cascade, c: Category, d: Direction) -> f32 {
    let other = match d {
        Direction::Input => Direction::Output,
        Direction::Output => Direction::Input,
    };
    let acting = |d| {
        cascade
            .policy
            .rule(c, d)
            .filter(|r| r.action != super::ActionKind::Allow)
            .map(|r| r.threshold)
    };
    acting(d).or_else(|| acting(other)).unwrap_or(0.5)
}

/// One moderation result, shaped like OpenAI's.
#[derive(Debug, Clone, Serialize)]
pub struct Moderation {
    /// Whether any category is flagged.
    pub flagged: bool,
    /// Per category, flagged or not.
    pub categories: serde_json::Map<String, serde_json::Value>,
    /// Per category, the calibrated score.
    pub category_scores: serde_json::Map<String, serde_json::Value>,
}

/// Moderation result for one text.
pub fn moderate(cascade: &Cascade, scores: &[f32; N_CATEGORIES], d: Direction) -> Moderation {
    let mut categories = serde_json::Map::new();
    let mut category_scores = serde_json::Map::new();
    let mut flagged = false;
    for c in Category::ALL {
        let s = scores[c.index()];
        let f = s >= flag_threshold(cascade, c, d);
        flagged |= f;
        categories.insert(c.name().into(), f.into());
        category_scores.insert(
            c.name().into(),
            serde_json::Number::from_f64(f64::from(s)).map_or(serde_json::Value::Null, Into::into),
        );
    }
    Moderation {
        flagged,
        categories,
        category_scores,
    }
}

/// Reads `{"text": ...}` lines and writes one moderation result (plus the policy's
/// `action`) per line. Returns the lines read.
///
/// With `model` (answers only), each text's hidden states are computed after a user
/// turn and the cascade's probe reads them, as in the server.
pub fn classify(
    cascade: &Cascade,
    d: Direction,
    model: Option<&crate::model::LoadedModel>,
    input: impl BufRead,
    output: impl Write,
) -> std::io::Result<usize> {
    let layer = cascade.probe().map(|p| p.layer);
    crate::jsonl::map_texts(input, output, |t| {
        let state = match (model, layer) {
            (Some(m), Some(layer)) if d == Direction::Output => {
                match super::probe::answer_state(m, super::probe::USER_TURNS[0], t, layer, 256) {
                    Ok(s) => Some(s),
                    Err(e) => {
                        tracing::warn!(
                            "no hidden states for a text, judged without the probe: {e}"
                        );
                        None
                    }
                }
            }
            _ => None,
        };
        let a = cascade.assess_answer(t, d, state.as_ref());
        let decision = cascade.policy.decide(d, &a.scores, &a.hits);
        let mut v = serde_json::to_value(moderate(cascade, &a.scores, d))
            .unwrap_or(serde_json::Value::Null);
        v["action"] = decision.action.name().into();
        v
    })
}

/// Precision, recall and ROC-AUC of one category.
#[derive(Debug, Clone, Serialize)]
pub struct CategoryReport {
    /// The category.
    pub category: String,
    /// Positive examples.
    pub positives: usize,
    /// Of those flagged, the fraction that were positive.
    pub precision: f64,
    /// Of the positives, the fraction flagged.
    pub recall: f64,
    /// ROC-AUC of the score (None without both classes).
    pub roc_auc: Option<f64>,
}

/// An evaluation over a labelled set.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Examples.
    pub examples: usize,
    /// Per category.
    pub categories: Vec<CategoryReport>,
    /// Mean ROC-AUC over categories that have one (each category's score, its texts
    /// against every other text).
    pub macro_roc_auc: f64,
    /// Mean over categories of the ROC-AUC of the top score, each category's unsafe
    /// texts against the safe ones: whether harm in that category is told from safe
    /// text, whichever category it is filed under.
    pub macro_harm_roc_auc: Option<f64>,
    /// Fraction of benign (unlabelled) examples flagged in any category.
    pub benign_false_positive_rate: Option<f64>,
    /// Unsafe (any label) against safe, whatever the category.
    pub binary: Binary,
}

/// Unsafe against safe, with 95% intervals: what a user sees is whether a text is
/// stopped, not which category stopped it.
#[derive(Debug, Clone, Serialize)]
pub struct Binary {
    /// Examples with a label.
    pub unsafe_examples: usize,
    /// Examples without one.
    pub safe_examples: usize,
    /// Unsafe examples flagged in some category.
    pub recall: f64,
    /// Its Wilson interval.
    pub recall_ci: (f64, f64),
    /// Safe examples flagged in some category.
    pub safe_flagged: f64,
    /// Its Wilson interval.
    pub safe_flagged_ci: (f64, f64),
    /// ROC-AUC of the highest category score (None without both classes).
    pub roc_auc: Option<f64>,
    /// Its interval (Hanley and McNeil's standard error, ±1.96 SE).
    pub roc_auc_ci: Option<(f64, f64)>,
}

/// Hanley–McNeil 95% interval of an ROC-AUC from `npos` positives, `nneg` negatives.
fn auc_interval(auc: f64, npos: usize, nneg: usize) -> (f64, f64) {
    let (a, m, n) = (auc, npos as f64, nneg as f64);
    let q1 = a / (2.0 - a);
    let q2 = 2.0 * a * a / (1.0 + a);
    let var = (a * (1.0 - a) + (m - 1.0) * (q1 - a * a) + (n - 1.0) * (q2 - a * a)) / (m * n);
    let se = var.max(0.0).sqrt();
    ((a - 1.96 * se).max(0.0), (a + 1.96 * se).min(1.0))
}

/// Scores `examples` with `cascade` as prompts (`Direction::Input`) or answers
/// (`Direction::Output`) and measures it.
pub fn evaluate(cascade: &Cascade, examples: &[Example], d: Direction) -> Report {
    let scores: Vec<[f32; N_CATEGORIES]> = examples
        .iter()
        .map(|e| cascade.assess(&e.text, d).scores)
        .collect();
    evaluate_scores(cascade, examples, &scores, d)
}

/// [`evaluate`] for answers with the probe as the server runs it: `model` computes
/// each answer's hidden states after a user turn, as the engine does while serving.
pub fn evaluate_with_probe(
    cascade: &Cascade,
    model: &crate::model::LoadedModel,
    examples: &[Example],
) -> Result<Report, super::probe::Error> {
    let Some(probe) = cascade.probe() else {
        return Err(super::probe::Error::Train(
            "the safety folder has no probe.safetensors".into(),
        ));
    };
    let texts: Vec<&str> = examples.iter().map(|e| e.text.as_str()).collect();
    let states: Vec<_> = super::probe::answer_states(model, &texts, probe.layer, 256, &[])?
        .into_iter()
        .filter_map(|mut taps| taps.pop())
        .collect();
    let scores: Vec<[f32; N_CATEGORIES]> = examples
        .iter()
        .zip(&states)
        .map(|(e, s)| {
            cascade
                .assess_answer(&e.text, Direction::Output, Some(s))
                .scores
        })
        .collect();
    Ok(evaluate_scores(
        cascade,
        examples,
        &scores,
        Direction::Output,
    ))
}

fn evaluate_scores(
    cascade: &Cascade,
    examples: &[Example],
    scores: &[[f32; N_CATEGORIES]],
    d: Direction,
) -> Report {
    let mut cats = Vec::new();
    let mut aucs = Vec::new();
    for c in Category::ALL {
        let t = flag_threshold(cascade, c, d);
        let labels: Vec<bool> = examples.iter().map(|e| e.has(c)).collect();
        let s: Vec<f32> = scores.iter().map(|s| s[c.index()]).collect();
        let flagged: Vec<bool> = s.iter().map(|&x| x >= t).collect();
        let tp = flagged
            .iter()
            .zip(&labels)
            .filter(|(f, l)| **f && **l)
            .count();
        let fp = flagged
            .iter()
            .zip(&labels)
            .filter(|(f, l)| **f && !**l)
            .count();
        let pos = labels.iter().filter(|l| **l).count();
        let auc = roc_auc(&s, &labels);
        if let Some(a) = auc {
            aucs.push(a);
        }
        cats.push(CategoryReport {
            category: c.name().into(),
            positives: pos,
            precision: if tp + fp == 0 {
                0.0
            } else {
                tp as f64 / (tp + fp) as f64
            },
            recall: if pos == 0 {
                0.0
            } else {
                tp as f64 / pos as f64
            },
            roc_auc: auc,
        });
    }
    let benign: Vec<usize> = (0..examples.len())
        .filter(|&i| examples[i].labels.is_empty())
        .collect();
    let fpr = (!benign.is_empty()).then(|| {
        let flagged = benign
            .iter()
            .filter(|&&i| {
                Category::ALL
                    .iter()
                    .any(|&c| scores[i][c.index()] >= flag_threshold(cascade, c, d))
            })
            .count();
        flagged as f64 / benign.len() as f64
    });
    let any_flagged = |i: usize| {
        Category::ALL
            .iter()
            .any(|&c| scores[i][c.index()] >= flag_threshold(cascade, c, d))
    };
    let unsafe_ix: Vec<usize> = (0..examples.len())
        .filter(|&i| !examples[i].labels.is_empty())
        .collect();
    let caught = unsafe_ix.iter().filter(|&&i| any_flagged(i)).count();
    let false_alarms = benign.iter().filter(|&&i| any_flagged(i)).count();
    let top: Vec<f32> = scores
        .iter()
        .map(|s| s.iter().copied().fold(0.0, f32::max))
        .collect();
    let is_unsafe: Vec<bool> = examples.iter().map(|e| !e.labels.is_empty()).collect();
    let bin_auc = roc_auc(&top, &is_unsafe);
    let harm_aucs: Vec<f64> = Category::ALL
        .iter()
        .filter_map(|&c| {
            let ix: Vec<usize> = (0..examples.len())
                .filter(|&i| examples[i].has(c) || examples[i].labels.is_empty())
                .collect();
            let s: Vec<f32> = ix.iter().map(|&i| top[i]).collect();
            let l: Vec<bool> = ix.iter().map(|&i| examples[i].has(c)).collect();
            roc_auc(&s, &l)
        })
        .collect();
    let macro_harm_roc_auc =
        (!harm_aucs.is_empty()).then(|| harm_aucs.iter().sum::<f64>() / harm_aucs.len() as f64);
    let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    let binary = Binary {
        unsafe_examples: unsafe_ix.len(),
        safe_examples: benign.len(),
        recall: ratio(caught, unsafe_ix.len()),
        recall_ci: crate::privacy::offline::wilson(caught, unsafe_ix.len()),
        safe_flagged: ratio(false_alarms, benign.len()),
        safe_flagged_ci: crate::privacy::offline::wilson(false_alarms, benign.len()),
        roc_auc: bin_auc,
        roc_auc_ci: bin_auc.map(|a| auc_interval(a, unsafe_ix.len(), benign.len())),
    };
    Report {
        binary,
        examples: examples.len(),
        categories: cats,
        macro_harm_roc_auc,
        macro_roc_auc: if aucs.is_empty() {
            0.0
        } else {
            aucs.iter().sum::<f64>() / aucs.len() as f64
        },
        benign_false_positive_rate: fpr,
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "| category | positives | precision | recall | ROC-AUC |")?;
        writeln!(f, "|---|---|---|---|---|")?;
        for c in &self.categories {
            writeln!(
                f,
                "| {} | {} | {:.3} | {:.3} | {} |",
                c.category,
                c.positives,
                c.precision,
                c.recall,
                c.roc_auc.map_or("-".into(), |a| format!("{a:.3}"))
            )?;
        }
        writeln!(
            f,
            "\nmacro ROC-AUC: {:.3} over {} examples",
            self.macro_roc_auc, self.examples
        )?;
        if let Some(a) = self.macro_harm_roc_auc {
            writeln!(
                f,
                "macro ROC-AUC of the top score, each category's unsafe texts against the safe ones: {a:.3}"
            )?;
        }
        if let Some(r) = self.benign_false_positive_rate {
            writeln!(f, "benign flagged (false-positive rate): {:.1}%", r * 100.0)?;
        }
        let b = &self.binary;
        writeln!(
            f,
            "unsafe against safe: {} unsafe flagged {:.1}% [{:.1}, {:.1}]; {} safe flagged {:.1}% [{:.1}, {:.1}]; ROC-AUC {}",
            b.unsafe_examples,
            b.recall * 100.0,
            b.recall_ci.0 * 100.0,
            b.recall_ci.1 * 100.0,
            b.safe_examples,
            b.safe_flagged * 100.0,
            b.safe_flagged_ci.0 * 100.0,
            b.safe_flagged_ci.1 * 100.0,
            match (b.roc_auc, b.roc_auc_ci) {
                (Some(a), Some((lo, hi))) => format!("{a:.3} [{lo:.3}, {hi:.3}]"),
                _ => "-".into(),
            }
        )?;
        Ok(())
    }
}
