//! Checkpoints: model record + optimiser record + training state (step, data position, RNG, ...),
//! written atomically. A checkpoint is a directory `NAME/` with `model.bpk`, `optimizer.bpk` and
//! `state.json`; it is assembled in a temporary directory and swapped in with renames, so a crash
//! at any point leaves either the previous checkpoint or the new one, never a mix or nothing.

use std::fs;
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::optim::{ModuleOptimizer, OptimizerRecord};
use burn::store::ModuleRecord;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tuwen_io::PathContext;

/// Errors of checkpointing; each names the path.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// Filesystem error (names the path).
    #[error(transparent)]
    Io(#[from] tuwen_io::IoError),
    /// A checkpoint file is unreadable or does not fit.
    #[error("{path}: {reason}")]
    Format {
        /// The path.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

fn format(path: &Path, reason: impl std::fmt::Display) -> CheckpointError {
    CheckpointError::Format {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// Writes checkpoint `name` under `dir` atomically (callers skip NaN steps before saving, so a
/// checkpoint never holds a diverged model).
pub fn save<M: Module, S: Serialize>(
    dir: &Path,
    name: &str,
    model: &M,
    optimizer: &ModuleOptimizer,
    state: &S,
) -> Result<PathBuf, CheckpointError> {
    fs::create_dir_all(dir).at(dir)?;
    let target = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let old = dir.join(format!(".{name}.old"));
    if tmp.exists() {
        fs::remove_dir_all(&tmp).at(&tmp)?;
    }
    fs::create_dir_all(&tmp).at(&tmp)?;
    let model_path = tmp.join("model.bpk");
    model
        .clone()
        .into_record()
        .save(&model_path)
        .map_err(|e| format(&model_path, e))?;
    let optim_path = tmp.join("optimizer.bpk");
    optimizer
        .to_record()
        .save(&optim_path)
        .map_err(|e| format(&optim_path, e))?;
    let state_path = tmp.join("state.json");
    let text = serde_json::to_string_pretty(state).map_err(|e| format(&state_path, e))?;
    fs::write(&state_path, text).at(&state_path)?;
    // (The files of the directory are synced below and the directory is swapped in whole.)
    for file in ["model.bpk", "optimizer.bpk", "state.json"] {
        let p = tmp.join(file);
        fs::File::open(&p).and_then(|f| f.sync_all()).at(&p)?;
    }
    // Swap: target -> old, tmp -> target, drop old. `load` falls back to `old` if a crash hits
    // between the two renames.
    if old.exists() {
        fs::remove_dir_all(&old).at(&old)?;
    }
    if target.exists() {
        fs::rename(&target, &old).at(&target)?;
    }
    fs::rename(&tmp, &target).at(&tmp)?;
    if old.exists() {
        fs::remove_dir_all(&old).at(&old)?;
    }
    Ok(target)
}

/// A loaded checkpoint.
pub struct Loaded<M, S> {
    /// The model with the checkpoint's weights.
    pub model: M,
    /// The optimiser with the checkpoint's state.
    pub optimizer: ModuleOptimizer,
    /// The training state.
    pub state: S,
    /// Where it was read from.
    pub path: PathBuf,
}

/// Loads checkpoint `name` under `dir` into `model` / `optimizer` (freshly built, same
/// architecture). `Ok(None)` when no checkpoint exists.
pub fn load<M: Module, S: DeserializeOwned>(
    dir: &Path,
    name: &str,
    model: M,
    optimizer: ModuleOptimizer,
) -> Result<Option<Loaded<M, S>>, CheckpointError> {
    let Some(path) = existing(dir, name) else {
        return Ok(None);
    };
    let model = load_weights(&path, model)?;
    let optim_path = path.join("optimizer.bpk");
    let optim_record =
        OptimizerRecord::from_bytes(read(&optim_path)?).map_err(|e| format(&optim_path, e))?;
    let state = read_state(&path)?;
    Ok(Some(Loaded {
        model,
        optimizer: optimizer.load_record(optim_record),
        state,
        path,
    }))
}

/// Only the training state of checkpoint `name` under `dir` (its step, metrics, ...), read
/// without the model. `Ok(None)` when no checkpoint exists.
pub fn load_state<S: DeserializeOwned>(
    dir: &Path,
    name: &str,
) -> Result<Option<S>, CheckpointError> {
    existing(dir, name)
        .map(|path| read_state(&path))
        .transpose()
}

fn read_state<S: DeserializeOwned>(checkpoint: &Path) -> Result<S, CheckpointError> {
    let state_path = checkpoint.join("state.json");
    let text = fs::read_to_string(&state_path).at(&state_path)?;
    serde_json::from_str(&text).map_err(|e| format(&state_path, e))
}

/// Only the weights of checkpoint `name` under `dir` loaded into `model` (evaluation needs no
/// optimiser state). `Ok(None)` when no checkpoint exists.
pub fn load_model<M: Module>(
    dir: &Path,
    name: &str,
    model: M,
) -> Result<Option<M>, CheckpointError> {
    existing(dir, name)
        .map(|path| load_weights(&path, model))
        .transpose()
}

/// The directory of checkpoint `name`, or its `.NAME.old` twin when a crash hit between the
/// two renames of [`save`].
fn existing(dir: &Path, name: &str) -> Option<PathBuf> {
    [dir.join(name), dir.join(format!(".{name}.old"))]
        .into_iter()
        .find(|p| p.is_dir())
}

/// A checkpoint file read into memory, not mapped lazily: the next save of this checkpoint
/// replaces its directory, and a tensor still backed by the old file (a parameter or optimiser
/// moment not yet touched) could then no longer be read.
fn read(path: &Path) -> Result<burn::tensor::Bytes, CheckpointError> {
    Ok(burn::tensor::Bytes::from_bytes_vec(tuwen_io::read(path)?))
}

fn load_weights<M: Module>(path: &Path, model: M) -> Result<M, CheckpointError> {
    let model_path = path.join("model.bpk");
    let record =
        ModuleRecord::from_bytes(read(&model_path)?).map_err(|e| format(&model_path, e))?;
    model
        .try_load_record(record)
        .map_err(|e| format(&model_path, format!("does not fit the model: {e}")))
}

/// Writes `bytes` to `path` atomically ([`tuwen_io::atomic`]): the file is either the old
/// or the new content, never a torn mix.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), CheckpointError> {
    Ok(tuwen_io::atomic::write(path, bytes)?)
}
