//! Image-text matching. Codebases disagree on what logit index means "match" (VisualBERT: 0,
//! LXMERT: 1, ViLBERT's `is_next`: 1 means MISmatch), so the label is a type and every head states
//! its convention.

use burn::tensor::Tensor;
use burn::tensor::activation::softmax;
use rand::Rng;

use crate::{LossOutput, cross_entropy};

/// Whether a caption belongs to an image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatchLabel {
    /// The caption describes the image.
    Match,
    /// The caption belongs to another image.
    Mismatch,
}

/// Which logit index of a 2-way head means "match".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Polarity {
    /// Index 0 = match (HF VisualBERT `sentence_image_labels`: 0 = matching caption).
    MatchIsZero,
    /// Index 1 = match (HF LXMERT `matched_label`; ViLBERT's `is_next` is the opposite:
    /// its index 1 means mismatch, i.e. [`Polarity::MatchIsZero`]).
    MatchIsOne,
}

impl Polarity {
    /// VisualBERT's sentence-image head.
    pub const VISUAL_BERT: Self = Self::MatchIsZero;
    /// LXMERT's matched head.
    pub const LXMERT: Self = Self::MatchIsOne;
    /// ViLBERT's `bi_seq_relationship` (`is_next` = 1 means a random caption).
    pub const VILBERT: Self = Self::MatchIsZero;

    /// The class index of `label` under this convention.
    pub fn index(self, label: MatchLabel) -> i64 {
        match (self, label) {
            (Self::MatchIsZero, MatchLabel::Match) | (Self::MatchIsOne, MatchLabel::Mismatch) => 0,
            _ => 1,
        }
    }

    /// The label of class `index` (0 or 1) under this convention.
    pub fn label(self, index: i64) -> MatchLabel {
        if (index == 0) == (self == Self::MatchIsZero) {
            MatchLabel::Match
        } else {
            MatchLabel::Mismatch
        }
    }
}

/// Cross-entropy of 2-way ITM `logits` `[B, 2]` for `labels` under the head's `polarity`, and
/// the accuracy.
pub fn itm_loss(logits: Tensor<2>, labels: &[MatchLabel], polarity: Polarity) -> (LossOutput, f32) {
    let device = logits.device();
    if labels.is_empty() {
        return (LossOutput::empty(&device), 0.0);
    }
    let targets: Vec<i64> = labels.iter().map(|&l| polarity.index(l)).collect();
    let (loss, _, accuracy) = cross_entropy(logits, targets, None);
    (loss, accuracy)
}

/// For each of `batch` images, the index of another item of the batch whose caption becomes its
/// negative (uniformly random, never itself). `None` for a batch of one (no negative exists).
pub fn random_negatives(batch: usize, rng: &mut impl Rng) -> Option<Vec<usize>> {
    (batch >= 2).then(|| {
        (0..batch)
            .map(|i| {
                let j = rng.random_range(0..batch - 1);
                if j >= i { j + 1 } else { j }
            })
            .collect()
    })
}

/// Hard negatives from in-batch ITC similarities `[B, B]` (row i: image i vs caption j): for each
/// row, a caption sampled with probability `softmax(sim)` over the OTHER captions (diagonal
/// excluded), as ALBEF/BLIP. `None` for a batch of one.
pub fn hard_negatives(similarity: Tensor<2>, rng: &mut impl Rng) -> Option<Vec<usize>> {
    let [b, _] = similarity.dims();
    if b < 2 {
        return None;
    }
    let probs: Vec<f32> =
        tuwen_weights::host::computed(softmax(similarity, 1).into_data(), "ITC similarities");
    Some(
        (0..b)
            .map(|i| {
                let row = &probs[i * b..(i + 1) * b];
                let total: f32 = row
                    .iter()
                    .enumerate()
                    .filter(|&(j, _)| j != i)
                    .map(|(_, p)| p)
                    .sum();
                let mut target = rng.random::<f32>() * total;
                let mut pick = if i == 0 { 1 } else { 0 };
                for (j, &p) in row.iter().enumerate() {
                    if j == i {
                        continue;
                    }
                    pick = j;
                    if target < p {
                        break;
                    }
                    target -= p;
                }
                pick
            })
            .collect(),
    )
}
