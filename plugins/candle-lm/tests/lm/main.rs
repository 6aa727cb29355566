//! candle-lm's tests, one binary with a module per area.

mod bf16;
mod checkpointing;
mod gemma2;
mod gguf;
mod grads;
mod grouping;
mod load_errors;
mod logits;
mod lora;
mod resume;
mod sample;
mod support;
mod train;
