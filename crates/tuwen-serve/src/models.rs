//! The models a server serves, loaded once per model worker through the same loaders as
//! `tuwen vqa`, `tuwen caption` and `tuwen retrieve` (`tuwen_train::vqa::Vqa`,
//! `tuwen_train::caption::Captioner`, `tuwen_train::retrieve::Retriever`), and the jobs they run.

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use image::RgbImage;
use serde::Serialize;
use tokio::sync::oneshot;
use tuwen_train::caption::Captioner;
use tuwen_train::retrieve::{self, Hit, Retriever};
use tuwen_train::run_dir::{LoadedRun, Which};
use tuwen_train::vqa::{Question, ScoredAnswer, Vqa};

use crate::queue::Batchable;

/// Which runs serve what.
#[derive(Clone, Debug)]
pub struct Runs {
    /// The main run: answers VQA and captions when it is such a run (and `vqa` / `caption` are
    /// not given); searches `images` with its ITC head.
    pub run: PathBuf,
    /// A fine-tuned VQA run (default: `run`, when it has a VQA head).
    pub vqa: Option<PathBuf>,
    /// A fine-tuned captioning run (default: `run`, when it is one).
    pub caption: Option<PathBuf>,
    /// A folder of JPEG/PNG files searched by text (needs `run` to have an ITC head).
    pub images: Option<PathBuf>,
    /// Where the search's embedding index lives (default: `RUN/retrieval-index`).
    pub index: Option<PathBuf>,
    /// Which checkpoint of every run.
    pub which: Which,
}

/// One served model, as `GET /v1/info` describes it.
#[derive(Clone, Debug, Serialize)]
pub struct ServedRun {
    /// The run directory.
    pub run: PathBuf,
    /// The checkpoint's step.
    pub step: usize,
    /// The fusion architecture.
    pub architecture: String,
    /// Hidden size.
    pub hidden_size: usize,
}

impl ServedRun {
    fn of(run: &LoadedRun) -> Self {
        Self {
            run: run.dir.path().to_path_buf(),
            step: run.step,
            architecture: format!("{:?}", run.config.model.architecture).to_lowercase(),
            hidden_size: run.config.model.hidden_size,
        }
    }
}

/// What the server serves.
#[derive(Clone, Debug, Serialize)]
pub struct Served {
    /// VQA, with its number of answers.
    pub vqa: Option<ServedVqa>,
    /// Captioning.
    pub caption: Option<ServedRun>,
    /// Text-to-image search.
    pub search: Option<ServedSearch>,
}

/// The VQA model.
#[derive(Clone, Debug, Serialize)]
pub struct ServedVqa {
    /// The run.
    #[serde(flatten)]
    pub run: ServedRun,
    /// Answers the head scores.
    pub answers: usize,
}

/// The search model and what it searches.
#[derive(Clone, Debug, Serialize)]
pub struct ServedSearch {
    /// The run.
    #[serde(flatten)]
    pub run: ServedRun,
    /// The folder searched.
    pub folder: PathBuf,
    /// Image files in it.
    pub images: usize,
    /// The model identity in the embedding index.
    pub model: String,
}

/// The models of one worker.
pub struct Models {
    vqa: Option<Vqa>,
    captioner: Option<Captioner>,
    search: Option<Search>,
}

struct Search {
    retriever: Retriever,
    images: Vec<PathBuf>,
    embeddings: Vec<Vec<f32>>,
}

/// `explicit` when given (its error is the caller's), else `fallback`'s model when it is one.
fn load_or_fallback<M>(
    explicit: Option<&Path>,
    fallback: &Path,
    load: impl Fn(&Path) -> Result<M, String>,
) -> Result<Option<M>, String> {
    match explicit {
        Some(dir) => load(dir).map(Some),
        None => Ok(load(fallback).ok()),
    }
}

impl Models {
    /// Loads every model `runs` names on `device`; the search images' ITC embeddings are
    /// computed (or read from the index) now. An error when nothing would be served.
    pub fn load(runs: &Runs, device: &Device) -> Result<Self, String> {
        let vqa = load_or_fallback(runs.vqa.as_deref(), &runs.run, |dir| {
            Vqa::load_on(dir, runs.which, device)
        })?;
        let captioner = load_or_fallback(runs.caption.as_deref(), &runs.run, |dir| {
            Captioner::load_on(dir, runs.which, device)
        })?;
        let search = match &runs.images {
            Some(folder) => Some(Search::load(runs, folder, device)?),
            None => None,
        };
        if vqa.is_none() && captioner.is_none() && search.is_none() {
            return Err(format!(
                "nothing to serve: {} has no VQA head and is not a captioning run, and no image \
                 folder was given (--vqa RUN, --caption RUN or --images DIR)",
                runs.run.display()
            ));
        }
        Ok(Self {
            vqa,
            captioner,
            search,
        })
    }

    /// What these models serve.
    pub fn served(&self) -> Served {
        Served {
            vqa: self.vqa.as_ref().map(|v| ServedVqa {
                run: ServedRun::of(v.run()),
                answers: v.run().answers.len(),
            }),
            caption: self.captioner.as_ref().map(|c| ServedRun::of(c.run())),
            search: self.search.as_ref().map(|s| ServedSearch {
                run: ServedRun::of(s.retriever.run()),
                folder: s
                    .images
                    .first()
                    .and_then(|p| p.parent())
                    .map(Path::to_path_buf)
                    .unwrap_or_default(),
                images: s.images.len(),
                model: s.retriever.model_id().to_string(),
            }),
        }
    }

    /// The image files searched, in index order.
    pub fn search_images(&self) -> Vec<PathBuf> {
        self.search
            .as_ref()
            .map(|s| s.images.clone())
            .unwrap_or_default()
    }

    /// Runs one batch of jobs of one kind, answering each.
    pub fn run_batch(&self, batch: Vec<Job>) {
        let Some(first) = batch.first() else { return };
        match first.key() {
            JobKind::Vqa => self.vqa_batch(batch),
            JobKind::Caption(beams) => self.caption_batch(batch, beams),
            JobKind::Search => {
                for job in batch {
                    if let Job::Search(job) = job {
                        let result = self.search(&job.query, job.k);
                        let _ = job.reply.send(result);
                    }
                }
            }
        }
    }

    fn vqa_batch(&self, batch: Vec<Job>) {
        let jobs: Vec<VqaJob> = batch
            .into_iter()
            .filter_map(|j| match j {
                Job::Vqa(j) => Some(j),
                _ => None,
            })
            .collect();
        let result = match &self.vqa {
            Some(vqa) => {
                let questions: Vec<Question<'_>> = jobs
                    .iter()
                    .map(|j| Question {
                        image: &j.image,
                        question: &j.question,
                    })
                    .collect();
                let top = jobs.iter().map(|j| j.top).max().unwrap_or(1);
                vqa.answer_batch(&questions, top)
            }
            None => Err("no VQA model is served".to_string()),
        };
        match result {
            Ok(answers) => {
                for (job, mut answers) in jobs.into_iter().zip(answers) {
                    answers.truncate(job.top);
                    let _ = job.reply.send(Ok(answers));
                }
            }
            Err(e) => jobs.into_iter().for_each(|j| {
                let _ = j.reply.send(Err(e.clone()));
            }),
        }
    }

    fn caption_batch(&self, batch: Vec<Job>, beams: usize) {
        let jobs: Vec<CaptionJob> = batch
            .into_iter()
            .filter_map(|j| match j {
                Job::Caption(j) => Some(j),
                _ => None,
            })
            .collect();
        let result = match &self.captioner {
            Some(captioner) => {
                let images: Vec<RgbImage> = jobs.iter().map(|j| j.image.clone()).collect();
                captioner.caption(&images, &captioner.generation(beams))
            }
            None => Err("no captioning model is served".to_string()),
        };
        match result {
            Ok(captions) => {
                for (job, caption) in jobs.into_iter().zip(captions) {
                    let _ = job.reply.send(Ok(caption));
                }
            }
            Err(e) => jobs.into_iter().for_each(|j| {
                let _ = j.reply.send(Err(e.clone()));
            }),
        }
    }

    fn search(&self, query: &str, k: usize) -> Result<Vec<Hit>, String> {
        let search = self.search.as_ref().ok_or("no image folder is searched")?;
        search
            .retriever
            .search_embedded(query, &search.images, &search.embeddings, k)
    }
}

impl Search {
    fn load(runs: &Runs, folder: &Path, device: &Device) -> Result<Self, String> {
        let mut retriever = Retriever::load(&runs.run, runs.which, device)?;
        if let Some(index) = &runs.index {
            retriever = retriever.with_index_dir(index);
        }
        let images = retrieve::image_files(folder)?;
        if images.is_empty() {
            return Err(format!("{}: no JPEG/PNG files to search", folder.display()));
        }
        let (embeddings, _) = retriever.image_embeddings(&images)?;
        Ok(Self {
            retriever,
            images,
            embeddings,
        })
    }
}

/// The kind of a job: jobs of one kind share a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobKind {
    /// VQA (any question, any image).
    Vqa,
    /// Captioning with this many beams.
    Caption(usize),
    /// Search (run one by one).
    Search,
}

/// A VQA request.
pub struct VqaJob {
    /// The decoded image.
    pub image: RgbImage,
    /// The question.
    pub question: String,
    /// Answers wanted.
    pub top: usize,
    /// Where the answers go.
    pub reply: oneshot::Sender<Result<Vec<ScoredAnswer>, String>>,
}

/// A captioning request.
pub struct CaptionJob {
    /// The decoded image.
    pub image: RgbImage,
    /// Beams (1: greedy).
    pub beams: usize,
    /// Where the caption goes.
    pub reply: oneshot::Sender<Result<String, String>>,
}

/// A search request.
pub struct SearchJob {
    /// The text.
    pub query: String,
    /// Results wanted.
    pub k: usize,
    /// Where the ranking goes.
    pub reply: oneshot::Sender<Result<Vec<Hit>, String>>,
}

/// Work for a model worker.
pub enum Job {
    /// Answer a question.
    Vqa(VqaJob),
    /// Caption an image.
    Caption(CaptionJob),
    /// Search the image folder.
    Search(SearchJob),
}

impl Batchable for Job {
    type Key = JobKind;

    fn key(&self) -> JobKind {
        match self {
            Job::Vqa(_) => JobKind::Vqa,
            Job::Caption(j) => JobKind::Caption(j.beams),
            Job::Search(_) => JobKind::Search,
        }
    }
}
