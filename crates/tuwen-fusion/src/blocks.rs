//! The post-LayerNorm Transformer pieces every BERT-family encoder is made of. Field names follow
//! the HF modules (`attention.self`, `attention.output`, `intermediate`, `output`) so that the
//! weight mapping in [`crate::weights`] stays a handful of renames.

use crate::activation::gelu;
use crate::dropout::dropout;
use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig, Gelu, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::{Device, Tensor};

use crate::attention::KeyValues;
use crate::{Attention, AttentionMask};

/// Sizes of one BERT layer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LayerDims {
    /// Width of the hidden states.
    pub hidden: usize,
    /// Number of attention heads.
    pub heads: usize,
    /// Width of the feed-forward inner layer.
    pub intermediate: usize,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f64,
    /// Dropout after projections.
    pub hidden_dropout: f64,
    /// Dropout on attention probabilities.
    pub attention_dropout: f64,
}

/// `linear` applied at every position of `x` `[B, S, d_in]` as one `[B * S, d_in]` matrix
/// product. Burn's `Linear` keeps a `[B, S, d]` input batched unless folding the batch makes the
/// product squarer, so e.g. `[32, 68, 384] x [384, 384]` ran as 32 small products that each
/// re-pack the whole weight: half the speed on Flex (docs/benchmarks.md, "Linear layers").
/// Inside a [`crate::precision::with_bf16`] scope the product runs in bf16 where supported.
pub fn linear_positions(linear: &Linear, x: Tensor<3>) -> Tensor<3> {
    let [batch, len, width] = x.dims();
    let x = x.reshape([batch * len, width]);
    let out = if crate::precision::bf16_active(&x.device()) {
        crate::precision::linear_bf16(linear, x)
    } else {
        linear.forward(x)
    };
    let out_width = out.dims()[1];
    out.reshape([batch, len, out_width])
}

/// `LayerNorm(residual + dropout(dense(x)))` (HF `BertSelfOutput` / `BertOutput`).
#[derive(Module, Debug)]
pub struct ResidualOutput {
    /// Projection back to the residual width.
    pub dense: Linear,
    /// Post-residual LayerNorm.
    pub layer_norm: LayerNorm,
    /// Dropout before the residual sum.
    pub dropout: Dropout,
}

impl ResidualOutput {
    /// `d_input -> d_model` projection with LayerNorm over `d_model`.
    pub fn new(d_input: usize, d_model: usize, eps: f64, dropout: f64, device: &Device) -> Self {
        Self {
            dense: LinearConfig::new(d_input, d_model).init(device),
            layer_norm: LayerNormConfig::new(d_model).with_epsilon(eps).init(device),
            dropout: DropoutConfig::new(dropout).init(),
        }
    }

    /// Projects `x`, adds `residual` and normalises.
    pub fn forward(&self, x: Tensor<3>, residual: Tensor<3>) -> Tensor<3> {
        self.layer_norm
            .forward(dropout(&self.dropout, linear_positions(&self.dense, x)) + residual)
    }
}

/// Self-attention followed by its output block (HF `BertAttention`).
#[derive(Module, Debug)]
pub struct AttentionBlock {
    /// Query/key/value attention (HF `attention.self`).
    pub self_attn: Attention,
    /// Output projection + residual + LayerNorm (HF `attention.output`).
    pub output: ResidualOutput,
}

impl AttentionBlock {
    /// A self-attention block for `dims`.
    pub fn new(dims: &LayerDims, device: &Device) -> Self {
        Self {
            self_attn: Attention::new(
                dims.hidden,
                dims.hidden,
                dims.hidden,
                dims.heads,
                dims.attention_dropout,
                device,
            ),
            output: ResidualOutput::new(
                dims.hidden,
                dims.hidden,
                dims.layer_norm_eps,
                dims.hidden_dropout,
                device,
            ),
        }
    }

    /// Self-attention over `x` with `mask`.
    pub fn forward(&self, x: Tensor<3>, mask: &AttentionMask) -> Tensor<3> {
        let context = self.self_attn.forward(x.clone(), x.clone(), mask);
        self.output.forward(context, x)
    }

    /// Incremental self-attention for decoding: the new positions `x` `[B, n, hidden]` attend
    /// over `past` keys/values (the earlier positions, `None` at the start) followed by their own,
    /// under `mask` over those keys (`None`: all visible — one new position per step needs no
    /// causal mask). Returns the block output for `x` and the keys/values with `x` appended.
    ///
    /// `forward_cached(x, None, Some(mask)).0` equals [`AttentionBlock::forward`]`(x, mask)`.
    pub fn forward_cached(
        &self,
        x: Tensor<3>,
        past: Option<KeyValues>,
        mask: Option<&AttentionMask>,
    ) -> (Tensor<3>, KeyValues) {
        let new = self.self_attn.key_values(x.clone());
        let kv = match past {
            Some(past) => past.append(&new),
            None => new,
        };
        (self.forward_kv(x, &kv, mask), kv)
    }

    /// The block with precomputed keys/values: `x` `[B, n, hidden]` attends over `kv` under
    /// `mask`, then output projection, residual and LayerNorm.
    pub fn forward_kv(
        &self,
        x: Tensor<3>,
        kv: &KeyValues,
        mask: Option<&AttentionMask>,
    ) -> Tensor<3> {
        let context = self.self_attn.attend(x.clone(), kv, mask);
        self.output.forward(context, x)
    }
}

/// `GELU(dense(x))` (HF `BertIntermediate`).
#[derive(Module, Debug)]
pub struct Intermediate {
    /// Expansion to the feed-forward width.
    pub dense: Linear,
    /// Exact (erf) GELU.
    pub activation: Gelu,
}

impl Intermediate {
    /// `d_model -> d_ff`.
    pub fn new(d_model: usize, d_ff: usize, device: &Device) -> Self {
        Self {
            dense: LinearConfig::new(d_model, d_ff).init(device),
            activation: Gelu::new(),
        }
    }

    /// Forward pass.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        // `self.activation` is Burn's exact GELU; crate::activation::gelu computes the same.
        gelu(linear_positions(&self.dense, x))
    }
}

/// The position-wise feed-forward block: intermediate + output with residual.
#[derive(Module, Debug)]
pub struct FeedForward {
    /// `d_model -> d_ff` + GELU.
    pub intermediate: Intermediate,
    /// `d_ff -> d_model` + residual + LayerNorm.
    pub output: ResidualOutput,
}

impl FeedForward {
    /// A feed-forward block for `dims`.
    pub fn new(dims: &LayerDims, device: &Device) -> Self {
        Self {
            intermediate: Intermediate::new(dims.hidden, dims.intermediate, device),
            output: ResidualOutput::new(
                dims.intermediate,
                dims.hidden,
                dims.layer_norm_eps,
                dims.hidden_dropout,
                device,
            ),
        }
    }

    /// Forward pass.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        self.output.forward(self.intermediate.forward(x.clone()), x)
    }
}

/// One post-LN BERT layer (HF `BertLayer`): self-attention block then feed-forward block.
#[derive(Module, Debug)]
pub struct TransformerLayer {
    /// HF `attention`.
    pub attention: AttentionBlock,
    /// HF `intermediate` + `output`, flattened by the weight mapping.
    pub ffn: FeedForward,
}

impl TransformerLayer {
    /// A layer for `dims`.
    pub fn new(dims: &LayerDims, device: &Device) -> Self {
        Self {
            attention: AttentionBlock::new(dims, device),
            ffn: FeedForward::new(dims, device),
        }
    }

    /// Forward pass.
    pub fn forward(&self, x: Tensor<3>, mask: &AttentionMask) -> Tensor<3> {
        self.ffn.forward(self.attention.forward(x, mask))
    }
}
