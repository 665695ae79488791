//! Retrieval with a trained run over image files and texts ([`Retriever`], `tuwen retrieve`)
//! and retrieval evaluation of a run (`tuwen eval --task retrieval`).
//!
//! A query is ranked the way held-out retrieval is evaluated during training
//! ([`crate::retrieval`]): the ITC embeddings (L2-normalised projections of the image-only and
//! text-only passes) of every candidate give dot-product similarities, and the top `k` are
//! re-ranked by the ITM head's match probability (a joint pass per candidate pair). Images go
//! through the run's own [`ImagePipeline`](crate::images::ImagePipeline), texts through its
//! tokenizer, the model through [`PretrainModel::load`].
//!
//! Embeddings are computed once and cached in an index directory (by default
//! `RUN/retrieval-index/`): `images.json` keyed by canonical path with the file's size and
//! modification time (a changed file is embedded again), `texts.json` keyed by the text. Both
//! carry the model's identity ([`Retriever::model_id`]: a hash of `config.toml`, `model.json`,
//! `vocab.txt`, the checkpoint's `state.json` and its weights file's size and modification
//! time); an index of another model is discarded. Index
//! files are written atomically (`tuwen_io::atomic`), so a crash or a concurrent writer leaves
//! an old or a new index, never a torn one.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use burn::tensor::{Device, Tensor};
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};
use tuwen_data::scene::SceneConfig;
/// The held-out splits [`evaluate_held_out`] reads (re-exported for callers without
/// `tuwen-data`).
pub use tuwen_data::scene::Split;
use tuwen_io::PathContext;
use tuwen_objectives::itc::{ItcHead, l2_normalize};
use tuwen_objectives::mlm::{IGNORE, MaskingConfig};

use crate::batch::{HostBatch, ImageRegions, SceneBatcher, View, matched_pairs};
use crate::config::Source;
use crate::data::Data;
use crate::model::PretrainModel;
use crate::retrieval::{Recalls, similarities, top_k};
use crate::run_dir::{LoadedRun, Which};

/// Format version of the index files (a file of another version is rebuilt).
const INDEX_VERSION: u32 = 1;

/// Rows per model call when embedding or matching.
const CHUNK: usize = 32;

/// One ranked candidate.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Hit {
    /// 1-based rank after ITM re-ranking.
    pub rank: usize,
    /// Index of the candidate in the list searched.
    pub index: usize,
    /// The candidate: an image path (as given) or a text.
    pub item: String,
    /// ITM match probability of the pair (the ranking score), in [0, 1].
    pub itm: f32,
    /// ITC cosine similarity of the pair (what chose the top k), in [-1, 1].
    pub itc: f32,
}

/// What an index lookup did.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct IndexStats {
    /// The index file.
    pub path: PathBuf,
    /// Embeddings read from the index.
    pub cached: usize,
    /// Embeddings computed (and added to the index).
    pub computed: usize,
    /// Why the whole index was discarded, when it was (another model, unreadable file).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reset: Option<String>,
}

/// The result of a search: the top `k` candidates, best first, with what the index did.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Ranking {
    /// The top candidates, best (highest ITM) first.
    pub hits: Vec<Hit>,
    /// Candidates searched.
    pub candidates: usize,
    /// The image index.
    pub images: IndexStats,
    /// The text index.
    pub texts: IndexStats,
}

/// An index file: the model it belongs to and one entry per key.
#[derive(Debug, Serialize, Deserialize)]
struct IndexFile<E> {
    version: u32,
    model: String,
    entries: BTreeMap<String, E>,
}

/// An image's embedding with the file state it was computed from.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct ImageEntry {
    size: u64,
    mtime_ns: u64,
    embedding: Vec<f32>,
}

/// The key (canonical path) and state (size, modification time) of a file.
struct FileKey {
    key: String,
    size: u64,
    mtime_ns: u64,
}

fn file_key(path: &Path) -> Result<FileKey, String> {
    let meta = std::fs::metadata(path)
        .at(path)
        .map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err(format!("{}: not a file", path.display()));
    }
    let canonical = std::fs::canonicalize(path)
        .at(path)
        .map_err(|e| e.to_string())?;
    let mtime_ns = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as u64);
    Ok(FileKey {
        key: canonical.to_string_lossy().into_owned(),
        size: meta.len(),
        mtime_ns,
    })
}

/// FNV-1a, 64 bits: the model identity needs a stable hash, not a cryptographic one.
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        // Separates fields, so ("ab", "c") and ("a", "bc") differ.
        self.0 = (self.0 ^ 0xff).wrapping_mul(0x0100_0000_01b3);
    }
}

/// The identity of the model checkpoint `name` of `run`: a hash of the files the model is
/// rebuilt from (`config.toml`, `model.json`, `vocab.txt`), the checkpoint's `state.json` and
/// its weights file's size and modification time (a checkpoint is written as a new directory,
/// so new weights are a new file; hashing the weights themselves would read them once more on
/// every query).
fn model_identity(run: &LoadedRun, name: &str) -> Result<String, String> {
    let checkpoints = run.dir.checkpoints();
    // As the checkpoint loader: `NAME`, or `.NAME.old` after a crash between two renames.
    let checkpoint = [name.to_string(), format!(".{name}.old")]
        .iter()
        .map(|n| checkpoints.join(n))
        .find(|p| p.is_dir())
        .ok_or_else(|| format!("{}: checkpoint {name} vanished", checkpoints.display()))?;
    let mut hash = Fnv::new();
    for path in [
        run.dir.config_path(),
        run.dir.spec_path(),
        run.dir.vocab_path(),
        checkpoint.join("state.json"),
    ] {
        hash.write(&tuwen_io::read(&path).map_err(|e| e.to_string())?);
    }
    let weights = file_key(&checkpoint.join("model.bpk"))?;
    hash.write(&weights.size.to_le_bytes());
    hash.write(&weights.mtime_ns.to_le_bytes());
    Ok(format!("{:016x}", hash.0))
}

/// The JPEG and PNG files of `dir` (by extension, sorted): an error naming the directory when
/// it does not exist or holds none.
pub fn image_files(dir: &Path) -> Result<Vec<PathBuf>, String> {
    if !dir.is_dir() {
        return Err(format!("{}: no such directory", dir.display()));
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).at(dir).map_err(|e| e.to_string())? {
        let path = entry.at(dir).map_err(|e| e.to_string())?.path();
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        if path.is_file() && matches!(ext.as_deref(), Some("jpg" | "jpeg" | "png")) {
            files.push(path);
        }
    }
    if files.is_empty() {
        return Err(format!(
            "{}: no images (.jpg, .jpeg or .png files) in the directory",
            dir.display()
        ));
    }
    files.sort();
    Ok(files)
}

/// The texts of `path`, one per line (lines trimmed, empty lines skipped): an error naming the
/// file when it cannot be read or holds no text.
pub fn read_texts(path: &Path) -> Result<Vec<String>, String> {
    let text = tuwen_io::read_to_string(path).map_err(|e| e.to_string())?;
    let texts: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    if texts.is_empty() {
        return Err(format!(
            "{}: no texts (expected one per line)",
            path.display()
        ));
    }
    Ok(texts)
}

/// A trained run with an ITC head, ready to rank image files against texts and back.
#[derive(Debug)]
pub struct Retriever {
    run: LoadedRun,
    device: Device,
    model_id: String,
    index_dir: PathBuf,
}

impl Retriever {
    /// Loads checkpoint `which` of the run in `dir` on `device`; an error when the run has no
    /// ITC head. The index lives in `dir/retrieval-index/` (see [`Retriever::with_index_dir`]).
    pub fn load(dir: impl Into<PathBuf>, which: Which, device: &Device) -> Result<Self, String> {
        let run = PretrainModel::load(dir, which, device)?;
        if run.model.itc.is_none() {
            return Err(format!(
                "run {} has no ITC head; pretrain with model.itc_dim > 0",
                run.dir.path().display()
            ));
        }
        let (name, _) = run.dir.checkpoint(which)?;
        let model_id = model_identity(&run, name)?;
        let index_dir = run.dir.path().join("retrieval-index");
        Ok(Self {
            run,
            device: device.clone(),
            model_id,
            index_dir,
        })
    }

    /// The same retriever with its index in `dir` (created when first written).
    pub fn with_index_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.index_dir = dir.into();
        self
    }

    /// The index directory.
    pub fn index_dir(&self) -> &Path {
        &self.index_dir
    }

    /// The model's identity (16 hex digits), stored in the index files.
    pub fn model_id(&self) -> &str {
        &self.model_id
    }

    /// The loaded run.
    pub fn run(&self) -> &LoadedRun {
        &self.run
    }

    fn itc(&self) -> &ItcHead {
        self.run.model.itc.as_ref().expect("checked at load")
    }

    /// An unmasked batch of `texts` against `images` (row by row), checked against the model.
    fn host(&self, images: Vec<ImageRegions>, texts: Vec<String>) -> Result<HostBatch, String> {
        let host = matched_pairs(
            &self.run.tokenizer,
            self.run.model.feature_width(),
            images,
            texts,
            &mut StdRng::seed_from_u64(0),
        )
        .map_err(|e| e.to_string())?;
        self.run
            .model
            .check_batch(&host)
            .map_err(|e| e.to_string())?;
        Ok(host)
    }

    /// The regions of the image file at `path` through the run's pipeline; errors name the file.
    pub fn regions(&self, path: &Path) -> Result<ImageRegions, String> {
        let image = tuwen_vision::load_rgb(path).map_err(|e| e.to_string())?;
        self.run
            .images
            .regions(&image)
            .map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The normalised ITC embedding rows of `x` projected by `proj`.
    fn project(&self, x: Tensor<2>, proj: &burn::nn::Linear) -> Result<Vec<Vec<f32>>, String> {
        let e = l2_normalize(proj.forward(x));
        let [_, dim] = e.dims();
        let values = tuwen_weights::host::values::<f32>(e.into_data(), "ITC embeddings")
            .map_err(|e| e.to_string())?;
        Ok(values.chunks(dim.max(1)).map(<[f32]>::to_vec).collect())
    }

    /// ITC embeddings of image regions (no index).
    fn embed_regions(&self, regions: Vec<ImageRegions>) -> Result<Vec<Vec<f32>>, String> {
        let texts = vec![String::new(); regions.len()];
        let batch = self.host(regions, texts)?.to_device(&self.device);
        let x = self
            .run
            .model
            .pooled(&batch, View::Image)
            .map_err(|e| e.to_string())?;
        self.project(x, &self.itc().image_proj)
    }

    /// ITC embeddings of texts (no index).
    fn embed_texts(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, String> {
        // The text view replaces the image by the null region; any region of the right width
        // fills the batch.
        let width = self.run.model.feature_width();
        let null = ImageRegions {
            features: vec![0.0; width],
            locations: vec![0.0, 0.0, 1.0, 1.0, 1.0],
            labels: vec![IGNORE],
            class_probs: Vec::new(),
        };
        let batch = self
            .host(vec![null; texts.len()], texts.to_vec())?
            .to_device(&self.device);
        let x = self
            .run
            .model
            .pooled(&batch, View::Text)
            .map_err(|e| e.to_string())?;
        self.project(x, &self.itc().text_proj)
    }

    /// Reads index file `name`: empty (with the reason) when missing, unreadable, of another
    /// version or of another model.
    fn read_index<E: serde::de::DeserializeOwned>(
        &self,
        name: &str,
    ) -> (PathBuf, BTreeMap<String, E>, Option<String>) {
        let path = self.index_dir.join(name);
        if !path.exists() {
            return (path, BTreeMap::new(), None);
        }
        let parsed = tuwen_io::read_to_string(&path)
            .map_err(|e| e.to_string())
            .and_then(|t| {
                serde_json::from_str::<IndexFile<E>>(&t)
                    .map_err(|e| format!("{}: {e}", path.display()))
            });
        match parsed {
            Ok(f) if f.version != INDEX_VERSION => (
                path,
                BTreeMap::new(),
                Some(format!("index format {} (now {INDEX_VERSION})", f.version)),
            ),
            Ok(f) if f.model != self.model_id => (
                path,
                BTreeMap::new(),
                Some(format!(
                    "the model changed (index of model {}, this is {})",
                    f.model, self.model_id
                )),
            ),
            Ok(f) => (path, f.entries, None),
            Err(e) => (
                path,
                BTreeMap::new(),
                Some(format!("unreadable index: {e}")),
            ),
        }
    }

    fn write_index<E: Serialize>(
        &self,
        path: &Path,
        entries: BTreeMap<String, E>,
    ) -> Result<(), String> {
        tuwen_io::create_dir_all(&self.index_dir).map_err(|e| e.to_string())?;
        let file = IndexFile {
            version: INDEX_VERSION,
            model: self.model_id.clone(),
            entries,
        };
        let text = serde_json::to_vec(&file).map_err(|e| e.to_string())?;
        tuwen_io::atomic::write(path, &text).map_err(|e| e.to_string())
    }

    /// The ITC embeddings of the image files `paths` (in order), from the index where it holds
    /// the file as it is now, computed (and added) otherwise. Errors name the file at fault.
    pub fn image_embeddings(
        &self,
        paths: &[PathBuf],
    ) -> Result<(Vec<Vec<f32>>, IndexStats), String> {
        let (index_path, mut entries, reset) = self.read_index::<ImageEntry>("images.json");
        let mut stats = IndexStats {
            path: index_path.clone(),
            reset: reset.clone(),
            ..IndexStats::default()
        };
        let keys: Vec<FileKey> = paths
            .iter()
            .map(|p| file_key(p))
            .collect::<Result<_, _>>()?;
        let mut out: Vec<Option<Vec<f32>>> = keys
            .iter()
            .map(|k| {
                entries
                    .get(&k.key)
                    .filter(|e| e.size == k.size && e.mtime_ns == k.mtime_ns)
                    .map(|e| e.embedding.clone())
            })
            .collect();
        let missing: Vec<usize> = (0..paths.len()).filter(|&i| out[i].is_none()).collect();
        stats.cached = paths.len() - missing.len();
        for chunk in missing.chunks(CHUNK) {
            let regions = chunk
                .iter()
                .map(|&i| self.regions(&paths[i]))
                .collect::<Result<Vec<_>, _>>()?;
            for (&i, embedding) in chunk.iter().zip(self.embed_regions(regions)?) {
                let k = &keys[i];
                entries.insert(
                    k.key.clone(),
                    ImageEntry {
                        size: k.size,
                        mtime_ns: k.mtime_ns,
                        embedding: embedding.clone(),
                    },
                );
                out[i] = Some(embedding);
            }
        }
        stats.computed = missing.len();
        if stats.computed > 0 || reset.is_some() {
            // Entries of files that are gone are dropped whenever the index is written.
            entries.retain(|k, _| Path::new(k).is_file());
            self.write_index(&index_path, entries)?;
        }
        Ok((
            out.into_iter().map(Option::unwrap_or_default).collect(),
            stats,
        ))
    }

    /// The ITC embeddings of `texts` (in order), from the index or computed (and added).
    pub fn text_embeddings(&self, texts: &[String]) -> Result<(Vec<Vec<f32>>, IndexStats), String> {
        let (index_path, mut entries, reset) = self.read_index::<Vec<f32>>("texts.json");
        let mut stats = IndexStats {
            path: index_path.clone(),
            reset: reset.clone(),
            ..IndexStats::default()
        };
        let absent: std::collections::BTreeSet<&String> = texts
            .iter()
            .filter(|t| !entries.contains_key(t.as_str()))
            .collect();
        stats.cached = texts.iter().filter(|t| !absent.contains(t)).count();
        let missing: Vec<String> = absent.into_iter().cloned().collect();
        for chunk in missing.chunks(CHUNK) {
            for (t, embedding) in chunk.iter().zip(self.embed_texts(chunk)?) {
                entries.insert(t.clone(), embedding);
            }
        }
        stats.computed = missing.len();
        if stats.computed > 0 || reset.is_some() {
            self.write_index(&index_path, entries.clone())?;
        }
        Ok((
            texts.iter().map(|t| entries[t.as_str()].clone()).collect(),
            stats,
        ))
    }

    /// ITM match probabilities of the image with `regions` against each of `texts`.
    pub fn match_scores(
        &self,
        regions: &ImageRegions,
        texts: &[String],
    ) -> Result<Vec<f32>, String> {
        let mut scores = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(CHUNK) {
            let host = self.host(vec![regions.clone(); chunk.len()], chunk.to_vec())?;
            scores.extend(
                self.run
                    .model
                    .match_scores(&host.to_device(&self.device))
                    .map_err(|e| e.to_string())?,
            );
        }
        Ok(scores)
    }

    /// The `k` images of `images` that best match `query`: the top `k` by ITC similarity,
    /// re-ranked by ITM.
    pub fn search_images(
        &self,
        query: &str,
        images: &[PathBuf],
        k: usize,
    ) -> Result<Ranking, String> {
        check_search(k, images.len(), "images")?;
        let query = query.trim();
        if query.is_empty() {
            return Err("the query is empty".into());
        }
        let (image_emb, image_stats) = self.image_embeddings(images)?;
        let (text_emb, text_stats) = self.text_embeddings(&[query.to_string()])?;
        let hits = self.rank_images(query, &text_emb, images, &image_emb, k)?;
        Ok(Ranking {
            hits,
            candidates: images.len(),
            images: image_stats,
            texts: text_stats,
        })
    }

    /// [`Retriever::search_images`] over images whose ITC embeddings the caller holds (from
    /// [`Retriever::image_embeddings`], kept in memory by a server); the query is embedded
    /// without touching the index.
    pub fn search_embedded(
        &self,
        query: &str,
        images: &[PathBuf],
        image_embeddings: &[Vec<f32>],
        k: usize,
    ) -> Result<Vec<Hit>, String> {
        check_search(k, images.len(), "images")?;
        if image_embeddings.len() != images.len() {
            return Err(format!(
                "{} image embeddings for {} images",
                image_embeddings.len(),
                images.len()
            ));
        }
        let query = query.trim();
        if query.is_empty() {
            return Err("the query is empty".into());
        }
        let text_emb = self.embed_texts(&[query.to_string()])?;
        self.rank_images(query, &text_emb, images, image_embeddings, k)
    }

    /// ITC top `k` of `images` for the one query embedding in `text_emb`, re-ranked by ITM.
    fn rank_images(
        &self,
        query: &str,
        text_emb: &[Vec<f32>],
        images: &[PathBuf],
        image_emb: &[Vec<f32>],
        k: usize,
    ) -> Result<Vec<Hit>, String> {
        let sim = similarities(text_emb, image_emb);
        let candidates = top_k(&sim, 1, images.len(), k).remove(0);
        let mut itm = Vec::with_capacity(candidates.len());
        for chunk in candidates.chunks(CHUNK) {
            let regions = chunk
                .iter()
                .map(|&i| self.regions(&images[i]))
                .collect::<Result<Vec<_>, _>>()?;
            let host = self.host(regions, vec![query.to_string(); chunk.len()])?;
            itm.extend(
                self.run
                    .model
                    .match_scores(&host.to_device(&self.device))
                    .map_err(|e| e.to_string())?,
            );
        }
        Ok(ranked(&candidates, &itm, &sim, |i| {
            images[i].display().to_string()
        }))
    }

    /// The `k` texts of `texts` that best describe the image file `image`: the top `k` by ITC
    /// similarity, re-ranked by ITM.
    pub fn search_texts(
        &self,
        image: &Path,
        texts: &[String],
        k: usize,
    ) -> Result<Ranking, String> {
        check_search(k, texts.len(), "texts")?;
        let (image_emb, image_stats) = self.image_embeddings(&[image.to_path_buf()])?;
        let (text_emb, text_stats) = self.text_embeddings(texts)?;
        let sim = similarities(&image_emb, &text_emb);
        let candidates = top_k(&sim, 1, texts.len(), k).remove(0);
        let regions = self.regions(image)?;
        let picked: Vec<String> = candidates.iter().map(|&t| texts[t].clone()).collect();
        let itm = self.match_scores(&regions, &picked)?;
        let hits = ranked(&candidates, &itm, &sim, |t| texts[t].clone());
        Ok(Ranking {
            hits,
            candidates: texts.len(),
            images: image_stats,
            texts: text_stats,
        })
    }

    /// Recall@1/5/10 of image files against texts (`text_image[t]`: the image of text `t`), with
    /// the index for the embeddings: ITC ranking, ITM re-ranking of the top `k`
    /// ([`crate::retrieval::evaluate`]; `k` at least the number of images and of texts is ITM
    /// over all pairs).
    pub fn evaluate(
        &self,
        images: &[PathBuf],
        texts: &[String],
        text_image: &[usize],
        k: usize,
    ) -> Result<Recalls, String> {
        if images.is_empty() || texts.is_empty() {
            return Err("nothing to evaluate: no images or no texts".into());
        }
        if text_image.len() != texts.len() || text_image.iter().any(|&i| i >= images.len()) {
            return Err("every text needs the index of its image".into());
        }
        let (image_emb, _) = self.image_embeddings(images)?;
        let (text_emb, _) = self.text_embeddings(texts)?;
        let sim = similarities(&image_emb, &text_emb);
        let mut regions: HashMap<usize, Arc<ImageRegions>> = HashMap::new();
        let mut failure = None;
        let recalls = crate::retrieval::evaluate(
            &sim,
            images.len(),
            texts.len(),
            text_image,
            k.max(1),
            |image, cands| {
                let scores = (|| {
                    let r = match regions.get(&image) {
                        Some(r) => r.clone(),
                        None => {
                            let r = Arc::new(self.regions(&images[image])?);
                            regions.insert(image, r.clone());
                            r
                        }
                    };
                    let picked: Vec<String> = cands.iter().map(|&t| texts[t].clone()).collect();
                    self.match_scores(&r, &picked)
                })();
                scores.unwrap_or_else(|e| {
                    // Reported after the ranking; the placeholder scores are never used.
                    failure.get_or_insert(e);
                    vec![0.0; cands.len()]
                })
            },
        );
        match failure {
            Some(e) => Err(e),
            None => Ok(recalls),
        }
    }
}

fn check_search(k: usize, candidates: usize, what: &str) -> Result<(), String> {
    if k == 0 {
        return Err("k must be at least 1".into());
    }
    if candidates == 0 {
        return Err(format!("no {what} to search"));
    }
    Ok(())
}

/// `candidates` (best ITC first) re-ranked by their `itm` scores (ties keep the ITC order).
fn ranked(
    candidates: &[usize],
    itm: &[f32],
    sim: &[f32],
    name: impl Fn(usize) -> String,
) -> Vec<Hit> {
    let mut order: Vec<usize> = (0..candidates.len()).collect();
    order.sort_by(|&a, &b| itm[b].total_cmp(&itm[a]));
    order
        .into_iter()
        .enumerate()
        .map(|(rank, j)| Hit {
            rank: rank + 1,
            index: candidates[j],
            item: name(candidates[j]),
            itm: itm[j],
            itc: sim[candidates[j]],
        })
        .collect()
}

/// Image files and their captions as a retrieval set.
#[derive(Clone, Debug, PartialEq)]
pub struct CocoPairs {
    /// The image files.
    pub images: Vec<PathBuf>,
    /// Every caption of every image.
    pub texts: Vec<String>,
    /// The index in `images` of each text's image.
    pub text_image: Vec<usize>,
}

/// Image files and captions of a COCO caption file (`images[].file_name` under `dir`,
/// `annotations[].{image_id, caption}`): the first `max_images` images in file order
/// ([`crate::images::coco_images`]), every caption of each. Errors name a missing file.
pub fn coco_pairs(dir: &Path, captions: &Path, max_images: usize) -> Result<CocoPairs, String> {
    let images = crate::images::coco_images(dir, captions, max_images)?;
    if images.iter().all(|i| i.captions.is_empty()) {
        return Err(format!("{}: no captioned images", captions.display()));
    }
    let (mut texts, mut text_image) = (Vec::new(), Vec::new());
    for (i, image) in images.iter().enumerate() {
        texts.extend(image.captions.iter().cloned());
        text_image.extend(std::iter::repeat_n(i, image.captions.len()));
    }
    Ok(CocoPairs {
        images: images.into_iter().map(|i| i.path).collect(),
        texts,
        text_image,
    })
}

/// The held-out data of a loaded run, as its training evaluated it: the built-in scenes (their
/// region features) or the caption corpus with its feature store.
pub fn held_out_data(run: &LoadedRun, device: &Device) -> Result<Data, String> {
    let cfg = &run.config;
    match cfg.data.source {
        Source::Scenes => {
            let scenes = SceneConfig::default();
            let region_features =
                crate::features::region_features(cfg, &scenes, device, &mut |_| {})?;
            Ok(Data::Scenes(Arc::new(SceneBatcher {
                scenes,
                seed: cfg.run.seed,
                tokenizer: run.tokenizer.clone(),
                pool: cfg.data.pool,
                masking: MaskingConfig::default(),
                mismatch_prob: cfg.data.mismatch_prob,
                region_masking: None,
                // Training's; held-out scenes are never wrapped (`Data::for_evaluation`).
                scenes_per_split: cfg.data.train_scenes,
                region_features,
                answers: None,
            })))
        }
        Source::Store => {
            let (Some(captions), Some(store)) = (&cfg.data.captions, &cfg.data.store) else {
                return Err(format!(
                    "{}: data.source = \"store\" without data.captions and data.store",
                    run.dir.config_path().display()
                ));
            };
            let (records, _) =
                crate::corpus::read_captions(Path::new(captions), cfg.data.captions_format)?;
            let reader =
                tuwen_regions::StoreReader::open(store).map_err(|e| format!("{store}: {e}"))?;
            let (batcher, _) = crate::corpus::StoreBatcher::new(
                &records,
                reader,
                cfg.data.held_out_images,
                cfg.run.seed,
                run.tokenizer.clone(),
                MaskingConfig::default(),
                cfg.data.mismatch_prob,
                None,
            )?;
            Ok(Data::Store(Arc::new(batcher)))
        }
    }
}

/// Retrieval evaluation of a loaded run on its held-out `split` ([`held_out_data`]): up to
/// `images` examples with distinct captions ([`Data::retrieval_set`]), scored by
/// [`crate::pretrain::retrieval`] exactly as training evaluates.
pub fn evaluate_held_out(
    run: &LoadedRun,
    data: &Data,
    split: Split,
    images: usize,
    k: usize,
    device: &Device,
) -> Result<Recalls, String> {
    if run.model.itc.is_none() {
        return Err(format!(
            "run {} has no ITC head; pretrain with model.itc_dim > 0",
            run.dir.path().display()
        ));
    }
    if k == 0 {
        return Err("k must be at least 1".into());
    }
    crate::pretrain::retrieval(&run.model, data, split, images, k, device)
}
