//! `tuwen`: the command-line front end of the tuwen vision-language crates.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use tuwen_cli::device::{BackboneName, DeviceName, DtypeName};
use tuwen_cli::{extract, parity, score, train, vqa};
use tuwen_regions::ExtractorConfig;
use tuwen_tokenizer::{BertTokenizer, TokenizerOptions};
use tuwen_vision::{Backbone, Preprocess, imagenet_classes, top_k};

#[derive(Parser)]
#[command(
    name = "tuwen",
    version,
    about = "Vision-language pretraining and fine-tuning in Rust"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print, per text, one line with the JSON array of token ids (with [CLS]/[SEP]).
    ///
    /// Without --vocab/--tokenizer, the bert-base-uncased vocabulary fetched by
    /// `cargo xtask assets` is used.
    Tokenize {
        /// A BERT `vocab.txt`.
        #[arg(long, conflicts_with = "tokenizer")]
        vocab: Option<PathBuf>,
        /// A HF `tokenizer.json`.
        #[arg(long)]
        tokenizer: Option<PathBuf>,
        /// Treat the vocabulary as cased (no lowercasing); only with --vocab.
        #[arg(long)]
        cased: bool,
        /// Maximum length including [CLS] and [SEP].
        #[arg(long, default_value_t = 512)]
        max_len: usize,
        /// The texts.
        #[arg(required = true)]
        texts: Vec<String>,
    },
    /// Print the top-5 ImageNet classes of each image.
    ///
    /// Without --weights, the torchvision ImageNet MobileNetV2 from `cargo xtask assets` is used.
    Classify {
        /// Backbone.
        #[arg(long, value_enum, default_value_t = BackboneName::MobileNetV2)]
        backbone: BackboneName,
        /// A torchvision ImageNet state dict converted to safetensors.
        #[arg(long)]
        weights: Option<PathBuf>,
        /// Backend (those compiled in).
        #[arg(long, value_enum, default_value_t = DeviceName::Flex)]
        device: DeviceName,
        /// JPEG/PNG files.
        #[arg(required = true)]
        images: Vec<PathBuf>,
    },
    /// Extract region features of images into a feature store (resumable; bad images are
    /// reported, skipped and counted).
    ExtractRegions {
        /// A directory of JPEG/PNG images, or a text file listing image paths.
        #[arg(long)]
        images: PathBuf,
        /// The store directory (created or resumed).
        #[arg(long)]
        out: PathBuf,
        /// Backbone.
        #[arg(long, value_enum, default_value_t = BackboneName::MobileNetV2)]
        backbone: BackboneName,
        /// torchvision ImageNet weights (safetensors); default: the MobileNetV2 asset.
        #[arg(long)]
        weights: Option<PathBuf>,
        /// Ground-truth boxes: {"image_id": [[x1, y1, x2, y2], ...]} in original pixels.
        #[arg(long)]
        boxes: Option<PathBuf>,
        /// Regions per image.
        #[arg(long, default_value_t = 36)]
        max_regions: usize,
        /// Store precision.
        #[arg(long, value_enum, default_value_t = DtypeName::F16)]
        dtype: DtypeName,
        /// Backend (those compiled in).
        #[arg(long, value_enum, default_value_t = DeviceName::Flex)]
        device: DeviceName,
    },
    /// Pretrain a vision-language model on the built-in scenes (see configs/ for the settings).
    ///
    /// Without --config, the default run (configs/default.toml). Outputs go to the run
    /// directory: config.toml (resolved), vocab.txt, metrics.jsonl, train/eval/test plots (SVG + PNG),
    /// checkpoints/last and checkpoints/best.
    Train {
        /// TOML configuration; keys left out take the default run's values.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Run directory (default: runs/<config name>).
        #[arg(long)]
        run_dir: Option<PathBuf>,
        /// Continue the run in the run directory from its last checkpoint (bit-exact).
        #[arg(long, conflicts_with = "overwrite")]
        resume: bool,
        /// Delete what the run directory holds and start again.
        #[arg(long)]
        overwrite: bool,
        /// Override run.steps.
        #[arg(long)]
        steps: Option<usize>,
        /// Backend(s) (those compiled in). Several = data parallelism (the batch is split
        /// across them; the first holds the model).
        #[arg(long, value_enum, default_values_t = [DeviceName::Flex])]
        device: Vec<DeviceName>,
    },
    /// Fine-tune a pretrained run (or a HF BERT checkpoint, or nothing) on a task.
    ///
    /// The encoder's weights come from --from (its best checkpoint), the task heads are new;
    /// which tensors were reused, new or dropped is printed and saved as reuse.json in the run
    /// directory. The config's [finetune] section names the data (configs/easy_vqa.toml).
    Finetune {
        /// A tuwen run directory, or a HF checkpoint directory (config.json,
        /// model.safetensors, vocab.txt); omitted: from scratch.
        #[arg(long)]
        from: Option<PathBuf>,
        /// The task (must match the config's finetune.task).
        #[arg(long, value_enum, default_value_t = TaskName::Vqa)]
        task: TaskName,
        /// TOML configuration with a [finetune] section.
        #[arg(long)]
        config: PathBuf,
        /// Run directory (default: runs/<config name>).
        #[arg(long)]
        run_dir: Option<PathBuf>,
        /// Continue the run in the run directory from its last checkpoint.
        #[arg(long, conflicts_with = "overwrite")]
        resume: bool,
        /// Delete what the run directory holds and start again.
        #[arg(long)]
        overwrite: bool,
        /// Override run.steps.
        #[arg(long)]
        steps: Option<usize>,
        /// Backend (those compiled in).
        #[arg(long, value_enum, default_value_t = DeviceName::Flex)]
        device: DeviceName,
    },
    /// Answer a question about image files with a fine-tuned VQA run: the top-5 answers and
    /// their scores per image (an unreadable image is reported; the others are still answered).
    Vqa {
        /// The fine-tuned run directory.
        #[arg(long)]
        run: PathBuf,
        /// The question.
        #[arg(long)]
        question: String,
        /// Checkpoint: best, last or a step number.
        #[arg(long, default_value = "best")]
        checkpoint: String,
        /// Answers per image.
        #[arg(long, default_value_t = 5)]
        top: usize,
        /// One JSON object per image instead of text.
        #[arg(long)]
        json: bool,
        /// Backend (those compiled in).
        #[arg(long, value_enum, default_value_t = DeviceName::Flex)]
        device: DeviceName,
        /// JPEG/PNG files.
        #[arg(required = true)]
        images: Vec<PathBuf>,
    },
    /// Score results the way the official evaluations do (JSON on stdout).
    #[command(subcommand)]
    Score(Score),
    /// Compare a model with reference outputs stored in a fixture directory
    /// (config.json, model.safetensors, inputs.safetensors, expected.safetensors).
    Parity {
        /// The fixture directory.
        dir: PathBuf,
        /// Backend (those compiled in).
        #[arg(long, value_enum, default_value_t = DeviceName::Flex)]
        device: DeviceName,
        /// Maximum absolute difference allowed per output.
        #[arg(long, default_value_t = 1e-4)]
        tol: f32,
    },
}

/// Tasks of `tuwen finetune`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum TaskName {
    /// Visual question answering.
    Vqa,
}

#[derive(Subcommand)]
enum Score {
    /// VQA accuracy exactly as GT-Vision-Lab/VQA's vqaEval.py computes it: `overall`,
    /// `perAnswerType`, `perQuestionType` (percent, 2 decimals) and `perQuestion`.
    Vqa {
        /// VQA v2 questions JSON.
        #[arg(long)]
        questions: PathBuf,
        /// VQA v2 annotations JSON.
        #[arg(long)]
        annotations: PathBuf,
        /// Results JSON: `[{"question_id": .., "answer": ".."}]`.
        #[arg(long)]
        results: PathBuf,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Tokenize {
            vocab,
            tokenizer,
            cased,
            max_len,
            texts,
        } => {
            let options = TokenizerOptions::default()
                .with_max_len(max_len)
                .with_lowercase(!cased);
            let tok = match (vocab, tokenizer) {
                (Some(v), _) => BertTokenizer::from_vocab(v, options)?,
                (None, Some(t)) => BertTokenizer::from_tokenizer_json(t, options)?,
                (None, None) => {
                    let v = tuwen_assets::locate("minilm", "vocab.txt").context(
                        "no --vocab or --tokenizer given and the default vocabulary is missing",
                    )?;
                    BertTokenizer::from_vocab(v, options)?
                }
            };
            let mut out = std::io::stdout().lock();
            for text in &texts {
                let enc = tok.encode(text)?;
                writeln!(out, "{}", serde_json::to_string(&enc.ids)?)?;
            }
            Ok(())
        }
        Command::Classify {
            backbone,
            weights,
            device,
            images,
        } => {
            let device = device.open()?;
            let weights = default_weights(backbone, weights)?;
            let model = Backbone::from_torchvision(backbone.as_str(), &weights, 1000, &device)?;
            let classes = imagenet_classes();
            let preprocess = Preprocess::default();
            let mut out = std::io::stdout().lock();
            for path in &images {
                let pixels = preprocess.load_batch(&[path], &device)?;
                let ranked = top_k(model.forward(pixels), 5);
                writeln!(out, "{}", path.display())?;
                for (index, prob) in &ranked[0] {
                    writeln!(out, "  {prob:.4}  {}", classes[*index])?;
                }
            }
            Ok(())
        }
        Command::ExtractRegions {
            images,
            out,
            backbone,
            weights,
            boxes,
            max_regions,
            dtype,
            device,
        } => {
            let device = device.open()?;
            let weights = default_weights(backbone, weights)?;
            let options = extract::ExtractOptions {
                images: &images,
                out: &out,
                backbone: Backbone::from_torchvision(backbone.as_str(), &weights, 1000, &device)?,
                boxes: boxes.as_deref().map(extract::read_boxes).transpose()?,
                dtype: dtype.into(),
                config: ExtractorConfig {
                    max_regions,
                    ..ExtractorConfig::default()
                },
                device,
            };
            extract::run(options)?;
            Ok(())
        }
        Command::Train {
            config,
            run_dir,
            resume,
            overwrite,
            steps,
            device,
        } => {
            let devices = device
                .iter()
                .map(|d| d.open())
                .collect::<Result<Vec<_>>>()?;
            let args = train::TrainArgs {
                config,
                run_dir,
                resume,
                overwrite,
                steps,
            };
            train::train(
                &args,
                &devices,
                &mut std::io::stdout(),
                &mut std::io::stderr(),
            )?;
            Ok(())
        }
        Command::Finetune {
            from,
            task,
            config,
            run_dir,
            resume,
            overwrite,
            steps,
            device,
        } => {
            let device = device.open()?;
            let config_path = config.clone();
            let loaded = tuwen_train::config::TrainConfig::load(&config)?;
            let wanted = match task {
                TaskName::Vqa => tuwen_train::config::Task::Vqa,
            };
            if let Some(f) = &loaded.finetune {
                anyhow::ensure!(
                    f.task == wanted,
                    "{}: finetune.task is {:?}, not {:?}",
                    config_path.display(),
                    f.task,
                    wanted
                );
            }
            let args = train::FinetuneArgs {
                train: train::TrainArgs {
                    config: Some(config),
                    run_dir,
                    resume,
                    overwrite,
                    steps,
                },
                from,
            };
            train::finetune(
                &args,
                &device,
                &mut std::io::stdout(),
                &mut std::io::stderr(),
            )?;
            Ok(())
        }
        Command::Vqa {
            run,
            question,
            checkpoint,
            top,
            json,
            device,
            images,
        } => {
            let device = device.open()?;
            let which = checkpoint.parse().map_err(anyhow::Error::msg)?;
            let failed = vqa::answer(
                &vqa::VqaArgs {
                    run: &run,
                    question: &question,
                    which,
                    top,
                    json,
                    images: &images,
                    device: &device,
                },
                &mut std::io::stdout().lock(),
                &mut std::io::stderr(),
            )?;
            anyhow::ensure!(
                failed == 0,
                "{failed} of {} images could not be answered",
                images.len()
            );
            Ok(())
        }
        Command::Score(Score::Vqa {
            questions,
            annotations,
            results,
        }) => {
            println!("{}", score::vqa(&questions, &annotations, &results)?);
            Ok(())
        }
        Command::Parity { dir, device, tol } => {
            let device = device.open()?;
            let report = parity::run(&dir, &device, tol)
                .with_context(|| format!("parity fixture {}", dir.display()))?;
            println!("{report}");
            anyhow::ensure!(report.passed(), "parity failed for {}", dir.display());
            Ok(())
        }
    }
}

/// `--weights`, or the bundled ImageNet MobileNetV2 from the assets.
fn default_weights(backbone: BackboneName, weights: Option<PathBuf>) -> Result<PathBuf> {
    let backbone = backbone.as_str();
    match weights {
        Some(w) => Ok(w),
        None if backbone == "mobilenet_v2" => {
            tuwen_assets::locate("mobilenet_v2", "mobilenet_v2.safetensors")
                .context("no --weights given and the default MobileNetV2 is missing")
        }
        None => anyhow::bail!("--weights is required for {backbone} (no bundled weights)"),
    }
}
