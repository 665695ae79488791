//! The one atomic file write of the workspace (checkpoints' side files, run configs, the metrics
//! log, feature-store shards and metadata, unpacked asset files): the bytes go to a temporary file
//! in the target's directory (`tempfile`), are synced, and the file is renamed over the target
//! (`persist`), so a reader (or a process killed mid-write) sees the old content or the new,
//! never a torn mix. A failed write removes its temporary file and leaves the target untouched.

use std::fs::File;
use std::io::Write;
use std::path::Path;

use crate::{IoError, PathContext};

/// Writes `bytes` to `path` atomically.
pub fn write(path: &Path, bytes: &[u8]) -> Result<(), IoError> {
    write_with(path, |file| file.write_all(bytes))
}

/// Writes `path` atomically with `fill`, which writes the content into a temporary file. Every
/// error names `path`.
pub fn write_with(
    path: &Path,
    fill: impl FnOnce(&mut File) -> std::io::Result<()>,
) -> Result<(), IoError> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .at(path)?;
    fill(tmp.as_file_mut()).at(path)?;
    tmp.as_file().sync_all().at(path)?;
    tmp.persist(path).map_err(|e| e.error).at(path)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_content_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.txt");
        write(&path, b"old").unwrap();
        write(&path, b"new").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        let failed = write_with(&path, |_| Err(std::io::Error::other("disk full"))).unwrap_err();
        assert_eq!(failed.path, path);
        assert!(failed.to_string().contains("disk full"), "{failed}");
        assert_eq!(
            std::fs::read(&path).unwrap(),
            b"new",
            "a failed write keeps the old"
        );
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_missing_directory_is_an_error_naming_the_target() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("no-such-dir").join("a.txt");
        let err = write(&path, b"x").unwrap_err();
        assert_eq!(err.path, path);
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    }
}
