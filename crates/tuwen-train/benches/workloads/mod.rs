//! The work tuwen's training benchmarks measure, shared by the criterion bench
//! (`benches/train_step.rs`) and the side-by-side comparison with PyTorch
//! (`tests/bench_compare.rs`, run by `cargo xtask bench`): the shipped configurations' data and
//! models, the `visualbert-minilm` shapes, one whole optimiser step as the training loop runs it,
//! and the export of a batch for the PyTorch reference (`xtask/bench/torch_bench.py`), so both
//! sides compute on the same tokens, masks, labels and region features.
#![allow(dead_code)] // each including target uses part of it

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use burn::module::{Module, ParamId};
use burn::optim::{AdamWConfig, ModuleOptimizer};
use burn::tensor::Device;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tuwen_data::scene::SceneConfig;
use tuwen_fusion::precision::Precision;
use tuwen_fusion::{BertConfig, VisualBertConfig};
use tuwen_objectives::itm::MatchLabel;
use tuwen_objectives::mlm::{IGNORE, MaskingConfig, mask_tokens};
use tuwen_objectives::mrm::RegionMaskingConfig;
use tuwen_train::batch::{HostBatch, REGION_CLASSES, SceneBatcher};
use tuwen_train::clip::{clip_global_norm, global_norm};
use tuwen_train::config::{Architecture, TrainConfig};
use tuwen_train::data::Data;
use tuwen_train::decay::{apply_weight_decay, decayed_params};
use tuwen_train::model::{ModelShape, PretrainModel, visual_bert_config};
use tuwen_train::pretrain::{ObjectiveWeights, step_batch, step_gradients};
use tuwen_train::run_dir::ModelSpec;

/// A shipped configuration (`configs/NAME`).
pub fn config(name: &str) -> TrainConfig {
    let dir = tuwen_testkit::package_path("../../configs");
    TrainConfig::load(&dir.join(name)).expect("shipped config")
}

/// The built-in scenes as a run of `cfg` reads them (the run's vocabulary, pooled pixels, its
/// masking and VQA answers), and the model shape they fix.
pub fn scene_data(cfg: &TrainConfig) -> (Data, ModelShape) {
    let scenes = SceneConfig::default();
    let answers = (cfg.data.vqa_weight > 0.0).then(|| {
        Arc::new(SceneBatcher::answer_vocabulary(
            &scenes,
            cfg.run.seed,
            cfg.data.vocab_scenes,
        ))
    });
    let batcher = SceneBatcher {
        tokenizer: SceneBatcher::train_tokenizer(
            &scenes,
            cfg.run.seed,
            cfg.data.vocab_scenes,
            cfg.data.max_text_len,
        )
        .expect("scene vocabulary"),
        scenes,
        seed: cfg.run.seed,
        pool: cfg.data.pool,
        masking: MaskingConfig {
            mask_prob: cfg.data.mask_prob,
            ..MaskingConfig::default()
        },
        mismatch_prob: cfg.data.mismatch_prob,
        region_masking: (cfg.data.region_mask_prob > 0.0).then_some(RegionMaskingConfig {
            mask_prob: cfg.data.region_mask_prob,
            ..RegionMaskingConfig::VILBERT
        }),
        scenes_per_split: 0,
        region_features: None,
        answers,
    };
    let shape = ModelShape {
        vocab: batcher.tokenizer.vocab_size(),
        feature_dim: batcher.feature_dim(),
        max_text_len: cfg.data.max_text_len,
        answers: batcher.answers.as_ref().map_or(0, |a| a.len()),
        region_classes: REGION_CLASSES,
    };
    (Data::Scenes(Arc::new(batcher)), shape)
}

/// `visualbert-minilm`: rows per batch.
pub const MINILM_BATCH: usize = 32;
/// `visualbert-minilm`: text tokens per row (`[CLS]`, 30 words, `[SEP]`).
pub const MINILM_TEXT: usize = 32;
/// `visualbert-minilm`: regions per image (the whole image first).
pub const MINILM_REGIONS: usize = 36;
/// `visualbert-minilm`: region feature width (Faster R-CNN / BUTD features).
pub const MINILM_FEATURES: usize = 2048;
/// bert-base-uncased's vocabulary (MiniLM's).
pub const MINILM_VOCAB: usize = 30_522;

/// `configs/visual_bert_minilm.toml` as a model: MiniLM-L6-H384's text configuration (what
/// `model.init = "minilm"` takes from the checkpoint: 384 wide, 6 layers, 12 heads, 1536, the
/// bert-base vocabulary) over 2048-d region features, MLM + ITM, dropout 0.1, AdamW 5e-5 with
/// global-norm clipping. Randomly initialised: the checkpoint's weights cost nothing per step.
pub fn minilm() -> (TrainConfig, ModelSpec) {
    let mut cfg = config("visual_bert_minilm.toml");
    cfg.data.max_text_len = MINILM_TEXT;
    cfg.run.batch_size = MINILM_BATCH;
    let bert = BertConfig {
        vocab_size: MINILM_VOCAB,
        hidden_size: 384,
        num_hidden_layers: 6,
        num_attention_heads: 12,
        intermediate_size: 1536,
        max_position_embeddings: 512,
        ..BertConfig::default()
    };
    let spec = ModelSpec {
        shape: ModelShape {
            vocab: MINILM_VOCAB,
            feature_dim: MINILM_FEATURES,
            max_text_len: MINILM_TEXT,
            answers: 0,
            region_classes: REGION_CLASSES,
        },
        bert: Some(bert),
        caption_decoder: None,
        region_head: false,
    };
    (cfg, spec)
}

/// A `visualbert-minilm` batch: 32 rows of `[CLS]` + 30 word ids + `[SEP]` (bert-base ids),
/// half of the captions mismatched (ITM), 15% of the matched rows' words chosen for MLM by the
/// training masking code, 36 regions per image of 2048-d non-negative features with box
/// encodings (the whole image first). Other fields (unused by MLM + ITM) come from `base`.
pub fn minilm_batch(base: HostBatch, seed: u64) -> HostBatch {
    const CLS: i64 = 101;
    const SEP: i64 = 102;
    const MASK: i64 = 103;
    let (b, t, r, d) = (MINILM_BATCH, MINILM_TEXT, MINILM_REGIONS, MINILM_FEATURES);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut ids = Vec::with_capacity(b * t);
    for _ in 0..b {
        ids.push(CLS);
        ids.extend((0..t - 2).map(|_| rng.random_range(1_000..MINILM_VOCAB as i64)));
        ids.push(SEP);
    }
    let attention = vec![1i64; b * t];
    let itm: Vec<MatchLabel> = (0..b)
        .map(|_| {
            if rng.random_bool(0.5) {
                MatchLabel::Mismatch
            } else {
                MatchLabel::Match
            }
        })
        .collect();
    let mlm_attention: Vec<i64> = (0..b * t)
        .map(|i| i64::from(itm[i / t] == MatchLabel::Match))
        .collect();
    let masked = mask_tokens(
        &ids,
        &mlm_attention,
        &[0, 100, CLS, SEP, MASK],
        MINILM_VOCAB,
        MASK,
        &MaskingConfig::default(),
        &mut rng,
    );
    let features: Vec<f32> = (0..b * r * d).map(|_| rng.random::<f32>()).collect();
    let mut locations = Vec::with_capacity(b * r * 5);
    for _ in 0..b {
        locations.extend([0.0, 0.0, 1.0, 1.0, 1.0]);
        for _ in 1..r {
            let (x1, y1) = (rng.random::<f32>() * 0.8, rng.random::<f32>() * 0.8);
            let (x2, y2) = (x1 + 0.05 + rng.random::<f32>() * (0.95 - x1), y1 + 0.05);
            let y2 = y2 + rng.random::<f32>() * (0.95 - y1);
            locations.extend([x1, y1, x2, y2, (x2 - x1) * (y2 - y1)]);
        }
    }
    // Field by field onto `base`, so a field added to `HostBatch` keeps a consistent value.
    let mut host = base;
    host.rows = b;
    host.text_len = t;
    host.regions = r;
    host.feature_dim = d;
    host.input_ids = masked.input_ids;
    host.caption_ids = ids;
    host.attention = attention;
    host.cls_sep = [CLS, SEP];
    host.features = features;
    host.unmasked_features = None;
    host.locations = locations;
    host.region_mask = vec![1; b * r];
    host.mlm_positions = masked.positions;
    host.mlm_labels = masked.labels;
    host.itm = itm;
    host.region_positions = Vec::new();
    host.region_labels = vec![IGNORE; b * r];
    host.vqa = None;
    host.answers = Vec::new();
    host.phrases = Vec::new();
    host.negative_ok = (0..b * b).map(|k| k / b != k % b).collect();
    host
}

/// One whole optimiser step as the training loop takes it (`trainer::train`): the gradients of
/// every configured objective, global-norm clipping, decoupled weight decay on HF's parameter
/// groups, the AdamW update, the after-step constraints. No evaluation, no checkpoint; a
/// constant learning rate (the schedule's value costs nothing).
pub struct TrainStep {
    model: Option<PretrainModel>,
    optim: ModuleOptimizer,
    device: Device,
    weights: ObjectiveWeights,
    decayed: HashSet<ParamId>,
    micro_batches: usize,
    lr: f64,
    weight_decay: f64,
    max_grad_norm: f32,
    seed: u64,
    step: u64,
    /// `[run] precision`: the step's gradients run in its scope, as in `trainer::train`.
    precision: Precision,
}

impl TrainStep {
    /// A step of `cfg`'s optimiser on `model` (on the autodiff `device`).
    pub fn new(cfg: &TrainConfig, model: PretrainModel, device: Device) -> Self {
        let o = &cfg.optim;
        let optim = AdamWConfig::new()
            .with_beta_1(o.beta1)
            .with_beta_2(o.beta2)
            .with_epsilon(o.epsilon)
            .with_weight_decay(0.0)
            .init();
        Self {
            decayed: decayed_params(&model),
            model: Some(model),
            optim,
            device,
            weights: ObjectiveWeights::from_config(cfg),
            micro_batches: cfg.run.grad_accum_steps.max(1),
            lr: o.learning_rate,
            weight_decay: o.weight_decay,
            max_grad_norm: o.max_grad_norm,
            seed: cfg.run.seed,
            step: 0,
            precision: cfg.run.precision,
        }
    }

    /// The model being trained.
    pub fn model(&self) -> &PretrainModel {
        self.model.as_ref().expect("a model between steps")
    }

    /// One step on `host`; returns the gradient norm before clipping and the total loss.
    pub fn run(&mut self, host: &HostBatch) -> (f32, f32) {
        let mut model = self.model.take().expect("a model between steps");
        self.step += 1;
        let seed = self.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ self.step;
        let (mut grads, losses) = self
            .precision
            .run(|| {
                step_gradients(
                    &model,
                    host,
                    std::slice::from_ref(&self.device),
                    self.micro_batches,
                    self.weights,
                    seed,
                )
            })
            .expect("a training step");
        let norm = if self.max_grad_norm > 0.0 {
            clip_global_norm(&model, &mut grads, self.max_grad_norm)
        } else {
            global_norm(&model, &grads)
        };
        model = apply_weight_decay(model, &self.decayed, self.lr, self.weight_decay);
        model = self.optim.step(self.lr, model, grads);
        self.model = Some(model.after_step());
        (
            norm,
            losses.mlm + losses.itm + losses.region + losses.itc + losses.vqa,
        )
    }
}

/// The default run's model (`configs/default.toml` shapes) and a batch of its data.
pub fn default_run(device: &Device) -> (TrainConfig, PretrainModel, HostBatch, ModelShape) {
    let cfg = config("default.toml");
    let (data, shape) = scene_data(&cfg);
    let host = step_batch(&data, &cfg, 0).expect("a batch");
    device.seed(cfg.run.seed);
    let model = PretrainModel::init(&cfg.model, &shape, device).with_objective_heads(
        &cfg,
        shape.region_classes,
        device,
    );
    (cfg, model, host, shape)
}

/// The `visualbert-minilm` model and a batch of its shapes.
pub fn minilm_run(device: &Device) -> (TrainConfig, PretrainModel, HostBatch, ModelSpec) {
    let (cfg, spec) = minilm();
    let (data, _) = scene_data(&config("default.toml"));
    let base = step_batch(&data, &cfg, 0).expect("a batch");
    let host = minilm_batch(base, cfg.run.seed);
    device.seed(cfg.run.seed);
    let model = PretrainModel::build(&cfg.model, &spec, device).with_objective_heads(
        &cfg,
        spec.shape.region_classes,
        device,
    );
    (cfg, model, host, spec)
}

/// The VisualBERT configuration of `cfg`'s model at `shape` (text side from `bert` when the
/// model starts from a BERT checkpoint), as the run builds it.
pub fn encoder_config(
    cfg: &TrainConfig,
    shape: &ModelShape,
    bert: Option<BertConfig>,
) -> VisualBertConfig {
    assert_eq!(cfg.model.architecture, Architecture::VisualBert);
    visual_bert_config(
        &cfg.model,
        bert,
        shape.vocab,
        shape.feature_dim,
        shape.max_text_len,
    )
}

/// What the PyTorch reference needs to do the same work: `meta.json` (the work, the model's
/// configuration, the optimiser, the measuring counts and the batch's integer parts) and the
/// region features and box encodings as little-endian f32 files, in `dir`.
#[allow(clippy::too_many_arguments)]
pub fn export(
    dir: &Path,
    work: &str,
    what: &str,
    kind: &str,
    encoder: &VisualBertConfig,
    cfg: &TrainConfig,
    host: &HostBatch,
    params: usize,
    warmup: usize,
    iters: usize,
) {
    std::fs::create_dir_all(dir).expect("bench directory");
    let f32_file = |name: &str, values: &[f32]| {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        std::fs::write(dir.join(name), bytes).expect("writing a bench array");
    };
    f32_file("features.f32", &host.features);
    f32_file("locations.f32", &host.locations);
    let b = &encoder.bert;
    let o = &cfg.optim;
    let meta = serde_json::json!({
        "work": work,
        "what": what,
        "kind": kind,
        "warmup": warmup,
        "iters": iters,
        "tuwen_params": params,
        "model": {
            "vocab_size": b.vocab_size,
            "hidden_size": b.hidden_size,
            "num_hidden_layers": b.num_hidden_layers,
            "num_attention_heads": b.num_attention_heads,
            "intermediate_size": b.intermediate_size,
            "hidden_act": b.hidden_act,
            "hidden_dropout_prob": b.hidden_dropout_prob,
            "attention_probs_dropout_prob": b.attention_probs_dropout_prob,
            "max_position_embeddings": b.max_position_embeddings,
            "type_vocab_size": b.type_vocab_size,
            "layer_norm_eps": b.layer_norm_eps,
            "visual_embedding_dim": encoder.visual_embedding_dim,
            "location_dim": encoder.visual_location.dim(),
        },
        "objectives": {
            "mlm": cfg.objectives.mlm.enabled,
            "mlm_weight": cfg.objectives.mlm.weight,
            "itm": cfg.objectives.itm.enabled,
            "itm_weight": cfg.objectives.itm.weight,
        },
        "optim": {
            "learning_rate": o.learning_rate,
            "weight_decay": o.weight_decay,
            "beta1": o.beta1,
            "beta2": o.beta2,
            "epsilon": o.epsilon,
            "max_grad_norm": o.max_grad_norm,
        },
        "batch": {
            "rows": host.rows,
            "text_len": host.text_len,
            "regions": host.regions,
            "feature_dim": host.feature_dim,
            "input_ids": host.input_ids,
            "attention": host.attention,
            "region_mask": host.region_mask,
            "mlm_positions": host.mlm_positions,
            "mlm_labels": host.mlm_positions.iter().map(|&p| host.mlm_labels[p]).collect::<Vec<_>>(),
            "itm_mismatch": host.itm.iter().map(|&l| l == MatchLabel::Mismatch).collect::<Vec<_>>(),
        },
    });
    std::fs::write(
        dir.join("meta.json"),
        serde_json::to_string(&meta).expect("json"),
    )
    .expect("writing meta.json");
}

/// Adds `key: value` to the `meta.json` [`export`] wrote in `dir` (what one work alone needs).
pub fn add_meta(dir: &Path, key: &str, value: serde_json::Value) {
    let path = dir.join("meta.json");
    let text = std::fs::read_to_string(&path).expect("reading meta.json");
    let mut meta: serde_json::Value = serde_json::from_str(&text).expect("meta.json");
    meta[key] = value;
    std::fs::write(&path, serde_json::to_string(&meta).expect("json")).expect("writing meta.json");
}

/// Parameters of `module` (both sides print theirs: equal counts mean equal models).
pub fn params<M: Module>(module: &M) -> usize {
    module.num_params()
}
