//! Per-sequence key/value cache.

use candle_core::{DType, Tensor};

use super::error::Result;

/// Cached keys and values of one sequence, for every layer.
///
/// Each layer keeps two preallocated buffers of shape `(kv_heads, capacity, head_dim)`,
/// so appending a token copies only that token. A cache made with
/// [`KvCache::reserving`] allocates the sequence's whole length at once; otherwise the
/// buffers double when full (at least [`KvCache::BLOCK`] tokens), which leaves freed
/// smaller buffers behind in the allocator. Sequences of a batch each own one cache;
/// the model never shares them.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    layers: Vec<LayerKv>,
    /// Storage dtype (`None`: f32). Attention always computes in f32.
    storage: Option<DType>,
    /// Capacity of the first allocation, in tokens (0: grow from [`KvCache::BLOCK`]).
    reserve: usize,
}

#[derive(Debug, Clone, Default)]
struct LayerKv {
    k: Option<Tensor>,
    v: Option<Tensor>,
    len: usize,
}

impl KvCache {
    /// Growth granularity, in tokens.
    pub const BLOCK: usize = 128;

    /// An empty f32 cache for a model of `num_layers` layers.
    pub fn new(num_layers: usize) -> Self {
        Self {
            layers: vec![LayerKv::default(); num_layers],
            storage: None,
            reserve: 0,
        }
    }

    /// An empty cache storing keys and values as `dtype` (f16 halves the memory;
    /// values are widened back to f32 for attention, so only storage rounds).
    pub fn with_dtype(num_layers: usize, dtype: DType) -> Self {
        Self {
            layers: vec![LayerKv::default(); num_layers],
            storage: (dtype != DType::F32).then_some(dtype),
            reserve: 0,
        }
    }

    /// This cache, allocating room for `tokens` tokens per layer on its first append
    /// (the serving engine passes prompt plus `max_tokens`), so a sequence's buffers
    /// are allocated once instead of doubling as it grows.
    pub fn reserving(mut self, tokens: usize) -> Self {
        self.reserve = tokens;
        self
    }

    /// Tokens held (the position the next token will take).
    pub fn len(&self) -> usize {
        self.layers.first().map_or(0, |l| l.len)
    }

    /// Whether no token is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of layers this cache was made for.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Forgets every token after the first `len` (buffers are kept for reuse).
    pub fn truncate(&mut self, len: usize) {
        for l in &mut self.layers {
            l.len = l.len.min(len);
        }
    }

    /// Forgets everything and frees the buffers.
    pub fn clear(&mut self) {
        for l in &mut self.layers {
            *l = LayerKv::default();
        }
    }

    /// Bytes allocated for buffers (capacity, not length).
    pub fn size_in_bytes(&self) -> usize {
        self.layers
            .iter()
            .flat_map(|l| [&l.k, &l.v])
            .flatten()
            .map(|t| t.elem_count() * t.dtype().size_in_bytes())
            .sum()
    }

    /// Bytes one token takes over all layers, keys and values (0 before the first
    /// append).
    pub fn bytes_per_token(&self) -> usize {
        self.layers
            .iter()
            .flat_map(|l| [&l.k, &l.v])
            .flatten()
            .map(|t| {
                let (heads, _, dim) = t.dims3().unwrap_or((0, 0, 0));
                heads * dim * t.dtype().size_in_bytes()
            })
            .sum()
    }

    /// Views of `layer`'s cached keys and values, `(kv_heads, len, head_dim)`.
    #[cfg(test)]
    pub(crate) fn layer(&self, layer: usize) -> Option<(Tensor, Tensor)> {
        let l = self.layers.get(layer)?;
        let (k, v) = (l.k.as_ref()?, l.v.as_ref()?);
        Some((k.narrow(1, 0, l.len).ok()?, v.narrow(1, 0, l.len).ok()?))
    }

    /// Storage dtype of keys and values.
    pub fn dtype(&self) -> DType {
        self.storage.unwrap_or(DType::F32)
    }

    /// Appends the first `len` tokens of `source` (a cache of the same model) to every
    /// layer. Keys and values at a position depend only on the tokens up to it, so a
    /// sequence whose prompt starts with `source`'s first `len` tokens can start from
    /// them instead of recomputing them (prefix caching).
    pub fn extend_from(&mut self, source: &KvCache, len: usize) -> Result<()> {
        if source.num_layers() != self.num_layers() || len > source.len() {
            return Err(super::error::Error::InvalidArgument(format!(
                "cannot take {len} tokens from a {}-layer cache of {} tokens into a \
                 {}-layer cache",
                source.num_layers(),
                source.len(),
                self.num_layers()
            )));
        }
        if len == 0 {
            return Ok(());
        }
        for (layer, l) in source.layers.iter().enumerate() {
            let (Some(k), Some(v)) = (&l.k, &l.v) else {
                return Err(super::error::Error::InvalidArgument(
                    "source cache has a layer without buffers".into(),
                ));
            };
            self.append(layer, &k.narrow(1, 0, len)?, &v.narrow(1, 0, len)?)?;
        }
        Ok(())
    }

    /// Appends `k`, `v` of shape `(kv_heads, new, head_dim)` to `layer` and returns views
    /// of everything cached for it, of shape `(kv_heads, len, head_dim)`, in the storage
    /// dtype (callers widen f16 to f32 for attention).
    pub(crate) fn append(
        &mut self,
        layer: usize,
        k: &Tensor,
        v: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let dtype = self.storage.unwrap_or(DType::F32);
        let l = &mut self.layers[layer];
        let (heads, new, dim) = k.dims3()?;
        let needed = l.len + new;
        let capacity = l.k.as_ref().map_or(0, |t| t.dim(1).unwrap_or(0));
        if needed > capacity {
            let cap = if capacity == 0 && self.reserve >= needed {
                self.reserve
            } else {
                let cap = needed.div_ceil(Self::BLOCK) * Self::BLOCK;
                cap.max(capacity * 2).max(Self::BLOCK)
            };
            let grow = |old: &Option<Tensor>| -> Result<Tensor> {
                let buf = Tensor::zeros((heads, cap, dim), dtype, k.device())?;
                if let Some(old) = old {
                    if l.len > 0 {
                        buf.slice_set(&old.narrow(1, 0, l.len)?.contiguous()?, 1, 0)?;
                    }
                }
                Ok(buf)
            };
            let nk = grow(&l.k)?;
            let nv = grow(&l.v)?;
            l.k = Some(nk);
            l.v = Some(nv);
        }
        let (kb, vb) = match (&l.k, &l.v) {
            (Some(kb), Some(vb)) => (kb, vb),
            _ => {
                return Err(super::error::Error::InvalidArgument(
                    "kv cache buffers missing after allocation".into(),
                ))
            }
        };
        kb.slice_set(&k.to_dtype(dtype)?.contiguous()?, 1, l.len)?;
        vb.slice_set(&v.to_dtype(dtype)?.contiguous()?, 1, l.len)?;
        l.len = needed;
        Ok((kb.narrow(1, 0, needed)?, vb.narrow(1, 0, needed)?))
    }
}
