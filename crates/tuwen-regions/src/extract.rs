//! Pixels to region features: backbone feature map -> RoIAlign over boxes (detector-free
//! proposals + NMS, or ground-truth boxes) -> pooled region vectors, class distributions from the
//! backbone's classifier (targets for masked-region classification) and a global image token.

use burn::tensor::activation::softmax;
use burn::tensor::{Device, Tensor};
use image::RgbImage;
use tuwen_vision::{Backbone, Normalization, Preprocess};

use crate::proposals::{ProposalConfig, nms};
use crate::{BoxXyxy, RoiAlign};

/// Extraction settings.
#[derive(Clone, Debug, PartialEq)]
pub struct ExtractorConfig {
    /// The image is resized so its shorter side has this many pixels (no crop).
    pub shorter_side: u32,
    /// Regions kept per image (the highest-scoring after NMS).
    pub max_regions: usize,
    /// NMS IoU threshold for proposals.
    pub nms_iou: f32,
    /// RoIAlign output size before averaging to one vector.
    pub pool_size: [usize; 2],
    /// RoIAlign sampling ratio (`<= 0`: adaptive).
    pub sampling_ratio: i32,
    /// Candidate boxes when no ground truth is given.
    pub proposals: ProposalConfig,
    /// Backbone input normalisation.
    pub normalization: Normalization,
}

impl Default for ExtractorConfig {
    fn default() -> Self {
        Self {
            shorter_side: 448,
            max_regions: 36,
            nms_iou: 0.5,
            pool_size: [7, 7],
            sampling_ratio: 2,
            proposals: ProposalConfig::default(),
            normalization: Normalization::IMAGENET,
        }
    }
}

/// Region features of one image.
#[derive(Clone, Debug, PartialEq)]
pub struct RegionFeatures {
    /// Original image `[width, height]` in pixels (boxes are normalised by it, never by the
    /// resized input).
    pub image_size: [u32; 2],
    /// Boxes in original-image pixels.
    pub boxes: Vec<BoxXyxy>,
    /// Region vectors, row-major `[boxes, dim]`.
    pub features: Vec<f32>,
    /// Width of a region vector.
    pub dim: usize,
    /// The global image token: mean of the region vectors.
    pub global: Vec<f32>,
    /// Class distributions, row-major `[boxes, classes]` (softmax of the backbone classifier).
    pub class_probs: Vec<f32>,
    /// Number of classes.
    pub classes: usize,
    /// Per-region confidence (max class probability).
    pub scores: Vec<f32>,
}

impl RegionFeatures {
    /// Number of regions.
    pub fn len(&self) -> usize {
        self.boxes.len()
    }

    /// Whether there are no regions.
    pub fn is_empty(&self) -> bool {
        self.boxes.is_empty()
    }
}

/// Extracts region features with a CNN backbone.
#[derive(Debug)]
pub struct RegionExtractor {
    backbone: Backbone,
    config: ExtractorConfig,
}

impl RegionExtractor {
    /// An extractor over `backbone`.
    pub fn new(backbone: Backbone, config: ExtractorConfig) -> Self {
        Self { backbone, config }
    }

    /// The settings.
    pub fn config(&self) -> &ExtractorConfig {
        &self.config
    }

    /// Extracts regions of `image`. With `gt_boxes` (original-image pixels) those boxes are
    /// pooled, in order and without NMS (at most `max_regions`); otherwise proposals are scored by
    /// the classifier's confidence and reduced by NMS.
    pub fn extract(
        &self,
        image: &RgbImage,
        gt_boxes: Option<&[BoxXyxy]>,
        device: &Device,
    ) -> RegionFeatures {
        let (w, h) = image.dimensions();
        let cfg = &self.config;
        let resized = Preprocess::resize_shorter(image, cfg.shorter_side);
        let (rw, rh) = resized.dimensions();
        let (sx, sy) = (rw as f32 / w as f32, rh as f32 / h as f32);
        let preprocess = Preprocess {
            normalization: cfg.normalization,
            ..Preprocess::default()
        };
        let map = self.backbone.features(preprocess.tensor(&resized, device));
        let candidates: Vec<BoxXyxy> = match gt_boxes {
            Some(gt) => gt
                .iter()
                .take(cfg.max_regions)
                .map(|b| b.clip(w as f32, h as f32))
                .collect(),
            None => cfg.proposals.propose(w as f32, h as f32),
        };
        let classes_empty = RegionFeatures {
            image_size: [w, h],
            boxes: Vec::new(),
            features: Vec::new(),
            dim: map.channels(),
            global: vec![0.0; map.channels()],
            class_probs: Vec::new(),
            classes: 0,
            scores: Vec::new(),
        };
        if candidates.is_empty() {
            return classes_empty;
        }
        let rows: Vec<[f32; 5]> = candidates
            .iter()
            .map(|b| {
                let s = b.scale(sx, sy);
                [0.0, s.x1, s.y1, s.x2, s.y2]
            })
            .collect();
        let roi = RoiAlign {
            output_size: cfg.pool_size,
            spatial_scale: 1.0 / map.stride as f32,
            sampling_ratio: cfg.sampling_ratio,
            aligned: true,
        };
        let pooled = roi
            .forward_boxes(map.tensor, &rows)
            .expect("boxes are built for this one image");
        let [k, c, _, _] = pooled.dims();
        let probs = softmax(self.backbone.classify(pooled.clone()), 1);
        let classes = probs.dims()[1];
        let vectors: Vec<f32> = tuwen_weights::host::computed(
            pooled.mean_dim(3).mean_dim(2).reshape([k, c]).into_data(),
            "region features",
        );
        let probs: Vec<f32> =
            tuwen_weights::host::computed(probs.into_data(), "class probabilities");
        let scores: Vec<f32> = probs
            .chunks_exact(classes)
            .map(|row| row.iter().copied().fold(0.0, f32::max))
            .collect();
        let keep: Vec<usize> = match gt_boxes {
            Some(_) => (0..k).collect(),
            None => nms(&candidates, &scores, cfg.nms_iou, cfg.max_regions),
        };
        let mut out = RegionFeatures {
            classes,
            ..classes_empty
        };
        for &i in &keep {
            out.boxes.push(candidates[i]);
            out.features.extend_from_slice(&vectors[i * c..(i + 1) * c]);
            out.class_probs
                .extend_from_slice(&probs[i * classes..(i + 1) * classes]);
            out.scores.push(scores[i]);
        }
        let n = keep.len().max(1) as f32;
        out.global = (0..c)
            .map(|j| keep.iter().map(|&i| vectors[i * c + j]).sum::<f32>() / n)
            .collect();
        out
    }
}

/// `[boxes, 4]`-style row of one region's normalised location, for fusion-model inputs.
pub fn normalized_locations(
    features: &RegionFeatures,
    encoding: crate::LocationEncoding,
) -> Vec<f32> {
    let [w, h] = features.image_size;
    features
        .boxes
        .iter()
        .flat_map(|b| b.encode(encoding, w as f32, h as f32))
        .collect()
}

/// Convenience: a `[1, boxes, dim]` tensor of the region vectors.
pub fn features_tensor(features: &RegionFeatures, device: &Device) -> Tensor<3> {
    Tensor::from_data(
        burn::tensor::TensorData::new(features.features.clone(), [1, features.len(), features.dim]),
        device,
    )
}
