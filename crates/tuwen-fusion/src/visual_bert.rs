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
use burn::tensor::{Device, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::attention::KeyValues;
use crate::bert::{BertConfig, BertEmbeddings, BertEncoder, Pooler};
use crate::generate::{Generated, GenerationConfig, StepModel, generate};
use crate::heads::{MlmHead, PairHead};
use crate::input::ShapeCheck;
use crate::mask::{HF_MASK_VALUE, UnifiedMode};
use crate::rows::{check_step, host_log_softmax, index};
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

impl VisualBertEmbeddings {
    /// The summed region embeddings BEFORE the shared LayerNorm: projected features + position 0
    /// + token type (+ box encoding when the model has one and `visual_locations` is given).
    pub fn visual_sum(
        &self,
        visual_embeds: Tensor<3>,
        visual_token_type_ids: Tensor<2, Int>,
        visual_locations: Option<Tensor<3>>,
    ) -> Tensor<3> {
        let mut visual = crate::blocks::linear_positions(&self.visual_projection, visual_embeds)
            + self
                .visual_position_embeddings
                .forward(visual_token_type_ids.zeros_like())
            + self
                .visual_token_type_embeddings
                .forward(visual_token_type_ids);
        if let (Some(loc), Some(boxes)) = (&self.visual_location, visual_locations) {
            visual = visual + loc.forward(boxes);
        }
        visual
    }
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
        let visual = emb.visual_sum(
            input.visual_embeds,
            input.visual_token_type_ids,
            input.visual_locations,
        );
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

/// The regions a unified-VLP caption is written for: the visual half of a [`VisualBertInput`].
#[derive(Clone, Debug)]
pub struct CaptionRegions {
    /// `[B, V, visual_embedding_dim]` region features.
    pub visual_embeds: Tensor<3>,
    /// `[B, V]` region padding mask (1 = real region).
    pub visual_attention_mask: Tensor<2, Int>,
    /// `[B, V]` region token types (HF default ones).
    pub visual_token_type_ids: Tensor<2, Int>,
    /// `[B, V, loc_dim]` box encodings, required iff the model has a location encoding.
    pub visual_locations: Option<Tensor<3>>,
}

impl CaptionRegions {
    /// All-real regions with HF default token types and no boxes.
    pub fn new(visual_embeds: Tensor<3>) -> Self {
        let [batch, regions, _] = visual_embeds.dims();
        let ones = Tensor::<2, Int>::ones([batch, regions], &visual_embeds.device());
        Self {
            visual_embeds,
            visual_attention_mask: ones.clone(),
            visual_token_type_ids: ones,
            visual_locations: None,
        }
    }

    /// The regions of `input` (its text is ignored).
    pub fn from_input(input: &VisualBertInput) -> Self {
        Self {
            visual_embeds: input.visual_embeds.clone(),
            visual_attention_mask: input.visual_attention_mask.clone(),
            visual_token_type_ids: input.visual_token_type_ids.clone(),
            visual_locations: input.visual_locations.clone(),
        }
    }

    fn batch(&self) -> usize {
        self.visual_embeds.dims()[0]
    }

    /// Rows `rows` of every tensor.
    fn select(&self, rows: Tensor<1, Int>) -> Self {
        Self {
            visual_embeds: self.visual_embeds.clone().select(0, rows.clone()),
            visual_attention_mask: self.visual_attention_mask.clone().select(0, rows.clone()),
            visual_token_type_ids: self.visual_token_type_ids.clone().select(0, rows.clone()),
            visual_locations: self.visual_locations.clone().map(|l| l.select(0, rows)),
        }
    }
}

impl VisualBertForPreTraining {
    /// A [`StepModel`] writing captions for `regions` as the unified-VLP captioner was trained:
    /// the input is `[caption | regions]` under [`AttentionMask::unified`] with
    /// [`UnifiedMode::Seq2Seq`], caption token `i` (token type 0, text position `i`) predicts
    /// token `i + 1` through the tied MLM head. Padding regions are masked.
    ///
    /// With `use_cache`, the regions — which never attend to the caption under that mask — go
    /// through the encoder once and every layer's region keys/values are kept; each step embeds
    /// only the new token (word + position + token type 0, LayerNorm, as
    /// [`BertEmbeddings`] does for text) and attends over the cached caption keys/values and the
    /// region ones. Without it, each step runs the whole model on `[prefix | regions]` (the
    /// reference the cache is tested against).
    ///
    /// Errors are [`VisualBertModel::check_input`]'s for these regions.
    pub fn caption_stepper(
        &self,
        regions: CaptionRegions,
        use_cache: bool,
    ) -> Result<UnifiedCaptionStepper<'_>, InputError> {
        let batch = regions.batch();
        let device = regions.visual_embeds.device();
        let probe = VisualBertInput {
            input_ids: Tensor::zeros([batch, 1], &device),
            token_type_ids: Tensor::zeros([batch, 1], &device),
            attention_mask: Tensor::ones([batch, 1], &device),
            visual_embeds: regions.visual_embeds.clone(),
            visual_attention_mask: regions.visual_attention_mask.clone(),
            visual_token_type_ids: regions.visual_token_type_ids.clone(),
            visual_locations: regions.visual_locations.clone(),
            mask: None,
        };
        self.visual_bert.check_input(&probe)?;
        let cache = use_cache.then(|| {
            let emb = &self.visual_bert.embeddings;
            let mut hidden = emb.text.normalize(emb.visual_sum(
                regions.visual_embeds.clone(),
                regions.visual_token_type_ids.clone(),
                regions.visual_locations.clone(),
            ));
            let padding =
                AttentionMask::padding(regions.visual_attention_mask.clone(), HF_MASK_VALUE);
            let layers = &self.visual_bert.encoder.layers;
            let mut region_kv = Vec::with_capacity(layers.len());
            for (l, layer) in layers.iter().enumerate() {
                let kv = layer.attention.self_attn.key_values(hidden.clone());
                if l + 1 < layers.len() {
                    hidden =
                        layer
                            .ffn
                            .forward(layer.attention.forward_kv(hidden, &kv, Some(&padding)));
                }
                region_kv.push(kv);
            }
            UnifiedCache {
                caption_kv: vec![None; layers.len()],
                selected: (
                    (0..batch).collect(),
                    region_kv.clone(),
                    regions.visual_attention_mask.clone(),
                ),
                region_kv,
            }
        });
        Ok(UnifiedCaptionStepper {
            model: self,
            regions,
            items: (0..batch).collect(),
            prefixes: vec![Vec::new(); batch],
            cache,
        })
    }

    /// Captions for `regions` (greedy or beam search per `config`, with the KV cache):
    /// [`crate::generate::generate`] over [`VisualBertForPreTraining::caption_stepper`].
    ///
    /// # Panics
    /// As [`crate::generate::generate`], and if `config.max_length - 1` exceeds the text
    /// positions.
    pub fn generate_captions(
        &self,
        regions: CaptionRegions,
        config: &GenerationConfig,
    ) -> Result<Vec<Generated>, InputError> {
        let positions = self.text_positions();
        assert!(
            config.max_length <= positions + 1,
            "max_length {} needs {} text positions, the model has {positions}",
            config.max_length,
            config.max_length - 1
        );
        let batch = regions.batch();
        let mut stepper = self.caption_stepper(regions, true)?;
        Ok(generate(&mut stepper, batch, config))
    }

    fn text_positions(&self) -> usize {
        self.visual_bert
            .embeddings
            .text
            .position_embeddings
            .weight
            .dims()[0]
    }
}

/// Cached region keys/values of the unified captioner.
struct UnifiedCache {
    /// Per layer, the caption's keys/values `[rows, heads, len, head_dim]`.
    caption_kv: Vec<Option<KeyValues>>,
    /// Per layer, the regions' keys/values `[B, heads, V, head_dim]`.
    region_kv: Vec<KeyValues>,
    /// Batch items of the rows, with their region keys/values and padding mask.
    selected: (Vec<usize>, Vec<KeyValues>, Tensor<2, Int>),
}

/// [`StepModel`] over a [`VisualBertForPreTraining`] and fixed regions; see
/// [`VisualBertForPreTraining::caption_stepper`].
pub struct UnifiedCaptionStepper<'a> {
    model: &'a VisualBertForPreTraining,
    regions: CaptionRegions,
    /// Batch item of each row.
    items: Vec<usize>,
    /// Caption so far of each row.
    prefixes: Vec<Vec<i64>>,
    /// `None`: recompute the whole prefix each step.
    cache: Option<UnifiedCache>,
}

impl StepModel for UnifiedCaptionStepper<'_> {
    fn rows(&self) -> usize {
        self.items.len()
    }

    fn vocab(&self) -> usize {
        self.model.mlm.bias.dims()[0]
    }

    fn step(&mut self, tokens: &[i64], parents: &[usize]) -> Vec<f32> {
        let device = self.regions.visual_embeds.device();
        let n = tokens.len();
        let reorder = check_step(tokens, parents, self.items.len());
        self.items = parents.iter().map(|&p| self.items[p]).collect();
        self.prefixes = parents
            .iter()
            .zip(tokens)
            .map(|(&p, &t)| {
                let mut prefix = self.prefixes[p].clone();
                prefix.push(t);
                prefix
            })
            .collect();
        let len = self.prefixes.first().map_or(0, Vec::len);
        let positions = self.model.text_positions();
        assert!(
            len <= positions,
            "caption position {} is beyond the model's {positions} text positions",
            len - 1
        );
        if n == 0 {
            return Vec::new();
        }
        let model = self.model;
        let words = model
            .visual_bert
            .embeddings
            .text
            .word_embeddings
            .weight
            .val();
        let hidden = match &mut self.cache {
            Some(cache) => {
                if cache.selected.0 != self.items {
                    let rows = index(&self.items, &device);
                    cache.selected = (
                        self.items.clone(),
                        cache
                            .region_kv
                            .iter()
                            .map(|kv| kv.select(rows.clone()))
                            .collect(),
                        self.regions.visual_attention_mask.clone().select(0, rows),
                    );
                }
                let (_, region_kv, region_mask) = &cache.selected;
                let text = &model.visual_bert.embeddings.text;
                let ids =
                    Tensor::<2, Int>::from_data(TensorData::new(tokens.to_vec(), [n, 1]), &device);
                let position = Tensor::<2, Int>::full([n, 1], (len - 1) as i64, &device);
                let mut x = text.normalize(
                    text.word_embeddings.forward(ids.clone())
                        + text.position_embeddings.forward(position)
                        + text.token_type_embeddings.forward(ids.zeros_like()),
                );
                // Keys are [caption | regions], the order of the full model's input.
                let mask = AttentionMask::padding(
                    Tensor::cat(
                        vec![Tensor::ones([n, len], &device), region_mask.clone()],
                        1,
                    ),
                    HF_MASK_VALUE,
                );
                let parents = reorder.then(|| index(parents, &device));
                for (l, layer) in model.visual_bert.encoder.layers.iter().enumerate() {
                    let new = layer.attention.self_attn.key_values(x.clone());
                    let caption = match cache.caption_kv[l].take() {
                        Some(past) => match &parents {
                            Some(rows) => past.select(rows.clone()),
                            None => past,
                        }
                        .append(&new),
                        None => new,
                    };
                    let keys = caption.clone().append(&region_kv[l]);
                    x = layer
                        .ffn
                        .forward(layer.attention.forward_kv(x, &keys, Some(&mask)));
                    cache.caption_kv[l] = Some(caption);
                }
                x
            }
            None => {
                let flat: Vec<i64> = self.prefixes.iter().flatten().copied().collect();
                let ids = Tensor::<2, Int>::from_data(TensorData::new(flat, [n, len]), &device);
                let regions = self.regions.select(index(&self.items, &device));
                let text_mask = Tensor::<2, Int>::ones([n, len], &device);
                let mask = AttentionMask::unified(
                    text_mask.clone(),
                    regions.visual_attention_mask.clone(),
                    UnifiedMode::Seq2Seq,
                    HF_MASK_VALUE,
                );
                let input = VisualBertInput {
                    token_type_ids: ids.zeros_like(),
                    input_ids: ids,
                    attention_mask: text_mask,
                    visual_embeds: regions.visual_embeds,
                    visual_attention_mask: regions.visual_attention_mask,
                    visual_token_type_ids: regions.visual_token_type_ids,
                    visual_locations: regions.visual_locations,
                    mask: Some(mask),
                };
                model
                    .visual_bert
                    .forward(input)
                    .last_hidden_state
                    .narrow(1, len - 1, 1)
            }
        };
        let logits = model.mlm.forward(hidden, words);
        let vocab = logits.dims()[2];
        host_log_softmax(logits.reshape([n, vocab]))
    }
}
