//! Models kept loaded between invokes, for `generate` on a live instance (`rto serve` keeps one [`CandleLm`]
//! in a worker process and calls `generate` once per request): loading SmolLM2 costs seconds, a short answer
//! less than that.
//!
//! Entries are keyed by what determines the weights in memory: the model and adapter paths, the dtype and the
//! device. rto's inputs are store paths named by content, so a path does not change meaning under a live
//! instance. At most [`CAPACITY`] models stay loaded; the least recently used one is dropped before another
//! loads, so that memory holds at most that many.
//!
//! [`CandleLm`]: super::CandleLm

use std::path::{Path, PathBuf};

use api::{Error, OpContext};
use candle_core::{DType, Device};
use tokenizers::Tokenizer;

use super::files;
use super::pieces::Pieces;
use crate::chat::ChatTemplate;
use crate::load::LoadOptions;
use crate::model::Decoder;

/// How many models a live instance keeps loaded: a base model with two adapters (an RT and an IT one, the
/// paper's comparison) would thrash with fewer.
pub(crate) const CAPACITY: usize = 3;

/// What identifies a loaded model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Key {
    model: PathBuf,
    adapter: Option<PathBuf>,
    dtype: DType,
    device: String,
}

impl Key {
    /// The key of `model` with `adapter` in `dtype` on `device`.
    fn new(model: &Path, adapter: Option<&Path>, dtype: DType, device: &Device) -> Self {
        // Two spellings of one path must not load the model twice.
        let canonical = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_owned());
        Self {
            model: canonical(model),
            adapter: adapter.map(canonical),
            dtype,
            device: format!("{:?}", device.location()),
        }
    }
}

/// A model ready to answer: the decoder and everything prompts and answers go through.
pub(crate) struct Live {
    /// The decoder, adapter merged.
    pub decoder: Decoder,
    /// Where it computes.
    pub device: Device,
    /// The model's tokenizer.
    pub tokenizer: Tokenizer,
    /// Token bytes for log-probabilities.
    pub pieces: Pieces,
    /// The token put before a prompt (as in training), if the tokenizer has one.
    pub bos: Option<u32>,
    /// Ids that end an answer.
    pub eos: Vec<u32>,
    /// The model's own chat template, compiled; `None` when it has none.
    pub template: Option<ChatTemplate>,
    /// The special-token texts a `chat_template` param may insert (from the model's tokenizer config).
    pub special: (String, String),
}

/// The loaded models, most recently used last.
#[derive(Default)]
pub(crate) struct Models {
    entries: Vec<(Key, Live)>,
    loads: usize,
}

impl Models {
    /// Models loaded over the instance's life (a reused model counts once).
    pub(crate) fn loads(&self) -> usize {
        self.loads
    }

    /// `model` with `adapter` in `dtype` on `device`, loaded on first use.
    pub(crate) fn get(
        &mut self,
        model: &Path,
        adapter: Option<&Path>,
        dtype: DType,
        device: &Device,
        ctx: &OpContext<'_>,
    ) -> Result<&Live, Error> {
        let key = Key::new(model, adapter, dtype, device);
        if let Some(at) = self.entries.iter().position(|(k, _)| *k == key) {
            let entry = self.entries.remove(at);
            self.entries.push(entry);
        } else {
            if self.entries.len() >= CAPACITY {
                let (old, _) = self.entries.remove(0);
                ctx.log(&format!("unloading `{}` (at most {CAPACITY} models stay loaded)", old.model.display()));
            }
            ctx.log(&format!(
                "loading model `{}`{} ({})",
                model.display(),
                adapter.map(|a| format!(" with adapter `{}`", a.display())).unwrap_or_default(),
                super::describe(device, dtype)
            ));
            let live = load(model, adapter, dtype, device.clone())?;
            self.loads += 1;
            self.entries.push((key, live));
        }
        Ok(&self.entries.last().expect("an entry was just moved or pushed there").1)
    }
}

fn load(model: &Path, adapter: Option<&Path>, dtype: DType, device: Device) -> Result<Live, Error> {
    let adapter = adapter.map(|dir| files::read_adapter(dir, &device)).transpose()?;
    let tokenizer = files::load_tokenizer(model)?;
    let eos = files::eos_ids(model, &tokenizer)?;
    let own = files::chat_template(model)?;
    let template = match &own.source {
        Some(source) => Some(ChatTemplate::new(source, &own.bos_token, &own.eos_token).map_err(|e| {
            Error::Failed(format!("`{}`: the model's chat template does not compile: {e}", model.display()))
        })?),
        None => None,
    };
    let opts = LoadOptions { dtype, device: device.clone(), trainable: false };
    let loaded = files::load_model(model, adapter.as_ref(), &opts, None)?;
    Ok(Live {
        decoder: loaded.decoder,
        device,
        pieces: Pieces::new(&tokenizer),
        bos: files::bos_id(&tokenizer),
        eos,
        template,
        special: (own.bos_token, own.eos_token),
        tokenizer,
    })
}
