//! Grouped-query self-attention with RoPE and a KV cache: the one block the Llama family, Qwen2 and Gemma-2
//! share. What differs between them is only the score scale and Gemma-2's logit soft-capping.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::lora::{Linear, LoraSet};
use crate::nn::{self, Rope};

/// The shape and score settings of an attention block.
pub(super) struct Shape {
    pub hidden: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    /// Bias on the q, k and v projections (Qwen2).
    pub qkv_bias: bool,
    /// Bias on the output projection.
    pub o_bias: bool,
    /// Multiplier of `q·k` (Llama: `1/sqrt(head_dim)`; Gemma-2: `query_pre_attn_scalar^-1/2`).
    pub scale: f64,
    /// Gemma-2's attention-logit soft cap.
    pub softcap: Option<f64>,
}

/// `q_proj`, `k_proj`, `v_proj`, `o_proj` (HF names, each optionally with a LoRA adapter) and the score settings.
pub(super) struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
    scale: f64,
    softcap: Option<f64>,
}

impl Attention {
    /// Loads the projections under `vb` (the layer's `self_attn`).
    pub fn new(s: Shape, vb: VarBuilder, lora: Option<&LoraSet>) -> Result<Self> {
        let (q, kv) = (s.num_heads * s.head_dim, s.num_kv_heads * s.head_dim);
        Ok(Self {
            q_proj: Linear::new(s.hidden, q, s.qkv_bias, vb.pp("q_proj"), lora)?,
            k_proj: Linear::new(s.hidden, kv, s.qkv_bias, vb.pp("k_proj"), lora)?,
            v_proj: Linear::new(s.hidden, kv, s.qkv_bias, vb.pp("v_proj"), lora)?,
            o_proj: Linear::new(q, s.hidden, s.o_bias, vb.pp("o_proj"), lora)?,
            num_heads: s.num_heads,
            num_kv_heads: s.num_kv_heads,
            head_dim: s.head_dim,
            scale: s.scale,
            softcap: s.softcap,
        })
    }

    /// `x`: `(batch, len, hidden)`; `mask`: this layer's (causal, local or padded); `cache`: this layer's keys
    /// and values so far, extended in place.
    pub fn forward(
        &self,
        x: &Tensor,
        (cos, sin): (&Tensor, &Tensor),
        mask: &Tensor,
        cache: Option<&mut Option<(Tensor, Tensor)>>,
    ) -> Result<Tensor> {
        let (b, len, _) = x.dims3()?;
        let heads = |t: Tensor, n: usize| t.reshape((b, len, n, self.head_dim))?.transpose(1, 2);
        let q = Rope::apply(&heads(self.q_proj.forward(x)?, self.num_heads)?, cos, sin)?;
        let mut k = Rope::apply(&heads(self.k_proj.forward(x)?, self.num_kv_heads)?, cos, sin)?;
        let mut v = heads(self.v_proj.forward(x)?, self.num_kv_heads)?.contiguous()?;
        if let Some(slot) = cache {
            if let Some((k0, v0)) = slot.as_ref() {
                k = Tensor::cat(&[k0, &k], 2)?;
                v = Tensor::cat(&[v0, &v], 2)?;
            }
            *slot = Some((k.clone(), v.clone()));
        }
        let rep = self.num_heads / self.num_kv_heads;
        let (k, v) = (nn::repeat_kv(&k, rep)?, nn::repeat_kv(&v, rep)?);
        let y = nn::attention(&q, &k, &v, self.scale, mask, self.softcap)?;
        self.o_proj.forward(&y.transpose(1, 2)?.reshape((b, len, self.num_heads * self.head_dim))?)
    }
}
