//! Differentiable building blocks shared by the decoders.
//!
//! candle-nn's fused kernels (`softmax_last_dim`, `rms_norm`, `rope`) are registered without a backward pass, so
//! a model built from them silently trains almost nothing (reference/candle.md §2). Everything here is composed
//! of primitive tensor ops that autograd knows; the gradient test in `tests/` guards this.

use candle_core::{D, DType, Device, Result, Tensor};

/// RMSNorm as HF computes it: in f32, then cast back and scaled by `weight` (`(1 + weight)` when `offset` is 1,
/// as Gemma stores it).
#[derive(Debug, Clone)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    /// Reads `<prefix>.weight` of length `size`.
    pub fn new(size: usize, eps: f64, vb: candle_nn::VarBuilder) -> Result<Self> {
        Ok(Self { weight: vb.get(size, "weight")?, eps })
    }

    /// `x / sqrt(mean(x²) + eps) * weight`, over the last dimension.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dtype = x.dtype();
        let x = x.to_dtype(DType::F32)?;
        let mean_sq = x.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = x.broadcast_div(&(mean_sq + self.eps)?.sqrt()?)?;
        normed.to_dtype(dtype)?.broadcast_mul(&self.weight)
    }
}

/// Rotary position embedding in HF's half-split layout, with the cos/sin tables computed for exactly the
/// positions needed (so there is no maximum length to configure).
#[derive(Debug, Clone)]
pub struct Rope {
    /// One inverse frequency per rotated pair, already rescaled (Llama 3 scaling) where the config asks.
    inv_freq: Vec<f32>,
}

impl Rope {
    /// A rope over `inv_freq` (length `head_dim / 2`).
    pub fn new(inv_freq: Vec<f32>) -> Self {
        Self { inv_freq }
    }

    /// The unscaled frequencies `1 / theta^(2i / head_dim)`.
    pub fn default_inv_freq(theta: f64, head_dim: usize) -> Vec<f32> {
        (0..head_dim).step_by(2).map(|i| (1.0 / theta.powf(i as f64 / head_dim as f64)) as f32).collect()
    }

    /// `(cos, sin)`, each `(len, head_dim / 2)` in `dtype`, for positions `offset .. offset + len`.
    pub fn cos_sin(&self, offset: usize, len: usize, dtype: DType, device: &Device) -> Result<(Tensor, Tensor)> {
        let positions: Vec<f32> = (offset..offset + len).map(|p| p as f32).collect();
        let positions = Tensor::from_vec(positions, (len, 1), device)?;
        let inv_freq = Tensor::from_slice(&self.inv_freq, (1, self.inv_freq.len()), device)?;
        let angles = positions.broadcast_mul(&inv_freq)?;
        Ok((angles.cos()?.to_dtype(dtype)?, angles.sin()?.to_dtype(dtype)?))
    }

    /// Rotates `x` of shape `(batch, heads, len, head_dim)`; `rope_slow` is the differentiable variant.
    pub fn apply(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        candle_nn::rotary_emb::rope_slow(&x.contiguous()?, cos, sin)
    }
}

/// The additive attention mask `(1, 1, len, offset + len)`: 0 where query `i` (at position `offset + i`) may see
/// key `j`, `-inf` elsewhere. Causal, and limited to the last `window` positions when a sliding window is set
/// (HF semantics: key `j` is visible when `pos_i - j < window`).
pub fn attention_mask(len: usize, offset: usize, window: Option<usize>, device: &Device) -> Result<Tensor> {
    let total = offset + len;
    let mask: Vec<f32> = (0..len)
        .flat_map(|i| {
            let pos = offset + i;
            (0..total).map(move |j| {
                let visible = j <= pos && window.is_none_or(|w| pos - j < w);
                if visible { 0.0 } else { f32::NEG_INFINITY }
            })
        })
        .collect();
    Tensor::from_vec(mask, (1, 1, len, total), device)
}

/// Repeats each of the `n_kv` heads of `(batch, n_kv, len, head_dim)` `n_rep` times (grouped-query attention);
/// built from `cat`, which has a backward pass.
pub fn repeat_kv(x: &Tensor, n_rep: usize) -> Result<Tensor> {
    if n_rep == 1 {
        return Ok(x.clone());
    }
    let (b, n_kv, len, head_dim) = x.dims4()?;
    Tensor::cat(&vec![x; n_rep], 2)?.reshape((b, n_kv * n_rep, len, head_dim))
}

/// Plain scaled dot-product attention: `softmax(q kᵀ · scale + mask) v`, the softmax in f32 as HF's eager
/// attention does, optionally soft-capping the scores (`cap · tanh(s / cap)`, Gemma-2).
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64, mask: &Tensor, cap: Option<f64>) -> Result<Tensor> {
    let dtype = q.dtype();
    let scores = (q.contiguous()?.matmul(&k.t()?.contiguous()?)? * scale)?.to_dtype(DType::F32)?;
    let scores = match cap {
        Some(cap) => ((scores / cap)?.tanh()? * cap)?,
        None => scores,
    };
    let probs = candle_nn::ops::softmax(&scores.broadcast_add(mask)?, D::Minus1)?.to_dtype(dtype)?;
    probs.matmul(&v.contiguous()?)
}

/// The MLP activations found in the supported configs (`hidden_act`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub enum Activation {
    /// `x · sigmoid(x)` (Llama, Mistral, Qwen2).
    #[serde(rename = "silu", alias = "swish")]
    Silu,
    /// GELU, tanh approximation (Gemma).
    #[serde(rename = "gelu_pytorch_tanh", alias = "gelu_new")]
    GeluTanh,
    /// GELU, exact (erf).
    #[serde(rename = "gelu")]
    Gelu,
}

impl Activation {
    /// Applies the activation.
    pub fn forward(self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Silu => candle_nn::ops::silu(x),
            Self::GeluTanh => x.gelu(),
            Self::Gelu => x.gelu_erf(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn visible(len: usize, offset: usize, window: Option<usize>) -> Vec<Vec<u8>> {
        let m = attention_mask(len, offset, window, &Device::Cpu).unwrap().squeeze(0).unwrap().squeeze(0).unwrap();
        m.to_vec2::<f32>().unwrap().iter().map(|r| r.iter().map(|v| u8::from(*v == 0.0)).collect()).collect()
    }

    #[test]
    fn causal_mask_with_offset_and_window() {
        assert_eq!(visible(3, 0, None), vec![vec![1, 0, 0], vec![1, 1, 0], vec![1, 1, 1]]);
        // Two cached positions, then two new queries at positions 2 and 3.
        assert_eq!(visible(2, 2, None), vec![vec![1, 1, 1, 0], vec![1, 1, 1, 1]]);
        // A window of 2: each position sees itself and the one before.
        assert_eq!(visible(3, 0, Some(2)), vec![vec![1, 0, 0], vec![1, 1, 0], vec![0, 1, 1]]);
    }
}
