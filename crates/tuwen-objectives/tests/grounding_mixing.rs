//! Grounding losses (GIoU / smooth-L1 against formulas and finite differences) and mixing.

use burn::tensor::{Bool, Tensor, TensorData};
use rand::SeedableRng;
use rand::rngs::StdRng;
use tuwen_objectives::LossOutput;
use tuwen_objectives::grounding::{GroundingHead, GroundingInput, generalized_iou, smooth_l1};
use tuwen_objectives::mixing::{Weighted, sample_task, weighted_sum};
use tuwen_testkit::flex;

fn boxes(v: Vec<f32>) -> Tensor<2> {
    let n = v.len() / 4;
    Tensor::from_data(TensorData::new(v, [n, 4]), &flex())
}

fn host_giou(a: [f64; 4], b: [f64; 4]) -> f64 {
    let area = |x: [f64; 4]| (x[2] - x[0]).max(0.0) * (x[3] - x[1]).max(0.0);
    let iw = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let ih = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = iw * ih;
    let union = area(a) + area(b) - inter;
    let c = (a[2].max(b[2]) - a[0].min(b[0])) * (a[3].max(b[3]) - a[1].min(b[1]));
    inter / union - (c - union) / c
}

#[test]
fn giou_matches_the_definition() {
    let a = vec![
        0.1f32, 0.1, 0.5, 0.5, 0.0, 0.0, 0.2, 0.2, 0.2, 0.3, 0.6, 0.9,
    ];
    let b = vec![
        0.1f32, 0.1, 0.5, 0.5, 0.5, 0.5, 0.9, 0.8, 0.4, 0.1, 0.7, 0.5,
    ];
    let got: Vec<f32> = generalized_iou(boxes(a.clone()), boxes(b.clone()))
        .into_data()
        .try_into_vec_as()
        .unwrap();
    for i in 0..3 {
        let q = |v: &[f32]| {
            [
                v[4 * i] as f64,
                v[4 * i + 1] as f64,
                v[4 * i + 2] as f64,
                v[4 * i + 3] as f64,
            ]
        };
        assert!(
            (got[i] as f64 - host_giou(q(&a), q(&b))).abs() < 1e-6,
            "box {i}: {}",
            got[i]
        );
    }
    assert!((got[0] - 1.0).abs() < 1e-6 && got[1] < 0.0, "{got:?}");
}

#[test]
fn box_losses_have_correct_gradients() {
    let device = flex().autodiff();
    let pred = vec![0.2f32, 0.25, 0.6, 0.7];
    let gold = vec![0.3f32, 0.2, 0.5, 0.9];
    let f = |p: &[f32]| -> f64 {
        let a = [p[0] as f64, p[1] as f64, p[2] as f64, p[3] as f64];
        let b = [
            gold[0] as f64,
            gold[1] as f64,
            gold[2] as f64,
            gold[3] as f64,
        ];
        let l1: f64 = a
            .iter()
            .zip(&b)
            .map(|(x, y)| {
                let d = (x - y).abs();
                if d < 1.0 { 0.5 * d * d } else { d - 0.5 }
            })
            .sum::<f64>()
            / 4.0;
        l1 + 1.0 - host_giou(a, b)
    };
    let p = Tensor::<2>::from_data(TensorData::new(pred.clone(), [1, 4]), &device).require_grad();
    let g = Tensor::<2>::from_data(TensorData::new(gold.clone(), [1, 4]), &device);
    let loss = smooth_l1(p.clone(), g.clone()).mean()
        + generalized_iou(p.clone(), g).neg().add_scalar(1.0).mean();
    assert!((loss.clone().into_scalar::<f32>() as f64 - f(&pred)).abs() < 1e-6);
    let grad: Vec<f32> = p
        .grad(&loss.backward())
        .unwrap()
        .into_data()
        .try_into_vec_as()
        .unwrap();
    for i in 0..4 {
        let (mut up, mut down) = (pred.clone(), pred.clone());
        up[i] += 1e-3;
        down[i] -= 1e-3;
        let numeric = (f(&up) - f(&down)) / 2e-3;
        assert!(
            (grad[i] as f64 - numeric).abs() < 2e-3,
            "d/dp{i}: {} vs {numeric}",
            grad[i]
        );
    }
}

/// Two phrases, three regions each (the third of the first padded), with region boxes.
fn grounding_input<'a>(
    device: &burn::tensor::Device,
    gold_region: &'a [i64],
) -> GroundingInput<'a> {
    let region_boxes = vec![
        0.0f32, 0.0, 1.0, 1.0, 0.1, 0.1, 0.4, 0.5, 0.6, 0.6, 0.9, 0.9, //
        0.0, 0.0, 1.0, 1.0, 0.2, 0.6, 0.5, 0.9, 0.5, 0.2, 0.9, 0.6,
    ];
    GroundingInput {
        phrases: Tensor::random([2, 6], burn::tensor::Distribution::Default, device),
        regions: Tensor::random([2, 3, 5], burn::tensor::Distribution::Default, device),
        region_boxes: Tensor::from_data(TensorData::new(region_boxes, [2, 3, 4]), device),
        region_pad: Tensor::<2, Bool>::from_data(
            TensorData::new(vec![false, false, true, false, false, false], [2, 3]),
            device,
        ),
        gold_region,
        gold_boxes: Tensor::from_data(
            boxes(vec![0.1, 0.1, 0.4, 0.5, 0.5, 0.2, 0.9, 0.6]).into_data(),
            device,
        ),
    }
}

#[test]
fn grounding_head_ignores_padded_regions_and_trains_every_part() {
    let device = flex().autodiff();
    let head = GroundingHead::new(6, 5, 4, &device);
    let out = head.forward(grounding_input(&device, &[1, 2]));
    let total = out.alignment.loss + out.box_l1.loss + out.box_giou.loss;
    assert!(total.clone().into_scalar::<f32>().is_finite());
    let grads = total.backward();
    for w in [
        &head.phrase_proj.weight,
        &head.region_proj.weight,
        &head.box_head.weight,
    ] {
        assert!(w.val().grad(&grads).is_some());
    }
    for boxes in [out.boxes, out.predicted] {
        let b: Vec<f32> = boxes.into_data().try_into_vec_as().unwrap();
        assert!(
            b.chunks_exact(4).all(|x| x[0] <= x[2] && x[1] <= x[3]),
            "{b:?}"
        );
    }
    let top: Vec<i64> = out.top_region.into_data().try_into_vec_as().unwrap();
    assert_ne!(top[0], 2, "a padded region is never the top one");
}

#[test]
fn without_offsets_the_predicted_box_is_the_top_regions_box() {
    let device = flex();
    let mut head = GroundingHead::new(6, 5, 4, &device);
    head.box_head.weight = head.box_head.weight.map(|w| w.zeros_like());
    if let Some(bias) = head.box_head.bias.as_mut() {
        *bias = bias.clone().map(|b| b.zeros_like());
    }
    let input = grounding_input(&device, &[1, 2]);
    let region_boxes: Vec<f32> = input
        .region_boxes
        .clone()
        .into_data()
        .try_into_vec_as()
        .unwrap();
    let out = head.forward(input);
    let top: Vec<i64> = out.top_region.into_data().try_into_vec_as().unwrap();
    let predicted: Vec<f32> = out.predicted.into_data().try_into_vec_as().unwrap();
    for (i, &r) in top.iter().enumerate() {
        let start = (i * 3 + r as usize) * 4;
        assert_eq!(
            &predicted[i * 4..i * 4 + 4],
            &region_boxes[start..start + 4]
        );
    }
}

#[test]
fn weighted_sum_skips_empty_losses_and_logs_every_part() {
    let device = flex();
    let scalar = |v: f32| LossOutput {
        loss: Tensor::from_floats([v], &device),
        count: 1,
        empty: false,
    };
    let weights = [
        Weighted {
            name: "mlm".into(),
            weight: 1.0,
        },
        Weighted {
            name: "itm".into(),
            weight: 0.5,
        },
    ];
    let mixed = weighted_sum(
        vec![
            ("mlm", scalar(2.0)),
            ("itm", scalar(4.0)),
            ("mrm", LossOutput::empty(&device)),
        ],
        &weights,
    );
    assert_eq!(mixed.total.into_scalar::<f32>(), 4.0);
    assert_eq!(
        mixed.parts,
        vec![
            ("mlm".into(), 2.0, false),
            ("itm".into(), 4.0, false),
            ("mrm".into(), 0.0, true)
        ]
    );

    let ratios = [
        Weighted {
            name: "mlm".into(),
            weight: 2.0,
        },
        Weighted {
            name: "itm".into(),
            weight: 1.0,
        },
        Weighted {
            name: "mrm".into(),
            weight: 1.0,
        },
    ];
    let mut rng = StdRng::seed_from_u64(2);
    let mut counts = std::collections::HashMap::new();
    for _ in 0..4000 {
        *counts.entry(sample_task(&ratios, &mut rng)).or_insert(0) += 1;
    }
    assert!(
        (counts["mlm"] as f32 / 4000.0 - 0.5).abs() < 0.03,
        "{counts:?}"
    );
    assert!(
        (counts["itm"] as f32 / 4000.0 - 0.25).abs() < 0.03,
        "{counts:?}"
    );
}
