//! One micro-batch's loss and gradients: plain backpropagation, or gradient checkpointing.
//!
//! **Gradient checkpointing** trades one more forward pass for the memory of the activations. candle has no
//! autograd hooks, so it is done by hand, one decoder layer at a time (reference/candle.md §2.6):
//! 1. forward segment by segment ([`Segmented`]: the embedding, then each layer), keeping only each layer's
//!    input, detached: a layer's graph, which holds its activations, is dropped as soon as its output is detached;
//! 2. the head and the loss run on the last layer's output made a fresh leaf (a `Var`); their backward gives the
//!    head's parameter gradients and `g`, the gradient of the last hidden state;
//! 3. from the last layer down, the layer's forward is rerun from its kept input made a fresh leaf, and
//!    `sum(output · g)` is backpropagated. Its gradient with respect to anything upstream is `gᵀ ∂output/∂·`,
//!    the chain rule's term: the layer's parameters get the gradients plain backpropagation gives them, and the
//!    input's gradient is the next `g`;
//! 4. the embedding likewise, when it has trainable weights (full fine-tuning).
//!
//! The peak is then the kept inputs (`layers × batch × len × hidden`) plus one layer's activations, instead of
//! every layer's activations. A parameter used by several segments (a tied embedding: the head and the
//! embedding) gets the sum of their terms; every kept gradient is detached, since a gradient that is not holds
//! its whole graph alive (reference/candle.md §2.4).
//!
//! The rerun must drop the same units as the first forward: the LoRA dropout stream's position is saved before
//! each layer's first forward and restored before its rerun ([`DropoutRng::snapshot`]). The first forward draws
//! in the same order as plain backpropagation's, so the masks are also the plain run's.

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

use crate::data::{Batch, masked_nll};
use crate::lora::DropoutRng;
use crate::model::{CausalLm, Segmented};
use crate::train::TrainError;

/// The loss of `batch` divided by `divisor` (the step's target count, so that micro-batches add up to the step's
/// mean) and the detached gradient of each of `vars`, in their order. With `checkpointing`, activations are
/// recomputed per layer instead of kept (see the module docs); the gradients agree with plain backpropagation's
/// up to float rounding. A Var without a gradient is [`TrainError::NoGradient`].
pub fn loss_and_grads(
    model: &dyn CausalLm,
    batch: &Batch,
    divisor: f64,
    vars: &[(String, Var)],
    dropout: Option<&DropoutRng>,
    checkpointing: bool,
) -> Result<(f32, Vec<Tensor>), TrainError> {
    if checkpointing {
        return checkpointed(model, batch, divisor, vars, dropout);
    }
    let logits = model.forward(&batch.input_ids, None)?;
    let loss = (masked_nll(&logits, &batch.targets, &batch.weights)? / divisor)?;
    let grads = loss.backward()?;
    let grads = vars
        .iter()
        .map(|(name, var)| grads.get(var).map(Tensor::detach).ok_or_else(|| TrainError::NoGradient(name.clone())))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((loss.to_scalar::<f32>()?, grads))
}

/// Adds the gradients `grads` holds for `vars` (detached) into `sums`.
fn collect(grads: &GradStore, vars: &[(String, Var)], sums: &mut [Option<Tensor>]) -> candle_core::Result<()> {
    for ((_, var), sum) in vars.iter().zip(sums.iter_mut()) {
        if let Some(g) = grads.get(var) {
            let g = g.detach();
            *sum = Some(match sum.take() {
                Some(prev) => (prev + g)?,
                None => g,
            });
        }
    }
    Ok(())
}

/// The gradient of the leaf `x` in `grads`, detached; every segment uses its input, so a missing one is a bug.
fn input_grad(grads: &GradStore, x: &Var, what: &str) -> candle_core::Result<Tensor> {
    match grads.get(x) {
        Some(g) => Ok(g.detach()),
        None => candle_core::bail!("gradient checkpointing: {what} does not depend on its input"),
    }
}

fn checkpointed(
    model: &dyn CausalLm,
    batch: &Batch,
    divisor: f64,
    vars: &[(String, Var)],
    dropout: Option<&DropoutRng>,
) -> Result<(f32, Vec<Tensor>), TrainError> {
    let seg: Box<dyn Segmented + '_> = model.segments(&batch.input_ids)?;
    let embedded = seg.embed()?;
    // Only a graph through trainable weights is tracked: a frozen embedding (LoRA) needs no backward.
    let embedding_trains = embedded.track_op();
    let mut x = embedded.detach();
    drop(embedded);
    let mut kept = Vec::with_capacity(seg.num_layers());
    for i in 0..seg.num_layers() {
        let position = dropout.map(DropoutRng::snapshot);
        let y = seg.layer(i, &x)?.detach();
        kept.push((std::mem::replace(&mut x, y), position));
    }
    let after_forward = dropout.map(DropoutRng::snapshot);

    let mut sums: Vec<Option<Tensor>> = vec![None; vars.len()];
    let last = Var::from_tensor(&x)?;
    drop(x);
    let logits = seg.head(last.as_tensor())?;
    let loss = (masked_nll(&logits, &batch.targets, &batch.weights)? / divisor)?;
    let value = loss.to_scalar::<f32>()?;
    let grads = loss.backward()?;
    drop((logits, loss));
    collect(&grads, vars, &mut sums)?;
    let mut g = input_grad(&grads, &last, "the head")?;
    drop((grads, last));

    for i in (0..kept.len()).rev() {
        let Some((input, position)) = kept.pop() else { break };
        if let (Some(d), Some(p)) = (dropout, &position) {
            d.restore(p);
        }
        let leaf = Var::from_tensor(&input)?;
        drop(input);
        let grads = seg.layer(i, leaf.as_tensor())?.mul(&g)?.sum_all()?.backward()?;
        collect(&grads, vars, &mut sums)?;
        g = input_grad(&grads, &leaf, &format!("layer {i}"))?;
    }
    if embedding_trains {
        let grads = seg.embed()?.mul(&g)?.sum_all()?.backward()?;
        collect(&grads, vars, &mut sums)?;
    }
    if let (Some(d), Some(p)) = (dropout, &after_forward) {
        d.restore(p);
    }
    let grads = vars
        .iter()
        .zip(sums)
        .map(|((name, _), sum)| sum.ok_or_else(|| TrainError::NoGradient(name.clone())))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((value, grads))
}
