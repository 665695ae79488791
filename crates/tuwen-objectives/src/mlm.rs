//! Masked language modelling (Devlin et al., 2019), as every VLP model pretrains its text side.

use burn::tensor::Tensor;
use rand::Rng;
use tuwen_fusion::heads::MlmHead;

use crate::{LossOutput, cross_entropy, int_tensor};

/// HF's ignore index for labels.
pub const IGNORE: i64 = -100;

/// Masking probabilities.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MaskingConfig {
    /// Fraction of eligible tokens chosen for prediction.
    pub mask_prob: f64,
    /// Of the chosen: fraction replaced by `[MASK]`.
    pub replace_with_mask: f64,
    /// Of the chosen: fraction replaced by a random (non-special) token; the rest stay unchanged.
    pub replace_with_random: f64,
}

impl Default for MaskingConfig {
    /// BERT: 15%; 80% `[MASK]`, 10% random, 10% unchanged.
    fn default() -> Self {
        Self {
            mask_prob: 0.15,
            replace_with_mask: 0.8,
            replace_with_random: 0.1,
        }
    }
}

/// A masked batch, row-major `[batch, seq]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MaskedTokens {
    /// Inputs after masking.
    pub input_ids: Vec<i64>,
    /// Original ids at chosen positions, [`IGNORE`] elsewhere (HF convention).
    pub labels: Vec<i64>,
    /// Flat indices (`row * seq + col`) of the chosen positions, ascending.
    pub positions: Vec<usize>,
}

/// Chooses and corrupts tokens of `input_ids` (`[batch * seq]`, row-major). Positions with
/// `attention_mask == 0` (padding) and ids in `special_ids` are never chosen. Random replacements
/// are drawn uniformly from the non-special ids below `vocab_size`.
///
/// # Panics
/// If `attention_mask` has another length than `input_ids`, or every id is special.
pub fn mask_tokens(
    input_ids: &[i64],
    attention_mask: &[i64],
    special_ids: &[i64],
    vocab_size: usize,
    mask_id: i64,
    config: &MaskingConfig,
    rng: &mut impl Rng,
) -> MaskedTokens {
    assert_eq!(
        input_ids.len(),
        attention_mask.len(),
        "ids and mask differ in length"
    );
    let mut out = MaskedTokens {
        input_ids: input_ids.to_vec(),
        labels: vec![IGNORE; input_ids.len()],
        positions: Vec::new(),
    };
    let random_pool: Vec<i64> = (0..vocab_size as i64)
        .filter(|id| !special_ids.contains(id))
        .collect();
    assert!(
        !random_pool.is_empty(),
        "the vocabulary has no non-special token"
    );
    for (i, (&id, &attend)) in input_ids.iter().zip(attention_mask).enumerate() {
        if attend == 0 || special_ids.contains(&id) || !rng.random_bool(config.mask_prob) {
            continue;
        }
        out.labels[i] = id;
        out.positions.push(i);
        let r: f64 = rng.random();
        if r < config.replace_with_mask {
            out.input_ids[i] = mask_id;
        } else if r < config.replace_with_mask + config.replace_with_random {
            out.input_ids[i] = random_pool[rng.random_range(0..random_pool.len())];
        }
    }
    out
}

/// MLM loss and accuracy at the masked positions only.
#[derive(Clone, Debug)]
pub struct MlmOutput {
    /// Mean cross-entropy over masked positions.
    pub loss: LossOutput,
    /// Predicted ids at the masked positions (same order as `positions`).
    pub predictions: Vec<i64>,
    /// Fraction of masked positions predicted correctly (0 when empty).
    pub accuracy: f32,
}

/// Cross-entropy of the tied MLM `head` at `positions` of `hidden` `[B, T, H]`. The hidden states
/// are gathered first, so the vocabulary projection runs on the masked positions only.
/// `labels` are the flat `[B * T]` labels of [`MaskedTokens`]; `smoothing` is label smoothing.
pub fn mlm_loss(
    head: &MlmHead,
    hidden: Tensor<3>,
    word_embeddings: Tensor<2>,
    positions: &[usize],
    labels: &[i64],
    smoothing: Option<f32>,
) -> MlmOutput {
    let device = hidden.device();
    if positions.is_empty() {
        return MlmOutput {
            loss: LossOutput::empty(&device),
            predictions: Vec::new(),
            accuracy: 0.0,
        };
    }
    let [b, t, h] = hidden.dims();
    let index = int_tensor(positions.iter().map(|&p| p as i64).collect(), &device);
    let gathered = hidden.reshape([b * t, h]).select(0, index);
    let logits = head.forward(gathered, word_embeddings);
    let targets: Vec<i64> = positions.iter().map(|&p| labels[p]).collect();
    let (loss, predictions, accuracy) = cross_entropy(logits, targets, smoothing);
    MlmOutput {
        loss,
        predictions,
        accuracy,
    }
}
