//! The trained classifier: one-vs-rest logistic regression over hashed word
//! (1–2-gram) and character (3–5-gram) features of the normalised text, with
//! Platt scaling fitted on out-of-fold scores so each category's score is a
//! calibrated probability.
//!
//! Why this model (measured; see `safety/README.md`): it scores a 200-token prompt
//! in tens of microseconds on one core, which leaves the cascade far inside its
//! 2 ms budget, while character n-grams of the de-obfuscated text generalise to
//! misspellings and word forms that a lexicon misses.
//!
//! Weights are stored sparsely (only buckets seen in training) in a safetensors
//! file: `index` (U32, k), `weights` (F16, k × categories), `bias` and `platt`
//! (F32), with the feature settings in its metadata.

// Per-category loops index several parallel fixed-size arrays at once.
#![allow(clippy::needless_range_loop)]

use std::collections::HashMap;
use std::path::Path;

use half::f16;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use safetensors::tensor::{Dtype, TensorView};

use super::category::{Category, N_CATEGORIES};
use super::normalize::normalize;

/// Classifier errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing the weights file failed.
    #[error("classifier weights {path}: {message}")]
    File {
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// Training data is missing or malformed.
    #[error("training data: {0}")]
    Data(String),
}

/// One labelled text.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
pub struct Example {
    /// The text.
    pub text: String,
    /// Its categories (empty: benign).
    #[serde(default)]
    pub labels: Vec<String>,
}

impl Example {
    /// Whether it carries `c`.
    pub fn has(&self, c: Category) -> bool {
        self.labels.iter().any(|l| l == c.name())
    }
}

/// Reads JSONL examples, checking every label is a known category.
pub fn read_examples(path: &Path) -> Result<Vec<Example>, Error> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Data(format!("cannot read {}: {e}", path.display())))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let ex: Example = serde_json::from_str(line)
            .map_err(|e| Error::Data(format!("{}:{}: {e}", path.display(), i + 1)))?;
        if let Some(bad) = ex.labels.iter().find(|l| Category::parse(l).is_none()) {
            return Err(Error::Data(format!(
                "{}:{}: unknown category {bad:?}",
                path.display(),
                i + 1
            )));
        }
        out.push(ex);
    }
    Ok(out)
}

/// Hashed feature buckets of a text, per block, already normalised.
struct Features {
    words: Vec<u32>,
    chars: Vec<u32>,
}

fn fnv(prefix: u8, bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ u64::from(prefix);
    h = h.wrapping_mul(0x0100_0000_01b3);
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Feature-extraction settings (stored with the weights).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeatureSpec {
    /// log2 of the number of hash buckets.
    pub bits: u32,
}

impl Default for FeatureSpec {
    fn default() -> Self {
        Self { bits: 18 }
    }
}

impl FeatureSpec {
    fn extract(self, normalized: &str) -> Features {
        let mask = (1u64 << self.bits) - 1;
        let b = |h: u64| (h & mask) as u32;
        let words: Vec<&str> = normalized.split(' ').filter(|w| !w.is_empty()).collect();
        let mut wf = Vec::with_capacity(words.len() * 2);
        for (i, w) in words.iter().enumerate() {
            wf.push(b(fnv(1, w.as_bytes())));
            if let Some(next) = words.get(i + 1) {
                let mut h = fnv(2, w.as_bytes());
                h ^= fnv(3, next.as_bytes()).rotate_left(17);
                wf.push(b(h));
            }
        }
        let mut padded = Vec::with_capacity(normalized.len() + 2);
        padded.push(b' ');
        padded.extend_from_slice(normalized.as_bytes());
        padded.push(b' ');
        let mut cf = Vec::with_capacity(padded.len() * 3);
        for n in 3..=5usize {
            if padded.len() < n {
                continue;
            }
            for win in padded.windows(n) {
                cf.push(b(fnv(10 + n as u8, win)));
            }
        }
        Features {
            words: wf,
            chars: cf,
        }
    }
}

/// The trained model.
#[derive(Debug, Clone)]
pub struct Classifier {
    spec: FeatureSpec,
    /// `weights[bucket * N + c]`.
    weights: Vec<f32>,
    bias: [f32; N_CATEGORIES],
    /// Platt scaling per category: `p = sigmoid(a * z + b)`.
    platt: [(f32, f32); N_CATEGORIES],
}

fn sigmoid(z: f32) -> f32 {
    1.0 / (1.0 + (-z).exp())
}

/// Each block's features are scaled to unit length, but as if it had at least
/// `floor` features, so that a two-word text cannot reach a confident score from a
/// handful of n-grams.
fn block_scale(n: usize, floor: usize) -> f32 {
    if n == 0 {
        0.0
    } else {
        1.0 / (n.max(floor) as f32).sqrt()
    }
}

/// Floors for [`block_scale`]: about five words.
const WORD_FLOOR: usize = 9;
const CHAR_FLOOR: usize = 80;

/// Training settings.
#[derive(Debug, Clone, Copy)]
pub struct TrainOptions {
    /// Passes over the data.
    pub epochs: usize,
    /// Adagrad learning rate.
    pub learning_rate: f32,
    /// L2 penalty on the weights.
    pub l2: f32,
    /// Folds for the out-of-fold scores that calibration is fitted on.
    pub folds: usize,
    /// Shuffling seed.
    pub seed: u64,
    /// Features.
    pub spec: FeatureSpec,
    /// Cap on how much more a positive example weighs than a negative one.
    pub max_positive_weight: f32,
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self {
            epochs: 12,
            learning_rate: 0.2,
            l2: 1e-6,
            folds: 4,
            seed: 7,
            spec: FeatureSpec::default(),
            max_positive_weight: 1.0,
        }
    }
}

impl Classifier {
    fn raw(&self, f: &Features) -> [f32; N_CATEGORIES] {
        let mut z = self.bias;
        for (block, scale) in [
            (&f.words, block_scale(f.words.len(), WORD_FLOOR)),
            (&f.chars, block_scale(f.chars.len(), CHAR_FLOOR)),
        ] {
            let mut acc = [0f32; N_CATEGORIES];
            for &h in block.iter() {
                let row = &self.weights[h as usize * N_CATEGORIES..][..N_CATEGORIES];
                for c in 0..N_CATEGORIES {
                    acc[c] += row[c];
                }
            }
            for c in 0..N_CATEGORIES {
                z[c] += acc[c] * scale;
            }
        }
        z
    }

    /// Calibrated probability per category for a normalised text.
    pub fn score_normalized(&self, normalized: &str) -> [f32; N_CATEGORIES] {
        let z = self.raw(&self.spec.extract(normalized));
        let mut p = [0f32; N_CATEGORIES];
        for c in 0..N_CATEGORIES {
            let (a, b) = self.platt[c];
            p[c] = sigmoid(a * z[c] + b);
        }
        p
    }

    /// Calibrated probability per category for raw text.
    pub fn score(&self, text: &str) -> [f32; N_CATEGORIES] {
        self.score_normalized(&normalize(text).text)
    }

    fn fit(spec: FeatureSpec, data: &[(Features, [f32; N_CATEGORIES])], o: &TrainOptions) -> Self {
        let dim = 1usize << spec.bits;
        let mut m = Classifier {
            spec,
            weights: vec![0.0; dim * N_CATEGORIES],
            bias: [0.0; N_CATEGORIES],
            platt: [(1.0, 0.0); N_CATEGORIES],
        };
        let mut g2 = vec![0f32; dim * N_CATEGORIES];
        let mut gb2 = [0f32; N_CATEGORIES];
        // Balance classes: positives weigh as much, in total, as negatives (capped).
        let mut pos = [0f32; N_CATEGORIES];
        for (_, y) in data {
            for c in 0..N_CATEGORIES {
                pos[c] += y[c];
            }
        }
        let n = data.len() as f32;
        let wpos: Vec<f32> = pos
            .iter()
            .map(|&p| {
                ((n - p) / p.max(1.0))
                    .clamp(1.0, 8.0)
                    .sqrt()
                    .min(o.max_positive_weight)
            })
            .collect();
        let mut order: Vec<usize> = (0..data.len()).collect();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(o.seed);
        for _ in 0..o.epochs {
            order.shuffle(&mut rng);
            for &i in &order {
                let (f, y) = &data[i];
                let z = m.raw(f);
                let mut g = [0f32; N_CATEGORIES];
                for c in 0..N_CATEGORIES {
                    let w = if y[c] > 0.5 { wpos[c] } else { 1.0 };
                    g[c] = (sigmoid(z[c]) - y[c]) * w;
                    gb2[c] += g[c] * g[c];
                    m.bias[c] -= o.learning_rate * g[c] / (gb2[c].sqrt() + 1e-6);
                }
                for (block, scale) in [
                    (&f.words, block_scale(f.words.len(), WORD_FLOOR)),
                    (&f.chars, block_scale(f.chars.len(), CHAR_FLOOR)),
                ] {
                    for &h in block.iter() {
                        let base = h as usize * N_CATEGORIES;
                        for c in 0..N_CATEGORIES {
                            let k = base + c;
                            let gk = g[c] * scale + o.l2 * m.weights[k];
                            g2[k] += gk * gk;
                            m.weights[k] -= o.learning_rate * gk / (g2[k].sqrt() + 1e-6);
                        }
                    }
                }
            }
        }
        m
    }

    /// Trains on `examples`: out-of-fold scores fit the calibration, then the
    /// final model is trained on everything.
    pub fn train(examples: &[Example], o: &TrainOptions) -> Result<Self, Error> {
        if examples.len() < 20 {
            return Err(Error::Data(format!(
                "{} examples are too few to train on",
                examples.len()
            )));
        }
        // Short texts carry little evidence either way; without short benign
        // examples the model scores "ok" or "not sure" by its intercept alone, which
        // the class balance pushes up. One seeded fragment (1-4 words) of every
        // benign example teaches it that short everyday text is benign.
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(o.seed ^ 0xf4a9);
        let mut fragments = Vec::new();
        for e in examples.iter().filter(|e| e.labels.is_empty()) {
            let words: Vec<&str> = e.text.split_whitespace().collect();
            if words.len() < 3 {
                continue;
            }
            let len = rng.random_range(1..=4usize).min(words.len() - 1);
            let start = rng.random_range(0..=words.len() - len);
            fragments.push(Example {
                text: words[start..start + len].join(" "),
                labels: Vec::new(),
            });
        }
        let data: Vec<(Features, [f32; N_CATEGORIES])> = examples
            .iter()
            .chain(&fragments)
            .map(|e| {
                let mut y = [0f32; N_CATEGORIES];
                for c in Category::ALL {
                    if e.has(c) {
                        y[c.index()] = 1.0;
                    }
                }
                (o.spec.extract(&normalize(&e.text).text), y)
            })
            .collect();
        for c in Category::ALL {
            if !data.iter().any(|(_, y)| y[c.index()] > 0.5) {
                return Err(Error::Data(format!("no example is labelled {c}")));
            }
        }
        // Out-of-fold raw scores for calibration.
        let folds = o.folds.max(2);
        let mut oof: Vec<[f32; N_CATEGORIES]> = vec![[0.0; N_CATEGORIES]; data.len()];
        let mut idx: Vec<usize> = (0..data.len()).collect();
        idx.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(o.seed ^ 0x5eed));
        let fold_of: HashMap<usize, usize> = idx
            .iter()
            .enumerate()
            .map(|(k, &i)| (i, k % folds))
            .collect();
        for k in 0..folds {
            let train: Vec<(Features, [f32; N_CATEGORIES])> = data
                .iter()
                .enumerate()
                .filter(|(i, _)| fold_of[i] != k)
                .map(|(_, (f, y))| {
                    (
                        Features {
                            words: f.words.clone(),
                            chars: f.chars.clone(),
                        },
                        *y,
                    )
                })
                .collect();
            let m = Self::fit(o.spec, &train, o);
            for (i, (f, _)) in data.iter().enumerate() {
                if fold_of[&i] == k {
                    oof[i] = m.raw(f);
                }
            }
        }
        let mut model = Self::fit(o.spec, &data, o);
        for c in 0..N_CATEGORIES {
            let zs: Vec<(f32, f32)> = oof
                .iter()
                .zip(&data)
                .map(|(z, (_, y))| (z[c], y[c]))
                .collect();
            model.platt[c] = platt(&zs);
        }
        Ok(model)
    }

    /// Writes the weights (only non-zero buckets) as safetensors.
    pub fn save(&self, path: &Path) -> Result<(), Error> {
        let err = |message: String| Error::File {
            path: path.display().to_string(),
            message,
        };
        let dim = 1usize << self.spec.bits;
        let mut index: Vec<u8> = Vec::new();
        let mut weights: Vec<u8> = Vec::new();
        let mut k = 0usize;
        for h in 0..dim {
            let row = &self.weights[h * N_CATEGORIES..][..N_CATEGORIES];
            if row.iter().all(|w| f16::from_f32(*w) == f16::ZERO) {
                continue;
            }
            index.extend_from_slice(&(h as u32).to_le_bytes());
            for w in row {
                weights.extend_from_slice(&f16::from_f32(*w).to_le_bytes());
            }
            k += 1;
        }
        let bias: Vec<u8> = self.bias.iter().flat_map(|b| b.to_le_bytes()).collect();
        let platt: Vec<u8> = self
            .platt
            .iter()
            .flat_map(|(a, b)| [a.to_le_bytes(), b.to_le_bytes()])
            .flatten()
            .collect();
        fn view(dtype: Dtype, shape: Vec<usize>, data: &[u8]) -> Result<TensorView<'_>, String> {
            TensorView::new(dtype, shape, data).map_err(|e| e.to_string())
        }
        let tensors = vec![
            ("index", view(Dtype::U32, vec![k], &index).map_err(err)?),
            (
                "weights",
                view(Dtype::F16, vec![k, N_CATEGORIES], &weights).map_err(err)?,
            ),
            (
                "bias",
                view(Dtype::F32, vec![N_CATEGORIES], &bias).map_err(err)?,
            ),
            (
                "platt",
                view(Dtype::F32, vec![N_CATEGORIES, 2], &platt).map_err(err)?,
            ),
        ];
        let categories: Vec<&str> = Category::ALL.iter().map(|c| c.name()).collect();
        let meta: HashMap<String, String> = [
            ("format".to_string(), "tether-safety-linear-v1".to_string()),
            ("bits".to_string(), self.spec.bits.to_string()),
            ("categories".to_string(), categories.join(",")),
        ]
        .into();
        let bytes = safetensors::serialize(tensors, Some(meta)).map_err(|e| err(e.to_string()))?;
        std::fs::write(path, bytes).map_err(|e| err(e.to_string()))
    }

    /// Reads weights written by [`Classifier::save`].
    pub fn load(path: &Path) -> Result<Self, Error> {
        let bytes = std::fs::read(path).map_err(|e| Error::File {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        Self::from_bytes(&bytes).map_err(|message| Error::File {
            path: path.display().to_string(),
            message,
        })
    }

    /// Parses weights from memory.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        let (_, meta) =
            safetensors::SafeTensors::read_metadata(bytes).map_err(|e| e.to_string())?;
        let meta = meta.metadata().clone().unwrap_or_default();
        if meta.get("format").map(String::as_str) != Some("tether-safety-linear-v1") {
            return Err("not a tether safety classifier (format metadata missing)".into());
        }
        let expected: Vec<&str> = Category::ALL.iter().map(|c| c.name()).collect();
        if meta.get("categories").map(String::as_str) != Some(expected.join(",").as_str()) {
            return Err("the file was trained for different categories".into());
        }
        let bits: u32 = meta
            .get("bits")
            .and_then(|b| b.parse().ok())
            .filter(|b| (8..=24).contains(b))
            .ok_or("bad or missing `bits` metadata")?;
        let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| e.to_string())?;
        let get = |name: &str, dtype: Dtype| {
            let t = st.tensor(name).map_err(|e| format!("{name}: {e}"))?;
            if t.dtype() != dtype {
                return Err(format!(
                    "{name} has dtype {:?}, expected {dtype:?}",
                    t.dtype()
                ));
            }
            Ok(t)
        };
        let index = get("index", Dtype::U32)?;
        let weights = get("weights", Dtype::F16)?;
        let bias = get("bias", Dtype::F32)?;
        let platt = get("platt", Dtype::F32)?;
        let k = index.shape().first().copied().unwrap_or(0);
        if weights.shape() != [k, N_CATEGORIES]
            || bias.shape() != [N_CATEGORIES]
            || platt.shape() != [N_CATEGORIES, 2]
        {
            return Err("tensor shapes do not match".into());
        }
        let dim = 1usize << bits;
        let f32s = |d: &[u8]| -> Vec<f32> {
            d.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        };
        let mut m = Classifier {
            spec: FeatureSpec { bits },
            weights: vec![0.0; dim * N_CATEGORIES],
            bias: [0.0; N_CATEGORIES],
            platt: [(1.0, 0.0); N_CATEGORIES],
        };
        for (j, c) in index.data().chunks_exact(4).enumerate() {
            let h = u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as usize;
            if h >= dim {
                return Err(format!("bucket {h} is outside 2^{bits}"));
            }
            let row = &weights.data()[j * N_CATEGORIES * 2..][..N_CATEGORIES * 2];
            for (c, w) in row.chunks_exact(2).enumerate() {
                m.weights[h * N_CATEGORIES + c] = f16::from_le_bytes([w[0], w[1]]).to_f32();
            }
        }
        m.bias.copy_from_slice(&f32s(bias.data()));
        let p = f32s(platt.data());
        for c in 0..N_CATEGORIES {
            m.platt[c] = (p[2 * c], p[2 * c + 1]);
        }
        if m.platt
            .iter()
            .any(|(a, b)| !a.is_finite() || !b.is_finite())
        {
            return Err("calibration values are not finite".into());
        }
        Ok(m)
    }
}

/// Fits Platt scaling `sigmoid(a z + b)` to (score, label) pairs by Newton's method.
fn platt(zs: &[(f32, f32)]) -> (f32, f32) {
    let (mut a, mut b) = (1.0f64, 0.0f64);
    let npos = zs.iter().filter(|(_, y)| *y > 0.5).count() as f64;
    let nneg = zs.len() as f64 - npos;
    // Platt's smoothed targets keep the fit from diverging on separable data.
    let tp = (npos + 1.0) / (npos + 2.0);
    let tn = 1.0 / (nneg + 2.0);
    for _ in 0..100 {
        let (mut ga, mut gb, mut haa, mut hab, mut hbb) = (0.0, 0.0, 1e-9, 0.0, 1e-9);
        for &(z, y) in zs {
            let z = f64::from(z);
            let t = if y > 0.5 { tp } else { tn };
            let p = 1.0 / (1.0 + (-(a * z + b)).exp());
            let d = p - t;
            let w = p * (1.0 - p);
            ga += d * z;
            gb += d;
            haa += w * z * z;
            hab += w * z;
            hbb += w;
        }
        let det = haa * hbb - hab * hab;
        if det.abs() < 1e-12 {
            break;
        }
        let da = (hbb * ga - hab * gb) / det;
        let db = (haa * gb - hab * ga) / det;
        a -= da;
        b -= db;
        if da.abs() < 1e-7 && db.abs() < 1e-7 {
            break;
        }
    }
    if !a.is_finite() || !b.is_finite() || a <= 0.0 {
        return (1.0, 0.0);
    }
    (a as f32, b as f32)
}

/// Area under the ROC curve of `scores` against binary `labels` (ties count half).
pub fn roc_auc(scores: &[f32], labels: &[bool]) -> Option<f64> {
    let mut v: Vec<(f32, bool)> = scores.iter().copied().zip(labels.iter().copied()).collect();
    let npos = v.iter().filter(|x| x.1).count() as f64;
    let nneg = v.len() as f64 - npos;
    if npos == 0.0 || nneg == 0.0 {
        return None;
    }
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    // Rank-sum with average ranks for ties.
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < v.len() {
        let mut j = i;
        while j < v.len() && v[j].0 == v[i].0 {
            j += 1;
        }
        let avg = (i + j + 1) as f64 / 2.0;
        rank_sum += avg * v[i..j].iter().filter(|x| x.1).count() as f64;
        i = j;
    }
    Some((rank_sum - npos * (npos + 1.0) / 2.0) / (npos * nneg))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_of_perfect_random_and_inverted_rankings() {
        let l = [false, false, true, true];
        assert_eq!(roc_auc(&[0.1, 0.2, 0.8, 0.9], &l), Some(1.0));
        assert_eq!(roc_auc(&[0.5, 0.5, 0.5, 0.5], &l), Some(0.5));
        assert_eq!(roc_auc(&[0.9, 0.8, 0.2, 0.1], &l), Some(0.0));
        assert_eq!(roc_auc(&[0.1], &[true]), None);
    }

    #[test]
    fn platt_recovers_a_reasonable_slope() {
        let zs: Vec<(f32, f32)> = (0..200)
            .map(|i| {
                let z = (i as f32 - 100.0) / 20.0;
                (z, if (i * 7919) % 200 < i { 1.0 } else { 0.0 })
            })
            .collect();
        let (a, _) = platt(&zs);
        assert!(a > 0.0 && a.is_finite());
    }
}
