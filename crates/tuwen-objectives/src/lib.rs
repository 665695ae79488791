//! Pretraining and task objectives over tuwen's fusion encoders.
//!
//! * [`mlm`] — masked language modelling: BERT's 15% / 80-10-10 masking (seeded, never special
//!   tokens or padding) and a loss computed only at masked positions (hidden states are gathered
//!   BEFORE the vocabulary projection of the tied head).
//! * [`itm`] — image-text matching with the label polarity as a type ([`itm::MatchLabel`]) and
//!   explicit conversion for each head's convention, random and ITC-hard negatives.
//! * [`grounding`] — supervised region-phrase grounding: alignment over regions + box regression
//!   (smooth-L1 + GIoU).
//! * [`itc`] — contrastive alignment (CLIP/ALBEF): projections, learnable clamped temperature,
//!   symmetric InfoNCE.
//! * [`lm`] — captioning losses: next-token prediction through the unified seq2seq mask of a
//!   single-stream encoder (VLP/Oscar), and through a separate decoder (Seq2Seq); label smoothing,
//!   padding ignored.
//! * [`mrm`] — masked region modelling: region masking (ViLBERT / LXMERT recipes), MRFR, MRC-KL, MRC.
//! * [`ot`] — word-region alignment by optimal transport (UNITER's IPOT), in f32.
//! * [`vqa`] — soft-score answer classification (BCE scaled by the number of answers).
//!
//! * [`mixing`] — weighted sum per step or task sampling by ratio, every loss logged separately.
//!
//! Every loss returns a [`LossOutput`]: a batch with nothing to learn from (no masked token, no
//! positive) gives a zero loss and `empty = true`, never NaN.

pub mod grounding;
pub mod itc;
pub mod itm;
pub mod lm;
pub mod mixing;
pub mod mlm;
pub mod mrm;
pub mod ot;
pub mod vqa;

use burn::nn::loss::CrossEntropyLossConfig;
use burn::tensor::{Device, Int, Tensor, TensorData};

/// A loss value with how many items it averages over.
#[derive(Clone, Debug)]
pub struct LossOutput {
    /// Scalar loss `[1]` (zero when `empty`).
    pub loss: Tensor<1>,
    /// Items the loss averages over (masked tokens, pairs, questions).
    pub count: usize,
    /// True when the batch had nothing to learn from; `loss` is then an exact zero.
    pub empty: bool,
}

impl LossOutput {
    /// The zero loss of an empty batch.
    pub fn empty(device: &Device) -> Self {
        Self {
            loss: Tensor::zeros([1], device),
            count: 0,
            empty: true,
        }
    }
}

/// A 1-d integer tensor of `values`.
pub(crate) fn int_tensor(values: Vec<i64>, device: &Device) -> Tensor<1, Int> {
    let n = values.len();
    Tensor::from_data(TensorData::new(values, [n]), device)
}

/// Mean cross-entropy (optional label smoothing) of `logits` `[N, C]` against `targets` (N > 0),
/// with the argmax predictions and their accuracy: the classification step every objective
/// shares.
pub(crate) fn cross_entropy(
    logits: Tensor<2>,
    targets: Vec<i64>,
    smoothing: Option<f32>,
) -> (LossOutput, Vec<i64>, f32) {
    let device = logits.device();
    let predictions: Vec<i64> =
        tuwen_weights::host::computed(logits.clone().argmax(1).into_data(), "argmax predictions");
    let correct = predictions
        .iter()
        .zip(&targets)
        .filter(|(p, t)| p == t)
        .count();
    let count = targets.len();
    let loss = CrossEntropyLossConfig::new()
        .with_smoothing(smoothing)
        .init(&device)
        .forward(logits, int_tensor(targets, &device));
    (
        LossOutput {
            loss,
            count,
            empty: false,
        },
        predictions,
        correct as f32 / count.max(1) as f32,
    )
}
