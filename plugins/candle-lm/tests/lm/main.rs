//! candle-lm's tests, one binary with a module per area.

mod grads;
mod load_errors;
mod logits;
mod lora;
mod sample;
mod support;
mod train;
