//! The Llama-family transformer: one implementation that serves (fast kernels, KV
//! cache, batches of sequences of different lengths) and trains (differentiable ops,
//! LoRA adapters as the only trainable tensors).
//!
//! Batches are *packed*: the tokens of every sequence are concatenated into one
//! `(tokens, hidden)` matrix so that every projection is a single matrix product, and
//! only attention runs per sequence, against that sequence's own cache.

use candle_core::{DType, Device, Tensor, D};

use std::sync::Arc;

use super::blockq::BlockMatrix;
use super::cache::KvCache;
use super::config::LlamaConfig;
use super::error::{Error, Result};
use super::lora::{Dropout, LoraAdapter, Target};
use super::rope::Rope;
use super::weights::{BaseLinear, ComputePath, TensorName, WeightSource};

/// One sequence's part of a batched forward pass.
pub struct SeqInput<'a> {
    /// New tokens to run (at least one).
    pub tokens: &'a [u32],
    /// The sequence's cache: read for earlier positions and extended with `tokens`.
    /// `None` runs the tokens as a whole sequence starting at position 0.
    pub cache: Option<&'a mut KvCache>,
    /// Adapter applied to this sequence only (`None`: the base model).
    pub adapter: Option<&'a LoraAdapter>,
    /// Adds the hidden states of this sequence's new tokens, as they enter one
    /// layer, to a running sum (the safety probe reads an answer's mean state).
    pub tap: Option<&'a mut Tap>,
}

/// A running sum of the hidden states that enter `layer`, over every token a
/// sequence has run with this tap. It costs one small copy per tapped row; the states
/// are the ones the forward pass computes anyway.
#[derive(Debug, Clone, PartialEq)]
pub struct Tap {
    /// Which layer's input is summed (0: the embeddings).
    pub layer: usize,
    /// The sum, `hidden_size` numbers (empty until the first row).
    pub sum: Vec<f32>,
    /// How many rows were added.
    pub rows: usize,
}

impl Tap {
    /// An empty tap on `layer`.
    pub fn new(layer: usize) -> Self {
        Self {
            layer,
            sum: Vec::new(),
            rows: 0,
        }
    }

    /// Adds `rows` (row-major, `width` numbers each).
    fn add(&mut self, rows: &[f32], width: usize) -> Result<()> {
        if self.sum.is_empty() {
            self.sum = vec![0.0; width];
        }
        if self.sum.len() != width || !rows.len().is_multiple_of(width) {
            return Err(Error::InvalidArgument(format!(
                "a tap of {} numbers given rows of {width}",
                self.sum.len()
            )));
        }
        for row in rows.chunks_exact(width) {
            for (a, b) in self.sum.iter_mut().zip(row) {
                *a += b;
            }
            self.rows += 1;
        }
        Ok(())
    }
}

/// Which positions get logits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outputs {
    /// The last new token of each sequence: `(sequences, vocab)`.
    LastToken,
    /// Every new token, packed in input order: `(total tokens, vocab)`.
    AllTokens,
    /// These rows of the packed batch, in this order: `(rows, vocab)`. Training uses
    /// it to skip the output head on prompt tokens.
    Rows(Vec<u32>),
    /// No logits: the packed hidden states `(total tokens, hidden)` that enter this
    /// layer (sequences without caches only). Training computes the frozen layers
    /// below the adapters once per run this way and resumes with
    /// [`Llama::forward_from`].
    HiddenBefore(usize),
}

/// Serving (fast kernels) or training (differentiable ops).
#[derive(Debug, Clone, Copy)]
pub enum Mode<'a> {
    /// candle's fused kernels, which have no backward pass.
    Serve,
    /// Differentiable ops throughout, optional LoRA dropout.
    Train {
        /// Dropout on adapter inputs.
        dropout: Option<&'a Dropout>,
    },
}

impl Mode<'_> {
    fn training(&self) -> bool {
        matches!(self, Mode::Train { .. })
    }
    fn dropout(&self) -> Option<&Dropout> {
        match self {
            Mode::Train { dropout } => *dropout,
            Mode::Serve => None,
        }
    }
}

#[derive(Debug, Clone)]
struct RmsNorm {
    weight: Tensor,
    eps: f32,
}

impl RmsNorm {
    fn forward(&self, x: &Tensor, differentiable: bool) -> Result<Tensor> {
        Ok(if differentiable {
            candle_nn::ops::rms_norm_slow(x, &self.weight, self.eps)?
        } else {
            candle_nn::ops::rms_norm(x, &self.weight, self.eps)?
        })
    }
}

#[derive(Debug, Clone)]
struct Block {
    attn_norm: RmsNorm,
    q: BaseLinear,
    k: BaseLinear,
    v: BaseLinear,
    o: BaseLinear,
    ffn_norm: RmsNorm,
    gate: BaseLinear,
    up: BaseLinear,
    down: BaseLinear,
}

impl Block {
    fn linear(&self, t: Target) -> &BaseLinear {
        match t {
            Target::Q => &self.q,
            Target::K => &self.k,
            Target::V => &self.v,
            Target::O => &self.o,
            Target::Gate => &self.gate,
            Target::Up => &self.up,
            Target::Down => &self.down,
        }
    }
    fn linear_mut(&mut self, t: Target) -> &mut BaseLinear {
        match t {
            Target::Q => &mut self.q,
            Target::K => &mut self.k,
            Target::V => &mut self.v,
            Target::O => &mut self.o,
            Target::Gate => &mut self.gate,
            Target::Up => &mut self.up,
            Target::Down => &mut self.down,
        }
    }
}

/// The token embedding: a dense matrix, or quantized blocks whose rows are
/// dequantized on lookup (shared with a tied output head).
#[derive(Debug, Clone)]
enum Embedding {
    Dense(Tensor),
    Blocks(Arc<BlockMatrix>),
}

impl Embedding {
    fn lookup(&self, ids: &[u32], device: &Device) -> Result<Tensor> {
        match self {
            Embedding::Dense(t) => {
                let n = ids.len();
                let idx = Tensor::from_vec(ids.to_vec(), n, device)?;
                Ok(t.index_select(&idx, 0)?.to_dtype(DType::F32)?)
            }
            Embedding::Blocks(b) => b.gather_rows(ids, device),
        }
    }

    fn rows_cols(&self) -> (usize, usize) {
        match self {
            Embedding::Dense(t) => (t.dim(0).unwrap_or(0), t.dim(1).unwrap_or(0)),
            Embedding::Blocks(b) => (b.rows(), b.cols()),
        }
    }

    fn size_in_bytes(&self) -> usize {
        match self {
            Embedding::Dense(t) => t.elem_count() * t.dtype().size_in_bytes(),
            Embedding::Blocks(b) => b.size_in_bytes(),
        }
    }

    fn dense_f32(&self, device: &Device) -> Result<Tensor> {
        match self {
            Embedding::Dense(t) => Ok(t.to_dtype(DType::F32)?),
            Embedding::Blocks(b) => b.dequantize(device),
        }
    }
}

/// Which adapter applies to which rows of the packed batch.
enum Routing<'a> {
    /// One adapter (or none) for every row.
    Uniform(Option<&'a LoraAdapter>),
    /// `(first row, rows, adapter)` runs.
    Segments(Vec<(usize, usize, Option<&'a LoraAdapter>)>),
}

/// A Llama-family causal language model with frozen base weights.
#[derive(Debug, Clone)]
pub struct Llama {
    cfg: LlamaConfig,
    embed: Embedding,
    blocks: Vec<Block>,
    norm: RmsNorm,
    lm_head: BaseLinear,
    rope: Rope,
    device: Device,
    compute: ComputePath,
}

fn names(gguf: impl Into<String>, hf: impl Into<String>) -> TensorName {
    TensorName {
        gguf: gguf.into(),
        hf: hf.into(),
    }
}

impl Llama {
    /// Builds the model from a checkpoint's tensors.
    pub(crate) fn load(
        src: &mut WeightSource,
        cfg: &LlamaConfig,
        compute: ComputePath,
        device: &Device,
    ) -> Result<Self> {
        let h = cfg.hidden_size;
        let q_dim = cfg.num_heads * cfg.head_dim;
        let kv_dim = cfg.num_kv_heads * cfg.head_dim;
        let embed_name = names("token_embd.weight", "model.embed_tokens.weight");
        let embed_shape = [cfg.vocab_size, h];
        let embed = match compute {
            ComputePath::Qf32 => match src.qtensor(&embed_name, &embed_shape, device)? {
                Some(q) => match BlockMatrix::from_qtensor(&q)? {
                    Some(b) => Embedding::Blocks(Arc::new(b)),
                    None => Embedding::Dense(q.dequantize(device)?),
                },
                None => Embedding::Dense(src.dense(&embed_name, &embed_shape, device)?),
            },
            ComputePath::F32 => Embedding::Dense(src.dense(&embed_name, &embed_shape, device)?),
            // The other paths halve a dense embedding to f16 (rows are looked up, then
            // widened back to f32).
            ComputePath::F16 | ComputePath::Q8 => Embedding::Dense(
                src.dense(&embed_name, &embed_shape, device)?
                    .to_dtype(DType::F16)?,
            ),
        };
        let norm = |src: &mut WeightSource, n: TensorName| -> Result<RmsNorm> {
            Ok(RmsNorm {
                weight: src.dense(&n, &[h], device)?,
                eps: cfg.rms_norm_eps as f32,
            })
        };
        let mut blocks = Vec::with_capacity(cfg.num_layers);
        for i in 0..cfg.num_layers {
            let g = |s: &str| format!("blk.{i}.{s}");
            let f = |s: &str| format!("model.layers.{i}.{s}");
            let mut lin = |gg: &str, hf: &str, dims: (usize, usize), bias: bool| {
                let w = names(g(&format!("{gg}.weight")), f(&format!("{hf}.weight")));
                let b = names(g(&format!("{gg}.bias")), f(&format!("{hf}.bias")));
                src.linear(&w, bias.then_some(&b), dims, compute, device)
            };
            let bias = cfg.attention_bias;
            let q = lin("attn_q", "self_attn.q_proj", (q_dim, h), bias)?;
            let k = lin("attn_k", "self_attn.k_proj", (kv_dim, h), bias)?;
            let v = lin("attn_v", "self_attn.v_proj", (kv_dim, h), bias)?;
            let o = lin("attn_output", "self_attn.o_proj", (h, q_dim), false)?;
            let gate = lin(
                "ffn_gate",
                "mlp.gate_proj",
                (cfg.intermediate_size, h),
                false,
            )?;
            let up = lin("ffn_up", "mlp.up_proj", (cfg.intermediate_size, h), false)?;
            let down = lin(
                "ffn_down",
                "mlp.down_proj",
                (h, cfg.intermediate_size),
                false,
            )?;
            let attn_norm = norm(
                src,
                names(g("attn_norm.weight"), f("input_layernorm.weight")),
            )?;
            let ffn_norm = norm(
                src,
                names(g("ffn_norm.weight"), f("post_attention_layernorm.weight")),
            )?;
            blocks.push(Block {
                attn_norm,
                q,
                k,
                v,
                o,
                ffn_norm,
                gate,
                up,
                down,
            });
        }
        let final_norm = norm(src, names("output_norm.weight", "model.norm.weight"))?;
        let head_name = names("output.weight", "lm_head.weight");
        let lm_head = if cfg.tie_word_embeddings || !src.contains(&head_name) {
            if !cfg.tie_word_embeddings {
                return Err(Error::MissingTensor(format!(
                    "{} (in {}; the config does not tie embeddings)",
                    head_name.hf,
                    src.describe()
                )));
            }
            match (&embed, &*src) {
                (Embedding::Blocks(b), _) => BaseLinear::from_blocks(b.clone()),
                // Keep the (possibly quantized) embedding for the q8 path.
                (_, WeightSource::Gguf { .. }) if compute == ComputePath::Q8 => {
                    src.linear(&embed_name, None, (cfg.vocab_size, h), compute, device)?
                }
                (Embedding::Dense(t), _) => BaseLinear::from_dense(t.clone(), None, compute)?,
            }
        } else {
            src.linear(&head_name, None, (cfg.vocab_size, h), compute, device)?
        };
        Ok(Self {
            cfg: cfg.clone(),
            embed,
            blocks,
            norm: final_norm,
            lm_head,
            rope: Rope::new(cfg),
            device: device.clone(),
            compute,
        })
    }

    /// The model's hyperparameters.
    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The compute path chosen at load time.
    pub fn compute(&self) -> ComputePath {
        self.compute
    }

    /// A fresh cache for one sequence.
    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.cfg.num_layers)
    }

    /// Whether gradients can flow through every base layer (needed to train adapters).
    pub fn is_trainable(&self) -> bool {
        self.blocks
            .iter()
            .all(|b| Target::ALL.iter().all(|&t| b.linear(t).is_differentiable()))
    }

    /// Number of parameters in the base model (tied embeddings counted once).
    pub fn parameter_count(&self) -> usize {
        let lin =
            |l: &BaseLinear| l.in_dim() * l.out_dim() + l.bias().map_or(0, |b| b.elem_count());
        let blocks: usize = self
            .blocks
            .iter()
            .map(|b| {
                Target::ALL.iter().map(|&t| lin(b.linear(t))).sum::<usize>()
                    + b.attn_norm.weight.elem_count()
                    + b.ffn_norm.weight.elem_count()
            })
            .sum();
        let head = if self.cfg.tie_word_embeddings {
            0
        } else {
            lin(&self.lm_head)
        };
        let (rows, cols) = self.embed.rows_cols();
        rows * cols + blocks + self.norm.weight.elem_count() + head
    }

    /// Bytes held by the base weights (a tied embedding counted once per copy held).
    pub fn size_in_bytes(&self) -> usize {
        let blocks: usize = self
            .blocks
            .iter()
            .map(|b| {
                Target::ALL
                    .iter()
                    .map(|&t| b.linear(t).size_in_bytes())
                    .sum::<usize>()
            })
            .sum();
        let head = match (self.cfg.tie_word_embeddings, self.compute) {
            // The tied head shares the embedding's storage.
            (true, ComputePath::F32 | ComputePath::F16) => 0,
            (true, ComputePath::Qf32) if matches!(self.embed, Embedding::Blocks(_)) => 0,
            _ => self.lm_head.size_in_bytes(),
        };
        self.embed.size_in_bytes() + blocks + head
    }

    /// Every base tensor by name, as stored (for inspection and tests; these are the
    /// frozen weights the learner must never change).
    pub fn base_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = vec![("embed".to_string(), self.embed.dense_f32(&self.device)?)];
        for (i, b) in self.blocks.iter().enumerate() {
            out.push((format!("layers.{i}.attn_norm"), b.attn_norm.weight.clone()));
            out.push((format!("layers.{i}.ffn_norm"), b.ffn_norm.weight.clone()));
            for t in Target::ALL {
                out.push((format!("layers.{i}.{}", t.name()), b.linear(t).dense_f32()?));
            }
        }
        out.push(("norm".to_string(), self.norm.weight.clone()));
        out.push(("lm_head".to_string(), self.lm_head.dense_f32()?));
        Ok(out)
    }

    /// A new model whose weights have `adapter` merged in: `W + scale · B A`.
    pub fn merge(&self, adapter: &LoraAdapter) -> Result<Llama> {
        self.check_adapter(adapter)?;
        let mut merged = self.clone();
        let compute = match self.compute {
            // Merged weights are dense; keep the faithful path for quantized bases.
            ComputePath::Q8 => ComputePath::F32,
            c => c,
        };
        for (i, block) in merged.blocks.iter_mut().enumerate() {
            for t in Target::ALL {
                if let Some(update) = adapter.dense_update(i, t)? {
                    let base = block.linear(t);
                    let w = (base.dense_f32()? + update)?;
                    let bias = base.bias().cloned();
                    *block.linear_mut(t) = BaseLinear::from_dense(w, bias, compute)?;
                }
            }
        }
        merged.compute = compute;
        Ok(merged)
    }

    fn check_adapter(&self, a: &LoraAdapter) -> Result<()> {
        if a.num_layers() != self.cfg.num_layers {
            return Err(Error::Adapter(format!(
                "adapter has {} layers, model has {}",
                a.num_layers(),
                self.cfg.num_layers
            )));
        }
        Ok(())
    }

    /// Runs a batch of sequences. Each sequence's cache is extended with its new tokens;
    /// if the pass fails, every cache is restored to its previous length.
    ///
    /// Returns logits in f32: `(sequences, vocab)` for [`Outputs::LastToken`], or
    /// `(total new tokens, vocab)` for [`Outputs::AllTokens`].
    pub fn forward(
        &self,
        seqs: &mut [SeqInput<'_>],
        outputs: Outputs,
        mode: Mode<'_>,
    ) -> Result<Tensor> {
        let before: Vec<Option<usize>> = seqs
            .iter()
            .map(|s| s.cache.as_ref().map(|c| c.len()))
            .collect();
        let result = self.forward_inner(seqs, outputs, mode, None);
        if result.is_err() {
            for (s, len) in seqs.iter_mut().zip(before) {
                if let (Some(c), Some(len)) = (s.cache.as_deref_mut(), len) {
                    c.truncate(len);
                }
            }
        }
        result
    }

    /// Like [`Llama::forward`], but starting at `layer` with the packed hidden states
    /// `hidden` that an [`Outputs::HiddenBefore`] pass over the same sequences
    /// returned (no caches).
    pub fn forward_from(
        &self,
        seqs: &mut [SeqInput<'_>],
        layer: usize,
        hidden: Tensor,
        outputs: Outputs,
        mode: Mode<'_>,
    ) -> Result<Tensor> {
        self.forward_inner(seqs, outputs, mode, Some((layer, hidden)))
    }

    fn forward_inner(
        &self,
        seqs: &mut [SeqInput<'_>],
        outputs: Outputs,
        mode: Mode<'_>,
        resume: Option<(usize, Tensor)>,
    ) -> Result<Tensor> {
        let partial = resume.is_some() || matches!(outputs, Outputs::HiddenBefore(_));
        if partial && seqs.iter().any(|s| s.cache.is_some()) {
            return Err(Error::InvalidArgument(
                "partial forward passes cannot use caches".into(),
            ));
        }
        if seqs.is_empty() {
            return Err(Error::InvalidArgument("empty batch".into()));
        }
        let train = mode.training();
        if train && !self.is_trainable() {
            return Err(Error::InvalidArgument(format!(
                "training needs a dense compute path (f32 or f16); this model was loaded with {}",
                self.compute
            )));
        }
        // Layout of the packed batch.
        let mut spans = Vec::with_capacity(seqs.len());
        let mut positions = Vec::new();
        let mut tokens = Vec::new();
        for s in seqs.iter() {
            if s.tokens.is_empty() {
                return Err(Error::InvalidArgument(
                    "a sequence in the batch has no tokens".into(),
                ));
            }
            if let Some(c) = &s.cache {
                if c.num_layers() != self.cfg.num_layers {
                    return Err(Error::InvalidArgument(format!(
                        "cache made for {} layers used with a {}-layer model",
                        c.num_layers(),
                        self.cfg.num_layers
                    )));
                }
            }
            if let Some(a) = s.adapter {
                self.check_adapter(a)?;
            }
            if let Some(&bad) = s
                .tokens
                .iter()
                .find(|&&t| t as usize >= self.cfg.vocab_size)
            {
                return Err(Error::InvalidArgument(format!(
                    "token id {bad} is outside the vocabulary of {} tokens",
                    self.cfg.vocab_size
                )));
            }
            let offset = s.cache.as_ref().map_or(0, |c| c.len());
            let end = offset + s.tokens.len();
            if end > self.cfg.context_length {
                return Err(Error::ContextOverflow {
                    tokens: end,
                    context: self.cfg.context_length,
                });
            }
            spans.push((tokens.len(), s.tokens.len()));
            positions.extend(offset..end);
            tokens.extend_from_slice(s.tokens);
        }
        let routing = routing(seqs, &spans);
        let total = tokens.len();
        let dev = &self.device;
        let (nh, nkv, hd) = (self.cfg.num_heads, self.cfg.num_kv_heads, self.cfg.head_dim);

        let (first_layer, mut x) = match resume {
            Some((layer, hidden)) => {
                if layer > self.cfg.num_layers || hidden.dims() != [total, self.cfg.hidden_size] {
                    return Err(Error::InvalidArgument(format!(
                        "cannot resume at layer {layer} with hidden states of shape {:?} \
                         for {total} tokens",
                        hidden.dims()
                    )));
                }
                (layer, hidden)
            }
            None => (0, self.embed.lookup(&tokens, dev)?),
        };
        let stop = match outputs {
            Outputs::HiddenBefore(l) => l.min(self.cfg.num_layers),
            _ => self.cfg.num_layers,
        };
        let (cos, sin) = self.rope.tables(&positions, dev)?;
        // Below the first adapted layer nothing needs a gradient, so training runs the
        // fast kernels there.
        let train_from = if train {
            seqs.iter()
                .filter_map(|s| s.adapter.map(LoraAdapter::first_layer))
                .min()
                .unwrap_or(self.cfg.num_layers)
        } else {
            usize::MAX
        };

        for (li, block) in self.blocks.iter().enumerate() {
            if li < first_layer {
                continue;
            }
            if seqs
                .iter()
                .any(|s| s.tap.as_ref().is_some_and(|t| t.layer == li))
            {
                // One copy of the batch's states, read by every tapped sequence.
                let flat: Vec<f32> = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
                let width = self.cfg.hidden_size;
                for (s, &(start, len)) in seqs.iter_mut().zip(&spans) {
                    if let Some(tap) = s.tap.as_deref_mut().filter(|t| t.layer == li) {
                        tap.add(&flat[start * width..(start + len) * width], width)?;
                    }
                }
            }
            if li >= stop {
                return Ok(x);
            }
            let train = li >= train_from;
            let proj = |t: Target, input: &Tensor| {
                self.project(li, t, block.linear(t), input, &routing, mode)
            };
            let h = block.attn_norm.forward(&x, train)?;
            let heads = |y: Tensor, n: usize| -> Result<Tensor> {
                Ok(y.reshape((total, n, hd))?.transpose(0, 1)?.contiguous()?)
            };
            let q = heads(proj(Target::Q, &h)?, nh)?.unsqueeze(0)?;
            let k = heads(proj(Target::K, &h)?, nkv)?.unsqueeze(0)?;
            let v = heads(proj(Target::V, &h)?, nkv)?;
            let q = self.rope.apply(&q, &cos, &sin, train)?.squeeze(0)?;
            let k = self.rope.apply(&k, &cos, &sin, train)?.squeeze(0)?;

            // Sequences with few new tokens (decode steps) attend in one parallel pass
            // over the cache buffers; longer chunks use batched matrix products.
            let direct = !train && dev.is_cpu();
            let mut outs: Vec<Option<Tensor>> = vec![None; seqs.len()];
            let mut jobs = Vec::new();
            for (i, (s, &(start, len))) in seqs.iter_mut().zip(&spans).enumerate() {
                let narrow = |t: &Tensor| -> Result<Tensor> {
                    if len == total {
                        Ok(t.clone())
                    } else {
                        Ok(t.narrow(1, start, len)?)
                    }
                };
                let (ki, vi) = (narrow(&k)?, narrow(&v)?);
                let (keys, values) = match s.cache.as_deref_mut() {
                    Some(c) => c.append(li, &ki, &vi)?,
                    None => (ki, vi),
                };
                if direct && len <= DIRECT_ATTENTION_MAX_NEW {
                    jobs.push(DirectJob {
                        seq: i,
                        start,
                        len,
                        keys,
                        values,
                    });
                } else {
                    let (keys, values) = (keys.to_dtype(DType::F32)?, values.to_dtype(DType::F32)?);
                    outs[i] = Some(self.attend(&narrow(&q)?, &keys, &values, train)?);
                }
            }
            if !jobs.is_empty() {
                for (i, t) in attend_direct(&q, &jobs, nkv)? {
                    outs[i] = Some(t);
                }
            }
            let mut outs: Vec<Tensor> =
                outs.into_iter()
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| {
                        Error::InvalidArgument("a sequence got no attention output".into())
                    })?;
            let att = if outs.len() == 1 {
                outs.remove(0)
            } else {
                Tensor::cat(&outs, 0)?
            };
            x = (x + proj(Target::O, &att)?)?;

            let h = block.ffn_norm.forward(&x, train)?;
            let gate = proj(Target::Gate, &h)?;
            let up = proj(Target::Up, &h)?;
            let m = if train {
                (candle_nn::ops::silu(&gate)? * up)?
            } else {
                silu_mul(&gate, &up)?
            };
            x = (x + proj(Target::Down, &m)?)?;
        }
        let x = match &outputs {
            Outputs::Rows(rows) => {
                if let Some(&bad) = rows.iter().find(|&&r| r as usize >= total) {
                    return Err(Error::InvalidArgument(format!(
                        "output row {bad} is outside the batch of {total} tokens"
                    )));
                }
                x.index_select(&Tensor::from_vec(rows.clone(), rows.len(), dev)?, 0)?
            }
            _ => x,
        };
        if matches!(outputs, Outputs::HiddenBefore(_)) {
            return Ok(x);
        }
        let x = self.norm.forward(&x, train_from < self.cfg.num_layers)?;
        let x = match outputs {
            Outputs::AllTokens | Outputs::Rows(_) | Outputs::HiddenBefore(_) => x,
            Outputs::LastToken => {
                let last: Vec<u32> = spans.iter().map(|&(s, l)| (s + l - 1) as u32).collect();
                let n = last.len();
                x.index_select(&Tensor::from_vec(last, n, dev)?, 0)?
            }
        };
        self.lm_head.forward(&x)
    }

    /// A base projection plus whichever adapter applies to each row.
    fn project(
        &self,
        layer: usize,
        target: Target,
        base: &BaseLinear,
        x: &Tensor,
        routing: &Routing<'_>,
        mode: Mode<'_>,
    ) -> Result<Tensor> {
        let y = base.forward(x)?;
        let dropout = mode.dropout();
        match routing {
            Routing::Uniform(None) => Ok(y),
            Routing::Uniform(Some(a)) => match a.delta(layer, target, x, dropout)? {
                Some(d) => Ok((y + d)?),
                None => Ok(y),
            },
            Routing::Segments(segs) => {
                let mut parts = Vec::with_capacity(segs.len());
                let mut any = false;
                for &(start, len, adapter) in segs {
                    let xs = x.narrow(0, start, len)?;
                    let d = match adapter {
                        Some(a) => a.delta(layer, target, &xs, dropout)?,
                        None => None,
                    };
                    parts.push(match d {
                        Some(d) => {
                            any = true;
                            d
                        }
                        None => Tensor::zeros((len, base.out_dim()), DType::F32, x.device())?,
                    });
                }
                if any {
                    Ok((y + Tensor::cat(&parts, 0)?)?)
                } else {
                    Ok(y)
                }
            }
        }
    }

    /// Causal attention of `q (heads, new, hd)` over `k`, `v (kv_heads, total, hd)`,
    /// where the new tokens are the last `new` of `total`. Returns `(new, heads·hd)`.
    fn attend(&self, q: &Tensor, k: &Tensor, v: &Tensor, train: bool) -> Result<Tensor> {
        let (nh, l, hd) = q.dims3()?;
        let (nkv, s, _) = k.dims3()?;
        let g = nh / nkv;
        // Query heads sharing a key/value head are adjacent, so grouping them turns
        // grouped-query attention into one batched matmul without copying K or V.
        let q = q.contiguous()?.reshape((nkv, g * l, hd))?;
        let scale = 1.0 / (hd as f64).sqrt();
        let att = (q.matmul(&k.t()?)? * scale)?;
        let att = if l > 1 {
            let mask = causal_mask(l, s, q.device())?;
            att.reshape((nkv, g, l, s))?
                .broadcast_add(&mask)?
                .reshape((nkv, g * l, s))?
        } else {
            att
        };
        let att = if train {
            candle_nn::ops::softmax(&att, D::Minus1)?
        } else {
            candle_nn::ops::softmax_last_dim(&att)?
        };
        let y = att.matmul(&v.contiguous()?)?;
        Ok(y.reshape((nh, l, hd))?
            .transpose(0, 1)?
            .reshape((l, nh * hd))?)
    }
}

/// Sequences with at most this many new tokens use [`attend_direct`].
const DIRECT_ATTENTION_MAX_NEW: usize = 4;

/// One sequence's part of [`attend_direct`].
struct DirectJob {
    seq: usize,
    start: usize,
    len: usize,
    keys: Tensor,
    values: Tensor,
}

/// Data and layout of a CPU tensor (f32, or f16 for cached keys and values), for
/// reading without candle ops.
fn cpu_data(t: &Tensor) -> Result<(candle_core::StorageRef<'_>, &candle_core::Layout)> {
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        candle_core::Storage::Cpu(
            candle_core::CpuStorage::F32(_) | candle_core::CpuStorage::F16(_),
        ) if layout.stride().last() == Some(&1) => {}
        _ => {
            return Err(Error::InvalidArgument(
                "direct attention needs f32 or f16 CPU tensors with unit inner stride".into(),
            ))
        }
    }
    Ok((storage, layout))
}

fn f32_slice<'a>(s: &'a candle_core::StorageRef<'_>) -> &'a [f32] {
    match &**s {
        candle_core::Storage::Cpu(candle_core::CpuStorage::F32(v)) => v,
        _ => &[],
    }
}

/// `silu(gate)·up`, as `(g / (1 + e^(−g)))·u` (candle's `silu`, then the product) in
/// one pass with `vexp`'s exponentials, for serving: candle's `silu` takes one `expf`
/// call per element (30 layers x 1,536 per token for SmolLM2, as many as sampling) and
/// the product another pass and buffer. Other dtypes or layouts use candle's ops.
fn silu_mul(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    use candle_core::{CpuStorage, Storage};
    let fused = {
        let (gs, gl) = gate.storage_and_layout();
        let (us, ul) = up.storage_and_layout();
        match (&*gs, &*us, gl.contiguous_offsets(), ul.contiguous_offsets()) {
            (
                Storage::Cpu(CpuStorage::F32(g)),
                Storage::Cpu(CpuStorage::F32(u)),
                Some((g0, g1)),
                Some((u0, u1)),
            ) if gate.shape() == up.shape() => {
                let (g, u) = (&g[g0..g1], &u[u0..u1]);
                let mut out: Vec<f32> = g.iter().map(|&x| -x).collect();
                super::vexp::exp_in_place(&mut out);
                for ((o, &x), &y) in out.iter_mut().zip(g).zip(u) {
                    *o = x / (1.0 + *o) * y;
                }
                Some(out)
            }
            _ => None,
        }
    };
    match fused {
        Some(out) => Ok(Tensor::from_vec(out, gate.shape(), gate.device())?),
        None => Ok((candle_nn::ops::silu(gate)? * up)?),
    }
}

fn f16_slice<'a>(s: &'a candle_core::StorageRef<'_>) -> Option<&'a [half::f16]> {
    match &**s {
        candle_core::Storage::Cpu(candle_core::CpuStorage::F16(v)) => Some(v),
        _ => None,
    }
}

/// One head's `rows` cached rows of width `hd`, starting at `offset` with row stride
/// `stride`, as f32: borrowed when stored as f32, widened into `scratch` when f16.
fn kv_rows<'a>(
    s: &'a candle_core::StorageRef<'_>,
    offset: usize,
    stride: usize,
    rows: usize,
    hd: usize,
    scratch: &'a mut Vec<f32>,
) -> (&'a [f32], usize) {
    use half::slice::HalfFloatSliceExt;
    match &**s {
        candle_core::Storage::Cpu(candle_core::CpuStorage::F16(v)) => {
            scratch.resize(rows * hd, 0.0);
            for p in 0..rows {
                let at = offset + p * stride;
                v[at..at + hd].convert_to_f32_slice(&mut scratch[p * hd..(p + 1) * hd]);
            }
            (&scratch[..], hd)
        }
        candle_core::Storage::Cpu(candle_core::CpuStorage::F32(v)) => (&v[offset..], stride),
        _ => (&[], stride),
    }
}

/// `scores[i] = e^(scores[i] − max)` and their sum, in order: the unnormalised softmax.
#[inline(always)]
fn softmax_weights(scores: &mut [f32], max: f32) -> f32 {
    for score in scores.iter_mut() {
        *score -= max;
    }
    super::vexp::exp_in_place(scores);
    scores.iter().sum()
}

/// The query heads that share one key/value head, for one sequence's new tokens.
struct Heads<'a> {
    /// All queries, `(heads, total, hd)`.
    q: &'a [f32],
    total: usize,
    hd: usize,
    /// First query head and how many.
    first: usize,
    count: usize,
    /// The sequence's new tokens: `start..start + len` of `total`.
    start: usize,
    len: usize,
    scale: f32,
}

impl Heads<'_> {
    /// `(count heads) x (len tokens) x hd` outputs over `s` cached rows of `k` and `v`
    /// (row strides `ks`, `vs`). With AVX2 the same loops are compiled for 256-bit
    /// registers; the arithmetic and its order are the same on every path, except that
    /// the softmax's exponentials come from `vexp` (eight at a time with AVX2, within
    /// 2 ulp of `expf`).
    fn attend(&self, k: &[f32], ks: usize, v: &[f32], vs: usize, s: usize) -> Vec<f32> {
        #[cfg(target_arch = "x86_64")]
        {
            if super::blockq::has_avx2() {
                // SAFETY: the CPU supports AVX2 (checked above).
                return unsafe { self.attend_avx2(k, ks, v, vs, s) };
            }
        }
        self.attend_any(k, ks, v, vs, s)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn attend_avx2(&self, k: &[f32], ks: usize, v: &[f32], vs: usize, s: usize) -> Vec<f32> {
        self.attend_any(k, ks, v, vs, s)
    }

    /// [`Heads::attend`] reading f16 keys and values directly, each row widened in
    /// registers as it is used (F16C) instead of into a scratch copy first. The
    /// arithmetic and its order are those of `attend_any` compiled for AVX2: per key,
    /// eight-lane products added to eight partial sums, the lanes then summed in order;
    /// per value row, `w·v` added to the output.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn attend_f16(
        &self,
        k: &[half::f16],
        kstride: usize,
        v: &[half::f16],
        vstride: usize,
        s: usize,
    ) -> Vec<f32> {
        use std::arch::x86_64::*;
        let hd = self.hd;
        if s == 0 {
            return vec![0f32; self.count * self.len * hd];
        }
        assert!(
            hd.is_multiple_of(8)
                && (s - 1) * kstride + hd <= k.len()
                && (s - 1) * vstride + hd <= v.len()
                && s >= self.len
        );
        let row8 = |base: &[half::f16], at: usize| {
            _mm256_cvtph_ps(_mm_loadu_si128(base.as_ptr().add(at) as *const __m128i))
        };
        self.attend_with(
            s,
            |qrow, p| {
                let mut acc = _mm256_setzero_ps();
                for c in (0..hd).step_by(8) {
                    let q = _mm256_loadu_ps(qrow.as_ptr().add(c));
                    acc = _mm256_add_ps(acc, _mm256_mul_ps(q, row8(k, p * kstride + c)));
                }
                let mut lanes = [0f32; 8];
                _mm256_storeu_ps(lanes.as_mut_ptr(), acc);
                lanes.iter().sum()
            },
            |o, w, p| {
                let w = _mm256_set1_ps(w);
                for c in (0..hd).step_by(8) {
                    let oc = o.as_mut_ptr().add(c);
                    let vr = row8(v, p * vstride + c);
                    _mm256_storeu_ps(oc, _mm256_add_ps(_mm256_loadu_ps(oc), _mm256_mul_ps(w, vr)));
                }
            },
        )
    }

    #[inline(always)]
    fn attend_any(
        &self,
        k: &[f32],
        kstride: usize,
        v: &[f32],
        vstride: usize,
        s: usize,
    ) -> Vec<f32> {
        let hd = self.hd;
        self.attend_with(
            s,
            |qrow, p| {
                let krow = &k[p * kstride..][..hd];
                let mut acc = [0f32; 8];
                for (qc, kc) in qrow.chunks_exact(8).zip(krow.chunks_exact(8)) {
                    for i in 0..8 {
                        acc[i] += qc[i] * kc[i];
                    }
                }
                let mut dot: f32 = acc.iter().sum();
                for i in (hd / 8) * 8..hd {
                    dot += qrow[i] * krow[i];
                }
                dot
            },
            |o, w, p| {
                let vrow = &v[p * vstride..][..hd];
                for (oi, vi) in o.iter_mut().zip(vrow) {
                    *oi += w * vi;
                }
            },
        )
    }

    /// The attention loops over heads, new tokens and visible positions; `dot(q, p)`
    /// is a query row times cached key `p`, `add(o, w, p)` adds `w` times cached value
    /// `p` to an output row. The storage-specific paths supply those two.
    #[inline(always)]
    fn attend_with(
        &self,
        s: usize,
        dot: impl Fn(&[f32], usize) -> f32,
        add: impl Fn(&mut [f32], f32, usize),
    ) -> Vec<f32> {
        let (hd, total, scale) = (self.hd, self.total, self.scale);
        let mut out = vec![0f32; self.count * self.len * hd];
        let mut scores = vec![0f32; s];
        for (hi, h) in (self.first..self.first + self.count).enumerate() {
            for l in 0..self.len {
                let visible = s - self.len + l + 1;
                let qrow = &self.q[h * total * hd + (self.start + l) * hd..][..hd];
                let mut max = f32::NEG_INFINITY;
                for (p, score) in scores.iter_mut().enumerate().take(visible) {
                    *score = dot(qrow, p) * scale;
                    max = max.max(*score);
                }
                let sum = softmax_weights(&mut scores[..visible], max);
                let o = &mut out[(hi * self.len + l) * hd..][..hd];
                for (p, &w) in scores.iter().enumerate().take(visible) {
                    add(o, w / sum, p);
                }
            }
        }
        out
    }
}

/// Causal attention for several sequences at once, computed directly over their
/// key/value buffers (strided views of the caches, f32 or f16) in one parallel pass: no
/// per-sequence tensor ops. `q` is `(heads, total new tokens, head_dim)`; returns each
/// job's `(new, heads·head_dim)` output. Serving only (no autograd).
fn attend_direct(q: &Tensor, jobs: &[DirectJob], nkv: usize) -> Result<Vec<(usize, Tensor)>> {
    use rayon::prelude::*;
    let q = q.contiguous()?;
    let (nh, total, hd) = q.dims3()?;
    let g = nh / nkv;
    let scale = 1.0 / (hd as f32).sqrt();
    let (qs, ql) = cpu_data(&q)?;
    let qv = &f32_slice(&qs)[ql.start_offset()..];
    let mut views = Vec::with_capacity(jobs.len());
    for j in jobs {
        let (ks, kl) = cpu_data(&j.keys)?;
        let (vs, vl) = cpu_data(&j.values)?;
        let (_, s, _) = j.keys.dims3()?;
        views.push((
            ks,
            kl.start_offset(),
            kl.stride().to_vec(),
            vs,
            vl.start_offset(),
            vl.stride().to_vec(),
            s,
        ));
    }
    // One work item per sequence and key/value head: the head's cached rows are read
    // (and widened from f16) once for the `g` query heads that share them.
    let work: Vec<(usize, usize)> = (0..jobs.len())
        .flat_map(|j| (0..nkv).map(move |kvh| (j, kvh)))
        .collect();
    let results: Vec<Vec<f32>> = work
        .par_iter()
        .map(|&(j, kvh)| {
            let job = &jobs[j];
            let (ks, ko, kst, vs, vo, vst, s) = &views[j];
            let heads = Heads {
                q: qv,
                total,
                hd,
                first: kvh * g,
                count: g,
                start: job.start,
                len: job.len,
                scale,
            };
            let (ko, vo) = (ko + kvh * kst[0], vo + kvh * vst[0]);
            #[cfg(target_arch = "x86_64")]
            if let (Some(k), Some(v)) = (f16_slice(ks), f16_slice(vs)) {
                if hd % 8 == 0 && super::blockq::has_avx2() {
                    // SAFETY: AVX2 and F16C are present (checked above); `attend_f16`
                    // checks that every row it reads lies within the slices.
                    return unsafe { heads.attend_f16(&k[ko..], kst[1], &v[vo..], vst[1], *s) };
                }
            }
            let (mut kbuf, mut vbuf) = (Vec::new(), Vec::new());
            let (k, kstride) = kv_rows(ks, ko, kst[1], *s, hd, &mut kbuf);
            let (v, vstride) = kv_rows(vs, vo, vst[1], *s, hd, &mut vbuf);
            heads.attend(k, kstride, v, vstride, *s)
        })
        .collect();
    drop(views);
    drop(qs);
    let mut outputs = Vec::with_capacity(jobs.len());
    for (j, job) in jobs.iter().enumerate() {
        let mut data = vec![0f32; job.len * nh * hd];
        for h in 0..nh {
            let (kvh, hi) = (h / g, h % g);
            let r = &results[j * nkv + kvh];
            for l in 0..job.len {
                data[l * nh * hd + h * hd..l * nh * hd + (h + 1) * hd]
                    .copy_from_slice(&r[(hi * job.len + l) * hd..][..hd]);
            }
        }
        outputs.push((
            job.seq,
            Tensor::from_vec(data, (job.len, nh * hd), q.device())?,
        ));
    }
    Ok(outputs)
}

/// `(new, total)` additive mask: new token `i` (at position `total - new + i`) sees keys
/// up to its own position.
fn causal_mask(new: usize, total: usize, device: &Device) -> Result<Tensor> {
    let offset = total - new;
    let mask: Vec<f32> = (0..new)
        .flat_map(|i| {
            (0..total).map(move |j| {
                if j > offset + i {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
        })
        .collect();
    Ok(Tensor::from_vec(mask, (new, total), device)?)
}

fn routing<'a>(seqs: &[SeqInput<'a>], spans: &[(usize, usize)]) -> Routing<'a> {
    let same = |a: Option<&LoraAdapter>, b: Option<&LoraAdapter>| match (a, b) {
        (None, None) => true,
        (Some(x), Some(y)) => std::ptr::eq(x, y),
        _ => false,
    };
    let first = seqs[0].adapter;
    if seqs.iter().all(|s| same(s.adapter, first)) {
        return Routing::Uniform(first);
    }
    let mut segs: Vec<(usize, usize, Option<&'a LoraAdapter>)> = Vec::new();
    for (s, &(start, len)) in seqs.iter().zip(spans) {
        match segs.last_mut() {
            Some(last) if same(last.2, s.adapter) => last.1 += len,
            _ => segs.push((start, len, s.adapter)),
        }
    }
    Routing::Segments(segs)
}

#[cfg(test)]
mod tests {
    use half::f16;

    use super::*;

    /// The fused serving product matches candle's `silu` then `*` (to vexp's 2 ulp).
    #[test]
    fn fused_silu_product_matches_candle() {
        let g = Tensor::from_vec(
            (0..384)
                .map(|i| (i as f32 - 192.0) / 16.0)
                .collect::<Vec<_>>(),
            (3, 128),
            &Device::Cpu,
        )
        .expect("gate");
        let u = (g.cos().expect("cos") * 2.0).expect("up");
        let want: Vec<f32> = (candle_nn::ops::silu(&g).expect("silu") * &u)
            .and_then(|t| t.flatten_all()?.to_vec1())
            .expect("want");
        let got: Vec<f32> = silu_mul(&g, &u)
            .and_then(|t| Ok(t.flatten_all()?.to_vec1()?))
            .expect("got");
        for (a, b) in got.iter().zip(&want) {
            assert!((a - b).abs() <= 1e-6 * b.abs().max(1.0), "{a} against {b}");
        }
        // A non-contiguous gate falls back to candle's ops.
        let t = g.t().expect("t");
        let ut = u.t().expect("t");
        let want = (candle_nn::ops::silu(&t).expect("silu") * &ut).expect("want");
        let got = silu_mul(&t, &ut).expect("got");
        let diff: f32 = (got - want)
            .and_then(|d| d.abs()?.max_all()?.to_scalar())
            .expect("diff");
        assert_eq!(diff, 0.0);
    }

    /// Direct attention over f16 rows computes exactly what it computes over the same
    /// rows widened to f32 first.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn f16_rows_attend_exactly_as_widened_rows() {
        if !crate::model::blockq::has_avx2() {
            return;
        }
        let (hd, s, len, heads) = (64, 37, 3, 3);
        let total = len + 2;
        let val = |i: usize| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * 0.7;
        let q: Vec<f32> = (0..heads * total * hd).map(|i| val(i + 5)).collect();
        // Rows with a stride wider than a row, as in a reserved cache.
        let stride = hd + 16;
        let k16: Vec<f16> = (0..s * stride)
            .map(|i| f16::from_f32(val(i + 11)))
            .collect();
        let v16: Vec<f16> = (0..s * stride)
            .map(|i| f16::from_f32(val(i + 13)))
            .collect();
        let widen = |x: &[f16]| x.iter().map(|h| h.to_f32()).collect::<Vec<f32>>();
        let (k32, v32) = (widen(&k16), widen(&v16));
        let h = Heads {
            q: &q,
            total,
            hd,
            first: 0,
            count: heads,
            start: 2,
            len,
            scale: 0.125,
        };
        let want = h.attend(&k32, stride, &v32, stride, s);
        // SAFETY: AVX2 and F16C are present (checked above).
        let got = unsafe { h.attend_f16(&k16, stride, &v16, stride, s) };
        assert_eq!(got, want);
        assert!(got.iter().any(|&x| x != 0.0));
    }
}
