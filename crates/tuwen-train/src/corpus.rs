//! Real image-caption data: captions from COCO / Karpathy / CC-TSV files (`tuwen_data::formats`)
//! paired with region features from a feature store (`tuwen extract-regions`, or a BUTD TSV
//! imported with `tuwen_regions::tsv`). Each region's label for masked region classification is
//! the extractor's most probable class; the store's global vector is the first region.
//!
//! **Matching captions with the store.** A store id is the image's path relative to the
//! directory or list file it was extracted from, without extension: `tuwen extract-regions`
//! names an image of a directory by its file stem (`COCO_val2014_000000391895`) and a listed image
//! by the listed path (`val2014/COCO_val2014_000000391895`). A caption's image (Karpathy
//! `filepath/filename`, COCO `file_name`, the CC-TSV path or URL) is the image of the longest
//! trailing part of its path, without extension, that is a store id — down to the file stem —
//! then of the image path as written, then of the image id. Two different image paths that reach
//! the same store id (`train2014/x.jpg` and `val2014/x.jpg` with a store of file stems) are an
//! error: extract from a list file so that ids keep their directories.
//!
//! **Splits.** A corpus whose records carry splits (Karpathy) is split by them: `train` and
//! `restval` train, `val` is the validation split, `test` the test split, and `held_out` is
//! unused. A corpus without splits (COCO captions JSON, CC-TSV) holds out its last `held_out`
//! images by id: the first half of them (rounded down) is the validation split, the rest the test
//! split (a single held-out image serves as both). Held-out images are never trained on.
//!
//! **Order.** Training example `i` is position `i % N` of epoch `i / N` (`N` training images),
//! and each epoch visits the training images in a permutation drawn from a generator seeded by
//! `(seed, epoch)`: a pure function of the seed and the index, so loader threads agree and a
//! resumed run sees the same images. Validation and test example `i` is image `i mod N` of the
//! split, in id order.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use tuwen_kernels::splitmix64;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use tuwen_data::formats::{self, CaptionRecord, OnMalformed};
use tuwen_data::scene::Split;
use tuwen_objectives::itm::MatchLabel;
use tuwen_objectives::mlm::{IGNORE, MaskingConfig};
use tuwen_objectives::mrm::RegionMaskingConfig;
use tuwen_regions::{BoxXyxy, LocationEncoding, StoreReader};
use tuwen_tokenizer::BertTokenizer;

use crate::batch::{
    BatchError, HostBatch, ImageRegions, Shard, TextSide, assemble, negative_candidates,
    pair_captions,
};
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

/// The store ids image `image` (with id `image_id`) may have, in the order they are tried: the
/// path without extension, then ever shorter trailing parts of it down to the file stem, then
/// the path as written, then the image id (see the module documentation).
pub fn candidate_ids(image: &str, image_id: &str) -> Vec<String> {
    let stem = Path::new(image)
        .with_extension("")
        .to_string_lossy()
        .into_owned();
    let mut out = vec![stem.clone()];
    let mut rest = stem.as_str();
    while let Some(k) = rest.find(['/', '\\']) {
        rest = &rest[k + 1..];
        if !rest.is_empty() {
            out.push(rest.to_string());
        }
    }
    out.push(image.to_string());
    out.push(image_id.to_string());
    out
}

/// Permutations of the training images, the last few epochs' kept (loader threads work on
/// nearby steps, so at most two epochs are in use at a time).
#[derive(Default)]
struct EpochOrders(Mutex<Vec<(u64, Arc<[u32]>)>>);

impl EpochOrders {
    const KEEP: usize = 4;

    fn get(&self, seed: u64, epoch: u64, n: usize) -> Arc<[u32]> {
        let lock = || self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, p)) = lock().iter().find(|(e, _)| *e == epoch) {
            return p.clone();
        }
        // Drawn outside the lock; two threads drawing the same epoch get the same permutation.
        let p: Arc<[u32]> = epoch_order(seed, epoch, n).into();
        let mut cached = lock();
        if let Some((_, q)) = cached.iter().find(|(e, _)| *e == epoch) {
            return q.clone();
        }
        cached.push((epoch, p.clone()));
        if cached.len() > Self::KEEP {
            let oldest = (0..cached.len()).min_by_key(|&k| cached[k].0).unwrap_or(0);
            cached.swap_remove(oldest);
        }
        p
    }
}

impl std::fmt::Debug for EpochOrders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let cached = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let epochs: Vec<u64> = cached.iter().map(|(e, _)| *e).collect();
        f.debug_struct("EpochOrders")
            .field("cached_epochs", &epochs)
            .finish()
    }
}

/// The order in which epoch `epoch` visits `n` training images: a Fisher-Yates shuffle driven by
/// a generator seeded by `(seed, epoch)` (distinct from the step generators' seeds).
pub fn epoch_order(seed: u64, epoch: u64, n: usize) -> Vec<u32> {
    let mut order: Vec<u32> = (0..n as u32).collect();
    let mut rng = StdRng::seed_from_u64(splitmix64(splitmix64(seed ^ 0x0e90_c4a1) ^ epoch));
    order.shuffle(&mut rng);
    order
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
    seed: u64,
    store: Arc<StoreReader>,
    train: Vec<Captioned>,
    validation: Vec<Captioned>,
    test: Vec<Captioned>,
    orders: Arc<EpochOrders>,
}

/// How a corpus was matched with its store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CorpusStats {
    /// Captioned images with features, for training.
    pub train_images: usize,
    /// Validation images.
    pub validation_images: usize,
    /// Test images.
    pub test_images: usize,
    /// Captions of images that have no features in the store (dropped).
    pub missing_captions: usize,
    /// Whether the splits came from the corpus (Karpathy) rather than `held_out`.
    pub corpus_splits: bool,
}

impl StoreBatcher {
    /// Groups `records` by store image (see the module documentation for how paths match ids),
    /// splits them by the records' own splits when they have them, else holds out the last
    /// `held_out` images by id (validation, then test), and shuffles training epochs with
    /// `seed`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        records: &[CaptionRecord],
        store: StoreReader,
        held_out: usize,
        seed: u64,
        tokenizer: BertTokenizer,
        masking: MaskingConfig,
        mismatch_prob: f64,
        region_masking: Option<RegionMaskingConfig>,
    ) -> Result<(Self, CorpusStats), String> {
        let ids: HashSet<&str> = store.entries().iter().map(|e| e.id.as_str()).collect();
        let corpus_splits = records.iter().any(|r| r.split.is_some());
        // Store id -> (the image path first seen for it, split, captions).
        let mut images: BTreeMap<String, (String, Option<Split>, Vec<String>)> = BTreeMap::new();
        let mut missing = 0;
        for r in records {
            let split = match (&r.split, corpus_splits) {
                (Some(s), _) => Some(formats::karpathy_split(s).ok_or_else(|| {
                    format!(
                        "image {}: unknown split {s:?} (expected train, restval, val or test)",
                        r.image
                    )
                })?),
                (None, true) => {
                    return Err(format!(
                        "image {}: no split, while other images of the corpus have one",
                        r.image
                    ));
                }
                (None, false) => None,
            };
            let id = candidate_ids(&r.image, &r.image_id)
                .into_iter()
                .find(|id| ids.contains(id.as_str()));
            let Some(id) = id.filter(|_| !r.caption.trim().is_empty()) else {
                missing += 1;
                continue;
            };
            let entry = images
                .entry(id.clone())
                .or_insert_with(|| (r.image.clone(), split, Vec::new()));
            if entry.0 != r.image {
                return Err(format!(
                    "images {} and {} both match store id {id}; extract the images from a list \
                     file so that store ids keep their directories",
                    entry.0, r.image
                ));
            }
            if entry.1 != split {
                return Err(format!(
                    "image {} is in two splits ({:?} and {split:?})",
                    r.image, entry.1
                ));
            }
            entry.2.push(r.caption.clone());
        }
        let (train, validation, test) = if corpus_splits {
            let mut parts: [Vec<Captioned>; 3] = Default::default();
            for (id, (_, split, captions)) in images {
                let k = match split {
                    Some(Split::Train) | None => 0,
                    Some(Split::Validation) => 1,
                    Some(Split::Test) => 2,
                };
                parts[k].push((id, captions));
            }
            let [train, validation, test] = parts;
            if train.is_empty() || validation.is_empty() || test.is_empty() {
                return Err(format!(
                    "the corpus's splits have {} training, {} validation and {} test images with \
                     features in the store; each needs at least one",
                    train.len(),
                    validation.len(),
                    test.len()
                ));
            }
            (train, validation, test)
        } else {
            let mut all: Vec<Captioned> = images
                .into_iter()
                .map(|(id, (_, _, captions))| (id, captions))
                .collect();
            if held_out == 0 {
                return Err(
                    "a corpus without splits needs at least one held-out image for evaluation"
                        .into(),
                );
            }
            if all.len() <= held_out {
                return Err(format!(
                    "{} captioned images have features in the store; {} are held out for \
                     evaluation, none would be left to train on",
                    all.len(),
                    held_out
                ));
            }
            let mut test = all.split_off(all.len() - held_out);
            let validation = if test.len() == 1 {
                test.clone()
            } else {
                let rest = test.split_off(test.len() / 2);
                std::mem::replace(&mut test, rest)
            };
            (all, validation, test)
        };
        if train.len() > u32::MAX as usize {
            return Err(format!("{} training images: at most 2^32 - 1", train.len()));
        }
        let stats = CorpusStats {
            train_images: train.len(),
            validation_images: validation.len(),
            test_images: test.len(),
            missing_captions: missing,
            corpus_splits,
        };
        Ok((
            Self {
                tokenizer,
                masking,
                mismatch_prob,
                region_masking,
                seed,
                store: Arc::new(store),
                train,
                validation,
                test,
                orders: Arc::default(),
            },
            stats,
        ))
    }

    /// The captioned images of `split`, in id order.
    pub fn images(&self, split: Split) -> &[Captioned] {
        match split {
            Split::Train => &self.train,
            Split::Validation => &self.validation,
            Split::Test => &self.test,
        }
    }

    /// The image example `index` of `split` shows: for training, position `index % N` of epoch
    /// `index / N`'s permutation ([`epoch_order`]); otherwise image `index mod N` (`None`: the
    /// split is empty).
    pub fn example(&self, split: Split, index: u64) -> Option<&Captioned> {
        let images = self.images(split);
        let n = images.len() as u64;
        if n == 0 {
            return None;
        }
        let k = match split {
            Split::Train => {
                let order = self.orders.get(self.seed, index / n, images.len());
                order[(index % n) as usize] as usize
            }
            Split::Validation | Split::Test => (index % n) as usize,
        };
        Some(&images[k])
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
    /// every stored box, with 5-d locations, argmax-class labels and the class distributions.
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
        // The whole image has no detector distribution: a zero row (never masked).
        let class_probs = if r.classes == 0 {
            Vec::new()
        } else {
            let mut probs = vec![0.0f32; r.classes];
            probs.extend_from_slice(&r.class_probs);
            probs
        };
        Ok(ImageRegions {
            features,
            locations,
            labels,
            class_probs,
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
        indices
            .iter()
            .map(|&i| {
                self.example(split, i)
                    .ok_or_else(|| format!("no {split:?} images"))
            })
            .collect()
    }

    /// The batch of examples `indices` of `split` (the images of [`StoreBatcher::example`]).
    pub fn host_batch(
        &self,
        split: Split,
        indices: &[u64],
        rng: &mut impl Rng,
    ) -> Result<HostBatch, String> {
        self.host_batch_rows(split, indices, None, rng)
    }

    /// [`StoreBatcher::host_batch`] reading from the store only the rows in `own` (when given)
    /// and those their region swaps read (see [`crate::batch::Shard`]); the other rows get
    /// their region count from the store's index. The rows in `own` are those of the whole
    /// batch.
    pub fn host_batch_rows(
        &self,
        split: Split,
        indices: &[u64],
        own: Option<std::ops::Range<usize>>,
        rng: &mut impl Rng,
    ) -> Result<HostBatch, String> {
        let rows = self.image_rows(split, indices)?;
        let pools: Vec<&[String]> = rows.iter().map(|(_, c)| c.as_slice()).collect();
        let (captions, itm) = pair_captions(&pools, self.mismatch_prob, rng);
        let negative_ok = negative_candidates(&pools, &captions);
        let (dim, classes) = (self.feature_dim(), self.classes());
        let regions =
            rows.iter()
                .enumerate()
                .map(|(row, (id, _))| match &own {
                    Some(own) if !own.contains(&row) => {
                        let entry = self.store.entry(id).ok_or_else(|| {
                            format!("image {id} is not in the feature store's index")
                        })?;
                        Ok(ImageRegions::unread(1 + entry.regions, dim, classes))
                    }
                    _ => self.regions(id),
                })
                .collect::<Result<Vec<_>, String>>()?;
        let load = |row: usize| {
            self.regions(&rows[row].0)
                .map_err(|reason| BatchError::Store { reason })
        };
        let shard = own.map(|own| Shard { own, load: &load });
        let mut host = assemble(
            &self.text(),
            regions,
            captions,
            itm,
            true,
            shard.as_ref(),
            rng,
        )
        .map_err(|e| e.to_string())?;
        host.negative_ok = negative_ok;
        Ok(host)
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
        assemble(
            &self.text(),
            regions,
            captions.to_vec(),
            itm,
            false,
            None,
            rng,
        )
        .map_err(|e| e.to_string())
    }
}
