//! Objectives against independent host computations, masking statistics, guard rails.

use burn::tensor::{Tensor, TensorData};
use rand::SeedableRng;
use rand::rngs::StdRng;
use tuwen_fusion::heads::MlmHead;
use tuwen_objectives::itc::{ItcConfig, ItcHead};
use tuwen_objectives::itm::{MatchLabel, Polarity, hard_negatives, itm_loss, random_negatives};
use tuwen_objectives::mlm::{IGNORE, MaskingConfig, mask_tokens, mlm_loss};
use tuwen_objectives::vqa::{vqa_accuracy, vqa_loss};
use tuwen_testkit::flex;

fn host(t: Tensor<2>) -> (Vec<f32>, usize) {
    let [_, c] = t.dims();
    (t.into_data().try_into_vec_as().unwrap(), c)
}

/// Mean cross-entropy over rows with optional label smoothing (torch's definition).
fn reference_ce(logits: &[f32], classes: usize, targets: &[usize], smoothing: f32) -> f32 {
    let mut total = 0.0f64;
    for (row, &t) in logits.chunks_exact(classes).zip(targets) {
        let max = row.iter().copied().fold(f32::MIN, f32::max) as f64;
        let lse = row
            .iter()
            .map(|&x| (x as f64 - max).exp())
            .sum::<f64>()
            .ln()
            + max;
        let logp: Vec<f64> = row.iter().map(|&x| x as f64 - lse).collect();
        let nll = -logp[t];
        let uniform = -logp.iter().sum::<f64>() / classes as f64;
        total += (1.0 - smoothing as f64) * nll + smoothing as f64 * uniform;
    }
    (total / targets.len() as f64) as f32
}

#[test]
fn masking_proportions_and_exclusions() {
    let (batch, seq) = (400, 50);
    let specials = [0i64, 101, 102, 103];
    let mut ids = Vec::new();
    let mut mask = Vec::new();
    for r in 0..batch {
        let len = 10 + r % 40;
        for c in 0..seq {
            let id = if c == 0 {
                101
            } else if c == len - 1 {
                102
            } else if c >= len {
                0
            } else {
                1000 + ((r * 7 + c * 13) % 900) as i64
            };
            ids.push(id);
            mask.push(i64::from(c < len));
        }
    }
    let cfg = MaskingConfig::default();
    let out = mask_tokens(
        &ids,
        &mask,
        &specials,
        30_522,
        103,
        &cfg,
        &mut StdRng::seed_from_u64(3),
    );
    let eligible = ids
        .iter()
        .zip(&mask)
        .filter(|(id, m)| **m == 1 && !specials.contains(id))
        .count();
    let chosen = out.positions.len();
    let rate = chosen as f64 / eligible as f64;
    assert!((rate - 0.15).abs() < 0.01, "chosen rate {rate}");
    let (mut as_mask, mut unchanged, mut random) = (0, 0, 0);
    for &p in &out.positions {
        assert_eq!(mask[p], 1, "padding chosen");
        assert!(!specials.contains(&ids[p]), "special token chosen");
        assert_eq!(out.labels[p], ids[p]);
        match out.input_ids[p] {
            103 => as_mask += 1,
            x if x == ids[p] => unchanged += 1,
            x => {
                assert!(!specials.contains(&x), "random replacement is special");
                random += 1;
            }
        }
    }
    let frac = |n: usize| n as f64 / chosen as f64;
    assert!(
        (frac(as_mask) - 0.8).abs() < 0.03,
        "[MASK] {}",
        frac(as_mask)
    );
    assert!((frac(random) - 0.1).abs() < 0.03, "random {}", frac(random));
    assert!(
        (frac(unchanged) - 0.1).abs() < 0.03,
        "unchanged {}",
        frac(unchanged)
    );
    for (i, &l) in out.labels.iter().enumerate() {
        if !out.positions.contains(&i) {
            assert_eq!(l, IGNORE);
            assert_eq!(out.input_ids[i], ids[i]);
        }
    }
    let again = mask_tokens(
        &ids,
        &mask,
        &specials,
        30_522,
        103,
        &cfg,
        &mut StdRng::seed_from_u64(3),
    );
    assert_eq!(out, again, "same seed, same masking");
}

#[test]
fn mlm_loss_at_gathered_positions_equals_the_full_projection_reference() {
    let device = flex();
    let (b, t, h, v) = (2, 5, 8, 11);
    let head = MlmHead::new(h, v, 1e-12, &device);
    let hidden = Tensor::<3>::random(
        [b, t, h],
        burn::tensor::Distribution::Normal(0.0, 1.0),
        &device,
    );
    let emb = Tensor::<2>::random(
        [v, h],
        burn::tensor::Distribution::Normal(0.0, 0.5),
        &device,
    );
    let positions = [1usize, 4, 7];
    let mut labels = vec![IGNORE; b * t];
    for (&p, y) in positions.iter().zip([3i64, 9, 0]) {
        labels[p] = y;
    }
    let full = head
        .forward(hidden.clone(), emb.clone())
        .reshape([b * t, v]);
    let (all, classes) = host(full);
    let rows: Vec<f32> = positions
        .iter()
        .flat_map(|&p| all[p * classes..(p + 1) * classes].to_vec())
        .collect();
    for smoothing in [None, Some(0.1)] {
        let out = mlm_loss(
            &head,
            hidden.clone(),
            emb.clone(),
            &positions,
            &labels,
            smoothing,
        );
        let want = reference_ce(&rows, classes, &[3, 9, 0], smoothing.unwrap_or(0.0));
        let got: f32 = out.loss.loss.into_scalar::<f32>();
        assert!(
            (got - want).abs() < 1e-5,
            "smoothing {smoothing:?}: {got} vs {want}"
        );
        assert_eq!((out.loss.count, out.loss.empty), (3, false));
    }
    let empty = mlm_loss(&head, hidden, emb, &[], &labels, None);
    assert!(empty.loss.empty);
    assert_eq!(empty.loss.loss.into_scalar::<f32>(), 0.0);
}

#[test]
fn itc_is_symmetric_infonce_with_a_learned_temperature() {
    let device = flex().autodiff();
    let head = ItcHead::new(
        6,
        4,
        &ItcConfig {
            embed_dim: 5,
            ..ItcConfig::default()
        },
        &device,
    );
    let image = Tensor::<2>::random(
        [3, 6],
        burn::tensor::Distribution::Normal(0.0, 1.0),
        &device,
    );
    let text = Tensor::<2>::random(
        [3, 4],
        burn::tensor::Distribution::Normal(0.0, 1.0),
        &device,
    );
    let out = head.forward(image, text);
    let (sim, n) = host(out.similarity.clone());
    let transposed: Vec<f32> = (0..n * n).map(|k| sim[(k % n) * n + k / n]).collect();
    let want = (reference_ce(&sim, n, &[0, 1, 2], 0.0)
        + reference_ce(&transposed, n, &[0, 1, 2], 0.0))
        / 2.0;
    let got: f32 = out.loss.loss.clone().into_scalar::<f32>();
    assert!((got - want).abs() < 1e-5, "{got} vs {want}");
    let grads = out.loss.loss.backward();
    assert!(
        head.temperature.val().grad(&grads).is_some(),
        "temperature is learned"
    );

    let mut hot = ItcHead::new(6, 4, &ItcConfig::default(), &flex());
    hot.temperature = burn::module::Param::from_tensor(Tensor::from_floats([5.0], &flex()));
    let hot = hot.clamp_temperature();
    assert_eq!(hot.temperature().into_scalar::<f32>(), 0.5);
    let single = hot.forward(Tensor::ones([1, 6], &flex()), Tensor::ones([1, 4], &flex()));
    assert!(single.loss.empty, "one pair has no negative");
}

/// Outside the clamp range the temperature still gets a gradient (a clamp inside the graph
/// zeroed it, so a temperature that left the range was stuck there), and clamping the parameter
/// after a step brings it back.
#[test]
fn itc_temperature_outside_its_range_still_learns_and_is_clamped_after_the_step() {
    let device = flex().autodiff();
    let mut head = ItcHead::new(6, 4, &ItcConfig::default(), &device);
    head.temperature = burn::module::Param::from_tensor(Tensor::from_floats([0.9], &device));
    let image = Tensor::<2>::random(
        [4, 6],
        burn::tensor::Distribution::Normal(0.0, 1.0),
        &device,
    );
    let text = Tensor::<2>::random(
        [4, 4],
        burn::tensor::Distribution::Normal(0.0, 1.0),
        &device,
    );
    let grads = head.forward(image, text).loss.loss.backward();
    let g = head
        .temperature
        .val()
        .grad(&grads)
        .expect("temperature gradient")
        .into_scalar::<f32>();
    assert!(g != 0.0 && g.is_finite(), "temperature gradient {g}");
    let clamped = head.clamp_temperature();
    assert_eq!(clamped.temperature().into_scalar::<f32>(), 0.5);
    assert!(
        clamped.temperature.val().is_require_grad(),
        "still a trainable leaf"
    );
}

#[test]
fn itm_polarity_is_explicit() {
    assert_eq!(Polarity::VISUAL_BERT.index(MatchLabel::Match), 0);
    assert_eq!(Polarity::LXMERT.index(MatchLabel::Match), 1);
    assert_eq!(
        Polarity::VILBERT.index(MatchLabel::Mismatch),
        1,
        "ViLBERT is_next = 1 is a random caption"
    );
    for p in [Polarity::MatchIsZero, Polarity::MatchIsOne] {
        for l in [MatchLabel::Match, MatchLabel::Mismatch] {
            assert_eq!(p.label(p.index(l)), l);
        }
    }
    let device = flex();
    let logits = Tensor::<2>::from_data(TensorData::new(vec![4.0f32, -4.0], [1, 2]), &device);
    let (vb, acc_vb) = itm_loss(logits.clone(), &[MatchLabel::Match], Polarity::VISUAL_BERT);
    let (lx, acc_lx) = itm_loss(logits, &[MatchLabel::Match], Polarity::LXMERT);
    assert!(vb.loss.into_scalar::<f32>() < 0.01 && lx.loss.into_scalar::<f32>() > 7.9);
    assert_eq!((acc_vb, acc_lx), (1.0, 0.0));
}

#[test]
fn negatives_are_never_the_positive_and_hard_ones_follow_similarity() {
    let mut rng = StdRng::seed_from_u64(9);
    for _ in 0..200 {
        let neg = random_negatives(5, &mut rng).unwrap();
        assert!(neg.iter().enumerate().all(|(i, &j)| i != j && j < 5));
    }
    assert!(random_negatives(1, &mut rng).is_none());
    // Row 0 is most similar to caption 2: it should be picked most often.
    let sim = Tensor::<2>::from_data(
        TensorData::new(
            vec![
                9.0f32, 0.0, 5.0, 0.0, 0.0, 9.0, 0.0, 0.0, 0.0, 0.0, 9.0, 0.0, 0.0, 0.0, 0.0, 9.0,
            ],
            [4, 4],
        ),
        &flex(),
    );
    let mut counts = [0usize; 4];
    for _ in 0..300 {
        let neg = hard_negatives(sim.clone(), &mut rng).unwrap();
        assert!(neg.iter().enumerate().all(|(i, &j)| i != j));
        counts[neg[0]] += 1;
    }
    assert!(counts[2] > 250, "{counts:?}");
}

#[test]
fn vqa_soft_bce_matches_the_formula_and_its_gradient() {
    let device = flex().autodiff();
    let x = vec![0.5f32, -1.0, 2.0, 0.0, 3.0, -2.0];
    let y = vec![1.0f32, 0.3, 0.0, 0.6, 1.0, 0.0];
    let logits = Tensor::<2>::from_data(TensorData::new(x.clone(), [2, 3]), &device).require_grad();
    let targets = Tensor::<2>::from_data(TensorData::new(y.clone(), [2, 3]), &device);
    let out = vqa_loss(logits.clone(), targets.clone());
    let f = |x: &[f32]| -> f64 {
        let s: f64 = x
            .iter()
            .zip(&y)
            .map(|(&x, &t)| {
                let (x, t) = (x as f64, t as f64);
                x.max(0.0) - x * t + (1.0 + (-x.abs()).exp()).ln()
            })
            .sum();
        s / 6.0 * 3.0
    };
    let got = out.loss.clone().into_scalar::<f32>();
    assert!((got as f64 - f(&x)).abs() < 1e-5, "{got} vs {}", f(&x));
    let grads = out.loss.backward();
    let analytic: Vec<f32> = logits
        .grad(&grads)
        .unwrap()
        .into_data()
        .try_into_vec_as()
        .unwrap();
    for i in 0..x.len() {
        let (mut up, mut down) = (x.clone(), x.clone());
        up[i] += 1e-3;
        down[i] -= 1e-3;
        let numeric = (f(&up) - f(&down)) / 2e-3;
        assert!(
            (analytic[i] as f64 - numeric).abs() < 1e-3,
            "d/dx{i}: {} vs {numeric}",
            analytic[i]
        );
    }
    let acc = vqa_accuracy(
        Tensor::from_data(TensorData::new(x, [2, 3]), &flex()),
        Tensor::from_data(TensorData::new(y, [2, 3]), &flex()),
    );
    assert!(
        (acc - (0.0 + 1.0) / 2.0).abs() < 1e-6,
        "argmax answers 2 and 1 score 0.0 and 1.0: {acc}"
    );
}

#[test]
fn region_masking_follows_the_recipes_and_never_touches_padding_or_the_global_token() {
    use tuwen_objectives::mrm::{RegionMaskingConfig, mask_regions};
    let (batch, regions, dim) = (300, 20, 3);
    let features: Vec<f32> = (0..batch * regions * dim).map(|i| 1.0 + i as f32).collect();
    let mask: Vec<i64> = (0..batch * regions)
        .map(|i| i64::from(i % regions < 16))
        .collect();
    for config in [RegionMaskingConfig::VILBERT, RegionMaskingConfig::LXMERT] {
        let out = mask_regions(
            &features,
            &mask,
            batch,
            dim,
            true,
            &config,
            &mut StdRng::seed_from_u64(4),
        );
        let eligible = mask
            .iter()
            .enumerate()
            .filter(|&(i, &m)| m == 1 && i % regions != 0)
            .count();
        let rate = out.positions.len() as f64 / eligible as f64;
        assert!((rate - 0.15).abs() < 0.015, "rate {rate}");
        let (mut zeroed, mut kept, mut swapped) = (0, 0, 0);
        for &p in &out.positions {
            assert!(
                mask[p] == 1 && p % regions != 0,
                "padding or global token masked"
            );
            let row = &out.features[p * dim..(p + 1) * dim];
            if row.iter().all(|&x| x == 0.0) {
                zeroed += 1;
            } else if row == &features[p * dim..(p + 1) * dim] {
                kept += 1;
            } else {
                swapped += 1;
            }
        }
        let n = out.positions.len() as f64;
        assert!(
            (zeroed as f64 / n - config.zero_prob).abs() < 0.04,
            "{config:?}: zeroed {}",
            zeroed as f64 / n
        );
        assert!(
            (swapped as f64 / n - config.swap_prob).abs() < 0.04,
            "{config:?}: swapped {}",
            swapped as f64 / n
        );
        assert!(kept > 0);
        for (i, (a, b)) in out.features.iter().zip(&features).enumerate() {
            if !out.positions.contains(&(i / dim)) {
                assert_eq!(a, b, "an unchosen region changed");
            }
        }
    }
}

#[test]
fn mrfr_head_is_tied_to_the_region_input_projection() {
    use burn::module::Module;
    use tuwen_objectives::mrm::{MrfrHead, mrfr_loss};
    let device = flex().autodiff();
    let projection = burn::nn::LinearConfig::new(10, 8).init(&device); // features -> hidden
    let head = MrfrHead::new(8, 10, &device);
    assert_eq!(
        head.num_params(),
        8 * 8 + 8 + 2 * 8 + 10,
        "no feature x hidden output matrix of its own"
    );
    let hidden = Tensor::<3>::random([2, 3, 8], burn::tensor::Distribution::Default, &device);
    let predicted = head.forward(hidden, projection.weight.val());
    assert_eq!(predicted.dims(), [2, 3, 10]);
    let original = Tensor::<3>::random([2, 3, 10], burn::tensor::Distribution::Default, &device);
    let loss = mrfr_loss(predicted, original, &[0, 4]);
    let grads = loss.loss.backward();
    assert!(
        projection.weight.val().grad(&grads).is_some(),
        "the tied projection is trained by MRFR"
    );
}
