//! `tuwen caption`: a fine-tuned captioning run describes image files (through the image
//! pipeline it was trained with, `tuwen_train::caption::Captioner`), or captions and scores its
//! held-out scenes (`--eval`).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use burn::tensor::Device;
use tuwen_data::scene::Split;
use tuwen_train::caption::{Captioner, GenerationConfig};
use tuwen_train::run_dir::Which;

/// Images captioned per batch.
const CHUNK: usize = 16;

/// How `tuwen caption` decodes.
#[derive(Clone, Copy, Debug)]
pub struct Decoding {
    /// Beams (1: greedy).
    pub beams: usize,
    /// Longest caption in tokens, the start token included (`None`: the run's
    /// `finetune.max_caption_len`).
    pub max_length: Option<usize>,
    /// Shortest caption in tokens, the start token included (HF `min_length`).
    pub min_length: usize,
    /// HF `length_penalty`.
    pub length_penalty: f32,
    /// HF `no_repeat_ngram_size` (0: off).
    pub no_repeat_ngram_size: usize,
    /// HF `early_stopping`.
    pub early_stopping: bool,
}

impl Decoding {
    fn config(&self, captioner: &Captioner) -> GenerationConfig {
        let base = captioner.generation(self.beams);
        GenerationConfig {
            max_length: self.max_length.unwrap_or(base.max_length),
            min_length: self.min_length,
            length_penalty: self.length_penalty,
            no_repeat_ngram_size: self.no_repeat_ngram_size,
            early_stopping: self.early_stopping,
            ..base
        }
    }
}

/// What `tuwen caption` was asked.
pub struct CaptionArgs<'a> {
    /// The fine-tuned run directory.
    pub run: &'a Path,
    /// Which checkpoint.
    pub which: Which,
    /// How to decode.
    pub decoding: Decoding,
    /// JSON lines instead of text.
    pub json: bool,
    /// The images.
    pub images: &'a [PathBuf],
    /// The device.
    pub device: &'a Device,
}

/// Captions every image on `out`; an image that cannot be read is reported on `err` and
/// counted, the others are still captioned. Returns the failures.
pub fn caption(
    args: &CaptionArgs<'_>,
    out: &mut impl Write,
    err: &mut impl Write,
) -> Result<usize> {
    let captioner =
        Captioner::load_on(args.run, args.which, args.device).map_err(anyhow::Error::msg)?;
    let generation = args.decoding.config(&captioner);
    let mut failed = 0;
    for paths in args.images.chunks(CHUNK) {
        let mut loaded = Vec::new();
        for path in paths {
            match tuwen_vision::load_rgb(path) {
                Ok(image) => loaded.push((path, image)),
                Err(e) => {
                    writeln!(err, "error: {}: {e}", path.display())?;
                    failed += 1;
                }
            }
        }
        if loaded.is_empty() {
            continue;
        }
        let images: Vec<_> = loaded.iter().map(|(_, image)| image.clone()).collect();
        let captions = captioner
            .caption(&images, &generation)
            .map_err(anyhow::Error::msg)?;
        for ((path, _), caption) in loaded.iter().zip(captions) {
            if args.json {
                let line = serde_json::json!({
                    "image": path.display().to_string(),
                    "caption": caption,
                });
                writeln!(out, "{line}")?;
            } else {
                writeln!(out, "{}\t{caption}", path.display())?;
            }
        }
    }
    Ok(failed)
}

/// What `tuwen caption --eval` captions.
pub enum HeldOut<'a> {
    /// The run's held-out scenes.
    Scenes {
        /// `validation` or `test`.
        split: Split,
        /// Scenes captioned.
        images: usize,
    },
    /// Image files named by a COCO caption file.
    Files {
        /// The folder of the images.
        dir: &'a Path,
        /// The COCO caption file (integer image ids).
        annotations: &'a Path,
        /// Images captioned at most (file order).
        images: usize,
    },
}

/// What `tuwen caption --eval` was asked.
pub struct EvalArgs<'a> {
    /// The fine-tuned run directory.
    pub run: &'a Path,
    /// Which checkpoint.
    pub which: Which,
    /// How to decode.
    pub decoding: Decoding,
    /// What to caption.
    pub held_out: HeldOut<'a>,
    /// Where to write `captions.json` (COCO results), `references.json` (COCO annotations) and,
    /// for the scenes, the scenes as `images/<image_id>.png`.
    pub out_dir: Option<&'a Path>,
    /// The device.
    pub device: &'a Device,
}

/// Captions the held-out images and returns pycocoevalcap's scores as pretty JSON (`Bleu_1` ..
/// `Bleu_4`, `ROUGE_L`, `CIDEr`), writing the captions and references when asked.
pub fn evaluate(args: &EvalArgs<'_>) -> Result<String> {
    let captioner =
        Captioner::load_on(args.run, args.which, args.device).map_err(anyhow::Error::msg)?;
    let generation = args.decoding.config(&captioner);
    let eval = match args.held_out {
        HeldOut::Scenes { split, images } => {
            anyhow::ensure!(images > 0, "--scenes must be >= 1");
            captioner.evaluate_scenes(split, images, &generation)
        }
        HeldOut::Files {
            dir,
            annotations,
            images,
        } => captioner.evaluate_files(dir, annotations, images, &generation),
    }
    .map_err(anyhow::Error::msg)?;
    if let Some(dir) = args.out_dir {
        tuwen_io::create_dir_all(dir)?;
        if let HeldOut::Scenes { split, .. } = args.held_out {
            save_scenes(&captioner, split, &eval.results, &dir.join("images"))?;
        }
        for (name, value) in [
            ("captions.json", serde_json::to_value(&eval.results)?),
            ("references.json", eval.coco_references()),
        ] {
            let path = dir.join(name);
            let text = serde_json::to_string_pretty(&value)?;
            tuwen_io::atomic::write(&path, text.as_bytes())
                .with_context(|| format!("writing {}", path.display()))?;
        }
    }
    serde_json::to_string_pretty(&eval.scores).context("serialising the caption scores")
}

/// The captioned scenes as `DIR/<image_id>.png`, for `tuwen caption` and for looking at.
fn save_scenes(
    captioner: &Captioner,
    split: Split,
    results: &[tuwen_train::caption::CaptionResult],
    dir: &Path,
) -> Result<()> {
    tuwen_io::create_dir_all(dir)?;
    let scenes = captioner.scene_captions();
    for result in results {
        let path = dir.join(format!("{}.png", result.image_id));
        scenes
            .example(split, result.image_id)
            .image
            .save(&path)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
