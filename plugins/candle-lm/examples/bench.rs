//! The Rust half of `bench/candle_lm.py`: one measurement per process, so that each reports its own peak memory.
//!
//! ```text
//! bench convert <file.gguf> <out_dir>                     an HF directory (f32 safetensors) both sides load
//! bench train  <model_dir> <batch> <seq> <steps>          full fine-tuning steps (AdamW) on random tokens
//! bench sample <model_dir> <batch> <prompt> <new>         batched greedy generation with the KV cache
//! bench memory <layers> <hidden> <batch> <seq> <steps> <lora|full> <plain|checkpointed> <f32|bf16>
//!                                                         `Trainer` steps on a random Llama (vocab 4096, head
//!                                                         width 64, MLP 8/3 × hidden): gradient checkpointing's
//!                                                         and bf16's effect on peak memory
//! ```
//!
//! `train` and `sample` print one JSON line: `tokens_per_s` (trained tokens, or generated tokens with the prompt's
//! prefill included in the time), `seconds` and `peak_rss_mib` (the process's high-water mark). One untimed
//! warm-up step comes first. `memory` prints `peak_rss_mib`, `loaded_rss_mib` (after building the model, before
//! training) and `seconds_per_step`, with no warm-up: the peak is the point.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_lm::data::{Tokenized, masked_nll};
use candle_lm::gguf::Gguf;
use candle_lm::load::{LoadOptions, load_dir, load_tensors};
use candle_lm::lora::{LoraConfig, LoraSet};
use candle_lm::model::{CausalLm, ModelConfig};
use candle_lm::optim::{AdamW, ParamsAdamW};
use candle_lm::sample::{GenerateOptions, generate_batch};
use candle_lm::train::{TrainConfig, Trainer};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num = |i: usize| -> Result<usize> {
        let s = args.get(i).ok_or("missing argument; see the usage in examples/bench.rs")?;
        Ok(s.parse().map_err(|e| format!("argument {i} `{s}`: {e}"))?)
    };
    match args.first().map(String::as_str) {
        Some("convert") if args.len() == 3 => convert(Path::new(&args[1]), Path::new(&args[2])),
        Some("train") if args.len() == 5 => train(Path::new(&args[1]), num(2)?, num(3)?, num(4)?),
        Some("sample") if args.len() == 5 => sample(Path::new(&args[1]), num(2)?, num(3)?, num(4)?),
        Some("memory") if args.len() == 9 => {
            let shape = (num(1)?, num(2)?, num(3)?, num(4)?, num(5)?);
            memory(shape, &args[6] == "lora", &args[7] == "checkpointed", &args[8] == "bf16")
        }
        _ => Err("usage: bench convert <gguf> <dir> | train <dir> <batch> <seq> <steps> | \
                  sample <dir> <batch> <prompt> <new> | \
                  memory <layers> <hidden> <batch> <seq> <steps> <lora|full> <plain|checkpointed> <f32|bf16>"
            .into()),
    }
}

fn convert(gguf: &Path, out: &Path) -> Result<()> {
    std::fs::create_dir_all(out)?;
    let file = Gguf::open(gguf)?;
    file.write_side_files(out)?;
    candle_core::safetensors::save(&file.tensors(&Device::Cpu)?, out.join("model.safetensors"))?;
    Ok(())
}

fn random_ids(batch: usize, len: usize, vocab: usize, seed: u64) -> Vec<Vec<u32>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..batch).map(|_| (0..len).map(|_| rng.random_range(0..vocab as u32)).collect()).collect()
}

fn vocab(dir: &Path) -> Result<usize> {
    let text = std::fs::read_to_string(dir.join("config.json"))?;
    Ok(ModelConfig::parse(&dir.join("config.json"), &text)?.vocab_size())
}

fn train(dir: &Path, batch: usize, seq: usize, steps: usize) -> Result<()> {
    let opts = LoadOptions { dtype: DType::F32, device: Device::Cpu, trainable: true };
    let loaded = load_dir(dir, &opts, None)?;
    let vars: Vec<_> = loaded.params.data().lock().map_err(|_| "poisoned")?.clone().into_iter().collect();
    let mut opt = AdamW::new(vars, ParamsAdamW { lr: 1e-5, ..ParamsAdamW::default() })?;
    let ids = random_ids(batch, seq, vocab(dir)?, 1).concat();
    let ids = Tensor::from_vec(ids, (batch, seq), &Device::Cpu)?;
    let targets = ids.narrow(1, 1, seq - 1)?.contiguous()?;
    let weights = Tensor::ones((batch, seq - 1), DType::F32, &Device::Cpu)?;
    let mut step = || -> Result<f32> {
        let logits = loaded.decoder.forward(&ids, None)?;
        let loss = (masked_nll(&logits, &targets, &weights)? / (batch * (seq - 1)) as f64)?;
        opt.step(&loss.backward()?)?;
        Ok(loss.to_scalar::<f32>()?)
    };
    step()?;
    let t = Instant::now();
    for _ in 0..steps {
        step()?;
    }
    report((batch * seq * steps) as f64, t.elapsed().as_secs_f64())
}

fn sample(dir: &Path, batch: usize, prompt: usize, new: usize) -> Result<()> {
    let loaded = load_dir(dir, &LoadOptions::default(), None)?;
    let prompts = random_ids(batch, prompt, vocab(dir)?, 2);
    // No stop token: every row generates `new` tokens, as the PyTorch side is told to.
    let opts = GenerateOptions { max_new_tokens: new, ..GenerateOptions::default() };
    generate_batch(
        &loaded.decoder,
        &prompts,
        &GenerateOptions { max_new_tokens: 2, ..opts.clone() },
        &Device::Cpu,
        &mut |_, _| false,
    )?;
    let t = Instant::now();
    let out = generate_batch(&loaded.decoder, &prompts, &opts, &Device::Cpu, &mut |_, _| false)?;
    let generated: usize = out.iter().map(|g| g.tokens.len()).sum();
    report(generated as f64, t.elapsed().as_secs_f64())
}

/// A line of `/proc/self/status` (`VmHWM`, `VmRSS`) in MiB.
fn status_mib(key: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(f64::NAN);
    kib / 1024.0
}

fn report(tokens: f64, seconds: f64) -> Result<()> {
    let peak = status_mib("VmHWM");
    println!("{}", serde_json::json!({"tokens_per_s": tokens / seconds, "seconds": seconds, "peak_rss_mib": peak}));
    Ok(())
}

/// `Trainer` steps on a random Llama built in memory, every example `seq` tokens long and every token a target.
fn memory(
    (layers, hidden, batch, seq, steps): (usize, usize, usize, usize, usize),
    lora: bool,
    checkpointing: bool,
    bf16: bool,
) -> Result<()> {
    let heads = (hidden / 64).max(1);
    let inter = hidden * 8 / 3;
    let config = serde_json::json!({
        "model_type": "llama", "vocab_size": 4096, "hidden_size": hidden, "intermediate_size": inter,
        "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": heads,
        "tie_word_embeddings": true, "rms_norm_eps": 1e-5,
    });
    let cfg = ModelConfig::parse(Path::new("config.json"), &config.to_string())?;
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let mut tensors = HashMap::new();
    let mut put = |name: String, shape: &[usize]| -> Result<()> {
        let values: Vec<f32> = (0..shape.iter().product()).map(|_| rng.random_range(-0.05..0.05)).collect();
        tensors.insert(name, Tensor::from_vec(values, shape, &Device::Cpu)?);
        Ok(())
    };
    put("model.embed_tokens.weight".into(), &[4096, hidden])?;
    put("model.norm.weight".into(), &[hidden])?;
    for l in 0..layers {
        let p = format!("model.layers.{l}");
        put(format!("{p}.input_layernorm.weight"), &[hidden])?;
        put(format!("{p}.post_attention_layernorm.weight"), &[hidden])?;
        for name in ["q_proj", "k_proj", "v_proj", "o_proj"] {
            put(format!("{p}.self_attn.{name}.weight"), &[hidden, hidden])?;
        }
        put(format!("{p}.mlp.gate_proj.weight"), &[inter, hidden])?;
        put(format!("{p}.mlp.up_proj.weight"), &[inter, hidden])?;
        put(format!("{p}.mlp.down_proj.weight"), &[hidden, inter])?;
    }
    let set = LoraSet::new(LoraConfig { r: 16, alpha: 32.0, dropout: 0.1, target_modules: vec![] }, 0)?;
    let dtype = if bf16 { DType::BF16 } else { DType::F32 };
    let opts = LoadOptions { dtype, device: Device::Cpu, trainable: !lora };
    let loaded = load_tensors(cfg, tensors, &opts, lora.then_some(&set))?;
    let examples: Vec<Tokenized> = random_ids(batch * steps, seq, 4096, 4)
        .into_iter()
        .enumerate()
        .map(|(i, ids)| Tokenized { id: i.to_string(), loss: (0..seq).map(|j| j > 0).collect(), ids })
        .collect();
    let params = if lora { set.vars() } else { &loaded.params };
    let trainer = Trainer { model: &loaded.decoder, params, dropout: Some(set.dropout()), device: &Device::Cpu };
    let train_cfg = TrainConfig {
        micro_batch: batch,
        grad_accum: 1,
        max_steps: Some(steps),
        max_len: seq,
        gradient_checkpointing: checkpointing,
        ..TrainConfig::default()
    };
    let loaded_rss = status_mib("VmRSS");
    let metrics = std::env::temp_dir().join(format!("candle-lm-bench-{}.jsonl", std::process::id()));
    let t = Instant::now();
    let history = trainer.run(&examples, &train_cfg, &metrics, &mut |_, _| {}, &|| false);
    let seconds = t.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&metrics);
    let history = history?;
    println!(
        "{}",
        serde_json::json!({
            "peak_rss_mib": status_mib("VmHWM"), "loaded_rss_mib": loaded_rss,
            "seconds_per_step": seconds / steps as f64, "loss": history.last().map(|m| m.loss),
        })
    );
    Ok(())
}
