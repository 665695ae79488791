//! The data of a run behind one type: the built-in scenes or a caption corpus with a feature
//! store. The loop, evaluation and retrieval only ask it for host batches.

use std::collections::HashSet;
use std::sync::Arc;

use rand::Rng;
use tuwen_data::scene::Split;
use tuwen_objectives::mlm::MaskingConfig;
use tuwen_tokenizer::BertTokenizer;

use crate::batch::{HostBatch, REGION_CLASSES, SceneBatcher};
use crate::corpus::StoreBatcher;

/// Where a run's batches come from.
#[derive(Clone, Debug)]
pub enum Data {
    /// Generated scenes.
    Scenes(Arc<SceneBatcher>),
    /// Captions + feature store.
    Store(Arc<StoreBatcher>),
}

impl Data {
    /// The batch of examples `indices` of `split`.
    pub fn host_batch(
        &self,
        split: Split,
        indices: &[u64],
        rng: &mut impl Rng,
    ) -> Result<HostBatch, String> {
        self.host_batch_rows(split, indices, None, rng)
    }

    /// [`Data::host_batch`] with the region features of the rows in `own` only (when given;
    /// see [`crate::batch::Shard`]): what one process of a data-parallel job computes.
    pub fn host_batch_rows(
        &self,
        split: Split,
        indices: &[u64],
        own: Option<std::ops::Range<usize>>,
        rng: &mut impl Rng,
    ) -> Result<HostBatch, String> {
        match self {
            Self::Scenes(b) => b
                .host_batch_rows(split, indices, own, rng)
                .map_err(|e| e.to_string()),
            Self::Store(b) => b.host_batch_rows(split, indices, own, rng),
        }
    }

    /// Images `indices` of `split` paired with `captions` (matches, unmasked).
    pub fn host_captions(
        &self,
        split: Split,
        indices: &[u64],
        captions: &[String],
        rng: &mut impl Rng,
    ) -> Result<HostBatch, String> {
        match self {
            Self::Scenes(b) => b
                .host_captions(split, indices, captions, rng)
                .map_err(|e| e.to_string()),
            Self::Store(b) => b.host_captions(split, indices, captions, rng),
        }
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &BertTokenizer {
        match self {
            Self::Scenes(b) => &b.tokenizer,
            Self::Store(b) => &b.tokenizer,
        }
    }

    /// Width of a region vector.
    pub fn feature_dim(&self) -> usize {
        match self {
            Self::Scenes(b) => b.feature_dim(),
            Self::Store(b) => b.feature_dim(),
        }
    }

    /// Classes of masked region classification.
    pub fn region_classes(&self) -> usize {
        match self {
            Self::Scenes(_) => REGION_CLASSES,
            Self::Store(b) => b.classes(),
        }
    }

    /// Whether batches carry masked regions.
    pub fn masks_regions(&self) -> bool {
        match self {
            Self::Scenes(b) => b.region_masking.is_some(),
            Self::Store(b) => b.region_masking.is_some(),
        }
    }

    /// The same data with `masking` for MLM, and scenes not wrapped to a finite set (held-out
    /// evaluation).
    pub fn for_evaluation(&self, masking: MaskingConfig) -> Self {
        match self {
            Self::Scenes(b) => Self::Scenes(Arc::new(SceneBatcher {
                masking,
                scenes_per_split: 0,
                ..b.as_ref().clone()
            })),
            Self::Store(b) => {
                let mut b = b.as_ref().clone();
                b.masking = masking;
                Self::Store(Arc::new(b))
            }
        }
    }

    /// Up to `n` held-out examples of `split` (validation or test) with distinct captions, one
    /// each: the scenes' longest caption from scene 1,000,000 on (the accuracy evaluation uses
    /// the first ones), or the held-out images' first caption.
    pub fn retrieval_set(&self, split: Split, n: usize) -> (Vec<u64>, Vec<String>) {
        let mut indices = Vec::with_capacity(n);
        let mut captions = Vec::with_capacity(n);
        let mut seen = HashSet::new();
        let mut keep = |i: u64, caption: String| {
            if indices.len() < n && seen.insert(caption.clone()) {
                indices.push(i);
                captions.push(caption);
            }
        };
        match self {
            Self::Scenes(b) => {
                for i in (1_000_000u64..).take(n * 20) {
                    let (_, scene) = b.scene(split, i);
                    if let Some(c) = scene.captions.iter().max_by_key(|c| (c.len(), *c)) {
                        keep(i, c.clone());
                    }
                }
            }
            Self::Store(b) => {
                for (i, (_, caps)) in b.images(split).iter().enumerate() {
                    if let Some(c) = caps.first() {
                        keep(i as u64, c.clone());
                    }
                }
            }
        }
        (indices, captions)
    }

    /// Examples of `split` available (unbounded for the scenes).
    pub fn split_len(&self, split: Split) -> usize {
        match self {
            Self::Scenes(_) => usize::MAX,
            Self::Store(b) => b.images(split).len(),
        }
    }

    /// A seed for evaluation draws.
    pub fn seed(&self) -> u64 {
        match self {
            Self::Scenes(b) => b.seed,
            Self::Store(_) => 0,
        }
    }
}
