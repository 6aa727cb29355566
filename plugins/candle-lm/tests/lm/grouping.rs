//! Length-grouped batching: each epoch's plan is a seeded permutation cut like the ungrouped one, with the
//! longest example first and far less padding on mixed lengths. (Resume with grouping: `resume.rs`.)

use candle_lm::train::{TrainConfig, epoch_plan};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn lengths(n: usize) -> Vec<usize> {
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    (0..n).map(|_| rng.random_range(2..200)).collect()
}

/// Padding tokens of a plan: each micro-batch is padded to its longest example.
fn padding(plan: &[Vec<Vec<usize>>], lengths: &[usize]) -> usize {
    plan.iter()
        .flatten()
        .map(|micro| {
            let longest = micro.iter().map(|&i| lengths[i]).max().unwrap_or(0);
            micro.iter().map(|&i| longest - lengths[i]).sum::<usize>()
        })
        .sum()
}

fn shape(plan: &[Vec<Vec<usize>>]) -> Vec<Vec<usize>> {
    plan.iter().map(|step| step.iter().map(Vec::len).collect()).collect()
}

#[test]
fn grouped_plans_are_seeded_permutations_with_less_padding() {
    let lengths = lengths(203);
    let plain = TrainConfig { micro_batch: 4, grad_accum: 2, seed: 3, ..TrainConfig::default() };
    let grouped = TrainConfig { group_by_length: true, ..plain.clone() };
    let (mut plain_pad, mut grouped_pad) = (0, 0);
    for epoch in 0..4 {
        let plan = epoch_plan(&lengths, &grouped, epoch);
        assert_eq!(plan, epoch_plan(&lengths, &grouped, epoch), "the same seed gives the same order");
        let ungrouped = epoch_plan(&lengths, &plain, epoch);
        assert_eq!(shape(&plan), shape(&ungrouped), "steps and micro-batches are cut alike");
        let mut all: Vec<usize> = plan.iter().flatten().flatten().copied().collect();
        let first = all[0];
        all.sort_unstable();
        assert_eq!(all, (0..lengths.len()).collect::<Vec<_>>(), "every example once");
        assert_eq!(lengths[first], *lengths.iter().max().unwrap(), "the longest example comes first");
        plain_pad += padding(&ungrouped, &lengths);
        grouped_pad += padding(&plan, &lengths);
    }
    eprintln!("padding tokens over 4 epochs: ungrouped {plain_pad}, grouped {grouped_pad}");
    assert!(grouped_pad * 5 < plain_pad, "grouped {grouped_pad} vs ungrouped {plain_pad}");

    let other_seed = TrainConfig { seed: 4, ..grouped.clone() };
    assert_ne!(epoch_plan(&lengths, &grouped, 0), epoch_plan(&lengths, &other_seed, 0));
    assert_ne!(epoch_plan(&lengths, &grouped, 0), epoch_plan(&lengths, &grouped, 1), "epochs reshuffle");
}

/// Grouping reorders within mega-batches of the shuffle (203 examples, 8 per step: 6 steps, 48 examples, each),
/// never across them, except for the longest example swapped to the front; each is sorted longest first (its
/// head may be the swapped-in example).
#[test]
fn grouping_only_reorders_within_mega_batches() {
    let lengths = lengths(203);
    let plain = TrainConfig { micro_batch: 4, grad_accum: 2, seed: 5, ..TrainConfig::default() };
    let grouped = TrainConfig { group_by_length: true, ..plain.clone() };
    let flat =
        |cfg: &TrainConfig| -> Vec<usize> { epoch_plan(&lengths, cfg, 2).into_iter().flatten().flatten().collect() };
    let (shuffled, sorted) = (flat(&plain), flat(&grouped));
    let mut exchanged = 0;
    for (k, (a, b)) in shuffled.chunks(6 * 8).zip(sorted.chunks(6 * 8)).enumerate() {
        assert!(b[1..].windows(2).all(|w| lengths[w[0]] >= lengths[w[1]]), "mega-batch {k} is not sorted");
        exchanged += a.iter().filter(|i| !b.contains(i)).count();
    }
    assert!(exchanged <= 2, "{exchanged} examples changed mega-batch");
    assert_ne!(shuffled, sorted);
}

/// Off, the new options leave the config a checkpoint records as it was before they existed (so those
/// checkpoints still resume); on, they are part of it (so a run with them never resumes one without).
#[test]
fn options_enter_the_recorded_config_only_when_on() {
    let off = serde_json::to_value(TrainConfig::default()).unwrap();
    assert!(off.get("group_by_length").is_none() && off.get("gradient_checkpointing").is_none(), "{off}");
    let on = TrainConfig { group_by_length: true, gradient_checkpointing: true, ..TrainConfig::default() };
    let on = serde_json::to_value(on).unwrap();
    assert_eq!((on["group_by_length"].as_bool(), on["gradient_checkpointing"].as_bool()), (Some(true), Some(true)));
    let back: TrainConfig = serde_json::from_value(off).unwrap();
    assert_eq!(back, TrainConfig::default());
}
