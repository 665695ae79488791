//! Strict checkpoint import for tuwen models.
//!
//! Every model crate keeps the name mapping of its checkpoints in one place (an [`HfMapping`] of
//! regex renames, or a renaming function for mappings a regex cannot express, such as index
//! shifts). The loaders here apply it through `burn-store` and turn every missing, unused or
//! mis-shaped tensor into one error that names the file and the tensors; tensors a model does
//! not use by design (buffers, tied copies) are declared, never silently skipped.

pub mod compare;
pub mod host;
pub mod le;
pub mod synthetic;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::store::{
    ApplyResult, KeyRemapper, ModuleSnapshot, PyTorchToBurnAdapter, SafetensorsStore,
};
use burn::tensor::TensorData;
use safetensors::{Dtype, SafeTensors};

/// Errors while reading configs or loading checkpoints.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A file could not be read (the error names it).
    #[error(transparent)]
    Io(#[from] tuwen_io::IoError),
    /// A config file is malformed or describes an unsupported model.
    #[error("invalid config {path}: {reason}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The checkpoint does not match the model.
    #[error("checkpoint {path} does not match {model}:\n{details}")]
    Mismatch {
        /// The checkpoint.
        path: PathBuf,
        /// The model being loaded.
        model: &'static str,
        /// One line per missing, unused or mis-shaped tensor.
        details: String,
    },
    /// The checkpoint file could not be parsed.
    #[error("cannot load checkpoint {path}: {reason}")]
    Format {
        /// The checkpoint.
        path: PathBuf,
        /// The parser's message.
        reason: String,
    },
}

/// How a HF checkpoint's tensor names map onto a tuwen model.
#[derive(Debug)]
pub struct HfMapping {
    /// Model name, for messages.
    pub model: &'static str,
    /// Regex renames applied in order to every HF key (`$1` back-references allowed).
    pub renames: &'static [(&'static str, &'static str)],
    /// Regexes of (renamed) checkpoint keys that the model does not use by design.
    pub unused_by_design: &'static [&'static str],
}

/// Reads a JSON config and checks it with `validate`; both failures name the file.
pub fn read_config<T: serde::de::DeserializeOwned>(
    path: &Path,
    validate: impl Fn(&T) -> Result<(), String>,
) -> Result<T, LoadError> {
    let config: T = read_json(path)?;
    validate(&config).map_err(|reason| LoadError::Config {
        path: path.to_path_buf(),
        reason,
    })?;
    Ok(config)
}

/// Reads a JSON config file.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, LoadError> {
    let text = tuwen_io::read_to_string(path)?;
    serde_json::from_str(&text).map_err(|e| LoadError::Config {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

fn missing_file(path: &Path) -> LoadError {
    tuwen_io::IoError::new(
        path,
        std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
    )
    .into()
}

/// Applies `store` to `module` and turns the outcome into one report: every missing tensor,
/// every unused tensor that `unused_ok` does not excuse, every shape/dtype error.
fn apply_strict<M: Module>(
    mut module: M,
    store: SafetensorsStore,
    path: &Path,
    model: &'static str,
    unused_ok: impl Fn(&str) -> bool,
) -> Result<M, LoadError> {
    // Collect shape/dtype errors instead of failing on the first batch, so the report lists
    // missing, unused and mis-shaped tensors together.
    let mut store = store
        .with_from_adapter(PyTorchToBurnAdapter)
        .allow_partial(true)
        .validate(false);
    let result: ApplyResult = module
        .load_from(&mut store)
        .map_err(|e| LoadError::Format {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    let mut details = Vec::new();
    for (tensor, _) in &result.missing {
        details.push(format!("  missing from checkpoint: {tensor}"));
    }
    for tensor in result.unused.iter().filter(|t| !unused_ok(t)) {
        details.push(format!("  not used by the model: {tensor}"));
    }
    for error in &result.errors {
        details.push(format!("  {error}"));
    }
    const MAX_LINES: usize = 40;
    if details.len() > MAX_LINES {
        let more = details.len() - MAX_LINES;
        details.truncate(MAX_LINES);
        details.push(format!("  ... and {more} more"));
    }
    if details.is_empty() {
        Ok(module)
    } else {
        Err(LoadError::Mismatch {
            path: path.to_path_buf(),
            model,
            details: details.join("\n"),
        })
    }
}

/// Loads a HF safetensors checkpoint into `module` through `mapping`, strictly.
pub fn load_hf<M: Module>(module: M, path: &Path, mapping: &HfMapping) -> Result<M, LoadError> {
    let format_err = |reason: String| LoadError::Format {
        path: path.to_path_buf(),
        reason,
    };
    if !path.is_file() {
        return Err(missing_file(path));
    }
    let remapper = KeyRemapper::from_patterns(mapping.renames.to_vec())
        .map_err(|e| format_err(format!("bad rename pattern: {e}")))?;
    let unused_ok: Vec<regex::Regex> = mapping
        .unused_by_design
        .iter()
        .map(|p| regex::Regex::new(p))
        .collect::<Result<_, _>>()
        .map_err(|e| format_err(format!("bad pattern: {e}")))?;
    let store = SafetensorsStore::from_file(path).remap(remapper);
    apply_strict(module, store, path, mapping.model, |t| {
        unused_ok.iter().any(|re| re.is_match(t))
    })
}

/// Loads a safetensors checkpoint into `module`, renaming each stored key with `rename`
/// (`None`: the model does not use this tensor by design), strictly. For mappings a regex table
/// cannot express, such as index shifts between a flat reference `Sequential` and named stages.
pub fn load_renamed<M: Module>(
    module: M,
    path: &Path,
    model: &'static str,
    rename: impl Fn(&str) -> Option<String>,
) -> Result<M, LoadError> {
    let format_err = |reason: String| LoadError::Format {
        path: path.to_path_buf(),
        reason,
    };
    let bytes = tuwen_io::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => missing_file(path),
        _ => e.into(),
    })?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| format_err(e.to_string()))?;
    let renamed: Vec<(String, safetensors::tensor::TensorView<'_>)> = st
        .tensors()
        .into_iter()
        .filter_map(|(name, view)| rename(&name).map(|new| (new, view)))
        .collect();
    // Two stored tensors renamed to one name would make `safetensors::serialize` panic.
    let mut seen = std::collections::HashSet::new();
    if let Some((name, _)) = renamed.iter().find(|(name, _)| !seen.insert(name.as_str())) {
        return Err(format_err(format!(
            "two tensors of the checkpoint map to the model tensor {name}"
        )));
    }
    let bytes = safetensors::serialize(renamed, None).map_err(|e| format_err(e.to_string()))?;
    apply_strict(
        module,
        SafetensorsStore::from_bytes(Some(bytes)),
        path,
        model,
        |_| false,
    )
}

/// Reads every tensor of a safetensors file into host [`TensorData`] (f32, f16 and integer
/// tensors; f16 is widened to f32). Used for forward inputs and reference outputs of fixtures.
pub fn read_tensors(path: &Path) -> Result<BTreeMap<String, TensorData>, LoadError> {
    let bytes = tuwen_io::read(path)?;
    let format_err = |reason: String| LoadError::Format {
        path: path.to_path_buf(),
        reason,
    };
    let st = SafeTensors::deserialize(&bytes).map_err(|e| format_err(e.to_string()))?;
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        let shape = view.shape().to_vec();
        let raw = view.data();
        let bad = |e: le::LengthError| format_err(format!("tensor {name}: {e}"));
        let data = match view.dtype() {
            Dtype::F32 => TensorData::new(le::f32s(raw).map_err(bad)?, shape),
            Dtype::F16 => TensorData::new(le::f16s_to_f32(raw).map_err(bad)?, shape),
            Dtype::I64 => TensorData::new(le::i64s(raw).map_err(bad)?, shape),
            Dtype::I32 => TensorData::new(le::i32s(raw).map_err(bad)?, shape),
            other => {
                return Err(format_err(format!(
                    "tensor {name} has unsupported dtype {other:?}"
                )));
            }
        };
        out.insert(name, data);
    }
    Ok(out)
}
