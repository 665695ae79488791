//! A run directory and everything that rebuilds what its run built: the resolved configuration
//! (`config.toml`), the vocabulary (`vocab.txt`), the VQA answers (`answers.txt`), the model's
//! shape (`model.json`) and the checkpoints (`checkpoints/best`, `checkpoints/last`). Training,
//! fine-tuning, evaluation and inference all load runs through [`RunDir`] and
//! [`PretrainModel::load`], so they build exactly what training built.

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use serde::{Deserialize, Serialize};
use tuwen_fusion::BertConfig;
use tuwen_io::PathContext;
use tuwen_tokenizer::{BertTokenizer, TokenizerOptions};

use crate::config::TrainConfig;
use crate::event::EvalMetrics;
use crate::images::ImagePipeline;
use crate::model::{ModelShape, PretrainModel};

/// Which checkpoint of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Which {
    /// The checkpoint selected on the validation split.
    Best,
    /// The latest checkpoint.
    Last,
    /// The checkpoint taken at this step (`best` or `last`, whichever was saved then).
    Step(usize),
}

impl std::str::FromStr for Which {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "best" => Ok(Which::Best),
            "last" => Ok(Which::Last),
            _ => s.parse().map(Which::Step).map_err(|_| {
                format!("unknown checkpoint {s:?}: expected best, last or a step number")
            }),
        }
    }
}

/// What a run's model is built from besides its configuration: the data's shape and, for a
/// model started from a BERT checkpoint, that checkpoint's text configuration. Saved as
/// `model.json` when the run starts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    /// Vocabulary, region width, text length, answers, region classes.
    pub shape: ModelShape,
    /// The BERT text configuration the encoder was initialised from (`model.init`).
    pub bert: Option<BertConfig>,
    /// The caption decoder of an encoder-decoder captioner (`None`: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caption_decoder: Option<DecoderSpec>,
    /// Whether a single-stream encoder has its own masked region classification head
    /// ([`crate::model::PretrainModel::region_head`]); runs saved before it existed have none.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub region_head: bool,
}

impl ModelSpec {
    /// The region classes a region head is built for (0: no region head).
    pub fn region_head_classes(&self) -> usize {
        if self.region_head {
            self.shape.region_classes
        } else {
            0
        }
    }
}

/// What fixes a caption decoder beyond the encoder's sizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecoderSpec {
    /// Decoder layers.
    pub layers: usize,
}

/// The step and held-out metrics a checkpoint was saved with (its `state.json`).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
struct SavedState {
    step: usize,
    eval: EvalMetrics,
}

/// A run directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunDir {
    path: PathBuf,
    follower: bool,
}

impl RunDir {
    /// The run directory at `path` (it need not exist yet).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            follower: false,
        }
    }

    /// This directory as a rank other than 0 of an MPI job sees it: it reads what rank 0 wrote
    /// (vocabulary, answers, `model.json`, checkpoints) and writes nothing, so the processes
    /// never race on a file.
    pub fn follower(mut self, follower: bool) -> Self {
        self.follower = follower;
        self
    }

    /// Whether this process only reads the directory (see [`RunDir::follower`]).
    pub fn is_follower(&self) -> bool {
        self.follower
    }

    /// An existing run directory: an error naming the path unless it holds a `config.toml`.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, String> {
        let dir = Self::new(path);
        if !dir.path.is_dir() {
            return Err(format!("{}: no such run directory", dir.path.display()));
        }
        if !dir.config_path().is_file() {
            return Err(format!(
                "{}: not a tuwen run directory (no config.toml)",
                dir.path.display()
            ));
        }
        Ok(dir)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `config.toml`: the resolved configuration.
    pub fn config_path(&self) -> PathBuf {
        self.path.join("config.toml")
    }

    /// `checkpoints/`.
    pub fn checkpoints(&self) -> PathBuf {
        self.path.join("checkpoints")
    }

    /// `vocab.txt`: the run's vocabulary.
    pub fn vocab_path(&self) -> PathBuf {
        self.path.join("vocab.txt")
    }

    /// `answers.txt`: the VQA answers, one per line, in head order.
    pub fn answers_path(&self) -> PathBuf {
        self.path.join("answers.txt")
    }

    /// `model.json`: the [`ModelSpec`].
    pub fn spec_path(&self) -> PathBuf {
        self.path.join("model.json")
    }

    /// Whether the run has a checkpoint to resume from.
    pub fn has_checkpoint(&self) -> bool {
        let c = self.checkpoints();
        c.join("last").is_dir() || c.join(".last.old").is_dir()
    }

    /// Checks that a run with `cfg` may start or continue here: with a checkpoint, the saved
    /// configuration must equal `cfg` except for `run.steps` (extending a finished run);
    /// without one, files a stopped earlier start left are removed. Returns whether the run
    /// resumes.
    pub fn check_resume(
        &self,
        cfg: &TrainConfig,
        events: &mut impl FnMut(crate::event::Event),
    ) -> Result<bool, String> {
        let config_path = self.config_path();
        let has_checkpoint = self.has_checkpoint();
        if has_checkpoint && config_path.is_file() {
            let saved = TrainConfig::load(&config_path).map_err(|e| e.to_string())?;
            let mut same_length = saved.clone();
            same_length.run.steps = cfg.run.steps;
            if same_length != *cfg {
                return Err(format!(
                    "{} holds a run with a different configuration ({}); resume it with that \
                     configuration (only run.steps may change) or train in a new directory",
                    self.path.display(),
                    config_path.display()
                ));
            }
            if saved.run.steps != cfg.run.steps {
                events(crate::event::Event::Note(format!(
                    "run length changed from {} to {} steps: the learning-rate schedule is \
                     re-drawn over the new length from the resume point on",
                    saved.run.steps, cfg.run.steps
                )));
            }
        }
        if !has_checkpoint && !self.follower {
            // A fresh start: files a stopped earlier run left (perhaps with another
            // configuration) must not be reused.
            for path in [
                self.vocab_path(),
                self.answers_path(),
                self.spec_path(),
                self.path.join("reuse.json"),
            ] {
                if path.is_file() {
                    std::fs::remove_file(&path)
                        .at(&path)
                        .map_err(|e| e.to_string())?;
                }
            }
        }
        Ok(has_checkpoint)
    }

    /// The saved configuration.
    pub fn config(&self) -> Result<TrainConfig, String> {
        TrainConfig::load(&self.config_path()).map_err(|e| e.to_string())
    }

    /// The saved vocabulary, with the run's text length.
    pub fn tokenizer(&self, max_text_len: usize) -> Result<BertTokenizer, String> {
        let options = TokenizerOptions::default().with_max_len(max_text_len);
        BertTokenizer::from_vocab(self.vocab_path(), options)
            .map_err(|e| format!("{}: {e}", self.vocab_path().display()))
    }

    /// The saved answers (empty when the run has no `answers.txt`).
    pub fn answers(&self) -> Result<Vec<String>, String> {
        let path = self.answers_path();
        if !path.is_file() {
            return Ok(Vec::new());
        }
        let text = tuwen_io::read_to_string(&path).map_err(|e| e.to_string())?;
        let answers: Vec<String> = text.lines().map(str::to_string).collect();
        if answers.iter().any(String::is_empty) {
            return Err(format!("{}: an empty answer line", path.display()));
        }
        Ok(answers)
    }

    /// Writes `answers` (one per line, in head order).
    pub fn save_answers(&self, answers: &[String]) -> Result<(), String> {
        if self.follower {
            return Ok(());
        }
        crate::checkpoint::write_atomic(
            &self.answers_path(),
            (answers.join("\n") + "\n").as_bytes(),
        )
        .map_err(|e| e.to_string())
    }

    /// The saved [`ModelSpec`].
    pub fn spec(&self) -> Result<ModelSpec, String> {
        let path = self.spec_path();
        let text = tuwen_io::read_to_string(&path).map_err(|e| {
            format!("{e} (runs written before model.json existed cannot be loaded; train again)")
        })?;
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Writes the [`ModelSpec`].
    pub fn save_spec(&self, spec: &ModelSpec) -> Result<(), String> {
        if self.follower {
            return Ok(());
        }
        let text = serde_json::to_string_pretty(spec).map_err(|e| e.to_string())?;
        crate::checkpoint::write_atomic(&self.spec_path(), text.as_bytes())
            .map_err(|e| e.to_string())
    }

    /// The checkpoint name `which` refers to, with its step.
    pub fn checkpoint(&self, which: Which) -> Result<(&'static str, usize), String> {
        let saved = |name: &'static str| -> Result<Option<usize>, String> {
            let state: Option<SavedState> =
                crate::checkpoint::load_state(&self.checkpoints(), name)
                    .map_err(|e| e.to_string())?;
            Ok(state.map(|s| s.step))
        };
        let missing = |name: &str| {
            format!(
                "{}: the run has no {name} checkpoint (has it reached its first evaluation?)",
                self.checkpoints().display()
            )
        };
        match which {
            Which::Best => Ok(("best", saved("best")?.ok_or_else(|| missing("best"))?)),
            Which::Last => Ok(("last", saved("last")?.ok_or_else(|| missing("last"))?)),
            Which::Step(step) => {
                let (best, last) = (saved("best")?, saved("last")?);
                match (best == Some(step), last == Some(step)) {
                    (true, _) => Ok(("best", step)),
                    (_, true) => Ok(("last", step)),
                    _ => Err(format!(
                        "{}: no checkpoint of step {step} (best: {}, last: {})",
                        self.checkpoints().display(),
                        best.map_or("none".into(), |s| format!("step {s}")),
                        last.map_or("none".into(), |s| format!("step {s}")),
                    )),
                }
            }
        }
    }
}

/// A trained run, loaded: the model (on a plain device, in evaluation mode), the tokenizer and
/// image pipeline it was trained with, its answers and configuration.
#[derive(Debug)]
pub struct LoadedRun {
    /// The model with the checkpoint's weights.
    pub model: PretrainModel,
    /// The run's vocabulary and text length.
    pub tokenizer: BertTokenizer,
    /// How the run turned images into regions.
    pub images: ImagePipeline,
    /// VQA answers in head order (empty without a VQA head).
    pub answers: Vec<String>,
    /// The run's configuration.
    pub config: TrainConfig,
    /// The checkpoint's step.
    pub step: usize,
    /// The run directory.
    pub dir: RunDir,
}

impl PretrainModel {
    /// Loads checkpoint `which` of the run in `dir` on `device`, with the tokenizer and image
    /// pipeline it was trained with. Errors name the file at fault (missing run, checkpoint of
    /// another architecture, ...).
    pub fn load(
        dir: impl Into<PathBuf>,
        which: Which,
        device: &Device,
    ) -> Result<LoadedRun, String> {
        let dir = RunDir::open(dir)?;
        let config = dir.config()?;
        let spec = dir.spec()?;
        let tokenizer = dir.tokenizer(config.data.max_text_len)?;
        if tokenizer.vocab_size() != spec.shape.vocab {
            return Err(format!(
                "{} has {} tokens but {} says the model has {}",
                dir.vocab_path().display(),
                tokenizer.vocab_size(),
                dir.spec_path().display(),
                spec.shape.vocab
            ));
        }
        let answers = dir.answers()?;
        if answers.len() != spec.shape.answers {
            return Err(format!(
                "{} holds {} answers but the model's head has {}",
                dir.answers_path().display(),
                answers.len(),
                spec.shape.answers
            ));
        }
        let (name, step) = dir.checkpoint(which)?;
        let fresh = PretrainModel::build(&config.model, &spec, device).with_objective_heads(
            &config,
            spec.region_head_classes(),
            device,
        );
        let model = crate::checkpoint::load_model(&dir.checkpoints(), name, fresh)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| {
                format!(
                    "{}: checkpoint {name} vanished",
                    dir.checkpoints().display()
                )
            })?;
        let images = ImagePipeline::new(&config, device)?;
        Ok(LoadedRun {
            model,
            tokenizer,
            images,
            answers,
            config,
            step,
            dir,
        })
    }
}
