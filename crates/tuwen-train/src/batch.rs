//! Pretraining batches from the built-in scenes for a single-stream encoder: captions tokenised
//! and masked for MLM, half of the pairs mismatched for ITM, and one region per object (from the
//! ground-truth boxes the generator supplies) plus a whole-image token.
//!
//! Region vectors are the box's pixels average-pooled to a `pool x pool` RGB grid (centred to
//! [-0.5, 0.5]): exact and cheap for synthetic shapes, where a pretrained CNN adds little; real
//! images use `tuwen_regions` features instead. Locations are the 5-d ViLBERT encoding.

use burn::tensor::{Device, Int, Tensor, TensorData};
use image::RgbImage;
use rand::Rng;
use tuwen_data::scene::{Scene, SceneConfig, Split};
use tuwen_fusion::VisualBertInput;
use tuwen_objectives::itm::MatchLabel;
use tuwen_objectives::mlm::{IGNORE, MaskingConfig, mask_tokens};
use tuwen_regions::{BoxXyxy, LocationEncoding};
use tuwen_tokenizer::{BertTokenizer, TokenizerError, TokenizerOptions};

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

/// A batch for MLM + ITM on a single-stream encoder.
#[derive(Clone, Debug)]
pub struct PretrainBatch {
    /// Encoder input (masked caption ids, region features, 5-d locations, masks).
    pub input: VisualBertInput,
    /// Flat MLM positions (matched pairs only).
    pub mlm_positions: Vec<usize>,
    /// Flat MLM labels (`IGNORE` elsewhere).
    pub mlm_labels: Vec<i64>,
    /// ITM labels per row.
    pub itm: Vec<MatchLabel>,
}

/// Builds [`PretrainBatch`]es from generated scenes.
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
}

impl SceneBatcher {
    /// The whole-word vocabulary of the captions and questions of `scenes` training scenes
    /// (deterministic: the same ids every run, see [`BertTokenizer::word_vocabulary`]).
    pub fn train_tokenizer(
        config: &SceneConfig,
        seed: u64,
        scenes: u64,
    ) -> Result<BertTokenizer, TokenizerError> {
        let mut corpus = Vec::new();
        for i in 0..scenes {
            let s = config.generate(seed, Split::Train, i);
            corpus.extend(s.captions);
            corpus.extend(s.qa.into_iter().map(|q| q.question));
        }
        let tokens = BertTokenizer::word_vocabulary(&corpus, 1000, true)?;
        BertTokenizer::from_tokens(&tokens, TokenizerOptions::default().with_max_len(24))
    }

    /// Width of a region vector.
    pub fn feature_dim(&self) -> usize {
        3 * self.pool * self.pool
    }

    /// Region vectors, 5-d locations and count of a scene: the whole image first, then each object.
    pub fn regions(&self, scene: &Scene) -> (Vec<f32>, Vec<f32>, usize) {
        let (w, h) = scene.image.dimensions();
        let whole = BoxXyxy::new(0.0, 0.0, w as f32, h as f32);
        let boxes: Vec<BoxXyxy> = std::iter::once(whole)
            .chain(scene.objects.iter().map(|o| o.bbox))
            .collect();
        let feats = boxes
            .iter()
            .flat_map(|b| pooled_pixels(&scene.image, *b, self.pool))
            .collect();
        let locs = boxes
            .iter()
            .flat_map(|b| b.encode(LocationEncoding::XyxyArea5, w as f32, h as f32))
            .collect();
        (feats, locs, boxes.len())
    }

    /// The batch of scenes `indices` of `split`.
    pub fn batch(
        &self,
        split: Split,
        indices: &[u64],
        rng: &mut impl Rng,
        device: &Device,
    ) -> Result<PretrainBatch, TokenizerError> {
        let scenes: Vec<Scene> = indices
            .iter()
            .map(|&i| self.scenes.generate(self.seed, split, i))
            .collect();
        let b = scenes.len();
        let mut captions = Vec::with_capacity(b);
        let mut itm = Vec::with_capacity(b);
        for (row, scene) in scenes.iter().enumerate() {
            let mismatched = b > 1 && rng.random_bool(self.mismatch_prob);
            let source = if mismatched {
                (row + rng.random_range(1..b)) % b
            } else {
                row
            };
            let pool = &scenes[source].captions;
            let caption = pool[rng.random_range(0..pool.len())].clone();
            // A caption of another scene can still be true of this one; label by text identity.
            let matches = !mismatched || scene.captions.contains(&caption);
            itm.push(if matches {
                MatchLabel::Match
            } else {
                MatchLabel::Mismatch
            });
            captions.push(caption);
        }
        let refs: Vec<&str> = captions.iter().map(String::as_str).collect();
        let encoded = self.tokenizer.encode_batch(&refs)?;
        let len = encoded.iter().map(|e| e.len()).max().unwrap_or(0);
        let special = self.tokenizer.special_tokens();
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
            self.tokenizer.vocab_size(),
            special.mask as i64,
            &self.masking,
            rng,
        );
        let max_regions = scenes
            .iter()
            .map(|s| s.objects.len() + 1)
            .max()
            .unwrap_or(1);
        let d = self.feature_dim();
        let mut feats = vec![0.0f32; b * max_regions * d];
        let mut locs = vec![0.0f32; b * max_regions * 5];
        let mut region_mask = vec![0i64; b * max_regions];
        for (row, scene) in scenes.iter().enumerate() {
            let (f, l, n) = self.regions(scene);
            feats[row * max_regions * d..row * max_regions * d + n * d].copy_from_slice(&f);
            locs[row * max_regions * 5..row * max_regions * 5 + n * 5].copy_from_slice(&l);
            region_mask[row * max_regions..row * max_regions + n].fill(1);
        }
        let int = |v: Vec<i64>, shape: [usize; 2]| {
            Tensor::<2, Int>::from_data(TensorData::new(v, shape), device)
        };
        let mut input = VisualBertInput::new(
            int(masked.input_ids.clone(), [b, len]),
            Tensor::from_data(TensorData::new(feats, [b, max_regions, d]), device),
        );
        input.attention_mask = int(attention, [b, len]);
        input.visual_attention_mask = int(region_mask, [b, max_regions]);
        input.visual_locations = Some(Tensor::from_data(
            TensorData::new(locs, [b, max_regions, 5]),
            device,
        ));
        debug_assert!(masked.labels.iter().all(|&l| l == IGNORE || l >= 0));
        Ok(PretrainBatch {
            input,
            mlm_positions: masked.positions,
            mlm_labels: masked.labels,
            itm,
        })
    }
}
