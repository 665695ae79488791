//! Streaming import/export of the bottom-up-attention (BUTD) TSV layout used by LXMERT, VisualBERT
//! and friends: one image per line, tab-separated
//! `img_id, img_h, img_w, objects_id, objects_conf, attrs_id, attrs_conf, num_boxes, boxes, features`,
//! array fields base64 of little-endian int64 (ids) / float32 (the rest), `boxes` `[n, 4]` xyxy in
//! original pixels, `features` `[n, D]`.
//!
//! Lines are processed one at a time (loading whole TSVs into RAM is the known failure of the
//! reference loaders). Kept on import: size, boxes, features, `objects_conf` (as scores); the
//! detector's object/attribute ids are not stored, and export writes zeros for them.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use tuwen_io::PathContext;

use crate::store::{StoreReader, StoreWriter};
use crate::{BoxXyxy, RegionFeatures, StoreError};

/// What to do with a malformed line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnMalformed {
    /// Stop with an error naming the file and line.
    Fail,
    /// Skip it and count it.
    Skip,
}

/// Errors of TSV import/export.
#[derive(Debug, thiserror::Error)]
pub enum TsvError {
    /// Filesystem error (names the file).
    #[error(transparent)]
    Io(#[from] tuwen_io::IoError),
    /// A malformed line (with [`OnMalformed::Fail`]).
    #[error("{path}:{line}: {reason}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// The store refused the image.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Counts of an import.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TsvSummary {
    /// Images imported.
    pub imported: usize,
    /// Images already in the store.
    pub already_stored: usize,
    /// Malformed lines skipped.
    pub skipped: usize,
}

fn decode_f32(field: &str) -> Result<Vec<f32>, String> {
    let bytes = STANDARD
        .decode(field.trim())
        .map_err(|e| format!("bad base64: {e}"))?;
    tuwen_weights::le::f32s(&bytes).map_err(|e| format!("not a float32 array: {e}"))
}

fn encode_f32(values: &[f32]) -> String {
    STANDARD.encode(
        values
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect::<Vec<u8>>(),
    )
}

/// Parses one BUTD line into `(img_id, features)`.
pub fn parse_line(line: &str) -> Result<(String, RegionFeatures), String> {
    let fields: Vec<&str> = line.trim_end_matches(['\n', '\r']).split('\t').collect();
    if fields.len() != 10 {
        return Err(format!(
            "expected 10 tab-separated fields, found {}",
            fields.len()
        ));
    }
    let int = |i: usize, name: &str| -> Result<usize, String> {
        fields[i]
            .trim()
            .parse::<usize>()
            .map_err(|_| format!("{name} {:?} is not a non-negative integer", fields[i]))
    };
    let (h, w, n) = (int(1, "img_h")?, int(2, "img_w")?, int(7, "num_boxes")?);
    let (Ok(h), Ok(w)) = (u32::try_from(h), u32::try_from(w)) else {
        return Err(format!("image size {w} x {h} does not fit in 32 bits"));
    };
    let boxes = decode_f32(fields[8]).map_err(|e| format!("boxes: {e}"))?;
    let features = decode_f32(fields[9]).map_err(|e| format!("features: {e}"))?;
    let scores = decode_f32(fields[4]).map_err(|e| format!("objects_conf: {e}"))?;
    if n.checked_mul(4) != Some(boxes.len()) {
        return Err(format!(
            "boxes hold {} values, num_boxes {n} needs 4 per box",
            boxes.len()
        ));
    }
    if n == 0 || features.len() % n != 0 || features.is_empty() {
        return Err(format!(
            "features hold {} values, not a multiple of num_boxes {n}",
            features.len()
        ));
    }
    if scores.len() != n {
        return Err(format!(
            "objects_conf holds {} values, expected {n}",
            scores.len()
        ));
    }
    let dim = features.len() / n;
    let global = (0..dim)
        .map(|j| (0..n).map(|i| features[i * dim + j]).sum::<f32>() / n as f32)
        .collect();
    Ok((
        fields[0].to_string(),
        RegionFeatures {
            image_size: [w, h],
            boxes: boxes
                .chunks_exact(4)
                .map(|b| BoxXyxy::new(b[0], b[1], b[2], b[3]))
                .collect(),
            features,
            dim,
            global,
            class_probs: Vec::new(),
            classes: 0,
            scores,
        },
    ))
}

/// Imports a BUTD TSV file line by line into `writer` (images already stored are skipped).
pub fn import(
    path: &Path,
    writer: &mut StoreWriter,
    on_malformed: OnMalformed,
) -> Result<TsvSummary, TsvError> {
    let reader = BufReader::new(tuwen_io::open(path)?);
    let mut summary = TsvSummary::default();
    for (n, line) in reader.lines().enumerate() {
        let line = line.at(path)?;
        if line.trim().is_empty() {
            continue;
        }
        // `Err(Ok(reason))`: a malformed line; `Err(Err(e))`: the store failed.
        let outcome: Result<(), Result<String, StoreError>> = match parse_line(&line) {
            Ok((id, _)) if writer.contains(&id) => {
                summary.already_stored += 1;
                continue;
            }
            // A line the store cannot take (another feature width, an id with "::") is a
            // malformed line of this file too.
            Ok((id, features)) => writer.add(&id, features).map_err(|e| match e {
                StoreError::Mismatch { id, reason } => Ok(format!("image {id:?}: {reason}")),
                other => Err(other),
            }),
            Err(reason) => Err(Ok(reason)),
        };
        match outcome {
            Ok(()) => summary.imported += 1,
            Err(Err(store)) => return Err(store.into()),
            Err(Ok(reason)) => match on_malformed {
                OnMalformed::Fail => {
                    return Err(TsvError::Malformed {
                        path: path.to_path_buf(),
                        line: n + 1,
                        reason,
                    });
                }
                OnMalformed::Skip => summary.skipped += 1,
            },
        }
    }
    Ok(summary)
}

/// Exports every image of a store as BUTD TSV lines, streaming. Returns the number written.
pub fn export(store: &StoreReader, path: &Path) -> Result<usize, TsvError> {
    let mut out = BufWriter::new(File::create(path).at(path)?);
    for entry in store.entries() {
        let f = store.get(&entry.id)?;
        let n = f.len();
        let zeros_i64 = STANDARD.encode(vec![0u8; 8 * n]);
        let boxes: Vec<f32> = f
            .boxes
            .iter()
            .flat_map(|b| [b.x1, b.y1, b.x2, b.y2])
            .collect();
        writeln!(
            out,
            "{}\t{}\t{}\t{zeros_i64}\t{}\t{zeros_i64}\t{}\t{n}\t{}\t{}",
            entry.id,
            entry.height,
            entry.width,
            encode_f32(&f.scores),
            encode_f32(&vec![0.0; n]),
            encode_f32(&boxes),
            encode_f32(&f.features)
        )
        .at(path)?;
    }
    out.flush().at(path)?;
    Ok(store.len())
}
