//! Real image-caption data: captions from COCO / Karpathy / CC-TSV files (`tuwen_data::formats`)
//! paired with region features from a feature store (`tuwen extract-regions`, or a BUTD TSV
//! imported with `tuwen_regions::tsv`). Each region's label for masked region classification is
//! the extractor's most probable class; the store's global vector is the first region.
//!
//! The last `held_out` captioned images (by id) form the evaluation set and are never trained on.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use rand::Rng;
use tuwen_data::formats::{self, CaptionRecord, OnMalformed};
use tuwen_data::scene::Split;
use tuwen_objectives::itm::MatchLabel;
use tuwen_objectives::mlm::{IGNORE, MaskingConfig};
use tuwen_objectives::mrm::RegionMaskingConfig;
use tuwen_regions::{BoxXyxy, LocationEncoding, StoreReader};
use tuwen_tokenizer::BertTokenizer;

use crate::batch::{HostBatch, ImageRegions, TextSide, assemble, pair_captions};
use crate::config::CaptionFormat;

/// An image with its captions.
pub type Captioned = (String, Vec<String>);

/// Reads a caption file of `format`; malformed CC-TSV lines are skipped and counted.
pub fn read_captions(
    path: &Path,
    format: CaptionFormat,
) -> Result<(Vec<CaptionRecord>, usize), String> {
    let err = |e: formats::FormatError| e.to_string();
    Ok(match format {
        CaptionFormat::Coco => (formats::coco_captions(path).map_err(err)?, 0),
        CaptionFormat::Karpathy => (formats::karpathy(path).map_err(err)?, 0),
        CaptionFormat::CcTsv => {
            let loaded = formats::cc_tsv(path, OnMalformed::Skip).map_err(err)?;
            (loaded.records, loaded.skipped)
        }
    })
}

/// Batches of captioned images whose region features live in a store.
#[derive(Clone, Debug)]
pub struct StoreBatcher {
    /// Tokenizer.
    pub tokenizer: BertTokenizer,
    /// MLM masking.
    pub masking: MaskingConfig,
    /// Probability that a pair's caption comes from another image of the batch.
    pub mismatch_prob: f64,
    /// Region masking for masked region classification (`None`: none).
    pub region_masking: Option<RegionMaskingConfig>,
    store: Arc<StoreReader>,
    train: Vec<Captioned>,
    test: Vec<Captioned>,
}

/// How a corpus was matched with its store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CorpusStats {
    /// Captioned images with features, for training.
    pub train_images: usize,
    /// Held-out images.
    pub test_images: usize,
    /// Captions of images that have no features in the store (dropped).
    pub missing_captions: usize,
}

impl StoreBatcher {
    /// Groups `records` by image, keeps the images the store has (looked up by image path
    /// without extension, as `tuwen extract-regions` names them, then by image id), and holds
    /// out the last `held_out` images by id.
    pub fn new(
        records: &[CaptionRecord],
        store: StoreReader,
        held_out: usize,
        tokenizer: BertTokenizer,
        masking: MaskingConfig,
        mismatch_prob: f64,
        region_masking: Option<RegionMaskingConfig>,
    ) -> Result<(Self, CorpusStats), String> {
        let ids: HashSet<&str> = store.entries().iter().map(|e| e.id.as_str()).collect();
        let mut images: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut missing = 0;
        for r in records {
            let stem = Path::new(&r.image)
                .with_extension("")
                .to_string_lossy()
                .into_owned();
            let id = [stem.as_str(), r.image.as_str(), r.image_id.as_str()]
                .into_iter()
                .find(|id| ids.contains(id));
            match id {
                Some(id) if !r.caption.trim().is_empty() => images
                    .entry(id.to_string())
                    .or_default()
                    .push(r.caption.clone()),
                _ => missing += 1,
            }
        }
        let mut all: Vec<Captioned> = images.into_iter().collect();
        if all.len() <= held_out {
            return Err(format!(
                "{} captioned images have features in the store; {} are held out for evaluation, \
                 none would be left to train on",
                all.len(),
                held_out
            ));
        }
        let test = all.split_off(all.len() - held_out);
        let stats = CorpusStats {
            train_images: all.len(),
            test_images: test.len(),
            missing_captions: missing,
        };
        Ok((
            Self {
                tokenizer,
                masking,
                mismatch_prob,
                region_masking,
                store: Arc::new(store),
                train: all,
                test,
            },
            stats,
        ))
    }

    /// The captioned images of `split` (validation and test share the held-out images).
    pub fn images(&self, split: Split) -> &[Captioned] {
        match split {
            Split::Train => &self.train,
            Split::Validation | Split::Test => &self.test,
        }
    }

    /// Width of a region vector.
    pub fn feature_dim(&self) -> usize {
        self.store.meta().dim
    }

    /// Classes of the stored distributions (region classification targets; 0: none stored).
    pub fn classes(&self) -> usize {
        self.store.meta().classes
    }

    /// The regions of image `id`: the store's global vector over the whole image first, then
    /// every stored box, with 5-d locations and argmax-class labels.
    pub fn regions(&self, id: &str) -> Result<ImageRegions, String> {
        let r = self.store.get(id).map_err(|e| e.to_string())?;
        let [w, h] = r.image_size.map(|v| v as f32);
        let whole = BoxXyxy::new(0.0, 0.0, w, h);
        let mut features = r.global.clone();
        features.extend_from_slice(&r.features);
        let locations = std::iter::once(whole)
            .chain(r.boxes.iter().copied())
            .flat_map(|b| b.encode(LocationEncoding::XyxyArea5, w, h))
            .collect();
        let mut labels = vec![IGNORE];
        for i in 0..r.boxes.len() {
            labels.push(if r.classes == 0 {
                IGNORE
            } else {
                let row = &r.class_probs[i * r.classes..(i + 1) * r.classes];
                (0..r.classes)
                    .max_by(|&a, &b| row[a].total_cmp(&row[b]))
                    .map_or(IGNORE, |c| c as i64)
            });
        }
        Ok(ImageRegions {
            features,
            locations,
            labels,
        })
    }

    fn text(&self) -> TextSide<'_> {
        TextSide {
            tokenizer: &self.tokenizer,
            masking: self.masking,
            region_masking: self.region_masking,
            feature_dim: self.feature_dim(),
        }
    }

    fn image_rows(&self, split: Split, indices: &[u64]) -> Result<Vec<&Captioned>, String> {
        let images = self.images(split);
        if images.is_empty() {
            return Err(format!("no {split:?} images"));
        }
        Ok(indices
            .iter()
            .map(|&i| &images[(i % images.len() as u64) as usize])
            .collect())
    }

    /// The batch of examples `indices` of `split` (example `i` shows image `i mod images`).
    pub fn host_batch(
        &self,
        split: Split,
        indices: &[u64],
        rng: &mut impl Rng,
    ) -> Result<HostBatch, String> {
        let rows = self.image_rows(split, indices)?;
        let pools: Vec<&[String]> = rows.iter().map(|(_, c)| c.as_slice()).collect();
        let (captions, itm) = pair_captions(&pools, self.mismatch_prob, rng);
        let regions = rows
            .iter()
            .map(|(id, _)| self.regions(id))
            .collect::<Result<Vec<_>, _>>()?;
        assemble(&self.text(), regions, captions, itm, true, rng).map_err(|e| e.to_string())
    }

    /// Images `indices` of `split` with `captions`, row by row, as matches, unmasked.
    pub fn host_captions(
        &self,
        split: Split,
        indices: &[u64],
        captions: &[String],
        rng: &mut impl Rng,
    ) -> Result<HostBatch, String> {
        let rows = self.image_rows(split, indices)?;
        let regions = rows
            .iter()
            .map(|(id, _)| self.regions(id))
            .collect::<Result<Vec<_>, _>>()?;
        let itm = vec![MatchLabel::Match; rows.len()];
        assemble(&self.text(), regions, captions.to_vec(), itm, false, rng)
            .map_err(|e| e.to_string())
    }
}
