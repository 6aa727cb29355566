//! The Rust half of `bench/candle_lm.py`: one measurement per process, so that each reports its own peak memory.
//!
//! ```text
//! bench convert <file.gguf> <out_dir>                     an HF directory (f32 safetensors) both sides load
//! bench train  <model_dir> <batch> <seq> <steps>          full fine-tuning steps (AdamW) on random tokens
//! bench sample <model_dir> <batch> <prompt> <new>         batched greedy generation with the KV cache
//! ```
//!
//! `train` and `sample` print one JSON line: `tokens_per_s` (trained tokens, or generated tokens with the prompt's
//! prefill included in the time), `seconds` and `peak_rss_mib` (the process's high-water mark). One untimed
//! warm-up step comes first.

use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_lm::data::masked_nll;
use candle_lm::gguf::Gguf;
use candle_lm::load::{LoadOptions, load_dir};
use candle_lm::model::{CausalLm, ModelConfig};
use candle_lm::optim::{AdamW, ParamsAdamW};
use candle_lm::sample::{GenerateOptions, generate_batch};
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
        _ => Err("usage: bench convert <gguf> <dir> | train <dir> <batch> <seq> <steps> | \
                  sample <dir> <batch> <prompt> <new>"
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

fn report(tokens: f64, seconds: f64) -> Result<()> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(f64::NAN);
    println!(
        "{}",
        serde_json::json!({"tokens_per_s": tokens / seconds, "seconds": seconds, "peak_rss_mib": kib / 1024.0})
    );
    Ok(())
}
