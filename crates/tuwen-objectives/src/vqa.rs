//! VQA as multi-label answer classification with soft scores (BUTD / LXMERT / VisualBERT):
//! target `min(1, annotators agreeing / 3)` per answer, binary cross-entropy with logits averaged
//! over every entry and multiplied by the number of answers (the reference scaling). The answer
//! head itself is `tuwen_fusion::lxmert::AnswerHead` (shared by LXMERT and VisualBERT's VQA model).

use burn::tensor::Tensor;
use burn::tensor::activation::log_sigmoid;

use crate::LossOutput;

/// Soft-score BCE of `logits` `[B, A]` against `targets` `[B, A]` in [0, 1].
pub fn vqa_loss(logits: Tensor<2>, targets: Tensor<2>) -> LossOutput {
    let device = logits.device();
    let [b, answers] = logits.dims();
    if b == 0 {
        return LossOutput::empty(&device);
    }
    // BCE with logits, -t log sigmoid(x) - (1 - t) log sigmoid(-x): stable, and its gradient is
    // sigmoid(x) - t everywhere (the max/abs form has wrong subgradients at x = 0, which a
    // zero-initialised classifier hits).
    let per_entry = -(targets.clone() * log_sigmoid(logits.clone())
        + targets.neg().add_scalar(1.0) * log_sigmoid(logits.neg()));
    LossOutput {
        loss: per_entry.mean().mul_scalar(answers as f32).reshape([1]),
        count: b,
        empty: false,
    }
}

/// VQA accuracy of predictions: the soft score of the argmax answer, averaged.
pub fn vqa_accuracy(logits: Tensor<2>, targets: Tensor<2>) -> f32 {
    let [b, _] = logits.dims();
    if b == 0 {
        return 0.0;
    }
    let picked = targets.gather(1, logits.argmax(1));
    picked.mean().into_scalar()
}
