//! The cascade's second stage for answers: a logistic probe on the serving model's
//! own hidden states, which reads what an answer *does* (comply with harm, or refuse
//! and help) where the n-gram classifier reads its topic.
//!
//! The feature is the mean hidden state entering one layer (16 of SmolLM2-135M's 30)
//! over the answer's tokens, as the engine computes them while generating: the engine
//! keeps a running sum ([`crate::model::Tap`]), so judging costs a dot product. The
//! probe is trained offline (`tether safety train-probe`) on answers rendered the way
//! the server renders them, after a user turn, and stored as `probe.safetensors`
//! beside the classifier.
//!
//! How it changes the classifier's answer scores ([`Probe::temper`]): the probe gives
//! one harm probability `p`; the harm of the answer becomes `h = blend·p + (1−blend)·m`,
//! `m` being the classifier's largest content score, and every content category is
//! rescaled so the largest gets `h`. A refusal that names its topic keeps a low score;
//! harmful text without lexicon words rises, under the category the classifier
//! thinks closest. Rule scores (personal data, lexicons) are untouched.

use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::{Dtype, TensorView};

use super::category::{Category, N_CATEGORIES};
use crate::model::{ChatMessage, LoadedModel, Mode, Outputs, SeqInput, Tap};

/// File name inside the safety folder.
pub const PROBE_FILE: &str = "probe.safetensors";

const FORMAT: &str = "tether-safety-probe-v1";

/// Errors reading, writing or training a probe.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read, written or parsed.
    #[error("{path}: {message}")]
    File {
        /// Which file.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// Training could not run.
    #[error("training the probe: {0}")]
    Train(String),
    /// The model failed.
    #[error(transparent)]
    Model(#[from] crate::model::Error),
}

/// A trained probe.
#[derive(Debug, Clone, PartialEq)]
pub struct Probe {
    /// The layer whose input states it reads.
    pub layer: usize,
    /// One weight per hidden unit (standardisation folded in).
    pub weights: Vec<f32>,
    /// The intercept.
    pub bias: f32,
    /// The probe's share of an answer's harm score (the rest is the classifier's).
    pub blend: f32,
    /// Answers shorter than this many tokens are judged by the classifier alone: the
    /// mean of a few states says little.
    pub min_rows: usize,
    /// Layers of the model it was trained on (a different model is refused).
    pub model_layers: usize,
}

/// How a probe is fitted.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// Which layer's input to read.
    pub layer: usize,
    /// Inverse L2 strength, as scikit-learn's `C` (smaller: simpler).
    pub c: f64,
    /// See [`Probe::blend`].
    pub blend: f32,
    /// See [`Probe::min_rows`].
    pub min_rows: usize,
    /// Answer tokens kept per text.
    pub max_tokens: usize,
    /// Besides each whole answer, its first this-many tokens are training rows too
    /// (with the answer's label), so that a streamed check part-way through an answer
    /// is judged by a probe that has seen partial answers.
    pub prefixes: Vec<usize>,
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self {
            layer: 16,
            c: 0.05,
            blend: 0.7,
            min_rows: 16,
            max_tokens: 256,
            prefixes: vec![16, 32, 64],
        }
    }
}

/// User turns put before the training answers, in turn: the probe must read the
/// answer whatever was asked, and the server's answers always follow a user turn.
pub const USER_TURNS: [&str; 6] = [
    "Can you help me with this?",
    "Answer my question.",
    "Please write it out in full.",
    "What do you think?",
    "Tell me more.",
    "Go on, I'm listening.",
];

/// The hidden states a probe reads for `answer`, computed the way the engine
/// computes them while serving: the chat template with a user turn, then the answer,
/// whose tokens' states entering `layer` are summed.
pub fn answer_state(
    model: &LoadedModel,
    user: &str,
    answer: &str,
    layer: usize,
    max_tokens: usize,
) -> Result<Tap, Error> {
    let mut taps = answer_prefix_states(model, user, answer, layer, max_tokens, &[])?;
    Ok(taps.pop().unwrap_or_else(|| Tap::new(layer)))
}

/// [`answer_state`] over the answer's first `prefixes` tokens (those shorter than the
/// answer), then over the whole answer (last), from one pass: what a streamed check
/// sees part-way through the answer, and at its end.
pub fn answer_prefix_states(
    model: &LoadedModel,
    user: &str,
    answer: &str,
    layer: usize,
    max_tokens: usize,
    prefixes: &[usize],
) -> Result<Vec<Tap>, Error> {
    let mut tokens = model.encode_chat(&[ChatMessage::new("user", user)])?;
    let prompt = tokens.len();
    let mut ids = model.tokenizer.encode(answer)?;
    ids.truncate(max_tokens);
    if ids.is_empty() {
        return Ok(vec![Tap::new(layer)]);
    }
    let n = ids.len();
    tokens.extend(ids);
    let h = model.llama.forward(
        &mut [SeqInput {
            tokens: &tokens,
            cache: None,
            adapter: None,
            tap: None,
        }],
        Outputs::HiddenBefore(layer),
        Mode::Serve,
    )?;
    let rows = || -> candle_core::Result<Vec<Vec<f32>>> {
        h.narrow(0, prompt, n)?
            .to_dtype(candle_core::DType::F32)?
            .to_vec2()
    };
    let rows = rows().map_err(crate::model::Error::from)?;
    let mut ends: Vec<usize> = prefixes
        .iter()
        .copied()
        .filter(|&p| p > 0 && p < n)
        .collect();
    ends.push(n);
    let mut sum = vec![0f32; rows[0].len()];
    let mut out = Vec::with_capacity(ends.len());
    let mut at = 0;
    for end in ends {
        for row in &rows[at..end] {
            for (a, b) in sum.iter_mut().zip(row) {
                *a += b;
            }
        }
        at = end;
        out.push(Tap {
            layer,
            sum: sum.clone(),
            rows: end,
        });
    }
    Ok(out)
}

/// [`answer_prefix_states`] for many answers, with the training user turns in
/// rotation: per answer, its prefixes' states then the whole answer's.
pub fn answer_states(
    model: &LoadedModel,
    answers: &[&str],
    layer: usize,
    max_tokens: usize,
    prefixes: &[usize],
) -> Result<Vec<Vec<Tap>>, Error> {
    answers
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let user = USER_TURNS[i % USER_TURNS.len()];
            answer_prefix_states(model, user, a, layer, max_tokens, prefixes)
        })
        .collect()
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

impl Probe {
    /// The harm probability of an answer whose states entering [`Probe::layer`] sum
    /// to `tap` (`None`: too few tokens yet, or states of another size).
    pub fn score(&self, tap: &Tap) -> Option<f32> {
        if tap.layer != self.layer
            || tap.rows < self.min_rows.max(1)
            || tap.sum.len() != self.weights.len()
        {
            return None;
        }
        let dot: f64 = tap
            .sum
            .iter()
            .zip(&self.weights)
            .map(|(s, w)| f64::from(*s) * f64::from(*w))
            .sum();
        Some(sigmoid(dot / tap.rows as f64 + f64::from(self.bias)) as f32)
    }

    /// Rescales classifier scores `p` of an answer by the probe's harm probability
    /// `harm` (see the module docs).
    pub fn temper(&self, p: &mut [f32; N_CATEGORIES], harm: f32) {
        let content = |c: &Category| *c != Category::PromptInjection;
        let m = Category::ALL
            .iter()
            .filter(|c| content(c))
            .map(|c| p[c.index()])
            .fold(0f32, f32::max);
        let h = self.blend * harm + (1.0 - self.blend) * m;
        for c in Category::ALL.iter().filter(|c| content(c)) {
            let i = c.index();
            p[i] = if m > 0.0 { h * p[i] / m } else { 0.0 };
        }
        if m <= 0.0 {
            // No category at all from the classifier: harm goes where it does most
            // damage to let through.
            p[Category::Violence.index()] = h;
        }
    }

    /// Whether it was trained for a model of this shape.
    pub fn fits(&self, layers: usize, hidden: usize) -> bool {
        self.model_layers == layers && self.weights.len() == hidden && self.layer < layers
    }

    /// Fits a probe: standardised features, L2-regularised logistic regression by
    /// Newton's method (577 unknowns for SmolLM2: exact in a few steps, where
    /// gradient descent needs a step size tuned per data set).
    pub fn train(states: &[Tap], labels: &[bool], o: &TrainOptions) -> Result<Self, Error> {
        let rows: Vec<(Vec<f64>, bool)> = states
            .iter()
            .zip(labels)
            .filter(|(t, _)| t.rows > 0)
            .map(|(t, &y)| {
                let n = t.rows as f64;
                (t.sum.iter().map(|x| f64::from(*x) / n).collect(), y)
            })
            .collect();
        let n = rows.len();
        let d = rows.first().map_or(0, |r| r.0.len());
        let pos = rows.iter().filter(|r| r.1).count();
        if n < 10 || pos == 0 || pos == n || rows.iter().any(|r| r.0.len() != d) {
            return Err(Error::Train(format!(
                "need both labels among at least 10 answers of one width ({n} answers, \
                 {pos} unsafe)"
            )));
        }
        let mut mean = vec![0f64; d];
        for (x, _) in &rows {
            for (m, v) in mean.iter_mut().zip(x) {
                *m += v / n as f64;
            }
        }
        let mut sd = vec![0f64; d];
        for (x, _) in &rows {
            for ((s, v), m) in sd.iter_mut().zip(x).zip(&mean) {
                *s += (v - m).powi(2) / n as f64;
            }
        }
        let sd: Vec<f64> = sd.iter().map(|v| v.sqrt().max(1e-6)).collect();
        // Standardised rows with a constant 1 for the intercept.
        let z: Vec<Vec<f64>> = rows
            .iter()
            .map(|(x, _)| {
                x.iter()
                    .zip(&mean)
                    .zip(&sd)
                    .map(|((v, m), s)| (v - m) / s)
                    .chain([1.0])
                    .collect()
            })
            .collect();
        let y: Vec<f64> = rows.iter().map(|r| f64::from(u8::from(r.1))).collect();
        // scikit-learn minimises ½|w|² + C·Σ loss; per example that is a ridge of
        // 1/(C·n) on the weights (not the intercept).
        let ridge = 1.0 / (o.c * n as f64);
        let k = d + 1;
        let mut w = vec![0f64; k];
        for _ in 0..30 {
            let mut grad = vec![0f64; k];
            let mut hess = vec![0f64; k * k];
            for (zi, yi) in z.iter().zip(&y) {
                let p = sigmoid(zi.iter().zip(&w).map(|(a, b)| a * b).sum());
                let (g, h) = ((p - yi) / n as f64, (p * (1.0 - p)).max(1e-9) / n as f64);
                for a in 0..k {
                    grad[a] += g * zi[a];
                    let ha = h * zi[a];
                    let row = &mut hess[a * k..a * k + a + 1];
                    for (b, cell) in row.iter_mut().enumerate() {
                        *cell += ha * zi[b];
                    }
                }
            }
            for a in 0..d {
                grad[a] += ridge * w[a];
                hess[a * k + a] += ridge;
            }
            hess[d * k + d] += 1e-9;
            let step = cholesky_solve(&mut hess, &grad, k)
                .ok_or_else(|| Error::Train("the Hessian is not positive definite".into()))?;
            let mut moved = 0f64;
            for (wi, s) in w.iter_mut().zip(&step) {
                *wi -= s;
                moved = moved.max(s.abs());
            }
            if moved < 1e-7 {
                break;
            }
        }
        // Fold the standardisation into the weights: w·(x−μ)/σ + b.
        let weights: Vec<f32> = (0..d).map(|a| (w[a] / sd[a]) as f32).collect();
        let bias = w[d] - (0..d).map(|a| w[a] * mean[a] / sd[a]).sum::<f64>();
        Ok(Self {
            layer: o.layer,
            weights,
            bias: bias as f32,
            blend: o.blend,
            min_rows: o.min_rows,
            model_layers: 0,
        })
    }

    /// Writes the probe as safetensors.
    pub fn save(&self, path: &Path) -> Result<(), Error> {
        let err = |message: String| Error::File {
            path: path.display().to_string(),
            message,
        };
        let weights: Vec<u8> = self.weights.iter().flat_map(|w| w.to_le_bytes()).collect();
        let bias = self.bias.to_le_bytes();
        fn view(shape: Vec<usize>, data: &[u8]) -> Result<TensorView<'_>, String> {
            TensorView::new(Dtype::F32, shape, data).map_err(|e| e.to_string())
        }
        let tensors = vec![
            (
                "weights",
                view(vec![self.weights.len()], &weights).map_err(err)?,
            ),
            ("bias", view(vec![1], &bias).map_err(err)?),
        ];
        let meta: HashMap<String, String> = [
            ("format", FORMAT.to_string()),
            ("layer", self.layer.to_string()),
            ("blend", self.blend.to_string()),
            ("min_rows", self.min_rows.to_string()),
            ("model_layers", self.model_layers.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let bytes = safetensors::serialize(tensors, Some(meta)).map_err(|e| err(e.to_string()))?;
        std::fs::write(path, bytes).map_err(|e| err(e.to_string()))
    }

    /// Reads a probe written by [`Probe::save`].
    pub fn load(path: &Path) -> Result<Self, Error> {
        let err = |message: String| Error::File {
            path: path.display().to_string(),
            message,
        };
        let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
        Self::from_bytes(&bytes).map_err(err)
    }

    /// Parses a probe from memory.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        let (_, meta) =
            safetensors::SafeTensors::read_metadata(bytes).map_err(|e| e.to_string())?;
        let meta = meta.metadata().clone().unwrap_or_default();
        if meta.get("format").map(String::as_str) != Some(FORMAT) {
            return Err("not a tether safety probe (format metadata missing)".into());
        }
        fn field<T: std::str::FromStr>(
            meta: &HashMap<String, String>,
            k: &str,
        ) -> Result<T, String> {
            meta.get(k)
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("bad or missing `{k}` metadata"))
        }
        let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| e.to_string())?;
        let floats = |name: &str| -> Result<Vec<f32>, String> {
            let t = st.tensor(name).map_err(|e| format!("{name}: {e}"))?;
            if t.dtype() != Dtype::F32 || t.shape().len() != 1 {
                return Err(format!("{name} must be a vector of f32"));
            }
            Ok(t.data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect())
        };
        let weights = floats("weights")?;
        let bias = floats("bias")?;
        let [bias] = bias.as_slice() else {
            return Err("bias must hold one number".into());
        };
        let blend: f32 = field(&meta, "blend")?;
        if weights.is_empty() || !(0.0..=1.0).contains(&blend) {
            return Err("empty weights, or a blend outside 0..1".into());
        }
        if weights.iter().chain([bias]).any(|w| !w.is_finite()) {
            return Err("weights must be finite".into());
        }
        Ok(Self {
            layer: field(&meta, "layer")?,
            weights,
            bias: *bias,
            blend,
            min_rows: field(&meta, "min_rows")?,
            model_layers: field(&meta, "model_layers")?,
        })
    }
}

/// Solves `a·x = b` for a symmetric positive definite `a` whose lower triangle is
/// filled (row-major, `k × k`); `a` is overwritten by its Cholesky factor.
fn cholesky_solve(a: &mut [f64], b: &[f64], k: usize) -> Option<Vec<f64>> {
    for j in 0..k {
        let mut s = a[j * k + j];
        for p in 0..j {
            s -= a[j * k + p] * a[j * k + p];
        }
        if s <= 0.0 || !s.is_finite() {
            return None;
        }
        let l = s.sqrt();
        a[j * k + j] = l;
        for i in j + 1..k {
            let mut s = a[i * k + j];
            for p in 0..j {
                s -= a[i * k + p] * a[j * k + p];
            }
            a[i * k + j] = s / l;
        }
    }
    let mut y = vec![0f64; k];
    for i in 0..k {
        let s: f64 = (0..i).map(|p| a[i * k + p] * y[p]).sum();
        y[i] = (b[i] - s) / a[i * k + i];
    }
    let mut x = vec![0f64; k];
    for i in (0..k).rev() {
        let s: f64 = (i + 1..k).map(|p| a[p * k + i] * x[p]).sum();
        x[i] = (y[i] - s) / a[i * k + i];
    }
    Some(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tap(v: &[f32]) -> Tap {
        Tap {
            layer: 16,
            sum: v.to_vec(),
            rows: 1,
        }
    }

    #[test]
    fn newton_fits_a_separable_direction_and_survives_a_round_trip() {
        // Unsafe rows lean along the first unit; the second is noise.
        let mut states = Vec::new();
        let mut labels = Vec::new();
        for i in 0..200 {
            let y = i % 2 == 0;
            let noise = ((i * 37) % 11) as f32 / 11.0 - 0.5;
            states.push(tap(&[if y { 1.0 } else { -1.0 } + noise * 0.8, noise]));
            labels.push(y);
        }
        let mut p = Probe::train(
            &states,
            &labels,
            &TrainOptions {
                min_rows: 1,
                c: 10.0,
                ..Default::default()
            },
        )
        .unwrap();
        p.model_layers = 30;
        assert!(p.score(&tap(&[1.0, 0.0])).unwrap() > 0.9);
        assert!(p.score(&tap(&[-1.0, 0.0])).unwrap() < 0.1);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(PROBE_FILE);
        p.save(&path).unwrap();
        assert_eq!(Probe::load(&path).unwrap(), p);
        // Too few rows, another layer or another width: no score.
        let mut short = tap(&[1.0, 0.0]);
        short.rows = 0;
        assert_eq!(p.score(&short), None);
        assert_eq!(p.score(&tap(&[1.0, 0.0, 0.0])), None);
    }

    #[test]
    fn temper_lowers_a_topic_without_harm_and_raises_harm_without_a_topic() {
        let p = Probe {
            layer: 16,
            weights: vec![0.0],
            bias: 0.0,
            blend: 0.7,
            min_rows: 1,
            model_layers: 30,
        };
        let mut refusal = [0f32; N_CATEGORIES];
        refusal[Category::SelfHarm.index()] = 0.9;
        p.temper(&mut refusal, 0.02);
        assert!(refusal[Category::SelfHarm.index()] < 0.3);
        let mut quiet = [0.01f32; N_CATEGORIES];
        quiet[Category::Illicit.index()] = 0.1;
        p.temper(&mut quiet, 0.99);
        assert!(quiet[Category::Illicit.index()] > 0.7);
        assert!(quiet[Category::Hate.index()] < 0.2);
    }
}
