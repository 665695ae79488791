//! One I/O error shape for the whole workspace, and the one atomic file write.
//!
//! Every tuwen crate that touches files reports a failed file operation as an [`IoError`]: the
//! path involved plus the OS error, displayed as `PATH: OS error`. Crate error enums embed it as
//! `#[error(transparent)] Io(#[from] tuwen_io::IoError)`, and call sites attach the path with
//! [`PathContext::at`]:
//!
//! ```
//! use tuwen_io::PathContext;
//!
//! # fn main() -> Result<(), tuwen_io::IoError> {
//! let path = std::path::Path::new("/nonexistent/config.toml");
//! let err = std::fs::read_to_string(path).at(path).unwrap_err();
//! assert!(err.to_string().starts_with("/nonexistent/config.toml: "));
//! # Ok(()) }
//! ```
//!
//! This crate depends on neither Burn nor any other tuwen crate, so `tuwen-assets` (used by
//! `xtask`) can use it too.

pub mod atomic;

use std::fs::File;
use std::path::{Path, PathBuf};

/// A file operation that failed: the path involved and the OS error.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct IoError {
    /// The file or directory.
    pub path: PathBuf,
    /// The OS error.
    pub source: std::io::Error,
}

impl IoError {
    /// An error of the operation on `path`.
    pub fn new(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self {
            path: path.into(),
            source,
        }
    }

    /// The kind of the OS error (e.g. to tell a missing file from a permission problem).
    pub fn kind(&self) -> std::io::ErrorKind {
        self.source.kind()
    }
}

/// Back to a plain [`std::io::Error`] of the same kind whose message keeps the path, so code
/// returning `std::io::Result` can use `?` on tuwen-io functions.
impl From<IoError> for std::io::Error {
    fn from(e: IoError) -> Self {
        std::io::Error::new(e.source.kind(), e)
    }
}

/// Attaches the path to the error of a file operation.
pub trait PathContext<T> {
    /// `Err(source)` becomes `Err(IoError { path, source })`.
    fn at(self, path: impl AsRef<Path>) -> Result<T, IoError>;
}

impl<T> PathContext<T> for std::io::Result<T> {
    fn at(self, path: impl AsRef<Path>) -> Result<T, IoError> {
        self.map_err(|source| IoError::new(path.as_ref(), source))
    }
}

/// [`std::fs::read`], naming the file on error.
pub fn read(path: impl AsRef<Path>) -> Result<Vec<u8>, IoError> {
    let path = path.as_ref();
    std::fs::read(path).at(path)
}

/// [`std::fs::read_to_string`], naming the file on error.
pub fn read_to_string(path: impl AsRef<Path>) -> Result<String, IoError> {
    let path = path.as_ref();
    std::fs::read_to_string(path).at(path)
}

/// [`File::open`], naming the file on error.
pub fn open(path: impl AsRef<Path>) -> Result<File, IoError> {
    let path = path.as_ref();
    File::open(path).at(path)
}

/// [`std::fs::create_dir_all`], naming the directory on error.
pub fn create_dir_all(path: impl AsRef<Path>) -> Result<(), IoError> {
    let path = path.as_ref();
    std::fs::create_dir_all(path).at(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_path_and_keep_the_os_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.json");
        let err = read(&missing).unwrap_err();
        assert_eq!(err.path, missing);
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
        let text = err.to_string();
        assert!(
            text.starts_with(&format!("{}: ", missing.display())),
            "{text}"
        );
        assert!(text.contains("os error"), "{text}");
        let source = std::error::Error::source(&err).expect("the OS error is the source");
        assert_eq!(source.to_string(), err.source.to_string());

        let plain: std::io::Error = read_to_string(&missing).unwrap_err().into();
        assert_eq!(plain.kind(), std::io::ErrorKind::NotFound);
        assert!(plain.to_string().contains("missing.json"), "{plain}");
    }
}
