//! Every parameter of our decoders receives a non-zero gradient (the failure candle-transformers' models show
//! silently), and full fine-tuning memorises a sequence.

use candle_core::Tensor;
use candle_lm::model::CausalLm;
use candle_nn::{AdamW, Optimizer, ParamsAdamW};

use crate::support::{load, random_ids, tiny_model};

fn next_token_loss(logits: &Tensor, ids: &Tensor) -> Tensor {
    let len = ids.dim(1).unwrap();
    let logits = logits.narrow(1, 0, len - 1).unwrap().flatten_to(1).unwrap();
    let targets = ids.narrow(1, 1, len - 1).unwrap().flatten_all().unwrap();
    candle_nn::loss::cross_entropy(&logits, &targets).unwrap()
}

fn check_every_param_gets_a_gradient(model_type: &str, tie: bool) {
    let (dir, _, _) = tiny_model(model_type, tie, 21);
    let loaded = load(dir.path(), true, None);
    let ids = random_ids(2, 7, 61, 2);
    let loss = next_token_loss(&loaded.decoder.forward(&ids, None).unwrap(), &ids);
    let grads = loss.backward().unwrap();
    let data = loaded.params.data().lock().unwrap();
    assert!(!data.is_empty());
    let mut missing: Vec<&String> = data
        .iter()
        .filter(|(_, var)| {
            grads.get(var).is_none_or(|g| g.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() == 0.0)
        })
        .map(|(name, _)| name)
        .collect();
    missing.sort();
    assert!(missing.is_empty(), "{model_type}: no gradient for {missing:?}");
}

#[test]
fn every_llama_parameter_gets_a_gradient() {
    check_every_param_gets_a_gradient("llama", false);
}

#[test]
fn every_qwen2_parameter_gets_a_gradient_tied() {
    check_every_param_gets_a_gradient("qwen2", true);
}

#[test]
fn full_fine_tuning_memorises_a_sequence() {
    let (dir, _, _) = tiny_model("llama", false, 23);
    let loaded = load(dir.path(), true, None);
    let ids = random_ids(2, 12, 61, 4);
    let params = ParamsAdamW { lr: 1e-2, weight_decay: 0.0, ..ParamsAdamW::default() };
    let mut opt = AdamW::new(loaded.params.all_vars(), params).unwrap();
    let mut losses = Vec::new();
    for _ in 0..30 {
        let loss = next_token_loss(&loaded.decoder.forward(&ids, None).unwrap(), &ids);
        losses.push(loss.to_scalar::<f32>().unwrap());
        opt.backward_step(&loss).unwrap();
    }
    let (first, last) = (losses[0], *losses.last().unwrap());
    assert!(last < 0.2 * first && last < 0.5, "loss {first} → {last}: {losses:?}");
}
