//! Captioning losses: next-token prediction, either from the caption positions of a single-stream
//! encoder run under the unified seq2seq mask (VLP / Oscar; the tied MLM head predicts the next
//! token), or from a separate caption decoder (Seq2Seq). Padding is ignored; label smoothing is
//! optional.

use burn::tensor::Tensor;
use tuwen_fusion::heads::MlmHead;

use crate::mlm::{IGNORE, MlmOutput, mlm_loss};
use crate::{LossOutput, cross_entropy, int_tensor};

/// Next-token targets of captions `ids` / `attention` (`[batch * len]`, row-major): position `i`
/// predicts `ids[i + 1]` when that token is real. Returns `(positions, labels)` with labels
/// [`IGNORE`] elsewhere.
pub fn next_token_targets(ids: &[i64], attention: &[i64], batch: usize) -> (Vec<usize>, Vec<i64>) {
    let len = ids.len() / batch.max(1);
    let mut labels = vec![IGNORE; ids.len()];
    let mut positions = Vec::new();
    for row in 0..batch {
        for i in 0..len.saturating_sub(1) {
            let (at, next) = (row * len + i, row * len + i + 1);
            if attention[at] == 1 && attention[next] == 1 {
                labels[at] = ids[next];
                positions.push(at);
            }
        }
    }
    (positions, labels)
}

/// LM loss of a single-stream encoder run under `AttentionMask::unified(.., Seq2Seq, ..)`:
/// `caption_hidden` `[B, T, H]` are the caption positions of the encoder output.
pub fn lm_loss(
    head: &MlmHead,
    caption_hidden: Tensor<3>,
    word_embeddings: Tensor<2>,
    ids: &[i64],
    attention: &[i64],
    smoothing: Option<f32>,
) -> MlmOutput {
    let batch = caption_hidden.dims()[0];
    let (positions, labels) = next_token_targets(ids, attention, batch);
    mlm_loss(
        head,
        caption_hidden,
        word_embeddings,
        &positions,
        &labels,
        smoothing,
    )
}

/// Seq2Seq loss of decoder `logits` `[B, T, V]` for captions `ids` / `attention`, and the
/// next-token accuracy.
pub fn seq2seq_loss(
    logits: Tensor<3>,
    ids: &[i64],
    attention: &[i64],
    smoothing: Option<f32>,
) -> (LossOutput, f32) {
    let device = logits.device();
    let [b, t, v] = logits.dims();
    let (positions, labels) = next_token_targets(ids, attention, b);
    if positions.is_empty() {
        return (LossOutput::empty(&device), 0.0);
    }
    let index = int_tensor(positions.iter().map(|&p| p as i64).collect(), &device);
    let gathered = logits.reshape([b * t, v]).select(0, index);
    let targets: Vec<i64> = positions.iter().map(|&p| labels[p]).collect();
    let (loss, _, accuracy) = cross_entropy(gathered, targets, smoothing);
    (loss, accuracy)
}
