//! Captioning: a pretrained run fine-tuned to write captions, two ways (unified VLP, Zhou et
//! al. 2020):
//!
//! * **unified** — the single-stream encoder itself runs under the seq2seq attention mask
//!   (caption tokens see every real region and the caption tokens before them; regions never see
//!   the caption) and its tied MLM head predicts the next token;
//! * **decoder** — the encoder reads the image alone (the image-only view, null text), and a new
//!   Transformer decoder with cross-attention writes the caption (Seq2Seq).
//!
//! Both train with next-token cross-entropy over the caption (`[CLS]` starts it, `[SEP]` ends
//! it). Held-out captions are decoded greedily and scored with pycocoevalcap's metrics
//! ([`tuwen_eval::captions`]); the run keeps the checkpoint with the best CIDEr-D. Images go
//! through the run's [`ImagePipeline`] (whole image, foreground boxes, grid) in training and at
//! inference alike, so [`Captioner`] captions plain image files exactly as the run was trained.

use std::collections::BTreeMap;
use std::path::PathBuf;
use tuwen_fusion::dropout::with_mask_seed;

use burn::optim::GradientsParams;
use burn::tensor::{Device, Int, Tensor};
use image::RgbImage;
use rand::Rng;
use serde::Serialize;
use tuwen_data::scene::{SceneConfig, Split};
use tuwen_fusion::mask::{HF_MASK_VALUE, UnifiedMode};
use tuwen_fusion::visual_bert::CaptionRegions;
use tuwen_fusion::{AttentionMask, InputError};
use tuwen_objectives::LossOutput;
use tuwen_objectives::lm::{lm_loss, seq2seq_loss};
use tuwen_tokenizer::BertTokenizer;

use crate::batch::{HostBatch, ImageRegions, PretrainBatch, View, matched_pairs};
use crate::event::EvalMetrics;
use crate::finetune::{TaskRun, is_core};
use crate::images::ImagePipeline;
use crate::model::{Encoder, PretrainModel};
use crate::pretrain::StepLosses;
use crate::run_dir::{LoadedRun, Which};
use crate::trainer::{Groups, Task};

pub use tuwen_fusion::generate::{Generated, GenerationConfig};

/// The built-in scenes as a captioning set: each scene's image through the run's image pipeline,
/// its generated captions as the references.
pub struct SceneCaptions {
    /// The scene generator.
    pub scenes: SceneConfig,
    /// Seed of the scenes.
    pub seed: u64,
    /// Distinct training scenes (0: unbounded; held-out splits are never bounded).
    pub scenes_per_split: u64,
    /// Images to regions.
    pub pipeline: ImagePipeline,
    /// The run's tokenizer.
    pub tokenizer: BertTokenizer,
}

/// A batch of images with one caption each (teacher forcing) and every reference caption.
pub struct CaptionBatch {
    /// Regions + captions on the host (unmasked).
    pub host: HostBatch,
    /// Every reference caption of each row's image.
    pub references: Vec<Vec<String>>,
    /// Each row's image id (the scene index within its split).
    pub image_ids: Vec<u64>,
}

impl SceneCaptions {
    /// Training examples wrap to `scenes_per_split` scenes; held-out scenes never do (as in
    /// pretraining's evaluation).
    fn scene_index(&self, split: Split, index: u64) -> u64 {
        match (split, self.scenes_per_split) {
            (Split::Train, n) if n > 0 => index % n,
            _ => index,
        }
    }

    /// The scene of example `index` of `split`: its image, id and reference captions.
    pub fn example(&self, split: Split, index: u64) -> CaptionExample {
        let image_id = self.scene_index(split, index);
        let scene = self.scenes.generate(self.seed, split, image_id);
        CaptionExample {
            image_id,
            image: scene.image,
            references: scene.captions,
        }
    }

    /// The batch of examples `indices` of `split`: training rows take a random reference,
    /// held-out rows their first (`rng` draws nothing then).
    pub fn batch(
        &self,
        split: Split,
        indices: &[u64],
        rng: &mut impl Rng,
    ) -> Result<CaptionBatch, String> {
        let examples: Vec<CaptionExample> =
            indices.iter().map(|&i| self.example(split, i)).collect();
        let picks: Vec<usize> = examples
            .iter()
            .map(|e| match split {
                Split::Train => rng.random_range(0..e.references.len()),
                _ => 0,
            })
            .collect();
        batch_of(&self.tokenizer, &self.pipeline, examples, &picks)
    }
}

/// One image to caption with its id and reference captions.
#[derive(Clone, Debug)]
pub struct CaptionExample {
    /// The image's id (a scene's index within its split; a COCO image id).
    pub image_id: u64,
    /// The image.
    pub image: RgbImage,
    /// Its reference captions (at least one).
    pub references: Vec<String>,
}

/// `examples` through `pipeline`, each with its reference `picks[i]` as the teacher-forced
/// caption.
fn batch_of(
    tokenizer: &BertTokenizer,
    pipeline: &ImagePipeline,
    examples: Vec<CaptionExample>,
    picks: &[usize],
) -> Result<CaptionBatch, String> {
    let regions = examples
        .iter()
        .map(|e| pipeline.regions(&e.image))
        .collect::<Result<Vec<_>, _>>()?;
    let captions = examples
        .iter()
        .zip(picks)
        .map(|(e, &pick)| e.references[pick].clone())
        .collect();
    let host = caption_batch(tokenizer, pipeline, regions, captions)?;
    let (references, image_ids) = examples
        .into_iter()
        .map(|e| (e.references, e.image_id))
        .unzip();
    Ok(CaptionBatch {
        host,
        references,
        image_ids,
    })
}

/// Regions of `images` with `captions` (unmasked, one per image) as a host batch.
fn caption_batch(
    tokenizer: &BertTokenizer,
    pipeline: &ImagePipeline,
    images: Vec<ImageRegions>,
    captions: Vec<String>,
) -> Result<HostBatch, String> {
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0);
    matched_pairs(
        tokenizer,
        pipeline.feature_dim(),
        images,
        captions,
        &mut rng,
    )
    .map_err(|e| e.to_string())
}

/// The states a caption decoder attends to.
#[derive(Clone, Debug)]
pub struct ImageStates {
    /// `[B, S, W]` encoder states of the image-only pass.
    pub states: Tensor<3>,
    /// `[B, S]` padding mask (1 = real).
    pub mask: Tensor<2, Int>,
}

/// Next-token loss of a captioning batch.
#[derive(Debug)]
pub struct CaptionLoss {
    /// Mean cross-entropy over the predicted caption tokens.
    pub loss: LossOutput,
    /// Fraction of them predicted correctly.
    pub accuracy: f32,
}

impl PretrainModel {
    /// Teacher-forced next-token loss of `batch` (`host` is its host side): through the caption
    /// decoder when the model has one, otherwise through the encoder under the seq2seq mask.
    pub fn caption_loss(
        &self,
        host: &HostBatch,
        batch: &PretrainBatch,
    ) -> Result<CaptionLoss, String> {
        let (ids, attention) = (&host.caption_ids, &host.attention);
        if let Some(decoder) = &self.decoder {
            let image = self.image_states(batch).map_err(|e| e.to_string())?;
            let logits = decoder.forward(batch.caption_ids.clone(), image.states, Some(image.mask));
            let (loss, accuracy) = seq2seq_loss(logits, ids, attention, None);
            return Ok(CaptionLoss { loss, accuracy });
        }
        let Encoder::VisualBert(m) = &self.encoder else {
            return Err(
                "a ViLBERT or LXMERT model captions only through a caption decoder (captioner = \
                 \"decoder\")"
                    .into(),
            );
        };
        let mut input = batch.visual_bert_input(View::Joint);
        input.mask = Some(AttentionMask::unified(
            input.attention_mask.clone(),
            input.visual_attention_mask.clone(),
            UnifiedMode::Seq2Seq,
            HF_MASK_VALUE,
        ));
        let [_, len] = batch.caption_ids.dims();
        let hidden = m
            .visual_bert
            .try_forward(input)
            .map_err(|e| e.to_string())?
            .last_hidden_state
            .narrow(1, 0, len);
        let words = m.visual_bert.embeddings.text.word_embeddings.weight.val();
        let out = lm_loss(&m.mlm, hidden, words, ids, attention, None);
        Ok(CaptionLoss {
            loss: out.loss,
            accuracy: out.accuracy,
        })
    }

    /// The encoder's image-only pass (null text) the caption decoder attends to, with its
    /// padding mask: VisualBERT's whole sequence (its null text, then the regions), ViLBERT's
    /// image stream, LXMERT's vision output.
    pub fn image_states(&self, batch: &PretrainBatch) -> Result<ImageStates, InputError> {
        Ok(match &self.encoder {
            Encoder::VisualBert(m) => {
                let input = batch.visual_bert_input(View::Image);
                let mask = Tensor::cat(
                    vec![
                        input.attention_mask.clone(),
                        input.visual_attention_mask.clone(),
                    ],
                    1,
                );
                let states = m.visual_bert.try_forward(input)?.last_hidden_state;
                ImageStates { states, mask }
            }
            Encoder::ViLBert(m) => {
                let input = batch.vilbert_input(View::Image);
                let mask = input.image_attention_mask.clone();
                let states = m.bert.try_forward(input)?.sequence_output_v;
                ImageStates { states, mask }
            }
            Encoder::Lxmert(m) => {
                let input = batch.lxmert_input(View::Image);
                let mask = input.visual_attention_mask.clone();
                let states = m.lxmert.try_forward(input)?.vision_output;
                ImageStates { states, mask }
            }
        })
    }

    /// Captions of every row of `batch` (its regions; its text is ignored), decoded as `generation`
    /// says (greedy or beam search, HF `generate` semantics, with a KV cache).
    pub fn caption(
        &self,
        batch: &PretrainBatch,
        generation: &GenerationConfig,
    ) -> Result<Vec<Generated>, String> {
        generation.validate()?;
        let positions = match &self.decoder {
            Some(d) => d.position_embeddings.weight.dims()[0],
            None => self.max_positions(),
        };
        if generation.max_length > positions + 1 {
            return Err(format!(
                "max_length {} needs {} caption positions; the model has {positions}",
                generation.max_length,
                generation.max_length - 1
            ));
        }
        if let Some(decoder) = &self.decoder {
            let image = self.image_states(batch).map_err(|e| e.to_string())?;
            return Ok(decoder.generate(image.states, Some(image.mask), generation));
        }
        let Encoder::VisualBert(m) = &self.encoder else {
            return Err("a ViLBERT or LXMERT model captions only through a caption decoder".into());
        };
        let regions = CaptionRegions::from_input(&batch.visual_bert_input(View::Image));
        m.generate_captions(regions, generation)
            .map_err(|e| e.to_string())
    }
}

/// Decoding settings of a run: `[CLS]` starts a caption, `[SEP]` ends it.
pub fn generation_config(
    tokenizer: &BertTokenizer,
    max_length: usize,
    num_beams: usize,
) -> GenerationConfig {
    let special = tokenizer.special_tokens();
    GenerationConfig {
        num_beams,
        max_length,
        bos: special.cls as i64,
        eos: special.sep as i64,
        ..GenerationConfig::default()
    }
}

/// Generated ids as text (special tokens dropped).
pub fn detokenize(tokenizer: &BertTokenizer, tokens: &[i64]) -> Result<String, String> {
    let ids: Vec<u32> = tokens.iter().map(|&t| t as u32).collect();
    tokenizer.decode(&ids, true).map_err(|e| e.to_string())
}

/// One generated caption with its image id.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CaptionResult {
    /// The image (scene index within its split).
    pub image_id: u64,
    /// The caption.
    pub caption: String,
}

/// Held-out captioning metrics and the captions behind them.
#[derive(Clone, Debug)]
pub struct CaptionEval {
    /// pycocoevalcap's scores of the generated captions.
    pub scores: tuwen_eval::captions::CaptionScores,
    /// Teacher-forced next-token accuracy of the first reference.
    pub lm_accuracy: f32,
    /// The generated captions (COCO results format).
    pub results: Vec<CaptionResult>,
    /// The references, by image id.
    pub references: BTreeMap<u64, Vec<String>>,
}

/// Captions `images` held-out examples of `split`, decoded as `generation` says, scored against
/// every reference of their scenes.
pub fn evaluate(
    model: &PretrainModel,
    data: &SceneCaptions,
    split: Split,
    images: usize,
    generation: &GenerationConfig,
    device: &Device,
) -> Result<CaptionEval, String> {
    let indices: Vec<u64> = (0..images as u64).collect();
    let chunks = indices
        .chunks(EVAL_CHUNK)
        .map(|chunk| Ok(chunk.iter().map(|&i| data.example(split, i)).collect()));
    let run = Captioning {
        model,
        tokenizer: &data.tokenizer,
        pipeline: &data.pipeline,
        device,
    };
    run.evaluate(chunks, generation)
}

/// Images captioned per batch in evaluation.
const EVAL_CHUNK: usize = 32;

/// A model with the tokenizer and image pipeline it was trained with.
struct Captioning<'a> {
    model: &'a PretrainModel,
    tokenizer: &'a BertTokenizer,
    pipeline: &'a ImagePipeline,
    device: &'a Device,
}

impl Captioning<'_> {
    /// Captions every chunk of examples and scores the captions against their references
    /// (teacher-forced next-token accuracy on each first reference as well).
    fn evaluate(
        &self,
        chunks: impl Iterator<Item = Result<Vec<CaptionExample>, String>>,
        generation: &GenerationConfig,
    ) -> Result<CaptionEval, String> {
        let (mut results, mut references) = (Vec::new(), BTreeMap::new());
        let (mut correct, mut counted) = (0.0f64, 0usize);
        for examples in chunks {
            let examples = examples?;
            let picks = vec![0; examples.len()];
            let batch = batch_of(self.tokenizer, self.pipeline, examples, &picks)?;
            self.model
                .check_batch(&batch.host)
                .map_err(|e| e.to_string())?;
            let on_device = batch.host.to_device(self.device);
            let loss = self.model.caption_loss(&batch.host, &on_device)?;
            correct += loss.accuracy as f64 * loss.loss.count as f64;
            counted += loss.loss.count;
            let generated = self.model.caption(&on_device, generation)?;
            for (row, g) in generated.into_iter().enumerate() {
                let image_id = batch.image_ids[row];
                results.push(CaptionResult {
                    image_id,
                    caption: detokenize(self.tokenizer, &g.tokens)?,
                });
                references.insert(image_id, batch.references[row].clone());
            }
        }
        if results.is_empty() {
            return Err("no held-out images to caption (ask for at least 1)".into());
        }
        let candidates: BTreeMap<u64, String> = results
            .iter()
            .map(|r| (r.image_id, r.caption.clone()))
            .collect();
        Ok(CaptionEval {
            scores: tuwen_eval::captions::score(&references, &candidates),
            lm_accuracy: (correct / counted.max(1) as f64) as f32,
            results,
            references,
        })
    }
}

/// Captioning fine-tuning as a [`Task`] of the shared loop.
pub(crate) struct CaptionTask {
    pub data: SceneCaptions,
    pub run: TaskRun,
    pub eval_images: usize,
    pub max_caption_len: usize,
    /// `test_captions.json` in the run directory.
    pub results: PathBuf,
}

impl CaptionTask {
    fn generation(&self) -> GenerationConfig {
        generation_config(&self.data.tokenizer, self.max_caption_len, 1)
    }
}

/// Whether captioning trains the parameter at `path`: the encoder, and the unified captioner's
/// MLM head (tied to the word embeddings) or the caption decoder.
pub fn trains(path: &str) -> bool {
    is_core(path) || path.starts_with("decoder.") || path.contains(".mlm.")
}

impl Task for CaptionTask {
    type Batch = CaptionBatch;

    fn batch(&self, step: usize) -> Result<CaptionBatch, String> {
        let (mut rng, indices) = self.run.examples(step);
        self.data
            .batch(Split::Train, &indices, &mut rng)
            .map_err(|e| format!("step {step}: {e}"))
    }

    fn gradients(
        &self,
        model: &PretrainModel,
        batch: &CaptionBatch,
        seed: u64,
    ) -> Result<(GradientsParams, StepLosses), String> {
        model.check_batch(&batch.host).map_err(|e| e.to_string())?;
        let device = &self.run.train_device;
        // Dropout masks keyed by the step seed (`tuwen_fusion::dropout`).
        let out = with_mask_seed(seed, || {
            model.caption_loss(&batch.host, &batch.host.to_device(device))
        })?;
        let losses = StepLosses {
            lm: out.loss.loss.clone().into_scalar::<f32>(),
            lm_accuracy: out.accuracy,
            ..StepLosses::default()
        };
        Ok((
            GradientsParams::from_grads(out.loss.loss.backward(), model),
            losses,
        ))
    }

    fn total(&self, losses: &StepLosses) -> f32 {
        losses.lm
    }

    fn train_values(&self, l: &StepLosses, grad_norm: f32, lr: f64) -> Vec<(&'static str, f64)> {
        vec![
            ("train/lm", l.lm as f64),
            ("train/lm_accuracy", l.lm_accuracy as f64),
            ("train/grad_norm", grad_norm as f64),
            ("train/lr", lr),
        ]
    }

    fn evaluate(&self, model: &PretrainModel, split: Split) -> Result<EvalMetrics, String> {
        let eval = evaluate(
            model,
            &self.data,
            split,
            self.eval_images,
            &self.generation(),
            &self.run.device,
        )?;
        if split == Split::Test {
            let text = serde_json::to_string(&eval.results).map_err(|e| e.to_string())?;
            crate::checkpoint::write_atomic(&self.results, text.as_bytes())
                .map_err(|e| e.to_string())?;
        }
        Ok(EvalMetrics {
            bleu4: eval.scores.bleu_4 as f32,
            cider: eval.scores.cider as f32,
            lm_accuracy: eval.lm_accuracy,
            ..EvalMetrics::default()
        })
    }

    fn metric_values(
        &self,
        prefix: &str,
        metrics: &EvalMetrics,
        _model: &PretrainModel,
    ) -> Vec<(String, f64)> {
        vec![
            (format!("{prefix}/bleu4"), metrics.bleu4 as f64),
            (format!("{prefix}/cider"), metrics.cider as f64),
            (format!("{prefix}/lm_accuracy"), metrics.lm_accuracy as f64),
        ]
    }

    fn groups(&self, model: &PretrainModel) -> Groups {
        self.run.groups(model, trains, "decoder.")
    }

    fn test_note(&self, step: usize, metrics: &EvalMetrics) -> String {
        format!(
            "test split, model of step {step} (selected on validation): BLEU-4 {:.4}, CIDEr {:.4} \
             ({} greedy captions in {})",
            metrics.bleu4,
            metrics.cider,
            self.eval_images,
            self.results.display()
        )
    }
}

/// A captioning run loaded for inference: captions image files the way the run was trained.
pub struct Captioner {
    run: LoadedRun,
    device: Device,
}

impl Captioner {
    /// Loads checkpoint `which` of the captioning run in `dir` on `device`.
    pub fn load_on(dir: impl Into<PathBuf>, which: Which, device: &Device) -> Result<Self, String> {
        let run = PretrainModel::load(dir, which, device)?;
        let is_caption = run
            .config
            .finetune
            .as_ref()
            .is_some_and(|f| f.task == crate::config::Task::Caption);
        if !is_caption {
            return Err(format!(
                "{} is not a captioning run (fine-tune one with `tuwen finetune --task caption`)",
                run.dir.path().display()
            ));
        }
        Ok(Self {
            run,
            device: device.clone(),
        })
    }

    /// Decoding settings of the run with `num_beams` beams (greedy: 1).
    pub fn generation(&self, num_beams: usize) -> GenerationConfig {
        let max = self
            .run
            .config
            .finetune
            .as_ref()
            .map_or(20, |f| f.max_caption_len);
        generation_config(&self.run.tokenizer, max, num_beams)
    }

    /// One caption per image, decoded as `generation` says.
    pub fn caption(
        &self,
        images: &[RgbImage],
        generation: &GenerationConfig,
    ) -> Result<Vec<String>, String> {
        let regions = images
            .iter()
            .map(|image| self.run.images.regions(image))
            .collect::<Result<Vec<_>, _>>()?;
        let host = caption_batch(
            &self.run.tokenizer,
            &self.run.images,
            regions,
            vec![String::new(); images.len()],
        )?;
        let batch = host.to_device(&self.device);
        self.run
            .model
            .caption(&batch, generation)?
            .iter()
            .map(|g| detokenize(&self.run.tokenizer, &g.tokens))
            .collect()
    }

    /// The loaded run.
    pub fn run(&self) -> &LoadedRun {
        &self.run
    }
}

impl Captioner {
    /// The run's held-out scenes as a captioning set (the scenes, seed and image pipeline the
    /// run trained with).
    pub fn scene_captions(&self) -> SceneCaptions {
        SceneCaptions {
            scenes: SceneConfig::default(),
            seed: self.run.config.run.seed,
            scenes_per_split: self.run.config.data.train_scenes,
            pipeline: self.run.images.clone(),
            tokenizer: self.run.tokenizer.clone(),
        }
    }

    /// Captions `images` scenes of `split` as `generation` says and scores them.
    pub fn evaluate_scenes(
        &self,
        split: Split,
        images: usize,
        generation: &GenerationConfig,
    ) -> Result<CaptionEval, String> {
        evaluate(
            &self.run.model,
            &self.scene_captions(),
            split,
            images,
            generation,
            &self.device,
        )
    }
}

impl Captioner {
    /// Captions the first `max_images` images of a COCO caption file (`images[].file_name`
    /// under `dir`, `annotations[].{image_id, caption}`: integer ids, as COCO's) as
    /// `generation` says and scores them against all their captions. Errors name the file and
    /// the image.
    pub fn evaluate_files(
        &self,
        dir: &std::path::Path,
        annotations: &std::path::Path,
        max_images: usize,
        generation: &GenerationConfig,
    ) -> Result<CaptionEval, String> {
        let images = coco_examples(dir, annotations, max_images)?;
        let chunks = images.chunks(EVAL_CHUNK / 2).map(|chunk| {
            chunk
                .iter()
                .map(|(coco, image_id)| {
                    Ok(CaptionExample {
                        image_id: *image_id,
                        image: tuwen_vision::load_rgb(&coco.path).map_err(|e| e.to_string())?,
                        references: coco.captions.clone(),
                    })
                })
                .collect()
        });
        let run = Captioning {
            model: &self.run.model,
            tokenizer: &self.run.tokenizer,
            pipeline: &self.run.images,
            device: &self.device,
        };
        run.evaluate(chunks, generation)
    }
}

/// The images of COCO caption file `annotations` that have captions, their ids as integers.
fn coco_examples(
    dir: &std::path::Path,
    annotations: &std::path::Path,
    max_images: usize,
) -> Result<Vec<(crate::images::CocoImage, u64)>, String> {
    let mut images = Vec::new();
    for image in crate::images::coco_images(dir, annotations, max_images)? {
        let id: u64 = image.image_id.parse().map_err(|_| {
            format!(
                "{}: image id {:?} is not a non-negative integer (COCO ids are)",
                annotations.display(),
                image.image_id
            )
        })?;
        if !image.captions.is_empty() {
            images.push((image, id));
        }
    }
    if images.is_empty() {
        return Err(format!("{}: no captioned images", annotations.display()));
    }
    Ok(images)
}

impl CaptionEval {
    /// The references in the COCO caption annotation format (`images`, `annotations`), which
    /// `tuwen score captions` reads.
    pub fn coco_references(&self) -> serde_json::Value {
        let images: Vec<serde_json::Value> = self
            .references
            .keys()
            .map(|id| serde_json::json!({ "id": id }))
            .collect();
        let mut next = 0u64;
        let mut annotations = Vec::new();
        for (id, captions) in &self.references {
            for caption in captions {
                annotations.push(serde_json::json!({
                    "image_id": id,
                    "id": next,
                    "caption": caption,
                }));
                next += 1;
            }
        }
        serde_json::json!({ "images": images, "annotations": annotations })
    }
}
