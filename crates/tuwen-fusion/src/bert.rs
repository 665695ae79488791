//! The BERT text encoder (Devlin et al., 2019) in HF `BertModel`'s arrangement: word + position +
//! token-type embeddings, post-LN Transformer layers, tanh pooler on `[CLS]`.
//!
//! ```no_run
//! use burn::tensor::{Device, Int, Tensor};
//! use tuwen_fusion::{AttentionMask, BertModel};
//! # fn main() -> Result<(), tuwen_fusion::LoadError> {
//! let device = Device::default();
//! let model = BertModel::from_pretrained("minilm/", &device)?; // config.json + model.safetensors
//! let ids = Tensor::<2, Int>::from_ints([[101, 1037, 3899, 102]], &device);
//! let types = ids.zeros_like();
//! let mask = AttentionMask::padding(ids.ones_like(), tuwen_fusion::mask::HF_MASK_VALUE);
//! let out = model.forward(ids, types, &mask);
//! assert_eq!(out.last_hidden_state.dims(), [1, 4, 384]);
//! # Ok(()) }
//! ```

use std::path::Path;

use crate::dropout::dropout;
use burn::module::Module;
use burn::nn::{
    Dropout, DropoutConfig, Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear,
    LinearConfig,
};
use burn::tensor::{Device, Int, Tensor};
use serde::{Deserialize, Serialize};

use crate::AttentionMask;
use crate::blocks::{LayerDims, TransformerLayer};
use crate::weights::{self, LoadError};

/// BERT hyper-parameters, read from a HF `config.json` (unknown keys are ignored).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BertConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Hidden width.
    pub hidden_size: usize,
    /// Number of Transformer layers.
    pub num_hidden_layers: usize,
    /// Attention heads per layer.
    pub num_attention_heads: usize,
    /// Feed-forward inner width.
    pub intermediate_size: usize,
    /// Activation of the feed-forward block; only `gelu` (exact erf form) is supported.
    pub hidden_act: String,
    /// Dropout after projections and embeddings.
    pub hidden_dropout_prob: f64,
    /// Dropout on attention probabilities.
    pub attention_probs_dropout_prob: f64,
    /// Size of the learned position table.
    pub max_position_embeddings: usize,
    /// Number of token types (segments).
    pub type_vocab_size: usize,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f64,
}

impl Default for BertConfig {
    /// bert-base-uncased.
    fn default() -> Self {
        Self {
            vocab_size: 30_522,
            hidden_size: 768,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            intermediate_size: 3_072,
            hidden_act: "gelu".into(),
            hidden_dropout_prob: 0.1,
            attention_probs_dropout_prob: 0.1,
            max_position_embeddings: 512,
            type_vocab_size: 2,
            layer_norm_eps: 1e-12,
        }
    }
}

impl BertConfig {
    /// Reads a HF `config.json`.
    pub fn from_json_file(path: impl AsRef<Path>) -> Result<Self, LoadError> {
        weights::read_config(path.as_ref(), Self::validate)
    }

    /// Checks the values a model can be built from.
    pub fn validate(&self) -> Result<(), String> {
        if self.hidden_act != "gelu" {
            return Err(format!(
                "hidden_act {:?} is not supported (only \"gelu\")",
                self.hidden_act
            ));
        }
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            return Err(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        Ok(())
    }

    /// Per-layer sizes.
    pub fn layer_dims(&self) -> LayerDims {
        LayerDims {
            hidden: self.hidden_size,
            heads: self.num_attention_heads,
            intermediate: self.intermediate_size,
            layer_norm_eps: self.layer_norm_eps,
            hidden_dropout: self.hidden_dropout_prob,
            attention_dropout: self.attention_probs_dropout_prob,
        }
    }

    /// Builds a randomly initialised model.
    ///
    /// # Panics
    /// If the config is invalid (see [`BertConfig::validate`]).
    pub fn init(&self, device: &Device) -> BertModel {
        if let Err(e) = self.validate() {
            panic!("invalid BertConfig: {e}");
        }
        let dims = self.layer_dims();
        BertModel {
            embeddings: BertEmbeddings::new(self, device),
            encoder: BertEncoder {
                layers: (0..self.num_hidden_layers)
                    .map(|_| TransformerLayer::new(&dims, device))
                    .collect(),
            },
            pooler: Pooler::new(self.hidden_size, self.hidden_size, device),
        }
    }
}

/// Word + position + token-type embeddings, LayerNorm, dropout (HF `BertEmbeddings`).
#[derive(Module, Debug)]
pub struct BertEmbeddings {
    /// Token embedding table (tied to the MLM decoder in pretraining heads).
    pub word_embeddings: Embedding,
    /// Learned absolute positions.
    pub position_embeddings: Embedding,
    /// Segment embeddings.
    pub token_type_embeddings: Embedding,
    /// LayerNorm over the sum.
    pub layer_norm: LayerNorm,
    /// Dropout after the LayerNorm.
    pub dropout: Dropout,
}

impl BertEmbeddings {
    /// Embeddings for `config`.
    pub fn new(config: &BertConfig, device: &Device) -> Self {
        let h = config.hidden_size;
        Self {
            word_embeddings: EmbeddingConfig::new(config.vocab_size, h).init(device),
            position_embeddings: EmbeddingConfig::new(config.max_position_embeddings, h)
                .init(device),
            token_type_embeddings: EmbeddingConfig::new(config.type_vocab_size, h).init(device),
            layer_norm: LayerNormConfig::new(h)
                .with_epsilon(config.layer_norm_eps)
                .init(device),
            dropout: DropoutConfig::new(config.hidden_dropout_prob).init(),
        }
    }

    /// The summed embeddings BEFORE LayerNorm (single-stream models concatenate visual
    /// embeddings here and normalise once).
    pub fn sum(&self, input_ids: Tensor<2, Int>, token_type_ids: Tensor<2, Int>) -> Tensor<3> {
        let [batch, len] = input_ids.dims();
        let device = input_ids.device();
        let positions = Tensor::<1, Int>::arange(0..len as i64, &device)
            .reshape([1, len])
            .expand([batch, len]);
        self.word_embeddings.forward(input_ids)
            + self.position_embeddings.forward(positions)
            + self.token_type_embeddings.forward(token_type_ids)
    }

    /// LayerNorm + dropout over summed embeddings.
    pub fn normalize(&self, summed: Tensor<3>) -> Tensor<3> {
        dropout(&self.dropout, self.layer_norm.forward(summed))
    }

    /// Text embeddings `[batch, len, hidden]`.
    pub fn forward(&self, input_ids: Tensor<2, Int>, token_type_ids: Tensor<2, Int>) -> Tensor<3> {
        self.normalize(self.sum(input_ids, token_type_ids))
    }
}

/// A stack of post-LN Transformer layers (HF `BertEncoder`).
#[derive(Module, Debug)]
pub struct BertEncoder {
    /// The layers, applied in order.
    pub layers: Vec<TransformerLayer>,
}

impl BertEncoder {
    /// Runs every layer.
    pub fn forward(&self, mut x: Tensor<3>, mask: &AttentionMask) -> Tensor<3> {
        for layer in &self.layers {
            x = layer.forward(x, mask);
        }
        x
    }
}

/// `tanh(dense(hidden[:, 0]))` (HF `BertPooler`).
#[derive(Module, Debug)]
pub struct Pooler {
    /// Projection of the first token.
    pub dense: Linear,
}

impl Pooler {
    /// `d_in -> d_out` pooler.
    pub fn new(d_in: usize, d_out: usize, device: &Device) -> Self {
        Self {
            dense: LinearConfig::new(d_in, d_out).init(device),
        }
    }

    /// Pools the first token of `hidden` `[B, S, d_in]` to `[B, d_out]`.
    pub fn forward(&self, hidden: Tensor<3>) -> Tensor<2> {
        let [batch, _, width] = hidden.dims();
        let first = hidden.narrow(1, 0, 1).reshape([batch, width]);
        self.dense.forward(first).tanh()
    }
}

/// Outputs of [`BertModel::forward`], named as HF's.
#[derive(Clone, Debug)]
pub struct BertOutput {
    /// `[batch, len, hidden]`.
    pub last_hidden_state: Tensor<3>,
    /// `[batch, hidden]`, tanh-pooled `[CLS]`.
    pub pooler_output: Tensor<2>,
}

/// The BERT encoder with pooler (HF `BertModel`).
#[derive(Module, Debug)]
pub struct BertModel {
    /// Input embeddings.
    pub embeddings: BertEmbeddings,
    /// Transformer layers.
    pub encoder: BertEncoder,
    /// `[CLS]` pooler.
    pub pooler: Pooler,
}

impl BertModel {
    /// Encodes `input_ids` `[B, S]` with segment ids and an attention mask.
    pub fn forward(
        &self,
        input_ids: Tensor<2, Int>,
        token_type_ids: Tensor<2, Int>,
        mask: &AttentionMask,
    ) -> BertOutput {
        let hidden = self
            .encoder
            .forward(self.embeddings.forward(input_ids, token_type_ids), mask);
        BertOutput {
            pooler_output: self.pooler.forward(hidden.clone()),
            last_hidden_state: hidden,
        }
    }

    /// Loads HF `BertModel` weights (safetensors, with or without a `bert.` prefix) into this
    /// model. Every missing, unused or mis-shaped tensor is an error.
    pub fn load_hf_safetensors(self, path: impl AsRef<Path>) -> Result<Self, LoadError> {
        weights::load_hf(self, path.as_ref(), &weights::BERT)
    }

    /// Builds a model from a directory with HF `config.json` and `model.safetensors`.
    pub fn from_pretrained(dir: impl AsRef<Path>, device: &Device) -> Result<Self, LoadError> {
        let dir = dir.as_ref();
        let config = BertConfig::from_json_file(dir.join("config.json"))?;
        config
            .init(device)
            .load_hf_safetensors(dir.join("model.safetensors"))
    }
}
