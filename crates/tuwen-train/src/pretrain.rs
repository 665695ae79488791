//! The step-based pretraining loop on the built-in scenes.
//!
//! One step: the step's batch (a pure function of seed and step, built ahead by loader threads)
//! is cut into `devices x grad_accum_steps` micro-batches; each runs forward/backward on its
//! device with its losses weighted by its share of the batch's items, so the summed gradient is
//! the whole batch's; then global-norm clipping, the NaN guard, decoupled weight decay and the
//! AdamW step on the main device. Every `eval.every` steps: held-out evaluation, `last`
//! checkpoint, and `best` when the chosen metric improved. Checkpoints carry the model, the
//! optimiser, the step (which fixes the learning rate and the data position) and the metrics
//! log position, so an interrupted run resumes bit for bit.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use tuwen_kernels::splitmix64;

use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::Device;
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};
use tuwen_data::formats::CaptionRecord;
use tuwen_data::scene::{SceneConfig, Split};
use tuwen_fusion::BertConfig;
use tuwen_fusion::precision::Precision;
use tuwen_objectives::mixing::{Weighted, sample_task};
use tuwen_objectives::mlm::MaskingConfig;
use tuwen_objectives::mrm::RegionMaskingConfig;
use tuwen_regions::StoreReader;
use tuwen_tokenizer::{BertTokenizer, TokenizerOptions};

use crate::batch::{HostBatch, SceneBatcher};
use crate::config::{Architecture, Mixing, Source, TrainConfig};
use crate::corpus::{StoreBatcher, read_captions};
use crate::data::Data;
use crate::model::{Encoder, ModelShape, ObjectiveSet, PretrainModel};
use crate::parallel::DataParallel;
use crate::retrieval::Recalls;
use crate::run_dir::{ModelSpec, RunDir};
use crate::trainer::{Groups, Task};
use tuwen_objectives::itc::l2_normalize;

pub use crate::event::{EvalMetrics, Event, StepReport};

/// State stored with checkpoints.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RunState {
    /// Next step to run (also the data position and the schedule position).
    pub step: usize,
    /// Non-finite steps skipped so far.
    pub skipped: usize,
    /// Last held-out metrics.
    pub eval: EvalMetrics,
    /// Lines of `metrics.jsonl` written when the checkpoint was taken.
    pub metrics_lines: usize,
    /// Step and metrics of the `best` checkpoint.
    pub best: Option<(usize, EvalMetrics)>,
    /// Devices the run trained on (a resume on another count is not bit-exact).
    pub devices: usize,
}

/// The losses of one step over the whole batch (each objective's mean over its items).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StepLosses {
    /// Masked language modelling.
    pub mlm: f32,
    /// Image-text matching.
    pub itm: f32,
    /// Masked region classification.
    pub region: f32,
    /// ITM accuracy of the batch.
    pub itm_accuracy: f32,
    /// Image-text contrastive.
    pub itc: f32,
    /// VQA.
    pub vqa: f32,
    /// VQA accuracy of the batch (fine-tuning).
    pub vqa_accuracy: f32,
    /// Captioning: next-token loss (fine-tuning).
    pub lm: f32,
    /// Captioning: next-token accuracy of the batch.
    pub lm_accuracy: f32,
    /// Phrase grounding (alignment + box losses).
    pub grounding: f32,
    /// OT word-region alignment.
    pub wra: f32,
    /// Masked region feature regression.
    pub mrfr: f32,
    /// MRC-KL (masked regions against the detector's class distributions).
    pub mrc_kl: f32,
}

impl StepLosses {
    /// Number of values in [`StepLosses::to_array`].
    pub const FIELDS: usize = 13;

    /// Every value, in a fixed order (summed over ranks by `distributed::allreduce`: each is a
    /// sum of parts weighted by their share of the step).
    pub fn to_array(&self) -> [f64; Self::FIELDS] {
        [
            self.mlm,
            self.itm,
            self.region,
            self.itm_accuracy,
            self.itc,
            self.vqa,
            self.vqa_accuracy,
            self.lm,
            self.lm_accuracy,
            self.grounding,
            self.wra,
            self.mrfr,
            self.mrc_kl,
        ]
        .map(f64::from)
    }

    /// Adds `other` value by value (a part's weighted losses to the step's), in f32.
    fn add(&mut self, other: &StepLosses) {
        let (mut sum, b) = (self.to_array(), other.to_array());
        for (s, b) in sum.iter_mut().zip(b) {
            *s = f64::from(*s as f32 + b as f32);
        }
        *self = Self::from_array(&sum);
    }

    /// The inverse of [`StepLosses::to_array`].
    pub fn from_array(v: &[f64]) -> Self {
        let f = |i: usize| v[i] as f32;
        Self {
            mlm: f(0),
            itm: f(1),
            region: f(2),
            itm_accuracy: f(3),
            itc: f(4),
            vqa: f(5),
            vqa_accuracy: f(6),
            lm: f(7),
            lm_accuracy: f(8),
            grounding: f(9),
            wra: f(10),
            mrfr: f(11),
            mrc_kl: f(12),
        }
    }
}

/// Summary of a finished (or stopped) run.
#[derive(Clone, Debug)]
pub struct Summary {
    /// Final validation metrics.
    pub eval: EvalMetrics,
    /// Test-split metrics of the model selected on validation (`best`, else the last) with its
    /// step; `None` when the run stopped before its last step.
    pub test: Option<(usize, EvalMetrics)>,
    /// Step and metrics of the best checkpoint.
    pub best: Option<(usize, EvalMetrics)>,
    /// Steps done.
    pub steps: usize,
    /// Non-finite steps skipped.
    pub skipped: usize,
    /// Seconds of wall time (this invocation).
    pub seconds: f64,
    /// Run directory.
    pub dir: PathBuf,
}

/// Serialises users of the backends' global random generators within this process.
static DEVICE_RNG: Mutex<()> = Mutex::new(());

/// Seeds `device` (and its autodiff view) and holds the process-wide lock until the guard
/// drops: Burn's generator is global per backend, so two runs initialising at once (parallel
/// tests, several runs in one program) would otherwise interleave their draws. Training steps
/// draw nothing from it: their dropout masks are keyed by the step's seed
/// (`tuwen_fusion::dropout::with_mask_seed`).
pub(crate) fn seeded(device: &Device, seed: u64) -> MutexGuard<'static, ()> {
    let guard = DEVICE_RNG
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    device.seed(seed);
    device.clone().autodiff().seed(seed);
    guard
}

/// The generator seed of one training step.
pub(crate) fn step_seed(seed: u64, step: usize) -> u64 {
    splitmix64(splitmix64(seed) ^ step as u64)
}

/// The vocabulary of the run: the BERT checkpoint's when the model starts from one, else the
/// deterministic whole-word vocabulary of the scenes or of the caption corpus. Saved as
/// `vocab.txt` in the run directory and reloaded from there on resume.
fn tokenizer(
    cfg: &TrainConfig,
    scenes: &SceneConfig,
    corpus: Option<&[CaptionRecord]>,
    dir: &RunDir,
    bert_dir: Option<&Path>,
) -> Result<BertTokenizer, String> {
    if dir.vocab_path().is_file() {
        return dir.tokenizer(cfg.data.max_text_len);
    }
    let options = TokenizerOptions::default().with_max_len(cfg.data.max_text_len);
    let tok = match (bert_dir, corpus) {
        (Some(bert), _) => BertTokenizer::from_vocab(bert.join("vocab.txt"), options),
        // A corpus: its 30,000 most frequent words (deterministic), characters for the rest.
        (None, Some(records)) => {
            BertTokenizer::word_vocabulary(records.iter().map(|r| &r.caption), 30_000, true)
                .and_then(|tokens| BertTokenizer::from_tokens(&tokens, options))
        }
        (None, None) => SceneBatcher::train_tokenizer(
            scenes,
            cfg.run.seed,
            cfg.data.vocab_scenes,
            cfg.data.max_text_len,
        ),
    }
    .map_err(|e| e.to_string())?;
    if !dir.is_follower() {
        tok.save_vocab(dir.vocab_path())
            .map_err(|e| e.to_string())?;
    }
    Ok(tok)
}

/// The VQA answers of the run (`answers.txt` in the run directory, one per line, sorted; built
/// from the training scenes' questions on the first start).
fn answer_vocabulary(
    cfg: &TrainConfig,
    scenes: &SceneConfig,
    dir: &RunDir,
) -> Result<Vec<String>, String> {
    if dir.answers_path().is_file() {
        let answers = dir.answers()?;
        if answers.is_empty() || !answers.is_sorted() {
            return Err(format!(
                "{}: expected one answer per line, sorted",
                dir.answers_path().display()
            ));
        }
        return Ok(answers);
    }
    let answers = SceneBatcher::answer_vocabulary(scenes, cfg.run.seed, cfg.data.vocab_scenes);
    dir.save_answers(&answers)?;
    Ok(answers)
}

/// The directory of the BERT checkpoint named by `model.init`.
fn bert_dir(init: &str) -> Result<PathBuf, String> {
    if init == "minilm" {
        let weights = tuwen_assets::locate("minilm", "model.safetensors")
            .map_err(|e| format!("model.init = \"minilm\": {e}"))?;
        Ok(weights.parent().expect("a file has a parent").to_path_buf())
    } else {
        let dir = PathBuf::from(init);
        for file in ["config.json", "model.safetensors", "vocab.txt"] {
            if !dir.join(file).is_file() {
                return Err(format!(
                    "model.init = {init:?}: {} is missing",
                    dir.join(file).display()
                ));
            }
        }
        Ok(dir)
    }
}

/// Evaluates on `examples` held-out examples of `split` (scenes or images never trained on;
/// validation during training, test once at the end): ITM and MLM accuracy (30% of tokens
/// masked), accuracy on colour and shape words, region and VQA accuracy when the data has them.
pub fn evaluate(
    model: &PretrainModel,
    data: &Data,
    split: Split,
    examples: usize,
    device: &Device,
) -> Result<EvalMetrics, String> {
    evaluate_with(
        model,
        data,
        split,
        examples,
        device,
        &ObjectiveSet::default(),
    )
}

/// [`evaluate`] for the objectives of `set`, with each one's held-out loss (mean over its
/// items), grounding accuracy (predicted box IoU >= 0.5; top-1 aligned region) and, when `set`
/// mines hard negatives, ITM accuracy against them (`itm_hard_accuracy`; `itm_accuracy` stays
/// the data's random negatives).
pub fn evaluate_with(
    model: &PretrainModel,
    data: &Data,
    split: Split,
    examples: usize,
    device: &Device,
    set: &ObjectiveSet,
) -> Result<EvalMetrics, String> {
    let random = ObjectiveSet {
        hard_negatives: false,
        ..*set
    };
    let hard = (set.hard_negatives && set.itm && model.itc.is_some()).then_some(ObjectiveSet {
        seed: 0xe7a1,
        ..*set
    });
    // Sums of loss x items and items: mlm, itm, region, itc, grounding, wra, mrfr, lm, mrc_kl;
    // grounding box hits, region hits, lm hits, hard ITM hits.
    let mut sums = [0.0f64; 9];
    let mut counts = [0.0f64; 9];
    let mut hits = [0.0f64; 4];
    let mut rng = StdRng::seed_from_u64(data.seed() ^ 0xe7a1);
    let words: Vec<i64> = [
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
    .filter_map(|w| data.tokenizer().token_to_id(w))
    .map(i64::from)
    .collect();
    let eval_data = data.for_evaluation(MaskingConfig {
        mask_prob: 0.3,
        ..MaskingConfig::default()
    });
    // itm ok, itm n, mlm ok, mlm n, cs ok, cs n, region ok, region n, vqa ok, vqa n
    let mut n = [0.0f32; 10];
    // A finite held-out set is evaluated once, not wrapped around.
    let examples = examples.min(data.split_len(split));
    for chunk in (0..examples as u64).collect::<Vec<_>>().chunks(32) {
        let host = eval_data.host_batch(split, chunk, &mut rng)?;
        model.check_batch(&host).map_err(|e| e.to_string())?;
        let batch = host.to_device(device);
        let out = model
            .objectives_with(Some(&host), &batch, &random)
            .map_err(|e| e.to_string())?;
        for (k, loss) in [
            &out.mlm.loss,
            &out.itm,
            &out.region,
            &out.itc,
            &out.grounding,
            &out.wra,
            &out.mrfr,
            &out.lm,
            &out.mrc_kl,
        ]
        .into_iter()
        .enumerate()
        {
            if !loss.empty {
                let c = loss.count as f64;
                sums[k] += loss.loss.clone().into_scalar::<f32>() as f64 * c;
                counts[k] += c;
            }
        }
        hits[0] += (out.grounding_accuracy * out.grounding.count as f32) as f64;
        hits[1] += (out.grounding_region_accuracy * out.grounding.count as f32) as f64;
        hits[2] += (out.lm_accuracy * out.lm.count as f32) as f64;
        if let Some(hard) = &hard {
            let out = model
                .objectives_with(Some(&host), &batch, hard)
                .map_err(|e| e.to_string())?;
            hits[3] += (out.itm_accuracy * host.rows as f32) as f64;
        }
        n[0] += out.itm_accuracy * host.rows as f32;
        n[1] += host.rows as f32;
        for (&p, &pred) in host.mlm_positions.iter().zip(&out.mlm.predictions) {
            let gold = host.mlm_labels[p];
            n[2] += f32::from(pred == gold);
            n[3] += 1.0;
            if words.contains(&gold) {
                n[4] += f32::from(pred == gold);
                n[5] += 1.0;
            }
        }
        n[6] += out.region_accuracy * out.region.count as f32;
        n[7] += out.region.count as f32;
        n[8] += out.vqa_accuracy * out.vqa.count as f32;
        n[9] += out.vqa.count as f32;
    }
    let mean = |k: usize| (sums[k] / counts[k].max(1.0)) as f32;
    Ok(EvalMetrics {
        itm_accuracy: n[0] / n[1].max(1.0),
        mlm_accuracy: n[2] / n[3].max(1.0),
        mlm_color_shape_accuracy: n[4] / n[5].max(1.0),
        region_accuracy: n[6] / n[7].max(1.0),
        retrieval: Recalls::default(),
        vqa_accuracy: n[8] / n[9].max(1.0),
        mlm_loss: mean(0),
        itm_loss: mean(1),
        region_loss: mean(2),
        itc_loss: mean(3),
        grounding_loss: mean(4),
        wra_loss: mean(5),
        mrfr_loss: mean(6),
        lm_loss: mean(7),
        mrc_kl_loss: mean(8),
        grounding_accuracy: (hits[0] / counts[4].max(1.0)) as f32,
        grounding_region_accuracy: (hits[1] / counts[4].max(1.0)) as f32,
        lm_accuracy: (hits[2] / counts[7].max(1.0)) as f32,
        itm_hard_accuracy: (hits[3] / n[1].max(1.0) as f64) as f32,
        ..EvalMetrics::default()
    })
}

/// Zero-shot retrieval on up to `images` held-out examples of `split` with distinct captions
/// ([`Data::retrieval_set`]): ITC similarities of unimodal embeddings rank all pairs, ITM
/// re-scores the `k` best candidates of every query (`retrieval::evaluate`).
pub fn retrieval(
    model: &PretrainModel,
    data: &Data,
    split: Split,
    images: usize,
    k: usize,
    device: &Device,
) -> Result<Recalls, String> {
    let Some(itc) = &model.itc else {
        return Ok(Recalls::default());
    };
    // Held-out scenes are never wrapped to the training set's size.
    let data = &data.for_evaluation(MaskingConfig::default());
    let (indices, captions) = data.retrieval_set(split, images);
    let images = indices.len();
    if images == 0 {
        return Ok(Recalls::default());
    }
    let mut rng = StdRng::seed_from_u64(0);
    let host = data.host_captions(split, &indices, &captions, &mut rng)?;
    model.check_batch(&host).map_err(|e| e.to_string())?;
    let mut image_emb = Vec::new();
    let mut text_emb = Vec::new();
    for chunk in host.split(host.rows.div_ceil(32)) {
        let (t, i) = model
            .unimodal(&chunk.to_device(device))
            .map_err(|e| e.to_string())?;
        image_emb.push(itc.image_proj.forward(i));
        text_emb.push(itc.text_proj.forward(t));
    }
    let i = l2_normalize(burn::tensor::Tensor::cat(image_emb, 0));
    let t = l2_normalize(burn::tensor::Tensor::cat(text_emb, 0));
    let sim: Vec<f32> = i
        .matmul(t.transpose())
        .into_data()
        .try_into_vec_as()
        .map_err(|e| format!("{e:?}"))?;
    let gold: Vec<usize> = (0..images).collect();
    let mut failure = None;
    let recalls = crate::retrieval::evaluate(&sim, images, images, &gold, k, |image, texts| {
        // One image against its candidate captions, as a batch of pairs.
        let pairs: Vec<String> = texts.iter().map(|&t| captions[t].clone()).collect();
        let rows = vec![indices[image]; pairs.len()];
        let scores = data
            .host_captions(split, &rows, &pairs, &mut StdRng::seed_from_u64(0))
            .and_then(|h| {
                model
                    .match_scores(&h.to_device(device))
                    .map_err(|e| e.to_string())
            });
        scores.unwrap_or_else(|e| {
            // Reported after the ranking; the placeholder scores are never used.
            failure.get_or_insert(e);
            vec![0.0; texts.len()]
        })
    });
    match failure {
        Some(e) => Err(e),
        None => Ok(recalls),
    }
}

/// Held-out metrics of `model` on `split`: [`evaluate`] and, with ITC, [`retrieval`].
fn held_out(
    model: &PretrainModel,
    data: &Data,
    split: Split,
    cfg: &TrainConfig,
    device: &Device,
) -> Result<EvalMetrics, String> {
    let set = ObjectiveSet::from_config(&cfg.objectives);
    let mut metrics = evaluate_with(model, data, split, cfg.eval.scenes, device, &set)?;
    metrics.retrieval = retrieval(
        model,
        data,
        split,
        cfg.eval.retrieval_images,
        cfg.eval.retrieval_top_k,
        device,
    )?;
    Ok(metrics)
}

/// The `metrics.jsonl` values of held-out `metrics` under `prefix` (`eval`: validation,
/// `test`): only what the run has (region, VQA, retrieval).
fn metric_values(
    prefix: &str,
    metrics: &EvalMetrics,
    data: &Data,
    model: &PretrainModel,
    cfg: &TrainConfig,
) -> Vec<(String, f64)> {
    let mut values = vec![
        ("itm_accuracy", metrics.itm_accuracy),
        ("mlm_accuracy", metrics.mlm_accuracy),
        ("mlm_color_shape_accuracy", metrics.mlm_color_shape_accuracy),
    ];
    let o = &cfg.objectives;
    if o.mlm.enabled {
        values.push(("mlm", metrics.mlm_loss));
    }
    if o.itm.enabled {
        values.push(("itm", metrics.itm_loss));
    }
    if o.itm.enabled && o.itm.negatives == crate::config::Negatives::Hard && model.itc.is_some() {
        values.push(("itm_hard_accuracy", metrics.itm_hard_accuracy));
    }
    if data.masks_regions() {
        if o.mrc.enabled {
            values.push(("region_accuracy", metrics.region_accuracy));
            values.push(("region", metrics.region_loss));
        }
        if o.mrc_kl.enabled {
            values.push(("mrc_kl", metrics.mrc_kl_loss));
        }
    }
    if model.itc.is_some() && o.itc.enabled {
        values.push(("itc", metrics.itc_loss));
    }
    if o.grounding.enabled {
        values.extend([
            ("grounding", metrics.grounding_loss),
            ("grounding_accuracy", metrics.grounding_accuracy),
            (
                "grounding_region_accuracy",
                metrics.grounding_region_accuracy,
            ),
        ]);
    }
    if o.wra.enabled {
        values.push(("wra", metrics.wra_loss));
    }
    if o.mrfr.enabled {
        values.push(("mrfr", metrics.mrfr_loss));
    }
    if o.lm.enabled {
        values.extend([
            ("lm", metrics.lm_loss),
            ("lm_accuracy", metrics.lm_accuracy),
        ]);
    }
    if model.vqa.is_some() {
        values.push(("vqa_accuracy", metrics.vqa_accuracy));
    }
    if model.itc.is_some() && cfg.eval.retrieval_images > 0 {
        let r = metrics.retrieval;
        values.extend([
            ("i2t_r1", r.image_to_text[0]),
            ("i2t_r5", r.image_to_text[1]),
            ("i2t_r10", r.image_to_text[2]),
            ("t2i_r1", r.text_to_image[0]),
            ("t2i_r5", r.text_to_image[1]),
            ("t2i_r10", r.text_to_image[2]),
        ]);
    }
    values
        .into_iter()
        .map(|(k, v)| (format!("{prefix}/{k}"), v as f64))
        .collect()
}

/// The batch of training step `step`: examples `step * B .. (step + 1) * B` and a generator
/// seeded by (seed, step), so a resumed run sees exactly the batches the interrupted one would
/// have (with a finite corpus, example `i` is position `i mod images` of epoch `i / images`, each
/// epoch a permutation seeded by (seed, epoch): see `corpus`).
pub fn step_batch(data: &Data, cfg: &TrainConfig, step: usize) -> Result<HostBatch, String> {
    step_batch_rows(data, cfg, step, None)
}

/// [`step_batch`] with the region features of the rows in `own` only (when given; the other
/// rows are drawn alike: [`crate::batch::Shard`]), as one process of a data-parallel job
/// builds it ([`own_rows`]).
pub fn step_batch_rows(
    data: &Data,
    cfg: &TrainConfig,
    step: usize,
    own: Option<std::ops::Range<usize>>,
) -> Result<HostBatch, String> {
    let (mut rng, indices) = crate::trainer::step_examples(cfg.run.seed, step, cfg.run.batch_size);
    data.host_batch_rows(Split::Train, &indices, own, &mut rng)
        .map_err(|e| format!("step {step}: {e}"))
}

/// The rows of a batch of `rows` that process `rank` of `ranks` computes when each process
/// splits its share into `local` parts (devices x micro-batches): the rows of parts
/// `rank * local .. (rank + 1) * local` of the whole batch cut into `ranks * local` parts
/// ([`HostBatch::split`]), as [`step_gradients`] takes them. `None` alone (every row).
pub fn own_rows(
    rows: usize,
    rank: usize,
    ranks: usize,
    local: usize,
) -> Option<std::ops::Range<usize>> {
    if ranks <= 1 {
        return None;
    }
    let parts = crate::batch::part_rows(rows, ranks * local);
    let mine = own_parts(parts.len(), rank, local);
    Some(match (parts.get(mine.start), mine.is_empty()) {
        (Some(first), false) => first.start..parts[mine.end - 1].end,
        _ => rows..rows,
    })
}

/// The indices of the `parts` parts of a step that process `rank` computes with `local`
/// parts per process; fewer when `split` gave fewer parts than asked (a batch of fewer rows).
fn own_parts(parts: usize, rank: usize, local: usize) -> std::ops::Range<usize> {
    (rank * local).min(parts)..((rank + 1) * local).min(parts)
}

/// Weights of the objectives that have one (MLM, ITM and ITC count 1).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LossWeights {
    /// Masked region classification.
    pub region: f64,
    /// VQA.
    pub vqa: f64,
}

/// Which objectives a pretraining step trains and the weight of each in the total loss.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ObjectiveWeights {
    /// The objectives computed.
    pub set: ObjectiveSet,
    /// MLM.
    pub mlm: f64,
    /// ITM.
    pub itm: f64,
    /// Masked region classification (`objectives.mrc.weight x data.region_loss_weight`).
    pub region: f64,
    /// ITC.
    pub itc: f64,
    /// VQA (`data.vqa_weight`, `objectives.vqa`).
    pub vqa: f64,
    /// Grounding.
    pub grounding: f64,
    /// WRA.
    pub wra: f64,
    /// MRFR.
    pub mrfr: f64,
    /// MRC-KL.
    pub mrc_kl: f64,
    /// Unified LM.
    pub lm: f64,
    /// How they combine.
    pub mixing: Mixing,
}

impl ObjectiveWeights {
    /// The objectives and weights of `cfg` (`[objectives]` and the `[data]` weights).
    pub fn from_config(cfg: &TrainConfig) -> Self {
        let o = &cfg.objectives;
        Self {
            set: ObjectiveSet::from_config(o),
            mlm: o.mlm.weight,
            itm: o.itm.weight,
            region: o.mrc.weight * cfg.data.region_loss_weight,
            itc: o.itc.weight,
            vqa: cfg.data.vqa_weight,
            grounding: o.grounding.weight,
            wra: o.wra.weight,
            mrfr: o.mrfr.weight,
            mrc_kl: o.mrc_kl.weight,
            lm: o.lm.weight,
            mixing: o.mixing,
        }
    }

    /// The objectives a run can draw from under [`Mixing::Sample`], each with its weight as the
    /// drawing ratio: those switched on with a positive weight that the run has (ITC needs its
    /// head, VQA its head and questions, region classification masked regions).
    pub fn candidates(&self, has_itc: bool, has_vqa: bool, masks_regions: bool) -> Vec<Weighted> {
        let s = &self.set;
        [
            ("mlm", s.mlm, self.mlm),
            ("itm", s.itm, self.itm),
            ("mrc", s.mrc && masks_regions, self.region),
            ("itc", s.itc && has_itc, self.itc),
            ("vqa", has_vqa, self.vqa),
            ("grounding", s.grounding, self.grounding),
            ("wra", s.wra, self.wra),
            ("mrfr", s.mrfr, self.mrfr),
            ("mrc_kl", s.mrc_kl && masks_regions, self.mrc_kl),
            ("lm", s.lm, self.lm),
        ]
        .into_iter()
        .filter(|&(_, on, weight)| on && weight > 0.0)
        .map(|(name, _, weight)| Weighted {
            name: name.to_string(),
            weight: weight as f32,
        })
        .collect()
    }

    /// What the step seeded by `seed` trains: these weights under [`Mixing::Sum`]; under
    /// [`Mixing::Sample`] one of `candidates`, drawn by ratio with a generator seeded by
    /// `seed` (the same for every micro-batch of the step and on resume), alone with weight 1.
    pub fn for_step(&self, candidates: &[Weighted], seed: u64) -> Self {
        if self.mixing == Mixing::Sum || candidates.is_empty() {
            return *self;
        }
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(splitmix64(
            seed ^ 0x6d69_7869_6e67,
        ));
        let task = sample_task(candidates, &mut rng);
        let none = ObjectiveSet {
            mlm: false,
            itm: false,
            hard_negatives: false,
            grounding: false,
            wra: false,
            mrfr: false,
            mrc: false,
            mrc_kl: false,
            itc: false,
            lm: false,
            vqa: false,
            seed: self.set.seed,
        };
        let mut w = Self {
            set: none,
            mlm: 0.0,
            itm: 0.0,
            region: 0.0,
            itc: 0.0,
            vqa: 0.0,
            grounding: 0.0,
            wra: 0.0,
            mrfr: 0.0,
            mrc_kl: 0.0,
            lm: 0.0,
            mixing: self.mixing,
        };
        match task {
            "mlm" => (w.set.mlm, w.mlm) = (true, 1.0),
            "itm" => {
                (w.set.itm, w.itm) = (true, 1.0);
                w.set.hard_negatives = self.set.hard_negatives;
            }
            "mrc" => (w.set.mrc, w.region) = (true, 1.0),
            "itc" => (w.set.itc, w.itc) = (true, 1.0),
            "vqa" => (w.set.vqa, w.vqa) = (true, 1.0),
            "grounding" => (w.set.grounding, w.grounding) = (true, 1.0),
            "wra" => (w.set.wra, w.wra) = (true, 1.0),
            "mrfr" => (w.set.mrfr, w.mrfr) = (true, 1.0),
            "mrc_kl" => (w.set.mrc_kl, w.mrc_kl) = (true, 1.0),
            _ => (w.set.lm, w.lm) = (true, 1.0),
        }
        w
    }
}

impl From<LossWeights> for ObjectiveWeights {
    /// MLM + ITM (+ region classification, ITC, VQA where the batch and model have them).
    fn from(w: LossWeights) -> Self {
        Self {
            set: ObjectiveSet::default(),
            mlm: 1.0,
            itm: 1.0,
            region: w.region,
            itc: 1.0,
            vqa: w.vqa,
            grounding: 0.0,
            wra: 0.0,
            mrfr: 0.0,
            mrc_kl: 0.0,
            lm: 0.0,
            mixing: Mixing::Sum,
        }
    }
}

/// Losses and gradients of one step over micro-batches spread on `devices` (autodiff devices;
/// the first is the main device, holding `model`): `devices.len() x micro_batches` contiguous
/// row ranges, micro-batch `i` on device `i % devices.len()`. Each device runs its micro-batches
/// on a thread of its own, all devices at once (the other devices on a copy of the weights, made
/// once per step); the gradients are summed on the main device in micro-batch order, so the
/// result does not depend on the threads' timing. Returns the summed gradients and the step's
/// losses over the whole batch. `seed` and the micro-batch index seed the random draws of each
/// micro-batch (dropout masks included: nothing comes from a backend's global generator, so
/// the same seed gives the same step on any devices). In an MPI job of `N` processes
/// ([`crate::distributed`]) the batch is split into `N x devices x micro_batches` parts, this
/// process computes its own contiguous share, and gradients and losses are summed over the
/// processes.
pub fn step_gradients(
    model: &PretrainModel,
    host: &HostBatch,
    devices: &[Device],
    micro_batches: usize,
    weights: impl Into<ObjectiveWeights>,
    seed: u64,
) -> Result<(GradientsParams, StepLosses), String> {
    step_gradients_on(
        &mut DataParallel::new(devices),
        model,
        host,
        micro_batches,
        weights,
        seed,
    )
}

/// [`step_gradients`] on `parallel`'s devices, with the replicas it keeps between steps (a
/// training loop calls this one: the other devices' replicas are refreshed, not re-made).
pub fn step_gradients_on(
    parallel: &mut DataParallel,
    model: &PretrainModel,
    host: &HostBatch,
    micro_batches: usize,
    weights: impl Into<ObjectiveWeights>,
    seed: u64,
) -> Result<(GradientsParams, StepLosses), String> {
    let weights: ObjectiveWeights = weights.into();
    model.check_batch(host).map_err(|e| e.to_string())?;
    let devices = parallel.devices().to_vec();
    let main = &devices[0];
    let (rank, ranks) = crate::distributed::placement()?;
    let local = devices.len() * micro_batches;
    let parts = host.split(ranks * local);
    // ITC counts the matched pairs of the micro-batches that have a negative (two or more).
    let matched: usize = parts
        .iter()
        .map(|p| {
            p.itm
                .iter()
                .filter(|&&l| l == tuwen_objectives::itm::MatchLabel::Match)
                .count()
        })
        .filter(|&n| n >= 2)
        .sum();
    let totals = [
        host.mlm_positions.len().max(1) as f32,
        host.rows.max(1) as f32,
        host.region_positions.len().max(1) as f32,
        matched.max(1) as f32,
        host.vqa
            .as_ref()
            .map_or(0, |v| v.answers.iter().filter(|a| !a.is_empty()).count())
            .max(1) as f32,
        host.phrases.len().max(1) as f32,
        host.rows.max(1) as f32,
        host.region_positions.len().max(1) as f32,
        host.lm_targets().max(1) as f32,
        host.region_positions.len().max(1) as f32,
    ];
    let mine = own_parts(parts.len(), rank, local);
    let context = PartContext {
        parts: &parts,
        totals,
        weights: &weights,
        seed,
        main,
    };
    // Part `i` runs on device `(i - mine.start) % devices.len()`; each device's parts run in
    // order on a thread of their own, all devices at once.
    let shares: Vec<Vec<usize>> = (0..devices.len())
        .map(|d| mine.clone().skip(d).step_by(devices.len()).collect())
        .collect();
    let mut outputs: Vec<(usize, PartOutput)> = if devices.len() == 1 {
        context.run_share(model.clone(), &devices[0], &shares[0])?
    } else {
        // The main device holds the model; the others their replica, refreshed.
        let replicas = parallel.replicas(model);
        // The caller's precision scope holds on every device's thread.
        let precision = Precision::current();
        std::thread::scope(|scope| {
            let handles: Vec<_> = devices
                .iter()
                .zip(&shares)
                .zip(replicas)
                .map(|((device, share), replica)| {
                    let context = &context;
                    scope.spawn(move || precision.run(|| context.run_share(replica, device, share)))
                })
                .collect();
            let mut all = Vec::new();
            for handle in handles {
                match handle.join() {
                    Ok(share) => all.extend(share?),
                    Err(panic) => std::panic::resume_unwind(panic),
                }
            }
            Ok::<_, String>(all)
        })?
    };
    // Summed in part order: the same sums whatever the devices' timing.
    outputs.sort_by_key(|(i, _)| *i);
    let mut accumulator = GradientsAccumulator::new();
    let mut values = StepLosses::default();
    for (_, out) in outputs {
        values.add(&out.values);
        if let Some(grads) = out.grads {
            accumulator.accumulate(model, grads);
        }
    }
    crate::distributed::allreduce(model, accumulator.grads(), values)
}

/// What every micro-batch of a step shares (see [`step_gradients`]).
struct PartContext<'a> {
    parts: &'a [HostBatch],
    /// Items of each objective over the whole step: the denominators of the parts' shares.
    totals: [f32; 10],
    weights: &'a ObjectiveWeights,
    seed: u64,
    /// Where the gradients are summed.
    main: &'a Device,
}

/// One micro-batch's contribution to a step.
struct PartOutput {
    /// Its weighted gradients on the main device; `None` when every objective had no items.
    grads: Option<GradientsParams>,
    /// Its losses, each weighted by the part's share of the objective's items.
    values: StepLosses,
}

impl PartContext<'_> {
    /// The parts `share` (indices into `parts`), in order, on `device` with `replica`.
    fn run_share(
        &self,
        replica: PretrainModel,
        device: &Device,
        share: &[usize],
    ) -> Result<Vec<(usize, PartOutput)>, String> {
        share
            .iter()
            .map(|&i| Ok((i, self.run_part(&replica, device, i)?)))
            .collect()
    }

    /// Forward and backward of part `i`. Its random draws (dropout masks, the objectives'
    /// sampling) are a function of `(seed, i)` alone, whichever device or thread runs it.
    fn run_part(
        &self,
        replica: &PretrainModel,
        device: &Device,
        i: usize,
    ) -> Result<PartOutput, String> {
        let scalar = |t: &burn::tensor::Tensor<1>| t.clone().into_scalar::<f32>();
        let (part, totals, weights) = (&self.parts[i], &self.totals, self.weights);
        let batch = part.to_device(device);
        let part_seed = splitmix64(self.seed ^ splitmix64(i as u64));
        let set = ObjectiveSet {
            seed: splitmix64(part_seed ^ 0x4a4d),
            ..weights.set
        };
        let out = tuwen_fusion::dropout::with_mask_seed(part_seed, || {
            replica.objectives_with(Some(part), &batch, &set)
        })
        .map_err(|e| e.to_string())?;
        // Each micro-batch's mean weighted by its share of the step's items: the sum of the
        // weighted gradients is the gradient of the whole batch's means.
        // (ITC contrasts within a micro-batch, as data-parallel training without gathering the
        // embeddings does: with ITC the split changes the negatives, not only the sum order.)
        let w = [
            out.mlm.loss.count as f32 / totals[0],
            part.rows as f32 / totals[1],
            out.region.count as f32 / totals[2],
            out.itc.count as f32 / totals[3],
            out.vqa.count as f32 / totals[4],
            out.grounding.count as f32 / totals[5],
            out.wra.count as f32 / totals[6],
            out.mrfr.count as f32 / totals[7],
            out.lm.count as f32 / totals[8],
            out.mrc_kl.count as f32 / totals[9],
        ];
        let mut values = StepLosses {
            mlm: scalar(&out.mlm.loss.loss) * w[0],
            itm: scalar(&out.itm.loss) * w[1],
            region: scalar(&out.region.loss) * w[2],
            itm_accuracy: out.itm_accuracy * w[1],
            itc: scalar(&out.itc.loss) * w[3],
            vqa: scalar(&out.vqa.loss) * w[4],
            lm_accuracy: out.lm_accuracy * w[8],
            ..StepLosses::default()
        };
        let mut loss = out.mlm.loss.loss.mul_scalar(w[0] * weights.mlm as f32)
            + out.itm.loss.mul_scalar(w[1] * weights.itm as f32)
            + out.region.loss.mul_scalar(w[2] * weights.region as f32)
            + out.itc.loss.mul_scalar(w[3] * weights.itc as f32)
            + out.vqa.loss.mul_scalar(w[4] * weights.vqa as f32);
        // The objectives `[objectives]` adds join the sum only when they have items.
        for (k, part_loss, weight, value) in [
            (5, &out.grounding, weights.grounding, &mut values.grounding),
            (6, &out.wra, weights.wra, &mut values.wra),
            (7, &out.mrfr, weights.mrfr, &mut values.mrfr),
            (8, &out.lm, weights.lm, &mut values.lm),
            (9, &out.mrc_kl, weights.mrc_kl, &mut values.mrc_kl),
        ] {
            if !part_loss.empty {
                *value = scalar(&part_loss.loss) * w[k];
                loss = loss + part_loss.loss.clone().mul_scalar(w[k] * weight as f32);
            }
        }
        // A micro-batch where every objective is empty (e.g. MLM alone and no token masked)
        // has a constant loss: it contributes no gradient.
        let grads = loss.is_tracked().then(|| {
            let grads = GradientsParams::from_grads(loss.backward(), replica);
            if device == self.main {
                grads
            } else {
                // One transfer to the main device, not one per parameter.
                let flat = crate::flat::gather_grads(replica, &grads)
                    .into_device(&self.main.clone().inner());
                crate::flat::scatter_grads(replica, flat)
            }
        });
        Ok(PartOutput { grads, values })
    }
}

/// What a pretraining configuration trains on: the data (scenes or a caption corpus with a
/// feature store, with the run's vocabulary and, for VQA, answers) and the VQA answer count.
fn pretraining_data(
    cfg: &TrainConfig,
    dir: &RunDir,
    device: &Device,
    bert: Option<&Path>,
    events: &mut impl FnMut(Event),
) -> Result<(Data, usize), String> {
    let scenes = SceneConfig::default();
    let corpus = match (cfg.data.source, &cfg.data.captions) {
        (Source::Store, Some(path)) => {
            let (records, skipped) = read_captions(Path::new(path), cfg.data.captions_format)?;
            if skipped > 0 {
                events(Event::Note(format!(
                    "{path}: {skipped} malformed lines skipped"
                )));
            }
            Some(records)
        }
        _ => None,
    };
    let tokenizer = tokenizer(cfg, &scenes, corpus.as_deref(), dir, bert)?;
    let masking = MaskingConfig {
        mask_prob: cfg.data.mask_prob,
        ..MaskingConfig::default()
    };
    let region_masking = (cfg.data.region_mask_prob > 0.0).then_some(RegionMaskingConfig {
        mask_prob: cfg.data.region_mask_prob,
        ..RegionMaskingConfig::VILBERT
    });
    let mut n_answers = 0;
    let data = match (&corpus, &cfg.data.store) {
        (Some(records), Some(store)) => {
            let reader = StoreReader::open(store).map_err(|e| format!("{store}: {e}"))?;
            if let Some(recovered) = reader.recovered() {
                events(Event::Note(format!("feature store: {recovered}")));
            }
            let (batcher, stats) = StoreBatcher::new(
                records,
                reader,
                cfg.data.held_out_images,
                cfg.run.seed,
                tokenizer,
                masking,
                cfg.data.mismatch_prob,
                region_masking,
            )?;
            let o = &cfg.objectives;
            let classifies = o.mrc.enabled || o.mrc_kl.enabled;
            if region_masking.is_some() && batcher.classes() == 0 && classifies {
                return Err(format!(
                    "{store}: the store has no class distributions to classify masked regions \
                     against (objectives.mrc / objectives.mrc_kl); set data.region_mask_prob = 0 \
                     or switch them off"
                ));
            }
            events(Event::Note(format!(
                "corpus: {} training images, {} validation, {} test ({}); {} captions without \
                 features dropped",
                stats.train_images,
                stats.validation_images,
                stats.test_images,
                if stats.corpus_splits {
                    "the corpus's splits"
                } else {
                    "last images by id"
                },
                stats.missing_captions
            )));
            Data::Store(Arc::new(batcher))
        }
        _ => {
            let region_features = crate::features::region_features(cfg, &scenes, device, events)?;
            let answers = if cfg.data.vqa_weight > 0.0 {
                Some(Arc::new(answer_vocabulary(cfg, &scenes, dir)?))
            } else {
                None
            };
            n_answers = answers.as_ref().map_or(0, |a| a.len());
            Data::Scenes(Arc::new(SceneBatcher {
                tokenizer,
                scenes,
                seed: cfg.run.seed,
                pool: cfg.data.pool,
                masking,
                mismatch_prob: cfg.data.mismatch_prob,
                region_masking,
                scenes_per_split: cfg.data.train_scenes,
                region_features,
                answers,
            }))
        }
    };
    Ok((data, n_answers))
}

/// Runs (or resumes, when `dir` holds a checkpoint) a pretraining run on `devices` (plain
/// devices; the first is the main one, the others hold data-parallel replicas). `stop_after`
/// ends the run after that many steps in total, as an interruption would (tests use it).
pub fn run(
    cfg: &TrainConfig,
    dir: &Path,
    devices: &[Device],
    stop_after: Option<usize>,
    mut events: impl FnMut(Event),
) -> Result<Summary, String> {
    let resolved = cfg.resolved()?;
    let cfg = &resolved;
    cfg.validate()?;
    let Some(device) = devices.first() else {
        return Err("no device to train on".into());
    };
    for device in devices {
        check_precision(cfg.run.precision, &device.clone().autodiff())?;
    }
    // In an MPI job rank 0 sets the directory up first; the others then read what it wrote.
    let (rank, ranks) = crate::distributed::placement()?;
    if rank > 0 {
        crate::distributed::barrier()?;
    }
    tuwen_io::create_dir_all(dir).map_err(|e| e.to_string())?;
    let run_dir = RunDir::new(dir).follower(rank > 0);
    run_dir.check_resume(cfg, &mut events)?;

    let bert = match (&cfg.model.init, cfg.model.architecture) {
        (Some(init), Architecture::VisualBert) => Some(bert_dir(init)?),
        _ => None,
    };
    let weights = ObjectiveWeights::from_config(cfg);
    let (data, n_answers) = pretraining_data(cfg, &run_dir, device, bert.as_deref(), &mut events)?;
    let ad: Vec<Device> = devices.iter().map(|d| d.clone().autodiff()).collect();
    let shape = ModelShape {
        vocab: data.tokenizer().vocab_size(),
        feature_dim: data.feature_dim(),
        max_text_len: cfg.data.max_text_len,
        answers: n_answers,
        region_classes: data.region_classes(),
    };
    let bert_config = bert
        .as_ref()
        .map(|b| BertConfig::from_json_file(b.join("config.json")))
        .transpose()
        .map_err(|e| e.to_string())?;
    if let (Some(bert), Some(c)) = (&bert, &bert_config)
        && shape.max_text_len > c.max_position_embeddings
    {
        return Err(format!(
            "data.max_text_len = {} exceeds the {} positions of {}",
            shape.max_text_len,
            c.max_position_embeddings,
            bert.join("config.json").display()
        ));
    }
    // VisualBERT's own region head, when regions are masked for MRC; a resumed run keeps the
    // heads it was saved with (one saved before this head existed has none).
    let wants_region_head = cfg.model.architecture == Architecture::VisualBert
        && (cfg.objectives.mrc.enabled || cfg.objectives.mrc_kl.enabled)
        && cfg.data.region_mask_prob > 0.0
        && shape.region_classes > 0;
    let region_head = match run_dir.spec_path().exists() {
        true => run_dir.spec()?.region_head,
        false => wants_region_head,
    };
    let spec = ModelSpec {
        shape,
        bert: bert_config,
        caption_decoder: None,
        region_head,
    };
    // Seeded initialisation: the same config gives the same run.
    let model = {
        let _rng = seeded(device, cfg.run.seed);
        let mut m = PretrainModel::build(&cfg.model, &spec, &ad[0]);
        if let (Some(bert), Encoder::VisualBert(v)) = (&bert, &mut m.encoder) {
            // HF initialisation stays for what the checkpoint does not hold (regions, heads).
            v.visual_bert = v
                .visual_bert
                .clone()
                .init_from_bert(bert.join("model.safetensors"))
                .map_err(|e| e.to_string())?;
            events(Event::Note(format!(
                "text Transformer initialised from {}",
                bert.display()
            )));
        }
        m.with_objective_heads(cfg, spec.region_head_classes(), &ad[0])
    };
    run_dir.save_spec(&spec)?;
    if rank == 0 {
        // (A no-op alone.)
        crate::distributed::barrier()?;
    }
    let candidates = weights.candidates(
        model.itc.is_some(),
        model.vqa.is_some(),
        data.masks_regions(),
    );
    if weights.mixing == Mixing::Sample && candidates.is_empty() {
        return Err(
            "objectives.mixing = \"sample\" has nothing to draw: no switched-on objective with a \
             positive weight that this run can train"
                .into(),
        );
    }
    let task = Arc::new(PretrainTask {
        has_itc: model.itc.is_some(),
        has_vqa: model.vqa.is_some(),
        candidates,
        data,
        cfg: cfg.clone(),
        parallel: Mutex::new(DataParallel::new(&ad)),
        devices: ad.len(),
        device: device.clone(),
        weights,
    });
    crate::trainer::train(
        task,
        model,
        cfg,
        &run_dir,
        devices.len() * ranks,
        stop_after,
        &mut events,
    )
}

/// Refuses `[run] precision` on a training device that cannot run it.
pub(crate) fn check_precision(precision: Precision, device: &Device) -> Result<(), String> {
    precision
        .check(device)
        .map_err(|e| format!("run.precision = \"{}\": {e}", precision.name()))
}

/// Pretraining as a [`Task`] of the shared loop.
struct PretrainTask {
    data: Data,
    cfg: TrainConfig,
    /// Autodiff devices (the first holds the model) and the replicas on the others.
    parallel: Mutex<DataParallel>,
    /// How many devices `parallel` holds.
    devices: usize,
    /// The main plain device (evaluation).
    device: Device,
    weights: ObjectiveWeights,
    /// What [`Mixing::Sample`] draws from.
    candidates: Vec<Weighted>,
    has_itc: bool,
    has_vqa: bool,
}

impl Task for PretrainTask {
    type Batch = HostBatch;

    fn batch(&self, step: usize) -> Result<HostBatch, String> {
        // In an MPI job only this process's rows have their region features read.
        let (rank, ranks) = crate::distributed::placement()?;
        let local = self.devices * self.cfg.run.grad_accum_steps;
        let own = own_rows(self.cfg.run.batch_size, rank, ranks, local);
        step_batch_rows(&self.data, &self.cfg, step, own)
    }

    fn gradients(
        &self,
        model: &PretrainModel,
        batch: &HostBatch,
        seed: u64,
    ) -> Result<(GradientsParams, StepLosses), String> {
        step_gradients_on(
            &mut self.parallel.lock().unwrap_or_else(|e| e.into_inner()),
            model,
            batch,
            self.cfg.run.grad_accum_steps,
            self.weights.for_step(&self.candidates, seed),
            seed,
        )
    }

    fn total(&self, l: &StepLosses) -> f32 {
        if self.weights.mixing == Mixing::Sample {
            // One objective trained, unweighted; the others are 0.
            return l.mlm
                + l.itm
                + l.region
                + l.itc
                + l.vqa
                + l.grounding
                + l.wra
                + l.mrfr
                + l.mrc_kl
                + l.lm;
        }
        let w = &self.weights;
        l.mlm * w.mlm as f32
            + l.itm * w.itm as f32
            + l.region * w.region as f32
            + l.itc * w.itc as f32
            + l.vqa * w.vqa as f32
            + l.grounding * w.grounding as f32
            + l.wra * w.wra as f32
            + l.mrfr * w.mrfr as f32
            + l.mrc_kl * w.mrc_kl as f32
            + l.lm * w.lm as f32
    }

    fn train_values(&self, l: &StepLosses, grad_norm: f32, lr: f64) -> Vec<(&'static str, f64)> {
        let mut values = vec![
            ("train/mlm", l.mlm as f64),
            ("train/itm", l.itm as f64),
            ("train/itm_accuracy", l.itm_accuracy as f64),
            ("train/grad_norm", grad_norm as f64),
            ("train/lr", lr),
        ];
        if self.data.masks_regions() && self.weights.set.mrc {
            values.push(("train/region", l.region as f64));
        }
        if self.has_itc {
            values.push(("train/itc", l.itc as f64));
        }
        if self.has_vqa {
            values.push(("train/vqa", l.vqa as f64));
        }
        let set = &self.weights.set;
        for (on, name, value) in [
            (set.grounding, "train/grounding", l.grounding),
            (set.wra, "train/wra", l.wra),
            (set.mrfr, "train/mrfr", l.mrfr),
            (
                set.mrc_kl && self.data.masks_regions(),
                "train/mrc_kl",
                l.mrc_kl,
            ),
            (set.lm, "train/lm", l.lm),
            (set.lm, "train/lm_accuracy", l.lm_accuracy),
        ] {
            if on {
                values.push((name, value as f64));
            }
        }
        values
    }

    fn evaluate(&self, model: &PretrainModel, split: Split) -> Result<EvalMetrics, String> {
        held_out(model, &self.data, split, &self.cfg, &self.device)
    }

    fn metric_values(
        &self,
        prefix: &str,
        metrics: &EvalMetrics,
        model: &PretrainModel,
    ) -> Vec<(String, f64)> {
        metric_values(prefix, metrics, &self.data, model, &self.cfg)
    }

    fn groups(&self, _model: &PretrainModel) -> Groups {
        Groups::default()
    }

    fn test_note(&self, step: usize, metrics: &EvalMetrics) -> String {
        format!(
            "test split, model of step {step} (selected on validation): ITM {:.3}, MLM {:.3}",
            metrics.itm_accuracy, metrics.mlm_accuracy
        )
    }
}
