//! `tuwen`: the command-line front end of the tuwen vision-language crates.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use tuwen_cli::device::{BackboneName, DeviceName, DeviceSpec, DtypeName, Precision};
use tuwen_cli::{caption, extract, parity, retrieve, score, serve, train, vqa};
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
        /// Device(s): flex, ndarray, wgpu, wgpu:N, cuda, cuda:N (those compiled in; `tuwen
        /// devices` lists them). Several = data parallelism (the batch is split across them,
        /// each device runs its share on a thread of its own, all at once; the first holds the
        /// model and sums the gradients).
        #[arg(long, default_value = "flex")]
        device: Vec<DeviceSpec>,
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
        /// Precision of the Transformer's linear layers: bf16 (CPU backends with AVX512-BF16)
        /// multiplies in bfloat16 with f32 accumulation, as PyTorch's bf16 autocast.
        #[arg(long, value_enum, default_value_t = Precision::F32)]
        precision: Precision,
        /// JPEG/PNG files.
        #[arg(required = true)]
        images: Vec<PathBuf>,
    },
    /// Caption image files with a fine-tuned captioning run (one line per image: path, tab,
    /// caption), or with --eval caption its held-out scenes and print pycocoevalcap's scores.
    Caption {
        /// The fine-tuned captioning run directory.
        #[arg(long)]
        run: PathBuf,
        /// Checkpoint: best, last or a step number.
        #[arg(long, default_value = "best")]
        checkpoint: String,
        /// Beams (1: greedy decoding).
        #[arg(long, default_value_t = 1)]
        beam: usize,
        /// Longest caption in tokens, [CLS] included (default: the run's
        /// finetune.max_caption_len).
        #[arg(long)]
        max_length: Option<usize>,
        /// Shortest caption in tokens, [CLS] included (HF min_length).
        #[arg(long, default_value_t = 0)]
        min_length: usize,
        /// HF length_penalty: a finished beam scores sum(log p) / length^penalty.
        #[arg(long, default_value_t = 1.0)]
        length_penalty: f32,
        /// HF no_repeat_ngram_size (0: off).
        #[arg(long, default_value_t = 0)]
        no_repeat_ngram_size: usize,
        /// HF early_stopping: stop a beam search once `beam` captions finished.
        #[arg(long)]
        early_stopping: bool,
        /// One JSON object per image instead of text.
        #[arg(long)]
        json: bool,
        /// Caption the run's held-out scenes and score them (JSON on stdout).
        #[arg(long, conflicts_with_all = ["images", "json"])]
        eval: bool,
        /// --eval: the held-out split.
        #[arg(long, value_enum, default_value_t = HeldOut::Test)]
        split: HeldOut,
        /// --eval: held-out scenes captioned (with --image-dir: images captioned at most).
        #[arg(long, default_value_t = 500)]
        scenes: usize,
        /// --eval: caption the images of this folder named by --captions instead of scenes.
        #[arg(long, requires_all = ["captions", "eval"])]
        image_dir: Option<PathBuf>,
        /// --eval: a COCO caption file (images[].file_name, annotations[].{image_id, caption})
        /// whose captions are the references.
        #[arg(long, requires = "image_dir")]
        captions: Option<PathBuf>,
        /// --eval: write captions.json (COCO results), references.json (COCO annotations) and
        /// the scenes as images/<image_id>.png here (for `tuwen score captions`).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Backend (those compiled in).
        #[arg(long, value_enum, default_value_t = DeviceName::Flex)]
        device: DeviceName,
        /// Precision of the Transformer's linear layers: bf16 (CPU backends with AVX512-BF16)
        /// multiplies in bfloat16 with f32 accumulation, as PyTorch's bf16 autocast.
        #[arg(long, value_enum, default_value_t = Precision::F32)]
        precision: Precision,
        /// JPEG/PNG files.
        #[arg(required_unless_present = "eval")]
        images: Vec<PathBuf>,
    },
    /// Rank image files for a text (--images DIR --query TEXT) or texts for an image file
    /// (--image FILE --texts FILE, one text per line) with a run that has an ITC head.
    ///
    /// The k most similar candidates by ITC embedding (computed once per image file and per
    /// text, cached in RUN/retrieval-index/ and recomputed when a file or the model changes)
    /// are re-ranked by the ITM head; each result shows both scores.
    Retrieve {
        /// The run directory (pretrained with model.itc_dim > 0).
        #[arg(long)]
        run: PathBuf,
        /// Text -> image: the directory of JPEG/PNG files searched.
        #[arg(long, requires = "query", conflicts_with_all = ["image", "texts"])]
        images: Option<PathBuf>,
        /// Text -> image: the query.
        #[arg(long, requires = "images")]
        query: Option<String>,
        /// Image -> text: the image file.
        #[arg(long, requires = "texts")]
        image: Option<PathBuf>,
        /// Image -> text: the texts searched, one per line.
        #[arg(long, requires = "image", conflicts_with = "query")]
        texts: Option<PathBuf>,
        /// Results: the k best by ITC, re-ranked by ITM.
        #[arg(long, default_value_t = 5)]
        k: usize,
        /// Checkpoint: best, last or a step number.
        #[arg(long, default_value = "best")]
        checkpoint: String,
        /// Where the embedding index lives (default: RUN/retrieval-index).
        #[arg(long)]
        index: Option<PathBuf>,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
        /// Backend (those compiled in).
        #[arg(long, value_enum, default_value_t = DeviceName::Flex)]
        device: DeviceName,
    },
    /// Evaluate a run on held-out data (JSON on stdout).
    ///
    /// --task retrieval: Recall@1/5/10 image -> text and text -> image over held-out images
    /// with distinct captions (the run's scenes or corpus; or --image-dir + --captions, a COCO
    /// caption file), ITC ranking with ITM re-ranking of the top k, as training evaluates;
    /// --all-pairs adds ITM over all pairs on the same set, both timed.
    Eval {
        /// The run directory.
        #[arg(long)]
        run: PathBuf,
        /// What to evaluate.
        #[arg(long, value_enum)]
        task: EvalTask,
        /// Held-out split of the run's data.
        #[arg(long, value_enum, default_value_t = HeldOut::Test)]
        split: HeldOut,
        /// Images evaluated (default: the run's eval.retrieval_images; all of --captions).
        #[arg(long)]
        images: Option<usize>,
        /// Candidates re-ranked by ITM per query (default: the run's eval.retrieval_top_k).
        #[arg(long)]
        k: Option<usize>,
        /// Also rank by ITM over all pairs (the cross-encoder baseline) and time both.
        #[arg(long)]
        all_pairs: bool,
        /// A directory of the image files named by --captions (instead of the run's data).
        #[arg(long, requires = "captions")]
        image_dir: Option<PathBuf>,
        /// A COCO caption file (images[].file_name, annotations[].{image_id, caption}).
        #[arg(long, requires = "image_dir")]
        captions: Option<PathBuf>,
        /// --image-dir: where the embedding index lives (default: RUN/retrieval-index).
        #[arg(long, requires = "image_dir")]
        index: Option<PathBuf>,
        /// Checkpoint: best, last or a step number.
        #[arg(long, default_value = "best")]
        checkpoint: String,
        /// Backend (those compiled in).
        #[arg(long, value_enum, default_value_t = DeviceName::Flex)]
        device: DeviceName,
    },
    /// Score results the way the official evaluations do (JSON on stdout).
    #[command(subcommand)]
    Score(Score),
    /// Serve a web demo and JSON API for trained runs (docs/api.md): open http://ADDR/ in a
    /// browser, or POST /v1/vqa, POST /v1/caption, GET /v1/search?q=TEXT&k=5.
    ///
    /// Prints `listening on http://ADDR` once the models are loaded; stops on Ctrl-C or SIGTERM
    /// after the requests in progress. Requests of concurrent clients are batched.
    Serve(serve::ServeArgs),
    /// List the devices this build can train on (`--device` names: flex, ndarray, wgpu:N, cuda:N).
    Devices,
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

impl From<HeldOut> for tuwen_data::scene::Split {
    fn from(split: HeldOut) -> Self {
        match split {
            HeldOut::Validation => Self::Validation,
            HeldOut::Test => Self::Test,
        }
    }
}

/// Tasks of `tuwen finetune`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum TaskName {
    /// Visual question answering.
    Vqa,
    /// Image captioning (finetune.captioner: unified or decoder).
    Caption,
    /// Image-text retrieval (ITC + ITM, selected on Recall@1).
    Retrieval,
}

/// Tasks of `tuwen eval`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum EvalTask {
    /// Image-text retrieval: Recall@1/5/10 both ways.
    Retrieval,
}

/// Held-out splits of the built-in scenes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum HeldOut {
    /// The validation scenes (model selection).
    Validation,
    /// The test scenes.
    Test,
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
    /// COCO caption metrics exactly as pycocoevalcap 1.2 computes them, for the images that have
    /// a result: `Bleu_1`..`Bleu_4`, `ROUGE_L`, `CIDEr` (METEOR and SPICE are not computed).
    Captions {
        /// COCO caption annotations JSON: `{"images": [{"id": ..}], "annotations":
        /// [{"image_id": .., "caption": ".."}]}`.
        #[arg(long)]
        references: PathBuf,
        /// Results JSON: `[{"image_id": .., "caption": ".."}]`.
        #[arg(long)]
        results: PathBuf,
    },
}

fn main() -> ExitCode {
    keep_freed_memory();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// glibc gives a freed block of more than its mmap threshold (a tensor of a few MB) back to the
/// kernel and trims the heap's free top, so the next tensor of that size is page-faulted in
/// again, every step. Blocks up to 256 MiB stay on the heap and only free heap tops over 512
/// MiB are returned: the default run's step ~10% faster on the development machine
/// (docs/benchmarks.md, "glibc keeping freed tensors"). Other C libraries: nothing to do.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called before any other thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 512 << 20);
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
            let trained = train::train(
                &args,
                &devices,
                &mut std::io::stdout(),
                &mut std::io::stderr(),
            );
            // In an MPI job: a failing rank ends every rank (none waits for it); the others
            // finish MPI before exiting.
            match trained {
                Ok(_) => tuwen_train::distributed::finalize().map_err(anyhow::Error::msg),
                Err(e) => {
                    tuwen_train::distributed::abort_job(&format!("{e:#}"));
                    Err(e)
                }
            }
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
                TaskName::Caption => tuwen_train::config::Task::Caption,
                TaskName::Retrieval => tuwen_train::config::Task::Retrieval,
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
            device: device_name,
            precision,
            images,
        } => {
            precision.check(device_name)?;
            let device = device_name.open()?;
            let which = checkpoint.parse().map_err(anyhow::Error::msg)?;
            let failed = precision.run(device_name, || {
                vqa::answer(
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
                )
            })?;
            anyhow::ensure!(
                failed == 0,
                "{failed} of {} images could not be answered",
                images.len()
            );
            Ok(())
        }
        Command::Caption {
            run,
            checkpoint,
            beam,
            max_length,
            min_length,
            length_penalty,
            no_repeat_ngram_size,
            early_stopping,
            json,
            eval,
            split,
            scenes,
            image_dir,
            captions,
            out,
            device: device_name,
            precision,
            images,
        } => {
            precision.check(device_name)?;
            let device = device_name.open()?;
            let which = checkpoint.parse().map_err(anyhow::Error::msg)?;
            let decoding = caption::Decoding {
                beams: beam,
                max_length,
                min_length,
                length_penalty,
                no_repeat_ngram_size,
                early_stopping,
            };
            if eval {
                let scores = precision.run(device_name, || {
                    caption::evaluate(&caption::EvalArgs {
                        run: &run,
                        which,
                        decoding,
                        held_out: match (&image_dir, &captions) {
                            (Some(dir), Some(annotations)) => caption::HeldOut::Files {
                                dir,
                                annotations,
                                images: scenes,
                            },
                            _ => caption::HeldOut::Scenes {
                                split: split.into(),
                                images: scenes,
                            },
                        },
                        out_dir: out.as_deref(),
                        device: &device,
                    })
                })?;
                println!("{scores}");
                return Ok(());
            }
            let failed = precision.run(device_name, || {
                caption::caption(
                    &caption::CaptionArgs {
                        run: &run,
                        which,
                        decoding,
                        json,
                        images: &images,
                        device: &device,
                    },
                    &mut std::io::stdout().lock(),
                    &mut std::io::stderr(),
                )
            })?;
            anyhow::ensure!(
                failed == 0,
                "{failed} of {} images could not be captioned",
                images.len()
            );
            Ok(())
        }
        Command::Retrieve {
            run,
            images,
            query,
            image,
            texts,
            k,
            checkpoint,
            index,
            json,
            device,
        } => {
            let device = device.open()?;
            let which = checkpoint.parse().map_err(anyhow::Error::msg)?;
            retrieve::retrieve(
                &retrieve::RetrieveArgs {
                    run: &run,
                    which,
                    query: query.as_deref(),
                    images: images.as_deref(),
                    image: image.as_deref(),
                    texts: texts.as_deref(),
                    k,
                    json,
                    index: index.as_deref(),
                    device: &device,
                },
                &mut std::io::stdout().lock(),
                &mut std::io::stderr(),
            )
        }
        Command::Eval {
            run,
            task: EvalTask::Retrieval,
            split,
            images,
            k,
            all_pairs,
            image_dir,
            captions,
            index,
            checkpoint,
            device,
        } => {
            let device = device.open()?;
            let which = checkpoint.parse().map_err(anyhow::Error::msg)?;
            let report = retrieve::eval_retrieval(&retrieve::EvalArgs {
                run: &run,
                which,
                split: split.into(),
                images,
                k,
                all_pairs,
                image_dir: image_dir.as_deref(),
                captions: captions.as_deref(),
                index: index.as_deref(),
                device: &device,
            })?;
            println!("{report}");
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
        Command::Score(Score::Captions {
            references,
            results,
        }) => {
            println!("{}", score::captions(&references, &results)?);
            Ok(())
        }
        Command::Serve(args) => serve::serve(args),
        Command::Devices => {
            for line in tuwen_cli::device::list_devices() {
                println!("{line}");
            }
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
