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
}

impl MetricsLog {
    /// Opens (appending to) `dir/metrics.jsonl`.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("metrics.jsonl");
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        Ok(Self {
            path,
            file,
            series: BTreeMap::new(),
        })
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
