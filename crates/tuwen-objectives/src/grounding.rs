//! Supervised region-phrase grounding, for data with phrase -> box links: an alignment
//! distribution of each phrase over its image's regions (cross-entropy to the gold region) and a
//! box: the aligned region's box refined by offsets regressed from the phrase (smooth-L1 +
//! generalised IoU to the gold box). This is the "regression of the correspondence between image
//! regions and text fragments".
//!
//! As in ViLBERT's referring-expression task, the prediction is a region of the image (the
//! alignment's top-1) and its box; the regressed offsets move each side by at most half the
//! region's width or height, so a box never turns inside out. In training the box is anchored on
//! the alignment-weighted mean of the region boxes, so the box losses also train the alignment.

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::{softmax, tanh};
use burn::tensor::{Bool, Device, Int, Tensor};

use crate::LossOutput;
use crate::cross_entropy;

/// How far the regressed offsets move a side of the anchor box, as a fraction of its size.
const REFINE: f32 = 0.5;

/// Scores regions for phrases and refines the aligned region's box.
#[derive(Module, Debug)]
pub struct GroundingHead {
    /// Phrase -> query space.
    pub phrase_proj: Linear,
    /// Region -> key space.
    pub region_proj: Linear,
    /// Phrase -> offsets of the `(x1, y1, x2, y2)` sides of the aligned region's box (`tanh`,
    /// times [`REFINE`] x its width / height).
    pub box_head: Linear,
}

/// What [`GroundingHead::forward`] grounds: `N` phrases, each with the regions of its image.
#[derive(Clone, Debug)]
pub struct GroundingInput<'a> {
    /// Phrase vectors `[N, H]`.
    pub phrases: Tensor<2>,
    /// Region states `[N, V, R]`.
    pub regions: Tensor<3>,
    /// Region boxes `[N, V, 4]`, normalised xyxy.
    pub region_boxes: Tensor<3>,
    /// `[N, V]`, true at padding regions.
    pub region_pad: Tensor<2, Bool>,
    /// The gold region of each phrase.
    pub gold_region: &'a [i64],
    /// The gold boxes `[N, 4]`, normalised xyxy.
    pub gold_boxes: Tensor<2>,
}

/// Outputs of [`GroundingHead::forward`].
#[derive(Clone, Debug)]
pub struct GroundingOutput {
    /// Alignment cross-entropy to the gold region.
    pub alignment: LossOutput,
    /// Smooth-L1 between the trained boxes and the gold boxes (mean over coordinates).
    pub box_l1: LossOutput,
    /// `1 - GIoU` of the trained boxes, averaged.
    pub box_giou: LossOutput,
    /// Trained boxes `[N, 4]`, normalised xyxy: anchored on the alignment-weighted region box.
    pub boxes: Tensor<2>,
    /// Predicted boxes `[N, 4]` (no gradient): the top-1 region's box, refined.
    pub predicted: Tensor<2>,
    /// The top-1 region of each phrase `[N]`.
    pub top_region: Tensor<1, Int>,
}

impl GroundingHead {
    /// A head for `phrase_dim`-wide phrase vectors and `region_dim`-wide region states, scoring in
    /// a `dim`-wide space.
    pub fn new(phrase_dim: usize, region_dim: usize, dim: usize, device: &Device) -> Self {
        Self {
            phrase_proj: LinearConfig::new(phrase_dim, dim).init(device),
            region_proj: LinearConfig::new(region_dim, dim).init(device),
            box_head: LinearConfig::new(phrase_dim, 4).init(device),
        }
    }

    /// Alignment scores `[N, V]` of each phrase over its regions (padding at -1e9).
    pub fn scores(
        &self,
        phrases: Tensor<2>,
        regions: Tensor<3>,
        region_pad: Tensor<2, Bool>,
    ) -> Tensor<2> {
        let [n, _] = phrases.dims();
        let q = self.phrase_proj.forward(phrases);
        let k = self.region_proj.forward(regions);
        let [_, v, d] = k.dims();
        k.matmul(q.reshape([n, d, 1]))
            .reshape([n, v])
            .div_scalar((d as f32).sqrt())
            .mask_fill(region_pad, -1e9)
    }

    /// The alignment and box losses of `input`, with the predicted boxes and regions.
    pub fn forward(&self, input: GroundingInput<'_>) -> GroundingOutput {
        let GroundingInput {
            phrases,
            regions,
            region_boxes,
            region_pad,
            gold_region,
            gold_boxes,
        } = input;
        let device = phrases.device();
        let [n, _] = phrases.dims();
        let [_, v, _] = region_boxes.dims();
        let offsets = tanh(self.box_head.forward(phrases.clone()));
        let scores = self.scores(phrases, regions, region_pad);
        let top_region = scores.clone().argmax(1).reshape([n]);
        let one_hot = top_region.clone().one_hot::<2>(v).float();
        let predicted = refine(
            anchor(one_hot, region_boxes.clone()),
            offsets.clone().detach(),
        )
        .detach();
        let boxes = refine(anchor(softmax(scores.clone(), 1), region_boxes), offsets);
        if n == 0 {
            let empty = LossOutput::empty(&device);
            return GroundingOutput {
                alignment: empty.clone(),
                box_l1: empty.clone(),
                box_giou: empty,
                boxes,
                predicted,
                top_region,
            };
        }
        let (alignment, _, _) = cross_entropy(scores, gold_region.to_vec(), None);
        let item = |loss: Tensor<1>| LossOutput {
            loss,
            count: n,
            empty: false,
        };
        GroundingOutput {
            alignment,
            box_l1: item(
                smooth_l1(boxes.clone(), gold_boxes.clone())
                    .mean()
                    .reshape([1]),
            ),
            box_giou: item(
                generalized_iou(boxes.clone(), gold_boxes)
                    .neg()
                    .add_scalar(1.0)
                    .mean()
                    .reshape([1]),
            ),
            boxes,
            predicted,
            top_region,
        }
    }
}

/// The region boxes `[N, V, 4]` averaged with `weights` `[N, V]` (rows summing to 1) -> `[N, 4]`.
fn anchor(weights: Tensor<2>, region_boxes: Tensor<3>) -> Tensor<2> {
    let [n, v] = weights.dims();
    weights
        .reshape([n, 1, v])
        .matmul(region_boxes)
        .reshape([n, 4])
}

/// `anchor` xyxy `[N, 4]` with each side moved by `offsets` in [-1, 1] x [`REFINE`] x the
/// anchor's width (x sides) or height (y sides).
fn refine(anchor: Tensor<2>, offsets: Tensor<2>) -> Tensor<2> {
    let size = anchor.clone().narrow(1, 2, 2) - anchor.clone().narrow(1, 0, 2);
    let scale = Tensor::cat(vec![size.clone(), size], 1).mul_scalar(REFINE);
    anchor + offsets * scale
}

/// `(cx, cy, w, h)` -> `(x1, y1, x2, y2)`, `[N, 4]`.
pub fn cxcywh_to_xyxy(b: Tensor<2>) -> Tensor<2> {
    let c = b.clone().narrow(1, 0, 2);
    let half = b.narrow(1, 2, 2).div_scalar(2.0);
    Tensor::cat(vec![c.clone() - half.clone(), c + half], 1)
}

/// Element-wise smooth-L1 (beta 1): `0.5 d^2` for `|d| < 1`, `|d| - 0.5` beyond.
pub fn smooth_l1(a: Tensor<2>, b: Tensor<2>) -> Tensor<2> {
    let abs = (a - b).abs();
    let quad = abs.clone().clamp_max(1.0);
    quad.clone().powf_scalar(2.0).mul_scalar(0.5) + (abs - quad)
}

/// Generalised IoU (Rezatofighi et al., 2019) of xyxy boxes, `[N, 4]` x `[N, 4]` -> `[N]`.
pub fn generalized_iou(a: Tensor<2>, b: Tensor<2>) -> Tensor<1> {
    let [n, _] = a.dims();
    let col = |t: &Tensor<2>, i: usize| t.clone().narrow(1, i, 1).reshape([n]);
    let (ax1, ay1, ax2, ay2) = (col(&a, 0), col(&a, 1), col(&a, 2), col(&a, 3));
    let (bx1, by1, bx2, by2) = (col(&b, 0), col(&b, 1), col(&b, 2), col(&b, 3));
    let area_a =
        (ax2.clone() - ax1.clone()).clamp_min(0.0) * (ay2.clone() - ay1.clone()).clamp_min(0.0);
    let area_b =
        (bx2.clone() - bx1.clone()).clamp_min(0.0) * (by2.clone() - by1.clone()).clamp_min(0.0);
    let iw = (ax2.clone().min_pair(bx2.clone()) - ax1.clone().max_pair(bx1.clone())).clamp_min(0.0);
    let ih = (ay2.clone().min_pair(by2.clone()) - ay1.clone().max_pair(by1.clone())).clamp_min(0.0);
    let inter = iw * ih;
    let union = (area_a + area_b - inter.clone()).clamp_min(1e-9);
    let cw = ax2.max_pair(bx2) - ax1.min_pair(bx1);
    let ch = ay2.max_pair(by2) - ay1.min_pair(by1);
    let enclosing = (cw * ch).clamp_min(1e-9);
    inter / union.clone() - (enclosing.clone() - union) / enclosing
}
