//! The `tokenizer` op: a byte-level BPE trained on the `dataset` stage's files, deterministic, that encodes the
//! chat markers as plain text and `</s>` as one token; its output feeds `init` (llama and gemma2) and `train`.

use std::path::{Path, PathBuf};

use api::ffi::STATUS_BAD_INPUT;
use serde_json::{Value, json};
use tokenizers::Tokenizer;

use crate::{Work, metrics, tiny, write_prompts, write_train};

const CHAT: &str = "<|user|>\nHi\n<|assistant|>\nthe answer is blue</s>\n";

/// The corpus: a `train.jsonl` (segments), a `prompts.jsonl` (prompt/instruction rows) and a plain text file.
fn corpus(w: &Work) -> Vec<(&'static str, PathBuf)> {
    let data = write_train(w, 4);
    let prompts = write_prompts(w);
    let text = w.write("text/notes.txt", "the sky is blue\nthe grass is green\n\nthe blood is red\n");
    vec![("data", data), ("prompts", prompts), ("notes", text)]
}

fn inputs<'a>(c: &'a [(&'static str, PathBuf)]) -> Vec<(&'static str, &'a Path)> {
    c.iter().map(|(n, p)| (*n, p.as_path())).collect()
}

fn read(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn tokenizer_trains_a_deterministic_byte_level_bpe() {
    let w = Work::default();
    let c = corpus(&w);
    let (summary, out) = w.invoke("tokenizer", json!({"vocab_size": 320}), &inputs(&c));
    let dir = out.join("tokenizer");
    let tok = Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    let vocab = tok.get_vocab_size(true);
    assert_eq!(summary["vocab_size"], vocab);
    assert!(vocab > 258 && vocab <= 320, "some merges were learnt: {vocab}");
    assert_eq!(summary["merges"], vocab - 258);

    // Byte-level: any text round-trips, the role markers are plain text, `</s>` is one special token.
    for text in [CHAT, "<|user|>\nHi\n<|assistant|>\n", "ünïcödé ✓ 🙂 tabs\tand  spaces"] {
        let enc = tok.encode(text, false).unwrap();
        assert_eq!(tok.decode(enc.get_ids(), false).unwrap(), text);
    }
    assert_eq!(tok.token_to_id("</s>"), Some(0));
    assert_eq!(tok.token_to_id("<pad>"), Some(1));
    assert_eq!(tok.encode("</s>", false).unwrap().get_ids(), [0]);
    let chat = tok.encode(CHAT, false).unwrap();
    assert_eq!(chat.get_ids().iter().filter(|i| **i == 0).count(), 1, "`</s>` inside text: {:?}", chat.get_tokens());
    assert!(chat.get_ids().len() > 3, "{:?}", chat.get_tokens());
    let specials: Vec<String> = tok.get_added_tokens_decoder().values().map(|t| t.content.clone()).collect();
    assert!(!specials.iter().any(|t| t.contains("<|")), "role markers are no special tokens: {specials:?}");
    // Merges learnt from the corpus: a frequent word is one token.
    assert_eq!(tok.encode("the", false).unwrap().get_ids().len(), 1);
    assert!(tok.encode(" answer", false).unwrap().get_ids().len() <= 2);

    let config = read(&dir.join("tokenizer_config.json"));
    assert_eq!(config["eos_token"], "</s>");
    assert_eq!(config["bos_token"], Value::Null);
    assert_eq!(config["model_max_length"], 2048);

    // Deterministic: the same inputs give the same bytes, twice over.
    let bytes = |o: &Path| std::fs::read(o.join("tokenizer/tokenizer.json")).unwrap();
    for _ in 0..2 {
        let (_, again) = w.invoke("tokenizer", json!({"vocab_size": 320}), &inputs(&c));
        assert_eq!(bytes(&out), bytes(&again));
        assert_eq!(
            std::fs::read(out.join("tokenizer/tokenizer_config.json")).unwrap(),
            std::fs::read(again.join("tokenizer/tokenizer_config.json")).unwrap()
        );
    }
    // A directory input reads its .jsonl/.txt files.
    let (dir_summary, _) = w.invoke("tokenizer", json!({"vocab_size": 320}), &[("data", &w.path("data"))]);
    assert!(dir_summary["texts"].as_u64().unwrap() > 0);
}

#[test]
fn bos_token_is_prepended_when_given() {
    let w = Work::default();
    let c = corpus(&w);
    let params = json!({"vocab_size": 300, "special_tokens": ["<s>", "</s>", "<pad>"], "bos_token": "<s>",
                        "min_frequency": 1, "model_max_length": 128});
    let (_, out) = w.invoke("tokenizer", params, &inputs(&c));
    let tok = Tokenizer::from_file(out.join("tokenizer/tokenizer.json")).unwrap();
    let enc = tok.encode("Hi", true).unwrap();
    assert_eq!(enc.get_ids()[0], 0, "{:?}", enc.get_tokens());
    assert_eq!(tok.decode(enc.get_ids(), true).unwrap(), "Hi");
    let config = read(&out.join("tokenizer/tokenizer_config.json"));
    assert_eq!((config["bos_token"].as_str(), config["eos_token"].as_str()), (Some("<s>"), Some("</s>")));
    assert_eq!(config["model_max_length"], 128);
}

/// The trained tokenizer feeds `init`; `lm` pre-training on the corpus lowers the loss, for llama and gemma2.
#[test]
fn trained_tokenizer_feeds_init_and_train() {
    let w = Work::default();
    let c = corpus(&w);
    let (tok_summary, tok_out) = w.invoke("tokenizer", json!({"vocab_size": 300}), &inputs(&c));
    let tok = tok_out.join("tokenizer");
    let data = c[0].1.clone();
    for model_type in ["llama", "gemma2"] {
        let mut params = tiny();
        params["model_type"] = model_type.into();
        let (init, out) = w.invoke("init", params, &[("tokenizer", &tok)]);
        assert_eq!(init["vocab_size"], tok_summary["vocab_size"]);
        assert_eq!(init["eos_token"], "</s>");
        let model = out.join("model");
        let config = read(&model.join("config.json"));
        assert_eq!(config["model_type"], model_type);
        assert_eq!(config["eos_token_id"], 0);
        if model_type == "gemma2" {
            assert_eq!(config["architectures"], json!(["Gemma2ForCausalLM"]));
            assert_eq!(config["head_dim"], 8, "hidden_size / num_attention_heads");
            assert_eq!(config["query_pre_attn_scalar"], 8.0);
            assert_eq!(config["hidden_activation"], "gelu_pytorch_tanh");
            assert_eq!(
                (config["attn_logit_softcapping"].as_f64(), config["final_logit_softcapping"].as_f64()),
                (Some(50.0), Some(30.0))
            );
            assert_eq!(config["tie_word_embeddings"], true);
            assert!(config.get("hidden_act").is_none());
        }
        let lm = json!({"method": "lm", "lr": 1e-2, "micro_batch": 4, "grad_accum": 1, "max_steps": 8,
                        "max_grad_norm": 1.0});
        let (trained, train_out) = w.invoke("train", lm, &[("model", &model), ("data", &data)]);
        assert_eq!(trained["steps"], 8);
        let m = metrics(&train_out);
        let (first, last) = (m[0]["loss"].as_f64().unwrap(), m[7]["loss"].as_f64().unwrap());
        eprintln!("{model_type}: lm loss {first:.3} → {last:.3}");
        assert!(last < 0.8 * first, "{model_type}: loss {first} → {last}");
    }
}

#[test]
fn tokenizer_and_gemma2_param_errors_point_at_their_path() {
    let w = Work::default();
    let c = corpus(&w);
    let ins = inputs(&c);
    let param_error = |op: &str, params: Value, ins: &[(&str, &Path)], path: &[&str], needle: &str| {
        let e = w.fail(op, params.clone(), ins);
        assert_eq!(e.status, STATUS_BAD_INPUT, "{op} {params}: {e}");
        let want: Vec<String> = path.iter().map(|s| s.to_string()).collect();
        assert_eq!(e.reply.param_path.as_ref(), Some(&want), "{op} {params}: {}", e.reply.message);
        assert!(e.reply.message.contains(needle), "{op} {params}: `{}` lacks `{needle}`", e.reply.message);
    };
    param_error("tokenizer", json!({"vocab_size": 100}), &ins, &["vocab_size"], "at least 258");
    param_error("tokenizer", json!({"vocab_size": "big"}), &ins, &["vocab_size"], "non-negative integer");
    param_error("tokenizer", json!({"min_frequency": -1}), &ins, &["min_frequency"], "non-negative integer");
    param_error("tokenizer", json!({"vocab_sise": 300}), &ins, &["vocab_sise"], "valid: `bos_token`");
    param_error("tokenizer", json!({"special_tokens": "</s>"}), &ins, &["special_tokens"], "list of strings");
    param_error("tokenizer", json!({"special_tokens": ["</s>", "</s>"]}), &ins, &["special_tokens"], "twice");
    param_error("tokenizer", json!({"special_tokens": ["</s>", "<|user|>"]}), &ins, &["special_tokens"], "plain text");
    param_error("tokenizer", json!({"eos_token": "<eos>"}), &ins, &["eos_token"], "one of `special_tokens`");
    param_error("tokenizer", json!({"bos_token": "<s>"}), &ins, &["bos_token"], "one of `special_tokens`");
    param_error("tokenizer", json!({"model_max_length": 0}), &ins, &["model_max_length"], "at least 1");

    let e = w.fail("tokenizer", json!({}), &[]);
    assert!(e.reply.message.contains("at least one input"), "{e}");
    let empty = w.write("empty/blank.txt", "\n\n");
    let e = w.fail("tokenizer", json!({}), &[("data", &empty)]);
    assert!(e.reply.message.contains("no text"), "{e}");

    let (_, tok_out) = w.invoke("tokenizer", json!({"vocab_size": 300}), &ins);
    let tok = tok_out.join("tokenizer");
    let init = [("tokenizer", tok.as_path())];
    let mut llama = tiny();
    llama["query_pre_attn_scalar"] = 8.0.into();
    param_error("init", llama, &init, &["query_pre_attn_scalar"], "gemma2 field");
    let mut gemma = tiny();
    gemma["model_type"] = "gemma2".into();
    gemma["hidden_act"] = "silu".into();
    param_error("init", gemma, &init, &["hidden_act"], "hidden_activation");
    let mut gemma = tiny();
    gemma["model_type"] = "gemma2".into();
    gemma["hidden_activation"] = "relu".into();
    param_error("init", gemma, &init, &[], "relu");
    let mut other = tiny();
    other["model_type"] = "phi3".into();
    param_error("init", other, &init, &["model_type"], "gemma2");
}
