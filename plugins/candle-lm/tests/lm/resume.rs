//! Checkpoints and resume: our AdamW is candle_nn's bit for bit and its state round-trips; a run cancelled after
//! a checkpoint and resumed ends with weights bitwise equal to an uninterrupted run's, ignoring half-written
//! checkpoints.

use std::cell::Cell;
use std::path::Path;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use candle_lm::data::Tokenized;
use candle_lm::lora::{LoraConfig, LoraSet};
use candle_lm::optim::{AdamW, ParamsAdamW};
use candle_lm::train::{Checkpoints, Schedule, StepMetrics, TrainConfig, TrainError, Trainer, epoch_plan};
use candle_nn::{Optimizer, VarMap};

use crate::support::{load, random_ids, random_weights, tiny_config, write_model};

fn bits(t: &Tensor) -> Vec<u32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|x| x.to_bits()).collect()
}

fn weights(params: &VarMap) -> Vec<(String, Vec<u32>)> {
    let data = params.data().lock().unwrap();
    let mut w: Vec<(String, Vec<u32>)> = data.iter().map(|(n, v)| (n.clone(), bits(v.as_tensor()))).collect();
    w.sort_by(|a, b| a.0.cmp(&b.0));
    w
}

/// Same updates as `candle_nn::AdamW` to the bit, with weight decay and bias correction; the saved state
/// continues exactly where it stopped.
#[test]
fn adamw_matches_candle_and_its_state_round_trips() {
    let params = ParamsAdamW { lr: 3e-2, beta1: 0.8, beta2: 0.95, eps: 1e-6, weight_decay: 0.1 };
    let init = Tensor::randn(0f32, 1.0, (3, 5), &Device::Cpu).unwrap();
    let grads: Vec<Tensor> = (0..6).map(|_| Tensor::randn(0f32, 1.0, (3, 5), &Device::Cpu).unwrap()).collect();
    let store = |var: &Var, g: &Tensor| {
        let mut s = GradStore::default();
        s.insert(var, g.clone());
        s
    };

    let theirs = Var::from_tensor(&init).unwrap();
    let mut candle = candle_nn::AdamW::new(vec![theirs.clone()], params.clone()).unwrap();
    let ours = Var::from_tensor(&init).unwrap();
    let mut opt = AdamW::new(vec![("w".into(), ours.clone())], params.clone()).unwrap();
    for (i, g) in grads.iter().enumerate() {
        let lr = 3e-2 / (i + 1) as f64;
        candle.set_learning_rate(lr);
        opt.set_learning_rate(lr);
        candle.step(&store(&theirs, g)).unwrap();
        opt.step(&store(&ours, g)).unwrap();
        assert_eq!(bits(theirs.as_tensor()), bits(ours.as_tensor()), "step {}", i + 1);
    }

    // Save after 3 steps, continue in a fresh optimiser over a copy of the weights: same result.
    let dir = tempfile::tempdir().unwrap();
    let a = Var::from_tensor(&init).unwrap();
    let mut first = AdamW::new(vec![("w".into(), a.clone())], params.clone()).unwrap();
    for g in &grads[..3] {
        first.step(&store(&a, g)).unwrap();
    }
    first.save(&dir.path().join("opt.safetensors")).unwrap();
    let b = Var::from_tensor(a.as_tensor()).unwrap();
    let mut second = AdamW::new(vec![("w".into(), b.clone())], params.clone()).unwrap();
    second.load(&dir.path().join("opt.safetensors")).unwrap();
    assert_eq!(second.step_count(), 3);
    for g in &grads[3..] {
        first.step(&store(&a, g)).unwrap();
        second.step(&store(&b, g)).unwrap();
    }
    assert_eq!(bits(a.as_tensor()), bits(b.as_tensor()));

    // A state of other Vars is refused and changes nothing; a missing gradient is an error, not a skip.
    let c = Var::zeros((2, 2), DType::F32, &Device::Cpu).unwrap();
    let mut other = AdamW::new(vec![("w".into(), c.clone())], params).unwrap();
    assert!(other.load(&dir.path().join("opt.safetensors")).is_err());
    assert_eq!(other.step_count(), 0);
    let err = other.step(&GradStore::default()).unwrap_err().to_string();
    assert!(err.contains("no gradient for `w`"), "{err}");
}

/// 10 examples of random tokens, every token after the first a target; all 7 long, or (`mixed`) 3 to 12 long.
fn examples(mixed: bool) -> Vec<Tokenized> {
    let ids = random_ids(10, if mixed { 12 } else { 7 }, 61, 11).to_vec2::<u32>().unwrap();
    ids.into_iter()
        .enumerate()
        .map(|(i, mut ids)| {
            if mixed {
                ids.truncate(3 + (i * 7) % 10);
            }
            Tokenized { id: i.to_string(), loss: (0..ids.len()).map(|j| j > 0).collect(), ids }
        })
        .collect()
}

/// Warm-up, cosine decay, weight decay, accumulation, clipping and (for LoRA) dropout: every piece of state a
/// resume must restore or re-derive. 10 examples, 4 per step: 3 steps per epoch, so step 6 ends an epoch and
/// steps 3 and 9 do not.
fn config() -> TrainConfig {
    TrainConfig {
        lr: 2e-2,
        weight_decay: 0.05,
        schedule: Schedule::Cosine,
        warmup_steps: 2,
        micro_batch: 2,
        grad_accum: 2,
        max_grad_norm: Some(0.5),
        max_steps: Some(10),
        checkpoint_every: Some(3),
        seed: 7,
        ..Default::default()
    }
}

struct Outcome {
    result: Result<Vec<StepMetrics>, TrainError>,
    weights: Vec<(String, Vec<u32>)>,
    log: Vec<String>,
}

/// One run over a freshly loaded model (`lora` or full fine-tuning), with checkpoints in `ckpt` when given,
/// cancelled once `stop_after` steps are done; `grouped`: length-grouped batches over examples of mixed lengths.
fn run(
    model_dir: &Path,
    (lora, grouped): (bool, bool),
    ckpt: Option<&Path>,
    stop_after: Option<u64>,
    metrics: &Path,
) -> Outcome {
    let set = LoraSet::new(LoraConfig { r: 4, alpha: 8.0, dropout: 0.1, target_modules: vec![] }, 3).unwrap();
    let loaded = load(model_dir, !lora, lora.then_some(&set));
    let params = if lora { set.vars() } else { &loaded.params };
    let trainer =
        Trainer { model: &loaded.decoder, params, dropout: lora.then(|| set.dropout()), device: &Device::Cpu };
    let done = Cell::new(0u64);
    let log = std::cell::RefCell::new(Vec::new());
    let log_line = |l: &str| log.borrow_mut().push(l.to_owned());
    let checkpoints = ckpt.map(|dir| Checkpoints { dir, log: &log_line });
    let result = trainer.run_checkpointed(
        &examples(grouped),
        &TrainConfig { group_by_length: grouped, ..config() },
        metrics,
        checkpoints.as_ref(),
        &mut |d, _| done.set(d),
        &|| stop_after.is_some_and(|s| done.get() >= s),
    );
    Outcome { result, weights: weights(params), log: log.into_inner() }
}

fn killed_and_resumed_equals_uninterrupted(lora: bool, grouped: bool) {
    let mode = (lora, grouped);
    let dir = tempfile::tempdir().unwrap();
    let config_json = tiny_config("llama", false);
    let model_dir = dir.path().join("model");
    std::fs::create_dir(&model_dir).unwrap();
    write_model(&model_dir, &config_json, &random_weights(&config_json, 2));

    let straight = run(&model_dir, mode, None, None, &dir.path().join("straight.jsonl"));
    let history = straight.result.unwrap();
    assert_eq!(history.len(), 10);
    assert!(history.iter().any(|m| f64::from(m.grad_norm) > 0.5), "some step clips");

    let ckpt = dir.path().join("ckpt");
    let metrics = dir.path().join("metrics.jsonl");
    let killed = run(&model_dir, mode, Some(&ckpt), Some(7), &metrics);
    assert!(matches!(killed.result, Err(TrainError::Cancelled)), "{:?}", killed.result.err());
    assert_ne!(killed.weights, straight.weights, "stopped before the end");
    let mut names: Vec<String> =
        std::fs::read_dir(&ckpt).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["step-000000003", "step-000000006"]);

    // What a crash while writing leaves: a temporary directory, and a step directory missing its files (as a
    // writer that did not rename would leave it). Both are skipped.
    std::fs::create_dir_all(ckpt.join(".tmp-step-000000009-1")).unwrap();
    std::fs::write(ckpt.join(".tmp-step-000000009-1/params.safetensors"), b"\0\0").unwrap();
    std::fs::create_dir_all(ckpt.join("step-000000008")).unwrap();
    std::fs::copy(ckpt.join("step-000000006/state.json"), ckpt.join("step-000000008/state.json")).unwrap();
    std::fs::write(ckpt.join("step-000000008/params.safetensors"), b"\x10\0\0").unwrap();

    let resumed = run(&model_dir, mode, Some(&ckpt), None, &metrics);
    let resumed_history = resumed.result.unwrap();
    assert!(resumed.log.iter().any(|l| l.starts_with("removing checkpoint") && l.contains("step-000000008")));
    assert!(resumed.log.iter().any(|l| l.starts_with("resuming from step 6 ")), "{:?}", resumed.log);
    assert!(!ckpt.join(".tmp-step-000000009-1").exists(), "leftovers are removed");
    for ((name, a), (_, b)) in straight.weights.iter().zip(&resumed.weights) {
        assert!(a == b, "`{name}` differs from the uninterrupted run");
    }
    assert_eq!(straight.weights.len(), resumed.weights.len());
    let key = |h: &[StepMetrics]| -> Vec<_> {
        h.iter().map(|m| (m.step, m.epoch, m.loss.to_bits(), m.lr.to_bits(), m.grad_norm.to_bits())).collect()
    };
    assert_eq!(key(&resumed_history), key(&history), "the whole run's metrics");
    let lines: Vec<StepMetrics> =
        std::fs::read_to_string(&metrics).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.iter().map(|m| m.step).collect::<Vec<_>>(), (1..=10).collect::<Vec<_>>());
    // Step 9's checkpoint was written, the unusable one removed, and only the newest two are kept.
    let mut names: Vec<String> =
        std::fs::read_dir(&ckpt).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["step-000000006", "step-000000009"]);
}

#[test]
fn lora_run_resumes_bitwise() {
    killed_and_resumed_equals_uninterrupted(true, false);
}

#[test]
fn full_run_resumes_bitwise() {
    killed_and_resumed_equals_uninterrupted(false, false);
}

/// The grouped order is derived again on resume (it changes the order here, so the test is not the plain one).
#[test]
fn length_grouped_run_resumes_bitwise() {
    let lengths: Vec<usize> = examples(true).iter().map(|e| e.ids.len()).collect();
    let grouped = TrainConfig { group_by_length: true, ..config() };
    assert_ne!(epoch_plan(&lengths, &grouped, 1), epoch_plan(&lengths, &config(), 1));
    killed_and_resumed_equals_uninterrupted(true, true);
}

/// A checkpoint of another config is not resumed; an invalid cadence is refused.
#[test]
fn a_checkpoint_of_another_run_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let config_json = tiny_config("llama", false);
    write_model(dir.path(), &config_json, &random_weights(&config_json, 2));
    let set = LoraSet::new(LoraConfig { r: 2, dropout: 0.0, ..Default::default() }, 0).unwrap();
    let loaded = load(dir.path(), false, Some(&set));
    let trainer = Trainer { model: &loaded.decoder, params: set.vars(), dropout: None, device: &Device::Cpu };
    let ckpt = dir.path().join("ckpt");
    let log = std::cell::RefCell::new(Vec::<String>::new());
    let log_line = |l: &str| log.borrow_mut().push(l.to_owned());
    let checkpoints = Checkpoints { dir: &ckpt, log: &log_line };
    let m = dir.path().join("m.jsonl");
    let cfg = TrainConfig { max_steps: Some(2), checkpoint_every: Some(1), ..config() };
    trainer.run_checkpointed(&examples(false), &cfg, &m, Some(&checkpoints), &mut |_, _| {}, &|| false).unwrap();
    let other = TrainConfig { lr: 1e-3, ..cfg.clone() };
    let h =
        trainer.run_checkpointed(&examples(false), &other, &m, Some(&checkpoints), &mut |_, _| {}, &|| false).unwrap();
    assert_eq!(h.len(), 2);
    let lines = log.borrow().clone();
    assert!(lines.iter().all(|l| !l.starts_with("resuming")), "{lines:?}");
    assert!(lines.iter().any(|l| l.contains("another training config")), "{lines:?}");
    let bad = TrainConfig { checkpoint_every: Some(0), ..cfg };
    let err = trainer.run_checkpointed(&examples(false), &bad, &m, Some(&checkpoints), &mut |_, _| {}, &|| false);
    assert!(matches!(err, Err(TrainError::Config(ref s)) if s.contains("checkpoint_every")), "{:?}", err.err());
}
