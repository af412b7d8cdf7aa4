//! Frozen base weights: where they come from (GGUF or safetensors) and how a linear
//! layer computes with them (the compute path).

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use candle_core::quantized::{gguf_file, GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor};
use serde::{Deserialize, Serialize};

use super::blockq::{BlockMatrix, MAX_KERNEL_TOKENS};
use super::error::{Error, Result};

/// How linear layers compute with the base weights.
///
/// [`ComputePath::Qf32`] (the default) and [`ComputePath::F32`] are faithful: every
/// product runs in f32 against f32 activations on the dequantized weight values, so
/// the model answers what its weights really compute. `qf32` keeps GGUF blocks compact
/// and dequantizes them on the fly; `f32` dequantizes once at load (4–6x the memory).
/// [`ComputePath::Q8`] uses candle's quantized kernels, which also quantize the
/// *activations* to 8 bits: it changes answers (SmolLM2-135M no longer names Paris).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ComputePath {
    /// Keep Q4_0/Q4_1/Q8_0 blocks, dequantize on the fly, f32 arithmetic (default).
    #[default]
    Qf32,
    /// Dequantize to f32 at load; f32 arithmetic everywhere.
    F32,
    /// Dequantize to f16; f16 matrix products, f32 everything else.
    F16,
    /// Keep quantized weights; 8-bit activations in matrix products.
    Q8,
}

impl FromStr for ComputePath {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "qf32" => Ok(Self::Qf32),
            "f32" => Ok(Self::F32),
            "f16" => Ok(Self::F16),
            "q8" | "quantized" => Ok(Self::Q8),
            _ => Err(format!(
                "unknown compute path {s:?} (expected f32, f16 or q8)"
            )),
        }
    }
}

impl std::fmt::Display for ComputePath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Qf32 => "qf32",
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::Q8 => "q8",
        })
    }
}

/// A frozen linear layer `y = x Wᵀ (+ b)`, W of shape `(out, in)`.
#[derive(Debug, Clone)]
pub struct BaseLinear {
    weight: LinearWeight,
    bias: Option<Tensor>,
    in_dim: usize,
    out_dim: usize,
}

#[derive(Debug, Clone)]
enum LinearWeight {
    /// f32 or f16 dense matrix.
    Dense(Tensor),
    /// Quantized matrix, used through candle's 8-bit-activation kernels.
    Quantized(Arc<QTensor>),
    /// Quantized blocks, dequantized on the fly against f32 activations.
    Blocks(Arc<BlockMatrix>),
}

impl BaseLinear {
    /// A dense layer from an f32 weight (and optional bias), converted to `compute`'s dtype.
    pub fn from_dense(weight: Tensor, bias: Option<Tensor>, compute: ComputePath) -> Result<Self> {
        let (out_dim, in_dim) = weight.dims2()?;
        let weight = match compute {
            ComputePath::F32 | ComputePath::Qf32 => {
                LinearWeight::Dense(weight.to_dtype(DType::F32)?)
            }
            ComputePath::F16 => LinearWeight::Dense(weight.to_dtype(DType::F16)?),
            ComputePath::Q8 => {
                if in_dim.is_multiple_of(GgmlDType::Q8_0.block_size()) {
                    let w = weight.to_dtype(DType::F32)?;
                    LinearWeight::Quantized(Arc::new(QTensor::quantize(&w, GgmlDType::Q8_0)?))
                } else {
                    LinearWeight::Dense(weight.to_dtype(DType::F32)?)
                }
            }
        };
        Ok(Self {
            weight,
            bias,
            in_dim,
            out_dim,
        })
    }

    /// A layer from a GGUF tensor.
    pub fn from_qtensor(q: QTensor, bias: Option<Tensor>, compute: ComputePath) -> Result<Self> {
        let (out_dim, in_dim) = q.shape().dims2()?;
        let dev = q.device();
        let is_float = matches!(q.dtype(), GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16);
        let weight = match compute {
            ComputePath::Qf32 => match BlockMatrix::from_qtensor(&q)? {
                Some(b) => LinearWeight::Blocks(Arc::new(b)),
                None => LinearWeight::Dense(q.dequantize(&dev)?),
            },
            ComputePath::F32 => LinearWeight::Dense(q.dequantize(&dev)?),
            ComputePath::F16 => LinearWeight::Dense(q.dequantize_f16(&dev)?),
            ComputePath::Q8 if is_float => LinearWeight::Dense(q.dequantize(&dev)?),
            ComputePath::Q8 => LinearWeight::Quantized(Arc::new(q)),
        };
        Ok(Self {
            weight,
            bias,
            in_dim,
            out_dim,
        })
    }

    /// A layer over blocks shared with another user (a tied embedding).
    pub(crate) fn from_blocks(b: Arc<BlockMatrix>) -> Self {
        Self {
            in_dim: b.cols(),
            out_dim: b.rows(),
            weight: LinearWeight::Blocks(b),
            bias: None,
        }
    }

    /// Input width.
    pub fn in_dim(&self) -> usize {
        self.in_dim
    }

    /// Output width.
    pub fn out_dim(&self) -> usize {
        self.out_dim
    }

    /// Whether gradients can flow through this layer to its input (candle's quantized
    /// matmul has no backward pass).
    pub fn is_differentiable(&self) -> bool {
        !matches!(self.weight, LinearWeight::Quantized(_))
    }

    /// Applies the layer to `x` of shape `(tokens, in)` in f32, returning `(tokens, out)` f32.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // While training on CPU, frozen dense products go through an op whose backward
        // pass computes only the input's gradient: candle's matmul would also compute
        // a (discarded) gradient for the weight, doubling the backward cost.
        let frozen = x.track_op() && x.device().is_cpu();
        let y = match &self.weight {
            LinearWeight::Dense(w) if w.dtype() == DType::F32 && frozen => {
                x.contiguous()?.apply_op1(FrozenMatMul(w.clone()))?
            }
            LinearWeight::Blocks(b) if frozen && x.dim(0)? > MAX_KERNEL_TOKENS => {
                x.contiguous()?
                    .apply_op1(FrozenMatMul(b.dequantize(x.device())?))?
            }
            LinearWeight::Dense(w) if w.dtype() == DType::F32 => x.matmul(&w.t()?)?,
            LinearWeight::Dense(w) => x
                .to_dtype(w.dtype())?
                .matmul(&w.t()?)?
                .to_dtype(DType::F32)?,
            LinearWeight::Quantized(q) => QMatMul::QTensor(q.clone()).forward(x)?,
            LinearWeight::Blocks(b) if x.dim(0)? <= MAX_KERNEL_TOKENS && x.device().is_cpu() => {
                b.matmul(x)?
            }
            LinearWeight::Blocks(b) => b.matmul_dense(x)?,
        };
        match &self.bias {
            Some(b) => Ok(y.broadcast_add(b)?),
            None => Ok(y),
        }
    }

    /// The weight as a dense f32 matrix `(out, in)`.
    pub fn dense_f32(&self) -> Result<Tensor> {
        Ok(match &self.weight {
            LinearWeight::Dense(w) => w.to_dtype(DType::F32)?,
            LinearWeight::Quantized(q) => q.dequantize(&q.device())?,
            LinearWeight::Blocks(b) => b.dequantize(&Device::Cpu)?,
        })
    }

    /// The bias, if any.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// Bytes held by the weight (and bias).
    pub fn size_in_bytes(&self) -> usize {
        let w = match &self.weight {
            LinearWeight::Dense(w) => w.elem_count() * w.dtype().size_in_bytes(),
            LinearWeight::Quantized(q) => q.storage_size_in_bytes(),
            LinearWeight::Blocks(b) => b.size_in_bytes(),
        };
        w + self.bias.as_ref().map_or(0, |b| b.elem_count() * 4)
    }
}

/// A checkpoint's tensors, by name, in either format.
pub(crate) enum WeightSource {
    /// A GGUF file and its parsed header.
    Gguf {
        path: PathBuf,
        content: gguf_file::Content,
        file: std::fs::File,
    },
    /// One or more memory-mapped safetensors files.
    Safetensors(candle_core::safetensors::MmapedSafetensors),
}

/// Names a tensor in both naming schemes: GGUF (`blk.0.attn_q.weight`) and
/// Hugging Face (`model.layers.0.self_attn.q_proj.weight`).
#[derive(Debug, Clone)]
pub(crate) struct TensorName {
    pub gguf: String,
    pub hf: String,
}

impl WeightSource {
    pub(crate) fn open_gguf(path: &Path) -> Result<Self> {
        let mut file = std::fs::File::open(path).map_err(|e| Error::io("open", path, e))?;
        let content = gguf_file::Content::read(&mut file).map_err(|e| {
            Error::Config(format!(
                "{} is not a readable GGUF file: {e}",
                path.display()
            ))
        })?;
        Ok(WeightSource::Gguf {
            path: path.to_path_buf(),
            content,
            file,
        })
    }

    /// The parsed GGUF header, when the weights come from a GGUF file.
    pub(crate) fn gguf(&self) -> Option<&gguf_file::Content> {
        match self {
            WeightSource::Gguf { content, .. } => Some(content),
            WeightSource::Safetensors(_) => None,
        }
    }

    pub(crate) fn open_safetensors(paths: &[PathBuf]) -> Result<Self> {
        // SAFETY: the files are memory-mapped read-only; like every safetensors
        // reader we rely on them not being modified while the model is loaded.
        let st = unsafe { candle_core::safetensors::MmapedSafetensors::multi(paths)? };
        Ok(WeightSource::Safetensors(st))
    }

    fn name<'a>(&self, n: &'a TensorName) -> &'a str {
        match self {
            WeightSource::Gguf { .. } => &n.gguf,
            WeightSource::Safetensors(_) => &n.hf,
        }
    }

    pub(crate) fn contains(&self, n: &TensorName) -> bool {
        match self {
            WeightSource::Gguf { content, .. } => content.tensor_infos.contains_key(&n.gguf),
            WeightSource::Safetensors(st) => st.get(&n.hf).is_ok(),
        }
    }

    fn check_shape(name: &str, found: &[usize], expected: &[usize]) -> Result<()> {
        if found != expected {
            return Err(Error::ShapeMismatch {
                name: name.to_string(),
                expected: expected.to_vec(),
                found: found.to_vec(),
            });
        }
        Ok(())
    }

    /// Loads a tensor as f32, checking its shape.
    pub(crate) fn dense(
        &mut self,
        n: &TensorName,
        expected: &[usize],
        dev: &Device,
    ) -> Result<Tensor> {
        let name = self.name(n).to_string();
        if !self.contains(n) {
            return Err(Error::MissingTensor(name));
        }
        let t = match self {
            WeightSource::Gguf { content, file, .. } => {
                content.tensor(file, &name, dev)?.dequantize(dev)?
            }
            WeightSource::Safetensors(st) => st.load(&name, dev)?.to_dtype(DType::F32)?,
        };
        Self::check_shape(&name, t.dims(), expected)?;
        Ok(t)
    }

    /// A GGUF tensor as stored (quantized), checking its shape; `None` for safetensors.
    pub(crate) fn qtensor(
        &mut self,
        n: &TensorName,
        expected: &[usize],
        dev: &Device,
    ) -> Result<Option<QTensor>> {
        match self {
            WeightSource::Gguf { content, file, .. } => {
                if !content.tensor_infos.contains_key(&n.gguf) {
                    return Err(Error::MissingTensor(n.gguf.clone()));
                }
                let q = content.tensor(file, &n.gguf, dev)?;
                Self::check_shape(&n.gguf, q.shape().dims(), expected)?;
                Ok(Some(q))
            }
            WeightSource::Safetensors(_) => Ok(None),
        }
    }

    /// Loads an `(out, in)` weight (and an optional bias) as a linear layer.
    pub(crate) fn linear(
        &mut self,
        w: &TensorName,
        b: Option<&TensorName>,
        (out_dim, in_dim): (usize, usize),
        compute: ComputePath,
        dev: &Device,
    ) -> Result<BaseLinear> {
        let bias = match b {
            Some(b) => Some(self.dense(b, &[out_dim], dev)?),
            None => None,
        };
        let name = self.name(w).to_string();
        if !self.contains(w) {
            return Err(Error::MissingTensor(name));
        }
        match self {
            WeightSource::Gguf { content, file, .. } => {
                let q = content.tensor(file, &name, dev)?;
                Self::check_shape(&name, q.shape().dims(), &[out_dim, in_dim])?;
                BaseLinear::from_qtensor(q, bias, compute)
            }
            WeightSource::Safetensors(st) => {
                let t = st.load(&name, dev)?;
                Self::check_shape(&name, t.dims(), &[out_dim, in_dim])?;
                BaseLinear::from_dense(t, bias, compute)
            }
        }
    }

    /// The file the weights come from (GGUF) for error messages.
    pub(crate) fn describe(&self) -> String {
        match self {
            WeightSource::Gguf { path, .. } => path.display().to_string(),
            WeightSource::Safetensors(_) => "safetensors".to_string(),
        }
    }
}

/// `x Wᵀ` for a frozen `W (out, in)` whose backward pass returns only `grad · W`.
struct FrozenMatMul(Tensor);

impl candle_core::CustomOp1 for FrozenMatMul {
    fn name(&self) -> &'static str {
        "frozen-matmul"
    }

    fn cpu_fwd(
        &self,
        storage: &candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let (tokens, cols) = layout.shape().dims2()?;
        let x = match (storage, layout.contiguous_offsets()) {
            (candle_core::CpuStorage::F32(v), Some((a, b))) => &v[a..b],
            _ => candle_core::bail!("frozen-matmul: input must be contiguous f32"),
        };
        let x = Tensor::from_slice(x, (tokens, cols), &Device::Cpu)?;
        let y = x.matmul(&self.0.t()?)?;
        let rows = y.dim(1)?;
        let out = y.flatten_all()?.to_vec1::<f32>()?;
        Ok((
            candle_core::CpuStorage::F32(out),
            candle_core::Shape::from((tokens, rows)),
        ))
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad_res.matmul(&self.0)?))
    }
}
