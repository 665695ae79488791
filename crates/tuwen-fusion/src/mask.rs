//! Attention masks as first-class values.
//!
//! Masks come in with the HF convention (1 = attend, 0 = masked) and are turned into an additive
//! bias `[batch, 1, q_len | 1, k_len]` that is added to the attention scores before the softmax.
//! The fill value defaults to `f32::MIN`, exactly what HF transformers adds, so that even a row with
//! every key masked behaves as in the reference (a uniform distribution) instead of giving NaN.

use burn::tensor::{Bool, Int, Tensor};

/// What HF transformers adds at masked positions (`torch.finfo(float32).min`).
pub const HF_MASK_VALUE: f32 = f32::MIN;
/// What the original BERT/ViLBERT code adds at masked positions.
pub const BERT_MASK_VALUE: f32 = -10_000.0;

/// An additive attention bias, broadcastable to `[batch, heads, q_len, k_len]`.
#[derive(Clone, Debug)]
pub struct AttentionMask {
    bias: Tensor<4>,
}

impl AttentionMask {
    /// A key-padding mask: `mask` is `[batch, k_len]` with 1 = real token, 0 = padding.
    /// Every query may attend to every real key.
    pub fn padding(mask: Tensor<2, Int>, fill: f32) -> Self {
        let [batch, k_len] = mask.dims();
        let blocked = mask.equal_elem(0).float();
        Self {
            bias: blocked.mul_scalar(fill).reshape([batch, 1, 1, k_len]),
        }
    }

    /// A full mask: `allowed` is `[batch, q_len, k_len]`, true where query `i` may attend to key `j`.
    pub fn from_allowed(allowed: Tensor<3, Bool>, fill: f32) -> Self {
        let [batch, q_len, k_len] = allowed.dims();
        let blocked = allowed.bool_not().float();
        Self {
            bias: blocked.mul_scalar(fill).reshape([batch, 1, q_len, k_len]),
        }
    }

    /// The additive bias, `[batch, 1, q_len | 1, k_len]`.
    pub fn bias(&self) -> &Tensor<4> {
        &self.bias
    }
}
