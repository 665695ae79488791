//! Attention masks as first-class values.
//!
//! Masks come in with the HF convention (1 = attend, 0 = masked) and are turned into an additive
//! bias `[batch, 1, q_len | 1, k_len]` that is added to the attention scores before the softmax.
//! The fill value defaults to `f32::MIN`, exactly what HF transformers adds, so that even a row with
//! every key masked behaves as in the reference (a uniform distribution) instead of giving NaN.

use burn::tensor::{Bool, Int, Tensor, TensorData};

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

    /// The unified-VLP mask for a single-stream input laid out as `[text (T) | regions (V)]`
    /// (the order the single-stream encoders concatenate), with HF-convention padding masks
    /// `text_mask` `[B, T]` and `visual_mask` `[B, V]`.
    ///
    /// * [`UnifiedMode::Bidirectional`]: every position attends to every real position (MLM).
    /// * [`UnifiedMode::Seq2Seq`]: caption tokens attend to every real region and causally to
    ///   real caption tokens at or before their own position; regions attend only to regions,
    ///   never to the caption (VLP / Oscar captioning).
    pub fn unified(
        text_mask: Tensor<2, Int>,
        visual_mask: Tensor<2, Int>,
        mode: UnifiedMode,
        fill: f32,
    ) -> Self {
        let [batch, t] = text_mask.dims();
        let v = visual_mask.dims()[1];
        let s = t + v;
        let device = text_mask.device();
        // Structure shared by the batch, built on the host: allowed[q * s + k].
        let allowed: Vec<bool> = (0..s * s)
            .map(|i| {
                let (q, k) = (i / s, i % s);
                match mode {
                    UnifiedMode::Bidirectional => true,
                    UnifiedMode::Seq2Seq => match (q < t, k < t) {
                        (true, true) => k <= q,
                        (true, false) => true,
                        (false, true) => false,
                        (false, false) => true,
                    },
                }
            })
            .collect();
        let structure = Tensor::<3, Bool>::from_data(TensorData::new(allowed, [1, s, s]), &device)
            .expand([batch, s, s]);
        let keys = Tensor::cat(vec![text_mask, visual_mask], 1)
            .equal_elem(1)
            .reshape([batch, 1, s])
            .expand([batch, s, s]);
        Self::from_allowed(structure.bool_and(keys), fill)
    }

    /// The mask of rows `rows` of the batch, in that order (rows may repeat: beams).
    pub fn select_rows(&self, rows: Tensor<1, Int>) -> Self {
        Self {
            bias: self.bias.clone().select(0, rows),
        }
    }

    /// The additive bias, `[batch, 1, q_len | 1, k_len]`.
    pub fn bias(&self) -> &Tensor<4> {
        &self.bias
    }
}

/// Attention pattern of [`AttentionMask::unified`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnifiedMode {
    /// Full attention among real positions.
    Bidirectional,
    /// Causal caption, image never attends to the caption.
    Seq2Seq,
}
