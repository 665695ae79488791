//! Multi-head scaled dot-product attention in the BERT parameter layout.
//!
//! Written here rather than taken from `burn-nn`: its `MultiHeadAttention` needs queries, keys and
//! values of one width and folds the output projection in, while ViLBERT's co-attention queries
//! one stream (e.g. 768 wide) against keys/values of another (1024 wide) into a third width, and
//! BERT checkpoints keep the output projection in a separate block with its own LayerNorm.

use crate::dropout::dropout;
use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig, Linear, LinearConfig};
use burn::tensor::Device;
use burn::tensor::activation::softmax;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Int, Tensor};

use crate::AttentionMask;
use crate::blocks::linear_positions;

/// Query/key/value projections and the attention itself (HF `BertSelfAttention`).
#[derive(Module, Debug)]
pub struct Attention {
    /// Query projection (`query_width -> all_head_size`).
    pub query: Linear,
    /// Key projection (`kv_width -> all_head_size`).
    pub key: Linear,
    /// Value projection (`kv_width -> all_head_size`).
    pub value: Linear,
    /// Dropout on the attention probabilities.
    pub dropout: Dropout,
    n_heads: usize,
    head_dim: usize,
}

impl Attention {
    /// New attention with `n_heads` heads over `all_head_size` channels.
    ///
    /// # Panics
    /// If `all_head_size` is not a multiple of `n_heads` (configs are validated before this).
    pub fn new(
        query_width: usize,
        kv_width: usize,
        all_head_size: usize,
        n_heads: usize,
        dropout: f64,
        device: &Device,
    ) -> Self {
        assert_eq!(
            all_head_size % n_heads,
            0,
            "width must be a multiple of heads"
        );
        Self {
            query: LinearConfig::new(query_width, all_head_size).init(device),
            key: LinearConfig::new(kv_width, all_head_size).init(device),
            value: LinearConfig::new(kv_width, all_head_size).init(device),
            dropout: DropoutConfig::new(dropout).init(),
            n_heads,
            head_dim: all_head_size / n_heads,
        }
    }

    fn heads(&self, x: Tensor<3>) -> Tensor<4> {
        let [batch, len, _] = x.dims();
        x.reshape([batch, len, self.n_heads, self.head_dim])
            .swap_dims(1, 2)
    }

    /// Keys and values of `keys_values` `[B, S, kv_width]`, split into heads.
    pub fn key_values(&self, keys_values: Tensor<3>) -> KeyValues {
        KeyValues {
            keys: self.heads(linear_positions(&self.key, keys_values.clone())),
            values: self.heads(linear_positions(&self.value, keys_values)),
        }
    }

    /// Attends from `queries` `[B, Sq, query_width]` over precomputed `kv` (e.g. a decoding
    /// cache) under `mask` (`None`: every key is visible). Returns the context
    /// `[B, Sq, all_head_size]`; [`Attention::forward`] is `key_values` + `attend`.
    pub fn attend(
        &self,
        queries: Tensor<3>,
        kv: &KeyValues,
        mask: Option<&AttentionMask>,
    ) -> Tensor<3> {
        let [batch, q_len, _] = queries.dims();
        let q = self.heads(linear_positions(&self.query, queries));
        let context = if q.device().is_autodiff() {
            self.attend_decomposed(q, kv, mask)
        } else {
            // Inference: the backend's fused attention (one kernel per batch x head on Flex,
            // flash attention on CubeCL backends); it has no dropout, which is off here anyway.
            let bias = mask.map(|mask| mask.bias().clone());
            attention(
                q,
                kv.keys.clone(),
                kv.values.clone(),
                None,
                bias,
                AttentionModuleOptions::default(),
            )
        };
        context
            .swap_dims(1, 2)
            .reshape([batch, q_len, self.n_heads * self.head_dim])
    }

    /// `softmax(q k^T / sqrt(d) + mask) v` with dropout on the probabilities, from tensor ops
    /// that autodiff differentiates (Burn's fused attention has no backward and no dropout).
    fn attend_decomposed(
        &self,
        q: Tensor<4>,
        kv: &KeyValues,
        mask: Option<&AttentionMask>,
    ) -> Tensor<4> {
        let scores = q
            .matmul(kv.keys.clone().swap_dims(2, 3))
            .div_scalar((self.head_dim as f32).sqrt());
        let scores = match mask {
            Some(mask) => scores + mask.bias().clone(),
            None => scores,
        };
        dropout(&self.dropout, softmax(scores, 3)).matmul(kv.values.clone())
    }

    /// Attends from `queries` `[B, Sq, query_width]` over `keys_values` `[B, Sk, kv_width]`.
    /// Returns the context `[B, Sq, all_head_size]` (before any output projection).
    pub fn forward(
        &self,
        queries: Tensor<3>,
        keys_values: Tensor<3>,
        mask: &AttentionMask,
    ) -> Tensor<3> {
        let kv = self.key_values(keys_values);
        self.attend(queries, &kv, Some(mask))
    }
}

/// Per-head keys and values `[B, heads, S, head_dim]` of one attention: the unit of a decoding
/// cache (self-attention keys grow by one position per step; cross-attention keys are computed
/// once).
#[derive(Clone, Debug)]
pub struct KeyValues {
    /// Keys `[B, heads, S, head_dim]`.
    pub keys: Tensor<4>,
    /// Values `[B, heads, S, head_dim]`.
    pub values: Tensor<4>,
}

impl KeyValues {
    /// Number of key positions `S`.
    pub fn len(&self) -> usize {
        self.keys.dims()[2]
    }

    /// Whether there is no key position.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of rows `B`.
    pub fn rows(&self) -> usize {
        self.keys.dims()[0]
    }

    /// The rows `rows` (e.g. beam parents), in that order; rows may repeat.
    pub fn select(&self, rows: Tensor<1, Int>) -> Self {
        Self {
            keys: self.keys.clone().select(0, rows.clone()),
            values: self.values.clone().select(0, rows),
        }
    }

    /// `self` followed by `later` along the positions.
    pub fn append(self, later: &KeyValues) -> Self {
        Self {
            keys: Tensor::cat(vec![self.keys, later.keys.clone()], 2),
            values: Tensor::cat(vec![self.values, later.values.clone()], 2),
        }
    }
}
