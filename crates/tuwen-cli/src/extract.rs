//! `tuwen extract-regions`: images -> region feature store, resumable, never aborting on a bad
//! image.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::tensor::Device;
use indicatif::{ProgressBar, ProgressStyle};
use tuwen_regions::{BoxXyxy, ExtractorConfig, RegionExtractor, StoreDtype, StoreWriter};
use tuwen_vision::{Backbone, load_rgb};

/// What one run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExtractSummary {
    /// Images extracted in this run.
    pub extracted: usize,
    /// Images already in the store (skipped).
    pub already_stored: usize,
    /// Images that could not be read or decoded (reported and skipped).
    pub failed: usize,
}

/// The images to process: every JPEG/PNG in a directory (sorted), or the paths listed one per
/// line in a text file. Ids are file names without extension (relative path for lists).
pub fn list_images(source: &Path) -> Result<Vec<(String, PathBuf)>> {
    if source.is_dir() {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(source)
            .with_context(|| format!("cannot list {}", source.display()))?
        {
            let path = entry?.path();
            let ext = path
                .extension()
                .and_then(|e| e.to_str())
                .map(str::to_ascii_lowercase);
            if matches!(ext.as_deref(), Some("jpg" | "jpeg" | "png")) {
                let id = path
                    .file_stem()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned();
                out.push((id, path));
            }
        }
        out.sort();
        return Ok(out);
    }
    let text = std::fs::read_to_string(source)
        .with_context(|| format!("cannot read image list {}", source.display()))?;
    let base = source.parent().unwrap_or(Path::new("."));
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let path = base.join(l);
            let id = Path::new(l)
                .with_extension("")
                .to_string_lossy()
                .into_owned();
            (id, path)
        })
        .collect())
}

/// Ground-truth boxes: `{"image_id": [[x1, y1, x2, y2], ...], ...}` in original pixels.
pub fn read_boxes(path: &Path) -> Result<HashMap<String, Vec<BoxXyxy>>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let raw: HashMap<String, Vec<[f32; 4]>> = serde_json::from_str(&text).with_context(|| {
        format!(
            "{}: expected {{\"id\": [[x1, y1, x2, y2], ...]}}",
            path.display()
        )
    })?;
    Ok(raw
        .into_iter()
        .map(|(k, v)| {
            (
                k,
                v.into_iter()
                    .map(|b| BoxXyxy::new(b[0], b[1], b[2], b[3]))
                    .collect(),
            )
        })
        .collect())
}

/// Options of [`run`].
pub struct ExtractOptions<'a> {
    /// Images (directory or list file).
    pub images: &'a Path,
    /// Store directory.
    pub out: &'a Path,
    /// Backbone name and weights.
    pub backbone: Backbone,
    /// Ground-truth boxes by image id.
    pub boxes: Option<HashMap<String, Vec<BoxXyxy>>>,
    /// Storage precision.
    pub dtype: StoreDtype,
    /// Extraction settings.
    pub config: ExtractorConfig,
    /// Device.
    pub device: Device,
}

/// Extracts every image not yet in the store; bad images are reported on stderr and counted.
pub fn run(options: ExtractOptions<'_>) -> Result<ExtractSummary> {
    let images = list_images(options.images)?;
    if images.is_empty() {
        bail!("no JPEG/PNG images in {}", options.images.display());
    }
    let mut writer = StoreWriter::open(options.out, options.dtype, 64)?;
    if let Some(recovered) = writer.recovered() {
        eprintln!("note: {recovered}");
    }
    let extractor = RegionExtractor::new(options.backbone, options.config);
    let mut summary = ExtractSummary::default();
    let start = Instant::now();
    let total = images.len();
    // A live bar on a terminal; otherwise a progress line every tenth of the images.
    let bar = std::io::stderr().is_terminal().then(|| {
        let style = ProgressStyle::with_template(
            "[{elapsed_precise}] {bar:30.cyan/blue} {pos}/{len}  {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        ProgressBar::new(total as u64).with_style(style)
    });
    let mut stderr = std::io::stderr();
    for (done, (id, path)) in images.iter().enumerate() {
        if writer.contains(id) {
            summary.already_stored += 1;
        } else {
            match load_rgb(path) {
                Ok(image) => {
                    let gt = options
                        .boxes
                        .as_ref()
                        .and_then(|b| b.get(id))
                        .map(Vec::as_slice);
                    let features = extractor.extract(&image, gt, &options.device);
                    writer.add(id, features)?;
                    summary.extracted += 1;
                }
                Err(e) => {
                    let warn = || writeln!(std::io::stderr(), "warning: skipping {e}");
                    match &bar {
                        Some(bar) => bar.suspend(warn)?,
                        None => warn()?,
                    }
                    summary.failed += 1;
                }
            }
        }
        let message = rate_and_eta(done + 1, total, summary.extracted, start);
        match &bar {
            Some(bar) => {
                bar.set_position(done as u64 + 1);
                bar.set_message(message);
            }
            None if (done + 1) % total.div_ceil(10) == 0 || done + 1 == total => {
                writeln!(stderr, "{}/{total}  {message}", done + 1)?;
            }
            None => {}
        }
    }
    if let Some(bar) = bar {
        bar.abandon();
    }
    writer.finish()?;
    writeln!(
        stderr,
        "{} extracted, {} already in the store, {} failed -> {}",
        summary.extracted,
        summary.already_stored,
        summary.failed,
        options.out.display()
    )?;
    Ok(summary)
}

/// `rate img/s  ETA s` after `done` of `total` images, `extracted` of them in this run.
fn rate_and_eta(done: usize, total: usize, extracted: usize, start: Instant) -> String {
    let secs = start.elapsed().as_secs_f64().max(1e-9);
    let rate = extracted as f64 / secs;
    let eta = if rate > 0.0 {
        (total - done) as f64 / rate
    } else {
        0.0
    };
    format!("{rate:.2} img/s  ETA {eta:.0}s")
}
