//! Single-stream fusion (VisualBERT, Li et al. 2019): text embeddings and projected region
//! features are concatenated, normalised by ONE LayerNorm and encoded by one shared BERT encoder.
//!
//! HF `VisualBertModel` / `VisualBertForPreTraining` checkpoints load directly. An optional region
//! location embedding (4-, 5- or 7-d boxes, [`LocationEncoding`]) turns it into the UNITER /
//! VL-BERT style variant; that part is new (HF VisualBERT has none).
//!
//! ```no_run
//! use burn::tensor::{Device, Int, Tensor};
//! use tuwen_fusion::visual_bert::{VisualBertConfig, VisualBertInput};
//! let device = Device::default();
//! let model = VisualBertConfig::default().init(&device);
//! let ids = Tensor::<2, Int>::from_ints([[101, 1037, 3899, 102]], &device);
//! let regions = Tensor::<3>::zeros([1, 36, 512], &device);
//! let out = model.forward(VisualBertInput::new(ids, regions));
//! assert_eq!(out.last_hidden_state.dims(), [1, 4 + 36, 768]);
//! ```

use std::path::Path;

use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, Linear, LinearConfig};
use burn::tensor::{Device, Int, Tensor};
use serde::{Deserialize, Serialize};

use crate::bert::{BertConfig, BertEmbeddings, BertEncoder, Pooler};
use crate::heads::{MlmHead, PairHead};
use crate::input::ShapeCheck;
use crate::mask::HF_MASK_VALUE;
use crate::weights::{self, LoadError};
use crate::{AttentionMask, InputError};

/// Width of the box encoding added to region features.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LocationEncoding {
    /// No location input (original VisualBERT).
    #[default]
    None,
    /// `[x1, y1, x2, y2]` normalised by the original image size (LXMERT).
    Xyxy4,
    /// `[x1, y1, x2, y2, area]` (ViLBERT).
    XyxyArea5,
    /// `[x1, y1, x2, y2, w, h, w*h]` (UNITER).
    XyxyWhArea7,
}

impl LocationEncoding {
    /// Number of values per box (0 for `None`).
    pub fn dim(self) -> usize {
        match self {
            Self::None => 0,
            Self::Xyxy4 => 4,
            Self::XyxyArea5 => 5,
            Self::XyxyWhArea7 => 7,
        }
    }
}

/// VisualBERT hyper-parameters: a HF `VisualBertConfig` (BERT keys + the visual ones).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct VisualBertConfig {
    /// The BERT part.
    #[serde(flatten)]
    pub bert: BertConfig,
    /// Width of the region features fed to `visual_projection`.
    pub visual_embedding_dim: usize,
    /// HF `bypass_transformer` (text-only encoder + one joint layer); not supported, must be false.
    pub bypass_transformer: bool,
    /// tuwen extension: box encoding added to the region embeddings.
    pub visual_location: LocationEncoding,
}

impl Default for VisualBertConfig {
    fn default() -> Self {
        Self {
            bert: BertConfig::default(),
            visual_embedding_dim: 512,
            bypass_transformer: false,
            visual_location: LocationEncoding::None,
        }
    }
}

impl VisualBertConfig {
    /// Reads a HF `config.json`.
    pub fn from_json_file(path: impl AsRef<Path>) -> Result<Self, LoadError> {
        weights::read_config(path.as_ref(), Self::validate)
    }

    /// Checks the values a model can be built from.
    pub fn validate(&self) -> Result<(), String> {
        self.bert.validate()?;
        if self.bypass_transformer {
            return Err("bypass_transformer = true is not supported".into());
        }
        Ok(())
    }

    /// A randomly initialised model.
    ///
    /// # Panics
    /// If the config is invalid (see [`VisualBertConfig::validate`]).
    pub fn init(&self, device: &Device) -> VisualBertModel {
        if let Err(e) = self.validate() {
            panic!("invalid VisualBertConfig: {e}");
        }
        let bert = self.bert.init(device);
        let h = self.bert.hidden_size;
        VisualBertModel {
            embeddings: VisualBertEmbeddings {
                text: bert.embeddings,
                visual_token_type_embeddings: EmbeddingConfig::new(self.bert.type_vocab_size, h)
                    .init(device),
                visual_position_embeddings: EmbeddingConfig::new(
                    self.bert.max_position_embeddings,
                    h,
                )
                .init(device),
                visual_projection: LinearConfig::new(self.visual_embedding_dim, h).init(device),
                visual_location: (self.visual_location != LocationEncoding::None)
                    .then(|| LinearConfig::new(self.visual_location.dim(), h).init(device)),
            },
            encoder: bert.encoder,
            pooler: bert.pooler,
        }
    }

    /// A randomly initialised pretraining model (MLM + sentence-image heads).
    pub fn init_pretraining(&self, device: &Device) -> VisualBertForPreTraining {
        VisualBertForPreTraining {
            visual_bert: self.init(device),
            mlm: MlmHead::new(
                self.bert.hidden_size,
                self.bert.vocab_size,
                self.bert.layer_norm_eps,
                device,
            ),
            sentence_image: PairHead::new(self.bert.hidden_size, device),
        }
    }
}

/// Text + visual embeddings (HF `VisualBertEmbeddings`).
#[derive(Module, Debug)]
pub struct VisualBertEmbeddings {
    /// Word/position/token-type embeddings and the ONE LayerNorm shared with the visual part.
    pub text: BertEmbeddings,
    /// Token type of regions (HF default type id 1).
    pub visual_token_type_embeddings: Embedding,
    /// Position table for regions; all regions use position 0, as in HF without alignment.
    pub visual_position_embeddings: Embedding,
    /// Region feature projection `visual_embedding_dim -> hidden`.
    pub visual_projection: Linear,
    /// Optional box encoding `loc_dim -> hidden` (tuwen extension).
    pub visual_location: Option<Linear>,
}

/// Inputs of [`VisualBertModel::forward`]. Masks use the HF convention (1 = attend).
#[derive(Clone, Debug)]
pub struct VisualBertInput {
    /// `[B, T]` token ids.
    pub input_ids: Tensor<2, Int>,
    /// `[B, T]` segment ids (default zeros).
    pub token_type_ids: Tensor<2, Int>,
    /// `[B, T]` text padding mask (default ones).
    pub attention_mask: Tensor<2, Int>,
    /// `[B, V, visual_embedding_dim]` region features.
    pub visual_embeds: Tensor<3>,
    /// `[B, V]` region padding mask (default ones).
    pub visual_attention_mask: Tensor<2, Int>,
    /// `[B, V]` region token types (default ones, as HF).
    pub visual_token_type_ids: Tensor<2, Int>,
    /// `[B, V, loc_dim]` box encodings, required iff the config has a location encoding.
    pub visual_locations: Option<Tensor<3>>,
    /// A full `[B, T+V, T+V]` mask (e.g. the unified-VLP seq2seq mask) replacing the padding masks.
    pub mask: Option<AttentionMask>,
}

impl VisualBertInput {
    /// Inputs with HF defaults for everything but ids and region features.
    pub fn new(input_ids: Tensor<2, Int>, visual_embeds: Tensor<3>) -> Self {
        let [batch, regions, _] = visual_embeds.dims();
        let device = visual_embeds.device();
        let ones = Tensor::<2, Int>::ones([batch, regions], &device);
        Self {
            token_type_ids: input_ids.zeros_like(),
            attention_mask: input_ids.ones_like(),
            input_ids,
            visual_embeds,
            visual_attention_mask: ones.clone(),
            visual_token_type_ids: ones,
            visual_locations: None,
            mask: None,
        }
    }
}

/// Outputs of [`VisualBertModel::forward`], named as HF's.
#[derive(Clone, Debug)]
pub struct VisualBertOutput {
    /// `[B, T+V, hidden]`: text positions first, then regions.
    pub last_hidden_state: Tensor<3>,
    /// `[B, hidden]`: tanh pooler on the first token.
    pub pooler_output: Tensor<2>,
}

/// The single-stream VisualBERT encoder (HF `VisualBertModel`).
#[derive(Module, Debug)]
pub struct VisualBertModel {
    /// Text + visual embeddings.
    pub embeddings: VisualBertEmbeddings,
    /// The shared encoder.
    pub encoder: BertEncoder,
    /// `[CLS]` pooler.
    pub pooler: Pooler,
}

impl VisualBertModel {
    /// Checks that `input` fits this model: batch sizes, widths, mask shapes, sequence length,
    /// and box encodings present iff the model has a location encoding.
    pub fn check_input(&self, input: &VisualBertInput) -> Result<(), InputError> {
        let [batch, text] = input.input_ids.dims();
        let [vb, regions, width] = input.visual_embeds.dims();
        let emb = &self.embeddings;
        let want_width = emb.visual_projection.weight.dims()[0];
        let max_text = emb.text.position_embeddings.weight.dims()[0];
        let mut check = ShapeCheck::new("VisualBertModel");
        check.require(vb == batch, || {
            format!("visual_embeds batch {vb} != input_ids batch {batch}")
        });
        check.require(width == want_width, || {
            format!("visual_embeds width {width} != visual_embedding_dim {want_width}")
        });
        check.require(text <= max_text, || {
            format!("{text} text tokens exceed max_position_embeddings {max_text}")
        });
        check.dims("token_type_ids", input.token_type_ids.dims(), [batch, text]);
        check.dims("attention_mask", input.attention_mask.dims(), [batch, text]);
        check.dims(
            "visual_attention_mask",
            input.visual_attention_mask.dims(),
            [batch, regions],
        );
        check.dims(
            "visual_token_type_ids",
            input.visual_token_type_ids.dims(),
            [batch, regions],
        );
        match (&emb.visual_location, &input.visual_locations) {
            (Some(loc), Some(boxes)) => {
                check.dims(
                    "visual_locations",
                    boxes.dims(),
                    [batch, regions, loc.weight.dims()[0]],
                );
            }
            (None, None) => {}
            (Some(_), None) => check.require(false, || {
                "this model has a location encoding: visual_locations is required".into()
            }),
            (None, Some(_)) => check.require(false, || {
                "visual_locations given to a model without location encoding".into()
            }),
        }
        if let Some(mask) = &input.mask {
            let total = text + regions;
            let [mb, _, q, k] = mask.bias().dims();
            check.require(mb == batch && k == total && (q == 1 || q == total), || {
                format!("mask has shape [{mb}, _, {q}, {k}], expected [{batch}, _, {total} or 1, {total}]")
            });
        }
        check.finish()
    }

    /// Encodes text and regions; [`VisualBertModel::check_input`] errors are returned.
    pub fn try_forward(&self, input: VisualBertInput) -> Result<VisualBertOutput, InputError> {
        self.check_input(&input)?;
        Ok(self.forward_unchecked(input))
    }

    /// Encodes text and regions.
    ///
    /// # Panics
    /// With [`VisualBertModel::check_input`]'s message if the input does not fit the model; use
    /// [`VisualBertModel::try_forward`] to get the error instead.
    pub fn forward(&self, input: VisualBertInput) -> VisualBertOutput {
        if let Err(e) = self.check_input(&input) {
            panic!("{e}");
        }
        self.forward_unchecked(input)
    }

    fn forward_unchecked(&self, input: VisualBertInput) -> VisualBertOutput {
        let emb = &self.embeddings;
        let text = emb.text.sum(input.input_ids, input.token_type_ids);
        let mut visual = emb.visual_projection.forward(input.visual_embeds)
            + emb
                .visual_position_embeddings
                .forward(input.visual_token_type_ids.zeros_like())
            + emb
                .visual_token_type_embeddings
                .forward(input.visual_token_type_ids);
        if let (Some(loc), Some(boxes)) = (&emb.visual_location, input.visual_locations) {
            visual = visual + loc.forward(boxes);
        }
        let embedded = emb.text.normalize(Tensor::cat(vec![text, visual], 1));
        let mask = input.mask.unwrap_or_else(|| {
            AttentionMask::padding(
                Tensor::cat(vec![input.attention_mask, input.visual_attention_mask], 1),
                HF_MASK_VALUE,
            )
        });
        let hidden = self.encoder.forward(embedded, &mask);
        VisualBertOutput {
            pooler_output: self.pooler.forward(hidden.clone()),
            last_hidden_state: hidden,
        }
    }

    /// Loads a HF `VisualBertModel` checkpoint (strict).
    pub fn load_hf_safetensors(self, path: impl AsRef<Path>) -> Result<Self, LoadError> {
        weights::load_hf(self, path.as_ref(), &weights::VISUAL_BERT)
    }

    /// Initialises the text side from a HF BERT checkpoint, the way VisualBERT is trained: every
    /// BERT tensor is loaded strictly, the visual tensors stay new except that the visual
    /// token-type and position tables start as copies of the text ones (HF
    /// `special_visual_initialize`).
    pub fn init_from_bert(mut self, path: impl AsRef<Path>) -> Result<Self, LoadError> {
        let text = self.embeddings.text;
        let encoder = self.encoder;
        let pooler = self.pooler;
        let bert = crate::BertModel {
            embeddings: text,
            encoder,
            pooler,
        }
        .load_hf_safetensors(path)?;
        self.embeddings.visual_token_type_embeddings.weight =
            copy_param(&bert.embeddings.token_type_embeddings.weight);
        self.embeddings.visual_position_embeddings.weight =
            copy_param(&bert.embeddings.position_embeddings.weight);
        self.embeddings.text = bert.embeddings;
        self.encoder = bert.encoder;
        self.pooler = bert.pooler;
        Ok(self)
    }
}

/// A new parameter (new id) holding a copy of `param`'s values.
fn copy_param(param: &burn::module::Param<Tensor<2>>) -> burn::module::Param<Tensor<2>> {
    burn::module::Param::from_tensor(param.val().detach())
}

/// Outputs of [`VisualBertForPreTraining::forward`], named as HF's.
#[derive(Clone, Debug)]
pub struct VisualBertPreTrainingOutput {
    /// `[B, T+V, vocab]` MLM logits at every position.
    pub prediction_logits: Tensor<3>,
    /// `[B, 2]` sentence-image logits; index 0 = the caption matches the image (HF polarity).
    pub seq_relationship_logits: Tensor<2>,
    /// The encoder outputs.
    pub encoder: VisualBertOutput,
}

/// VisualBERT with its pretraining heads (HF `VisualBertForPreTraining`). The MLM decoder is tied
/// to `visual_bert.embeddings.text.word_embeddings`.
#[derive(Module, Debug)]
pub struct VisualBertForPreTraining {
    /// The encoder.
    pub visual_bert: VisualBertModel,
    /// Masked-language-model head (tied decoder).
    pub mlm: MlmHead,
    /// Sentence-image prediction head on the pooled output.
    pub sentence_image: PairHead,
}

impl VisualBertForPreTraining {
    /// Encodes and applies both heads.
    pub fn forward(&self, input: VisualBertInput) -> VisualBertPreTrainingOutput {
        let encoder = self.visual_bert.forward(input);
        let word_embeddings = self
            .visual_bert
            .embeddings
            .text
            .word_embeddings
            .weight
            .val();
        VisualBertPreTrainingOutput {
            prediction_logits: self
                .mlm
                .forward(encoder.last_hidden_state.clone(), word_embeddings),
            seq_relationship_logits: self.sentence_image.forward(encoder.pooler_output.clone()),
            encoder,
        }
    }

    /// Loads a HF `VisualBertForPreTraining` checkpoint (strict; the tied decoder is not stored).
    pub fn load_hf_safetensors(self, path: impl AsRef<Path>) -> Result<Self, LoadError> {
        weights::load_hf(self, path.as_ref(), &weights::VISUAL_BERT_PRETRAINING)
    }
}
