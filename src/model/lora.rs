//! LoRA adapters: the only trainable parameters in Tether.
//!
//! An adapter adds `scale · B·A·x` to a frozen projection `W·x`, with `A` of shape
//! `(rank, in)` and `B` of shape `(out, rank)`, `scale = alpha / rank`. `B` starts at
//! zero so a fresh adapter leaves the model unchanged. Adapters are separate from the
//! base weights: several can be applied on the fly to one base in memory, one per
//! sequence, and any of them can be merged into dense weights.

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::sync::Mutex;

use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::config::LlamaConfig;
use super::error::{Error, Result};

/// A projection inside a transformer block that an adapter can target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// Query projection.
    Q,
    /// Key projection.
    K,
    /// Value projection.
    V,
    /// Attention output projection.
    O,
    /// SwiGLU gate projection.
    Gate,
    /// SwiGLU up projection.
    Up,
    /// SwiGLU down projection.
    Down,
}

impl Target {
    /// Every target, in block order.
    pub const ALL: [Target; 7] = [
        Target::Q,
        Target::K,
        Target::V,
        Target::O,
        Target::Gate,
        Target::Up,
        Target::Down,
    ];

    fn index(self) -> usize {
        self as usize
    }

    /// The short name used in configs and tensor names.
    pub fn name(self) -> &'static str {
        match self {
            Target::Q => "q",
            Target::K => "k",
            Target::V => "v",
            Target::O => "o",
            Target::Gate => "gate",
            Target::Up => "up",
            Target::Down => "down",
        }
    }

    /// `(out, in)` of this projection in a model of shape `cfg`.
    pub fn dims(self, cfg: &LlamaConfig) -> (usize, usize) {
        let q = cfg.num_heads * cfg.head_dim;
        let kv = cfg.num_kv_heads * cfg.head_dim;
        match self {
            Target::Q => (q, cfg.hidden_size),
            Target::K | Target::V => (kv, cfg.hidden_size),
            Target::O => (cfg.hidden_size, q),
            Target::Gate | Target::Up => (cfg.intermediate_size, cfg.hidden_size),
            Target::Down => (cfg.hidden_size, cfg.intermediate_size),
        }
    }
}

impl FromStr for Target {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Target::ALL
            .into_iter()
            .find(|t| t.name() == s.trim().to_ascii_lowercase())
            .ok_or_else(|| {
                format!("unknown LoRA target {s:?} (expected q, k, v, o, gate, up, down)")
            })
    }
}

/// Shape and regularisation of an adapter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraConfig {
    /// Inner dimension of `A` and `B`.
    pub rank: usize,
    /// Numerator of the scale `alpha / rank`.
    pub alpha: f64,
    /// Dropout probability on the adapter's input while training.
    pub dropout: f64,
    /// Projections that get an adapter.
    pub targets: Vec<Target>,
    /// Adapt only the last this-many layers (0: every layer). Gradients then stop at
    /// the first adapted layer, which makes training steps much cheaper.
    #[serde(default)]
    pub layers: usize,
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self {
            rank: 8,
            alpha: 16.0,
            dropout: 0.0,
            targets: Target::ALL.to_vec(),
            layers: 0,
        }
    }
}

impl LoraConfig {
    /// `alpha / rank`.
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }

    /// Whether layer `i` of a `num_layers`-layer model gets adapters.
    pub fn adapts_layer(&self, i: usize, num_layers: usize) -> bool {
        self.layers == 0 || i + self.layers.min(num_layers) >= num_layers
    }

    /// Rejects configurations that cannot train.
    pub fn validate(&self) -> Result<()> {
        if self.rank == 0 {
            return Err(Error::Adapter("rank must be at least 1".into()));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::Adapter(format!(
                "dropout {} must be in [0, 1)",
                self.dropout
            )));
        }
        if self.targets.is_empty() {
            return Err(Error::Adapter("no target modules".into()));
        }
        Ok(())
    }
}

/// One adapted projection: `A (rank, in)` and `B (out, rank)`.
#[derive(Debug, Clone)]
pub struct LoraPair {
    /// Down-projection `(rank, in)`.
    pub a: Tensor,
    /// Up-projection `(out, rank)`.
    pub b: Tensor,
}

/// Source of dropout masks while training; seeded so runs are reproducible.
#[derive(Debug)]
pub struct Dropout {
    p: f64,
    rng: Mutex<ChaCha8Rng>,
}

impl Dropout {
    /// Dropout with probability `p`, masks drawn from `seed`.
    pub fn new(p: f64, seed: u64) -> Self {
        Self {
            p,
            rng: Mutex::new(ChaCha8Rng::seed_from_u64(seed)),
        }
    }

    fn apply(&self, x: &Tensor) -> Result<Tensor> {
        if self.p <= 0.0 {
            return Ok(x.clone());
        }
        let keep = 1.0 - self.p;
        let n = x.elem_count();
        let mask: Vec<f32> = {
            let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
            (0..n)
                .map(|_| {
                    if rng.random::<f64>() < keep {
                        (1.0 / keep) as f32
                    } else {
                        0.0
                    }
                })
                .collect()
        };
        let mask = Tensor::from_vec(mask, x.shape(), x.device())?;
        Ok(x.mul(&mask)?)
    }
}

/// A set of LoRA pairs for every layer and target of one model.
#[derive(Debug)]
pub struct LoraAdapter {
    config: LoraConfig,
    layers: Vec<[Option<LoraPair>; 7]>,
    vars: Vec<Var>,
}

/// Metadata key of adapters written before the format name became the key.
const FORMAT_KEY: &str = "format";
const FORMAT: &str = "tether-lora-v1";
/// Metadata key of the config in adapters written before the format name became the key.
const CONFIG_KEY: &str = "lora_config";

fn tensor_name(layer: usize, target: Target, ab: &str) -> String {
    format!("layers.{layer}.{}.lora_{ab}", target.name())
}

impl LoraAdapter {
    /// A fresh trainable adapter: `A` drawn uniformly in ±1/√in (PEFT's Kaiming-uniform
    /// default) from `seed`, `B` zero, so the adapted model starts equal to the base.
    pub fn new_trainable(
        config: &LoraConfig,
        model: &LlamaConfig,
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        config.validate()?;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut layers = Vec::with_capacity(model.num_layers);
        let mut vars = Vec::new();
        for layer in 0..model.num_layers {
            let mut slots: [Option<LoraPair>; 7] = Default::default();
            if !config.adapts_layer(layer, model.num_layers) {
                layers.push(slots);
                continue;
            }
            // Block order, whatever order the config lists targets in, so that `vars`
            // and `named_tensors` agree.
            for t in Target::ALL
                .into_iter()
                .filter(|t| config.targets.contains(t))
            {
                let (out, inp) = t.dims(model);
                let bound = 1.0 / (inp as f64).sqrt();
                let a: Vec<f32> = (0..config.rank * inp)
                    .map(|_| rng.random_range(-bound..bound) as f32)
                    .collect();
                let a = Var::from_tensor(&Tensor::from_vec(a, (config.rank, inp), device)?)?;
                let b = Var::zeros((out, config.rank), DType::F32, device)?;
                slots[t.index()] = Some(LoraPair {
                    a: a.as_tensor().clone(),
                    b: b.as_tensor().clone(),
                });
                vars.push(a);
                vars.push(b);
            }
            layers.push(slots);
        }
        Ok(Self {
            config: config.clone(),
            layers,
            vars,
        })
    }

    /// The adapter's configuration.
    pub fn config(&self) -> &LoraConfig {
        &self.config
    }

    /// `alpha / rank`.
    pub fn scale(&self) -> f64 {
        self.config.scale()
    }

    /// Number of layers the adapter covers.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// The trainable variables (empty for an adapter loaded for serving).
    pub fn vars(&self) -> &[Var] {
        &self.vars
    }

    /// The pair for `target` in `layer`, if the adapter has one.
    pub fn pair(&self, layer: usize, target: Target) -> Option<&LoraPair> {
        self.layers.get(layer)?[target.index()].as_ref()
    }

    /// Every tensor with its stable name, in layer and target order.
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (i, slots) in self.layers.iter().enumerate() {
            for t in Target::ALL {
                if let Some(p) = &slots[t.index()] {
                    out.push((tensor_name(i, t, "a"), p.a.clone()));
                    out.push((tensor_name(i, t, "b"), p.b.clone()));
                }
            }
        }
        out
    }

    /// Number of trainable scalars.
    pub fn parameter_count(&self) -> usize {
        self.named_tensors()
            .iter()
            .map(|(_, t)| t.elem_count())
            .sum()
    }

    /// A trainable copy of this adapter: training continues from its values (a child
    /// version starts where its parent's adapter ended).
    pub fn to_trainable(&self) -> Result<Self> {
        let mut layers = Vec::with_capacity(self.layers.len());
        let mut vars = Vec::new();
        for slots in &self.layers {
            let mut out: [Option<LoraPair>; 7] = Default::default();
            for (o, s) in out.iter_mut().zip(slots) {
                if let Some(p) = s {
                    let a = Var::from_tensor(&p.a.detach().copy()?)?;
                    let b = Var::from_tensor(&p.b.detach().copy()?)?;
                    *o = Some(LoraPair {
                        a: a.as_tensor().clone(),
                        b: b.as_tensor().clone(),
                    });
                    vars.push(a);
                    vars.push(b);
                }
            }
            layers.push(out);
        }
        Ok(Self {
            config: self.config.clone(),
            layers,
            vars,
        })
    }

    /// The first layer with an adapted projection (gradients need not reach below it).
    pub fn first_layer(&self) -> usize {
        self.layers
            .iter()
            .position(|s| s.iter().any(Option::is_some))
            .unwrap_or(self.layers.len())
    }

    /// A frozen copy (plain tensors, no variables) for serving.
    pub fn freeze(&self) -> Result<Self> {
        let mut layers = Vec::with_capacity(self.layers.len());
        for slots in &self.layers {
            let mut out: [Option<LoraPair>; 7] = Default::default();
            for (o, s) in out.iter_mut().zip(slots) {
                if let Some(p) = s {
                    *o = Some(LoraPair {
                        a: p.a.detach().copy()?,
                        b: p.b.detach().copy()?,
                    });
                }
            }
            layers.push(out);
        }
        Ok(Self {
            config: self.config.clone(),
            layers,
            vars: Vec::new(),
        })
    }

    /// `scale · (dropout(x) Aᵀ) Bᵀ` for `x` of shape `(tokens, in)`, or `None` when the
    /// adapter does not target this projection.
    pub(crate) fn delta(
        &self,
        layer: usize,
        target: Target,
        x: &Tensor,
        dropout: Option<&Dropout>,
    ) -> Result<Option<Tensor>> {
        let Some(p) = self.pair(layer, target) else {
            return Ok(None);
        };
        let x = match dropout {
            Some(d) => d.apply(x)?,
            None => x.clone(),
        };
        let h = x.matmul(&p.a.t()?)?.matmul(&p.b.t()?)?;
        Ok(Some((h * self.scale())?))
    }

    /// `scale · B A`, the dense `(out, in)` update this pair adds to its projection.
    pub fn dense_update(&self, layer: usize, target: Target) -> Result<Option<Tensor>> {
        match self.pair(layer, target) {
            None => Ok(None),
            Some(p) => Ok(Some((p.b.matmul(&p.a)? * self.scale())?)),
        }
    }

    /// Writes the adapter as one safetensors file whose metadata holds the config.
    /// The write is atomic: a reader never sees a half-written file.
    pub fn save(&self, path: &Path) -> Result<()> {
        // One metadata entry: safetensors writes the metadata map in its iteration
        // order, and a std HashMap's order differs between instances, so two entries
        // would make the bytes (and the content hash) of one adapter vary by chance.
        let mut meta = HashMap::new();
        meta.insert(
            FORMAT.to_string(),
            serde_json::to_string(&self.config).map_err(|e| Error::Adapter(e.to_string()))?,
        );
        let named: Vec<(String, Tensor)> = self
            .named_tensors()
            .into_iter()
            .map(|(n, t)| Ok((n, t.detach().contiguous()?)))
            .collect::<Result<_>>()?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| Error::io("create", dir, e))?;
        safetensors::tensor::serialize_to_file(named, Some(meta), tmp.path())
            .map_err(|e| Error::Adapter(format!("writing {}: {e}", path.display())))?;
        tmp.persist(path)
            .map_err(|e| Error::io("write", path, e.error))?;
        Ok(())
    }

    /// Reads an adapter written by [`LoraAdapter::save`], checking it fits `model`.
    pub fn load(path: &Path, model: &LlamaConfig, device: &Device) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io("read", path, e))?;
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
            .map_err(|e| Error::Adapter(format!("{} is not safetensors: {e}", path.display())))?;
        let meta = header.metadata().clone().unwrap_or_default();
        // Current files: {FORMAT: config}; earlier ones: {format: FORMAT, lora_config: config}.
        let config_text = match meta.get(FORMAT) {
            Some(c) => c,
            None if meta.get(FORMAT_KEY).map(String::as_str) == Some(FORMAT) => meta
                .get(CONFIG_KEY)
                .ok_or_else(|| Error::Adapter("adapter metadata lacks its config".into()))?,
            None => {
                return Err(Error::Adapter(format!(
                    "{} is not a Tether LoRA adapter (no {FORMAT} metadata)",
                    path.display()
                )))
            }
        };
        let config: LoraConfig =
            serde_json::from_str(config_text).map_err(|e| Error::Adapter(e.to_string()))?;
        config.validate()?;
        let mut tensors = candle_core::safetensors::load_buffer(&bytes, device)?;
        let mut layers = Vec::with_capacity(model.num_layers);
        for i in 0..model.num_layers {
            let mut slots: [Option<LoraPair>; 7] = Default::default();
            if !config.adapts_layer(i, model.num_layers) {
                layers.push(slots);
                continue;
            }
            for &t in &config.targets {
                let (out, inp) = t.dims(model);
                let mut take = |ab: &str, shape: [usize; 2]| -> Result<Tensor> {
                    let name = tensor_name(i, t, ab);
                    let x = tensors
                        .remove(&name)
                        .ok_or_else(|| Error::MissingTensor(name.clone()))?;
                    if x.dims() != shape {
                        return Err(Error::ShapeMismatch {
                            name,
                            expected: shape.to_vec(),
                            found: x.dims().to_vec(),
                        });
                    }
                    Ok(x.to_dtype(DType::F32)?)
                };
                let a = take("a", [config.rank, inp])?;
                let b = take("b", [out, config.rank])?;
                slots[t.index()] = Some(LoraPair { a, b });
            }
            layers.push(slots);
        }
        if let Some(extra) = tensors.keys().next() {
            return Err(Error::Adapter(format!(
                "tensor {extra} does not belong to a model with {} layers",
                model.num_layers
            )));
        }
        Ok(Self {
            config,
            layers,
            vars: Vec::new(),
        })
    }
}
