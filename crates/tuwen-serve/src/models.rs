//! The models a server serves, loaded once per model worker through the same loaders as
//! `tuwen vqa`, `tuwen caption` and `tuwen retrieve` (`tuwen_train::vqa::Vqa`,
//! `tuwen_train::caption::Captioner`, `tuwen_train::retrieve::Retriever`), and the jobs they run.

use std::ops::Range;
use std::path::{Path, PathBuf};

use burn::tensor::Device;
use image::RgbImage;
use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, oneshot};
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

/// `explicit` when given (its error is the caller's), else `fallback`'s model when it is one
/// (why it is not goes to stderr, so a damaged run is not mistaken for another kind).
fn load_or_fallback<M>(
    explicit: Option<&Path>,
    fallback: &Path,
    what: &str,
    load: impl Fn(&Path) -> Result<M, String>,
) -> Result<Option<M>, String> {
    match explicit {
        Some(dir) => load(dir).map(Some),
        None => Ok(load(fallback)
            .map_err(|e| eprintln!("no {what} from --run: {e}"))
            .ok()),
    }
}

impl Models {
    /// Loads every model `runs` names on `device`; the ITC embeddings of `search_images` (the
    /// files of `runs.images`, listed once by the caller so every worker searches the same list)
    /// are computed (or read from the index) now. An error when nothing would be served.
    pub fn load(runs: &Runs, search_images: &[PathBuf], device: &Device) -> Result<Self, String> {
        let vqa = load_or_fallback(runs.vqa.as_deref(), &runs.run, "VQA", |dir| {
            Vqa::load_on(dir, runs.which, device)
        })?;
        let captioner =
            load_or_fallback(runs.caption.as_deref(), &runs.run, "captioning", |dir| {
                Captioner::load_on(dir, runs.which, device)
            })?;
        let search = match &runs.images {
            Some(_) => Some(Search::load(runs, search_images, device)?),
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

    /// Runs one batch of jobs of one kind, answering each; jobs whose client has gone are
    /// dropped unrun.
    pub fn run_batch(&self, batch: Vec<Job>) {
        let mut vqa = Vec::new();
        let mut captions = Vec::new();
        for job in batch {
            match job {
                Job::Vqa(j) if !j.reply.is_closed() => vqa.push(j),
                Job::Caption(j) if !j.reply.is_closed() => captions.push(j),
                Job::Search(j) if !j.reply.is_closed() => {
                    let result = guarded(|| self.search(&j.query, j.k));
                    let _ = j.reply.send(result);
                }
                _ => {}
            }
        }
        self.vqa_batch(vqa);
        self.caption_batch(captions);
    }

    fn vqa_batch(&self, jobs: Vec<VqaJob>) {
        let Some(vqa) = &self.vqa else {
            return fail_all(jobs.into_iter().map(|j| j.reply), "no VQA model is served");
        };
        let questions: Vec<Question<'_>> = jobs
            .iter()
            .map(|j| Question {
                image: &j.image,
                question: &j.question,
            })
            .collect();
        let top = jobs.iter().map(|j| j.top).max().unwrap_or(1);
        let results = isolate(jobs.len(), |r| vqa.answer_batch(&questions[r], top));
        drop(questions);
        for (job, mut answers) in jobs.into_iter().zip(results) {
            if let Ok(a) = &mut answers {
                a.truncate(job.top);
            }
            // The job's slot is released when it is dropped, after the answer is sent.
            let _ = job.reply.send(answers);
        }
    }

    fn caption_batch(&self, jobs: Vec<CaptionJob>) {
        let Some(beams) = jobs.first().map(|j| j.beams) else {
            return;
        };
        let Some(captioner) = &self.captioner else {
            return fail_all(
                jobs.into_iter().map(|j| j.reply),
                "no captioning model is served",
            );
        };
        let (images, replies): (Vec<RgbImage>, Vec<_>) = jobs
            .into_iter()
            .map(|j| (j.image, (j.reply, j.slot)))
            .unzip();
        let generation = captioner.generation(beams);
        let results = isolate(images.len(), |r| captioner.caption(&images[r], &generation));
        for ((reply, _slot), result) in replies.into_iter().zip(results) {
            let _ = reply.send(result);
        }
    }

    fn search(&self, query: &str, k: usize) -> Result<Vec<Hit>, String> {
        let search = self.search.as_ref().ok_or("no image folder is searched")?;
        search
            .retriever
            .search_embedded(query, &search.images, &search.embeddings, k)
    }
}

/// `f`, with a panic turned into an error (the panic message goes to stderr via the hook).
fn guarded<T>(f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|_| {
        Err("the model failed on this request (see the server log)".to_string())
    })
}

/// `run` over all `n` items at once; when that fails, over each item alone, so a bad item fails
/// only its own request.
fn isolate<T>(
    n: usize,
    run: impl Fn(Range<usize>) -> Result<Vec<T>, String>,
) -> Vec<Result<T, String>> {
    let one = |i: usize| {
        guarded(|| run(i..i + 1)).and_then(|mut v| {
            v.pop()
                .ok_or_else(|| "the model gave no answer".to_string())
        })
    };
    match guarded(|| run(0..n)) {
        Ok(all) if all.len() == n => all.into_iter().map(Ok).collect(),
        Err(e) if n == 1 => vec![Err(e)],
        _ => (0..n).map(one).collect(),
    }
}

fn fail_all<T>(replies: impl Iterator<Item = oneshot::Sender<Result<T, String>>>, error: &str) {
    for reply in replies {
        let _ = reply.send(Err(error.to_string()));
    }
}

impl Search {
    fn load(runs: &Runs, images: &[PathBuf], device: &Device) -> Result<Self, String> {
        let mut retriever = Retriever::load(&runs.run, runs.which, device)?;
        if let Some(index) = &runs.index {
            retriever = retriever.with_index_dir(index);
        }
        let (embeddings, _) = retriever.image_embeddings(images)?;
        Ok(Self {
            retriever,
            images: images.to_vec(),
            embeddings,
        })
    }
}

/// The image files of `folder` searched by a server (an error when there are none).
pub fn search_files(folder: &Path) -> Result<Vec<PathBuf>, String> {
    retrieve::image_files(folder)
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
    /// The request's slot among `max_concurrent`, held until the job is answered.
    pub slot: OwnedSemaphorePermit,
}

/// A captioning request.
pub struct CaptionJob {
    /// The decoded image.
    pub image: RgbImage,
    /// Beams (1: greedy).
    pub beams: usize,
    /// Where the caption goes.
    pub reply: oneshot::Sender<Result<String, String>>,
    /// The request's slot among `max_concurrent`, held until the job is answered.
    pub slot: OwnedSemaphorePermit,
}

/// A search request.
pub struct SearchJob {
    /// The text.
    pub query: String,
    /// Results wanted.
    pub k: usize,
    /// Where the ranking goes.
    pub reply: oneshot::Sender<Result<Vec<Hit>, String>>,
    /// The request's slot among `max_concurrent`, held until the job is answered.
    pub slot: OwnedSemaphorePermit,
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
