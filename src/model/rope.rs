//! Rotary position embeddings in both pair layouts, with Llama 3 and linear scaling.

use candle_core::{Device, Tensor};

use super::config::{LlamaConfig, RopeLayout, RopeScaling};
use super::error::Result;

/// Per-model RoPE frequencies; the cos/sin tables are computed per batch for the
/// positions it actually holds, so long contexts cost nothing up front.
#[derive(Debug, Clone)]
pub struct Rope {
    inv_freq: Vec<f64>,
    layout: RopeLayout,
    position_scale: f64,
}

impl Rope {
    /// Frequencies for `cfg`, with its scaling applied.
    pub fn new(cfg: &LlamaConfig) -> Self {
        let half = cfg.head_dim / 2;
        let theta = cfg.rope_theta as f64;
        let mut inv_freq: Vec<f64> = (0..half)
            .map(|i| 1.0 / theta.powf((2 * i) as f64 / cfg.head_dim as f64))
            .collect();
        let mut position_scale = 1.0;
        match cfg.rope_scaling {
            None => {}
            Some(RopeScaling::Linear { factor }) => position_scale = 1.0 / factor as f64,
            Some(RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            }) => {
                let (factor, low, high) = (
                    factor as f64,
                    low_freq_factor as f64,
                    high_freq_factor as f64,
                );
                let old = original_max_position_embeddings as f64;
                let low_wavelen = old / low;
                let high_wavelen = old / high;
                for f in inv_freq.iter_mut() {
                    let wavelen = 2.0 * std::f64::consts::PI / *f;
                    if wavelen < high_wavelen {
                        // high frequencies are kept
                    } else if wavelen > low_wavelen {
                        *f /= factor;
                    } else {
                        let smooth = (old / wavelen - low) / (high - low);
                        *f = (1.0 - smooth) * *f / factor + smooth * *f;
                    }
                }
            }
        }
        Self {
            inv_freq,
            layout: cfg.rope_layout,
            position_scale,
        }
    }

    /// `cos` and `sin` tables of shape `(positions.len(), head_dim / 2)`.
    pub fn tables(&self, positions: &[usize], device: &Device) -> Result<(Tensor, Tensor)> {
        let half = self.inv_freq.len();
        let mut cos = Vec::with_capacity(positions.len() * half);
        let mut sin = Vec::with_capacity(positions.len() * half);
        for &p in positions {
            let p = p as f64 * self.position_scale;
            for &f in &self.inv_freq {
                let a = p * f;
                cos.push(a.cos() as f32);
                sin.push(a.sin() as f32);
            }
        }
        let n = positions.len();
        Ok((
            Tensor::from_vec(cos, (n, half), device)?,
            Tensor::from_vec(sin, (n, half), device)?,
        ))
    }

    /// Rotates `x` of shape `(1, heads, tokens, head_dim)` (contiguous), one table row per
    /// token. `differentiable` picks candle's slow ops, which have a backward pass.
    pub fn apply(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        differentiable: bool,
    ) -> Result<Tensor> {
        use candle_nn::rotary_emb as re;
        Ok(match (self.layout, differentiable) {
            (RopeLayout::Interleaved, false) => re::rope_i(x, cos, sin)?,
            (RopeLayout::Interleaved, true) => re::rope_i_slow(x, cos, sin)?,
            (RopeLayout::HalfSplit, false) => re::rope(x, cos, sin)?,
            (RopeLayout::HalfSplit, true) => re::rope_slow(x, cos, sin)?,
        })
    }
}
