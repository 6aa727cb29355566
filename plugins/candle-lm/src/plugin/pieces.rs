//! The bytes of a single token, for `generate`'s log-probabilities (OpenAI's `bytes`: a character split across
//! tokens shows up as the raw bytes of each part, which concatenate to the text).
//!
//! Decoding one token alone would lose those bytes (the decoder replaces a partial UTF-8 sequence with U+FFFD),
//! so the token's vocabulary string is mapped back to bytes the way its decoder would: GPT-2's byte-to-character
//! table for byte-level BPE (SmolLM2, Llama 3, Qwen2), `<0xHH>` tokens and `▁` for SentencePiece byte fallback
//! (Llama 2, Gemma). Added tokens (`<|im_end|>`) are their own text; any other tokenizer decodes the token alone.

use std::collections::HashMap;

use tokenizers::{DecoderWrapper, Tokenizer};

/// How a tokenizer's tokens become bytes.
#[derive(Debug)]
pub(crate) struct Pieces {
    kind: Kind,
    /// Added (special or not) tokens by id: their content, not run through the decoder.
    added: HashMap<u32, String>,
}

#[derive(Debug)]
enum Kind {
    /// Character → byte, GPT-2's table inverted.
    ByteLevel(HashMap<char, u8>),
    /// SentencePiece with byte fallback.
    ByteFallback,
    /// Ask the tokenizer.
    Decode,
}

impl Pieces {
    /// Inspects `tokenizer`'s decoder.
    pub(crate) fn new(tokenizer: &Tokenizer) -> Self {
        let has = |f: &dyn Fn(&DecoderWrapper) -> bool| match tokenizer.get_decoder() {
            Some(DecoderWrapper::Sequence(seq)) => seq.get_decoders().iter().any(f),
            Some(d) => f(d),
            None => false,
        };
        let kind = if has(&|d| matches!(d, DecoderWrapper::ByteLevel(_))) {
            Kind::ByteLevel(byte_level_chars())
        } else if has(&|d| matches!(d, DecoderWrapper::ByteFallback(_))) {
            Kind::ByteFallback
        } else {
            Kind::Decode
        };
        let added = tokenizer.get_added_tokens_decoder().into_iter().map(|(id, t)| (id, t.content)).collect();
        Self { kind, added }
    }

    /// The bytes token `id` contributes to a decoded text.
    pub(crate) fn bytes(&self, tokenizer: &Tokenizer, id: u32) -> Vec<u8> {
        if let Some(text) = self.added.get(&id) {
            return text.as_bytes().to_vec();
        }
        let Some(token) = tokenizer.id_to_token(id) else { return Vec::new() };
        match &self.kind {
            Kind::ByteLevel(table) => {
                // A character outside the table cannot come from byte-level BPE; keep it as UTF-8.
                let mut out = Vec::with_capacity(token.len());
                for c in token.chars() {
                    match table.get(&c) {
                        Some(b) => out.push(*b),
                        None => out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
                    }
                }
                out
            }
            Kind::ByteFallback => match byte_token(&token) {
                Some(b) => vec![b],
                None => token.replace('\u{2581}', " ").into_bytes(),
            },
            Kind::Decode => tokenizer.decode(&[id], false).map(String::into_bytes).unwrap_or_default(),
        }
    }
}

/// `<0xHH>` → the byte.
fn byte_token(token: &str) -> Option<u8> {
    let hex = token.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

/// GPT-2's `bytes_to_unicode`, inverted: printable Latin-1 bytes stand for themselves, the other bytes for the
/// characters from U+0100 on, in byte order.
fn byte_level_chars() -> HashMap<char, u8> {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut next = 0u32;
    (0..=255u8)
        .map(|b| {
            if printable(b) {
                (char::from(b), b)
            } else {
                let c = char::from_u32(256 + next).expect("U+0100..U+0143 are characters");
                next += 1;
                (c, b)
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_level_table_matches_gpt2() {
        let t = byte_level_chars();
        assert_eq!(t.len(), 256);
        assert_eq!(t[&'Ġ'], b' ', "GPT-2's space");
        assert_eq!(t[&'Ċ'], b'\n');
        assert_eq!(t[&'a'], b'a');
        assert_eq!(t[&'Ā'], 0, "the first non-printable byte");
        assert_eq!(t[&'é'], 0xE9);
    }

    #[test]
    fn sentencepiece_byte_tokens() {
        assert_eq!(byte_token("<0x0A>"), Some(b'\n'));
        assert_eq!(byte_token("<0xE2>"), Some(0xE2));
        assert_eq!(byte_token("<0x>"), None);
        assert_eq!(byte_token("<s>"), None);
    }
}
