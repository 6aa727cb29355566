//! `tokenizer`: a byte-level BPE (GPT-2 style: bytes mapped to printable characters, the GPT-2 split regex, no
//! normaliser) trained with the `tokenizers` crate's BPE trainer on the text of the stage's inputs, for the tiny
//! models the embedded CPU study pre-trains from scratch.
//!
//! Byte-level, so that any text encodes without an unknown token, the chat format's role markers (`<|user|>`,
//! `<|assistant|>`) included, as plain text. The special tokens come first (ids 0, 1, …), then the 256 byte
//! symbols in code-point order, then the merges in the order they were learnt; the trainer breaks count ties by
//! the pair's ids, so the same corpus gives a byte-identical `tokenizer.json`.
//!
//! What is read from each input (a file, or every `*.jsonl` / `*.txt` file of a directory, by name): from a
//! `.jsonl` file, per row, the concatenated `segments[].text` (the `dataset` stage's `train.jsonl`), `text`,
//! and `prompt` followed by `response`, whichever are present; from any other file, each non-blank line.

use std::path::{Path, PathBuf};

use api::{Error, OpContext};
use serde_json::{Map, Value, json};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::TrainerWrapper;
use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, Tokenizer};

use super::files;
use super::params::TokenizerParams;

/// The files an input stands for: itself, or a directory's `*.jsonl` and `*.txt` files sorted by name.
fn input_files(name: &str, path: &Path) -> Result<Vec<PathBuf>, Error> {
    if !path.is_dir() {
        if !path.is_file() {
            return Err(Error::Failed(format!("input `{name}`: `{}` does not exist", path.display())));
        }
        return Ok(vec![path.to_owned()]);
    }
    let entries =
        std::fs::read_dir(path).map_err(|e| Error::Failed(format!("cannot read `{}`: {e}", path.display())))?;
    let mut found = Vec::new();
    for entry in entries {
        let p = entry.map_err(|e| Error::Failed(format!("cannot read `{}`: {e}", path.display())))?.path();
        let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("");
        if p.is_file() && (ext == "jsonl" || ext == "txt") {
            found.push(p);
        }
    }
    found.sort();
    if found.is_empty() {
        return Err(Error::Failed(format!("input `{name}`: `{}` holds no .jsonl or .txt file", path.display())));
    }
    Ok(found)
}

/// The texts of one JSONL row (none when it has no text field).
fn row_texts(row: &Map<String, Value>, out: &mut Vec<String>) {
    if let Some(Value::Array(segments)) = row.get("segments") {
        let joined: String = segments.iter().filter_map(|s| s.get("text").and_then(Value::as_str)).collect();
        out.push(joined);
    }
    if let Some(text) = row.get("text").and_then(Value::as_str) {
        out.push(text.to_owned());
    }
    let pair: String = ["prompt", "response"].iter().filter_map(|k| row.get(*k).and_then(Value::as_str)).collect();
    out.push(pair);
}

/// Every training text of the inputs, in input-name order.
fn corpus(ctx: &OpContext<'_>) -> Result<Vec<String>, Error> {
    let mut texts = Vec::new();
    for (name, path) in ctx.inputs {
        for file in input_files(name, path)? {
            if file.extension().and_then(|e| e.to_str()) == Some("jsonl") {
                for (_, row) in files::read_jsonl(&file)? {
                    row_texts(&row, &mut texts);
                }
            } else {
                let text = std::fs::read_to_string(&file)
                    .map_err(|e| Error::Failed(format!("cannot read `{}`: {e}", file.display())))?;
                texts.extend(text.lines().map(str::to_owned));
            }
        }
    }
    texts.retain(|t| !t.trim().is_empty());
    Ok(texts)
}

/// Trains the tokenizer on `texts`.
pub(crate) fn train(p: &TokenizerParams, texts: &[String]) -> Result<Tokenizer, Error> {
    let failed = |what: &str, e: tokenizers::Error| Error::Failed(format!("{what}: {e}"));
    let specials: Vec<AddedToken> = p.special_tokens.iter().map(|t| AddedToken::from(t.clone(), true)).collect();
    let mut tokenizer = Tokenizer::new(BPE::default());
    tokenizer.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
    tokenizer.with_decoder(Some(ByteLevelDecoder::default()));
    // Known before training, so that a `</s>` inside the text is split out rather than learnt as bytes; ids
    // 0, 1, … as the trainer gives them.
    tokenizer.add_special_tokens(specials.clone()).map_err(|e| failed("cannot add the special tokens", e))?;
    let trainer = BpeTrainerBuilder::new()
        .vocab_size(p.vocab_size)
        .min_frequency(p.min_frequency)
        .special_tokens(specials)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .show_progress(false)
        .build();
    let mut trainer = TrainerWrapper::BpeTrainer(trainer);
    tokenizer.train(&mut trainer, texts.iter()).map_err(|e| failed("cannot train the tokenizer", e))?;
    for (i, t) in p.special_tokens.iter().enumerate() {
        if tokenizer.token_to_id(t) != Some(i as u32) {
            return Err(Error::Failed(format!("internal: special token `{t}` did not get id {i}")));
        }
    }
    if let Some(bos) = &p.bos_token {
        let id = tokenizer.token_to_id(bos).unwrap_or_default();
        let template = TemplateProcessing::builder()
            .try_single(format!("{bos} $A"))
            .and_then(|b| b.try_pair(format!("{bos} $A $B")))
            .map_err(|e| Error::Failed(format!("internal: bos template: {e}")))?
            .special_tokens(vec![(bos.clone(), id)])
            .build()
            .map_err(|e| Error::Failed(format!("internal: bos template: {e}")))?;
        tokenizer.with_post_processor(Some(template));
    }
    Ok(tokenizer)
}

/// Runs `tokenizer`.
pub(super) fn run(p: &TokenizerParams, ctx: &mut OpContext<'_>) -> Result<Value, Error> {
    let texts = corpus(ctx)?;
    if texts.is_empty() {
        return Err(Error::Failed("the inputs hold no text to train a tokenizer on".into()));
    }
    if ctx.cancelled() {
        return Err(Error::Cancelled);
    }
    let tokenizer = train(p, &texts)?;
    let dir = ctx.out_dir.join("tokenizer");
    std::fs::create_dir_all(&dir).map_err(|e| Error::Failed(format!("cannot create `{}`: {e}", dir.display())))?;
    let json = tokenizer.to_string(true).map_err(|e| Error::Failed(format!("cannot serialise the tokenizer: {e}")))?;
    let path = dir.join("tokenizer.json");
    std::fs::write(&path, json + "\n").map_err(|e| Error::Failed(format!("cannot write `{}`: {e}", path.display())))?;
    let config = json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": p.eos_token,
        "bos_token": p.bos_token,
        "model_max_length": p.model_max_length,
        "clean_up_tokenization_spaces": false,
    });
    files::write_json(&dir.join("tokenizer_config.json"), &config)?;
    let vocab = tokenizer.get_vocab_size(true);
    let merges = vocab.saturating_sub(p.special_tokens.len() + super::params::BYTE_ALPHABET);
    ctx.log(&format!("trained a byte-level BPE on {} texts: {vocab} tokens, {merges} merges", texts.len()));
    Ok(json!({
        "texts": texts.len(),
        "vocab_size": vocab,
        "merges": merges,
        "eos_token": p.eos_token,
        "bos_token": p.bos_token,
    }))
}
