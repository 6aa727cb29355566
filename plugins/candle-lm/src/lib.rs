//! `candle-lm`: the library half of rto's model back-end. Trainable decoders written with differentiable ops
//! only (candle-transformers' LLMs do not train: their fused kernels have no backward pass), loading of Hugging
//! Face model directories, LoRA adapters saved in PEFT's layout, and the training loop for response tuning (RT)
//! and instruction tuning (IT): the loss covers only the segments the `dataset` stage marks.
//!
//! Module map: [`model`] (architectures, one file per family; [`model::CausalLm`] is what a new family
//! implements), [`nn`] (the shared differentiable blocks), [`load`] (model directories), [`lora`] (adapters),
//! [`data`] (segment examples → token batches), [`train`] (the loop), [`backward`] (a micro-batch's gradients,
//! plain or with gradient checkpointing), [`sample`] (generation, batched, with log probabilities), [`chat`]
//! (chat templates), [`error`] (typed load errors), [`plugin`] (the rto plugin: [`CandleLm`] and its ops `init`,
//! `train`, `sample`, `tokenizer`, `merge`, `generate`; [`descriptor`] is what rto links in).

#![deny(missing_docs)]

pub mod backward;
pub mod chat;
pub mod data;
pub mod error;
pub mod gguf;
pub mod load;
pub mod lora;
pub mod model;
pub mod nn;
pub mod optim;
pub mod plugin;
pub mod sample;
pub mod train;

pub use error::LoadError;
pub use plugin::CandleLm;

api::declare_plugin!(CandleLm);
