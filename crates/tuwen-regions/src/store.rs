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
//! writer skips every image already in the index. A crash in the middle of an index append can
//! leave a torn last line (partial JSON, no trailing newline): readers and resumed writers keep
//! every complete record before it and report what they dropped ([`Recovered`]); the writer
//! truncates the torn tail before appending.
//!
//! One writer at a time: [`StoreWriter::open`] takes an exclusive OS lock on `DIR/.lock` (released
//! when the writer is dropped or finished, and by the OS if the process dies), so a second writer
//! fails instead of overwriting the first one's shards. Readers take no lock.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use burn::tensor::f16;
use safetensors::tensor::Metadata;
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};
use tuwen_io::PathContext;

use crate::BoxXyxy;
use crate::extract::RegionFeatures;

/// Errors of the feature store; each names the file involved.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Filesystem error (names the file).
    #[error(transparent)]
    Io(#[from] tuwen_io::IoError),
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
    /// Another writer holds the store's lock.
    #[error(
        "{dir}: store in use by another writer ({holder}); wait for it to finish, or remove \
         {dir}/.lock only if no writer is running"
    )]
    InUse {
        /// The store directory.
        dir: PathBuf,
        /// Who holds the lock, as far as the lock file says (e.g. `pid 1234`).
        holder: String,
    },
    /// Features added to a store do not fit its metadata.
    #[error("cannot add image {id:?}: {reason}")]
    Mismatch {
        /// The image.
        id: String,
        /// What does not fit.
        reason: String,
    },
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

/// What a reader or resumed writer dropped from a torn `index.jsonl` (a crash in the middle of
/// an append); the records before it are intact. Its `Display` is a note for the user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recovered {
    /// The index file.
    pub path: PathBuf,
    /// 1-based line number of the torn line.
    pub line: usize,
    /// Bytes of the torn line that were ignored (a resumed writer truncates them).
    pub dropped_bytes: u64,
    /// Complete records kept.
    pub kept: usize,
}

impl fmt::Display for Recovered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: ignored a torn last line {} ({} bytes, an append interrupted by a crash); kept \
             the {} complete records before it",
            self.path.display(),
            self.line,
            self.dropped_bytes,
            self.kept
        )
    }
}

/// `index.jsonl` as read: the complete records, where they end, and a torn tail if any.
struct Index {
    entries: Vec<IndexEntry>,
    /// Length of the file up to and including the last complete record's newline, plus a
    /// complete last record without its newline.
    valid_len: u64,
    /// The file ends with a complete record but no newline (a writer must add one first).
    needs_newline: bool,
    recovered: Option<Recovered>,
}

fn parse_entry(path: &Path, line_no: usize, line: &[u8]) -> Result<IndexEntry, StoreError> {
    let format = |reason: String| StoreError::Format {
        path: path.to_path_buf(),
        reason: format!("line {line_no}: {reason}"),
    };
    let entry: IndexEntry = serde_json::from_slice(line).map_err(|e| format(e.to_string()))?;
    // Shard names come from the file: never let one point outside the store directory.
    let plain = Path::new(&entry.shard)
        .file_name()
        .is_some_and(|name| name == entry.shard.as_str());
    if !plain || entry.shard.contains(['/', '\\']) {
        return Err(format(format!(
            "shard {:?} is not a file name inside the store",
            entry.shard
        )));
    }
    Ok(entry)
}

fn read_index(dir: &Path) -> Result<Index, StoreError> {
    let path = dir.join("index.jsonl");
    let mut index = Index {
        entries: Vec::new(),
        valid_len: 0,
        needs_newline: false,
        recovered: None,
    };
    let file = match File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(index),
        Err(e) => return Err(tuwen_io::IoError::new(path, e).into()),
    };
    let mut reader = BufReader::new(file);
    let mut line = Vec::new();
    let mut line_no = 0;
    loop {
        line.clear();
        let read = reader.read_until(b'\n', &mut line).at(&path)?;
        if read == 0 {
            break;
        }
        line_no += 1;
        let terminated = line.last() == Some(&b'\n');
        if line.trim_ascii().is_empty() {
            if terminated {
                index.valid_len += read as u64;
            }
            continue;
        }
        match parse_entry(&path, line_no, &line) {
            Ok(entry) => {
                index.entries.push(entry);
                index.valid_len += read as u64;
                index.needs_newline = !terminated;
            }
            // The last line without a newline: an append cut short by a crash. Everything before
            // it is complete.
            Err(_) if !terminated => {
                index.recovered = Some(Recovered {
                    path: path.clone(),
                    line: line_no,
                    dropped_bytes: read as u64,
                    kept: index.entries.len(),
                });
            }
            Err(e) => return Err(e),
        }
    }
    Ok(index)
}

fn read_meta(dir: &Path) -> Result<Option<StoreMeta>, StoreError> {
    let path = dir.join("meta.json");
    if !path.exists() {
        return Ok(None);
    }
    let text = tuwen_io::read_to_string(&path)?;
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

/// Takes the exclusive writer lock of the store in `dir` (`DIR/.lock`, holding the writer's pid
/// for messages). The OS releases it when the file is closed or the process dies.
fn lock(dir: &Path) -> Result<File, StoreError> {
    let path = dir.join(".lock");
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .at(&path)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut holder = String::new();
            // Best effort: the holder wrote its pid after locking.
            let _ = file.read_to_string(&mut holder);
            let holder = match holder.trim() {
                "" => "lock file .lock is held".to_string(),
                pid => format!("pid {pid}"),
            };
            return Err(StoreError::InUse {
                dir: dir.to_path_buf(),
                holder,
            });
        }
        Err(TryLockError::Error(e)) => return Err(tuwen_io::IoError::new(path, e).into()),
    }
    file.set_len(0)
        .and_then(|()| file.seek(SeekFrom::Start(0)))
        .and_then(|_| file.write_all(std::process::id().to_string().as_bytes()))
        .at(&path)?;
    Ok(file)
}

/// Writes a store, shard by shard; resumes an existing one. Holds the store's writer lock until
/// it is dropped (or [`StoreWriter::finish`]ed).
#[derive(Debug)]
pub struct StoreWriter {
    dir: PathBuf,
    meta: Option<StoreMeta>,
    dtype: StoreDtype,
    images_per_shard: usize,
    pending: Vec<(String, RegionFeatures)>,
    done: HashSet<String>,
    next_shard: usize,
    /// The index ends with a complete record but no newline: the next append starts with one.
    needs_newline: bool,
    recovered: Option<Recovered>,
    /// Held for the writer's lifetime; closing it releases the lock.
    _lock: File,
}

impl StoreWriter {
    /// Opens (creating or resuming) the store in `dir`.
    ///
    /// Fails with [`StoreError::InUse`] while another writer has the store open. A torn last
    /// index line left by a crash is truncated (see [`StoreWriter::recovered`]).
    pub fn open(
        dir: impl AsRef<Path>,
        dtype: StoreDtype,
        images_per_shard: usize,
    ) -> Result<Self, StoreError> {
        let dir = dir.as_ref().to_path_buf();
        tuwen_io::create_dir_all(&dir)?;
        let lock = lock(&dir)?;
        let meta = read_meta(&dir)?;
        if let Some(m) = &meta
            && m.dtype != dtype
        {
            return Err(StoreError::Format {
                path: dir.join("meta.json"),
                reason: format!("store holds {:?} data, {dtype:?} requested", m.dtype),
            });
        }
        let index = read_index(&dir)?;
        let index_path = dir.join("index.jsonl");
        if index.recovered.is_some() {
            // Drop the torn tail so the next append starts on a fresh line.
            OpenOptions::new()
                .write(true)
                .open(&index_path)
                .and_then(|f| {
                    f.set_len(index.valid_len)?;
                    f.sync_all()
                })
                .at(&index_path)?;
        }
        let done = index.entries.into_iter().map(|e| e.id).collect();
        let next_shard = fs::read_dir(&dir)
            .at(&dir)?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                name.strip_prefix("shard-")?
                    .split('.')
                    .next()?
                    .parse::<usize>()
                    .ok()
            })
            .map(|n| n.saturating_add(1))
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
            needs_newline: index.needs_newline,
            recovered: index.recovered,
            _lock: lock,
        })
    }

    /// The torn index line this writer truncated when it opened the store, if any (print it:
    /// the images of that line are extracted again).
    pub fn recovered(&self) -> Option<&Recovered> {
        self.recovered.as_ref()
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
            let text = serde_json::to_string(&meta).expect("serialisable");
            tuwen_io::atomic::write(&meta_path, text.as_bytes())?;
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
        let bytes = safetensors::serialize(views, None).map_err(|e| StoreError::Format {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        tuwen_io::atomic::write(&path, &bytes)?;
        let index_path = self.dir.join("index.jsonl");
        let mut index = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&index_path)
            .at(&index_path)?;
        let mut lines = String::new();
        if self.needs_newline {
            lines.push('\n');
        }
        for e in &entries {
            lines.push_str(&serde_json::to_string(e).expect("serialisable"));
            lines.push('\n');
        }
        index.write_all(lines.as_bytes()).at(&index_path)?;
        index.sync_all().at(&index_path)?;
        self.needs_newline = false;
        self.pending.clear();
        self.next_shard = self.next_shard.saturating_add(1);
        Ok(())
    }

    /// Writes what is queued; the store is complete afterwards.
    pub fn finish(mut self) -> Result<(), StoreError> {
        self.flush()
    }
}

/// A memory-mapped shard with its header parsed once.
struct Shard {
    map: memmap2::Mmap,
    /// Where the tensor data starts (8-byte length + JSON header).
    data_start: usize,
    /// Names, dtypes, shapes and validated byte ranges of the tensors.
    metadata: Metadata,
}

impl fmt::Debug for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shard")
            .field("bytes", &self.map.len())
            .field("tensors", &self.metadata.tensors().len())
            .finish()
    }
}

/// Reads a store through memory maps.
#[derive(Debug)]
pub struct StoreReader {
    dir: PathBuf,
    meta: StoreMeta,
    index: Vec<IndexEntry>,
    by_id: HashMap<String, usize>,
    shards: Mutex<HashMap<String, Arc<Shard>>>,
    recovered: Option<Recovered>,
}

impl StoreReader {
    /// Opens the store in `dir`. A torn last index line (an append interrupted by a crash) is
    /// ignored and reported by [`StoreReader::recovered`]; any other malformed line is an error
    /// naming the file and line.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, StoreError> {
        let dir = dir.as_ref().to_path_buf();
        let meta = read_meta(&dir)?.ok_or_else(|| StoreError::Format {
            path: dir.join("meta.json"),
            reason: "missing: not a feature store (or an empty one)".into(),
        })?;
        let index = read_index(&dir)?;
        let by_id = index
            .entries
            .iter()
            .enumerate()
            .map(|(i, e)| (e.id.clone(), i))
            .collect();
        Ok(Self {
            dir,
            meta,
            index: index.entries,
            by_id,
            shards: Mutex::new(HashMap::new()),
            recovered: index.recovered,
        })
    }

    /// The torn last index line that was ignored, if any (a note for the user).
    pub fn recovered(&self) -> Option<&Recovered> {
        self.recovered.as_ref()
    }

    /// Store metadata.
    pub fn meta(&self) -> &StoreMeta {
        &self.meta
    }

    /// The index entry of image `id` (its region count and size, without reading its shard).
    pub fn entry(&self, id: &str) -> Option<&IndexEntry> {
        self.by_id.get(id).map(|&i| &self.index[i])
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

    /// The mapped shard, mapped and its header parsed on first use only.
    fn shard(&self, name: &str) -> Result<Arc<Shard>, StoreError> {
        let mut shards = self.shards.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = shards.get(name) {
            return Ok(s.clone());
        }
        let path = self.dir.join(name);
        let file = tuwen_io::open(&path)?;
        // SAFETY: shards are immutable once renamed into place; the store never rewrites them.
        let map = unsafe { memmap2::Mmap::map(&file) }.at(&path)?;
        let (header_len, metadata) =
            SafeTensors::read_metadata(&map).map_err(|e| StoreError::Format {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        let shard = Arc::new(Shard {
            data_start: 8 + header_len,
            metadata,
            map,
        });
        shards.insert(name.to_string(), shard.clone());
        Ok(shard)
    }

    /// The regions of image `id`.
    pub fn get(&self, id: &str) -> Result<RegionFeatures, StoreError> {
        let entry = &self.index[*self
            .by_id
            .get(id)
            .ok_or_else(|| StoreError::Missing(id.to_string()))?];
        let path = self.dir.join(&entry.shard);
        let shard = self.shard(&entry.shard)?;
        let fmt = |reason: String| StoreError::Format {
            path: path.clone(),
            reason,
        };
        let read = |name: &str, want: Option<usize>| -> Result<Vec<f32>, StoreError> {
            let key = format!("{id}::{name}");
            let want = want.ok_or_else(|| {
                fmt(format!(
                    "{key}: {} regions of index.jsonl overflow the tensor size",
                    entry.regions
                ))
            })?;
            let info = shard
                .metadata
                .info(&key)
                .ok_or_else(|| fmt(format!("{key}: tensor not found")))?;
            // `read_metadata` checked that every range lies inside the file.
            let (start, end) = info.data_offsets;
            let data = &shard.map[shard.data_start + start..shard.data_start + end];
            let values: Vec<f32> = match info.dtype {
                Dtype::F32 => tuwen_weights::le::f32s(data),
                Dtype::F16 => tuwen_weights::le::f16s_to_f32(data),
                other => return Err(fmt(format!("{key}: unexpected dtype {other:?}"))),
            }
            .map_err(|e| fmt(format!("{key}: {e}")))?;
            if values.len() != want {
                return Err(fmt(format!(
                    "{key}: {} values, expected {want}",
                    values.len()
                )));
            }
            Ok(values)
        };
        let n = entry.regions;
        let boxes = read("boxes", n.checked_mul(4))?
            .chunks_exact(4)
            .map(|b| BoxXyxy::new(b[0], b[1], b[2], b[3]))
            .collect();
        Ok(RegionFeatures {
            image_size: [entry.width, entry.height],
            boxes,
            features: read("features", n.checked_mul(self.meta.dim))?,
            dim: self.meta.dim,
            global: read("global", Some(self.meta.dim))?,
            class_probs: read("class_probs", n.checked_mul(self.meta.classes))?,
            classes: self.meta.classes,
            scores: read("scores", Some(n))?,
        })
    }
}
