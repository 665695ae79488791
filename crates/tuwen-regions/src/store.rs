//! The region feature store: sharded safetensors files plus an append-only index, written
//! shard by shard (memory bounded by one shard) and read through memory maps (memory stays flat
//! however many images the store holds).
//!
//! Layout of a store directory:
//! * `meta.json` — `{"version": 1, "dtype": "f16" | "f32", "dim": D, "classes": K}`;
//! * `shard-NNNNN.safetensors` — per image `ID::features` `[n, D]`, `ID::class_probs` `[n, K]`
//!   (both in `dtype`), `ID::boxes` `[n, 4]`, `ID::scores` `[n]`, `ID::global` `[D]` (f32);
//! * `index.jsonl` — one line per image: `{"id", "shard", "regions", "width", "height"}`.
//!
//! Shards are written to a temporary name and renamed, and index lines are appended only after
//! their shard is in place, so a crash never leaves an index entry without data; a resumed
//! writer skips every image already in the index.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use burn::tensor::f16;
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};

use crate::BoxXyxy;
use crate::extract::RegionFeatures;

/// Errors of the feature store; each names the file involved.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Filesystem error.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A store file is malformed.
    #[error("{path}: {reason}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The image is not in the store.
    #[error("image {0:?} is not in the store")]
    Missing(String),
    /// Features added to a store do not fit its metadata.
    #[error("cannot add image {id:?}: {reason}")]
    Mismatch {
        /// The image.
        id: String,
        /// What does not fit.
        reason: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Storage precision of features and class distributions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreDtype {
    /// Half precision (half the disk and page cache).
    F16,
    /// Single precision.
    F32,
}

/// `meta.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreMeta {
    /// Format version (1).
    pub version: u32,
    /// Precision of features and class distributions.
    pub dtype: StoreDtype,
    /// Region vector width.
    pub dim: usize,
    /// Classes per distribution (0 when none are stored).
    pub classes: usize,
}

/// One `index.jsonl` line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexEntry {
    /// Image id.
    pub id: String,
    /// Shard file name.
    pub shard: String,
    /// Number of regions.
    pub regions: usize,
    /// Original width.
    pub width: u32,
    /// Original height.
    pub height: u32,
}

fn read_index(dir: &Path) -> Result<Vec<IndexEntry>, StoreError> {
    let path = dir.join("index.jsonl");
    if !path.exists() {
        return Ok(Vec::new());
    }
    let file = File::open(&path).map_err(io(&path))?;
    let mut out = Vec::new();
    for (n, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(io(&path))?;
        if line.trim().is_empty() {
            continue;
        }
        out.push(serde_json::from_str(&line).map_err(|e| StoreError::Format {
            path: path.clone(),
            reason: format!("line {}: {e}", n + 1),
        })?);
    }
    Ok(out)
}

fn read_meta(dir: &Path) -> Result<Option<StoreMeta>, StoreError> {
    let path = dir.join("meta.json");
    if !path.exists() {
        return Ok(None);
    }
    let text = fs::read_to_string(&path).map_err(io(&path))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| StoreError::Format {
            path,
            reason: e.to_string(),
        })
}

fn encode(values: &[f32], dtype: StoreDtype) -> (Dtype, Vec<u8>) {
    match dtype {
        StoreDtype::F32 => (
            Dtype::F32,
            values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ),
        StoreDtype::F16 => (
            Dtype::F16,
            values
                .iter()
                .flat_map(|v| f16::from_f32(*v).to_le_bytes())
                .collect(),
        ),
    }
}

/// Writes a store, shard by shard; resumes an existing one.
#[derive(Debug)]
pub struct StoreWriter {
    dir: PathBuf,
    meta: Option<StoreMeta>,
    dtype: StoreDtype,
    images_per_shard: usize,
    pending: Vec<(String, RegionFeatures)>,
    done: HashSet<String>,
    next_shard: usize,
}

impl StoreWriter {
    /// Opens (creating or resuming) the store in `dir`.
    pub fn open(
        dir: impl AsRef<Path>,
        dtype: StoreDtype,
        images_per_shard: usize,
    ) -> Result<Self, StoreError> {
        let dir = dir.as_ref().to_path_buf();
        fs::create_dir_all(&dir).map_err(io(&dir))?;
        let meta = read_meta(&dir)?;
        if let Some(m) = &meta
            && m.dtype != dtype
        {
            return Err(StoreError::Format {
                path: dir.join("meta.json"),
                reason: format!("store holds {:?} data, {dtype:?} requested", m.dtype),
            });
        }
        let done = read_index(&dir)?.into_iter().map(|e| e.id).collect();
        let next_shard = fs::read_dir(&dir)
            .map_err(io(&dir))?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                name.strip_prefix("shard-")?
                    .split('.')
                    .next()?
                    .parse::<usize>()
                    .ok()
            })
            .map(|n| n + 1)
            .max()
            .unwrap_or(0);
        Ok(Self {
            dir,
            meta,
            dtype,
            images_per_shard: images_per_shard.max(1),
            pending: Vec::new(),
            done,
            next_shard,
        })
    }

    /// Whether `id` is already stored (or queued).
    pub fn contains(&self, id: &str) -> bool {
        self.done.contains(id)
    }

    /// Queues an image; writes a shard when enough are queued.
    pub fn add(&mut self, id: &str, features: RegionFeatures) -> Result<(), StoreError> {
        let mismatch = |reason: String| StoreError::Mismatch {
            id: id.to_string(),
            reason,
        };
        if id.contains("::") || id.contains('\n') {
            return Err(mismatch("ids may not contain \"::\" or newlines".into()));
        }
        if self.done.contains(id) {
            return Err(mismatch("already in the store".into()));
        }
        let n = features.len();
        if features.features.len() != n * features.dim
            || features.class_probs.len() != n * features.classes
        {
            return Err(mismatch(
                "array lengths do not match the region count".into(),
            ));
        }
        let meta = self.meta.get_or_insert(StoreMeta {
            version: 1,
            dtype: self.dtype,
            dim: features.dim,
            classes: features.classes,
        });
        if features.dim != meta.dim || (n > 0 && features.classes != meta.classes) {
            return Err(mismatch(format!(
                "dim {} / classes {} differ from the store's {} / {}",
                features.dim, features.classes, meta.dim, meta.classes
            )));
        }
        self.done.insert(id.to_string());
        self.pending.push((id.to_string(), features));
        if self.pending.len() >= self.images_per_shard {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes the queued images as one shard and appends them to the index.
    pub fn flush(&mut self) -> Result<(), StoreError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let meta = self.meta.clone().expect("set by add");
        let meta_path = self.dir.join("meta.json");
        if !meta_path.exists() {
            let tmp = self.dir.join("meta.json.tmp");
            fs::write(&tmp, serde_json::to_string(&meta).expect("serialisable"))
                .map_err(io(&tmp))?;
            fs::rename(&tmp, &meta_path).map_err(io(&meta_path))?;
        }
        let shard = format!("shard-{:05}.safetensors", self.next_shard);
        let mut buffers: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
        let mut entries = Vec::new();
        for (id, f) in &self.pending {
            let n = f.len();
            let (dt, bytes) = encode(&f.features, meta.dtype);
            buffers.push((format!("{id}::features"), dt, vec![n, f.dim], bytes));
            let (dt, bytes) = encode(&f.class_probs, meta.dtype);
            buffers.push((
                format!("{id}::class_probs"),
                dt,
                vec![n, meta.classes],
                bytes,
            ));
            let boxes: Vec<f32> = f
                .boxes
                .iter()
                .flat_map(|b| [b.x1, b.y1, b.x2, b.y2])
                .collect();
            buffers.push((
                format!("{id}::boxes"),
                Dtype::F32,
                vec![n, 4],
                encode(&boxes, StoreDtype::F32).1,
            ));
            buffers.push((
                format!("{id}::scores"),
                Dtype::F32,
                vec![n],
                encode(&f.scores, StoreDtype::F32).1,
            ));
            buffers.push((
                format!("{id}::global"),
                Dtype::F32,
                vec![f.dim],
                encode(&f.global, StoreDtype::F32).1,
            ));
            entries.push(IndexEntry {
                id: id.clone(),
                shard: shard.clone(),
                regions: n,
                width: f.image_size[0],
                height: f.image_size[1],
            });
        }
        let path = self.dir.join(&shard);
        let views = buffers
            .iter()
            .map(|(name, dt, shape, bytes)| {
                safetensors::tensor::TensorView::new(*dt, shape.clone(), bytes)
                    .map(|v| (name.clone(), v))
                    .map_err(|e| StoreError::Format {
                        path: path.clone(),
                        reason: e.to_string(),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let tmp = self.dir.join(format!("{shard}.tmp"));
        safetensors::serialize_to_file(views, None, &tmp).map_err(|e| StoreError::Format {
            path: tmp.clone(),
            reason: e.to_string(),
        })?;
        File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(io(&tmp))?;
        fs::rename(&tmp, &path).map_err(io(&path))?;
        let index_path = self.dir.join("index.jsonl");
        let mut index = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&index_path)
            .map_err(io(&index_path))?;
        let mut lines = String::new();
        for e in &entries {
            lines.push_str(&serde_json::to_string(e).expect("serialisable"));
            lines.push('\n');
        }
        index.write_all(lines.as_bytes()).map_err(io(&index_path))?;
        index.sync_all().map_err(io(&index_path))?;
        self.pending.clear();
        self.next_shard += 1;
        Ok(())
    }

    /// Writes what is queued; the store is complete afterwards.
    pub fn finish(mut self) -> Result<(), StoreError> {
        self.flush()
    }
}

/// Reads a store through memory maps.
#[derive(Debug)]
pub struct StoreReader {
    dir: PathBuf,
    meta: StoreMeta,
    index: Vec<IndexEntry>,
    by_id: HashMap<String, usize>,
    maps: Mutex<HashMap<String, Arc<memmap2::Mmap>>>,
}

impl StoreReader {
    /// Opens the store in `dir`.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, StoreError> {
        let dir = dir.as_ref().to_path_buf();
        let meta = read_meta(&dir)?.ok_or_else(|| StoreError::Format {
            path: dir.join("meta.json"),
            reason: "missing: not a feature store (or an empty one)".into(),
        })?;
        let index = read_index(&dir)?;
        let by_id = index
            .iter()
            .enumerate()
            .map(|(i, e)| (e.id.clone(), i))
            .collect();
        Ok(Self {
            dir,
            meta,
            index,
            by_id,
            maps: Mutex::new(HashMap::new()),
        })
    }

    /// Store metadata.
    pub fn meta(&self) -> &StoreMeta {
        &self.meta
    }

    /// Index entries in insertion order.
    pub fn entries(&self) -> &[IndexEntry] {
        &self.index
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    fn map(&self, shard: &str) -> Result<Arc<memmap2::Mmap>, StoreError> {
        let mut maps = self.maps.lock().expect("not poisoned");
        if let Some(m) = maps.get(shard) {
            return Ok(m.clone());
        }
        let path = self.dir.join(shard);
        let file = File::open(&path).map_err(io(&path))?;
        // SAFETY: shards are immutable once renamed into place; the store never rewrites them.
        let map = Arc::new(unsafe { memmap2::Mmap::map(&file) }.map_err(io(&path))?);
        maps.insert(shard.to_string(), map.clone());
        Ok(map)
    }

    /// The regions of image `id`.
    pub fn get(&self, id: &str) -> Result<RegionFeatures, StoreError> {
        let entry = &self.index[*self
            .by_id
            .get(id)
            .ok_or_else(|| StoreError::Missing(id.to_string()))?];
        let path = self.dir.join(&entry.shard);
        let map = self.map(&entry.shard)?;
        let fmt = |reason: String| StoreError::Format {
            path: path.clone(),
            reason,
        };
        let st = SafeTensors::deserialize(&map).map_err(|e| fmt(e.to_string()))?;
        let read = |name: &str, want: usize| -> Result<Vec<f32>, StoreError> {
            let key = format!("{id}::{name}");
            let view = st.tensor(&key).map_err(|e| fmt(format!("{key}: {e}")))?;
            let data = view.data();
            let values: Vec<f32> = match view.dtype() {
                Dtype::F32 => data
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
                Dtype::F16 => data
                    .chunks_exact(2)
                    .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
                    .collect(),
                other => return Err(fmt(format!("{key}: unexpected dtype {other:?}"))),
            };
            if values.len() != want {
                return Err(fmt(format!(
                    "{key}: {} values, expected {want}",
                    values.len()
                )));
            }
            Ok(values)
        };
        let n = entry.regions;
        let boxes = read("boxes", n * 4)?
            .chunks_exact(4)
            .map(|b| BoxXyxy::new(b[0], b[1], b[2], b[3]))
            .collect();
        Ok(RegionFeatures {
            image_size: [entry.width, entry.height],
            boxes,
            features: read("features", n * self.meta.dim)?,
            dim: self.meta.dim,
            global: read("global", self.meta.dim)?,
            class_probs: read("class_probs", n * self.meta.classes)?,
            classes: self.meta.classes,
            scores: read("scores", n)?,
        })
    }
}
