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

    /// `(cos, sin)`, each `(batch, len, head_dim / 2)` in `dtype`, for a left-padded batch: row `r` holds
    /// `pads[r]` padding positions before its tokens, which start at position 0 as if the row were alone (HF's
    /// `position_ids = cumsum(attention_mask) - 1`). Positions `offset .. offset + len` of the padded sequence
    /// are computed; padding positions get position 0 (their output is never attended to).
    pub fn cos_sin_padded(
        &self,
        offset: usize,
        len: usize,
        pads: &[usize],
        dtype: DType,
        device: &Device,
    ) -> Result<(Tensor, Tensor)> {
        let positions: Vec<f32> =
            pads.iter().flat_map(|pad| (offset..offset + len).map(move |i| i.saturating_sub(*pad) as f32)).collect();
        let positions = Tensor::from_vec(positions, (pads.len(), len, 1), device)?;
        let inv_freq = Tensor::from_slice(&self.inv_freq, (1, 1, self.inv_freq.len()), device)?;
        let angles = positions.broadcast_mul(&inv_freq)?;
        Ok((angles.cos()?.to_dtype(dtype)?, angles.sin()?.to_dtype(dtype)?))
    }

    /// Rotates `x` of shape `(batch, heads, len, head_dim)` by tables from [`Rope::cos_sin`] (shared by the
    /// batch; `rope_slow` is the differentiable variant) or [`Rope::cos_sin_padded`] (one per row).
    pub fn apply(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        if cos.rank() == 2 {
            return candle_nn::rotary_emb::rope_slow(&x.contiguous()?, cos, sin);
        }
        // rope_slow's formula with a per-row table: (batch, len, half) → (batch, 1, len, head_dim).
        let x = x.contiguous()?;
        let cos = Tensor::cat(&[cos, cos], D::Minus1)?.unsqueeze(1)?;
        let sin = Tensor::cat(&[sin, sin], D::Minus1)?.unsqueeze(1)?;
        let half = x.dim(D::Minus1)? / 2;
        let rotated =
            Tensor::cat(&[&x.narrow(D::Minus1, half, half)?.neg()?, &x.narrow(D::Minus1, 0, half)?], D::Minus1)?;
        x.broadcast_mul(&cos)? + rotated.broadcast_mul(&sin)?
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

/// [`attention_mask`] for a left-padded batch, `(batch, 1, len, offset + len)`: row `r`'s first `pads[r]`
/// positions are padding, which no query sees, except that a padding query sees itself, so that its softmax row
/// is not all `-inf` (NaN would then reach the real rows through `0 · NaN` in the next layer's values).
pub fn padded_attention_mask(
    len: usize,
    offset: usize,
    pads: &[usize],
    window: Option<usize>,
    device: &Device,
) -> Result<Tensor> {
    let total = offset + len;
    let mask: Vec<f32> = pads
        .iter()
        .flat_map(|&pad| {
            (0..len).flat_map(move |i| {
                let pos = offset + i;
                (0..total).map(move |j| {
                    // Indices, not positions, but a window compares differences, which padding does not change.
                    let visible = (j <= pos && j >= pad && window.is_none_or(|w| pos - j < w)) || j == pos;
                    if visible { 0.0 } else { f32::NEG_INFINITY }
                })
            })
        })
        .collect();
    Tensor::from_vec(mask, (pads.len(), 1, len, total), device)
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

    fn visible_padded(len: usize, offset: usize, pads: &[usize], window: Option<usize>) -> Vec<Vec<Vec<u8>>> {
        let m = padded_attention_mask(len, offset, pads, window, &Device::Cpu).unwrap().squeeze(1).unwrap();
        let rows = m.to_vec3::<f32>().unwrap();
        rows.iter().map(|r| r.iter().map(|q| q.iter().map(|v| u8::from(*v == 0.0)).collect()).collect()).collect()
    }

    #[test]
    fn padded_mask_hides_padding_but_never_a_whole_row() {
        let m = visible_padded(3, 0, &[0, 2], None);
        assert_eq!(m[0], visible(3, 0, None), "an unpadded row is plainly causal");
        assert_eq!(m[1], vec![vec![1, 0, 0], vec![0, 1, 0], vec![0, 0, 1]]);
        // One cached step later, with a window of 2 counted from the row's own tokens.
        let m = visible_padded(1, 3, &[1, 0], Some(2));
        assert_eq!(m, vec![vec![vec![0, 0, 1, 1]], vec![vec![0, 0, 1, 1]]]);
        let m = visible_padded(1, 3, &[2, 0], Some(3));
        assert_eq!(m, vec![vec![vec![0, 0, 1, 1]], vec![vec![0, 1, 1, 1]]]);
    }

    #[test]
    fn padded_rope_tables_restart_each_row_at_zero() {
        let rope = Rope::new(Rope::default_inv_freq(10_000.0, 8));
        let (cos, sin) = rope.cos_sin_padded(1, 3, &[0, 2], DType::F32, &Device::Cpu).unwrap();
        let (cos0, sin0) = rope.cos_sin(1, 3, DType::F32, &Device::Cpu).unwrap();
        assert_eq!(cos.get(0).unwrap().to_vec2::<f32>().unwrap(), cos0.to_vec2::<f32>().unwrap());
        assert_eq!(sin.get(0).unwrap().to_vec2::<f32>().unwrap(), sin0.to_vec2::<f32>().unwrap());
        // Row 1: indices 1, 2, 3 behind two pads are positions 0, 0, 1.
        let (cos1, _) = rope.cos_sin(0, 2, DType::F32, &Device::Cpu).unwrap();
        let row1 = cos.get(1).unwrap().to_vec2::<f32>().unwrap();
        let want = cos1.to_vec2::<f32>().unwrap();
        assert_eq!(row1, vec![want[0].clone(), want[0].clone(), want[1].clone()]);
        // The per-row rotation equals rope_slow's on the same positions.
        let x = Tensor::arange(0f32, 2.0 * 2.0 * 3.0 * 8.0, &Device::Cpu).unwrap().reshape((2, 2, 3, 8)).unwrap();
        let x = (x / 17.0).unwrap().sin().unwrap();
        let shared = Rope::apply(&x, &cos0, &sin0).unwrap();
        let (c, s) = rope.cos_sin_padded(1, 3, &[0, 0], DType::F32, &Device::Cpu).unwrap();
        let per_row = Rope::apply(&x, &c, &s).unwrap();
        let diff = (shared - per_row).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap();
        assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);
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
