//! Fine-tuning: a pretrained run (or a HF BERT checkpoint, or nothing) becomes a task model.
//! The encoder's weights are carried over by name, the task heads are new, and the run writes
//! which tensors were reused, new or dropped (`reuse.json`). The encoder trains at
//! `finetune.encoder_lr_ratio` times the heads' learning rate, optionally with its first layers
//! frozen; everything else is the pretraining loop's machinery (validation-selected `best`,
//! `last`, exact resume, metrics, plots, the test split once at the end).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tuwen_fusion::dropout::with_mask_seed;

use burn::module::{Module, ParamId};
use burn::optim::GradientsParams;
use burn::store::ModuleSnapshot;
use burn::tensor::Device;
use serde::Serialize;
use tuwen_data::scene::{SceneConfig, Split};
use tuwen_fusion::BertConfig;
use tuwen_objectives::mlm::MaskingConfig;
use tuwen_tokenizer::{BertTokenizer, TokenizerOptions};

use crate::batch::SceneBatcher;
use crate::checkpoint;
use crate::config::{Architecture, Captioner, FinetuneConfig, Task, TrainConfig, VqaDataset};
use crate::event::{EvalMetrics, Event};
use crate::images::ImagePipeline;
use crate::model::{Encoder, ModelShape, PretrainModel};
use crate::pretrain::{StepLosses, Summary, seeded};
use crate::run_dir::{ModelSpec, RunDir, Which};
use crate::trainer::Groups;
use crate::vqa::{FileData, FileVqa, QuestionBatch, VqaData, answer_vocabulary};

/// Which tensors a fine-tuning run took from where it started (`reuse.json`).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Reuse {
    /// Where the weights came from (`None`: from scratch).
    pub from: Option<String>,
    /// Encoder tensors loaded from the source (trained by the task).
    pub reused: Vec<String>,
    /// Tensors loaded from the source that the task does not use (the pretraining heads of the
    /// encoder: MLM, ITM, region classification), carried unchanged: frozen, not decayed.
    pub kept: Vec<String>,
    /// Reused tensors that grew with the vocabulary (rows of the added task words initialised
    /// fresh), with their sizes.
    pub resized: Vec<String>,
    /// Tensors of the new model the source does not provide (initialised fresh).
    pub new: Vec<String>,
    /// Tensors of the source the new model does not use.
    pub dropped: Vec<String>,
}

/// Where a fine-tuning run starts.
enum Start {
    Run(RunDir),
    Bert(PathBuf),
    Scratch,
}

fn start_of(cfg: &FinetuneConfig) -> Result<Start, String> {
    let Some(from) = &cfg.from else {
        return Ok(Start::Scratch);
    };
    let dir = PathBuf::from(from);
    if dir.join("config.toml").is_file() {
        return Ok(Start::Run(RunDir::open(dir)?));
    }
    if dir.join("config.json").is_file() && dir.join("model.safetensors").is_file() {
        let config =
            tuwen_io::read_to_string(dir.join("config.json")).map_err(|e| e.to_string())?;
        if config.contains("\"visual_embedding_dim\"") {
            // Its visual projection expects the detector features it was trained on (2048-d
            // BUTD regions); no image pipeline here produces them.
            return Err(format!(
                "finetune.from = {from:?}: a HF VisualBERT checkpoint reads 2048-d detector \
                 region features, which no tuwen image pipeline produces (pixels: 3 x pool^2, \
                 MobileNetV2: 1280); start from a BERT checkpoint or a tuwen run instead"
            ));
        }
        return Ok(Start::Bert(dir));
    }
    Err(format!(
        "finetune.from = {from:?}: neither a tuwen run directory (config.toml) nor a HF \
         checkpoint directory (config.json + model.safetensors)"
    ))
}

/// The configuration a fine-tuning run trains with: the model (and region features) of the run
/// it starts from, everything else from `cfg`.
pub fn effective_config(cfg: &TrainConfig) -> Result<TrainConfig, String> {
    effective(cfg, &start_of(finetune_section(cfg)?)?)
}

fn task_of(cfg: &TrainConfig) -> Option<Task> {
    cfg.finetune.as_ref().map(|f| f.task)
}

fn finetune_section(cfg: &TrainConfig) -> Result<&FinetuneConfig, String> {
    cfg.finetune
        .as_ref()
        .ok_or_else(|| "the configuration has no [finetune] section".into())
}

fn effective(cfg: &TrainConfig, start: &Start) -> Result<TrainConfig, String> {
    let mut out = cfg.clone();
    match start {
        Start::Run(source) => {
            let s = source.config()?;
            out.model = s.model;
            // Retrieval keeps the source's ITC head, or gets a fresh one of the configured
            // width; the other tasks do not use one.
            out.model.itc_dim = match task_of(cfg) {
                Some(Task::Retrieval) if out.model.itc_dim == 0 => cfg.model.itc_dim,
                Some(Task::Retrieval) => out.model.itc_dim,
                _ => 0,
            };
            out.data.features = s.data.features;
            out.data.pool = s.data.pool;
            if s.data.source != crate::config::Source::Scenes {
                return Err(format!(
                    "{}: the run read a feature store; fine-tuning on image files needs a run \
                     trained on image pixels or MobileNetV2 features",
                    source.path().display()
                ));
            }
        }
        Start::Bert(dir) => {
            out.model.architecture = Architecture::VisualBert;
            out.model.init = Some(dir.display().to_string());
        }
        Start::Scratch => {}
    }
    match task_of(cfg) {
        Some(Task::Retrieval) => {
            if out.model.itc_dim == 0 {
                return Err(
                    "finetune.task = \"retrieval\" needs an ITC head: the source run has none, \
                     so set model.itc_dim (e.g. 64) for a fresh one"
                        .into(),
                );
            }
            // Matching only: no masked tokens, selected on Recall@1.
            out.set_vqa_weight(0.0);
            out.data.mask_prob = 0.0;
            out.eval.best = crate::config::BestMetric::RetrievalR1;
        }
        Some(Task::Caption) => {
            // The run trains on captions and selects on CIDEr-D.
            out.set_vqa_weight(0.0);
            out.eval.best = crate::config::BestMetric::Cider;
        }
        _ => {
            // The run trains and selects on VQA only.
            out.set_vqa_weight(1.0);
            out.eval.best = crate::config::BestMetric::VqaAccuracy;
        }
    }
    Ok(out)
}

/// Parameter paths (`encoder.VisualBert.visual_bert.encoder.layers.0...`) with their ids.
pub fn param_paths<M: Module>(module: &M) -> Vec<(String, ParamId)> {
    crate::params::param_entries(module)
        .into_iter()
        .map(|p| (p.dotted(), p.id))
        .collect()
}

/// What every fine-tuning task shares: the run's seed and batch size, the devices, and how the
/// pretrained weights train.
pub(crate) struct TaskRun {
    /// Seed of the data and of every step's draws.
    pub seed: u64,
    /// Examples per step.
    pub batch_size: usize,
    /// The plain device (evaluation).
    pub device: Device,
    /// Its autodiff view (training).
    pub train_device: Device,
    /// Encoder layers (and the embeddings) kept frozen.
    pub freeze_layers: usize,
    /// Learning rate of the pretrained weights relative to the new head's.
    pub encoder_lr_ratio: f64,
}

impl TaskRun {
    /// The examples and the generator of training step `step`.
    pub fn examples(&self, step: usize) -> (rand::rngs::StdRng, Vec<u64>) {
        crate::trainer::step_examples(self.seed, step, self.batch_size)
    }

    /// The parameter groups of a task that trains what `trains` accepts, with a new head under
    /// path prefix `head`: frozen are the first layers and everything the task does not train;
    /// all but the head learn at `encoder_lr_ratio`.
    pub fn groups(&self, model: &PretrainModel, trains: fn(&str) -> bool, head: &str) -> Groups {
        let paths = param_paths(model);
        let ids = |keep: &dyn Fn(&str) -> bool| {
            paths
                .iter()
                .filter(|(p, _)| keep(p))
                .map(|(_, id)| *id)
                .collect()
        };
        Groups {
            frozen: ids(&|p| frozen(p, self.freeze_layers) || !trains(p)),
            slow: ids(&|p| !p.starts_with(head)),
            slow_ratio: self.encoder_lr_ratio,
        }
    }
}

/// Whether the parameter at `path` belongs to the encoder proper (embeddings, layers, poolers),
/// not to a pretraining head.
pub fn is_core(path: &str) -> bool {
    path.starts_with("encoder.VisualBert.visual_bert.")
        || path.starts_with("encoder.ViLBert.bert.")
        || path.starts_with("encoder.Lxmert.lxmert.")
}

/// Whether the parameter at `path` belongs to the encoder's first `layers` layers (embeddings
/// included): those stay frozen.
pub fn frozen(path: &str, layers: usize) -> bool {
    if layers == 0 || !path.starts_with("encoder.") {
        return false;
    }
    let parts: Vec<&str> = path.split('.').collect();
    // Embeddings (LXMERT's region input encoder `visn_fc` among them) are the first layer.
    if parts
        .iter()
        .any(|p| p.ends_with("embeddings") || *p == "visn_fc")
    {
        return true;
    }
    // LXMERT's cross-modality layers (`x_layers`) sit above its language and relational
    // layers: never among the first.
    parts.windows(2).any(|w| {
        matches!(w[0], "layers" | "v_layers" | "c_layers" | "r_layers")
            && w[1].parse::<usize>().is_ok_and(|i| i < layers)
    })
}

/// Loads the source's tensors into `target` by name (task heads excluded) and reports what was
/// reused, new and dropped.
fn transfer(
    source: &PretrainModel,
    target: &mut PretrainModel,
    from: &Path,
    used: fn(&str) -> bool,
) -> Result<Reuse, String> {
    // The vocabulary may have grown (task words added): those two tensors are resized below.
    let target_shapes: std::collections::HashMap<String, Vec<usize>> = target
        .collect(None, None, false)
        .into_iter()
        .map(|t| (t.name, t.shape.to_vec()))
        .collect();
    let (old_vocab, new_vocab) = (source.vocab_size(), target.vocab_size());
    let grows = old_vocab != new_vocab;
    let all = source.collect(None, None, false);
    let source_names: Vec<String> = all.iter().map(|t| t.name.clone()).collect();
    // Only what the target has (a task head of the source the task does not use, such as an
    // ITC head or a caption decoder, is dropped; VQA heads are always new); rows of a grown
    // vocabulary are copied below; any other change of shape is an error of `apply`.
    let tensors: Vec<_> = all
        .into_iter()
        .filter(|t| !t.name.starts_with("vqa.") && target_shapes.contains_key(&t.name))
        .filter(|t| !grows || target_shapes[&t.name] == t.shape.to_vec())
        .collect();
    let result = target.apply(tensors, None, None, false);
    if !result.errors.is_empty() {
        return Err(format!(
            "{}: the checkpoint does not fit the model: {:?}",
            from.display(),
            result.errors
        ));
    }
    let resized_names = if grows {
        target.copy_vocabulary_rows(source)?
    } else {
        Vec::new()
    };
    let resized = resized_names
        .iter()
        .map(|n| format!("{n} ({old_vocab} -> {new_vocab} rows)"))
        .collect();
    let mut applied = result.applied;
    applied.extend(resized_names);
    let reused: HashSet<&String> = applied.iter().collect();
    let (core, kept) = applied.iter().cloned().partition(|n| used(n));
    Ok(Reuse {
        from: Some(from.display().to_string()),
        reused: core,
        kept,
        resized,
        new: target
            .collect(None, None, false)
            .into_iter()
            .map(|t| t.name)
            .filter(|n| !reused.contains(n))
            .collect(),
        dropped: source_names
            .into_iter()
            .filter(|n| !reused.contains(n))
            .collect(),
    })
}

/// Everything a fine-tuning run builds before its first step.
struct Setup {
    data: TaskData,
    spec: ModelSpec,
    tokenizer_note: String,
}

/// The data of the task a run fine-tunes for.
enum TaskData {
    Vqa(VqaData),
    Caption(Box<crate::caption::SceneCaptions>),
    Retrieval(crate::data::Data),
}

/// The retrieval set-up: the scenes (their objects' boxes, as in pretraining), unmasked, with
/// captions mismatched at `data.mismatch_prob`; the source's (or a scene) vocabulary.
fn retrieval_setup(
    cfg: &TrainConfig,
    start: &Start,
    dir: &RunDir,
    device: &Device,
    region_classes: usize,
    bert: Option<BertConfig>,
    events: &mut impl FnMut(Event),
) -> Result<Setup, String> {
    let scenes = SceneConfig::default();
    let (tokenizer, note) = tokenizer_for(cfg, start, dir, None, &scenes)?;
    let region_features = crate::features::region_features(cfg, &scenes, device, events)?;
    let batcher = SceneBatcher {
        tokenizer,
        scenes,
        seed: cfg.run.seed,
        pool: cfg.data.pool,
        masking: MaskingConfig {
            mask_prob: 0.0,
            ..MaskingConfig::default()
        },
        mismatch_prob: cfg.data.mismatch_prob,
        region_masking: None,
        scenes_per_split: cfg.data.train_scenes,
        region_features,
        answers: None,
    };
    let spec = ModelSpec {
        shape: ModelShape {
            vocab: batcher.tokenizer.vocab_size(),
            feature_dim: batcher.feature_dim(),
            max_text_len: cfg.data.max_text_len,
            answers: 0,
            region_classes,
        },
        bert,
        caption_decoder: None,
        region_head: false,
    };
    Ok(Setup {
        data: TaskData::Retrieval(crate::data::Data::Scenes(Arc::new(batcher))),
        spec,
        tokenizer_note: note,
    })
}

/// The captioning set-up: the scenes through the run's image pipeline, the source's (or a
/// scene) vocabulary, no answers, and a caption decoder when `finetune.captioner` asks for one.
fn caption_setup(
    cfg: &TrainConfig,
    start: &Start,
    dir: &RunDir,
    device: &Device,
    region_classes: usize,
    bert: Option<BertConfig>,
) -> Result<Setup, String> {
    let f = cfg.finetune.as_ref().expect("checked");
    let scenes = SceneConfig::default();
    let (tokenizer, note) = tokenizer_for(cfg, start, dir, None, &scenes)?;
    let pipeline = ImagePipeline::new(cfg, device)?;
    let spec = ModelSpec {
        shape: ModelShape {
            vocab: tokenizer.vocab_size(),
            feature_dim: pipeline.feature_dim(),
            max_text_len: cfg.data.max_text_len,
            answers: 0,
            region_classes,
        },
        bert,
        region_head: false,
        caption_decoder: (f.captioner == Captioner::Decoder).then_some(
            crate::run_dir::DecoderSpec {
                layers: f.decoder_layers,
            },
        ),
    };
    let data = crate::caption::SceneCaptions {
        scenes,
        seed: cfg.run.seed,
        scenes_per_split: cfg.data.train_scenes,
        pipeline,
        tokenizer,
    };
    Ok(Setup {
        data: TaskData::Caption(Box::new(data)),
        spec,
        tokenizer_note: note,
    })
}

/// The whole words of `texts` missing from `vocabulary` (HF's `add_tokens` for a whole-word
/// vocabulary): appended after the existing tokens, so every existing id keeps its meaning.
fn task_words<S: AsRef<str>>(
    vocabulary: &[String],
    texts: impl IntoIterator<Item = S>,
) -> Result<Vec<String>, String> {
    let known: HashSet<&str> = vocabulary.iter().map(String::as_str).collect();
    let words = BertTokenizer::word_vocabulary(texts, 30_000, true).map_err(|e| e.to_string())?;
    Ok(words
        .into_iter()
        .filter(|w| {
            w.chars().count() > 1
                && !w.starts_with("##")
                && !w.starts_with('[')
                && !known.contains(w.as_str())
        })
        .collect())
}

fn tokenizer_for(
    cfg: &TrainConfig,
    start: &Start,
    dir: &RunDir,
    files: Option<&FileVqa>,
    scenes: &SceneConfig,
) -> Result<(BertTokenizer, String), String> {
    let f = cfg.finetune.as_ref().expect("checked");
    let options = TokenizerOptions::default().with_max_len(cfg.data.max_text_len);
    if dir.vocab_path().is_file() {
        return Ok((
            dir.tokenizer(cfg.data.max_text_len)?,
            "the run's vocabulary".into(),
        ));
    }
    let (tok, note) = match start {
        Start::Run(source) => {
            let tokens =
                tuwen_io::read_to_string(source.vocab_path()).map_err(|e| e.to_string())?;
            let mut tokens: Vec<String> = tokens.lines().map(str::to_string).collect();
            // Only a whole-word vocabulary built by tuwen grows; a BERT WordPiece vocabulary
            // already splits unseen words into known pieces.
            let whole_words = source.config()?.model.init.is_none();
            let added = match (files, f.extend_vocabulary && whole_words) {
                (Some(set), true) => task_words(&tokens, set.train.iter().map(|e| &e.question))?,
                _ => Vec::new(),
            };
            let note = format!(
                "the vocabulary of {} + {} words of the task's questions",
                source.path().display(),
                added.len()
            );
            tokens.extend(added);
            (BertTokenizer::from_tokens(&tokens, options), note)
        }
        Start::Bert(bert) => (
            BertTokenizer::from_vocab(bert.join("vocab.txt"), options),
            format!("the vocabulary of {}", bert.display()),
        ),
        Start::Scratch => match files {
            Some(set) => (
                BertTokenizer::word_vocabulary(set.train.iter().map(|e| &e.question), 30_000, true)
                    .and_then(|t| BertTokenizer::from_tokens(&t, options)),
                "a word vocabulary of the training questions".into(),
            ),
            None => (
                SceneBatcher::train_tokenizer(
                    scenes,
                    cfg.run.seed,
                    cfg.data.vocab_scenes,
                    cfg.data.max_text_len,
                ),
                "the scenes' word vocabulary".into(),
            ),
        },
    };
    let tok = tok.map_err(|e| e.to_string())?;
    tok.save_vocab(dir.vocab_path())
        .map_err(|e| e.to_string())?;
    Ok((tok, note))
}

fn setup(
    cfg: &TrainConfig,
    start: &Start,
    dir: &RunDir,
    device: &Device,
    events: &mut impl FnMut(Event),
) -> Result<Setup, String> {
    let f = cfg.finetune.as_ref().expect("checked");
    let scenes = SceneConfig::default();
    let region_classes = match start {
        Start::Run(source) => source.spec()?.shape.region_classes,
        _ => crate::batch::REGION_CLASSES,
    };
    let bert = match start {
        Start::Bert(b) => {
            Some(BertConfig::from_json_file(b.join("config.json")).map_err(|e| e.to_string())?)
        }
        _ => None,
    };
    match f.task {
        Task::Caption => return caption_setup(cfg, start, dir, device, region_classes, bert),
        Task::Retrieval => {
            return retrieval_setup(cfg, start, dir, device, region_classes, bert, events);
        }
        Task::Vqa => {}
    }
    let (data, note) = match f.dataset {
        VqaDataset::Scenes => {
            let (tokenizer, note) = tokenizer_for(cfg, start, dir, None, &scenes)?;
            let answers = match dir.answers()? {
                a if !a.is_empty() => a,
                _ => {
                    let a = SceneBatcher::answer_vocabulary(
                        &scenes,
                        cfg.run.seed,
                        cfg.data.vocab_scenes,
                    );
                    dir.save_answers(&a)?;
                    a
                }
            };
            let region_features = crate::features::region_features(cfg, &scenes, device, events)?;
            let batcher = SceneBatcher {
                tokenizer,
                scenes,
                seed: cfg.run.seed,
                pool: cfg.data.pool,
                masking: MaskingConfig::default(),
                mismatch_prob: 0.0,
                region_masking: None,
                scenes_per_split: cfg.data.train_scenes,
                region_features,
                answers: Some(Arc::new(answers)),
            };
            (VqaData::Scenes(Arc::new(batcher)), note)
        }
        VqaDataset::EasyVqa | VqaDataset::VqaV2 => {
            let pipeline = ImagePipeline::new(cfg, device)?;
            let set = FileVqa::load(f, &pipeline)?;
            events(Event::Note(format!(
                "VQA: {} training, {} validation, {} test questions on {} images; regions: {}",
                set.train.len(),
                set.validation.len(),
                set.test.len(),
                set.images.len(),
                pipeline.describe()
            )));
            let (tokenizer, note) = tokenizer_for(cfg, start, dir, Some(&set), &scenes)?;
            let answers = match dir.answers()? {
                a if !a.is_empty() => a,
                _ => {
                    let a = answer_vocabulary(&set.train, f.answers);
                    dir.save_answers(&a)?;
                    a
                }
            };
            let feature_dim = pipeline.feature_dim();
            (
                VqaData::Files(Arc::new(FileData {
                    set,
                    tokenizer,
                    answers,
                    feature_dim,
                    seed: cfg.run.seed,
                })),
                note,
            )
        }
    };
    let (vocab, feature_dim) = match &data {
        VqaData::Scenes(s) => (s.tokenizer.vocab_size(), s.feature_dim()),
        VqaData::Files(f) => (f.tokenizer.vocab_size(), f.feature_dim),
    };
    let spec = ModelSpec {
        shape: ModelShape {
            vocab,
            feature_dim,
            max_text_len: cfg.data.max_text_len,
            answers: data.answers().len(),
            region_classes,
        },
        bert,
        caption_decoder: None,
        region_head: false,
    };
    Ok(Setup {
        data: TaskData::Vqa(data),
        spec,
        tokenizer_note: note,
    })
}

/// The fresh model of a new fine-tuning run with the source's weights, and the reuse report.
fn initial_model(
    cfg: &TrainConfig,
    start: &Start,
    spec: &ModelSpec,
    device: &Device,
) -> Result<(PretrainModel, Reuse), String> {
    // What the task trains of the source's tensors (the rest is kept unchanged).
    let used: fn(&str) -> bool = match task_of(cfg) {
        Some(Task::Caption) => crate::caption::trains,
        Some(Task::Retrieval) => crate::matching::trains,
        _ => is_core,
    };
    let mut model = PretrainModel::build(&cfg.model, spec, device);
    let reuse = match start {
        Start::Scratch => Reuse {
            from: None,
            new: param_names(&model),
            ..Reuse::default()
        },
        Start::Run(source) => {
            let (_, step) = source.checkpoint(Which::Best)?;
            let loaded = PretrainModel::load(source.path(), Which::Best, device)?;
            let mut r = transfer(&loaded.model, &mut model, source.path(), used)?;
            r.from = Some(format!(
                "{} (best checkpoint, step {step})",
                source.path().display()
            ));
            r
        }
        Start::Bert(bert) => {
            let before = param_names(&model);
            if let Encoder::VisualBert(v) = &mut model.encoder {
                v.visual_bert = v
                    .visual_bert
                    .clone()
                    .init_from_bert(bert.join("model.safetensors"))
                    .map_err(|e| e.to_string())?;
            }
            let (reused, new) = before.into_iter().partition(|n| {
                n.starts_with("encoder.VisualBert.visual_bert.")
                    && (n.contains(".embeddings.text.")
                        || n.contains(".encoder.")
                        || n.contains(".pooler."))
            });
            Reuse {
                from: Some(bert.display().to_string()),
                reused,
                kept: Vec::new(),
                resized: Vec::new(),
                new,
                dropped: Vec::new(),
            }
        }
    };
    let fresh_decoder = reuse
        .new
        .iter()
        .any(|n| n == "decoder.token_embeddings.weight");
    if let Some(decoder) = model.decoder.as_mut().filter(|_| fresh_decoder) {
        // A new decoder's token embeddings (also its output projection) start as the encoder's
        // word embeddings: the caption decoder writes the words the encoder learnt.
        let words = model.encoder.word_embeddings().val();
        if words.dims() == decoder.token_embeddings.weight.dims() {
            decoder.token_embeddings.weight = burn::module::Param::from_tensor(words.detach());
        }
    }
    Ok((model, reuse))
}

fn param_names(model: &PretrainModel) -> Vec<String> {
    model
        .collect(None, None, false)
        .into_iter()
        .map(|t| t.name)
        .collect()
}

/// Runs (or resumes) a VQA fine-tuning run in `dir` on `devices` (the first holds the model;
/// one device is supported). `stop_after` ends the run early, as an interruption would.
pub fn run(
    cfg: &TrainConfig,
    dir: &Path,
    devices: &[Device],
    stop_after: Option<usize>,
    mut events: impl FnMut(Event),
) -> Result<(Summary, Reuse), String> {
    if crate::distributed::placement()?.1 > 1 {
        return Err(
            "MPI data parallelism covers pretraining (`mpirun -np N tuwen train`); run \
             fine-tuning in one process"
                .into(),
        );
    }
    let given = cfg;
    let start = start_of(finetune_section(given)?)?;
    let cfg = &effective(given, &start)?;
    cfg.validate()?;
    if cfg.model != given.model && cfg.model.init.is_none() {
        events(Event::Note(
            "the model (and region features) come from the pretrained run; the \
             configuration's [model] section is not used"
                .into(),
        ));
    }
    let f = cfg.finetune.as_ref().expect("effective_config checked");
    let Some(device) = devices.first() else {
        return Err("no device to train on".into());
    };
    tuwen_io::create_dir_all(dir).map_err(|e| e.to_string())?;
    let run_dir = RunDir::new(dir);
    let resuming = run_dir.check_resume(cfg, &mut events)?;
    let ad = device.clone().autodiff();
    let Setup {
        data,
        spec,
        tokenizer_note,
    } = setup(cfg, &start, &run_dir, device, &mut events)?;
    events(Event::Note(match &data {
        TaskData::Vqa(d) => format!("tokens: {tokenizer_note}; {} answers", d.answers().len()),
        TaskData::Caption(d) => format!(
            "tokens: {tokenizer_note}; captions of the scenes, regions: {}",
            d.pipeline.describe()
        ),
        TaskData::Retrieval(_) => format!(
            "tokens: {tokenizer_note}; matched and mismatched captions of the scenes \
             (mismatch probability {})",
            cfg.data.mismatch_prob
        ),
    }));
    let reuse_path = run_dir.path().join("reuse.json");
    let (model, reuse) = {
        let _rng = seeded(device, cfg.run.seed);
        initial_model(cfg, &start, &spec, &ad)?
    };
    if !resuming {
        let text = serde_json::to_string_pretty(&reuse).map_err(|e| e.to_string())?;
        checkpoint::write_atomic(&reuse_path, text.as_bytes()).map_err(|e| e.to_string())?;
    }
    events(Event::Note(format!(
        "weights from {}: {} tensors reused, {} kept unchanged, {} new, {} dropped ({})",
        reuse.from.as_deref().unwrap_or("nowhere (from scratch)"),
        reuse.reused.len(),
        reuse.kept.len(),
        reuse.new.len(),
        reuse.dropped.len(),
        reuse_path.display()
    )));

    run_dir.save_spec(&spec)?;
    let frozen_tensors = param_paths(&model)
        .iter()
        .filter(|(p, _)| frozen(p, f.freeze_layers))
        .count();
    if frozen_tensors > 0 {
        events(Event::Note(format!(
            "{frozen_tensors} tensors frozen (the embeddings and the first {} layers)",
            f.freeze_layers
        )));
    }
    let results = |name: &str| run_dir.path().join(name);
    let task_run = TaskRun {
        seed: cfg.run.seed,
        batch_size: cfg.run.batch_size,
        device: device.clone(),
        train_device: ad,
        freeze_layers: f.freeze_layers,
        encoder_lr_ratio: f.encoder_lr_ratio,
    };
    let summary = match data {
        TaskData::Vqa(data) => {
            let task = Arc::new(VqaTask {
                data,
                run: task_run,
                eval_questions: cfg.eval.scenes,
                results: results("test_results.json"),
            });
            crate::trainer::train(task, model, cfg, &run_dir, 1, stop_after, &mut events)?
        }
        TaskData::Caption(data) => {
            let task = Arc::new(crate::caption::CaptionTask {
                data: *data,
                run: task_run,
                eval_images: cfg.eval.scenes,
                max_caption_len: f.max_caption_len,
                results: results("test_captions.json"),
            });
            crate::trainer::train(task, model, cfg, &run_dir, 1, stop_after, &mut events)?
        }
        TaskData::Retrieval(data) => {
            let task = Arc::new(crate::matching::RetrievalTask {
                data,
                run: task_run,
                images: cfg.eval.retrieval_images,
                top_k: cfg.eval.retrieval_top_k,
                hard_negatives: f.negatives == crate::config::Negatives::Hard,
            });
            crate::trainer::train(task, model, cfg, &run_dir, 1, stop_after, &mut events)?
        }
    };
    Ok((summary, reuse))
}

/// VQA fine-tuning as a [`Task`] of the shared loop.
struct VqaTask {
    data: VqaData,
    run: TaskRun,
    eval_questions: usize,
    /// `test_results.json` in the run directory.
    results: PathBuf,
}

impl crate::trainer::Task for VqaTask {
    type Batch = QuestionBatch;

    fn batch(&self, step: usize) -> Result<QuestionBatch, String> {
        let (mut rng, indices) = self.run.examples(step);
        self.data
            .batch(Split::Train, &indices, &mut rng)
            .map_err(|e| format!("step {step}: {e}"))
    }

    fn gradients(
        &self,
        model: &PretrainModel,
        batch: &QuestionBatch,
        seed: u64,
    ) -> Result<(GradientsParams, StepLosses), String> {
        model.check_batch(&batch.host).map_err(|e| e.to_string())?;
        let device = &self.run.train_device;
        let head = model.vqa.as_ref().ok_or("the model has no VQA head")?;
        // Dropout masks keyed by the step seed (`tuwen_fusion::dropout`).
        let (out, accuracy) = with_mask_seed(seed, || {
            model.vqa_objective(head, &batch.host.to_device(device))
        })
        .map_err(|e| e.to_string())?;
        let losses = StepLosses {
            vqa: out.loss.clone().into_scalar::<f32>(),
            vqa_accuracy: accuracy,
            ..StepLosses::default()
        };
        Ok((
            GradientsParams::from_grads(out.loss.backward(), model),
            losses,
        ))
    }

    fn total(&self, losses: &StepLosses) -> f32 {
        losses.vqa
    }

    fn train_values(&self, l: &StepLosses, grad_norm: f32, lr: f64) -> Vec<(&'static str, f64)> {
        vec![
            ("train/vqa", l.vqa as f64),
            ("train/vqa_accuracy", l.vqa_accuracy as f64),
            ("train/grad_norm", grad_norm as f64),
            ("train/lr", lr),
        ]
    }

    fn evaluate(&self, model: &PretrainModel, split: Split) -> Result<EvalMetrics, String> {
        // Validation: `eval.scenes` questions; test: every question of a file set.
        let questions = match (&self.data, split) {
            (VqaData::Files(_), Split::Test) => usize::MAX,
            _ => self.eval_questions,
        };
        let eval = crate::vqa::evaluate(
            model,
            &self.data,
            split,
            questions,
            self.run.seed,
            &self.run.device,
        )?;
        if split == Split::Test && matches!(self.data, VqaData::Files(_)) {
            // Every test question's answer, in the official results format (`tuwen score vqa`).
            let text = serde_json::to_string(&eval.predictions).map_err(|e| e.to_string())?;
            crate::checkpoint::write_atomic(&self.results, text.as_bytes())
                .map_err(|e| e.to_string())?;
        }
        Ok(EvalMetrics {
            vqa_accuracy: eval.accuracy,
            ..EvalMetrics::default()
        })
    }

    fn metric_values(
        &self,
        prefix: &str,
        metrics: &EvalMetrics,
        _model: &PretrainModel,
    ) -> Vec<(String, f64)> {
        vec![(
            format!("{prefix}/vqa_accuracy"),
            metrics.vqa_accuracy as f64,
        )]
    }

    fn groups(&self, model: &PretrainModel) -> Groups {
        self.run
            .groups(model, |p| is_core(p) || p.starts_with("vqa."), "vqa.")
    }

    fn has_test(&self) -> bool {
        self.data.split_len(Split::Test) > 0
    }

    fn test_note(&self, step: usize, metrics: &EvalMetrics) -> String {
        let results = match &self.data {
            VqaData::Files(_) => format!("; answers in {}", self.results.display()),
            VqaData::Scenes(_) => String::new(),
        };
        format!(
            "test split, model of step {step} (selected on validation): VQA accuracy {:.4}{results}",
            metrics.vqa_accuracy
        )
    }
}
