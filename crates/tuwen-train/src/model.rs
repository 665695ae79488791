//! The models a run trains, behind one type so the loop, checkpoints and evaluation are shared:
//! single-stream VisualBERT (MLM + ITM) and two-stream ViLBERT (MLM + ITM + masked region
//! classification).

use burn::module::Module;
use burn::tensor::Device;
use tuwen_fusion::visual_bert::LocationEncoding;
use tuwen_fusion::{
    BertConfig, ViLBertConfig, ViLBertForPreTraining, VisualBertConfig, VisualBertForPreTraining,
};
use tuwen_objectives::LossOutput;
use tuwen_objectives::itm::{Polarity, itm_loss};
use tuwen_objectives::mlm::{MlmOutput, mlm_loss};
use tuwen_objectives::mrm::mrc_label_loss;

use crate::batch::{PretrainBatch, REGION_CLASSES};
use crate::config::{Architecture, ModelConfig};

/// A pretraining model of either family. (Held once per run, so the size difference between
/// the variants does not matter; boxing would complicate the derived record.)
#[derive(Module, Debug)]
#[allow(clippy::large_enum_variant)]
pub enum PretrainModel {
    /// Single stream.
    VisualBert(VisualBertForPreTraining),
    /// Two streams with co-attention.
    ViLBert(ViLBertForPreTraining),
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
    /// ITM match probability per row (for retrieval re-ranking).
    pub match_scores: Vec<f32>,
    /// Masked region classification (empty without region masking).
    pub region: LossOutput,
    /// Region classification accuracy at the masked regions.
    pub region_accuracy: f32,
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
        v_target_size: REGION_CLASSES,
        bi_hidden_size: cfg.hidden_size.max(cfg.v_hidden_size),
        bi_num_attention_heads: cfg.heads,
        ..ViLBertConfig::default()
    }
}

impl PretrainModel {
    /// A randomly initialised model (draws from `device`'s generator: seed it first).
    pub fn init(
        cfg: &ModelConfig,
        vocab: usize,
        feature_dim: usize,
        max_text_len: usize,
        device: &Device,
    ) -> Self {
        match cfg.architecture {
            Architecture::VisualBert => Self::VisualBert(
                visual_bert_config(cfg, None, vocab, feature_dim, max_text_len)
                    .init_pretraining(device),
            ),
            Architecture::Vilbert => {
                let mut m =
                    vilbert_config(cfg, vocab, feature_dim, max_text_len).init_pretraining(device);
                // The reference fixes 0.1 before the ITM head; follow the configured dropout.
                m.itm_dropout = burn::nn::DropoutConfig::new(cfg.dropout).init();
                Self::ViLBert(m)
            }
        }
    }

    /// Every objective of the model's family on `batch`.
    pub fn objectives(&self, batch: &PretrainBatch) -> Objectives {
        let [_, len] = batch.input_ids.dims();
        let device = batch.input_ids.device();
        let (mlm, itm_logits, polarity, region) = match self {
            Self::VisualBert(model) => {
                let out = model.visual_bert.forward(batch.visual_bert_input());
                let text = out.last_hidden_state.narrow(1, 0, len);
                let words = model
                    .visual_bert
                    .embeddings
                    .text
                    .word_embeddings
                    .weight
                    .val();
                let mlm = mlm_loss(
                    &model.mlm,
                    text,
                    words,
                    &batch.mlm_positions,
                    &batch.mlm_labels,
                    None,
                );
                let logits = model.sentence_image.forward(out.pooler_output);
                (mlm, logits, Polarity::VISUAL_BERT, None)
            }
            Self::ViLBert(model) => {
                let out = model.bert.forward(batch.vilbert_input());
                let words = model.bert.embeddings.word_embeddings.weight.val();
                let mlm = mlm_loss(
                    &model.mlm,
                    out.sequence_output_t.clone(),
                    words,
                    &batch.mlm_positions,
                    &batch.mlm_labels,
                    None,
                );
                let pooled = match model.fusion {
                    tuwen_fusion::vilbert::PooledFusion::Mul => {
                        out.pooled_output_t.clone() * out.pooled_output_v.clone()
                    }
                    tuwen_fusion::vilbert::PooledFusion::Sum => {
                        out.pooled_output_t.clone() + out.pooled_output_v.clone()
                    }
                };
                let logits = model.itm.forward(model.itm_dropout.forward(pooled));
                let region = (!batch.region_positions.is_empty()).then(|| {
                    mrc_label_loss(
                        model.region_head.forward(out.sequence_output_v),
                        &batch.region_labels,
                        &batch.region_positions,
                    )
                });
                (mlm, logits, Polarity::VILBERT, region)
            }
        };
        let match_index = polarity.index(tuwen_objectives::itm::MatchLabel::Match) as usize;
        let match_scores: Vec<f32> = burn::tensor::activation::softmax(itm_logits.clone(), 1)
            .narrow(1, match_index, 1)
            .into_data()
            .try_into_vec_as()
            .unwrap_or_default();
        let (itm, itm_accuracy) = itm_loss(itm_logits, &batch.itm, polarity);
        let (region, region_accuracy) = region.unwrap_or_else(|| (LossOutput::empty(&device), 0.0));
        Objectives {
            mlm,
            itm,
            itm_accuracy,
            match_scores,
            region,
            region_accuracy,
        }
    }

    /// The word-embedding table (shared with the MLM decoder).
    pub fn vocab_size(&self) -> usize {
        match self {
            Self::VisualBert(m) => m.visual_bert.embeddings.text.word_embeddings.weight.dims()[0],
            Self::ViLBert(m) => m.bert.embeddings.word_embeddings.weight.dims()[0],
        }
    }
}
