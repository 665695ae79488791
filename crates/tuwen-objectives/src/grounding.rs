//! Supervised region-phrase grounding, for data with phrase -> box links: an alignment
//! distribution of each phrase over its image's regions (cross-entropy to the gold region) and a
//! box regressed from the phrase representation (smooth-L1 + generalised IoU to the gold box).
//! This is the "regression of the correspondence between image regions and text fragments".

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::sigmoid;
use burn::tensor::{Bool, Device, Tensor};

use crate::LossOutput;
use crate::cross_entropy;

/// Scores regions for phrases and regresses boxes from phrases.
#[derive(Module, Debug)]
pub struct GroundingHead {
    /// Phrase -> query space.
    pub phrase_proj: Linear,
    /// Region -> key space.
    pub region_proj: Linear,
    /// Phrase -> `(cx, cy, w, h)` logits of the box (normalised coordinates).
    pub box_head: Linear,
}

/// Outputs of [`GroundingHead::forward`].
#[derive(Clone, Debug)]
pub struct GroundingOutput {
    /// Alignment cross-entropy to the gold region.
    pub alignment: LossOutput,
    /// Smooth-L1 between predicted and gold boxes (mean over coordinates).
    pub box_l1: LossOutput,
    /// `1 - GIoU`, averaged.
    pub box_giou: LossOutput,
    /// Predicted boxes `[N, 4]`, normalised xyxy.
    pub boxes: Tensor<2>,
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

    /// `phrases` `[N, H]`, each with the regions of its image `[N, V, R]` (`region_pad` `[N, V]`
    /// true at padding), the gold region index `[N]` and gold box `[N, 4]` (normalised xyxy).
    pub fn forward(
        &self,
        phrases: Tensor<2>,
        regions: Tensor<3>,
        region_pad: Tensor<2, Bool>,
        gold_region: &[i64],
        gold_boxes: Tensor<2>,
    ) -> GroundingOutput {
        let device = phrases.device();
        let [n, _] = phrases.dims();
        let boxes = cxcywh_to_xyxy(sigmoid(self.box_head.forward(phrases.clone())));
        if n == 0 {
            let empty = LossOutput::empty(&device);
            return GroundingOutput {
                alignment: empty.clone(),
                box_l1: empty.clone(),
                box_giou: empty,
                boxes,
            };
        }
        let q = self.phrase_proj.forward(phrases);
        let k = self.region_proj.forward(regions);
        let [_, v, d] = k.dims();
        let scores = k
            .matmul(q.reshape([n, d, 1]))
            .reshape([n, v])
            .div_scalar((d as f32).sqrt())
            .mask_fill(region_pad, -1e9);
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
        }
    }
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
