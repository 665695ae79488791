//! The step-based pretraining loop on the built-in scenes: a single-stream VisualBERT (with 5-d
//! box encodings) trained from scratch with MLM + ITM, AdamW with decoupled decay outside
//! norms/biases/embeddings, warmup + decay, global-norm clipping, NaN guard, periodic held-out
//! evaluation, metrics and atomic checkpoints.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use burn::module::Module;
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::Device;
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};
use tuwen_data::scene::{SceneConfig, Split};
use tuwen_fusion::visual_bert::LocationEncoding;
use tuwen_fusion::{BertConfig, VisualBertConfig, VisualBertForPreTraining};
use tuwen_objectives::LossOutput;
use tuwen_objectives::itm::{Polarity, itm_loss};
use tuwen_objectives::mlm::{MaskingConfig, MlmOutput, mlm_loss};

use tuwen_tokenizer::{BertTokenizer, TokenizerOptions};

use crate::batch::{PretrainBatch, SceneBatcher};
use crate::checkpoint;
use crate::clip::clip_global_norm;
use crate::decay::{apply_weight_decay, decayed_params};
use crate::guard::{NanGuard, StepAction};
use crate::metrics::MetricsLog;
use crate::schedule::{Decay, LrSchedule};

/// Every hyper-parameter of a pretraining run (saved as `config.json` in the run directory).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PretrainConfig {
    /// Dataset seed.
    pub seed: u64,
    /// Optimiser steps.
    pub steps: usize,
    /// Scenes per batch.
    pub batch_size: usize,
    /// Peak learning rate.
    pub learning_rate: f64,
    /// Warmup steps.
    pub warmup_steps: usize,
    /// Decoupled weight decay (not on norms, biases, embeddings).
    pub weight_decay: f64,
    /// Global gradient-norm limit.
    pub max_grad_norm: f32,
    /// Hidden width.
    pub hidden_size: usize,
    /// Layers.
    pub layers: usize,
    /// Heads.
    pub heads: usize,
    /// Evaluate (and checkpoint) every this many steps.
    pub eval_every: usize,
    /// Log training losses every this many steps.
    pub log_every: usize,
    /// Held-out scenes used per evaluation.
    pub eval_scenes: usize,
    /// Non-finite steps in a row before aborting.
    pub max_nan_steps: usize,
}

impl Default for PretrainConfig {
    fn default() -> Self {
        Self {
            seed: 1,
            steps: 6000,
            batch_size: 32,
            learning_rate: 5e-4,
            warmup_steps: 100,
            weight_decay: 0.01,
            max_grad_norm: 1.0,
            hidden_size: 128,
            layers: 4,
            heads: 4,
            eval_every: 500,
            log_every: 25,
            eval_scenes: 256,
            max_nan_steps: 10,
        }
    }
}

/// Held-out metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EvalMetrics {
    /// ITM accuracy on balanced matched/mismatched pairs.
    pub itm_accuracy: f32,
    /// MLM accuracy on masked tokens.
    pub mlm_accuracy: f32,
    /// MLM accuracy on masked colour and shape words.
    pub mlm_color_shape_accuracy: f32,
}

/// State stored with checkpoints.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    /// Next step to run.
    pub step: usize,
    /// Non-finite steps skipped so far.
    pub skipped: usize,
    /// Last held-out metrics.
    pub eval: EvalMetrics,
    /// Lines of `metrics.jsonl` written when the checkpoint was taken.
    pub metrics_lines: usize,
}

/// Summary of a finished run.
#[derive(Clone, Debug)]
pub struct Summary {
    /// Final held-out metrics.
    pub eval: EvalMetrics,
    /// Steps run.
    pub steps: usize,
    /// Seconds of wall time.
    pub seconds: f64,
    /// Run directory.
    pub dir: PathBuf,
}

fn model_config(cfg: &PretrainConfig, vocab: usize, feature_dim: usize) -> VisualBertConfig {
    VisualBertConfig {
        bert: BertConfig {
            vocab_size: vocab,
            hidden_size: cfg.hidden_size,
            num_hidden_layers: cfg.layers,
            num_attention_heads: cfg.heads,
            intermediate_size: 4 * cfg.hidden_size,
            max_position_embeddings: 32,
            hidden_dropout_prob: 0.0,
            attention_probs_dropout_prob: 0.0,
            ..BertConfig::default()
        },
        visual_embedding_dim: feature_dim,
        visual_location: LocationEncoding::XyxyArea5,
        ..VisualBertConfig::default()
    }
}

/// MLM and ITM outputs of `model` on `batch` (the same computation for training and evaluation).
fn objectives(
    model: &VisualBertForPreTraining,
    batch: &PretrainBatch,
) -> (MlmOutput, LossOutput, f32) {
    let [_, len] = batch.input.input_ids.dims();
    let out = model.forward(batch.input.clone());
    let text = out.encoder.last_hidden_state.narrow(1, 0, len);
    let emb = model
        .visual_bert
        .embeddings
        .text
        .word_embeddings
        .weight
        .val();
    let mlm = mlm_loss(
        &model.mlm,
        text,
        emb,
        &batch.mlm_positions,
        &batch.mlm_labels,
        None,
    );
    let (itm, itm_accuracy) = itm_loss(
        out.seq_relationship_logits,
        &batch.itm,
        Polarity::VISUAL_BERT,
    );
    (mlm, itm, itm_accuracy)
}

/// Evaluates on `scenes` held-out test scenes.
pub fn evaluate(
    model: &VisualBertForPreTraining,
    batcher: &SceneBatcher,
    scenes: usize,
    device: &Device,
) -> EvalMetrics {
    let mut rng = StdRng::seed_from_u64(batcher.seed ^ 0xe7a1);
    let words: Vec<u32> = [
        "red",
        "green",
        "blue",
        "yellow",
        "purple",
        "orange",
        "gray",
        "brown",
        "circle",
        "square",
        "triangle",
        "circles",
        "squares",
        "triangles",
    ]
    .iter()
    .filter_map(|w| batcher.tokenizer.token_to_id(w))
    .collect();
    let (mut itm_ok, mut itm_n, mut mlm_ok, mut mlm_n, mut cs_ok, mut cs_n) =
        (0.0f32, 0.0f32, 0.0f32, 0.0f32, 0.0f32, 0.0f32);
    let eval_batcher = SceneBatcher {
        masking: MaskingConfig {
            mask_prob: 0.3,
            ..MaskingConfig::default()
        },
        ..batcher.clone()
    };
    for chunk in (0..scenes as u64).collect::<Vec<_>>().chunks(32) {
        let Ok(batch) = eval_batcher.batch(Split::Test, chunk, &mut rng, device) else {
            continue;
        };
        let (mlm, _, acc) = objectives(model, &batch);
        itm_ok += acc * batch.itm.len() as f32;
        itm_n += batch.itm.len() as f32;
        for (&p, &pred) in batch.mlm_positions.iter().zip(&mlm.predictions) {
            let gold = batch.mlm_labels[p];
            mlm_n += 1.0;
            mlm_ok += f32::from(pred == gold);
            if words.contains(&(gold as u32)) {
                cs_n += 1.0;
                cs_ok += f32::from(pred == gold);
            }
        }
    }
    EvalMetrics {
        itm_accuracy: itm_ok / itm_n.max(1.0),
        mlm_accuracy: mlm_ok / mlm_n.max(1.0),
        mlm_color_shape_accuracy: cs_ok / cs_n.max(1.0),
    }
}

/// Serialises users of the backends' global random generators within this process.
static DEVICE_RNG: Mutex<()> = Mutex::new(());

/// Seeds `device` (and its autodiff view) and holds the process-wide lock until the guard
/// drops: Burn's generator is global per backend, so two runs initialising or stepping at once
/// (parallel tests, several runs in one program) would otherwise interleave their draws.
fn seeded(device: &Device, seed: u64) -> MutexGuard<'static, ()> {
    let guard = DEVICE_RNG.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    device.seed(seed);
    device.clone().autodiff().seed(seed);
    guard
}

/// The generator seed of one training step.
fn step_seed(seed: u64, step: usize) -> u64 {
    seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (step as u64).wrapping_add(1)
}

/// Runs (or resumes, when `dir` holds a checkpoint) a pretraining run; `progress` receives one
/// line per logged step. `stop_after` ends the run early after that many steps in total (as an
/// interruption would; tests use it to check that resuming is exact).
pub fn run(
    cfg: &PretrainConfig,
    dir: &Path,
    device: &Device,
    stop_after: Option<usize>,
    mut progress: impl FnMut(&str),
) -> Result<Summary, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let config_path = dir.join("config.json");
    std::fs::write(
        &config_path,
        serde_json::to_string_pretty(cfg).expect("serialisable"),
    )
    .map_err(|e| format!("{}: {e}", config_path.display()))?;
    let scenes = SceneConfig::default();
    // The vocabulary is part of the run: built once (deterministically), saved, and reloaded on
    // resume, so a run directory stays self-contained.
    let vocab_path = dir.join("vocab.txt");
    let tokenizer = if vocab_path.is_file() {
        BertTokenizer::from_vocab(&vocab_path, TokenizerOptions::default().with_max_len(24))
    } else {
        SceneBatcher::train_tokenizer(&scenes, cfg.seed, 2000).and_then(|t| {
            t.save_vocab(&vocab_path)?;
            Ok(t)
        })
    }
    .map_err(|e| e.to_string())?;
    let batcher = SceneBatcher {
        tokenizer,
        scenes,
        seed: cfg.seed,
        pool: 4,
        masking: MaskingConfig::default(),
        mismatch_prob: 0.5,
    };
    let ad = device.clone().autodiff();
    let mcfg = model_config(cfg, batcher.tokenizer.vocab_size(), batcher.feature_dim());
    // Seeded initialisation: the same config gives the same run.
    let mut model = {
        let _rng = seeded(device, cfg.seed);
        mcfg.init_pretraining(&ad)
    };
    let adamw = AdamWConfig::new().with_weight_decay(0.0).with_epsilon(1e-8);
    let mut optim = adamw.init();
    let mut state = RunState::default();
    let mut resumed = false;
    let ckpt_dir = dir.join("checkpoints");
    if let Some(loaded) =
        checkpoint::load::<_, RunState>(&ckpt_dir, "last", model.clone(), adamw.init())
            .map_err(|e| e.to_string())?
    {
        progress(&format!(
            "resuming from {} at step {}",
            loaded.path.display(),
            loaded.state.step
        ));
        model = loaded.model;
        optim = loaded.optimizer;
        state = loaded.state;
        resumed = true;
    }
    let schedule = LrSchedule {
        peak: cfg.learning_rate,
        warmup_steps: cfg.warmup_steps,
        total_steps: cfg.steps,
        decay: Decay::Linear,
        final_ratio: 0.05,
    };
    let decayed = decayed_params(&model);
    let mut guard = NanGuard::new(cfg.max_nan_steps);
    guard.skipped = state.skipped;
    let mut log = if resumed {
        MetricsLog::resume(dir, state.metrics_lines)
    } else {
        MetricsLog::open(dir)
    }
    .map_err(|e| e.to_string())?;
    let start = Instant::now();
    let first = state.step;
    let end = stop_after.unwrap_or(cfg.steps).min(cfg.steps);
    while state.step < end {
        let step = state.step;
        // The batch of a step depends only on (seed, step): resuming replays the exact order.
        let mut rng = StdRng::seed_from_u64(cfg.seed.wrapping_mul(1_000_003) ^ step as u64);
        let indices: Vec<u64> = (0..cfg.batch_size as u64)
            .map(|i| step as u64 * cfg.batch_size as u64 + i)
            .collect();
        let batch = batcher
            .batch(Split::Train, &indices, &mut rng, &ad)
            .map_err(|e| e.to_string())?;
        let (mlm, itm, itm_acc) = {
            // Random draws inside the step (dropout) are a function of (seed, step) too.
            let _rng = seeded(device, step_seed(cfg.seed, step));
            objectives(&model, &batch)
        };
        let loss = mlm.loss.loss.clone() + itm.loss.clone();
        let (mlm_v, itm_v) = (
            mlm.loss.loss.into_scalar::<f32>(),
            itm.loss.into_scalar::<f32>(),
        );
        let mut grads = GradientsParams::from_grads(loss.backward(), &model);
        let norm = clip_global_norm(&model, &mut grads, cfg.max_grad_norm);
        match guard.observe(step as u64, mlm_v + itm_v, norm) {
            StepAction::Apply => {
                let lr = schedule.lr(step);
                model = apply_weight_decay(model, &decayed, lr, cfg.weight_decay);
                model = optim.step(lr, model, grads);
            }
            StepAction::Skip => {}
            StepAction::Abort(msg) => return Err(msg),
        }
        state.step += 1;
        state.skipped = guard.skipped;
        if step % cfg.log_every.max(1) == 0 || state.step == cfg.steps {
            let elapsed = start.elapsed().as_secs_f64();
            let rate = (state.step - first) as f64 / elapsed.max(1e-9);
            log.log(
                step as u64,
                &[
                    ("train/mlm", mlm_v as f64),
                    ("train/itm", itm_v as f64),
                    ("train/itm_accuracy", itm_acc as f64),
                    ("train/grad_norm", norm as f64),
                ],
            )
            .map_err(|e| e.to_string())?;
            progress(&format!(
                "step {:>5}/{}  mlm {mlm_v:.3}  itm {itm_v:.3}  {rate:.2} steps/s  ETA {:.0}s",
                state.step,
                cfg.steps,
                (cfg.steps - state.step) as f64 / rate.max(1e-9)
            ));
        }
        if state.step % cfg.eval_every == 0 || state.step == cfg.steps {
            state.eval = evaluate(&model.valid(), &batcher, cfg.eval_scenes, device);
            log.log(
                state.step as u64,
                &[
                    ("eval/itm_accuracy", state.eval.itm_accuracy as f64),
                    ("eval/mlm_accuracy", state.eval.mlm_accuracy as f64),
                    (
                        "eval/mlm_color_shape_accuracy",
                        state.eval.mlm_color_shape_accuracy as f64,
                    ),
                ],
            )
            .map_err(|e| e.to_string())?;
            progress(&format!("eval at step {}: {:?}", state.step, state.eval));
            state.metrics_lines = log.lines();
            checkpoint::save(&ckpt_dir, "last", &model, &optim, &state)
                .map_err(|e| e.to_string())?;
        }
    }
    log.plot(dir).map_err(|e| e.to_string())?;
    Ok(Summary {
        eval: state.eval,
        steps: state.step,
        seconds: start.elapsed().as_secs_f64(),
        dir: dir.to_path_buf(),
    })
}
