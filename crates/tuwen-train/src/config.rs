//! The configuration of a training run: every hyper-parameter, read from TOML (any key may be
//! left out: it takes the default run's value) and saved resolved as `config.toml` in the run
//! directory.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::schedule::Decay;
use tuwen_fusion::precision::Precision;

/// A whole run: `[run]`, `[optim]`, `[model]`, `[data]`, `[eval]`, `[objectives]`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Steps, batch, devices, logging.
    pub run: RunConfig,
    /// AdamW, schedule, clipping.
    pub optim: OptimConfig,
    /// Architecture and initialisation.
    pub model: ModelConfig,
    /// Data and objectives' inputs.
    pub data: DataConfig,
    /// Held-out evaluation and checkpoint selection.
    pub eval: EvalConfig,
    /// Which pretraining objectives train, with their weights.
    pub objectives: ObjectivesConfig,
    /// A downstream task trained from a pretrained run (`tuwen finetune`); absent when
    /// pretraining.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finetune: Option<FinetuneConfig>,
}

/// The downstream task of a fine-tuning run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    /// Visual question answering: an answer classifier over the joint pooled vector, soft-score
    /// BCE (BUTD / LXMERT / VisualBERT).
    Vqa,
    /// Image captioning: next-token prediction of the scenes' captions by the captioner
    /// `finetune.captioner` selects; selected on held-out CIDEr-D.
    Caption,
    /// Image-text retrieval: ITC + ITM on the scenes' matched and mismatched pairs (no
    /// masking); selected on held-out Recall@1. Needs an ITC head: the source run's, or a fresh
    /// one of `model.itc_dim`.
    Retrieval,
}

/// How a captioning run generates text (the two ways of the unified VLP paper).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Captioner {
    /// The pretrained single-stream encoder itself under the seq2seq attention mask
    /// (bidirectional over the regions, causal over the caption; regions never see the caption);
    /// the tied MLM head predicts the next token (VLP, Oscar). VisualBERT runs only.
    Unified,
    /// The pretrained encoder reads the image; a new Transformer decoder
    /// (`finetune.decoder_layers` layers of causal self-attention + cross-attention to the
    /// encoder's states) writes the caption (Seq2Seq).
    Decoder,
}

/// Where the questions of a VQA fine-tuning run come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VqaDataset {
    /// The built-in scenes' generated questions (one answer each).
    Scenes,
    /// easy-VQA (`cargo xtask assets`: PNG images, one answer per question); `train_*` /
    /// `test_*` paths default to the asset.
    EasyVqa,
    /// VQA v2 files: `*_questions` + `*_annotations` JSON and an image folder (COCO file names
    /// `COCO_<split>_<12-digit id>.jpg`, or `<id>.jpg` / `<id>.png`).
    VqaV2,
}

/// `[finetune]`: the task, its data and the learning rates of the encoder and the new heads.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FinetuneConfig {
    /// Where the weights come from: a tuwen run directory (its `best` checkpoint) or a HF BERT
    /// checkpoint directory (`config.json`, `model.safetensors`, `vocab.txt`); absent: from
    /// scratch. `tuwen finetune --from` sets it.
    pub from: Option<String>,
    /// The task.
    pub task: Task,
    /// VQA data.
    pub dataset: VqaDataset,
    /// Training questions (easy-VQA `questions.json`, VQA v2 questions JSON).
    pub train_questions: Option<String>,
    /// VQA v2: training annotations JSON.
    pub train_annotations: Option<String>,
    /// Training images folder.
    pub train_images: Option<String>,
    /// Test questions (reported once, at the end, with the model selected on validation).
    pub test_questions: Option<String>,
    /// VQA v2: test annotations JSON.
    pub test_annotations: Option<String>,
    /// Test images folder.
    pub test_images: Option<String>,
    /// Training images held out for validation (model selection): the last ones by id.
    pub validation_images: usize,
    /// Answer vocabulary: the most frequent training answers (ties by name); saved as
    /// `answers.txt` in the run directory.
    pub answers: usize,
    /// Image files: the regions are the whole image, the foreground boxes and a `grid x grid`
    /// tiling of it (the built-in scenes use their objects' boxes).
    pub grid: usize,
    /// Image files: foreground boxes (connected components differing from the background
    /// colour, largest first) added as regions, like the scenes' object boxes; 0: none.
    pub object_boxes: usize,
    /// Learning rate of the pretrained encoder relative to `optim.learning_rate` (the new heads
    /// get the full rate).
    pub encoder_lr_ratio: f64,
    /// Encoder layers (from the embeddings up) kept frozen, embeddings included when > 0.
    pub freeze_layers: usize,
    /// Starting from a tuwen run with a whole-word vocabulary (not initialised from a BERT
    /// checkpoint): add the training questions' words it lacks as new tokens (new embedding
    /// rows, HF's `add_tokens` + `resize_token_embeddings`), instead of spelling them out in
    /// characters.
    pub extend_vocabulary: bool,
    /// Captioning: which captioner is trained.
    pub captioner: Captioner,
    /// Captioning with `captioner = "decoder"`: layers of the new caption decoder.
    pub decoder_layers: usize,
    /// Retrieval: where ITM's mismatched captions come from (`"hard"`: ITC-hard negatives mined
    /// in the batch, ALBEF).
    pub negatives: Negatives,
    /// Captioning: longest generated caption in tokens, `[CLS]` (the start token) included
    /// (HF `max_length`) — held-out evaluation decodes greedily up to it.
    pub max_caption_len: usize,
}

impl Default for FinetuneConfig {
    fn default() -> Self {
        Self {
            from: None,
            task: Task::Vqa,
            dataset: VqaDataset::Scenes,
            train_questions: None,
            train_annotations: None,
            train_images: None,
            test_questions: None,
            test_annotations: None,
            test_images: None,
            validation_images: 200,
            answers: 3129,
            grid: 3,
            object_boxes: 2,
            encoder_lr_ratio: 0.2,
            freeze_layers: 0,
            extend_vocabulary: true,
            captioner: Captioner::Unified,
            decoder_layers: 2,
            max_caption_len: 20,
            negatives: Negatives::Random,
        }
    }
}

/// `[run]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunConfig {
    /// Seed of the data, the initialisation and every random draw of a step.
    pub seed: u64,
    /// Optimiser steps (pretraining counts steps, not epochs).
    pub steps: usize,
    /// Scenes per optimiser step, over all micro-batches and devices.
    pub batch_size: usize,
    /// Micro-batches per device per step whose gradients are accumulated (memory for time).
    pub grad_accum_steps: usize,
    /// Log training losses every this many steps.
    pub log_every: usize,
    /// Non-finite steps in a row before the run aborts.
    pub max_nan_steps: usize,
    /// Threads that build batches ahead of the training step (0: build them inline).
    pub loader_threads: usize,
    /// Precision of the linear layers' products in the training steps: `"f32"`, or `"bf16"`
    /// (bf16 operands, f32 sums, forward and backward; f32 master weights, optimiser, loss and
    /// everything else: `tuwen_fusion::precision`). bf16 trains on Flex on a CPU with
    /// AVX512-BF16 and is refused elsewhere. Evaluation runs in f32.
    pub precision: Precision,
}

impl Default for RunConfig {
    fn default() -> Self {
        Self {
            seed: 1,
            steps: 6000,
            batch_size: 32,
            grad_accum_steps: 1,
            log_every: 25,
            max_nan_steps: 10,
            loader_threads: 1,
            precision: Precision::F32,
        }
    }
}

/// `[optim]`: AdamW with decoupled decay outside LayerNorm / biases / embeddings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OptimConfig {
    /// Peak learning rate.
    pub learning_rate: f64,
    /// Linear warmup steps.
    pub warmup_steps: usize,
    /// Decay after warmup: `linear`, `cosine` or `constant`.
    pub decay: Decay,
    /// Final learning rate as a fraction of the peak.
    pub final_lr_ratio: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
    /// Global gradient-norm limit (0: no clipping).
    pub max_grad_norm: f32,
    /// Adam beta1.
    pub beta1: f32,
    /// Adam beta2.
    pub beta2: f32,
    /// Adam epsilon (PyTorch's default).
    pub epsilon: f32,
}

impl Default for OptimConfig {
    fn default() -> Self {
        Self {
            learning_rate: 5e-4,
            warmup_steps: 100,
            decay: Decay::Linear,
            final_lr_ratio: 0.05,
            weight_decay: 0.01,
            max_grad_norm: 1.0,
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-8,
        }
    }
}

/// The encoder family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Architecture {
    /// Single stream: text and regions in one BERT (VisualBERT).
    VisualBert,
    /// Two streams joined by co-attention (ViLBERT).
    Vilbert,
    /// Language and relational (region) layers, then cross-modality layers (LXMERT).
    Lxmert,
}

/// `[model]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    /// Encoder family.
    pub architecture: Architecture,
    /// Text hidden width (ignored with `init`: the checkpoint's width is used).
    pub hidden_size: usize,
    /// Text layers (ignored with `init`).
    pub layers: usize,
    /// Text attention heads (ignored with `init`).
    pub heads: usize,
    /// Feed-forward width (0: 4 x hidden).
    pub intermediate_size: usize,
    /// ViLBERT: image-stream width (LXMERT's streams are both `hidden_size` wide).
    pub v_hidden_size: usize,
    /// ViLBERT: image-stream layers; LXMERT: relational (region) layers.
    pub v_layers: usize,
    /// ViLBERT: co-attention layers (each joins the last `co_layers` layers of both streams);
    /// LXMERT: cross-modality layers after the `layers` language and `v_layers` relational ones.
    pub co_layers: usize,
    /// Dropout of hidden states and attention probabilities.
    pub dropout: f64,
    /// Width of the image-text contrastive (ITC) space over unimodal passes (0: no ITC and no
    /// retrieval evaluation).
    pub itc_dim: usize,
    /// VisualBERT only: initialise the text Transformer from a BERT checkpoint: `minilm` (the
    /// `cargo xtask assets` MiniLM) or a path to a HF BERT directory (`config.json`,
    /// `model.safetensors`, `vocab.txt`). Its vocabulary replaces the scene vocabulary.
    pub init: Option<String>,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            architecture: Architecture::VisualBert,
            hidden_size: 128,
            layers: 4,
            heads: 4,
            intermediate_size: 0,
            v_hidden_size: 128,
            v_layers: 2,
            co_layers: 2,
            dropout: 0.0,
            itc_dim: 0,
            init: None,
        }
    }
}

/// Region features of the scenes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Features {
    /// Each box's pixels average-pooled to a `pool x pool` RGB grid.
    Pixels,
    /// RoIAlign over ImageNet MobileNetV2 feature maps (1280-d; `cargo xtask assets`).
    MobilenetV2,
}

/// Where the image-caption pairs come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The built-in scene generator.
    Scenes,
    /// A caption file (`data.captions`) with region features from a feature store
    /// (`data.store`, written by `tuwen extract-regions`).
    Store,
}

/// Caption file formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CaptionFormat {
    /// COCO `captions_*.json`.
    Coco,
    /// Karpathy split JSON (`dataset_coco.json`, `dataset_flickr30k.json`).
    Karpathy,
    /// Conceptual-Captions-style TSV: caption, image (malformed lines skipped and counted).
    CcTsv,
}

/// `[data]`: the data source and the objectives' inputs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataConfig {
    /// Where the pairs come from.
    pub source: Source,
    /// `store`: the caption file.
    pub captions: Option<String>,
    /// `store`: its format.
    pub captions_format: CaptionFormat,
    /// `store`: the feature store directory.
    pub store: Option<String>,
    /// `store`, formats without splits (COCO captions, CC-TSV): images held out, the last ones
    /// by id, never trained on — the first half validation (model selection), the rest test.
    /// Karpathy files use their own `split` fields instead.
    pub held_out_images: usize,
    /// Region features.
    pub features: Features,
    /// Pooling grid side of `pixels` features.
    pub pool: usize,
    /// MLM: fraction of caption tokens masked (BERT's 80/10/10 split).
    pub mask_prob: f64,
    /// ITM: probability that a pair's caption comes from another scene.
    pub mismatch_prob: f64,
    /// Masked region classification (object shape x colour): fraction of regions masked
    /// (0 disables the objective; ViLBERT only).
    pub region_mask_prob: f64,
    /// Weight of the region loss in the total.
    pub region_loss_weight: f64,
    /// Weight of VQA (one question per scene through an answer head, soft-score BCE, as
    /// LXMERT's QA pretraining); 0 disables it and its evaluation.
    pub vqa_weight: f64,
    /// Maximum caption length in tokens, [CLS] and [SEP] included.
    pub max_text_len: usize,
    /// Training scenes whose captions and questions make the vocabulary.
    pub vocab_scenes: u64,
    /// Distinct training scenes (0: a new scene for every example). With CNN features they are
    /// extracted once and cached in memory.
    pub train_scenes: u64,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            source: Source::Scenes,
            captions: None,
            captions_format: CaptionFormat::Coco,
            store: None,
            held_out_images: 500,
            features: Features::Pixels,
            pool: 4,
            mask_prob: 0.15,
            mismatch_prob: 0.5,
            region_mask_prob: 0.0,
            region_loss_weight: 1.0,
            vqa_weight: 0.0,
            max_text_len: 24,
            vocab_scenes: 2000,
            train_scenes: 0,
        }
    }
}

/// One objective of `[objectives]`: on or off, and its weight in the weighted sum of losses.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Objective {
    /// Whether the objective trains.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Its weight in the total loss.
    #[serde(default = "one")]
    pub weight: f64,
}

fn yes() -> bool {
    true
}

fn one() -> f64 {
    1.0
}

impl Objective {
    const fn on(weight: f64) -> Self {
        Self {
            enabled: true,
            weight,
        }
    }

    const fn off(weight: f64) -> Self {
        Self {
            enabled: false,
            weight,
        }
    }
}

/// Where ITM's mismatched captions come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Negatives {
    /// Another scene's caption drawn uniformly (`data.mismatch_prob` of the pairs).
    Random,
    /// The same pairs, each mismatched caption replaced by one of the batch's captions sampled
    /// with probability softmax(ITC similarity) over the captions that do not describe the
    /// image (ALBEF); needs `model.itc_dim > 0`.
    Hard,
}

/// `[objectives] itm`: an [`Objective`] with the kind of negatives.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ItmObjective {
    /// Whether ITM trains.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Its weight.
    #[serde(default = "one")]
    pub weight: f64,
    /// Random or ITC-hard negatives.
    #[serde(default = "random")]
    pub negatives: Negatives,
}

fn random() -> Negatives {
    Negatives::Random
}

/// `[objectives]`: every pretraining objective, on or off, with its weight (the total loss is
/// the weighted sum). Leaving the section out trains what runs always trained: MLM + ITM, plus
/// region classification when `data.region_mask_prob > 0`, ITC when `model.itc_dim > 0` and VQA
/// when `data.vqa_weight > 0`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ObjectivesConfig {
    /// Masked language modelling (matched pairs).
    pub mlm: Objective,
    /// Image-text matching.
    pub itm: ItmObjective,
    /// Phrase -> region alignment (cross-entropy) and box regression (smooth-L1 + GIoU) from
    /// the caption phrases linked to one object (the scenes' phrase links; matched pairs).
    pub grounding: Objective,
    /// UNITER's word-region alignment: the optimal-transport distance between the joint pass's
    /// token and region states, lowered for matched pairs and raised for mismatched ones
    /// (needs equal text and region widths).
    pub wra: Objective,
    /// Masked region feature regression (MSE to the unmasked feature at masked regions, the
    /// head tied to the region input projection; needs `data.region_mask_prob > 0`).
    pub mrfr: Objective,
    /// Masked region classification (ViLBERT's region head, or for VisualBERT a region head
    /// over the joint pass's region states, LXMERT's object head; cross-entropy against the
    /// scene classes or the argmax of the store's class distributions; active when
    /// `data.region_mask_prob > 0`). `data.region_loss_weight` multiplies its weight.
    pub mrc: Objective,
    /// Masked region classification against the whole class distribution the region extractor
    /// stored for each region: `KL(stored || predicted)` at the masked regions (ViLBERT, UNITER's
    /// MRC-kl). Same head as `mrc`; feature-store data (`data.source = "store"`) with class
    /// distributions and `data.region_mask_prob > 0`.
    pub mrc_kl: Objective,
    /// Image-text contrastive learning (active when `model.itc_dim > 0`).
    pub itc: Objective,
    /// Next-token prediction of the matched captions by the same single-stream encoder under
    /// the unified seq2seq mask (VLP; VisualBERT only).
    pub lm: Objective,
    /// VQA on the scenes' questions (an answer head on the fused pooled vector); the same switch
    /// as `data.vqa_weight`, which it sets (give one of the two; absent: `data.vqa_weight`
    /// decides).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vqa: Option<Objective>,
    /// How the objectives combine: `sum` (their weighted sum every step) or `sample` (one
    /// objective per step, drawn with probability proportional to its weight: UNITER's task
    /// mix).
    pub mixing: Mixing,
}

/// How the objectives of a step combine.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mixing {
    /// The weighted sum of every objective, every step.
    #[default]
    Sum,
    /// One objective per step, drawn by weight from those the run can train; it trains alone,
    /// unweighted. The draw is a function of (seed, step), so every micro-batch and device of
    /// a step, and a resumed run, draw the same.
    Sample,
}

impl Default for ObjectivesConfig {
    fn default() -> Self {
        Self {
            mlm: Objective::on(1.0),
            itm: ItmObjective {
                enabled: true,
                weight: 1.0,
                negatives: Negatives::Random,
            },
            grounding: Objective::off(1.0),
            wra: Objective::off(0.1),
            mrfr: Objective::off(1.0),
            mrc: Objective::on(1.0),
            mrc_kl: Objective::off(1.0),
            itc: Objective::on(1.0),
            lm: Objective::off(1.0),
            vqa: None,
            mixing: Mixing::Sum,
        }
    }
}

impl ObjectivesConfig {
    /// Each objective's name, whether it is switched on and its weight.
    pub fn all(&self) -> [(&'static str, bool, f64); 10] {
        [
            ("mlm", self.mlm.enabled, self.mlm.weight),
            ("itm", self.itm.enabled, self.itm.weight),
            ("grounding", self.grounding.enabled, self.grounding.weight),
            ("wra", self.wra.enabled, self.wra.weight),
            ("mrfr", self.mrfr.enabled, self.mrfr.weight),
            ("mrc", self.mrc.enabled, self.mrc.weight),
            ("mrc_kl", self.mrc_kl.enabled, self.mrc_kl.weight),
            ("itc", self.itc.enabled, self.itc.weight),
            ("lm", self.lm.enabled, self.lm.weight),
            (
                "vqa",
                self.vqa.is_some_and(|v| v.enabled),
                self.vqa.map_or(1.0, |v| v.weight),
            ),
        ]
    }
}

/// Checkpoint selection metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BestMetric {
    /// The mean of held-out ITM accuracy and MLM accuracy on colour and shape words (the
    /// default): a pretraining run is kept where both are good, not where one of them peaks on
    /// its validation noise. An objective that is off counts 0, which changes no choice.
    ItmMlmMean,
    /// Held-out ITM accuracy.
    ItmAccuracy,
    /// Held-out MLM accuracy on colour and shape words.
    MlmColorShapeAccuracy,
    /// Mean of image->text and text->image Recall@1 (needs `model.itc_dim`).
    RetrievalR1,
    /// Held-out VQA accuracy (needs `data.vqa_weight`).
    VqaAccuracy,
    /// Held-out CIDEr-D of greedy captions (captioning runs).
    Cider,
}

/// `[eval]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvalConfig {
    /// Evaluate and checkpoint every this many steps.
    pub every: usize,
    /// Held-out scenes for ITM / MLM accuracy.
    pub scenes: usize,
    /// Held-out images (one caption each) for zero-shot retrieval (needs `model.itc_dim`).
    pub retrieval_images: usize,
    /// Candidates per query re-ranked by ITM after ITC ranking.
    pub retrieval_top_k: usize,
    /// Which metric picks the `best` checkpoint.
    pub best: BestMetric,
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self {
            every: 500,
            scenes: 256,
            retrieval_images: 100,
            retrieval_top_k: 16,
            best: BestMetric::ItmMlmMean,
        }
    }
}

/// A configuration file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read or written (the error names it).
    #[error(transparent)]
    Io(#[from] tuwen_io::IoError),
    /// Not valid TOML for a [`TrainConfig`] (unknown keys included).
    #[error("{path}: {reason}")]
    Parse {
        /// The file.
        path: String,
        /// Parser message (with line and column).
        reason: String,
    },
    /// Values that cannot train.
    #[error("{path}: {reason}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
}

impl TrainConfig {
    /// Parses TOML text; `source` names it in errors.
    pub fn from_toml(text: &str, source: &str) -> Result<Self, ConfigError> {
        let parse = |reason: String| ConfigError::Parse {
            path: source.to_string(),
            reason,
        };
        let de = toml::Deserializer::parse(text).map_err(|e| parse(e.to_string()))?;
        // serde_path_to_error names the key of a value of the wrong type or range (toml alone
        // says only "invalid value: integer `-5`, expected usize").
        let mut config: Self = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner().to_string();
            parse(if key == "." {
                inner
            } else {
                format!("key `{key}`: {inner}")
            })
        })?;
        config
            .resolve_vqa()
            .and_then(|()| config.validate())
            .map_err(|reason| ConfigError::Invalid {
                path: source.to_string(),
                reason,
            })?;
        Ok(config)
    }

    /// Switches VQA on with `weight` (0: off), in both `data.vqa_weight` and `objectives.vqa`.
    pub fn set_vqa_weight(&mut self, weight: f64) {
        self.data.vqa_weight = weight;
        self.objectives.vqa = (weight > 0.0).then_some(Objective::on(weight));
    }

    /// This configuration with `objectives.vqa` and `data.vqa_weight` resolved into one switch
    /// ([`TrainConfig::from_toml`] does this; a configuration built in code needs it once).
    pub fn resolved(&self) -> Result<Self, String> {
        let mut out = self.clone();
        out.resolve_vqa()?;
        Ok(out)
    }

    /// `objectives.vqa` and `data.vqa_weight` are one switch: either sets the other, and a
    /// disagreement is refused.
    fn resolve_vqa(&mut self) -> Result<(), String> {
        let weight = self.data.vqa_weight;
        match self.objectives.vqa {
            Some(o) if o.enabled && o.weight <= 0.0 => {
                Err("objectives.vqa is on with weight 0: switch it off or give a weight".into())
            }
            Some(o) if o.enabled && weight > 0.0 && weight != o.weight => Err(format!(
                "objectives.vqa (weight {}) and data.vqa_weight ({weight}) disagree; give one",
                o.weight
            )),
            Some(o) if o.enabled => {
                self.data.vqa_weight = o.weight;
                Ok(())
            }
            Some(_) if weight > 0.0 => Err(format!(
                "objectives.vqa is off but data.vqa_weight = {weight} switches VQA on; give one"
            )),
            Some(_) => Ok(()),
            None => {
                self.objectives.vqa = (weight > 0.0).then_some(Objective::on(weight));
                Ok(())
            }
        }
    }

    /// Reads a TOML file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = tuwen_io::read_to_string(path)?;
        Self::from_toml(&text, &path.display().to_string())
    }

    /// The resolved configuration as TOML (every key written).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a TrainConfig is always serialisable")
    }

    /// Checks `[objectives]` against the rest of the configuration.
    fn validate_objectives(&self) -> Result<(), String> {
        let o = &self.objectives;
        for (name, _, weight) in o.all() {
            if !(weight.is_finite() && weight >= 0.0) {
                return Err(format!(
                    "objectives.{name}.weight = {weight} must be finite and >= 0"
                ));
            }
        }
        if o.all().iter().all(|&(_, on, _)| !on) {
            return Err("[objectives] switches every objective off: nothing would train".into());
        }
        let m = &self.model;
        if o.itm.negatives == Negatives::Hard && !(o.itm.enabled && o.itc.enabled && m.itc_dim > 0)
        {
            return Err(
                "objectives.itm.negatives = \"hard\" mines ITM's negatives from the ITC head it \
                 trains alongside (ALBEF): it needs objectives.itm and objectives.itc on and \
                 model.itc_dim > 0"
                    .into(),
            );
        }
        // A pretraining run selects its checkpoint on a metric an objective that is off would
        // leave at 0 (fine-tuning runs select on their task's metric).
        let selects_on_off = match self.eval.best {
            BestMetric::ItmMlmMean => (!o.itm.enabled && !o.mlm.enabled)
                .then_some("objectives.itm and objectives.mlm, which are both off"),
            BestMetric::ItmAccuracy => (!o.itm.enabled).then_some("objectives.itm, which is off"),
            BestMetric::MlmColorShapeAccuracy => {
                (!o.mlm.enabled).then_some("objectives.mlm, which is off")
            }
            _ => None,
        };
        if let (Some(name), None) = (selects_on_off, &self.finetune) {
            return Err(format!(
                "eval.best = {:?} is measured by {name}: choose another eval.best",
                self.eval.best
            ));
        }
        if o.mrc_kl.enabled && self.data.source != Source::Store {
            return Err(
                "objectives.mrc_kl learns the class distributions a region extractor stored \
                 (data.source = \"store\"); the scenes have class labels only: use \
                 objectives.mrc"
                    .into(),
            );
        }
        if o.mrc_kl.enabled && self.data.region_mask_prob <= 0.0 {
            return Err(
                "objectives.mrc_kl classifies masked regions: set data.region_mask_prob > 0 \
                 (e.g. 0.15)"
                    .into(),
            );
        }
        if o.mrfr.enabled && self.data.region_mask_prob <= 0.0 {
            return Err(
                "objectives.mrfr regresses masked regions: set data.region_mask_prob > 0 \
                 (e.g. 0.15)"
                    .into(),
            );
        }
        if o.lm.enabled && m.architecture != Architecture::VisualBert {
            return Err(
                "objectives.lm runs the single-stream encoder under the seq2seq mask: \
                 architecture = \"visual_bert\" only"
                    .into(),
            );
        }
        if o.wra.enabled
            && m.architecture == Architecture::Vilbert
            && m.v_hidden_size != m.hidden_size
        {
            return Err(format!(
                "objectives.wra compares token and region states by cosine: with vilbert, \
                 model.v_hidden_size ({}) must equal model.hidden_size ({})",
                m.v_hidden_size, m.hidden_size
            ));
        }
        if o.grounding.enabled && self.data.source == Source::Store {
            return Err(
                "objectives.grounding needs phrase -> box links, which caption files do not \
                 have (only the scenes do): switch it off for data.source = \"store\""
                    .into(),
            );
        }
        Ok(())
    }

    /// Checks values the loop cannot run with.
    pub fn validate(&self) -> Result<(), String> {
        let r = &self.run;
        let o = &self.optim;
        let optim_ok = o.learning_rate.is_finite()
            && o.learning_rate > 0.0
            && (0.0..1.0).contains(&o.beta1)
            && (0.0..1.0).contains(&o.beta2);
        if !optim_ok {
            return Err("optim.learning_rate must be > 0 and optim.beta1/beta2 in [0, 1)".into());
        }
        if r.steps == 0 || r.batch_size == 0 || r.grad_accum_steps == 0 {
            return Err("run.steps, run.batch_size and run.grad_accum_steps must be >= 1".into());
        }
        if r.batch_size < r.grad_accum_steps {
            return Err(format!(
                "run.batch_size {} is smaller than run.grad_accum_steps {}: a micro-batch would be empty",
                r.batch_size, r.grad_accum_steps
            ));
        }
        if self.eval.every == 0 {
            return Err("eval.every must be >= 1".into());
        }
        let m = &self.model;
        if m.heads == 0 || !m.hidden_size.is_multiple_of(m.heads) {
            return Err(format!(
                "model.hidden_size {} is not a multiple of model.heads {}",
                m.hidden_size, m.heads
            ));
        }
        if m.architecture != Architecture::VisualBert && m.init.is_some() {
            return Err("model.init is supported for visual_bert only".into());
        }
        if m.architecture == Architecture::Lxmert && m.co_layers == 0 {
            return Err(
                "model.co_layers must be >= 1: LXMERT's streams meet only in its cross-modality \
                 layers"
                    .into(),
            );
        }
        if m.architecture == Architecture::Vilbert {
            if m.co_layers == 0 {
                return Err(
                    "model.co_layers must be >= 1: without co-attention the streams never meet"
                        .into(),
                );
            }
            if m.v_hidden_size == 0 || !m.v_hidden_size.is_multiple_of(m.heads) {
                return Err(format!(
                    "model.v_hidden_size {} is not a multiple of model.heads {}",
                    m.v_hidden_size, m.heads
                ));
            }
            if m.co_layers > m.layers.min(m.v_layers) {
                return Err(format!(
                    "model.co_layers {} exceeds the layers of a stream ({} text, {} image)",
                    m.co_layers, m.layers, m.v_layers
                ));
            }
        }
        if self.data.region_mask_prob > 0.0
            && !self.objectives.mrfr.enabled
            && !self.objectives.mrc.enabled
            && !self.objectives.mrc_kl.enabled
        {
            return Err(
                "data.region_mask_prob > 0 needs a region objective: objectives.mrc (region \
                 classification), objectives.mrc_kl or objectives.mrfr"
                    .into(),
            );
        }
        self.validate_objectives()?;
        for (name, p) in [
            ("data.mask_prob", self.data.mask_prob),
            ("data.mismatch_prob", self.data.mismatch_prob),
            ("data.region_mask_prob", self.data.region_mask_prob),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return Err(format!("{name} = {p} is not a probability"));
            }
        }
        if self.eval.best == BestMetric::RetrievalR1
            && (self.model.itc_dim == 0 || self.eval.retrieval_images == 0)
        {
            return Err(
                "eval.best = \"retrieval_r1\" needs model.itc_dim > 0 and eval.retrieval_images > 0"
                    .into(),
            );
        }
        if self.data.features == Features::MobilenetV2 && self.data.train_scenes == 0 {
            return Err(
                "data.features = \"mobilenet_v2\" caches every scene's features: set \
                 data.train_scenes (e.g. 4000)"
                    .into(),
            );
        }
        if self.data.pool == 0 {
            return Err("data.pool must be >= 1".into());
        }
        if m.itc_dim > 0 && self.eval.retrieval_images > 0 && self.eval.retrieval_top_k == 0 {
            return Err("eval.retrieval_top_k must be >= 1".into());
        }
        if self.data.vqa_weight > 0.0 && self.data.vocab_scenes == 0 {
            return Err("data.vqa_weight > 0 needs data.vocab_scenes >= 1 (the answers)".into());
        }
        if self.eval.best == BestMetric::VqaAccuracy && self.data.vqa_weight <= 0.0 {
            return Err("eval.best = \"vqa_accuracy\" needs data.vqa_weight > 0".into());
        }
        let weight_ok = |w: f64| w.is_finite() && w >= 0.0;
        if !weight_ok(self.data.vqa_weight) || !weight_ok(self.data.region_loss_weight) {
            return Err("loss weights must be finite and >= 0".into());
        }
        if self.data.source == Source::Store {
            let d = &self.data;
            if d.captions.is_none() || d.store.is_none() {
                return Err("data.source = \"store\" needs data.captions and data.store".into());
            }
            if d.held_out_images == 0 {
                return Err("data.held_out_images must be >= 1 (the evaluation images)".into());
            }
            if d.vqa_weight > 0.0 {
                return Err(
                    "data.vqa_weight > 0 needs the scenes' questions (source = \"scenes\")".into(),
                );
            }
            if d.features != Features::Pixels {
                return Err(
                    "data.features applies to the scenes; a store brings its own features".into(),
                );
            }
        }
        if self.data.max_text_len < 3 {
            return Err("data.max_text_len must be >= 3 ([CLS] word [SEP])".into());
        }
        if let Some(f) = &self.finetune {
            if !(f.encoder_lr_ratio.is_finite() && f.encoder_lr_ratio >= 0.0) {
                return Err("finetune.encoder_lr_ratio must be finite and >= 0".into());
            }
            if f.answers == 0 || f.grid == 0 {
                return Err("finetune.answers and finetune.grid must be >= 1".into());
            }
            if f.dataset == VqaDataset::VqaV2
                && (f.train_questions.is_none()
                    || f.train_annotations.is_none()
                    || f.train_images.is_none())
            {
                return Err(
                    "finetune.dataset = \"vqa_v2\" needs train_questions, train_annotations and \
                     train_images"
                        .into(),
                );
            }
            if self.data.source != Source::Scenes {
                return Err(
                    "fine-tuning reads [finetune] data; leave data.source = \"scenes\"".into(),
                );
            }
            if f.task == Task::Caption {
                if f.dataset != VqaDataset::Scenes {
                    return Err(
                        "finetune.task = \"caption\" trains on the scenes' captions: leave \
                         finetune.dataset = \"scenes\""
                            .into(),
                    );
                }
                if f.captioner == Captioner::Unified && m.architecture != Architecture::VisualBert {
                    return Err(
                        "finetune.captioner = \"unified\" runs a single-stream encoder under the \
                         seq2seq mask; a ViLBERT or LXMERT run needs finetune.captioner = \"decoder\""
                            .into(),
                    );
                }
                if self.eval.scenes == 0 {
                    return Err(
                        "eval.scenes must be >= 1: a captioning run is selected on the CIDEr-D \
                         of held-out captions"
                            .into(),
                    );
                }
                if f.captioner == Captioner::Decoder && f.decoder_layers == 0 {
                    return Err("finetune.decoder_layers must be >= 1".into());
                }
                if f.max_caption_len < 2 || f.max_caption_len > self.data.max_text_len {
                    return Err(format!(
                        "finetune.max_caption_len = {} must be in 2..={} (data.max_text_len)",
                        f.max_caption_len, self.data.max_text_len
                    ));
                }
            }
        }
        if self
            .finetune
            .as_ref()
            .is_some_and(|f| f.task == Task::Retrieval && f.dataset != VqaDataset::Scenes)
        {
            return Err(
                "finetune.task = \"retrieval\" trains on the scenes' captions: leave \
                 finetune.dataset = \"scenes\""
                    .into(),
            );
        }
        if self.eval.best == BestMetric::Cider
            && self
                .finetune
                .as_ref()
                .is_none_or(|f| f.task != Task::Caption)
        {
            return Err("eval.best = \"cider\" needs finetune.task = \"caption\"".into());
        }
        Ok(())
    }
}
