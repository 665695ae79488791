//! Cross-modal attention: one stream's queries over the other stream's keys and values, then a
//! residual output block on the querying stream. ViLBERT's co-attention uses two of these (one per
//! direction, own weights); LXMERT uses ONE in both directions.

use burn::module::Module;
use burn::tensor::{Device, Tensor};

use crate::attention::KeyValues;
use crate::blocks::ResidualOutput;
use crate::{Attention, AttentionMask};

/// Sizes of a cross-attention block.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CrossDims {
    /// Width of the querying stream (and of the block's output).
    pub query_width: usize,
    /// Width of the attended stream.
    pub context_width: usize,
    /// Width of the attention itself (ViLBERT `bi_hidden_size`).
    pub attention_width: usize,
    /// Attention heads.
    pub heads: usize,
    /// Dropout on attention probabilities.
    pub attention_dropout: f64,
    /// Dropout before the residual sum.
    pub hidden_dropout: f64,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f64,
}

/// `LayerNorm(x + dense(attention(x -> context)))`.
#[derive(Module, Debug)]
pub struct CrossAttentionBlock {
    /// Queries from `x`, keys/values from the context stream.
    pub attention: Attention,
    /// Projection back to the querying stream's width, residual, LayerNorm.
    pub output: ResidualOutput,
}

impl CrossAttentionBlock {
    /// A block for `dims`.
    pub fn new(dims: &CrossDims, device: &Device) -> Self {
        Self {
            attention: Attention::new(
                dims.query_width,
                dims.context_width,
                dims.attention_width,
                dims.heads,
                dims.attention_dropout,
                device,
            ),
            output: ResidualOutput::new(
                dims.attention_width,
                dims.query_width,
                dims.layer_norm_eps,
                dims.hidden_dropout,
                device,
            ),
        }
    }

    /// `x` `[B, Sq, query_width]` attends over `context` `[B, Sk, context_width]` under
    /// `context_mask` (the context stream's padding).
    pub fn forward(
        &self,
        x: Tensor<3>,
        context: Tensor<3>,
        context_mask: &AttentionMask,
    ) -> Tensor<3> {
        let attended = self.attention.forward(x.clone(), context, context_mask);
        self.output.forward(attended, x)
    }

    /// [`CrossAttentionBlock::forward`] over the context's precomputed keys/values
    /// ([`Attention::key_values`] of the context; a decoder computes them once per caption).
    pub fn forward_kv(
        &self,
        x: Tensor<3>,
        context_kv: &KeyValues,
        context_mask: &AttentionMask,
    ) -> Tensor<3> {
        let attended = self
            .attention
            .attend(x.clone(), context_kv, Some(context_mask));
        self.output.forward(attended, x)
    }
}
