//! Two-stream co-attention fusion (ViLBERT, Lu et al. 2019), faithful to the reference
//! `vilbert/vilbert.py` of facebookresearch/vilbert-multi-task and loading its checkpoints.
//!
//! Text and regions have their own streams (of different widths). After the text-only layers,
//! co-attention blocks exchange information: each stream's queries attend over the other
//! stream's keys and values; each stream then has its own feed-forward block. Where the
//! co-attention blocks sit is configuration (`v_biattention_id` / `t_biattention_id`, as in the
//! reference JSON configs): with the base config 6 text layers run first.
//!
//! ```no_run
//! use burn::tensor::{Device, Int, Tensor};
//! use tuwen_fusion::vilbert::{ViLBertConfig, ViLBertInput};
//! let device = Device::default();
//! let model = ViLBertConfig::default().init(&device);
//! let ids = Tensor::<2, Int>::from_ints([[101, 1037, 3899, 102]], &device);
//! let feats = Tensor::<3>::zeros([1, 37, 2048], &device);   // global token + 36 regions
//! let boxes = Tensor::<3>::zeros([1, 37, 5], &device);      // [x1, y1, x2, y2, area] / image size
//! let out = model.forward(ViLBertInput::new(ids, feats, boxes));
//! assert_eq!(out.pooled_output_t.dims(), [1, 1024]);
//! ```

use std::path::Path;

use crate::dropout::dropout;
use burn::module::Module;
use burn::nn::{
    Dropout, DropoutConfig, Gelu, LayerNorm, LayerNormConfig, Linear, LinearConfig, Relu,
};
use burn::tensor::{Device, Int, Tensor};
use serde::{Deserialize, Serialize};

use crate::bert::{BertConfig, BertEmbeddings};
use crate::blocks::{FeedForward, LayerDims, TransformerLayer};
use crate::cross::{CrossAttentionBlock, CrossDims};
use crate::heads::{MlmHead, PairHead};
use crate::input::ShapeCheck;
use crate::mask::BERT_MASK_VALUE;
use crate::weights::{self, LoadError};
use crate::{AttentionMask, InputError};

/// ViLBERT hyper-parameters, with the reference implementation's JSON keys.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ViLBertConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Text stream width.
    pub hidden_size: usize,
    /// Text layers.
    pub num_hidden_layers: usize,
    /// Text attention heads.
    pub num_attention_heads: usize,
    /// Text activation; only `gelu`.
    pub hidden_act: String,
    /// Text feed-forward width.
    pub intermediate_size: usize,
    /// Text dropout.
    pub hidden_dropout_prob: f64,
    /// Text attention dropout.
    pub attention_probs_dropout_prob: f64,
    /// Text positions.
    pub max_position_embeddings: usize,
    /// Text segments.
    pub type_vocab_size: usize,
    /// Region feature width.
    pub v_feature_size: usize,
    /// Visual stream width.
    pub v_hidden_size: usize,
    /// Visual layers.
    pub v_num_hidden_layers: usize,
    /// Visual attention heads.
    pub v_num_attention_heads: usize,
    /// Visual feed-forward width.
    pub v_intermediate_size: usize,
    /// Visual attention dropout.
    pub v_attention_probs_dropout_prob: f64,
    /// Visual activation; only `gelu`.
    pub v_hidden_act: String,
    /// Visual dropout.
    pub v_hidden_dropout_prob: f64,
    /// Visual layer index before which each co-attention block runs.
    pub v_biattention_id: Vec<usize>,
    /// Text layer index before which each co-attention block runs.
    pub t_biattention_id: Vec<usize>,
    /// Number of region classes predicted by the masked-region head.
    pub v_target_size: usize,
    /// Co-attention width.
    pub bi_hidden_size: usize,
    /// Co-attention heads.
    pub bi_num_attention_heads: usize,
    /// `mul` (element-wise product, the paper) or `sum` of the pooled vectors for ITM.
    pub fusion_method: String,
    /// Whether the co-attention blocks run at all.
    pub with_coattention: bool,
    /// Text layers below this index are frozen (run without gradient).
    pub fixed_t_layer: usize,
    /// Visual layers below this index are frozen.
    pub fixed_v_layer: usize,
    /// Reference option, not supported (must be false).
    pub dynamic_attention: bool,
    /// Reference option, not supported (must be false).
    pub in_batch_pairs: bool,
    /// Reference option, not supported (must be false).
    pub fast_mode: bool,
    /// Reference option, not supported (must be false).
    pub task_specific_tokens: bool,
}

impl Default for ViLBertConfig {
    /// The paper's base configuration (`bert_base_6layer_6conect.json`).
    fn default() -> Self {
        Self {
            vocab_size: 30_522,
            hidden_size: 768,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            hidden_act: "gelu".into(),
            intermediate_size: 3_072,
            hidden_dropout_prob: 0.1,
            attention_probs_dropout_prob: 0.1,
            max_position_embeddings: 512,
            type_vocab_size: 2,
            v_feature_size: 2_048,
            v_hidden_size: 1_024,
            v_num_hidden_layers: 6,
            v_num_attention_heads: 8,
            v_intermediate_size: 1_024,
            v_attention_probs_dropout_prob: 0.1,
            v_hidden_act: "gelu".into(),
            v_hidden_dropout_prob: 0.1,
            v_biattention_id: (0..6).collect(),
            t_biattention_id: (6..12).collect(),
            v_target_size: 1_601,
            bi_hidden_size: 1_024,
            bi_num_attention_heads: 8,
            fusion_method: "mul".into(),
            with_coattention: true,
            fixed_t_layer: 0,
            fixed_v_layer: 0,
            dynamic_attention: false,
            in_batch_pairs: false,
            fast_mode: false,
            task_specific_tokens: false,
        }
    }
}

impl ViLBertConfig {
    /// Reads a reference-style JSON config.
    pub fn from_json_file(path: impl AsRef<Path>) -> Result<Self, LoadError> {
        weights::read_config(path.as_ref(), Self::validate)
    }

    /// Checks what the reference asserts, plus the options tuwen does not implement.
    pub fn validate(&self) -> Result<(), String> {
        for (name, act) in [
            ("hidden_act", &self.hidden_act),
            ("v_hidden_act", &self.v_hidden_act),
        ] {
            if act != "gelu" {
                return Err(format!("{name} {act:?} is not supported (only \"gelu\")"));
            }
        }
        for (name, width, heads) in [
            ("hidden_size", self.hidden_size, self.num_attention_heads),
            (
                "v_hidden_size",
                self.v_hidden_size,
                self.v_num_attention_heads,
            ),
            (
                "bi_hidden_size",
                self.bi_hidden_size,
                self.bi_num_attention_heads,
            ),
        ] {
            if heads == 0 || !width.is_multiple_of(heads) {
                return Err(format!(
                    "{name} {width} is not a multiple of its {heads} heads"
                ));
            }
        }
        if self.v_biattention_id.len() != self.t_biattention_id.len() {
            return Err("v_biattention_id and t_biattention_id must have the same length".into());
        }
        for (ids, layers, name) in [
            (
                &self.v_biattention_id,
                self.v_num_hidden_layers,
                "v_biattention_id",
            ),
            (
                &self.t_biattention_id,
                self.num_hidden_layers,
                "t_biattention_id",
            ),
        ] {
            if ids.windows(2).any(|w| w[0] > w[1]) || ids.iter().any(|&i| i > layers) {
                return Err(format!(
                    "{name} {ids:?} must be non-decreasing and at most {layers}"
                ));
            }
        }
        if self.fixed_t_layer > self.t_biattention_id.first().copied().unwrap_or(usize::MAX)
            || self.fixed_v_layer > self.v_biattention_id.first().copied().unwrap_or(usize::MAX)
        {
            return Err("fixed layers must come before the first co-attention block".into());
        }
        if !matches!(self.fusion_method.as_str(), "mul" | "sum") {
            return Err(format!(
                "fusion_method {:?} is not \"mul\" or \"sum\"",
                self.fusion_method
            ));
        }
        for (name, on) in [
            ("dynamic_attention", self.dynamic_attention),
            ("in_batch_pairs", self.in_batch_pairs),
            ("fast_mode", self.fast_mode),
            ("task_specific_tokens", self.task_specific_tokens),
        ] {
            if on {
                return Err(format!("{name} = true is not supported"));
            }
        }
        Ok(())
    }

    fn text_config(&self) -> BertConfig {
        BertConfig {
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            num_hidden_layers: self.num_hidden_layers,
            num_attention_heads: self.num_attention_heads,
            intermediate_size: self.intermediate_size,
            hidden_act: self.hidden_act.clone(),
            hidden_dropout_prob: self.hidden_dropout_prob,
            attention_probs_dropout_prob: self.attention_probs_dropout_prob,
            max_position_embeddings: self.max_position_embeddings,
            type_vocab_size: self.type_vocab_size,
            layer_norm_eps: 1e-12,
        }
    }

    fn visual_dims(&self) -> LayerDims {
        LayerDims {
            hidden: self.v_hidden_size,
            heads: self.v_num_attention_heads,
            intermediate: self.v_intermediate_size,
            layer_norm_eps: 1e-12,
            hidden_dropout: self.v_hidden_dropout_prob,
            attention_dropout: self.v_attention_probs_dropout_prob,
        }
    }

    /// A randomly initialised model.
    ///
    /// # Panics
    /// If the config is invalid (see [`ViLBertConfig::validate`]).
    pub fn init(&self, device: &Device) -> ViLBertModel {
        if let Err(e) = self.validate() {
            panic!("invalid ViLBertConfig: {e}");
        }
        let text = self.text_config();
        let t_dims = text.layer_dims();
        let v_dims = self.visual_dims();
        let cross = |query_width, context_width, attention_dropout, hidden_dropout| CrossDims {
            query_width,
            context_width,
            attention_width: self.bi_hidden_size,
            heads: self.bi_num_attention_heads,
            attention_dropout,
            hidden_dropout,
            layer_norm_eps: 1e-12,
        };
        // Reference dropouts: text queries over regions use the visual attention dropout
        // (`dropout1`), region queries over text the text one (`dropout2`).
        let t2i = cross(
            self.hidden_size,
            self.v_hidden_size,
            self.v_attention_probs_dropout_prob,
            self.hidden_dropout_prob,
        );
        let i2t = cross(
            self.v_hidden_size,
            self.hidden_size,
            self.attention_probs_dropout_prob,
            self.v_hidden_dropout_prob,
        );
        ViLBertModel {
            embeddings: BertEmbeddings::new(&text, device),
            v_embeddings: ImageEmbeddings::new(self, device),
            encoder: CoAttentionEncoder {
                layers: (0..self.num_hidden_layers)
                    .map(|_| TransformerLayer::new(&t_dims, device))
                    .collect(),
                v_layers: (0..self.v_num_hidden_layers)
                    .map(|_| TransformerLayer::new(&v_dims, device))
                    .collect(),
                c_layers: self
                    .v_biattention_id
                    .iter()
                    .map(|_| CoAttentionLayer {
                        text_to_image: CrossAttentionBlock::new(&t2i, device),
                        image_to_text: CrossAttentionBlock::new(&i2t, device),
                        v_ffn: FeedForward::new(&v_dims, device),
                        t_ffn: FeedForward::new(&t_dims, device),
                    })
                    .collect(),
                schedule: Schedule {
                    v_biattention_id: self.v_biattention_id.clone(),
                    t_biattention_id: self.t_biattention_id.clone(),
                    fixed_t_layer: self.fixed_t_layer,
                    fixed_v_layer: self.fixed_v_layer,
                    with_coattention: self.with_coattention,
                },
            },
            t_pooler: ReluPooler::new(self.hidden_size, self.bi_hidden_size, device),
            v_pooler: ReluPooler::new(self.v_hidden_size, self.bi_hidden_size, device),
        }
    }

    /// A randomly initialised pretraining model (MLM, masked-region classification, ITM).
    pub fn init_pretraining(&self, device: &Device) -> ViLBertForPreTraining {
        ViLBertForPreTraining {
            bert: self.init(device),
            mlm: MlmHead::new(self.hidden_size, self.vocab_size, 1e-12, device),
            region_head: RegionHead::new(self.v_hidden_size, self.v_target_size, device),
            itm: PairHead::new(self.bi_hidden_size, device),
            itm_dropout: DropoutConfig::new(0.1).init(),
            fusion: if self.fusion_method == "sum" {
                PooledFusion::Sum
            } else {
                PooledFusion::Mul
            },
        }
    }
}

/// `LayerNorm(Linear(features) + Linear(location))` -> dropout (reference `BertImageEmbeddings`).
/// There is no visual token-type embedding.
#[derive(Module, Debug)]
pub struct ImageEmbeddings {
    /// Region feature projection.
    pub image_embeddings: Linear,
    /// 5-d location projection.
    pub image_location_embeddings: Linear,
    /// LayerNorm over the sum.
    pub layer_norm: LayerNorm,
    /// Dropout after the LayerNorm.
    pub dropout: Dropout,
}

impl ImageEmbeddings {
    fn new(config: &ViLBertConfig, device: &Device) -> Self {
        let h = config.v_hidden_size;
        Self {
            image_embeddings: LinearConfig::new(config.v_feature_size, h).init(device),
            image_location_embeddings: LinearConfig::new(5, h).init(device),
            layer_norm: LayerNormConfig::new(h).with_epsilon(1e-12).init(device),
            dropout: DropoutConfig::new(config.v_hidden_dropout_prob).init(),
        }
    }

    /// Region embeddings `[B, V, v_hidden]`.
    pub fn forward(&self, features: Tensor<3>, locations: Tensor<3>) -> Tensor<3> {
        let sum = self.image_embeddings.forward(features)
            + self.image_location_embeddings.forward(locations);
        dropout(&self.dropout, self.layer_norm.forward(sum))
    }
}

/// One co-attention block (reference `BertConnectionLayer`).
#[derive(Module, Debug)]
pub struct CoAttentionLayer {
    /// Text queries over region keys/values (reference `query2`/`key1`/`value1`,
    /// `biOutput.dense2`/`LayerNorm2`).
    pub text_to_image: CrossAttentionBlock,
    /// Region queries over text keys/values (reference `query1`/`key2`/`value2`,
    /// `biOutput.dense1`/`LayerNorm1`).
    pub image_to_text: CrossAttentionBlock,
    /// Visual feed-forward block.
    pub v_ffn: FeedForward,
    /// Text feed-forward block.
    pub t_ffn: FeedForward,
}

impl CoAttentionLayer {
    /// Both directions read the streams as they were BEFORE this block.
    pub fn forward(
        &self,
        image: Tensor<3>,
        image_mask: &AttentionMask,
        text: Tensor<3>,
        text_mask: &AttentionMask,
    ) -> (Tensor<3>, Tensor<3>) {
        let text_att = self
            .text_to_image
            .forward(text.clone(), image.clone(), image_mask);
        let image_att = self.image_to_text.forward(image, text, text_mask);
        (self.v_ffn.forward(image_att), self.t_ffn.forward(text_att))
    }
}

/// Where the co-attention blocks sit (reference encoder loop).
#[derive(Clone, Debug)]
pub struct Schedule {
    /// Visual layer index before each co-attention block.
    pub v_biattention_id: Vec<usize>,
    /// Text layer index before each co-attention block.
    pub t_biattention_id: Vec<usize>,
    /// Frozen text layers.
    pub fixed_t_layer: usize,
    /// Frozen visual layers.
    pub fixed_v_layer: usize,
    /// Whether co-attention runs.
    pub with_coattention: bool,
}

/// The two streams and their co-attention blocks (reference `BertEncoder`).
#[derive(Module, Debug)]
pub struct CoAttentionEncoder {
    /// Text layers (reference `encoder.layer`).
    pub layers: Vec<TransformerLayer>,
    /// Visual layers (reference `encoder.v_layer`).
    pub v_layers: Vec<TransformerLayer>,
    /// Co-attention blocks (reference `encoder.c_layer`).
    pub c_layers: Vec<CoAttentionLayer>,
    /// Layer placement (configuration, not a parameter).
    #[module(skip)]
    pub schedule: Schedule,
}

impl CoAttentionEncoder {
    /// Runs `layers[range]` on `x`; layers below `fixed` run without gradient (their output is
    /// detached), as the reference's `torch.no_grad()` block.
    fn run(
        layers: &[TransformerLayer],
        range: std::ops::Range<usize>,
        fixed: usize,
        mut x: Tensor<3>,
        mask: &AttentionMask,
    ) -> Tensor<3> {
        for idx in range {
            x = layers[idx].forward(x, mask);
            if idx < fixed {
                x = x.detach();
            }
        }
        x
    }

    /// Encodes both streams; returns `(text, image)`.
    pub fn forward(
        &self,
        mut text: Tensor<3>,
        text_mask: &AttentionMask,
        mut image: Tensor<3>,
        image_mask: &AttentionMask,
    ) -> (Tensor<3>, Tensor<3>) {
        let s = &self.schedule;
        let (mut t_start, mut v_start) = (0, 0);
        for (count, (&v_end, &t_end)) in s
            .v_biattention_id
            .iter()
            .zip(&s.t_biattention_id)
            .enumerate()
        {
            text = Self::run(
                &self.layers,
                t_start..t_end,
                s.fixed_t_layer,
                text,
                text_mask,
            );
            image = Self::run(
                &self.v_layers,
                v_start..v_end,
                s.fixed_v_layer,
                image,
                image_mask,
            );
            if s.with_coattention {
                (image, text) = self.c_layers[count].forward(image, image_mask, text, text_mask);
            }
            (t_start, v_start) = (t_end, v_end);
        }
        image = Self::run(
            &self.v_layers,
            v_start..self.v_layers.len(),
            s.fixed_v_layer,
            image,
            image_mask,
        );
        text = Self::run(
            &self.layers,
            t_start..self.layers.len(),
            s.fixed_t_layer,
            text,
            text_mask,
        );
        (text, image)
    }
}

/// `ReLU(dense(hidden[:, 0]))` (reference `BertTextPooler` / `BertImagePooler`).
#[derive(Module, Debug)]
pub struct ReluPooler {
    /// Projection of the first token to the co-attention width.
    pub dense: Linear,
    /// ReLU.
    pub activation: Relu,
}

impl ReluPooler {
    fn new(d_in: usize, d_out: usize, device: &Device) -> Self {
        Self {
            dense: LinearConfig::new(d_in, d_out).init(device),
            activation: Relu::new(),
        }
    }

    /// Pools `[B, S, d_in]` to `[B, d_out]`.
    pub fn forward(&self, hidden: Tensor<3>) -> Tensor<2> {
        let [batch, _, width] = hidden.dims();
        let first = hidden.narrow(1, 0, 1).reshape([batch, width]);
        self.activation.forward(self.dense.forward(first))
    }
}

/// Inputs of [`ViLBertModel::forward`], named as the reference's. Masks: 1 = attend.
#[derive(Clone, Debug)]
pub struct ViLBertInput {
    /// `[B, T]` token ids.
    pub input_ids: Tensor<2, Int>,
    /// `[B, V, v_feature_size]` region features; region 0 is the global image token.
    pub image_feat: Tensor<3>,
    /// `[B, V, 5]` `[x1/W, y1/H, x2/W, y2/H, area/(W*H)]` in original-image pixels.
    pub image_loc: Tensor<3>,
    /// `[B, T]` segment ids (default zeros).
    pub token_type_ids: Tensor<2, Int>,
    /// `[B, T]` text padding mask (default ones).
    pub attention_mask: Tensor<2, Int>,
    /// `[B, V]` region padding mask (default ones).
    pub image_attention_mask: Tensor<2, Int>,
}

impl ViLBertInput {
    /// Inputs with the reference defaults for the optional arguments.
    pub fn new(input_ids: Tensor<2, Int>, image_feat: Tensor<3>, image_loc: Tensor<3>) -> Self {
        let [batch, regions, _] = image_feat.dims();
        Self {
            token_type_ids: input_ids.zeros_like(),
            attention_mask: input_ids.ones_like(),
            image_attention_mask: Tensor::ones([batch, regions], &image_feat.device()),
            input_ids,
            image_feat,
            image_loc,
        }
    }
}

impl ViLBertInput {
    /// Inputs with ViLBERT's global image token prepended to the regions: the mean of the REAL
    /// region features (padding excluded), location `[0, 0, 1, 1, 1]`, always attended.
    ///
    /// `region_feat` `[B, V, D]`, `region_loc` `[B, V, 5]`, `region_mask` `[B, V]` (1 = real);
    /// the result has `V + 1` regions.
    pub fn with_global_image_token(
        input_ids: Tensor<2, Int>,
        region_feat: Tensor<3>,
        region_loc: Tensor<3>,
        region_mask: Tensor<2, Int>,
    ) -> Self {
        let [batch, regions, _] = region_feat.dims();
        let device = region_feat.device();
        let weights = region_mask.clone().float().reshape([batch, regions, 1]);
        let count = weights.clone().sum_dim(1).clamp_min(1.0);
        let global = (region_feat.clone() * weights).sum_dim(1) / count;
        let global_loc = Tensor::<1>::from_floats([0.0, 0.0, 1.0, 1.0, 1.0], &device)
            .reshape([1, 1, 5])
            .expand([batch, 1, 5]);
        let mask = Tensor::cat(vec![Tensor::ones([batch, 1], &device), region_mask], 1);
        let mut input = Self::new(
            input_ids,
            Tensor::cat(vec![global, region_feat], 1),
            Tensor::cat(vec![global_loc, region_loc], 1),
        );
        input.image_attention_mask = mask;
        input
    }
}

/// Outputs of [`ViLBertModel::forward`], named as the reference's.
#[derive(Clone, Debug)]
pub struct ViLBertOutput {
    /// `[B, T, hidden]`.
    pub sequence_output_t: Tensor<3>,
    /// `[B, V, v_hidden]`.
    pub sequence_output_v: Tensor<3>,
    /// `[B, bi_hidden]`, ReLU pooler on `[CLS]`.
    pub pooled_output_t: Tensor<2>,
    /// `[B, bi_hidden]`, ReLU pooler on the global image token.
    pub pooled_output_v: Tensor<2>,
}

/// The ViLBERT encoder (reference `BertModel` of `vilbert.py`).
#[derive(Module, Debug)]
pub struct ViLBertModel {
    /// Text embeddings.
    pub embeddings: BertEmbeddings,
    /// Region embeddings.
    pub v_embeddings: ImageEmbeddings,
    /// Both streams and the co-attention blocks.
    pub encoder: CoAttentionEncoder,
    /// Text pooler.
    pub t_pooler: ReluPooler,
    /// Visual pooler.
    pub v_pooler: ReluPooler,
}

impl ViLBertModel {
    /// Checks shapes against the model.
    pub fn check_input(&self, input: &ViLBertInput) -> Result<(), InputError> {
        let [batch, text] = input.input_ids.dims();
        let [fb, regions, width] = input.image_feat.dims();
        let want_width = self.v_embeddings.image_embeddings.weight.dims()[0];
        let max_text = self.embeddings.position_embeddings.weight.dims()[0];
        let mut check = ShapeCheck::new("ViLBertModel");
        check.require(fb == batch, || {
            format!("image_feat batch {fb} != input_ids batch {batch}")
        });
        check.require(width == want_width, || {
            format!("image_feat width {width} != v_feature_size {want_width}")
        });
        check.require(text <= max_text, || {
            format!("{text} text tokens exceed max_position_embeddings {max_text}")
        });
        check.require(regions > 0, || {
            "at least one region (the global image token) is required".into()
        });
        check.dims("image_loc", input.image_loc.dims(), [batch, regions, 5]);
        check.dims("token_type_ids", input.token_type_ids.dims(), [batch, text]);
        check.dims("attention_mask", input.attention_mask.dims(), [batch, text]);
        check.dims(
            "image_attention_mask",
            input.image_attention_mask.dims(),
            [batch, regions],
        );
        check.finish()
    }

    /// Encodes; shape problems are returned as errors.
    pub fn try_forward(&self, input: ViLBertInput) -> Result<ViLBertOutput, InputError> {
        self.check_input(&input)?;
        Ok(self.forward_unchecked(input))
    }

    /// Encodes.
    ///
    /// # Panics
    /// With [`ViLBertModel::check_input`]'s message if the input does not fit the model.
    pub fn forward(&self, input: ViLBertInput) -> ViLBertOutput {
        if let Err(e) = self.check_input(&input) {
            panic!("{e}");
        }
        self.forward_unchecked(input)
    }

    fn forward_unchecked(&self, input: ViLBertInput) -> ViLBertOutput {
        // The reference adds -10000 (not HF's finfo.min) at padded positions.
        let text_mask = AttentionMask::padding(input.attention_mask, BERT_MASK_VALUE);
        let image_mask = AttentionMask::padding(input.image_attention_mask, BERT_MASK_VALUE);
        let text = self
            .embeddings
            .forward(input.input_ids, input.token_type_ids);
        let image = self.v_embeddings.forward(input.image_feat, input.image_loc);
        let (text, image) = self.encoder.forward(text, &text_mask, image, &image_mask);
        ViLBertOutput {
            pooled_output_t: self.t_pooler.forward(text.clone()),
            pooled_output_v: self.v_pooler.forward(image.clone()),
            sequence_output_t: text,
            sequence_output_v: image,
        }
    }

    /// Loads a reference `BertModel` checkpoint (strict; the unused `q_dense1/q_dense2` tensors
    /// of the reference are accepted as unused by design).
    pub fn load_safetensors(self, path: impl AsRef<Path>) -> Result<Self, LoadError> {
        weights::load_hf(self, path.as_ref(), &weights::VILBERT)
    }
}

/// How the two pooled vectors are fused for ITM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PooledFusion {
    /// Element-wise product (the paper).
    Mul,
    /// Sum.
    Sum,
}

/// Masked-region classification head: dense -> GELU -> LayerNorm -> decoder over
/// `v_target_size` classes (reference `BertImagePredictionHead`; not tied).
#[derive(Module, Debug)]
pub struct RegionHead {
    /// Transform dense.
    pub dense: Linear,
    /// GELU (the reference uses the text `hidden_act`).
    pub activation: Gelu,
    /// Transform LayerNorm.
    pub layer_norm: LayerNorm,
    /// Class logits.
    pub decoder: Linear,
}

impl RegionHead {
    /// A head over `hidden`-wide region states predicting `classes` classes.
    pub fn new(hidden: usize, classes: usize, device: &Device) -> Self {
        Self {
            dense: LinearConfig::new(hidden, hidden).init(device),
            activation: Gelu::new(),
            layer_norm: LayerNormConfig::new(hidden)
                .with_epsilon(1e-12)
                .init(device),
            decoder: LinearConfig::new(hidden, classes).init(device),
        }
    }

    /// Class logits `[B, V, classes]`.
    pub fn forward(&self, hidden: Tensor<3>) -> Tensor<3> {
        let h = self
            .layer_norm
            .forward(self.activation.forward(self.dense.forward(hidden)));
        self.decoder.forward(h)
    }
}

/// Outputs of [`ViLBertForPreTraining::forward`], named as the reference's.
#[derive(Clone, Debug)]
pub struct ViLBertPreTrainingOutput {
    /// `[B, T, vocab]` MLM logits.
    pub prediction_scores_t: Tensor<3>,
    /// `[B, V, v_target_size]` region-class logits.
    pub prediction_scores_v: Tensor<3>,
    /// `[B, 2]` ITM logits; index 1 = the caption does NOT match (reference `is_next` polarity).
    pub seq_relationship_score: Tensor<2>,
    /// The encoder outputs.
    pub encoder: ViLBertOutput,
}

/// ViLBERT with its pretraining heads (reference `BertForMultiModalPreTraining`). The MLM decoder
/// is tied to `bert.embeddings.word_embeddings`.
#[derive(Module, Debug)]
pub struct ViLBertForPreTraining {
    /// The encoder (reference prefix `bert.`).
    pub bert: ViLBertModel,
    /// MLM head (tied decoder).
    pub mlm: MlmHead,
    /// Masked-region classification head.
    pub region_head: RegionHead,
    /// ITM head on the fused pooled vectors.
    pub itm: PairHead,
    /// Dropout on the fused pooled vector.
    pub itm_dropout: Dropout,
    /// Pooled-vector fusion (configuration, not a parameter).
    #[module(skip)]
    pub fusion: PooledFusion,
}

impl ViLBertForPreTraining {
    /// Encodes and applies the three heads.
    pub fn forward(&self, input: ViLBertInput) -> ViLBertPreTrainingOutput {
        let encoder = self.bert.forward(input);
        let pooled = match self.fusion {
            PooledFusion::Mul => encoder.pooled_output_t.clone() * encoder.pooled_output_v.clone(),
            PooledFusion::Sum => encoder.pooled_output_t.clone() + encoder.pooled_output_v.clone(),
        };
        let words = self.bert.embeddings.word_embeddings.weight.val();
        ViLBertPreTrainingOutput {
            prediction_scores_t: self.mlm.forward(encoder.sequence_output_t.clone(), words),
            prediction_scores_v: self.region_head.forward(encoder.sequence_output_v.clone()),
            seq_relationship_score: self.itm.forward(dropout(&self.itm_dropout, pooled)),
            encoder,
        }
    }

    /// Loads a reference `BertForMultiModalPreTraining` checkpoint (strict).
    pub fn load_safetensors(self, path: impl AsRef<Path>) -> Result<Self, LoadError> {
        weights::load_hf(self, path.as_ref(), &weights::VILBERT_PRETRAINING)
    }
}
