//! Run outputs: one JSON object per line in `metrics.jsonl`, and SVG line plots of every series.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// `(step, value)` points of one series.
type Points = Vec<(u64, f64)>;

/// Appends metrics to `metrics.jsonl` and keeps the series for plotting.
#[derive(Debug)]
pub struct MetricsLog {
    path: PathBuf,
    file: File,
    series: BTreeMap<String, Points>,
    lines: usize,
}

impl MetricsLog {
    /// Starts `dir/metrics.jsonl` afresh (a stale file from an earlier run is truncated).
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        Self::resume(dir, 0)
    }

    /// Continues `dir/metrics.jsonl` after a checkpoint that was written when the log held
    /// `keep_lines` lines ([`MetricsLog::lines`]): later lines (steps the resumed run will repeat)
    /// are dropped, the kept ones are reloaded so plots cover the whole run.
    pub fn resume(dir: &Path, keep_lines: usize) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("metrics.jsonl");
        let mut series: BTreeMap<String, Points> = BTreeMap::new();
        let mut kept = String::new();
        let mut lines = 0;
        if keep_lines > 0 {
            let text = std::fs::read_to_string(&path)?;
            for (i, line) in text.lines().take(keep_lines).enumerate() {
                let bad = |why: String| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("{} line {}: {why}", path.display(), i + 1),
                    )
                };
                let value: serde_json::Value =
                    serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
                let object = value
                    .as_object()
                    .ok_or_else(|| bad("not a JSON object".into()))?;
                let step = object
                    .get("step")
                    .and_then(serde_json::Value::as_u64)
                    .ok_or_else(|| bad("no integer \"step\"".into()))?;
                for (name, v) in object.iter().filter(|(k, _)| *k != "step") {
                    let v = v.as_f64().unwrap_or(f64::NAN);
                    series.entry(name.clone()).or_default().push((step, v));
                }
                kept.push_str(line);
                kept.push('\n');
                lines += 1;
            }
            if lines < keep_lines {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "{} has {lines} lines, the checkpoint expects at least {keep_lines}",
                        path.display()
                    ),
                ));
            }
        }
        // Rewrite the kept prefix (temp file + rename, like checkpoints), then append.
        let tmp = dir.join(".metrics.jsonl.tmp");
        std::fs::write(&tmp, &kept)?;
        std::fs::rename(&tmp, &path)?;
        let file = OpenOptions::new().append(true).open(&path)?;
        Ok(Self {
            path,
            file,
            series,
            lines,
        })
    }

    /// Lines written so far (store it with a checkpoint to resume the log exactly).
    pub fn lines(&self) -> usize {
        self.lines
    }

    /// Path of the JSONL file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records `values` at `step` (e.g. `train/mlm`, `eval/itm_accuracy`), one JSON line.
    pub fn log(&mut self, step: u64, values: &[(&str, f64)]) -> std::io::Result<()> {
        let mut line = serde_json::Map::new();
        line.insert("step".into(), step.into());
        for &(name, value) in values {
            let json = serde_json::Number::from_f64(value)
                .map_or(serde_json::Value::Null, serde_json::Value::Number);
            line.insert(name.into(), json);
            self.series
                .entry(name.to_string())
                .or_default()
                .push((step, value));
        }
        writeln!(self.file, "{}", serde_json::Value::Object(line))?;
        self.lines += 1;
        self.file.flush()
    }

    /// Writes one SVG plot per series prefix (`train`, `eval`, ...) into `dir`.
    pub fn plot(&self, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
        let mut groups: BTreeMap<&str, Vec<(&str, &Points)>> = BTreeMap::new();
        for (name, points) in &self.series {
            let group = name.split('/').next().unwrap_or(name);
            groups.entry(group).or_default().push((name, points));
        }
        let mut written = Vec::new();
        for (group, series) in groups {
            let path = dir.join(format!("{group}.svg"));
            std::fs::write(&path, svg(group, &series))?;
            written.push(path);
        }
        Ok(written)
    }
}

const COLORS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
];

/// A line chart of `series` (hand-written: a few polylines need no plotting library).
fn svg(title: &str, series: &[(&str, &Points)]) -> String {
    let (w, h, pad) = (640.0, 360.0, 48.0);
    let finite = || {
        series
            .iter()
            .flat_map(|(_, p)| p.iter())
            .filter(|(_, v)| v.is_finite())
    };
    let (x0, x1) = finite().fold((u64::MAX, 0), |(a, b), (s, _)| (a.min(*s), b.max(*s)));
    let (y0, y1) = finite().fold((f64::MAX, f64::MIN), |(a, b), (_, v)| {
        (a.min(*v), b.max(*v))
    });
    let (x0, x1) = if x0 > x1 {
        (0, 1)
    } else {
        (x0, x1.max(x0 + 1))
    };
    let (y0, y1) = if y0 > y1 {
        (0.0, 1.0)
    } else if y1 - y0 < 1e-12 {
        (y0 - 0.5, y1 + 0.5)
    } else {
        (y0, y1)
    };
    let sx = |s: u64| pad + (s - x0) as f64 / (x1 - x0) as f64 * (w - 2.0 * pad);
    let sy = |v: f64| h - pad - (v - y0) / (y1 - y0) * (h - 2.0 * pad);
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{pad}\" y=\"20\" font-size=\"14\">{title}</text>\n\
         <line x1=\"{pad}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n\
         <line x1=\"{pad}\" y1=\"{pad}\" x2=\"{pad}\" y2=\"{}\" stroke=\"black\"/>\n\
         <text x=\"{pad}\" y=\"{}\">step {x0}</text><text x=\"{}\" y=\"{}\" text-anchor=\"end\">{x1}</text>\n\
         <text x=\"4\" y=\"{}\">{y1:.3}</text><text x=\"4\" y=\"{}\">{y0:.3}</text>\n",
        h - pad,
        w - pad,
        h - pad,
        h - pad,
        h - pad + 16.0,
        w - pad,
        h - pad + 16.0,
        pad + 4.0,
        h - pad
    );
    for (i, (name, points)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let coords: Vec<String> = points
            .iter()
            .filter(|(_, v)| v.is_finite())
            .map(|(s, v)| format!("{:.1},{:.1}", sx(*s), sy(*v)))
            .collect();
        out.push_str(&format!(
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"1.5\" points=\"{}\"/>\n\
             <text x=\"{}\" y=\"{}\" fill=\"{color}\">{name}</text>\n",
            coords.join(" "),
            w - pad - 150.0,
            pad + 14.0 * i as f64
        ));
    }
    out.push_str("</svg>\n");
    out
}
