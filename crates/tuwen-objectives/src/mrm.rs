//! Masked region modelling: regions are masked (zeroed, swapped with another image's feature, or
//! kept) and the model predicts them back, by feature regression (MRFR, MSE to the original
//! feature), by matching the extractor's class distribution (MRC-KL) or its hard label (MRC).
//! Losses are computed only at masked regions.

use burn::module::{Module, Param};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::{Gelu, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Int, Tensor};
use rand::Rng;

use crate::LossOutput;
use crate::int_tensor;

/// Region masking probabilities.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RegionMaskingConfig {
    /// Fraction of real regions chosen.
    pub mask_prob: f64,
    /// Of the chosen: fraction whose feature is zeroed.
    pub zero_prob: f64,
    /// Of the chosen: fraction whose feature is replaced by a region of another image of the
    /// batch; the rest are kept unchanged.
    pub swap_prob: f64,
}

impl RegionMaskingConfig {
    /// ViLBERT: 15%; 90% zeroed, 10% kept.
    pub const VILBERT: Self = Self {
        mask_prob: 0.15,
        zero_prob: 0.9,
        swap_prob: 0.0,
    };
    /// LXMERT: 15%; 80% zeroed, 10% another image's feature, 10% kept.
    pub const LXMERT: Self = Self {
        mask_prob: 0.15,
        zero_prob: 0.8,
        swap_prob: 0.1,
    };
}

/// Masked region features, row-major `[batch, regions, dim]`.
#[derive(Clone, Debug, PartialEq)]
pub struct MaskedRegions {
    /// Features after masking.
    pub features: Vec<f32>,
    /// Flat indices (`image * regions + region`) of the chosen regions, ascending.
    pub positions: Vec<usize>,
}

/// Masks regions of `features` (`[batch * regions * dim]`). Padded regions (`region_mask == 0`)
/// and, with `skip_first`, region 0 of every image (ViLBERT's global token) are never chosen.
/// The same as [`plan_region_masks`] then [`RegionMaskPlan::apply`].
pub fn mask_regions(
    features: &[f32],
    region_mask: &[i64],
    batch: usize,
    dim: usize,
    skip_first: bool,
    config: &RegionMaskingConfig,
    rng: &mut impl Rng,
) -> MaskedRegions {
    plan_region_masks(region_mask, batch, skip_first, config, rng).apply(features, dim)
}

/// What masking does to one chosen region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegionMaskOp {
    /// Its feature is zeroed.
    Zero,
    /// Its feature becomes the feature at flat region `source` (a real region of another
    /// image).
    Swap {
        /// Flat index (`image * regions + region`) of the region copied.
        source: usize,
    },
    /// Its feature is kept.
    Keep,
}

/// The regions [`mask_regions`] chooses and what it does to each: its random draws, which
/// depend on the region mask alone, not on the features (so a data-parallel process can draw
/// the whole batch's masks and then read only the features its rows and their swaps need).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegionMaskPlan {
    /// Flat indices of the chosen regions, ascending.
    pub positions: Vec<usize>,
    /// What happens to each chosen region, in the order of `positions`.
    pub ops: Vec<RegionMaskOp>,
}

/// Draws the masks of [`mask_regions`] (the same draws, in the same order).
pub fn plan_region_masks(
    region_mask: &[i64],
    batch: usize,
    skip_first: bool,
    config: &RegionMaskingConfig,
    rng: &mut impl Rng,
) -> RegionMaskPlan {
    let regions = region_mask.len() / batch.max(1);
    let mut plan = RegionMaskPlan {
        positions: Vec::new(),
        ops: Vec::new(),
    };
    for (flat, &real) in region_mask.iter().enumerate() {
        let (image, region) = (flat / regions, flat % regions);
        if real == 0 || (skip_first && region == 0) || !rng.random_bool(config.mask_prob) {
            continue;
        }
        let r: f64 = rng.random();
        let op = if r < config.zero_prob {
            RegionMaskOp::Zero
        } else if r < config.zero_prob + config.swap_prob && batch > 1 {
            let other = (image + rng.random_range(1..batch)) % batch;
            let candidates: Vec<usize> = (0..regions)
                .filter(|&j| region_mask[other * regions + j] != 0)
                .collect();
            match candidates.get(rng.random_range(0..candidates.len().max(1))) {
                Some(&j) => RegionMaskOp::Swap {
                    source: other * regions + j,
                },
                None => RegionMaskOp::Keep,
            }
        } else {
            RegionMaskOp::Keep
        };
        plan.positions.push(flat);
        plan.ops.push(op);
    }
    plan
}

impl RegionMaskPlan {
    /// The flat regions read by swaps into the chosen regions of `images` (`image -> bool`).
    pub fn sources_for(&self, regions: usize, images: impl Fn(usize) -> bool) -> Vec<usize> {
        self.positions
            .iter()
            .zip(&self.ops)
            .filter_map(|(&flat, op)| match op {
                RegionMaskOp::Swap { source } if images(flat / regions.max(1)) => Some(*source),
                _ => None,
            })
            .collect()
    }

    /// `features` (`[regions, dim]` rows) masked by the plan (swaps read the unmasked features).
    pub fn apply(&self, features: &[f32], dim: usize) -> MaskedRegions {
        let mut out = MaskedRegions {
            features: features.to_vec(),
            positions: self.positions.clone(),
        };
        for (&flat, op) in self.positions.iter().zip(&self.ops) {
            let row = flat * dim..(flat + 1) * dim;
            match *op {
                RegionMaskOp::Zero => out.features[row].fill(0.0),
                RegionMaskOp::Swap { source } => {
                    out.features[row].copy_from_slice(&features[source * dim..(source + 1) * dim])
                }
                RegionMaskOp::Keep => {}
            }
        }
        out
    }
}

/// The rows of `x` `[B, V, D]` at flat region `positions` (`b * V + v`): `[positions, D]`.
pub fn gather(x: Tensor<3>, positions: &[usize]) -> Tensor<2> {
    let [b, v, d] = x.dims();
    let device = x.device();
    x.reshape([b * v, d]).select(
        0,
        int_tensor(positions.iter().map(|&p| p as i64).collect(), &device),
    )
}

/// MRFR: mean squared error between predicted `[B, V, D]` and original features at `positions`.
pub fn mrfr_loss(predicted: Tensor<3>, original: Tensor<3>, positions: &[usize]) -> LossOutput {
    if positions.is_empty() {
        return LossOutput::empty(&predicted.device());
    }
    let diff = gather(predicted, positions) - gather(original.detach(), positions);
    LossOutput {
        loss: diff.powf_scalar(2.0).mean().reshape([1]),
        count: positions.len(),
        empty: false,
    }
}

/// MRC-KL: `KL(target || softmax(logits))` summed over classes, averaged over masked regions
/// (ViLBERT / UNITER), with the extractor's class distributions as targets.
pub fn mrc_kl_loss(logits: Tensor<3>, target_probs: Tensor<3>, positions: &[usize]) -> LossOutput {
    if positions.is_empty() {
        return LossOutput::empty(&logits.device());
    }
    mrc_kl_at(gather(logits, positions), gather(target_probs, positions))
}

/// [`mrc_kl_loss`] over logits and target distributions already gathered at the masked
/// regions: `[regions, classes]` each.
pub fn mrc_kl_at(logits: Tensor<2>, target_probs: Tensor<2>) -> LossOutput {
    let [n, _] = logits.dims();
    if n == 0 {
        return LossOutput::empty(&logits.device());
    }
    let logp = log_softmax(logits, 1);
    let t = target_probs.detach();
    // t * (log t - log p), with 0 log 0 = 0.
    let log_t = t.clone().clamp_min(1e-30).log();
    let kl = (t * (log_t - logp)).sum_dim(1);
    LossOutput {
        loss: kl.mean().reshape([1]),
        count: n,
        empty: false,
    }
}

/// MRC: cross-entropy against the hard label `argmax(target_probs)` at masked regions.
pub fn mrc_loss(logits: Tensor<3>, target_probs: Tensor<3>, positions: &[usize]) -> LossOutput {
    let device = logits.device();
    if positions.is_empty() {
        return LossOutput::empty(&device);
    }
    let targets: Tensor<1, Int> = gather(target_probs, positions)
        .argmax(1)
        .reshape([positions.len()]);
    LossOutput {
        loss: CrossEntropyLossConfig::new()
            .init(&device)
            .forward(gather(logits, positions), targets),
        count: positions.len(),
        empty: false,
    }
}

/// UNITER's feature-regression head: dense -> GELU -> LayerNorm, then an output projection TIED to
/// the transpose of the region input projection (`features -> hidden`), plus its own bias. Like
/// the MLM head it holds no output matrix: [`MrfrHead::forward`] takes the input projection.
#[derive(Module, Debug)]
pub struct MrfrHead {
    /// `hidden -> hidden`.
    pub dense: Linear,
    /// GELU.
    pub activation: Gelu,
    /// LayerNorm.
    pub layer_norm: LayerNorm,
    /// Output bias over feature dimensions.
    pub bias: Param<Tensor<1>>,
}

impl MrfrHead {
    /// A head for `hidden`-wide states regressing `feature_dim`-wide features.
    pub fn new(hidden: usize, feature_dim: usize, device: &Device) -> Self {
        Self {
            dense: LinearConfig::new(hidden, hidden).init(device),
            activation: Gelu::new(),
            layer_norm: LayerNormConfig::new(hidden)
                .with_epsilon(1e-12)
                .init(device),
            bias: Param::from_tensor(Tensor::zeros([feature_dim], device)),
        }
    }

    /// Regressed features `[B, V, feature_dim]` from states `[B, V, hidden]`, using the encoder's
    /// region input projection weight (Burn layout `[feature_dim, hidden]`).
    pub fn forward(&self, hidden: Tensor<3>, input_projection: Tensor<2>) -> Tensor<3> {
        let [b, v, h] = hidden.dims();
        let x = self
            .layer_norm
            .forward(self.activation.forward(self.dense.forward(hidden)));
        let f = input_projection.dims()[0];
        (x.reshape([b * v, h]).matmul(input_projection.transpose())
            + self.bias.val().unsqueeze::<2>())
        .reshape([b, v, f])
    }
}

/// MRC with hard labels given directly: cross-entropy of `logits` `[B, V, C]` at `positions`
/// (flat `image * V + region`) against `labels[position]`, with the accuracy of the argmax.
/// For data whose regions carry ground-truth classes (no detector distribution to argmax).
pub fn mrc_label_loss(logits: Tensor<3>, labels: &[i64], positions: &[usize]) -> (LossOutput, f32) {
    let device = logits.device();
    if positions.is_empty() {
        return (LossOutput::empty(&device), 0.0);
    }
    let targets = positions.iter().map(|&p| labels[p]).collect();
    let (loss, _, accuracy) = crate::cross_entropy(gather(logits, positions), targets, None);
    (loss, accuracy)
}
