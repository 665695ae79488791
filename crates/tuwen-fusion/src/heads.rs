//! Pretraining heads shared by the BERT-family models.

use burn::module::{Module, Param};
use burn::nn::{Gelu, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::{Device, Tensor};

/// The masked-language-model head (HF `BertLMPredictionHead`): dense -> GELU -> LayerNorm ->
/// decoder TIED to the word-embedding matrix, plus its own output bias.
///
/// The head holds no decoder matrix: [`MlmHead::forward`] takes the embedding table of the
/// encoder, so the two are one parameter (gradients from both uses add up in it), not a copy.
#[derive(Module, Debug)]
pub struct MlmHead {
    /// `hidden -> hidden` transform (HF `transform.dense`).
    pub dense: Linear,
    /// GELU between dense and LayerNorm.
    pub activation: Gelu,
    /// HF `transform.LayerNorm`.
    pub layer_norm: LayerNorm,
    /// Output bias over the vocabulary (HF `predictions.bias`).
    pub bias: Param<Tensor<1>>,
}

impl MlmHead {
    /// A head for `hidden`-wide states over `vocab_size` tokens.
    pub fn new(hidden: usize, vocab_size: usize, eps: f64, device: &Device) -> Self {
        Self {
            dense: LinearConfig::new(hidden, hidden).init(device),
            activation: Gelu::new(),
            layer_norm: LayerNormConfig::new(hidden).with_epsilon(eps).init(device),
            bias: Param::from_tensor(Tensor::zeros([vocab_size], device)),
        }
    }

    /// Vocabulary logits `[.., vocab]` for hidden states `[.., hidden]` (any rank), using the
    /// tied `word_embeddings` `[vocab, hidden]`.
    pub fn forward<const D: usize>(
        &self,
        hidden: Tensor<D>,
        word_embeddings: Tensor<2>,
    ) -> Tensor<D> {
        let h = self
            .layer_norm
            .forward(self.activation.forward(self.dense.forward(hidden)));
        let dims = h.dims();
        let width = dims[D - 1];
        let rows = h.shape().num_elements() / width;
        let logits = h.reshape([rows, width]).matmul(word_embeddings.transpose())
            + self.bias.val().unsqueeze::<2>();
        let mut out_dims = dims;
        out_dims[D - 1] = logits.dims()[1];
        logits.reshape(out_dims)
    }
}

/// A binary classifier on a pooled vector (VisualBERT sentence-image, LXMERT matched).
#[derive(Module, Debug)]
pub struct PairHead {
    /// `pooled -> 2` logits.
    pub classifier: Linear,
}

impl PairHead {
    /// A head for `hidden`-wide pooled vectors.
    pub fn new(hidden: usize, device: &Device) -> Self {
        Self {
            classifier: LinearConfig::new(hidden, 2).init(device),
        }
    }

    /// Logits `[batch, 2]`.
    pub fn forward(&self, pooled: Tensor<2>) -> Tensor<2> {
        self.classifier.forward(pooled)
    }
}
