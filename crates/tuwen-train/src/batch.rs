//! Pretraining batches from the built-in scenes: captions tokenised and masked for MLM, pairs
//! mismatched for ITM, one region per object (from the ground-truth boxes the generator
//! supplies) after a whole-image region, and masked regions labelled with their object's class
//! (shape x colour) for masked region classification.
//!
//! A batch is built on the host ([`HostBatch`], plain vectors: loader threads build them ahead of
//! the step) and moved to a device ([`HostBatch::to_device`]). [`HostBatch::split`] cuts it into
//! row ranges for gradient accumulation and data parallelism: the same examples, labels and
//! masks as the whole batch, so the accumulated update equals the whole-batch update.
//!
//! Region vectors are either the box's pixels average-pooled to a `pool x pool` RGB grid
//! (centred to [-0.5, 0.5]; exact and cheap for synthetic shapes) or CNN features
//! ([`RegionFeatures`]). Locations are the 5-d ViLBERT encoding.

use std::ops::Range;
use std::sync::Arc;

use burn::tensor::{Device, Int, Tensor, TensorData};
use image::RgbImage;
use rand::Rng;
use tuwen_data::scene::{COLORS, Scene, SceneConfig, Split};
use tuwen_fusion::lxmert::LxmertInput;
use tuwen_fusion::{ViLBertInput, VisualBertInput};
use tuwen_objectives::itm::MatchLabel;
use tuwen_objectives::mlm::{IGNORE, MaskingConfig, mask_tokens};
use tuwen_objectives::mrm::{RegionMaskingConfig, plan_region_masks};
use tuwen_regions::{BoxXyxy, LocationEncoding};
use tuwen_tokenizer::{BertTokenizer, TokenizerError, TokenizerOptions};

/// Region classes of the scenes for masked region classification: shape x colour.
pub const REGION_CLASSES: usize = 3 * COLORS.len();

/// Features of a scene's regions from something other than pooled pixels (e.g. a CNN).
pub trait RegionFeatures: Send + Sync + std::fmt::Debug {
    /// Width of one region vector.
    fn dim(&self) -> usize;
    /// One vector per box of `boxes` (pixels) of `scene` (`split`, `index`), row-major.
    fn features(&self, split: Split, index: u64, scene: &Scene, boxes: &[BoxXyxy]) -> Vec<f32>;
}

/// Average RGB of `pool x pool` cells of `bbox` (pixels, clipped), centred to [-0.5, 0.5].
pub fn pooled_pixels(image: &RgbImage, bbox: BoxXyxy, pool: usize) -> Vec<f32> {
    let (w, h) = image.dimensions();
    let b = bbox.clip(w as f32, h as f32);
    let (x1, y1) = (b.x1.floor() as usize, b.y1.floor() as usize);
    let (x2, y2) = (
        (b.x2.ceil() as usize).max(x1 + 1),
        (b.y2.ceil() as usize).max(y1 + 1),
    );
    let (x2, y2) = (x2.min(w as usize), y2.min(h as usize));
    let mut out = vec![0.0f32; 3 * pool * pool];
    for cy in 0..pool {
        for cx in 0..pool {
            let (ya, yb) = (
                y1 + cy * (y2 - y1) / pool,
                (y1 + (cy + 1) * (y2 - y1) / pool).max(y1 + cy * (y2 - y1) / pool + 1),
            );
            let (xa, xb) = (
                x1 + cx * (x2 - x1) / pool,
                (x1 + (cx + 1) * (x2 - x1) / pool).max(x1 + cx * (x2 - x1) / pool + 1),
            );
            let mut sum = [0.0f32; 3];
            let mut n = 0.0f32;
            for y in ya..yb.min(h as usize) {
                for x in xa..xb.min(w as usize) {
                    let p = image.get_pixel(x as u32, y as u32).0;
                    for c in 0..3 {
                        sum[c] += p[c] as f32 / 255.0;
                    }
                    n += 1.0;
                }
            }
            for c in 0..3 {
                out[(c * pool + cy) * pool + cx] = sum[c] / n.max(1.0) - 0.5;
            }
        }
    }
    out
}

/// Builds [`HostBatch`]es from generated scenes.
#[derive(Clone, Debug)]
pub struct SceneBatcher {
    /// Scene generator.
    pub scenes: SceneConfig,
    /// Dataset seed.
    pub seed: u64,
    /// Tokenizer (e.g. from [`SceneBatcher::train_tokenizer`]).
    pub tokenizer: BertTokenizer,
    /// Pooling grid side for region vectors (`3 * pool^2` values each).
    pub pool: usize,
    /// MLM masking.
    pub masking: MaskingConfig,
    /// Probability that a pair's caption is replaced by another scene's.
    pub mismatch_prob: f64,
    /// Region masking for masked region classification (`None`: no region objective).
    pub region_masking: Option<RegionMaskingConfig>,
    /// Distinct scenes per split (0: unbounded; example `i` shows scene `i % scenes_per_split`).
    pub scenes_per_split: u64,
    /// Region vectors other than pooled pixels.
    pub region_features: Option<Arc<dyn RegionFeatures>>,
    /// VQA answer vocabulary, sorted (`None`: no VQA batches); see
    /// [`SceneBatcher::answer_vocabulary`].
    pub answers: Option<Arc<Vec<String>>>,
}

impl SceneBatcher {
    /// The whole-word vocabulary of the captions and questions of `scenes` training scenes
    /// (deterministic: the same ids every run, see [`BertTokenizer::word_vocabulary`]).
    pub fn train_tokenizer(
        config: &SceneConfig,
        seed: u64,
        scenes: u64,
        max_len: usize,
    ) -> Result<BertTokenizer, TokenizerError> {
        let mut corpus = Vec::new();
        for i in 0..scenes {
            let s = config.generate(seed, Split::Train, i);
            corpus.extend(s.captions);
            corpus.extend(s.qa.into_iter().map(|q| q.question));
        }
        let tokens = BertTokenizer::word_vocabulary(&corpus, 1000, true)?;
        BertTokenizer::from_tokens(&tokens, TokenizerOptions::default().with_max_len(max_len))
    }

    /// The sorted answers of the questions of `scenes` training scenes.
    pub fn answer_vocabulary(config: &SceneConfig, seed: u64, scenes: u64) -> Vec<String> {
        let mut answers = std::collections::BTreeSet::new();
        for i in 0..scenes {
            let s = config.generate(seed, Split::Train, i);
            answers.extend(s.qa.into_iter().map(|q| q.answer));
        }
        answers.into_iter().collect()
    }

    /// Width of a region vector.
    pub fn feature_dim(&self) -> usize {
        match &self.region_features {
            Some(f) => f.dim(),
            None => 3 * self.pool * self.pool,
        }
    }

    /// The scene of example `index` of `split`, with its scene index.
    pub fn scene(&self, split: Split, index: u64) -> (u64, Scene) {
        let index = match self.scenes_per_split {
            0 => index,
            n => index % n,
        };
        (index, self.scenes.generate(self.seed, split, index))
    }

    /// Region vectors, 5-d locations and count of a scene: the whole image first, then each object.
    pub fn regions(&self, split: Split, index: u64, scene: &Scene) -> (Vec<f32>, Vec<f32>, usize) {
        let (w, h) = scene.image.dimensions();
        let whole = BoxXyxy::new(0.0, 0.0, w as f32, h as f32);
        let boxes: Vec<BoxXyxy> = std::iter::once(whole)
            .chain(scene.objects.iter().map(|o| o.bbox))
            .collect();
        let feats = match &self.region_features {
            Some(f) => f.features(split, index, scene, &boxes),
            None => boxes
                .iter()
                .flat_map(|b| pooled_pixels(&scene.image, *b, self.pool))
                .collect(),
        };
        let locs = boxes
            .iter()
            .flat_map(|b| b.encode(LocationEncoding::XyxyArea5, w as f32, h as f32))
            .collect();
        (feats, locs, boxes.len())
    }
}

/// A batch on the host: what the objectives need, as row-major vectors.
#[derive(Clone, Debug, PartialEq)]
pub struct HostBatch {
    /// Pairs.
    pub rows: usize,
    /// Padded caption length.
    pub text_len: usize,
    /// Padded regions per image (whole image first).
    pub regions: usize,
    /// Width of a region vector.
    pub feature_dim: usize,
    /// `[rows, text_len]` token ids after MLM masking.
    pub input_ids: Vec<i64>,
    /// `[rows, text_len]` token ids before masking (the text of contrastive and retrieval
    /// passes).
    pub caption_ids: Vec<i64>,
    /// `[rows, text_len]` 1 for real tokens.
    pub attention: Vec<i64>,
    /// `[CLS]` and `[SEP]` ids (the null text of image-only passes is `[CLS] [SEP]`).
    pub cls_sep: [i64; 2],
    /// `[rows, regions, feature_dim]` region vectors after region masking.
    pub features: Vec<f32>,
    /// The region vectors before region masking, when a region was masked (`None`: `features`
    /// are unmasked): the image of contrastive and retrieval passes, as `caption_ids` is their
    /// text.
    pub unmasked_features: Option<Vec<f32>>,
    /// `[rows, regions, 5]` box encodings.
    pub locations: Vec<f32>,
    /// `[rows, regions]` 1 for real regions.
    pub region_mask: Vec<i64>,
    /// Flat MLM positions (`row * text_len + token`; matched pairs only).
    pub mlm_positions: Vec<usize>,
    /// `[rows * text_len]` MLM labels (`IGNORE` elsewhere).
    pub mlm_labels: Vec<i64>,
    /// ITM label per row.
    pub itm: Vec<MatchLabel>,
    /// Flat masked-region positions (`row * regions + region`; matched pairs only).
    pub region_positions: Vec<usize>,
    /// `[rows * regions]` class of each region's object (`IGNORE` for the whole image, padding).
    pub region_labels: Vec<i64>,
    /// `[region_positions.len(), region_classes]`: the detector's class distribution of each
    /// masked region, in `region_positions` order (MRC-KL targets; empty when the regions have
    /// none, as the scenes').
    pub region_distributions: Vec<f32>,
    /// Classes of `region_distributions` (0: none).
    pub distribution_classes: usize,
    /// VQA: the same scenes with one question each (unmasked), when the batcher has answers.
    pub vqa: Option<Box<HostBatch>>,
    /// In a VQA batch: the soft targets of each row (empty: no answer in the answer vocabulary,
    /// the row is not scored).
    pub answers: Vec<AnswerTargets>,
    /// Grounding: caption phrases linked to one object of their image (matched pairs only).
    pub phrases: Vec<PhraseLink>,
    /// `[rows, rows]`: whether the caption of row `j` may be a negative for the image of row
    /// `i` (it is another row's and does not describe image `i`): the candidates of ITC-hard
    /// negatives. Empty in unmasked batches (retrieval, questions, captioning).
    pub negative_ok: Vec<bool>,
}

/// A caption phrase that denotes one region of its row's image (grounding).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PhraseLink {
    /// Row of the batch.
    pub row: usize,
    /// Its tokens: positions `start..end` of the row's caption.
    pub start: usize,
    /// End of the token range (exclusive).
    pub end: usize,
    /// Index of the object's region among the row's regions.
    pub region: usize,
    /// The object's box, normalised xyxy.
    pub bbox: [f32; 4],
}

/// `[rows, rows]` ITC-hard negative candidates: caption `j` is a candidate for image `i` when
/// `j != i` and image `i`'s own captions (`pools[i]`) do not include it.
pub(crate) fn negative_candidates(pools: &[&[String]], captions: &[String]) -> Vec<bool> {
    let b = captions.len();
    (0..b * b)
        .map(|k| {
            let (i, j) = (k / b, k % b);
            i != j && !pools[i].contains(&captions[j])
        })
        .collect()
}

/// Soft VQA targets of one question: `(answer index, score in (0, 1])`, the official VQA
/// accuracy each answer would get (`tuwen_eval::vqa::soft_score`).
pub type AnswerTargets = Vec<(u32, f32)>;

impl HostBatch {
    /// Rows `range` as a batch of their own (same padding; positions re-indexed).
    pub fn slice(&self, range: Range<usize>) -> HostBatch {
        let (t, r, d) = (self.text_len, self.regions, self.feature_dim);
        let rows = range.len();
        let within = |positions: &[usize], width: usize| -> Vec<usize> {
            positions
                .iter()
                .filter(|&&p| range.contains(&(p / width)))
                .map(|&p| p - range.start * width)
                .collect()
        };
        HostBatch {
            rows,
            text_len: t,
            regions: r,
            feature_dim: d,
            input_ids: self.input_ids[range.start * t..range.end * t].to_vec(),
            caption_ids: self.caption_ids[range.start * t..range.end * t].to_vec(),
            cls_sep: self.cls_sep,
            attention: self.attention[range.start * t..range.end * t].to_vec(),
            features: self.features[range.start * r * d..range.end * r * d].to_vec(),
            unmasked_features: self
                .unmasked_features
                .as_ref()
                .map(|f| f[range.start * r * d..range.end * r * d].to_vec()),
            locations: self.locations[range.start * r * 5..range.end * r * 5].to_vec(),
            region_mask: self.region_mask[range.start * r..range.end * r].to_vec(),
            mlm_positions: within(&self.mlm_positions, t),
            mlm_labels: self.mlm_labels[range.start * t..range.end * t].to_vec(),
            itm: self.itm[range.clone()].to_vec(),
            region_positions: within(&self.region_positions, r),
            region_labels: self.region_labels[range.start * r..range.end * r].to_vec(),
            region_distributions: self.distributions_within(&range),
            distribution_classes: self.distribution_classes,
            vqa: self.vqa.as_ref().map(|v| Box::new(v.slice(range.clone()))),
            answers: self
                .answers
                .get(range.clone())
                .map_or_else(Vec::new, <[AnswerTargets]>::to_vec),
            phrases: self
                .phrases
                .iter()
                .filter(|p| range.contains(&p.row))
                .map(|p| PhraseLink {
                    row: p.row - range.start,
                    ..*p
                })
                .collect(),
            negative_ok: if self.negative_ok.len() == self.rows * self.rows {
                range
                    .clone()
                    .flat_map(|i| {
                        let from = i * self.rows;
                        self.negative_ok[from + range.start..from + range.end].to_vec()
                    })
                    .collect()
            } else {
                Vec::new()
            },
        }
    }

    /// The rows of `region_distributions` whose masked region lies in rows `range`.
    fn distributions_within(&self, range: &Range<usize>) -> Vec<f32> {
        let k = self.distribution_classes;
        if k == 0 {
            return Vec::new();
        }
        self.region_positions
            .iter()
            .enumerate()
            .filter(|&(_, &p)| range.contains(&(p / self.regions)))
            .flat_map(|(i, _)| {
                self.region_distributions[i * k..(i + 1) * k]
                    .iter()
                    .copied()
            })
            .collect()
    }

    /// The matched rows as a captioning batch for the unified LM objective: the unmasked caption
    /// as input (`input_ids` = `caption_ids`), the unmasked regions, nothing masked.
    pub fn lm_view(&self) -> HostBatch {
        let (t, r, d) = (self.text_len, self.regions, self.feature_dim);
        let rows: Vec<usize> = (0..self.rows)
            .filter(|&i| self.itm[i] == MatchLabel::Match)
            .collect();
        let take = |v: &[i64], w: usize| -> Vec<i64> {
            rows.iter()
                .flat_map(|&i| v[i * w..(i + 1) * w].to_vec())
                .collect()
        };
        let takef = |v: &[f32], w: usize| -> Vec<f32> {
            rows.iter()
                .flat_map(|&i| v[i * w..(i + 1) * w].to_vec())
                .collect()
        };
        let features = self.unmasked_features.as_ref().unwrap_or(&self.features);
        let caption_ids = take(&self.caption_ids, t);
        HostBatch {
            rows: rows.len(),
            text_len: t,
            regions: r,
            feature_dim: d,
            input_ids: caption_ids.clone(),
            caption_ids,
            attention: take(&self.attention, t),
            cls_sep: self.cls_sep,
            features: takef(features, r * d),
            unmasked_features: None,
            locations: takef(&self.locations, r * 5),
            region_mask: take(&self.region_mask, r),
            mlm_positions: Vec::new(),
            mlm_labels: vec![IGNORE; rows.len() * t],
            itm: vec![MatchLabel::Match; rows.len()],
            region_positions: Vec::new(),
            region_labels: take(&self.region_labels, r),
            region_distributions: Vec::new(),
            distribution_classes: 0,
            vqa: None,
            answers: Vec::new(),
            phrases: Vec::new(),
            negative_ok: Vec::new(),
        }
    }

    /// Next-token targets of the unified LM objective in this batch (matched rows: each real
    /// caption token but the last predicts the next one).
    pub fn lm_targets(&self) -> usize {
        let t = self.text_len;
        (0..self.rows)
            .filter(|&i| self.itm[i] == MatchLabel::Match)
            .map(|i| {
                let row = &self.attention[i * t..(i + 1) * t];
                row.windows(2).filter(|w| w[0] == 1 && w[1] == 1).count()
            })
            .sum()
    }

    /// `parts` contiguous row ranges of near-equal size (the first ones one row larger).
    pub fn split(&self, parts: usize) -> Vec<HostBatch> {
        part_rows(self.rows, parts)
            .into_iter()
            .map(|rows| self.slice(rows))
            .collect()
    }

    /// The batch as tensors on `device`.
    pub fn to_device(&self, device: &Device) -> PretrainBatch {
        let int = |v: &[i64], shape: [usize; 2]| {
            Tensor::<2, Int>::from_data(TensorData::new(v.to_vec(), shape), device)
        };
        let (b, t, r, d) = (self.rows, self.text_len, self.regions, self.feature_dim);
        PretrainBatch {
            input_ids: int(&self.input_ids, [b, t]),
            caption_ids: int(&self.caption_ids, [b, t]),
            cls_sep: self.cls_sep,
            attention_mask: int(&self.attention, [b, t]),
            features: Tensor::from_data(TensorData::new(self.features.clone(), [b, r, d]), device),
            unmasked_features: self
                .unmasked_features
                .as_ref()
                .map(|f| Tensor::from_data(TensorData::new(f.clone(), [b, r, d]), device)),
            locations: Tensor::from_data(
                TensorData::new(self.locations.clone(), [b, r, 5]),
                device,
            ),
            region_mask: int(&self.region_mask, [b, r]),
            mlm_positions: self.mlm_positions.clone(),
            mlm_labels: self.mlm_labels.clone(),
            itm: self.itm.clone(),
            region_positions: self.region_positions.clone(),
            region_labels: self.region_labels.clone(),
            // (No `[0, K]` upload for a part without masked regions.)
            region_distributions: (self.distribution_classes > 0
                && !self.region_positions.is_empty())
            .then(|| {
                let shape = [self.region_positions.len(), self.distribution_classes];
                Tensor::from_data(
                    TensorData::new(self.region_distributions.clone(), shape),
                    device,
                )
            }),
            vqa: self.vqa.as_ref().map(|v| Box::new(v.to_device(device))),
            answers: self.answers.clone(),
            phrases: self.phrases.clone(),
            negative_ok: self.negative_ok.clone(),
        }
    }
}

/// A batch on a device.
#[derive(Clone, Debug)]
pub struct PretrainBatch {
    /// `[B, T]` token ids after MLM masking.
    pub input_ids: Tensor<2, Int>,
    /// `[B, T]` token ids before masking.
    pub caption_ids: Tensor<2, Int>,
    /// `[CLS]` and `[SEP]` ids.
    pub cls_sep: [i64; 2],
    /// `[B, T]` 1 for real tokens.
    pub attention_mask: Tensor<2, Int>,
    /// `[B, R, D]` region vectors after region masking (whole image first).
    pub features: Tensor<3>,
    /// `[B, R, D]` region vectors before region masking (`None`: none was masked).
    pub unmasked_features: Option<Tensor<3>>,
    /// `[B, R, 5]` box encodings.
    pub locations: Tensor<3>,
    /// `[B, R]` 1 for real regions.
    pub region_mask: Tensor<2, Int>,
    /// Flat MLM positions (matched pairs only).
    pub mlm_positions: Vec<usize>,
    /// Flat MLM labels (`IGNORE` elsewhere).
    pub mlm_labels: Vec<i64>,
    /// ITM labels per row.
    pub itm: Vec<MatchLabel>,
    /// Flat masked-region positions.
    pub region_positions: Vec<usize>,
    /// Flat region classes (`IGNORE` where there is none).
    pub region_labels: Vec<i64>,
    /// `[masked regions, classes]` detector class distributions of the masked regions, in
    /// `region_positions` order (`None`: the regions have none).
    pub region_distributions: Option<Tensor<2>>,
    /// The VQA batch of the same scenes.
    pub vqa: Option<Box<PretrainBatch>>,
    /// In a VQA batch: the soft targets of each row (empty: not scored).
    pub answers: Vec<AnswerTargets>,
    /// Grounding phrases (matched pairs).
    pub phrases: Vec<PhraseLink>,
    /// `[B, B]` ITC-hard negative candidates (see [`HostBatch::negative_ok`]).
    pub negative_ok: Vec<bool>,
}

/// Which modalities an encoder pass sees. Unimodal passes replace the other modality by a
/// constant null input (text `[CLS] [SEP]`; one all-zero region covering the image), so the same
/// encoder gives text-only and image-only embeddings for contrastive learning and retrieval.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum View {
    /// Masked captions with their regions (MLM, ITM, region classification).
    Joint,
    /// Unmasked captions with the null image.
    Text,
    /// The unmasked regions with the null text.
    Image,
}

impl PretrainBatch {
    /// `(ids, attention, features, locations, region_mask)` of `view`.
    fn parts(
        &self,
        view: View,
    ) -> (
        Tensor<2, Int>,
        Tensor<2, Int>,
        Tensor<3>,
        Tensor<3>,
        Tensor<2, Int>,
    ) {
        let device = self.input_ids.device();
        let [b, _] = self.input_ids.dims();
        let [_, _, d] = self.features.dims();
        let null_image = || {
            (
                Tensor::<3>::zeros([b, 1, d], &device),
                Tensor::<1>::from_floats([0.0, 0.0, 1.0, 1.0, 1.0], &device)
                    .reshape([1, 1, 5])
                    .repeat_dim(0, b),
                Tensor::<2, Int>::ones([b, 1], &device),
            )
        };
        match view {
            View::Joint => (
                self.input_ids.clone(),
                self.attention_mask.clone(),
                self.features.clone(),
                self.locations.clone(),
                self.region_mask.clone(),
            ),
            View::Text => {
                let (f, l, m) = null_image();
                (
                    self.caption_ids.clone(),
                    self.attention_mask.clone(),
                    f,
                    l,
                    m,
                )
            }
            View::Image => {
                let ids = Tensor::<1, Int>::from_ints(self.cls_sep, &device)
                    .reshape([1, 2])
                    .repeat_dim(0, b);
                // The image view sees the unmasked regions, as the text view sees the
                // unmasked caption.
                (
                    ids,
                    Tensor::<2, Int>::ones([b, 2], &device),
                    self.unmasked_features
                        .clone()
                        .unwrap_or_else(|| self.features.clone()),
                    self.locations.clone(),
                    self.region_mask.clone(),
                )
            }
        }
    }

    /// VisualBERT's input: text then regions in one stream, with 5-d box encodings.
    pub fn visual_bert_input(&self, view: View) -> VisualBertInput {
        let (ids, attention, features, locations, region_mask) = self.parts(view);
        let mut input = VisualBertInput::new(ids, features);
        input.attention_mask = attention;
        input.visual_attention_mask = region_mask;
        input.visual_locations = Some(locations);
        input
    }

    /// LXMERT's input: regions with their 4-d normalised boxes (`x1, y1, x2, y2`; the area
    /// VisualBERT and ViLBERT also read is left out, as LXMERT's box encoder takes four).
    pub fn lxmert_input(&self, view: View) -> LxmertInput {
        let (ids, attention, features, locations, region_mask) = self.parts(view);
        let mut input = LxmertInput::new(ids, features, locations.narrow(2, 0, 4));
        input.attention_mask = attention;
        input.visual_attention_mask = region_mask;
        input
    }

    /// ViLBERT's input: the whole-image region is the image stream's first (global) token.
    pub fn vilbert_input(&self, view: View) -> ViLBertInput {
        let (ids, attention, features, locations, region_mask) = self.parts(view);
        let mut input = ViLBertInput::new(ids, features, locations);
        input.attention_mask = attention;
        input.image_attention_mask = region_mask;
        input
    }
}

impl SceneBatcher {
    /// The batch of examples `indices` of `split` on the host. Every random choice (mismatched
    /// captions, masked tokens and regions) is drawn from `rng` in a fixed order.
    pub fn host_batch(
        &self,
        split: Split,
        indices: &[u64],
        rng: &mut impl Rng,
    ) -> Result<HostBatch, BatchError> {
        self.host_batch_rows(split, indices, None, rng)
    }

    /// [`SceneBatcher::host_batch`] whose rows outside `own` (when given) have no region features
    /// computed (see [`Shard`]): the rows in `own` are those of the whole batch.
    pub fn host_batch_rows(
        &self,
        split: Split,
        indices: &[u64],
        own: Option<std::ops::Range<usize>>,
        rng: &mut impl Rng,
    ) -> Result<HostBatch, BatchError> {
        let scenes: Vec<(u64, Scene)> = indices.iter().map(|&i| self.scene(split, i)).collect();
        let pools: Vec<&[String]> = scenes.iter().map(|(_, s)| s.captions.as_slice()).collect();
        let (captions, itm) = pair_captions(&pools, self.mismatch_prob, rng);
        let negative_ok = negative_candidates(&pools, &captions);
        let phrases = self.phrase_links(&scenes, &captions, &itm)?;
        let mut host = self.assemble(split, scenes.clone(), captions, itm, true, own, rng)?;
        host.negative_ok = negative_ok;
        host.phrases = phrases
            .into_iter()
            .filter(|p| p.end <= host.text_len)
            .collect();
        if self.answers.is_some() {
            // One question per scene; drawn after everything else, so runs without VQA see the
            // same batches as before.
            host.vqa = Some(Box::new(self.questions(split, scenes, rng)?.0));
        }
        Ok(host)
    }

    /// The phrases of each matched row's caption that denote one object, with their token
    /// ranges (by tokenising the caption up to the phrase's start and end: phrases end at word
    /// boundaries) and the object's region and normalised box. Draws nothing.
    fn phrase_links(
        &self,
        scenes: &[(u64, Scene)],
        captions: &[String],
        itm: &[MatchLabel],
    ) -> Result<Vec<PhraseLink>, BatchError> {
        let mut links = Vec::new();
        for (row, ((_, scene), caption)) in scenes.iter().zip(captions).enumerate() {
            if itm[row] != MatchLabel::Match {
                continue;
            }
            let Some(c) = scene.captions.iter().position(|x| x == caption) else {
                continue;
            };
            let (w, h) = scene.image.dimensions();
            let full = self.tokenizer.encode_batch(&[caption.as_str()])?[0].len();
            for p in scene.phrases.iter().filter(|p| p.caption == c) {
                let [object] = p.objects[..] else { continue };
                let prefix = |end: usize| -> Result<usize, BatchError> {
                    Ok(self.tokenizer.encode_batch(&[&caption[..end]])?[0].len())
                };
                // `[CLS] prefix [SEP]`: the phrase starts after `[CLS]` and the prefix.
                let start = prefix(p.span.start)? - 1;
                let end = (prefix(p.span.end)? - 1).min(full - 1);
                if start >= end {
                    continue;
                }
                let b = scene.objects[object].bbox;
                links.push(PhraseLink {
                    row,
                    start,
                    end,
                    region: 1 + object,
                    bbox: [
                        b.x1 / w as f32,
                        b.y1 / h as f32,
                        b.x2 / w as f32,
                        b.y2 / h as f32,
                    ],
                });
            }
        }
        Ok(links)
    }

    /// One question per scene of examples `indices` of `split` (unmasked), with one-hot soft
    /// targets over the batcher's answers and each row's gold answer; rows of scenes without
    /// questions are not scored.
    pub fn question_batch(
        &self,
        split: Split,
        indices: &[u64],
        rng: &mut impl Rng,
    ) -> Result<(HostBatch, Vec<Vec<String>>), BatchError> {
        let scenes: Vec<(u64, Scene)> = indices.iter().map(|&i| self.scene(split, i)).collect();
        self.questions(split, scenes, rng)
    }

    fn questions(
        &self,
        split: Split,
        scenes: Vec<(u64, Scene)>,
        rng: &mut impl Rng,
    ) -> Result<(HostBatch, Vec<Vec<String>>), BatchError> {
        let answers = self.answers.as_deref().map_or(&[][..], Vec::as_slice);
        let b = scenes.len();
        let mut questions = Vec::with_capacity(b);
        let mut targets = Vec::with_capacity(b);
        let mut gold = Vec::with_capacity(b);
        for (_, scene) in &scenes {
            if scene.qa.is_empty() {
                questions.push(String::new());
                targets.push(Vec::new());
                gold.push(Vec::new());
                continue;
            }
            let qa = &scene.qa[rng.random_range(0..scene.qa.len())];
            questions.push(qa.question.clone());
            // One generated answer: a one-hot soft target.
            targets.push(
                answers
                    .binary_search(&qa.answer)
                    .map_or_else(|_| Vec::new(), |i| vec![(i as u32, 1.0)]),
            );
            gold.push(vec![qa.answer.clone()]);
        }
        let itm = vec![MatchLabel::Match; b];
        let mut vqa = self.assemble(split, scenes, questions, itm, false, None, rng)?;
        vqa.answers = targets;
        Ok((vqa, gold))
    }

    /// Scenes `indices` of `split` paired with `captions` (row by row, labelled as matches, no
    /// masking): the pairs of retrieval re-ranking, or any text a caller chooses.
    pub fn host_captions(
        &self,
        split: Split,
        indices: &[u64],
        captions: &[String],
        rng: &mut impl Rng,
    ) -> Result<HostBatch, BatchError> {
        let scenes: Vec<(u64, Scene)> = indices.iter().map(|&i| self.scene(split, i)).collect();
        let itm = vec![MatchLabel::Match; scenes.len()];
        self.assemble(split, scenes, captions.to_vec(), itm, false, None, rng)
    }

    #[allow(clippy::too_many_arguments)]
    fn assemble(
        &self,
        split: Split,
        scenes: Vec<(u64, Scene)>,
        captions: Vec<String>,
        itm: Vec<MatchLabel>,
        mask: bool,
        own: Option<std::ops::Range<usize>>,
        rng: &mut impl Rng,
    ) -> Result<HostBatch, BatchError> {
        let d = self.feature_dim();
        let images = scenes
            .iter()
            .enumerate()
            .map(|(row, (index, scene))| match &own {
                Some(own) if !own.contains(&row) => {
                    ImageRegions::unread(1 + scene.objects.len(), d, 0)
                }
                _ => self.image_regions(split, *index, scene),
            })
            .collect();
        let text = TextSide {
            tokenizer: &self.tokenizer,
            masking: self.masking,
            region_masking: self.region_masking,
            feature_dim: d,
        };
        let load = |row: usize| {
            let (index, scene) = &scenes[row];
            Ok(self.image_regions(split, *index, scene))
        };
        let shard = own.map(|own| Shard { own, load: &load });
        assemble(&text, images, captions, itm, mask, shard.as_ref(), rng)
    }

    /// The regions of scene `index` (features, box encodings, shape-and-colour labels).
    fn image_regions(&self, split: Split, index: u64, scene: &Scene) -> ImageRegions {
        let (features, locations, count) = self.regions(split, index, scene);
        let mut labels = vec![IGNORE; count];
        for (k, o) in scene.objects.iter().enumerate() {
            let shape = tuwen_data::scene::Shape::ALL
                .iter()
                .position(|&s| s == o.shape)
                .unwrap_or(0);
            labels[1 + k] = (shape * COLORS.len() + o.color) as i64;
        }
        ImageRegions {
            features,
            locations,
            labels,
            class_probs: Vec::new(),
        }
    }

    /// [`SceneBatcher::host_batch`] moved to `device`.
    pub fn batch(
        &self,
        split: Split,
        indices: &[u64],
        rng: &mut impl Rng,
        device: &Device,
    ) -> Result<PretrainBatch, BatchError> {
        Ok(self.host_batch(split, indices, rng)?.to_device(device))
    }
}

/// The row ranges of [`HostBatch::split`]: `rows` cut into `parts` contiguous ranges (at most
/// `rows`, at least one), the first `rows % parts` one row longer.
pub fn part_rows(rows: usize, parts: usize) -> Vec<std::ops::Range<usize>> {
    let parts = parts.clamp(1, rows.max(1));
    let (base, extra) = (rows / parts, rows % parts);
    let mut start = 0;
    (0..parts)
        .map(|i| {
            let len = base + usize::from(i < extra);
            start += len;
            start - len..start
        })
        .collect()
}

/// Why a batch could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// A caption could not be tokenised.
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    /// An image's regions do not fit the batch (a feature source of another width, a store
    /// entry whose arrays disagree).
    #[error("image {row} of the batch: {what} holds {got} values, expected {want}")]
    Regions {
        /// Row of the image in the batch.
        row: usize,
        /// Which array (`features`, `locations`).
        what: &'static str,
        /// Values it holds.
        got: usize,
        /// Values it should hold (regions x width).
        want: usize,
    },
    /// A row's regions could not be read from the feature store.
    #[error("reading regions: {reason}")]
    Store {
        /// The store's message (naming the image and the file).
        reason: String,
    },
}

impl ImageRegions {
    /// Checks that the arrays agree with the region count (`labels.len()`) and `width`.
    fn check(&self, row: usize, width: usize) -> Result<(), BatchError> {
        let n = self.labels.len();
        if n > 0 && !self.class_probs.len().is_multiple_of(n) {
            return Err(BatchError::Regions {
                row,
                what: "class_probs",
                got: self.class_probs.len(),
                want: n * (self.class_probs.len() / n + 1),
            });
        }
        for (what, got, want) in [
            ("features", self.features.len(), n * width),
            ("locations", self.locations.len(), n * 5),
        ] {
            if got != want {
                return Err(BatchError::Regions {
                    row,
                    what,
                    got,
                    want,
                });
            }
        }
        Ok(())
    }
}

/// One image's regions as a batch needs them (the whole image first).
#[derive(Clone, Debug, PartialEq)]
pub struct ImageRegions {
    /// `[count, dim]` region vectors.
    pub features: Vec<f32>,
    /// `[count, 5]` box encodings.
    pub locations: Vec<f32>,
    /// Class per region for masked region classification (`IGNORE`: none; its length is the
    /// region count).
    pub labels: Vec<i64>,
    /// `[count, classes]` the detector's class distribution of each region (the whole image's
    /// row all zeros), for MRC-KL; empty when the source has none.
    pub class_probs: Vec<f32>,
}

/// What the text side of a batch needs: tokenizer, masking, and the region vector width.
pub(crate) struct TextSide<'a> {
    pub tokenizer: &'a BertTokenizer,
    pub masking: MaskingConfig,
    pub region_masking: Option<RegionMaskingConfig>,
    pub feature_dim: usize,
}

/// Row `r` gets a caption from `pools[r]`, or (with probability `mismatch_prob`) from another
/// row's pool; a caption that another row's pool shares with this one still counts as a match
/// (labelled by text identity).
pub(crate) fn pair_captions(
    pools: &[&[String]],
    mismatch_prob: f64,
    rng: &mut impl Rng,
) -> (Vec<String>, Vec<MatchLabel>) {
    let b = pools.len();
    let mut captions = Vec::with_capacity(b);
    let mut itm = Vec::with_capacity(b);
    for row in 0..b {
        let mismatched = b > 1 && rng.random_bool(mismatch_prob);
        let source = if mismatched {
            (row + rng.random_range(1..b)) % b
        } else {
            row
        };
        let pool = pools[source];
        // Every pool holds at least one caption (scenes always; corpora keep captioned images).
        let caption = pool[rng.random_range(0..pool.len())].clone();
        let matches = !mismatched || pools[row].contains(&caption);
        itm.push(if matches {
            MatchLabel::Match
        } else {
            MatchLabel::Mismatch
        });
        captions.push(caption);
    }
    (captions, itm)
}

/// `texts` paired row by row with `images` as matches, unmasked: VQA questions, captions to
/// score or teacher-force, retrieval candidates. (`rng` only feeds the zero-probability masking
/// draws, as in every unmasked batch.)
pub(crate) fn matched_pairs(
    tokenizer: &BertTokenizer,
    feature_dim: usize,
    images: Vec<ImageRegions>,
    texts: Vec<String>,
    rng: &mut impl Rng,
) -> Result<HostBatch, BatchError> {
    let text = TextSide {
        tokenizer,
        masking: MaskingConfig::default(),
        region_masking: None,
        feature_dim,
    };
    let itm = vec![MatchLabel::Match; texts.len()];
    assemble(&text, images, texts, itm, false, None, rng)
}

/// The rows of a batch one process of a data-parallel job computes ([`crate::distributed`]):
/// only their region features are read; the other rows are drawn alike (captions, token and
/// region masks: every process draws the whole batch, so the objectives' denominators and its
/// parts are those of one process) with empty features, except rows whose features a swap
/// into `own` reads, which `load` reads.
pub(crate) struct Shard<'a> {
    /// The rows computed here.
    pub own: std::ops::Range<usize>,
    /// Reads row `i`'s regions.
    pub load: &'a dyn Fn(usize) -> Result<ImageRegions, BatchError>,
}

impl ImageRegions {
    /// `count` regions with no features read (zeros), no labels and `classes` zero
    /// probabilities each: a row another process computes.
    pub(crate) fn unread(count: usize, dim: usize, classes: usize) -> Self {
        Self {
            features: vec![0.0; count * dim],
            locations: vec![0.0; count * 5],
            labels: vec![IGNORE; count],
            class_probs: vec![0.0; count * classes],
        }
    }
}

/// Tokenises, masks and pads `captions` against `images` into a [`HostBatch`] (`mask`: MLM and
/// region masking as configured; otherwise none).
/// With `shard`, the rows outside `shard.own` carry no features except those a swap reads.
pub(crate) fn assemble(
    text: &TextSide<'_>,
    images: Vec<ImageRegions>,
    captions: Vec<String>,
    itm: Vec<MatchLabel>,
    mask: bool,
    shard: Option<&Shard<'_>>,
    rng: &mut impl Rng,
) -> Result<HostBatch, BatchError> {
    let masking = MaskingConfig {
        mask_prob: if mask { text.masking.mask_prob } else { 0.0 },
        ..text.masking
    };
    let region_masking = if mask { text.region_masking } else { None };
    let b = images.len();
    for (row, image) in images.iter().enumerate() {
        image.check(row, text.feature_dim)?;
    }
    let refs: Vec<&str> = captions.iter().map(String::as_str).collect();
    let encoded = text.tokenizer.encode_batch(&refs)?;
    let len = encoded.iter().map(|e| e.len()).max().unwrap_or(0);
    let special = text.tokenizer.special_tokens();
    let mut ids = vec![special.pad as i64; b * len];
    let mut attention = vec![0i64; b * len];
    for (row, e) in encoded.iter().enumerate() {
        for (j, &id) in e.ids.iter().enumerate() {
            ids[row * len + j] = id as i64;
            attention[row * len + j] = 1;
        }
    }
    // MLM only where the caption belongs to the image.
    let mlm_attention: Vec<i64> = attention
        .iter()
        .enumerate()
        .map(|(i, &a)| {
            if itm[i / len.max(1)] == MatchLabel::Match {
                a
            } else {
                0
            }
        })
        .collect();
    let specials: Vec<i64> = [
        special.pad,
        special.unk,
        special.cls,
        special.sep,
        special.mask,
    ]
    .iter()
    .map(|&s| s as i64)
    .collect();
    let masked = mask_tokens(
        &ids,
        &mlm_attention,
        &specials,
        text.tokenizer.vocab_size(),
        special.mask as i64,
        &masking,
        rng,
    );
    let regions = images
        .iter()
        .map(|r| r.labels.len())
        .max()
        .unwrap_or(1)
        .max(1);
    let d = text.feature_dim;
    let mut features = vec![0.0f32; b * regions * d];
    let mut locations = vec![0.0f32; b * regions * 5];
    let mut region_mask = vec![0i64; b * regions];
    let mut region_labels = vec![IGNORE; b * regions];
    for (row, image) in images.iter().enumerate() {
        let (at, n) = (row * regions, image.labels.len());
        features[at * d..(at + n) * d].copy_from_slice(&image.features);
        locations[at * 5..(at + n) * 5].copy_from_slice(&image.locations);
        region_mask[at..at + n].fill(1);
        region_labels[at..at + n].copy_from_slice(&image.labels);
    }
    let (features, region_positions, unmasked_features) = match &region_masking {
        Some(config) => {
            // Regions of mismatched pairs are never masked (as MLM).
            let matched_regions: Vec<i64> = region_mask
                .iter()
                .enumerate()
                .map(|(i, &m)| {
                    if itm[i / regions] == MatchLabel::Match {
                        m
                    } else {
                        0
                    }
                })
                .collect();
            let plan = plan_region_masks(&matched_regions, b, true, config, rng);
            if let Some(shard) = shard {
                // A swap into one of this process's rows reads another row's feature: that row
                // is read too (the others' features stay empty).
                let mut loaded = Vec::new();
                for source in plan.sources_for(regions, |row| shard.own.contains(&row)) {
                    let row = source / regions;
                    if shard.own.contains(&row) || loaded.contains(&row) {
                        continue;
                    }
                    let image = (shard.load)(row)?;
                    image.check(row, d)?;
                    let at = row * regions * d;
                    features[at..at + image.features.len()].copy_from_slice(&image.features);
                    loaded.push(row);
                }
            }
            let m = plan.apply(&features, d);
            let unmasked = (!m.positions.is_empty()).then_some(features);
            (m.features, m.positions, unmasked)
        }
        None => (features, Vec::new(), None),
    };
    debug_assert!(masked.labels.iter().all(|&l| l == IGNORE || l >= 0));
    let distributions = masked_distributions(&images, &region_positions, regions)?;
    Ok(HostBatch {
        rows: b,
        text_len: len,
        regions,
        feature_dim: d,
        input_ids: masked.input_ids,
        caption_ids: ids,
        cls_sep: [special.cls as i64, special.sep as i64],
        attention,
        features,
        unmasked_features,
        locations,
        region_mask,
        mlm_positions: masked.positions,
        mlm_labels: masked.labels,
        itm,
        region_positions,
        region_labels,
        region_distributions: distributions.values,
        distribution_classes: distributions.classes,
        vqa: None,
        answers: Vec::new(),
        phrases: Vec::new(),
        // Training batches only (`rows^2` flags; retrieval builds large unmasked pair batches).
        negative_ok: if mask {
            negative_candidates(
                &captions
                    .iter()
                    .map(std::slice::from_ref)
                    .collect::<Vec<_>>(),
                &captions,
            )
        } else {
            Vec::new()
        },
    })
}

/// The class distributions of the masked regions (see [`HostBatch::region_distributions`]).
struct MaskedDistributions {
    /// `[positions, classes]`.
    values: Vec<f32>,
    /// 0: the images have none.
    classes: usize,
}

/// The class distribution of each masked region at `positions` (`row * regions + region`), when
/// the images have them; every image must then have the same number of classes.
fn masked_distributions(
    images: &[ImageRegions],
    positions: &[usize],
    regions: usize,
) -> Result<MaskedDistributions, BatchError> {
    let classes_of = |image: &ImageRegions| image.class_probs.len() / image.labels.len().max(1);
    let classes = images.iter().map(classes_of).max().unwrap_or(0);
    if classes == 0 {
        return Ok(MaskedDistributions {
            values: Vec::new(),
            classes,
        });
    }
    if let Some(row) = images.iter().position(|i| classes_of(i) != classes) {
        return Err(BatchError::Regions {
            row,
            what: "class_probs",
            got: images[row].class_probs.len(),
            want: images[row].labels.len() * classes,
        });
    }
    let mut values = Vec::with_capacity(positions.len() * classes);
    for &p in positions {
        let (row, region) = (p / regions, p % regions);
        values
            .extend_from_slice(&images[row].class_probs[region * classes..(region + 1) * classes]);
    }
    Ok(MaskedDistributions { values, classes })
}
