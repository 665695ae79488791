//! The models a run trains, behind one type so the loop, checkpoints and evaluation are shared:
//! single-stream VisualBERT (MLM + ITM), two-stream ViLBERT and LXMERT (MLM + ITM + masked region
//! classification), each with an optional image-text contrastive (ITC) head over unimodal
//! passes of the same encoder (the other modality replaced by a null input; see
//! [`View`]) for contrastive learning and retrieval.

use burn::module::{Module, Param};
use burn::tensor::activation::softmax;
use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::SeedableRng;
use tuwen_fusion::decoder::{CaptionDecoder, DecoderConfig};
use tuwen_fusion::dropout::dropout;
use tuwen_fusion::init::{BertInit, bert_init};
use tuwen_fusion::lxmert::AnswerHead;
use tuwen_fusion::vilbert::{PooledFusion, RegionHead};
use tuwen_fusion::visual_bert::LocationEncoding;
use tuwen_fusion::{
    BertConfig, InputError, LxmertConfig, LxmertForPreTraining, ViLBertConfig,
    ViLBertForPreTraining, VisualBertConfig, VisualBertForPreTraining,
};
use tuwen_objectives::LossOutput;
use tuwen_objectives::grounding::{GroundingHead, GroundingInput};
use tuwen_objectives::itc::{ItcConfig, ItcHead};
use tuwen_objectives::itm::{MatchLabel, Polarity, hard_negatives, itm_loss};
use tuwen_objectives::mlm::{MlmOutput, mlm_loss};
use tuwen_objectives::mrm::{MrfrHead, gather, mrc_kl_at, mrc_label_loss, mrfr_loss};
use tuwen_objectives::ot::{IpotConfig, ot_distance};
use tuwen_objectives::vqa::{vqa_accuracy, vqa_loss};

use crate::batch::{HostBatch, PretrainBatch, View};
use crate::config::{Architecture, ModelConfig, Negatives, ObjectivesConfig, TrainConfig};

/// An encoder of either family with its pretraining heads. (Held once per run, so the size
/// difference between the variants does not matter; boxing would complicate the derived record.)
#[derive(Module, Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Encoder {
    /// Single stream.
    VisualBert(VisualBertForPreTraining),
    /// Two streams with co-attention.
    ViLBert(ViLBertForPreTraining),
    /// Language and relational layers, then cross-modality layers.
    Lxmert(LxmertForPreTraining),
}

/// What a run trains: the encoder and, for contrastive learning and retrieval, an ITC head over
/// its unimodal (text-only, image-only) pooled outputs.
#[derive(Module, Debug)]
pub struct PretrainModel {
    /// Encoder and its MLM / ITM / region heads.
    pub encoder: Encoder,
    /// Projections + temperature of image-text contrastive learning.
    pub itc: Option<ItcHead>,
    /// VQA answer classifier over the joint pooled vector.
    pub vqa: Option<AnswerHead>,
    /// Caption decoder of an encoder-decoder captioner (cross-attends to the image-only pass
    /// of the encoder); `None` for every other run, including the unified captioner, which
    /// captions with the encoder itself.
    pub decoder: Option<CaptionDecoder>,
    /// Masked region feature regression head (`objectives.mrfr`).
    pub mrfr: Option<MrfrHead>,
    /// Phrase -> region / box head (`objectives.grounding`).
    pub grounding: Option<GroundingHead>,
    /// Masked region classification head over a single-stream encoder's region states
    /// (`objectives.mrc` on VisualBERT; ViLBERT's is part of its encoder).
    pub region_head: Option<RegionHead>,
}

/// Which objectives a forward pass computes (the heads they need must exist). The default is
/// what [`PretrainModel::objectives`] always computed: MLM, ITM with the batch's negatives,
/// region classification (ViLBERT, masked regions) and ITC (with an ITC head).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ObjectiveSet {
    /// Masked language modelling.
    pub mlm: bool,
    /// Image-text matching.
    pub itm: bool,
    /// ITM's mismatched captions replaced by ITC-hard ones mined in the batch (needs ITC).
    pub hard_negatives: bool,
    /// Phrase grounding (needs the grounding head).
    pub grounding: bool,
    /// OT word-region alignment.
    pub wra: bool,
    /// Masked region feature regression (needs the MRFR head).
    pub mrfr: bool,
    /// Masked region classification.
    pub mrc: bool,
    /// Masked region classification against the detector's class distributions (KL; needs
    /// batches with distributions).
    pub mrc_kl: bool,
    /// Image-text contrastive (needs the ITC head).
    pub itc: bool,
    /// Unified seq2seq LM (VisualBERT; needs the host batch).
    pub lm: bool,
    /// VQA (needs the answer head and the batch's questions).
    pub vqa: bool,
    /// Seed of the hard-negative sampling.
    pub seed: u64,
}

impl Default for ObjectiveSet {
    fn default() -> Self {
        Self {
            mlm: true,
            itm: true,
            hard_negatives: false,
            grounding: false,
            wra: false,
            mrfr: false,
            mrc: true,
            mrc_kl: false,
            itc: true,
            lm: false,
            vqa: true,
            seed: 0,
        }
    }
}

impl ObjectiveSet {
    /// The objectives `[objectives]` switches on.
    pub fn from_config(o: &ObjectivesConfig) -> Self {
        Self {
            mlm: o.mlm.enabled,
            itm: o.itm.enabled,
            hard_negatives: o.itm.enabled && o.itm.negatives == Negatives::Hard,
            grounding: o.grounding.enabled,
            wra: o.wra.enabled,
            mrfr: o.mrfr.enabled,
            mrc: o.mrc.enabled,
            mrc_kl: o.mrc_kl.enabled,
            itc: o.itc.enabled,
            lm: o.lm.enabled,
            vqa: true,
            seed: 0,
        }
    }
}

/// What one forward pass gives the loop: each objective's loss (mean over its items, with the
/// item count so micro-batches can be weighted exactly) and accuracies.
#[derive(Debug)]
pub struct Objectives {
    /// Masked language modelling.
    pub mlm: MlmOutput,
    /// Image-text matching.
    pub itm: LossOutput,
    /// ITM accuracy of the batch.
    pub itm_accuracy: f32,
    /// Masked region classification (empty without region masking).
    pub region: LossOutput,
    /// Region classification accuracy at the masked regions.
    pub region_accuracy: f32,
    /// Image-text contrastive loss over the matched pairs (empty without an ITC head).
    pub itc: LossOutput,
    /// VQA loss over the questions with a known answer (empty without a VQA head or batch).
    pub vqa: LossOutput,
    /// VQA accuracy (argmax answer) over those questions.
    pub vqa_accuracy: f32,
    /// Grounding: alignment cross-entropy + smooth-L1 + (1 - GIoU), mean over the phrases
    /// (empty unless switched on).
    pub grounding: LossOutput,
    /// Fraction of phrases whose predicted box has IoU >= 0.5 with the gold box.
    pub grounding_accuracy: f32,
    /// Fraction of phrases whose top-1 aligned region is the gold region.
    pub grounding_region_accuracy: f32,
    /// OT word-region alignment: (sum of matched pairs' OT distances - sum of mismatched
    /// pairs') / pairs (UNITER; empty unless switched on).
    pub wra: LossOutput,
    /// Masked region feature regression (MSE at masked regions; empty unless switched on).
    pub mrfr: LossOutput,
    /// MRC-KL: KL from the detector's class distribution to the predicted one at the masked
    /// regions (empty unless switched on and the batch has distributions).
    pub mrc_kl: LossOutput,
    /// Unified seq2seq LM over the matched captions (empty unless switched on).
    pub lm: LossOutput,
    /// Its next-token accuracy.
    pub lm_accuracy: f32,
}

/// What the data fixes about a model: vocabulary, region vector width, text length, VQA answers
/// (0: no VQA head) and region classes (ViLBERT's region head).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ModelShape {
    /// Vocabulary size.
    pub vocab: usize,
    /// Region vector width.
    pub feature_dim: usize,
    /// Maximum text length.
    pub max_text_len: usize,
    /// VQA answers (0: no VQA head).
    pub answers: usize,
    /// Classes of masked region classification.
    pub region_classes: usize,
}

/// The encoder configuration a [`ModelConfig`] describes (text side from `bert` when the model
/// starts from a BERT checkpoint).
pub fn visual_bert_config(
    cfg: &ModelConfig,
    bert: Option<BertConfig>,
    vocab: usize,
    feature_dim: usize,
    max_text_len: usize,
) -> VisualBertConfig {
    let bert = bert.unwrap_or_else(|| BertConfig {
        vocab_size: vocab,
        hidden_size: cfg.hidden_size,
        num_hidden_layers: cfg.layers,
        num_attention_heads: cfg.heads,
        intermediate_size: intermediate(cfg.intermediate_size, cfg.hidden_size),
        max_position_embeddings: max_text_len.max(32),
        ..BertConfig::default()
    });
    VisualBertConfig {
        bert: BertConfig {
            hidden_dropout_prob: cfg.dropout,
            attention_probs_dropout_prob: cfg.dropout,
            ..bert
        },
        visual_embedding_dim: feature_dim,
        visual_location: LocationEncoding::XyxyArea5,
        ..VisualBertConfig::default()
    }
}

fn intermediate(configured: usize, hidden: usize) -> usize {
    if configured == 0 {
        4 * hidden
    } else {
        configured
    }
}

/// The ViLBERT configuration a [`ModelConfig`] describes: `co_layers` co-attention layers join
/// the last `co_layers` layers of each stream; regions are classified into the scene classes.
pub fn vilbert_config(
    cfg: &ModelConfig,
    vocab: usize,
    feature_dim: usize,
    max_text_len: usize,
    region_classes: usize,
) -> ViLBertConfig {
    ViLBertConfig {
        vocab_size: vocab,
        hidden_size: cfg.hidden_size,
        num_hidden_layers: cfg.layers,
        num_attention_heads: cfg.heads,
        intermediate_size: intermediate(cfg.intermediate_size, cfg.hidden_size),
        hidden_dropout_prob: cfg.dropout,
        attention_probs_dropout_prob: cfg.dropout,
        max_position_embeddings: max_text_len.max(32),
        v_feature_size: feature_dim,
        v_hidden_size: cfg.v_hidden_size,
        v_num_hidden_layers: cfg.v_layers,
        v_num_attention_heads: cfg.heads,
        v_intermediate_size: intermediate(cfg.intermediate_size, cfg.v_hidden_size),
        v_attention_probs_dropout_prob: cfg.dropout,
        v_hidden_dropout_prob: cfg.dropout,
        v_biattention_id: (cfg.v_layers - cfg.co_layers..cfg.v_layers).collect(),
        t_biattention_id: (cfg.layers - cfg.co_layers..cfg.layers).collect(),
        v_target_size: region_classes.max(1),
        bi_hidden_size: cfg.hidden_size.max(cfg.v_hidden_size),
        bi_num_attention_heads: cfg.heads,
        ..ViLBertConfig::default()
    }
}

/// The LXMERT configuration a [`ModelConfig`] describes: `layers` language, `v_layers`
/// relational and `co_layers` cross-modality layers, all `hidden_size` wide; its object head
/// classifies masked regions into the scene classes (no attribute or feature decoder: MRFR has
/// its own head, and the QA head is the run's VQA head).
pub fn lxmert_config(
    cfg: &ModelConfig,
    vocab: usize,
    feature_dim: usize,
    max_text_len: usize,
    region_classes: usize,
) -> LxmertConfig {
    LxmertConfig {
        vocab_size: vocab,
        hidden_size: cfg.hidden_size,
        num_attention_heads: cfg.heads,
        num_object_labels: region_classes.max(1),
        intermediate_size: intermediate(cfg.intermediate_size, cfg.hidden_size),
        hidden_dropout_prob: cfg.dropout,
        attention_probs_dropout_prob: cfg.dropout,
        max_position_embeddings: max_text_len.max(32),
        l_layers: cfg.layers,
        r_layers: cfg.v_layers,
        x_layers: cfg.co_layers,
        visual_feat_dim: feature_dim,
        visual_pos_dim: 4,
        task_obj_predict: true,
        task_qa: false,
        visual_obj_loss: true,
        visual_attr_loss: false,
        visual_feat_loss: false,
        ..LxmertConfig::default()
    }
}

impl PretrainModel {
    /// The model a run with `cfg` and `spec` trains, freshly initialised (HF BERT
    /// initialisation; a model started from a BERT checkpoint gets that checkpoint's text
    /// configuration, not its weights: see `pretrain::run`). Draws from `device`'s generator.
    pub fn build(cfg: &ModelConfig, spec: &crate::run_dir::ModelSpec, device: &Device) -> Self {
        let model = Self::build_encoder(cfg, spec, device);
        match &spec.caption_decoder {
            Some(decoder) => {
                model.with_caption_decoder(decoder, cfg, spec.shape.max_text_len, device)
            }
            None => model,
        }
    }

    fn build_encoder(cfg: &ModelConfig, spec: &crate::run_dir::ModelSpec, device: &Device) -> Self {
        let shape = &spec.shape;
        match &spec.bert {
            Some(bert) => {
                let vcfg = visual_bert_config(
                    cfg,
                    Some(bert.clone()),
                    shape.vocab,
                    shape.feature_dim,
                    shape.max_text_len,
                );
                let m = bert_init(vcfg.init_pretraining(device), BertInit::default());
                Self::with_heads(Encoder::VisualBert(m), cfg.itc_dim, shape.answers, device)
            }
            None => Self::init(cfg, shape, device),
        }
    }

    /// A randomly initialised model (HF BERT's initialisation, [`bert_init`]; draws from
    /// `device`'s generator: seed it first), with a VQA head when `shape.answers > 0`.
    pub fn init(cfg: &ModelConfig, shape: &ModelShape, device: &Device) -> Self {
        let ModelShape {
            vocab,
            feature_dim,
            max_text_len,
            answers,
            region_classes,
        } = *shape;
        let encoder = match cfg.architecture {
            Architecture::VisualBert => Encoder::VisualBert(
                visual_bert_config(cfg, None, vocab, feature_dim, max_text_len)
                    .init_pretraining(device),
            ),
            Architecture::Vilbert => {
                let mut m = vilbert_config(cfg, vocab, feature_dim, max_text_len, region_classes)
                    .init_pretraining(device);
                // The reference fixes 0.1 before the ITM head; follow the configured dropout.
                m.itm_dropout = burn::nn::DropoutConfig::new(cfg.dropout).init();
                Encoder::ViLBert(m)
            }
            Architecture::Lxmert => Encoder::Lxmert(
                lxmert_config(cfg, vocab, feature_dim, max_text_len, region_classes)
                    .init_pretraining(device),
            ),
        };
        Self::with_heads(
            bert_init(encoder, BertInit::default()),
            cfg.itc_dim,
            answers,
            device,
        )
    }

    /// `encoder` with an ITC head of `itc_dim` (0: none) and a VQA head over `answers` answers
    /// (0: none); the new heads get HF BERT's initialisation, the encoder is kept as given.
    pub fn with_heads(encoder: Encoder, itc_dim: usize, answers: usize, device: &Device) -> Self {
        let itc = (itc_dim > 0).then(|| {
            let (image, text) = encoder.pooled_widths();
            let config = ItcConfig {
                embed_dim: itc_dim,
                ..ItcConfig::default()
            };
            ItcHead::new(image, text, &config, device)
        });
        let vqa = (answers > 0).then(|| AnswerHead::new(encoder.joint_width(), answers, device));
        let (itc, vqa) = (
            itc.map(|h| bert_init(h, BertInit::default())),
            vqa.map(|h| bert_init(h, BertInit::default())),
        );
        Self {
            encoder,
            itc,
            vqa,
            decoder: None,
            mrfr: None,
            grounding: None,
            region_head: None,
        }
        .materialize()
    }

    /// This model with the heads the switched-on objectives of `cfg.objectives` need (MRFR,
    /// grounding, and region classification over `region_classes` classes for a single-stream
    /// encoder with masked regions), freshly initialised (HF BERT initialisation; draws from
    /// `device`'s generator). Nothing is drawn when no such objective is on.
    pub fn with_objective_heads(
        mut self,
        cfg: &TrainConfig,
        region_classes: usize,
        device: &Device,
    ) -> Self {
        let objectives = &cfg.objectives;
        let (text, image) = self.hidden_widths();
        if objectives.mrfr.enabled && self.mrfr.is_none() {
            let head = MrfrHead::new(image, self.feature_width(), device);
            self.mrfr = Some(bert_init(head, BertInit::default()));
        }
        if objectives.grounding.enabled && self.grounding.is_none() {
            let head = GroundingHead::new(text, image, text, device);
            self.grounding = Some(bert_init(head, BertInit::default()));
        }
        let single_stream = matches!(self.encoder, Encoder::VisualBert(_));
        let masked_regions = cfg.data.region_mask_prob > 0.0 && region_classes > 0;
        let classifies = objectives.mrc.enabled || objectives.mrc_kl.enabled;
        if single_stream && classifies && masked_regions && self.region_head.is_none() {
            let head = RegionHead::new(image, region_classes, device);
            self.region_head = Some(bert_init(head, BertInit::default()));
        }
        self.materialize()
    }

    /// Widths of the text and region hidden states of the joint pass (each stream's input
    /// projection's output width).
    pub fn hidden_widths(&self) -> (usize, usize) {
        (
            self.encoder.word_embeddings().dims()[1],
            self.encoder.region_projection().dims()[1],
        )
    }

    /// This model with a fresh caption decoder of `spec.layers` layers as wide as the text
    /// stream, cross-attending to the image stream (VisualBERT: its one stream), heads and
    /// feed-forward width as the encoder's, `positions` caption positions (HF BERT
    /// initialisation; draws from `device`'s generator).
    pub fn with_caption_decoder(
        mut self,
        spec: &crate::run_dir::DecoderSpec,
        cfg: &ModelConfig,
        positions: usize,
        device: &Device,
    ) -> Self {
        let (image, text) = self.encoder.pooled_widths();
        let config = DecoderConfig {
            layers: spec.layers,
            heads: cfg.heads,
            intermediate: intermediate(cfg.intermediate_size, text),
            max_positions: positions,
            dropout: cfg.dropout,
            ..DecoderConfig::new(self.vocab_size(), text, image)
        };
        self.decoder = Some(bert_init(config.init(device), BertInit::default()));
        self.materialize()
    }

    /// Draws every parameter now. Burn initialises parameters lazily, on first use; a run must
    /// draw them under its initialisation seed (not whatever seed the first step sets), and
    /// before data-parallel replicas are forked (a forked lazy parameter would draw its own).
    pub fn materialize(self) -> Self {
        struct Touch;
        impl burn::module::ModuleVisitor for Touch {
            fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<D>>) {
                let _ = param.val();
            }
        }
        self.visit(&mut Touch);
        self
    }

    /// Checks that a host batch fits this model before anything reaches a device: token ids
    /// inside the vocabulary, text no longer than the position table, regions of the model's
    /// width. (Out-of-range ids would otherwise index the embedding table out of bounds.)
    pub fn check_batch(&self, host: &HostBatch) -> Result<(), InputError> {
        let vocab = self.vocab_size();
        let mut problems = Vec::new();
        let bad = |ids: &[i64]| {
            ids.iter()
                .copied()
                .find(|&id| id < 0 || id as usize >= vocab)
        };
        for (name, ids) in [
            ("input_ids", &host.input_ids),
            ("caption_ids", &host.caption_ids),
        ]
        .into_iter()
        .chain(
            host.vqa
                .as_ref()
                .map(|q| ("question input_ids", &q.input_ids)),
        ) {
            if let Some(id) = bad(ids) {
                problems.push(format!(
                    "{name} holds token id {id}, outside the model's vocabulary of {vocab} \
                     (was the vocabulary replaced?)"
                ));
            }
        }
        let positions = self.max_positions();
        let text = host
            .vqa
            .as_ref()
            .map_or(host.text_len, |q| q.text_len.max(host.text_len));
        if text > positions {
            problems.push(format!(
                "{text} text tokens exceed the model's {positions} positions \
                 (lower data.max_text_len)"
            ));
        }
        let width = self.feature_width();
        if host.feature_dim != width {
            problems.push(format!(
                "region vectors have width {}, the model expects {width}",
                host.feature_dim
            ));
        }
        let classes = self.region_classes();
        if host.distribution_classes > 0 && classes != Some(host.distribution_classes) {
            problems.push(format!(
                "the regions carry class distributions over {} classes; the model's region head \
                 classifies {} (was it trained on another feature store?)",
                host.distribution_classes,
                classes.map_or("none".to_string(), |c| c.to_string())
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(InputError::new("PretrainModel", problems))
        }
    }

    /// Text-only and image-only pooled vectors of `batch` (rows as in the batch; the text pass
    /// first).
    pub fn unimodal(&self, batch: &PretrainBatch) -> Result<(Tensor<2>, Tensor<2>), InputError> {
        Ok((
            self.pooled(batch, View::Text)?,
            self.pooled(batch, View::Image)?,
        ))
    }

    /// The pooled vector of one unimodal `view` (`Text` or `Image`) of `batch`: VisualBERT's
    /// pooler, ViLBERT's text or image pooler; LXMERT pools its language stream only, so its image
    /// view's vector is the null text's `[CLS]` after the cross-modality layers read the regions.
    pub fn pooled(&self, batch: &PretrainBatch, view: View) -> Result<Tensor<2>, InputError> {
        Ok(match (&self.encoder, view) {
            (Encoder::VisualBert(m), _) => {
                m.visual_bert
                    .try_forward(batch.visual_bert_input(view))?
                    .pooler_output
            }
            (Encoder::ViLBert(m), View::Text) => {
                m.bert
                    .try_forward(batch.vilbert_input(view))?
                    .pooled_output_t
            }
            (Encoder::ViLBert(m), _) => {
                m.bert
                    .try_forward(batch.vilbert_input(view))?
                    .pooled_output_v
            }
            (Encoder::Lxmert(m), _) => {
                m.lxmert
                    .try_forward(batch.lxmert_input(view))?
                    .pooled_output
            }
        })
    }

    /// ITM match probabilities of the joint pass over `batch` (rows as in the batch).
    pub fn match_scores(&self, batch: &PretrainBatch) -> Result<Vec<f32>, InputError> {
        let (logits, polarity) = self.joint(batch)?.2;
        Ok(match_probabilities(logits, polarity))
    }

    /// The joint pass: text hidden states (for MLM), the joint pooled vector (for VQA), ITM
    /// logits with their polarity, and the region states (ViLBERT's image stream, VisualBERT's
    /// region positions; for the region objectives).
    #[allow(clippy::type_complexity)]
    fn joint(
        &self,
        batch: &PretrainBatch,
    ) -> Result<
        (
            Tensor<3>,
            Tensor<2>,
            (Tensor<2>, Polarity),
            Option<Tensor<3>>,
        ),
        InputError,
    > {
        let [_, len] = batch.input_ids.dims();
        Ok(match &self.encoder {
            Encoder::VisualBert(model) => {
                let out = model
                    .visual_bert
                    .try_forward(batch.visual_bert_input(View::Joint))?;
                let [_, total, _] = out.last_hidden_state.dims();
                let text = out.last_hidden_state.clone().narrow(1, 0, len);
                let image = out.last_hidden_state.narrow(1, len, total - len);
                let logits = model.sentence_image.forward(out.pooler_output.clone());
                (
                    text,
                    out.pooler_output,
                    (logits, Polarity::VISUAL_BERT),
                    Some(image),
                )
            }
            Encoder::ViLBert(model) => {
                let out = model.bert.try_forward(batch.vilbert_input(View::Joint))?;
                let pooled = match model.fusion {
                    PooledFusion::Mul => out.pooled_output_t * out.pooled_output_v,
                    PooledFusion::Sum => out.pooled_output_t + out.pooled_output_v,
                };
                let logits = model
                    .itm
                    .forward(dropout(&model.itm_dropout, pooled.clone()));
                (
                    out.sequence_output_t,
                    pooled,
                    (logits, Polarity::VILBERT),
                    Some(out.sequence_output_v),
                )
            }
            Encoder::Lxmert(model) => {
                let out = model.lxmert.try_forward(batch.lxmert_input(View::Joint))?;
                let logits = model.matched.forward(out.pooled_output.clone());
                (
                    out.language_output,
                    out.pooled_output,
                    (logits, Polarity::LXMERT),
                    Some(out.vision_output),
                )
            }
        })
    }

    /// VQA loss and accuracy of `batch` (a question batch with soft `answers`; rows without a
    /// known answer are not scored).
    pub fn vqa_objective(
        &self,
        head: &AnswerHead,
        batch: &PretrainBatch,
    ) -> Result<(LossOutput, f32), InputError> {
        let device = batch.input_ids.device();
        let known: Vec<i64> = (0..batch.answers.len())
            .filter(|&r| !batch.answers[r].is_empty())
            .map(|r| r as i64)
            .collect();
        if known.is_empty() {
            return Ok((LossOutput::empty(&device), 0.0));
        }
        let pooled = self.joint(batch)?.1;
        let rows = Tensor::<1, Int>::from_ints(known.as_slice(), &device);
        let logits = head.forward(pooled.select(0, rows));
        let [n, answers] = logits.dims();
        let mut targets = vec![0.0f32; n * answers];
        for (i, &r) in known.iter().enumerate() {
            for &(answer, score) in &batch.answers[r as usize] {
                if let Some(t) = targets.get_mut(i * answers + answer as usize) {
                    *t = score;
                }
            }
        }
        let targets = Tensor::<2>::from_data(TensorData::new(targets, [n, answers]), &device);
        let accuracy = vqa_accuracy(logits.clone(), targets.clone());
        Ok((vqa_loss(logits, targets), accuracy))
    }

    /// Answer scores (sigmoid of the answer head's logits) of every row of `batch`, row-major
    /// `[rows, answers]`; an error without a VQA head.
    pub fn answer_scores(&self, batch: &PretrainBatch) -> Result<Vec<f32>, String> {
        let head = self
            .vqa
            .as_ref()
            .ok_or("the model has no VQA answer head (was it fine-tuned for VQA?)")?;
        let pooled = self.joint(batch).map_err(|e| e.to_string())?.1;
        let scores = burn::tensor::activation::sigmoid(head.forward(pooled));
        tuwen_weights::host::values(scores.into_data(), "VQA answer scores")
            .map_err(|e| e.to_string())
    }

    /// Every objective of the model on `batch`: [`ObjectiveSet::default`] (MLM, ITM, region
    /// classification, ITC).
    pub fn objectives(&self, batch: &PretrainBatch) -> Result<Objectives, InputError> {
        self.objectives_with(None, batch, &ObjectiveSet::default())
            .map_err(|e| match e {
                ObjectiveError::Input(e) => e,
                ObjectiveError::Other(e) => InputError::new("PretrainModel", vec![e]),
            })
    }

    /// The objectives of `set` on `batch` (`host` is its host side; the LM objective needs it).
    /// An objective whose head the model lacks is empty.
    pub fn objectives_with(
        &self,
        host: Option<&HostBatch>,
        batch: &PretrainBatch,
        set: &ObjectiveSet,
    ) -> Result<Objectives, ObjectiveError> {
        let device = batch.input_ids.device();
        // Unimodal passes: first when they mine hard negatives, else where ITC needs them (the
        // order of passes fixes the order of dropout draws).
        let mut unimodal = match &self.itc {
            Some(_) if set.itm && set.hard_negatives => Some(self.unimodal(batch)?),
            _ => None,
        };
        let hard;
        let batch = match (&self.itc, &unimodal) {
            (Some(head), Some((t, i))) if set.itm && set.hard_negatives => {
                hard = with_hard_negatives(batch, head, t.clone(), i.clone(), set.seed);
                &hard
            }
            _ => batch,
        };
        let (text, _, (itm_logits, polarity), image) = self.joint(batch)?;
        let head = match &self.encoder {
            Encoder::VisualBert(m) => &m.mlm,
            Encoder::ViLBert(m) => &m.mlm,
            Encoder::Lxmert(m) => &m.mlm,
        };
        let words = self.encoder.word_embeddings().val();
        let mlm = if set.mlm {
            mlm_loss(
                head,
                text.clone(),
                words,
                &batch.mlm_positions,
                &batch.mlm_labels,
                None,
            )
        } else {
            MlmOutput {
                loss: LossOutput::empty(&device),
                predictions: Vec::new(),
                accuracy: 0.0,
            }
        };
        let masked = !batch.region_positions.is_empty();
        let region_logits = match &image {
            Some(image) if (set.mrc || set.mrc_kl) && masked => self.region_logits(image.clone()),
            _ => None,
        };
        let region = match &region_logits {
            Some(logits) if set.mrc => Some(mrc_label_loss(
                logits.clone(),
                &batch.region_labels,
                &batch.region_positions,
            )),
            _ => None,
        };
        let mrc_kl = match (region_logits, &batch.region_distributions) {
            (Some(logits), Some(targets)) if set.mrc_kl => {
                mrc_kl_at(gather(logits, &batch.region_positions), targets.clone())
            }
            _ => LossOutput::empty(&device),
        };
        let (itm, itm_accuracy) = if set.itm {
            itm_loss(itm_logits, &batch.itm, polarity)
        } else {
            (LossOutput::empty(&device), 0.0)
        };
        let (region, region_accuracy) = region.unwrap_or_else(|| (LossOutput::empty(&device), 0.0));
        let itc = match &self.itc {
            Some(head) if set.itc => {
                // Positives are the matched pairs; the other matched pairs are the negatives.
                let matched: Vec<i64> = (0..batch.itm.len())
                    .filter(|&r| batch.itm[r] == MatchLabel::Match)
                    .map(|r| r as i64)
                    .collect();
                if matched.len() < 2 {
                    LossOutput::empty(&device)
                } else {
                    let (t, i) = match unimodal.take() {
                        Some(u) => u,
                        None => self.unimodal(batch)?,
                    };
                    let rows = Tensor::<1, Int>::from_ints(matched.as_slice(), &device);
                    head.forward(i.select(0, rows.clone()), t.select(0, rows))
                        .loss
                }
            }
            _ => LossOutput::empty(&device),
        };
        let (vqa, vqa_accuracy) = match (&self.vqa, &batch.vqa) {
            (Some(head), Some(questions)) if set.vqa => self.vqa_objective(head, questions)?,
            _ => (LossOutput::empty(&device), 0.0),
        };
        let (grounding, grounding_accuracy, grounding_region_accuracy) =
            match (&self.grounding, &image) {
                (Some(head), Some(image)) if set.grounding && !batch.phrases.is_empty() => {
                    grounding(head, text.clone(), image.clone(), batch)
                }
                _ => (LossOutput::empty(&device), 0.0, 0.0),
            };
        let wra = match &image {
            Some(image) if set.wra && !batch.itm.is_empty() => wra_loss(text, image.clone(), batch),
            _ => LossOutput::empty(&device),
        };
        let mrfr = match (&self.mrfr, &image, &batch.unmasked_features) {
            (Some(head), Some(image), Some(original)) if set.mrfr => mrfr_loss(
                head.forward(image.clone(), self.encoder.region_projection().val()),
                original.clone(),
                &batch.region_positions,
            ),
            _ => LossOutput::empty(&device),
        };
        let (lm, lm_accuracy) = match host {
            Some(host) if set.lm => {
                let view = host.lm_view();
                if view.rows == 0 || view.lm_targets() == 0 {
                    (LossOutput::empty(&device), 0.0)
                } else {
                    let out = self
                        .caption_loss(&view, &view.to_device(&device))
                        .map_err(ObjectiveError::Other)?;
                    (out.loss, out.accuracy)
                }
            }
            None if set.lm => {
                return Err(ObjectiveError::Other(
                    "the LM objective needs the host batch".into(),
                ));
            }
            _ => (LossOutput::empty(&device), 0.0),
        };
        Ok(Objectives {
            mlm,
            itm,
            itm_accuracy,
            region,
            region_accuracy,
            itc,
            vqa,
            vqa_accuracy,
            grounding,
            grounding_accuracy,
            grounding_region_accuracy,
            wra,
            mrfr,
            mrc_kl,
            lm,
            lm_accuracy,
        })
    }

    /// Region-class logits `[B, V, classes]` of the joint pass's region states, from the
    /// encoder's region head (ViLBERT's, LXMERT's object head) or the run's own (VisualBERT);
    /// `None` without one.
    fn region_logits(&self, image: Tensor<3>) -> Option<Tensor<3>> {
        match &self.encoder {
            Encoder::ViLBert(m) => Some(m.region_head.forward(image)),
            Encoder::Lxmert(m) => m.obj_predict_head.as_ref()?.forward(image).obj,
            Encoder::VisualBert(_) => Some(self.region_head.as_ref()?.forward(image)),
        }
    }

    /// Classes of the region head (`None` without one).
    pub fn region_classes(&self) -> Option<usize> {
        let out = |l: &burn::nn::Linear| l.weight.dims()[1];
        match &self.encoder {
            Encoder::ViLBert(m) => Some(out(&m.region_head.decoder)),
            Encoder::Lxmert(m) => m.obj_predict_head.as_ref()?.obj.as_ref().map(out),
            Encoder::VisualBert(_) => self.region_head.as_ref().map(|h| out(&h.decoder)),
        }
    }

    /// The model after an optimiser step's constraints: the ITC temperature clamped into its
    /// range outside the graph (ALBEF).
    pub fn after_step(mut self) -> Self {
        self.itc = self.itc.map(ItcHead::clamp_temperature);
        self
    }

    /// Rows of the text position table (the longest text the model reads).
    pub fn max_positions(&self) -> usize {
        match &self.encoder {
            Encoder::VisualBert(m) => m
                .visual_bert
                .embeddings
                .text
                .position_embeddings
                .weight
                .dims()[0],
            Encoder::ViLBert(m) => m.bert.embeddings.position_embeddings.weight.dims()[0],
            Encoder::Lxmert(m) => m.lxmert.embeddings.position_embeddings.weight.dims()[0],
        }
    }

    /// Width of the region vectors the model reads.
    pub fn feature_width(&self) -> usize {
        self.encoder.region_projection().dims()[0]
    }

    /// Copies `source`'s word-embedding rows and MLM output biases into the first rows of this
    /// model's (whose vocabulary extends `source`'s: HF's `resize_token_embeddings`); the rows of
    /// the added tokens keep their fresh initialisation. Returns the names of the tensors
    /// resized.
    pub fn copy_vocabulary_rows(&mut self, source: &PretrainModel) -> Result<Vec<String>, String> {
        let (old, new) = (source.vocab_size(), self.vocab_size());
        if old > new {
            return Err(format!(
                "the vocabulary shrinks from {old} to {new} tokens; it may only grow"
            ));
        }
        fn rows<const D: usize>(target: &mut Param<Tensor<D>>, source: &Param<Tensor<D>>) {
            let fresh = target.val();
            let old = source.val().dims()[0];
            let new = fresh.dims()[0];
            let merged = Tensor::cat(vec![source.val(), fresh.narrow(0, old, new - old)], 0);
            *target = Param::from_tensor(merged.detach());
        }
        match (&mut self.encoder, &source.encoder) {
            (Encoder::VisualBert(t), Encoder::VisualBert(s)) => {
                rows(
                    &mut t.visual_bert.embeddings.text.word_embeddings.weight,
                    &s.visual_bert.embeddings.text.word_embeddings.weight,
                );
                rows(&mut t.mlm.bias, &s.mlm.bias);
            }
            (Encoder::ViLBert(t), Encoder::ViLBert(s)) => {
                rows(
                    &mut t.bert.embeddings.word_embeddings.weight,
                    &s.bert.embeddings.word_embeddings.weight,
                );
                rows(&mut t.mlm.bias, &s.mlm.bias);
            }
            (Encoder::Lxmert(t), Encoder::Lxmert(s)) => {
                rows(
                    &mut t.lxmert.embeddings.word_embeddings.weight,
                    &s.lxmert.embeddings.word_embeddings.weight,
                );
                rows(&mut t.mlm.bias, &s.mlm.bias);
            }
            _ => return Err("the source and the target are different architectures".into()),
        }
        Ok(match &self.encoder {
            Encoder::VisualBert(_) => vec![
                "encoder.VisualBert.visual_bert.embeddings.text.word_embeddings.weight".into(),
                "encoder.VisualBert.mlm.bias".into(),
            ],
            Encoder::ViLBert(_) => vec![
                "encoder.ViLBert.bert.embeddings.word_embeddings.weight".into(),
                "encoder.ViLBert.mlm.bias".into(),
            ],
            Encoder::Lxmert(_) => vec![
                "encoder.Lxmert.lxmert.embeddings.word_embeddings.weight".into(),
                "encoder.Lxmert.mlm.bias".into(),
            ],
        })
    }

    /// Rows of the word-embedding table (shared with the MLM decoder).
    pub fn vocab_size(&self) -> usize {
        self.encoder.word_embeddings().dims()[0]
    }
}

impl Encoder {
    /// The word-embedding table `[vocab, hidden]` (shared with the MLM decoder).
    pub fn word_embeddings(&self) -> &Param<Tensor<2>> {
        match self {
            Encoder::VisualBert(m) => &m.visual_bert.embeddings.text.word_embeddings.weight,
            Encoder::ViLBert(m) => &m.bert.embeddings.word_embeddings.weight,
            Encoder::Lxmert(m) => &m.lxmert.embeddings.word_embeddings.weight,
        }
    }

    /// The region input projection `[feature_dim, hidden]` (MRFR's tied output).
    pub fn region_projection(&self) -> &Param<Tensor<2>> {
        match self {
            Encoder::VisualBert(m) => &m.visual_bert.embeddings.visual_projection.weight,
            Encoder::ViLBert(m) => &m.bert.v_embeddings.image_embeddings.weight,
            Encoder::Lxmert(m) => &m.lxmert.encoder.visn_fc.visn_fc.weight,
        }
    }

    /// Width of the joint pooled vector (VQA head input).
    pub fn joint_width(&self) -> usize {
        match self {
            Encoder::VisualBert(m) => m.visual_bert.pooler.dense.weight.dims()[1],
            Encoder::ViLBert(m) => m.bert.t_pooler.dense.weight.dims()[1],
            Encoder::Lxmert(m) => m.lxmert.pooler.dense.weight.dims()[1],
        }
    }

    /// Widths of the image and text pooled vectors.
    pub fn pooled_widths(&self) -> (usize, usize) {
        match self {
            Encoder::VisualBert(m) => {
                let h = m.visual_bert.embeddings.text.word_embeddings.weight.dims()[1];
                (h, h)
            }
            Encoder::ViLBert(m) => {
                let v = m.bert.v_pooler.dense.weight.dims()[1];
                let t = m.bert.t_pooler.dense.weight.dims()[1];
                (v, t)
            }
            Encoder::Lxmert(m) => {
                let h = m.lxmert.pooler.dense.weight.dims()[1];
                (h, h)
            }
        }
    }
}

/// Softmax probability of the "match" class of each row.
fn match_probabilities(logits: Tensor<2>, polarity: Polarity) -> Vec<f32> {
    let index = polarity.index(MatchLabel::Match) as usize;
    tuwen_weights::host::computed(
        softmax(logits, 1).narrow(1, index, 1).into_data(),
        "ITM match probabilities",
    )
}

/// Why the objectives of a batch could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum ObjectiveError {
    /// The batch does not fit the model.
    #[error(transparent)]
    Input(#[from] InputError),
    /// Anything else (the LM pass).
    #[error("{0}")]
    Other(String),
}

/// `batch` with each mismatched row's caption replaced by an ITC-hard negative: a caption of
/// the batch sampled with probability softmax(ITC similarity) among those that do not describe
/// the row's image ([`HostBatch::negative_ok`]; ALBEF). Rows without a candidate keep their
/// random negative. The similarities are detached (mining is not trained).
fn with_hard_negatives(
    batch: &PretrainBatch,
    head: &ItcHead,
    text: Tensor<2>,
    image: Tensor<2>,
    seed: u64,
) -> PretrainBatch {
    let b = batch.itm.len();
    if b < 2 || batch.negative_ok.len() != b * b {
        return batch.clone();
    }
    let device = batch.input_ids.device();
    let similarity = head
        .forward(image.detach(), text.detach())
        .similarity
        .detach();
    let blocked: Vec<f32> = batch
        .negative_ok
        .iter()
        .map(|&ok| if ok { 0.0 } else { -1e4 })
        .collect();
    let similarity = similarity + Tensor::<2>::from_data(TensorData::new(blocked, [b, b]), &device);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let Some(picks) = hard_negatives(similarity, &mut rng) else {
        return batch.clone();
    };
    // Rows 0..b: the batch's own inputs; b..2b: the unmasked captions to swap in.
    let index: Vec<i64> = (0..b)
        .map(|i| {
            let j = picks[i];
            if batch.itm[i] == MatchLabel::Mismatch && batch.negative_ok[i * b + j] {
                (b + j) as i64
            } else {
                i as i64
            }
        })
        .collect();
    let index = Tensor::<1, Int>::from_ints(index.as_slice(), &device);
    let ids = Tensor::cat(vec![batch.input_ids.clone(), batch.caption_ids.clone()], 0);
    let attention = Tensor::cat(
        vec![batch.attention_mask.clone(), batch.attention_mask.clone()],
        0,
    );
    PretrainBatch {
        input_ids: ids.select(0, index.clone()),
        attention_mask: attention.select(0, index),
        ..batch.clone()
    }
}

/// Grounding loss (alignment CE + smooth-L1 + 1 - GIoU, mean over phrases), box accuracy
/// (IoU >= 0.5) and top-1 region accuracy of `batch.phrases`: a phrase is the mean of its
/// token states, matched against its row's region states.
fn grounding(
    head: &GroundingHead,
    text: Tensor<3>,
    image: Tensor<3>,
    batch: &PretrainBatch,
) -> (LossOutput, f32, f32) {
    let device = text.device();
    let [b, t, h] = text.dims();
    let n = batch.phrases.len();
    let mut average = vec![0.0f32; n * b * t];
    for (k, p) in batch.phrases.iter().enumerate() {
        let w = 1.0 / (p.end - p.start) as f32;
        for j in p.start..p.end {
            average[k * b * t + p.row * t + j] = w;
        }
    }
    let average = Tensor::<2>::from_data(TensorData::new(average, [n, b * t]), &device);
    let phrases = average.matmul(text.reshape([b * t, h]));
    let rows: Vec<i64> = batch.phrases.iter().map(|p| p.row as i64).collect();
    let rows = Tensor::<1, Int>::from_ints(rows.as_slice(), &device);
    let gold: Vec<i64> = batch.phrases.iter().map(|p| p.region as i64).collect();
    let boxes: Vec<f32> = batch.phrases.iter().flat_map(|p| p.bbox).collect();
    let out = head.forward(GroundingInput {
        phrases,
        regions: image.select(0, rows.clone()),
        region_boxes: batch
            .locations
            .clone()
            .select(0, rows.clone())
            .narrow(2, 0, 4),
        region_pad: batch.region_mask.clone().select(0, rows).equal_elem(0),
        gold_region: &gold,
        gold_boxes: Tensor::<2>::from_data(TensorData::new(boxes.clone(), [n, 4]), &device),
    });
    let predicted: Vec<f32> =
        tuwen_weights::host::computed(out.predicted.clone().into_data(), "grounding boxes");
    let top: Vec<i64> =
        tuwen_weights::host::computed(out.top_region.clone().into_data(), "grounding alignment");
    let hits = (0..n)
        .filter(|&i| iou(&predicted[i * 4..i * 4 + 4], &boxes[i * 4..i * 4 + 4]) >= 0.5)
        .count();
    let aligned = top.iter().zip(&gold).filter(|(a, b)| a == b).count();
    let loss = out.alignment.loss + out.box_l1.loss + out.box_giou.loss;
    (
        LossOutput {
            loss,
            count: n,
            empty: false,
        },
        hits as f32 / n as f32,
        aligned as f32 / n as f32,
    )
}

/// IoU of two xyxy boxes.
fn iou(a: &[f32], b: &[f32]) -> f32 {
    let iw = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let ih = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = iw * ih;
    let area = |x: &[f32]| (x[2] - x[0]).max(0.0) * (x[3] - x[1]).max(0.0);
    inter / (area(a) + area(b) - inter).max(1e-9)
}

/// UNITER's WRA: the IPOT optimal-transport distance between each pair's token and region
/// states (padding excluded), `(sum over matched pairs - sum over mismatched pairs) / pairs`.
fn wra_loss(text: Tensor<3>, image: Tensor<3>, batch: &PretrainBatch) -> LossOutput {
    let device = text.device();
    let b = batch.itm.len();
    let text_pad = batch.attention_mask.clone().equal_elem(0);
    let region_pad = batch.region_mask.clone().equal_elem(0);
    let distance = ot_distance(text, image, text_pad, region_pad, &IpotConfig::default());
    let sign: Vec<f32> = batch
        .itm
        .iter()
        .map(|&l| if l == MatchLabel::Match { 1.0 } else { -1.0 })
        .collect();
    let sign = Tensor::<1>::from_floats(sign.as_slice(), &device);
    LossOutput {
        loss: (distance * sign).sum().div_scalar(b as f32).reshape([1]),
        count: b,
        empty: false,
    }
}
