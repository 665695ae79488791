//! Cross-modality encoder (LXMERT, Tan & Bansal 2019), loading HF `LxmertModel` and
//! `LxmertForPreTraining` checkpoints.
//!
//! Language layers (BERT layers on text), relational layers (BERT layers on regions), then
//! cross-modality layers. Each cross layer runs ONE cross-attention module in both directions
//! (language over vision, vision over language, same weights), then per-modality self-attention
//! and per-modality feed-forward blocks. The cross-attention block is shared with ViLBERT
//! ([`crate::cross`]).
//!
//! ```no_run
//! use burn::tensor::{Device, Int, Tensor};
//! use tuwen_fusion::lxmert::{LxmertConfig, LxmertInput};
//! let device = Device::default();
//! let model = LxmertConfig::default().init(&device);
//! let ids = Tensor::<2, Int>::from_ints([[101, 1037, 3899, 102]], &device);
//! let feats = Tensor::<3>::zeros([1, 36, 2048], &device);
//! let boxes = Tensor::<3>::zeros([1, 36, 4], &device); // [x1, y1, x2, y2] / image size
//! let out = model.forward(LxmertInput::new(ids, feats, boxes));
//! assert_eq!(out.pooled_output.dims(), [1, 768]);
//! ```

use std::path::Path;

use crate::dropout::dropout;
use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig, Gelu, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::{Device, Int, Tensor};
use serde::{Deserialize, Serialize};

use crate::bert::{BertConfig, BertEmbeddings, Pooler};
use crate::blocks::{AttentionBlock, FeedForward, LayerDims, TransformerLayer};
use crate::cross::{CrossAttentionBlock, CrossDims};
use crate::heads::{MlmHead, PairHead};
use crate::input::ShapeCheck;
use crate::mask::HF_MASK_VALUE;
use crate::weights::{self, LoadError};
use crate::{AttentionMask, InputError};

/// LXMERT hides every LayerNorm epsilon at this value, whatever the config says.
const EPS: f64 = 1e-12;

/// LXMERT hyper-parameters, read from a HF `config.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LxmertConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Width of both streams.
    pub hidden_size: usize,
    /// Attention heads.
    pub num_attention_heads: usize,
    /// Answers of the QA head.
    pub num_qa_labels: usize,
    /// Object classes of the visual object head.
    pub num_object_labels: usize,
    /// Attribute classes of the visual object head.
    pub num_attr_labels: usize,
    /// Feed-forward width.
    pub intermediate_size: usize,
    /// Activation; only `gelu`.
    pub hidden_act: String,
    /// Dropout after projections.
    pub hidden_dropout_prob: f64,
    /// Attention dropout.
    pub attention_probs_dropout_prob: f64,
    /// Text positions.
    pub max_position_embeddings: usize,
    /// Text segments.
    pub type_vocab_size: usize,
    /// Language layers.
    pub l_layers: usize,
    /// Cross-modality layers.
    pub x_layers: usize,
    /// Relational (vision) layers.
    pub r_layers: usize,
    /// Region feature width.
    pub visual_feat_dim: usize,
    /// Box encoding width (4: normalised `x1, y1, x2, y2`).
    pub visual_pos_dim: usize,
    /// Pretraining: masked-object prediction head present.
    pub task_obj_predict: bool,
    /// Pretraining: QA head present.
    pub task_qa: bool,
    /// Object-class decoder in the object head.
    pub visual_obj_loss: bool,
    /// Attribute decoder in the object head.
    pub visual_attr_loss: bool,
    /// Feature-regression decoder in the object head.
    pub visual_feat_loss: bool,
}

impl Default for LxmertConfig {
    /// The published LXMERT configuration.
    fn default() -> Self {
        Self {
            vocab_size: 30_522,
            hidden_size: 768,
            num_attention_heads: 12,
            num_qa_labels: 9_500,
            num_object_labels: 1_600,
            num_attr_labels: 400,
            intermediate_size: 3_072,
            hidden_act: "gelu".into(),
            hidden_dropout_prob: 0.1,
            attention_probs_dropout_prob: 0.1,
            max_position_embeddings: 512,
            type_vocab_size: 2,
            l_layers: 9,
            x_layers: 5,
            r_layers: 5,
            visual_feat_dim: 2_048,
            visual_pos_dim: 4,
            task_obj_predict: true,
            task_qa: true,
            visual_obj_loss: true,
            visual_attr_loss: true,
            visual_feat_loss: true,
        }
    }
}

impl LxmertConfig {
    /// Reads a HF `config.json`.
    pub fn from_json_file(path: impl AsRef<Path>) -> Result<Self, LoadError> {
        weights::read_config(path.as_ref(), Self::validate)
    }

    /// Checks the values a model can be built from.
    pub fn validate(&self) -> Result<(), String> {
        self.text_config().validate()?;
        if self.x_layers == 0 {
            return Err("x_layers must be at least 1".into());
        }
        Ok(())
    }

    fn text_config(&self) -> BertConfig {
        BertConfig {
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            num_hidden_layers: self.l_layers,
            num_attention_heads: self.num_attention_heads,
            intermediate_size: self.intermediate_size,
            hidden_act: self.hidden_act.clone(),
            hidden_dropout_prob: self.hidden_dropout_prob,
            attention_probs_dropout_prob: self.attention_probs_dropout_prob,
            max_position_embeddings: self.max_position_embeddings,
            type_vocab_size: self.type_vocab_size,
            layer_norm_eps: EPS,
        }
    }

    /// A randomly initialised model.
    ///
    /// # Panics
    /// If the config is invalid (see [`LxmertConfig::validate`]).
    pub fn init(&self, device: &Device) -> LxmertModel {
        if let Err(e) = self.validate() {
            panic!("invalid LxmertConfig: {e}");
        }
        let text = self.text_config();
        let dims = text.layer_dims();
        let layers = |n: usize| {
            (0..n)
                .map(|_| TransformerLayer::new(&dims, device))
                .collect()
        };
        LxmertModel {
            embeddings: BertEmbeddings::new(&text, device),
            encoder: LxmertEncoder {
                visn_fc: VisualFeatureEncoder::new(self, device),
                layers: layers(self.l_layers),
                r_layers: layers(self.r_layers),
                x_layers: (0..self.x_layers)
                    .map(|_| CrossModalityLayer::new(&dims, device))
                    .collect(),
            },
            pooler: Pooler::new(self.hidden_size, self.hidden_size, device),
        }
    }

    /// A randomly initialised pretraining model with the heads the config enables.
    pub fn init_pretraining(&self, device: &Device) -> LxmertForPreTraining {
        let h = self.hidden_size;
        LxmertForPreTraining {
            lxmert: self.init(device),
            mlm: MlmHead::new(h, self.vocab_size, EPS, device),
            matched: PairHead::new(h, device),
            obj_predict_head: self.task_obj_predict.then(|| ObjPredictHead {
                transform: Transform::new(h, device),
                obj: self
                    .visual_obj_loss
                    .then(|| LinearConfig::new(h, self.num_object_labels).init(device)),
                attr: self
                    .visual_attr_loss
                    .then(|| LinearConfig::new(h, self.num_attr_labels).init(device)),
                feat: self
                    .visual_feat_loss
                    .then(|| LinearConfig::new(h, self.visual_feat_dim).init(device)),
            }),
            answer_head: self
                .task_qa
                .then(|| AnswerHead::new(h, self.num_qa_labels, device)),
        }
    }
}

/// `(LN(Linear(features)) + LN(Linear(boxes))) / 2` -> dropout (HF `LxmertVisualFeatureEncoder`).
#[derive(Module, Debug)]
pub struct VisualFeatureEncoder {
    /// Feature projection.
    pub visn_fc: Linear,
    /// Its LayerNorm.
    pub visn_layer_norm: LayerNorm,
    /// Box projection.
    pub box_fc: Linear,
    /// Its LayerNorm.
    pub box_layer_norm: LayerNorm,
    /// Dropout on the average.
    pub dropout: Dropout,
}

impl VisualFeatureEncoder {
    fn new(config: &LxmertConfig, device: &Device) -> Self {
        let h = config.hidden_size;
        let ln = || LayerNormConfig::new(h).with_epsilon(EPS).init(device);
        Self {
            visn_fc: LinearConfig::new(config.visual_feat_dim, h).init(device),
            visn_layer_norm: ln(),
            box_fc: LinearConfig::new(config.visual_pos_dim, h).init(device),
            box_layer_norm: ln(),
            dropout: DropoutConfig::new(config.hidden_dropout_prob).init(),
        }
    }

    /// Region embeddings `[B, V, hidden]`.
    pub fn forward(&self, features: Tensor<3>, boxes: Tensor<3>) -> Tensor<3> {
        let x = self.visn_layer_norm.forward(self.visn_fc.forward(features));
        let y = self.box_layer_norm.forward(self.box_fc.forward(boxes));
        dropout(&self.dropout, (x + y).div_scalar(2.0))
    }
}

/// One cross-modality layer (HF `LxmertXLayer`).
#[derive(Module, Debug)]
pub struct CrossModalityLayer {
    /// The ONE cross-attention block, used in both directions (HF `visual_attention`).
    pub cross: CrossAttentionBlock,
    /// Language self-attention.
    pub lang_self_att: AttentionBlock,
    /// Vision self-attention.
    pub visn_self_att: AttentionBlock,
    /// Language feed-forward (HF `lang_inter` + `lang_output`).
    pub lang_ffn: FeedForward,
    /// Vision feed-forward (HF `visn_inter` + `visn_output`).
    pub visn_ffn: FeedForward,
}

impl CrossModalityLayer {
    fn new(dims: &LayerDims, device: &Device) -> Self {
        let cross = CrossDims {
            query_width: dims.hidden,
            context_width: dims.hidden,
            attention_width: dims.hidden,
            heads: dims.heads,
            attention_dropout: dims.attention_dropout,
            hidden_dropout: dims.hidden_dropout,
            layer_norm_eps: EPS,
        };
        Self {
            cross: CrossAttentionBlock::new(&cross, device),
            lang_self_att: AttentionBlock::new(dims, device),
            visn_self_att: AttentionBlock::new(dims, device),
            lang_ffn: FeedForward::new(dims, device),
            visn_ffn: FeedForward::new(dims, device),
        }
    }

    /// Returns `(language, vision)`.
    pub fn forward(
        &self,
        lang: Tensor<3>,
        lang_mask: &AttentionMask,
        visn: Tensor<3>,
        visn_mask: &AttentionMask,
    ) -> (Tensor<3>, Tensor<3>) {
        let lang_att = self.cross.forward(lang.clone(), visn.clone(), visn_mask);
        let visn_att = self.cross.forward(visn, lang, lang_mask);
        let lang_att = self.lang_self_att.forward(lang_att, lang_mask);
        let visn_att = self.visn_self_att.forward(visn_att, visn_mask);
        (
            self.lang_ffn.forward(lang_att),
            self.visn_ffn.forward(visn_att),
        )
    }
}

/// Visual feature encoder, language, relational and cross-modality layers (HF `LxmertEncoder`).
#[derive(Module, Debug)]
pub struct LxmertEncoder {
    /// Region embedding.
    pub visn_fc: VisualFeatureEncoder,
    /// Language layers (HF `layer`, so BERT weights load into them).
    pub layers: Vec<TransformerLayer>,
    /// Relational (vision) layers.
    pub r_layers: Vec<TransformerLayer>,
    /// Cross-modality layers.
    pub x_layers: Vec<CrossModalityLayer>,
}

/// Inputs of [`LxmertModel::forward`], named as HF's. Masks: 1 = attend.
#[derive(Clone, Debug)]
pub struct LxmertInput {
    /// `[B, T]` token ids.
    pub input_ids: Tensor<2, Int>,
    /// `[B, V, visual_feat_dim]` region features.
    pub visual_feats: Tensor<3>,
    /// `[B, V, visual_pos_dim]` normalised boxes.
    pub visual_pos: Tensor<3>,
    /// `[B, T]` segment ids (default zeros).
    pub token_type_ids: Tensor<2, Int>,
    /// `[B, T]` text padding mask (default ones).
    pub attention_mask: Tensor<2, Int>,
    /// `[B, V]` region padding mask (default ones).
    pub visual_attention_mask: Tensor<2, Int>,
}

impl LxmertInput {
    /// Inputs with HF defaults for the optional arguments.
    pub fn new(input_ids: Tensor<2, Int>, visual_feats: Tensor<3>, visual_pos: Tensor<3>) -> Self {
        let [batch, regions, _] = visual_feats.dims();
        Self {
            token_type_ids: input_ids.zeros_like(),
            attention_mask: input_ids.ones_like(),
            visual_attention_mask: Tensor::ones([batch, regions], &visual_feats.device()),
            input_ids,
            visual_feats,
            visual_pos,
        }
    }
}

/// Outputs of [`LxmertModel::forward`], named as HF's.
#[derive(Clone, Debug)]
pub struct LxmertOutput {
    /// `[B, T, hidden]` after the last cross-modality layer.
    pub language_output: Tensor<3>,
    /// `[B, V, hidden]` after the last cross-modality layer.
    pub vision_output: Tensor<3>,
    /// `[B, hidden]`, tanh pooler on the first language token.
    pub pooled_output: Tensor<2>,
}

/// The LXMERT encoder (HF `LxmertModel`).
#[derive(Module, Debug)]
pub struct LxmertModel {
    /// Text embeddings.
    pub embeddings: BertEmbeddings,
    /// All layers.
    pub encoder: LxmertEncoder,
    /// Pooler on the language stream.
    pub pooler: Pooler,
}

impl LxmertModel {
    /// Checks shapes against the model.
    pub fn check_input(&self, input: &LxmertInput) -> Result<(), InputError> {
        let [batch, text] = input.input_ids.dims();
        let [fb, regions, width] = input.visual_feats.dims();
        let want_width = self.encoder.visn_fc.visn_fc.weight.dims()[0];
        let pos_width = self.encoder.visn_fc.box_fc.weight.dims()[0];
        let max_text = self.embeddings.position_embeddings.weight.dims()[0];
        let mut check = ShapeCheck::new("LxmertModel");
        check.require(fb == batch, || {
            format!("visual_feats batch {fb} != input_ids batch {batch}")
        });
        check.require(width == want_width, || {
            format!("visual_feats width {width} != visual_feat_dim {want_width}")
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
            "visual_pos",
            input.visual_pos.dims(),
            [batch, regions, pos_width],
        );
        check.finish()
    }

    /// Encodes; shape problems are returned as errors.
    pub fn try_forward(&self, input: LxmertInput) -> Result<LxmertOutput, InputError> {
        self.check_input(&input)?;
        Ok(self.forward_unchecked(input))
    }

    /// Encodes.
    ///
    /// # Panics
    /// With [`LxmertModel::check_input`]'s message if the input does not fit the model.
    pub fn forward(&self, input: LxmertInput) -> LxmertOutput {
        if let Err(e) = self.check_input(&input) {
            panic!("{e}");
        }
        self.forward_unchecked(input)
    }

    fn forward_unchecked(&self, input: LxmertInput) -> LxmertOutput {
        let lang_mask = AttentionMask::padding(input.attention_mask, HF_MASK_VALUE);
        let visn_mask = AttentionMask::padding(input.visual_attention_mask, HF_MASK_VALUE);
        let enc = &self.encoder;
        let mut lang = self
            .embeddings
            .forward(input.input_ids, input.token_type_ids);
        let mut visn = enc.visn_fc.forward(input.visual_feats, input.visual_pos);
        for layer in &enc.layers {
            lang = layer.forward(lang, &lang_mask);
        }
        for layer in &enc.r_layers {
            visn = layer.forward(visn, &visn_mask);
        }
        for layer in &enc.x_layers {
            (lang, visn) = layer.forward(lang, &lang_mask, visn, &visn_mask);
        }
        LxmertOutput {
            pooled_output: self.pooler.forward(lang.clone()),
            language_output: lang,
            vision_output: visn,
        }
    }

    /// Loads a HF `LxmertModel` checkpoint (strict).
    pub fn load_hf_safetensors(self, path: impl AsRef<Path>) -> Result<Self, LoadError> {
        weights::load_hf(self, path.as_ref(), &weights::LXMERT)
    }
}

/// dense -> GELU -> LayerNorm (HF `LxmertPredictionHeadTransform`).
#[derive(Module, Debug)]
pub struct Transform {
    /// Dense.
    pub dense: Linear,
    /// GELU.
    pub activation: Gelu,
    /// LayerNorm.
    pub layer_norm: LayerNorm,
}

impl Transform {
    fn new(h: usize, device: &Device) -> Self {
        Self {
            dense: LinearConfig::new(h, h).init(device),
            activation: Gelu::new(),
            layer_norm: LayerNormConfig::new(h).with_epsilon(EPS).init(device),
        }
    }

    /// Forward pass.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        self.layer_norm
            .forward(self.activation.forward(self.dense.forward(x)))
    }
}

/// Masked-object prediction head (HF `LxmertVisualObjHead`): object classes, attributes and
/// feature regression from the vision stream.
#[derive(Module, Debug)]
pub struct ObjPredictHead {
    /// Shared transform.
    pub transform: Transform,
    /// Object-class logits.
    pub obj: Option<Linear>,
    /// Attribute logits.
    pub attr: Option<Linear>,
    /// Regressed region features.
    pub feat: Option<Linear>,
}

/// Predictions of the object head.
#[derive(Clone, Debug)]
pub struct ObjPredictions {
    /// `[B, V, num_object_labels]`.
    pub obj: Option<Tensor<3>>,
    /// `[B, V, num_attr_labels]`.
    pub attr: Option<Tensor<3>>,
    /// `[B, V, visual_feat_dim]`.
    pub feat: Option<Tensor<3>>,
}

impl ObjPredictHead {
    /// Predictions for vision states `[B, V, hidden]`.
    pub fn forward(&self, vision: Tensor<3>) -> ObjPredictions {
        let h = self.transform.forward(vision);
        ObjPredictions {
            obj: self.obj.as_ref().map(|l| l.forward(h.clone())),
            attr: self.attr.as_ref().map(|l| l.forward(h.clone())),
            feat: self.feat.as_ref().map(|l| l.forward(h)),
        }
    }
}

/// QA head on the pooled vector (HF `LxmertVisualAnswerHead`).
#[derive(Module, Debug)]
pub struct AnswerHead {
    /// `hidden -> 2 hidden`.
    pub dense: Linear,
    /// GELU.
    pub activation: Gelu,
    /// LayerNorm over `2 hidden`.
    pub layer_norm: LayerNorm,
    /// Answer logits.
    pub classifier: Linear,
}

impl AnswerHead {
    /// A head from `hidden`-wide pooled vectors to `answers` logits (the VQA head of LXMERT and
    /// VisualBERT: `hidden -> 2 hidden -> GELU -> LayerNorm -> answers`).
    pub fn new(hidden: usize, answers: usize, device: &Device) -> Self {
        Self {
            dense: LinearConfig::new(hidden, 2 * hidden).init(device),
            activation: Gelu::new(),
            layer_norm: LayerNormConfig::new(2 * hidden)
                .with_epsilon(EPS)
                .init(device),
            classifier: LinearConfig::new(2 * hidden, answers).init(device),
        }
    }

    /// Answer logits `[B, num_qa_labels]`.
    pub fn forward(&self, pooled: Tensor<2>) -> Tensor<2> {
        let h = self
            .layer_norm
            .forward(self.activation.forward(self.dense.forward(pooled)));
        self.classifier.forward(h)
    }
}

/// Outputs of [`LxmertForPreTraining::forward`], named as HF's.
#[derive(Clone, Debug)]
pub struct LxmertPreTrainingOutput {
    /// `[B, T, vocab]` MLM logits.
    pub prediction_logits: Tensor<3>,
    /// `[B, 2]` matched logits; index 1 = image and text match (HF LXMERT polarity, the opposite
    /// of ViLBERT's).
    pub cross_relationship_score: Tensor<2>,
    /// `[B, num_qa_labels]` when the QA head exists.
    pub question_answering_score: Option<Tensor<2>>,
    /// Object-head predictions when it exists.
    pub obj_predictions: Option<ObjPredictions>,
    /// The encoder outputs.
    pub encoder: LxmertOutput,
}

/// LXMERT with its pretraining heads (HF `LxmertForPreTraining`). The MLM decoder is tied to
/// `lxmert.embeddings.word_embeddings`.
#[derive(Module, Debug)]
pub struct LxmertForPreTraining {
    /// The encoder.
    pub lxmert: LxmertModel,
    /// MLM head (tied decoder).
    pub mlm: MlmHead,
    /// Image-text matched head on the pooled output.
    pub matched: PairHead,
    /// Masked-object head.
    pub obj_predict_head: Option<ObjPredictHead>,
    /// QA head.
    pub answer_head: Option<AnswerHead>,
}

impl LxmertForPreTraining {
    /// Encodes and applies the heads.
    pub fn forward(&self, input: LxmertInput) -> LxmertPreTrainingOutput {
        let encoder = self.lxmert.forward(input);
        let words = self.lxmert.embeddings.word_embeddings.weight.val();
        LxmertPreTrainingOutput {
            prediction_logits: self.mlm.forward(encoder.language_output.clone(), words),
            cross_relationship_score: self.matched.forward(encoder.pooled_output.clone()),
            question_answering_score: self
                .answer_head
                .as_ref()
                .map(|h| h.forward(encoder.pooled_output.clone())),
            obj_predictions: self
                .obj_predict_head
                .as_ref()
                .map(|h| h.forward(encoder.vision_output.clone())),
            encoder,
        }
    }

    /// Loads a HF `LxmertForPreTraining` checkpoint (strict; the tied decoder is not stored).
    pub fn load_hf_safetensors(self, path: impl AsRef<Path>) -> Result<Self, LoadError> {
        weights::load_hf(self, path.as_ref(), &weights::LXMERT_PRETRAINING)
    }
}
