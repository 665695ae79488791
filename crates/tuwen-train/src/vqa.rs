//! VQA data for fine-tuning and evaluation, and [`Vqa`], a fine-tuned run answering questions
//! about image files.
//!
//! Questions come from the built-in scenes (one generated answer each), easy-VQA (PNG images,
//! one answer each) or VQA v2 files (ten annotator answers each). The answer vocabulary is the
//! most frequent training answers; a question's soft targets are the official VQA accuracy of
//! each answer against its annotators (`tuwen_eval::vqa::soft_score`: 1 agreeing answer 0.3, 2:
//! 0.6, 3: 0.9, 4 or more 1.0); a single-answer dataset scores its one answer 1.0.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::tensor::Device;
use rand::Rng;
use tuwen_data::formats::{self, VqaRecord};
use tuwen_data::scene::Split;
use tuwen_io::PathContext;
use tuwen_tokenizer::BertTokenizer;

use crate::batch::{AnswerTargets, HostBatch, ImageRegions, SceneBatcher, matched_pairs};
use crate::config::{FinetuneConfig, VqaDataset};
use crate::corpus::epoch_order;
use crate::images::ImagePipeline;
use crate::model::PretrainModel;
use crate::run_dir::{LoadedRun, Which};

/// The score of `candidate` against a question's annotator answers: the official VQA accuracy
/// with ten annotators, exact match with one.
pub fn answer_score(answers: &[String], candidate: &str) -> f32 {
    match answers {
        [one] => f32::from(one == candidate),
        _ => tuwen_eval::vqa::soft_score(answers, candidate),
    }
}

/// Normalises an answer the way the official evaluation does, so `"Two"`, `"2"` and `"two."`
/// are one answer.
pub fn normalize(answer: &str) -> String {
    tuwen_eval::vqa::normalize_answer(answer)
}

/// The most frequent `k` answers of `examples` (every annotator's answer counts; ties by name).
pub fn answer_vocabulary(examples: &[VqaExample], k: usize) -> Vec<String> {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for e in examples {
        for a in &e.answers {
            *counts.entry(a.as_str()).or_default() += 1;
        }
    }
    let mut ranked: Vec<(&str, usize)> = counts.into_iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    ranked
        .into_iter()
        .take(k)
        .map(|(a, _)| a.to_string())
        .collect()
}

/// The soft targets of `answers` (annotators) over `vocabulary` (answers outside it dropped).
pub fn targets(answers: &[String], vocabulary: &HashMap<String, u32>) -> AnswerTargets {
    let mut distinct: Vec<&String> = answers.iter().collect();
    distinct.sort();
    distinct.dedup();
    distinct
        .into_iter()
        .filter_map(|a| {
            let score = answer_score(answers, a);
            (score > 0.0)
                .then(|| vocabulary.get(a).map(|&i| (i, score)))
                .flatten()
        })
        .collect()
}

/// One question about an image file.
#[derive(Clone, Debug, PartialEq)]
pub struct VqaExample {
    /// Index into [`FileVqa::images`].
    pub image: usize,
    /// The question.
    pub question: String,
    /// Normalised annotator answers (one for single-answer sets).
    pub answers: Vec<String>,
    /// The dataset's question id.
    pub question_id: String,
}

/// Questions about image files, split into train / validation / test, with every image's
/// regions computed once.
#[derive(Debug)]
pub struct FileVqa {
    /// Image files.
    pub images: Vec<PathBuf>,
    regions: Vec<Arc<ImageRegions>>,
    /// Training questions.
    pub train: Vec<VqaExample>,
    /// Validation questions (held-out training images).
    pub validation: Vec<VqaExample>,
    /// Test questions.
    pub test: Vec<VqaExample>,
}

/// The image file of `id` in `dir`: the file whose stem ends in the id's digits (COCO's
/// `COCO_val2014_000000000042.jpg`, easy-VQA's `42.png`).
fn image_index(dir: &Path) -> Result<HashMap<u64, PathBuf>, String> {
    let entries = std::fs::read_dir(dir).at(dir).map_err(|e| e.to_string())?;
    let mut index = HashMap::new();
    for entry in entries {
        let path = entry.at(dir).map_err(|e| e.to_string())?.path();
        let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        let digits: String = stem
            .chars()
            .rev()
            .take_while(char::is_ascii_digit)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        if let Ok(id) = digits.parse::<u64>() {
            index.insert(id, path);
        }
    }
    Ok(index)
}

/// Questions of one file set with their image files.
struct Part {
    records: Vec<VqaRecord>,
    images: HashMap<u64, PathBuf>,
    source: PathBuf,
}

fn read_part(
    dataset: VqaDataset,
    questions: &Path,
    annotations: Option<&Path>,
    images: &Path,
) -> Result<Part, String> {
    let records = match dataset {
        VqaDataset::EasyVqa => formats::easy_vqa(questions),
        _ => formats::vqa_v2(questions, annotations),
    }
    .map_err(|e| e.to_string())?;
    Ok(Part {
        records,
        images: image_index(images)?,
        source: questions.to_path_buf(),
    })
}

/// A file or folder of the easy-VQA asset (`cargo xtask assets`).
fn easy_vqa_asset(path: &str) -> Result<PathBuf, String> {
    let readme = tuwen_assets::locate("easy_vqa", "README.md")
        .map_err(|e| format!("finetune.dataset = \"easy_vqa\": {e}"))?;
    let dir = readme.parent().expect("a file has a parent");
    Ok(dir.join(path))
}

impl FileVqa {
    /// Reads the questions and images `cfg` names (easy-VQA paths default to the asset) and
    /// computes every image's regions with `pipeline`. The last `validation_images` training
    /// images by id are held out for validation.
    pub fn load(cfg: &FinetuneConfig, pipeline: &ImagePipeline) -> Result<Self, String> {
        let path = |p: &Option<String>, asset: &str| -> Result<PathBuf, String> {
            match (p, cfg.dataset) {
                (Some(p), _) => Ok(PathBuf::from(p)),
                (None, VqaDataset::EasyVqa) => easy_vqa_asset(asset),
                (None, _) => Err(format!("finetune: {asset} is not set")),
            }
        };
        let train = read_part(
            cfg.dataset,
            &path(&cfg.train_questions, "train/questions.json")?,
            cfg.train_annotations.as_deref().map(Path::new),
            &path(&cfg.train_images, "train/images")?,
        )?;
        let test = match (&cfg.test_questions, cfg.dataset) {
            (None, VqaDataset::VqaV2) => None,
            _ => Some(read_part(
                cfg.dataset,
                &path(&cfg.test_questions, "test/questions.json")?,
                cfg.test_annotations.as_deref().map(Path::new),
                &path(&cfg.test_images, "test/images")?,
            )?),
        };
        let mut set = Self {
            images: Vec::new(),
            regions: Vec::new(),
            train: Vec::new(),
            validation: Vec::new(),
            test: Vec::new(),
        };
        let mut train_ids: Vec<u64> = train
            .records
            .iter()
            .filter_map(|r| r.image_id.parse().ok())
            .collect();
        train_ids.sort_unstable();
        train_ids.dedup();
        let held_out = cfg.validation_images.min(train_ids.len().saturating_sub(1));
        let first_validation = train_ids[train_ids.len() - held_out..].first().copied();
        let mut slots = HashMap::new();
        for r in &train.records {
            let example = set.example(&train, r, &mut slots, "train")?;
            let id: u64 = r.image_id.parse().unwrap_or(0);
            if first_validation.is_some_and(|v| id >= v) {
                set.validation.push(example);
            } else {
                set.train.push(example);
            }
        }
        if let Some(test) = &test {
            let mut slots = HashMap::new();
            for r in &test.records {
                let example = set.example(test, r, &mut slots, "test")?;
                set.test.push(example);
            }
        }
        set.regions = set
            .images
            .iter()
            .map(|p| {
                let image = tuwen_vision::load_rgb(p).map_err(|e| e.to_string())?;
                pipeline.regions(&image).map(Arc::new)
            })
            .collect::<Result<_, String>>()?;
        Ok(set)
    }

    fn example(
        &mut self,
        part: &Part,
        r: &VqaRecord,
        slots: &mut HashMap<u64, usize>,
        what: &str,
    ) -> Result<VqaExample, String> {
        let id: u64 = r.image_id.parse().map_err(|_| {
            format!(
                "{}: question {}: image id {:?} is not a number",
                part.source.display(),
                r.question_id,
                r.image_id
            )
        })?;
        let image = match slots.get(&id) {
            Some(&slot) => slot,
            None => {
                let path = part.images.get(&id).ok_or_else(|| {
                    format!(
                        "{}: question {}: no {what} image file for image id {id}",
                        part.source.display(),
                        r.question_id
                    )
                })?;
                self.images.push(path.clone());
                slots.insert(id, self.images.len() - 1);
                self.images.len() - 1
            }
        };
        Ok(VqaExample {
            image,
            question: r.question.clone(),
            answers: r.answers.iter().map(|a| normalize(a)).collect(),
            question_id: r.question_id.clone(),
        })
    }

    /// The questions of `split`.
    pub fn split(&self, split: Split) -> &[VqaExample] {
        match split {
            Split::Train => &self.train,
            Split::Validation => &self.validation,
            Split::Test => &self.test,
        }
    }
}

/// The questions of a fine-tuning run.
#[derive(Clone, Debug)]
pub enum VqaData {
    /// The built-in scenes (their batcher holds the answers).
    Scenes(Arc<SceneBatcher>),
    /// Image files.
    Files(Arc<FileData>),
}

/// Questions about image files with what batches of them need.
#[derive(Debug)]
pub struct FileData {
    /// Questions and regions.
    pub set: FileVqa,
    /// The run's vocabulary.
    pub tokenizer: BertTokenizer,
    /// The answers, in head order.
    pub answers: Vec<String>,
    /// Region width.
    pub feature_dim: usize,
    /// Seed of the epoch order.
    pub seed: u64,
}

/// A question batch with the annotator answers of each row (for scoring predictions).
#[derive(Clone, Debug)]
pub struct QuestionBatch {
    /// Questions with their images' regions and soft targets.
    pub host: HostBatch,
    /// Normalised annotator answers per row.
    pub gold: Vec<Vec<String>>,
    /// The dataset's question id of each row (empty for generated scenes).
    pub question_ids: Vec<String>,
}

impl VqaData {
    /// The answers, in head order.
    pub fn answers(&self) -> &[String] {
        match self {
            VqaData::Scenes(s) => s.answers.as_deref().map_or(&[], Vec::as_slice),
            VqaData::Files(f) => &f.answers,
        }
    }

    /// Questions of `split` (scenes: unbounded; evaluation takes `eval.scenes`).
    pub fn split_len(&self, split: Split) -> usize {
        match self {
            VqaData::Scenes(_) => usize::MAX,
            VqaData::Files(f) => f.set.split(split).len(),
        }
    }

    /// The question batch of examples `indices` of `split` (training indices run over shuffled
    /// epochs; held-out indices are positions).
    pub fn batch(
        &self,
        split: Split,
        indices: &[u64],
        rng: &mut impl Rng,
    ) -> Result<QuestionBatch, String> {
        match self {
            VqaData::Scenes(scenes) => {
                let (host, gold) = scenes
                    .question_batch(split, indices, rng)
                    .map_err(|e| e.to_string())?;
                let question_ids = vec![String::new(); gold.len()];
                Ok(QuestionBatch {
                    host,
                    gold,
                    question_ids,
                })
            }
            VqaData::Files(f) => {
                let FileData {
                    set,
                    tokenizer,
                    answers,
                    feature_dim,
                    seed,
                } = f.as_ref();
                let examples = set.split(split);
                if examples.is_empty() {
                    return Err(format!("no {split:?} questions"));
                }
                let n = examples.len();
                let vocabulary: HashMap<String, u32> = answers
                    .iter()
                    .enumerate()
                    .map(|(i, a)| (a.clone(), i as u32))
                    .collect();
                let mut orders: BTreeMap<u64, Vec<u32>> = BTreeMap::new();
                let picked: Vec<&VqaExample> = indices
                    .iter()
                    .map(|&i| {
                        let position = (i % n as u64) as usize;
                        if split == Split::Train {
                            let order = orders
                                .entry(i / n as u64)
                                .or_insert_with(|| epoch_order(*seed, i / n as u64, n));
                            &examples[order[position] as usize]
                        } else {
                            &examples[position]
                        }
                    })
                    .collect();
                let images = picked
                    .iter()
                    .map(|e| set.regions[e.image].as_ref().clone())
                    .collect();
                let questions = picked.iter().map(|e| e.question.clone()).collect();
                let mut host = matched_pairs(tokenizer, *feature_dim, images, questions, rng)
                    .map_err(|e| e.to_string())?;
                host.answers = picked
                    .iter()
                    .map(|e| targets(&e.answers, &vocabulary))
                    .collect();
                let gold = picked.iter().map(|e| e.answers.clone()).collect();
                let question_ids = picked.iter().map(|e| e.question_id.clone()).collect();
                Ok(QuestionBatch {
                    host,
                    gold,
                    question_ids,
                })
            }
        }
    }
}

/// The answer index with the highest score in each row of `scores` (`[rows, answers]`).
pub fn argmax_rows(scores: &[f32], answers: usize) -> Vec<usize> {
    scores
        .chunks(answers.max(1))
        .map(|row| {
            row.iter()
                .enumerate()
                .fold((0, f32::NEG_INFINITY), |best, (i, &s)| {
                    if s > best.1 { (i, s) } else { best }
                })
                .0
        })
        .collect()
}

/// A predicted answer to one question, in the official VQA results format.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Prediction {
    /// The dataset's question id (a number in VQA v2 files).
    pub question_id: serde_json::Value,
    /// The predicted answer.
    pub answer: String,
}

/// VQA accuracy of a model on a split, with its predictions.
#[derive(Clone, Debug, PartialEq)]
pub struct VqaEval {
    /// Mean of [`answer_score`] of the predicted answers.
    pub accuracy: f32,
    /// One prediction per question, in split order.
    pub predictions: Vec<Prediction>,
}

/// VQA accuracy of `model` on up to `examples` questions of `split`: the argmax answer scored
/// against the annotators ([`answer_score`]), averaged; answers outside the vocabulary count
/// as wrong.
pub fn evaluate(
    model: &PretrainModel,
    data: &VqaData,
    split: Split,
    examples: usize,
    seed: u64,
    device: &Device,
) -> Result<VqaEval, String> {
    use rand::SeedableRng;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x7a5);
    let n = examples.min(data.split_len(split));
    let answers = data.answers();
    let (mut total, mut predictions) = (0.0f64, Vec::new());
    for chunk in (0..n as u64).collect::<Vec<_>>().chunks(64) {
        let batch = data.batch(split, chunk, &mut rng)?;
        model.check_batch(&batch.host).map_err(|e| e.to_string())?;
        let scores = model.answer_scores(&batch.host.to_device(device))?;
        for (row, best) in argmax_rows(&scores, answers.len()).into_iter().enumerate() {
            total += answer_score(&batch.gold[row], &answers[best]) as f64;
            let id = &batch.question_ids[row];
            predictions.push(Prediction {
                question_id: id
                    .parse::<u64>()
                    .map_or_else(|_| id.as_str().into(), Into::into),
                answer: answers[best].clone(),
            });
        }
    }
    Ok(VqaEval {
        accuracy: (total / predictions.len().max(1) as f64) as f32,
        predictions,
    })
}

/// One answer with its score.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ScoredAnswer {
    /// The answer.
    pub answer: String,
    /// Sigmoid of its logit.
    pub score: f32,
}

/// One question about one image, for [`Vqa::answer_batch`].
#[derive(Clone, Copy, Debug)]
pub struct Question<'a> {
    /// The image.
    pub image: &'a image::RgbImage,
    /// The question about it.
    pub question: &'a str,
}

/// A fine-tuned VQA run, ready to answer questions about image files.
#[derive(Debug)]
pub struct Vqa {
    run: LoadedRun,
    device: Device,
}

impl Vqa {
    /// Loads the `best` checkpoint of the VQA run in `dir` on the default device.
    pub fn load(dir: impl Into<PathBuf>) -> Result<Self, String> {
        Self::load_on(dir, Which::Best, &Device::default())
    }

    /// Loads checkpoint `which` of the VQA run in `dir` on `device`.
    pub fn load_on(dir: impl Into<PathBuf>, which: Which, device: &Device) -> Result<Self, String> {
        let run = PretrainModel::load(dir, which, device)?;
        if run.model.vqa.is_none() || run.answers.is_empty() {
            return Err(format!(
                "{}: the run has no VQA answer head; fine-tune it first (tuwen finetune --task vqa)",
                run.dir.path().display()
            ));
        }
        Ok(Self {
            run,
            device: device.clone(),
        })
    }

    /// The `k` best answers to `question` about `image`, best first.
    pub fn answer_top(
        &self,
        image: &image::RgbImage,
        question: &str,
        k: usize,
    ) -> Result<Vec<ScoredAnswer>, String> {
        let mut answers = self.answer_batch(&[Question { image, question }], k)?;
        Ok(answers.pop().unwrap_or_default())
    }

    /// The `k` best answers to each question, best first, in one forward pass (the questions'
    /// padding is masked, so each item's scores are those it gets alone).
    pub fn answer_batch(
        &self,
        questions: &[Question<'_>],
        k: usize,
    ) -> Result<Vec<Vec<ScoredAnswer>>, String> {
        if questions.is_empty() {
            return Ok(Vec::new());
        }
        let regions = questions
            .iter()
            .map(|q| self.run.images.regions(q.image))
            .collect::<Result<Vec<_>, _>>()?;
        let texts = questions.iter().map(|q| q.question.to_string()).collect();
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0);
        let host = matched_pairs(
            &self.run.tokenizer,
            self.run.images.feature_dim(),
            regions,
            texts,
            &mut rng,
        )
        .map_err(|e| e.to_string())?;
        self.run
            .model
            .check_batch(&host)
            .map_err(|e| e.to_string())?;
        let scores = self
            .run
            .model
            .answer_scores(&host.to_device(&self.device))?;
        Ok(scores
            .chunks(self.run.answers.len())
            .map(|row| self.top_answers(row, k))
            .collect())
    }

    fn top_answers(&self, scores: &[f32], k: usize) -> Vec<ScoredAnswer> {
        let mut ranked: Vec<ScoredAnswer> = scores
            .iter()
            .zip(&self.run.answers)
            .map(|(&score, answer)| ScoredAnswer {
                answer: answer.clone(),
                score,
            })
            .collect();
        ranked.sort_by(|a, b| b.score.total_cmp(&a.score));
        ranked.truncate(k);
        ranked
    }

    /// The best answer to `question` about `image`.
    pub fn answer(&self, image: &image::RgbImage, question: &str) -> Result<ScoredAnswer, String> {
        self.answer_top(image, question, 1)?
            .pop()
            .ok_or_else(|| "the model has no answers".to_string())
    }

    /// The loaded run.
    pub fn run(&self) -> &LoadedRun {
        &self.run
    }
}
