//! Training examples as the `dataset` stage writes them, turned into token batches with a loss mask.
//!
//! An example is `{"id", "segments": [{"text", "loss": bool}, …]}`: the chat template already decided the text,
//! so RT and IT differ here only in which segments exist. Each segment is tokenized on its own (no special tokens
//! added; added tokens such as the eos inside the text are still matched), so a token never straddles a loss
//! boundary and the mask is exact. Token `i` is a training target (predicted from tokens `< i`) when its segment
//! has `loss = true`.
//!
//! candle's `cross_entropy` has no ignore index, so [`masked_nll`] computes the loss with `log_softmax` + `gather`
//! and a 0/1 weight per position; masked positions contribute exactly zero, whatever their label.

use std::path::{Path, PathBuf};

use candle_core::{D, DType, Device, Tensor};
use serde::Deserialize;

/// One segment of an example's text.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Segment {
    /// The text, exactly as it goes into the model.
    pub text: String,
    /// Whether the segment's tokens are training targets.
    pub loss: bool,
}

/// One training example.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Example {
    /// Stable id (`<input>:<row>`), for messages.
    pub id: String,
    /// The text in order.
    pub segments: Vec<Segment>,
}

/// Why the training data could not be read or tokenized.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The file could not be read.
    #[error("cannot read `{path}`: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A line is not an example.
    #[error("`{path}` line {line}: {message}")]
    BadLine {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// serde's message.
        message: String,
    },
    /// The tokenizer failed on an example.
    #[error("example `{id}`: tokenizer error: {message}")]
    Tokenize {
        /// The example id.
        id: String,
        /// The tokenizer's message.
        message: String,
    },
}

/// Reads a JSONL of examples; blank lines are skipped, anything else that is not an example is an error naming
/// the line.
pub fn read_examples(path: &Path) -> Result<Vec<Example>, DataError> {
    let text = std::fs::read_to_string(path).map_err(|source| DataError::Io { path: path.to_owned(), source })?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| DataError::BadLine {
                path: path.to_owned(),
                line: i + 1,
                message: e.to_string(),
            })
        })
        .collect()
}

/// An example as token ids with its loss mask.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokenized {
    /// The example id.
    pub id: String,
    /// Token ids.
    pub ids: Vec<u32>,
    /// `loss[i]`: token `i` is a target. Never true for token 0, which nothing predicts.
    pub loss: Vec<bool>,
}

impl Tokenized {
    /// Number of target tokens.
    pub fn loss_tokens(&self) -> usize {
        self.loss.iter().filter(|&&l| l).count()
    }
}

/// Tokenizes `example` segment by segment, prepending `bos` when given (a BOS is never a target), and truncating
/// to `max_len` tokens.
pub fn tokenize(
    example: &Example,
    tokenizer: &tokenizers::Tokenizer,
    bos: Option<u32>,
    max_len: usize,
) -> Result<Tokenized, DataError> {
    let mut ids: Vec<u32> = bos.into_iter().collect();
    let mut loss = vec![false; ids.len()];
    for seg in &example.segments {
        let enc = tokenizer
            .encode(seg.text.as_str(), false)
            .map_err(|e| DataError::Tokenize { id: example.id.clone(), message: e.to_string() })?;
        ids.extend_from_slice(enc.get_ids());
        loss.resize(ids.len(), seg.loss);
    }
    ids.truncate(max_len);
    loss.truncate(max_len);
    if let Some(first) = loss.first_mut() {
        *first = false;
    }
    Ok(Tokenized { id: example.id.clone(), ids, loss })
}

/// A right-padded batch: inputs, next-token targets and their 0/1 weights.
#[derive(Debug, Clone)]
pub struct Batch {
    /// `(batch, len)` u32 inputs.
    pub input_ids: Tensor,
    /// `(batch, len - 1)` u32: the token each position must predict (0 where masked).
    pub targets: Tensor,
    /// `(batch, len - 1)` f32: 1 where the target counts, 0 elsewhere (padding, non-loss segments).
    pub weights: Tensor,
    /// Number of targets that count.
    pub loss_tokens: usize,
    /// Number of real (non-padding) input tokens.
    pub tokens: usize,
}

/// Pads `examples` on the right to the longest and builds the targets; `None` when they are all shorter than
/// two tokens (nothing to predict).
pub fn make_batch(examples: &[&Tokenized], device: &Device) -> candle_core::Result<Option<Batch>> {
    let len = examples.iter().map(|e| e.ids.len()).max().unwrap_or(0);
    if len < 2 {
        return Ok(None);
    }
    let b = examples.len();
    let mut input = vec![0u32; b * len];
    let mut targets = vec![0u32; b * (len - 1)];
    let mut weights = vec![0f32; b * (len - 1)];
    let (mut loss_tokens, mut tokens) = (0, 0);
    for (row, e) in examples.iter().enumerate() {
        input[row * len..row * len + e.ids.len()].copy_from_slice(&e.ids);
        tokens += e.ids.len();
        for i in 1..e.ids.len() {
            if e.loss[i] {
                targets[row * (len - 1) + i - 1] = e.ids[i];
                weights[row * (len - 1) + i - 1] = 1.0;
                loss_tokens += 1;
            }
        }
    }
    Ok(Some(Batch {
        input_ids: Tensor::from_vec(input, (b, len), device)?,
        targets: Tensor::from_vec(targets, (b, len - 1), device)?,
        weights: Tensor::from_vec(weights, (b, len - 1), device)?,
        loss_tokens,
        tokens,
    }))
}

/// Sum over positions of `-log p(target) · weight`, for `logits` `(batch, len, vocab)` (the last position
/// predicts nothing and is dropped), `targets` and `weights` `(batch, len - 1)`. Divide by the number of counted
/// targets for the mean.
pub fn masked_nll(logits: &Tensor, targets: &Tensor, weights: &Tensor) -> candle_core::Result<Tensor> {
    let len = logits.dim(1)?;
    let logp = candle_nn::ops::log_softmax(&logits.narrow(1, 0, len - 1)?.to_dtype(DType::F32)?, D::Minus1)?;
    let picked = logp.gather(&targets.unsqueeze(D::Minus1)?, D::Minus1)?.squeeze(D::Minus1)?;
    (picked * weights)?.sum_all()?.neg()
}
