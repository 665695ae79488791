//! Run outputs: one JSON object per line in `metrics.jsonl`, and plots of every series
//! (`train.svg` / `train.png`, `eval.svg` / `eval.png`): one panel per quantity, each with its
//! own axis, ticks, grid and a legend beside it.
//!
//! The plots are drawn with `plotters` (SVG and in-memory bitmap backends only, `ab_glyph` text
//! with an embedded DejaVu Sans, so no system fonts are needed); the bitmap is encoded by the
//! `image` crate this crate already uses, which keeps `plotters`' own `image` 0.24 encoder out of
//! the build.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::coord::ranged1d::{KeyPointHint, NoDefaultFormatting, Ranged, ValueFormatter};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

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
        // Rewrite the kept prefix atomically, then append.
        tuwen_io::atomic::write(&path, kept.as_bytes())?;
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

    /// Draws one figure per series prefix (`train`, `eval`, ...) into `dir`, as `<prefix>.svg` and
    /// `<prefix>.png`, and returns the SVG paths (each has its PNG beside it).
    ///
    /// Each quantity gets its own panel: losses (log axis when all positive, with a moving
    /// average over the raw values once there are enough of them), accuracies (the `train`
    /// figure adds the held-out `eval/*accuracy` series, with markers), learning rate, gradient
    /// norm (log axis), retrieval recall, and any other series on its own.
    pub fn plot(&self, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
        register_font()?;
        let mut written = Vec::new();
        for figure in figures(&self.series) {
            let (w, h) = figure.size();
            let svg_path = dir.join(format!("{}.svg", figure.group));
            let mut svg = String::new();
            draw(
                SVGBackend::with_string(&mut svg, (w, h)).into_drawing_area(),
                &figure,
            )
            .map_err(plot_err)?;
            std::fs::write(&svg_path, svg)?;

            let png_path = dir.join(format!("{}.png", figure.group));
            let mut rgb = vec![255u8; w as usize * h as usize * 3];
            draw(
                BitMapBackend::with_buffer(&mut rgb, (w, h)).into_drawing_area(),
                &figure,
            )
            .map_err(plot_err)?;
            image::RgbImage::from_raw(w, h, rgb)
                .ok_or_else(|| std::io::Error::other("plot buffer has the wrong size"))?
                .save_with_format(&png_path, image::ImageFormat::Png)
                .map_err(|e| std::io::Error::other(format!("{}: {e}", png_path.display())))?;
            written.push(svg_path);
        }
        Ok(written)
    }
}

/// DejaVu Sans (Bitstream Vera licence, see `assets/DejaVuSans-LICENSE.txt`), embedded so the
/// PNG needs no system font.
const FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

/// Registers [`FONT`] as plotters' `sans-serif` (once per process).
fn register_font() -> std::io::Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        plotters::style::register_font("sans-serif", FontStyle::Normal, FONT).is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err(std::io::Error::other(
            "the embedded plot font does not load",
        ))
    }
}

fn plot_err<E: std::error::Error + Send + Sync>(e: DrawingAreaErrorKind<E>) -> std::io::Error {
    std::io::Error::other(format!("drawing a plot: {e:?}"))
}

/// Figure width in pixels (SVG user units and PNG pixels alike).
const WIDTH: u32 = 1200;
/// Height of one row of panels.
const PANEL_HEIGHT: u32 = 340;
/// Height of the figure title band.
const TITLE_HEIGHT: u32 = 40;
/// Panels per row.
const COLUMNS: usize = 2;

/// The tab10 palette.
const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
];
const GREY: RGBColor = RGBColor(100, 100, 100);

/// What a series measures: one panel per quantity (the order here is the panel order).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Quantity {
    Loss,
    Accuracy,
    LearningRate,
    GradNorm,
    Recall,
    Other(String),
}

fn quantity(name: &str) -> Quantity {
    let leaf = name.rsplit('/').next().unwrap_or(name);
    let recall = leaf
        .rsplit_once("_r")
        .is_some_and(|(_, k)| !k.is_empty() && k.bytes().all(|b| b.is_ascii_digit()));
    match leaf {
        "lr" | "learning_rate" => Quantity::LearningRate,
        "grad_norm" => Quantity::GradNorm,
        "mlm" | "itm" | "region" | "itc" | "vqa" | "loss" => Quantity::Loss,
        _ if leaf.ends_with("_loss") => Quantity::Loss,
        _ if leaf.ends_with("accuracy") => Quantity::Accuracy,
        _ if recall => Quantity::Recall,
        _ => Quantity::Other(name.to_string()),
    }
}

/// One line of a panel.
struct Line {
    name: String,
    /// Palette index.
    color: usize,
    /// Finite points (positive ones on a log axis).
    points: Vec<(f64, f64)>,
    /// Centred moving average and its window, once the series is long enough.
    smoothed: Option<(Vec<(f64, f64)>, usize)>,
    /// Marker at every point (sparse series: evaluations, short runs).
    markers: bool,
}

struct Panel {
    title: String,
    y: Axis,
    lines: Vec<Line>,
    /// Values not drawn: NaN / infinite.
    non_finite: usize,
    /// Values not drawn: <= 0 on a log axis.
    non_positive: usize,
}

struct Figure {
    group: String,
    title: String,
    x: Axis,
    panels: Vec<Panel>,
}

impl Figure {
    fn size(&self) -> (u32, u32) {
        let cols = self.panels.len().clamp(1, COLUMNS);
        let rows = self.panels.len().div_ceil(cols).max(1) as u32;
        (WIDTH, TITLE_HEIGHT + rows * PANEL_HEIGHT)
    }
}

/// Named series.
type Named<'a> = Vec<(&'a str, &'a Points)>;

/// Groups the series by prefix and sorts each group's series into panels.
fn figures(series: &BTreeMap<String, Points>) -> Vec<Figure> {
    let mut groups: BTreeMap<&str, BTreeMap<Quantity, Named>> = BTreeMap::new();
    for (name, points) in series {
        let group = name.split('/').next().unwrap_or(name);
        groups
            .entry(group)
            .or_default()
            .entry(quantity(name))
            .or_default()
            .push((name.as_str(), points));
    }
    // The held-out accuracies (`eval/`, `test/`, ...), drawn beside the training ones.
    let held_out: Named = series
        .iter()
        .filter(|(name, _)| !name.starts_with("train/") && quantity(name) == Quantity::Accuracy)
        .map(|(name, points)| (name.as_str(), points))
        .collect();
    let mut out = Vec::new();
    for (group, mut quantities) in groups {
        let beside = if group == "train" { &held_out[..] } else { &[] };
        if let Some(acc) = quantities.get_mut(&Quantity::Accuracy) {
            acc.extend(beside.iter().copied());
        }
        let steps = quantities
            .values()
            .flatten()
            .flat_map(|(_, p)| p.iter())
            .filter(|(_, v)| v.is_finite())
            .map(|(s, _)| *s as f64);
        let (x0, x1) = steps.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), s| {
            (a.min(s), b.max(s))
        });
        let (title, x0, x1) = if x0 > x1 {
            (format!("{group}: no finite values"), 0.0, 1.0)
        } else {
            (format!("{group}: step {x0} to {x1}"), x0, x1)
        };
        let panels = quantities
            .into_iter()
            .map(|(q, lines)| panel(&q, &lines))
            .collect();
        out.push(Figure {
            group: group.to_string(),
            title,
            x: Axis::steps(x0, x1),
            panels,
        });
    }
    out
}

fn panel(q: &Quantity, series: &[(&str, &Points)]) -> Panel {
    let finite: Vec<f64> = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(_, v)| *v))
        .filter(|v| v.is_finite())
        .collect();
    let non_finite = series.iter().map(|(_, p)| p.len()).sum::<usize>() - finite.len();
    // Losses and norms on a log axis; a value <= 0 there (an MLM loss of 0 for a batch without
    // masked tokens) is left out and counted.
    let log = matches!(q, Quantity::Loss | Quantity::GradNorm) && finite.iter().any(|v| *v > 0.0);
    let finite: Vec<f64> = finite.into_iter().filter(|v| !log || *v > 0.0).collect();
    let non_positive =
        series.iter().map(|(_, p)| p.len()).sum::<usize>() - non_finite - finite.len();
    let (lo, hi) = finite
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(*v), b.max(*v))
        });
    let y = if finite.is_empty() {
        Axis::linear(0.0, 1.0)
    } else if log {
        Axis::log(lo, hi)
    } else {
        match q {
            Quantity::Accuracy | Quantity::Recall => Axis::linear(lo.min(0.0), hi.max(1.0)),
            Quantity::LearningRate => Axis::linear(lo.min(0.0), hi),
            _ => Axis::linear(lo, hi),
        }
    };
    let title = match q {
        Quantity::Loss => "loss",
        Quantity::Accuracy => "accuracy",
        Quantity::LearningRate => "learning rate",
        Quantity::GradNorm => "grad norm, before clipping",
        Quantity::Recall => "retrieval recall@k",
        Quantity::Other(name) => name.as_str(),
    };
    let title = if log {
        format!("{title} (log scale)")
    } else {
        title.to_string()
    };
    let lines = series
        .iter()
        .enumerate()
        .map(|(color, (name, points))| {
            let points: Vec<(f64, f64)> = points
                .iter()
                .filter(|(_, v)| v.is_finite() && (!log || *v > 0.0))
                .map(|(s, v)| (*s as f64, *v))
                .collect();
            Line {
                name: name.to_string(),
                color,
                // A schedule is exact: only measured quantities are smoothed.
                smoothed: if *q == Quantity::LearningRate {
                    None
                } else {
                    smooth(&points, log)
                },
                markers: name.starts_with("eval/") || points.len() <= 60,
                points,
            }
        })
        .collect();
    Panel {
        title,
        y,
        lines,
        non_finite,
        non_positive,
    }
}

/// Centred moving average over `2h + 1` points, `h = n / 100` (none for fewer than 100 points:
/// the raw line is then clear enough); averaged in log space on a log axis.
fn smooth(points: &[(f64, f64)], log: bool) -> Option<(Vec<(f64, f64)>, usize)> {
    let h = points.len() / 100;
    if h == 0 {
        return None;
    }
    let t = |v: f64| if log { v.ln() } else { v };
    let mut prefix = Vec::with_capacity(points.len() + 1);
    prefix.push(0.0);
    for (_, v) in points {
        prefix.push(prefix.last().copied().unwrap_or(0.0) + t(*v));
    }
    let smoothed = (0..points.len())
        .map(|i| {
            let (a, b) = (i.saturating_sub(h), (i + h).min(points.len() - 1));
            let mean = (prefix[b + 1] - prefix[a]) / (b + 1 - a) as f64;
            (points[i].0, if log { mean.exp() } else { mean })
        })
        .collect();
    Some((smoothed, 2 * h + 1))
}

/// A linear or log axis with its own tick positions (bold grid + labels) and minor grid lines.
#[derive(Clone, Debug)]
struct Axis {
    lo: f64,
    hi: f64,
    log: bool,
    major: Vec<f64>,
    minor: Vec<f64>,
}

impl Axis {
    /// The step axis: the data range plus 1.5 % either side, integer ticks.
    fn steps(x0: f64, x1: f64) -> Self {
        let (x0, x1) = if x1 > x0 {
            (x0, x1)
        } else {
            (x0 - 1.0, x1 + 1.0)
        };
        let pad = (x1 - x0) * 0.015;
        let major = nice_ticks(x0, x1, 6, 1.0);
        Self {
            lo: x0 - pad,
            hi: x1 + pad,
            log: false,
            major,
            minor: Vec::new(),
        }
    }

    /// `lo ..= hi` plus 4 % either side (a constant series gets a band around it).
    fn linear(lo: f64, hi: f64) -> Self {
        let (lo, hi) = if hi - lo > 1e-12 * hi.abs().max(lo.abs()).max(1e-300) {
            let pad = (hi - lo) * 0.04;
            (lo - pad, hi + pad)
        } else {
            let d = if hi.abs() > 0.0 { hi.abs() * 0.1 } else { 0.5 };
            (lo - d, hi + d)
        };
        let major = nice_ticks(lo, hi, 5, 0.0);
        // Minor grid lines halfway between the ticks.
        let minor = match (major.first(), major.get(1), major.last()) {
            (Some(a), Some(b), Some(last)) => {
                let half = (b - a) / 2.0;
                major
                    .iter()
                    .map(|t| t - half)
                    .chain([last + half])
                    .filter(|t| *t >= lo && *t <= hi)
                    .collect()
            }
            _ => Vec::new(),
        };
        Self {
            lo,
            hi,
            log: false,
            major,
            minor,
        }
    }

    /// Positive `lo ..= hi` on a log axis: decades labelled, 2..9 as minor grid lines (1-2-5 or
    /// every integer multiple labelled when the range spans less than two decades).
    fn log(lo: f64, hi: f64) -> Self {
        let (mut a, mut b) = (lo.log10(), hi.log10());
        if b - a < 0.3 {
            let mid = (a + b) / 2.0;
            (a, b) = (mid - 0.15, mid + 0.15);
        }
        let pad = (b - a) * 0.04;
        let (lo, hi) = (10f64.powf(a - pad), 10f64.powf(b + pad));
        let inside = |v: &f64| *v >= lo * (1.0 - 1e-9) && *v <= hi * (1.0 + 1e-9);
        let multiples = |ms: &[f64]| -> Vec<f64> {
            let (e0, e1) = (lo.log10().floor() as i32, hi.log10().ceil() as i32);
            (e0..=e1)
                .flat_map(|e| ms.iter().map(move |m| m * 10f64.powi(e)))
                .filter(inside)
                .collect()
        };
        let mut decades = multiples(&[1.0]);
        if decades.len() > 7 {
            let stride = decades.len().div_ceil(7);
            decades = decades.into_iter().step_by(stride).collect();
        }
        let major = if decades.len() >= 2 {
            decades
        } else {
            [
                multiples(&[1.0, 2.0, 5.0]),
                multiples(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]),
            ]
            .into_iter()
            .find(|t| t.len() >= 3)
            .unwrap_or_else(|| nice_ticks(lo, hi, 4, 0.0))
        };
        let minor = multiples(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0])
            .into_iter()
            .filter(|v| !major.iter().any(|m| (m / v - 1.0).abs() < 1e-9))
            .collect();
        Self {
            lo,
            hi,
            log: true,
            major,
            minor,
        }
    }

    fn transform(&self, v: f64) -> f64 {
        if self.log { v.log10() } else { v }
    }
}

impl Ranged for Axis {
    type FormatOption = NoDefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        let (a, b) = (self.transform(self.lo), self.transform(self.hi));
        let f = (self.transform(*value) - a) / (b - a);
        limit.0 + (f * f64::from(limit.1 - limit.0)).round() as i32
    }

    fn key_points<H: KeyPointHint>(&self, hint: H) -> Vec<f64> {
        if hint.weight().allow_light_points() {
            self.minor.clone()
        } else {
            self.major.clone()
        }
    }

    fn range(&self) -> Range<f64> {
        self.lo..self.hi
    }
}

impl ValueFormatter<f64> for Axis {
    fn format(value: &f64) -> String {
        tick_label(*value)
    }
}

/// Multiples of a 1-2-2.5-5 step in `lo ..= hi`, about `target` of them; the step is at least
/// `min_step` (1 for integer steps).
fn nice_ticks(lo: f64, hi: f64, target: usize, min_step: f64) -> Vec<f64> {
    let span = hi - lo;
    if span.is_nan() || span <= 0.0 || span.is_infinite() {
        return vec![lo];
    }
    let magnitude = 10f64.powf((span / target as f64).log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|s| span / s <= target as f64 + 0.5)
        .unwrap_or(10.0 * magnitude)
        .max(min_step);
    let (first, last) = ((lo / step).ceil() as i64, (hi / step).floor() as i64);
    (first..=last).map(|k| k as f64 * step).collect()
}

/// `0`, `0.25`, `10`, `5e-4`: at most 4 significant digits, no trailing zeros.
fn tick_label(v: f64) -> String {
    let a = v.abs();
    if a < 1e-12 {
        return "0".into();
    }
    if !(1e-3..1e6).contains(&a) {
        let s = format!("{v:.3e}");
        let (mantissa, exponent) = s.split_once('e').unwrap_or((&s, "0"));
        let mantissa = mantissa.trim_end_matches('0').trim_end_matches('.');
        return format!("{mantissa}e{exponent}");
    }
    // Ticks are round numbers: 4 significant digits hide float noise (0.30000000000000004).
    let digits = (3 - a.log10().floor() as i32).clamp(0, 6) as usize;
    let s = format!("{v:.digits$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

fn font(size: f64, color: &RGBColor) -> TextStyle<'static> {
    FontDesc::new(FontFamily::SansSerif, size, FontStyle::Normal).color(color)
}

fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    figure: &Figure,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    root.fill(&WHITE)?;
    let (title, body) = root.split_vertically(TITLE_HEIGHT);
    title.draw(&Text::new(
        figure.title.as_str(),
        (16, TITLE_HEIGHT as i32 / 2),
        font(18.0, &BLACK).pos(Pos::new(HPos::Left, VPos::Center)),
    ))?;
    let cols = figure.panels.len().clamp(1, COLUMNS);
    let rows = figure.panels.len().div_ceil(cols).max(1);
    let cells = body.split_evenly((rows, cols));
    // One legend width for the figure, so the panels' plotting areas line up.
    let longest = figure
        .panels
        .iter()
        .flat_map(|p| &p.lines)
        .map(|l| l.name.len())
        .max()
        .unwrap_or(0);
    let legend_width = (longest as u32 * 7 + 44).clamp(130, 260);
    for (cell, panel) in cells.iter().zip(&figure.panels) {
        draw_panel(&root, cell, panel, &figure.x, legend_width)?;
    }
    root.present()
}

/// One panel in `cell` of `root`: caption, grid, axes with ticks and labels, the lines, and
/// the legend to the right of the plotting area.
fn draw_panel<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    cell: &DrawingArea<DB, Shift>,
    panel: &Panel,
    x: &Axis,
    legend_width: u32,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let (w, h) = cell.dim_in_pixel();
    let (plot, legend) = cell.split_horizontally(w.saturating_sub(legend_width));

    let mut chart = ChartBuilder::on(&plot)
        .caption(panel.title.as_str(), font(15.0, &BLACK))
        .margin_top(4)
        .margin_left(10)
        .margin_right(6)
        .margin_bottom(6)
        .x_label_area_size(40)
        .y_label_area_size(58)
        .build_cartesian_2d(x.clone(), panel.y.clone())?;
    // plotters draws the grid, the tick labels and the axis title; its axis lines and tick
    // marks are paths (SVG polylines), so they are made invisible here and drawn below as
    // rectangles: every polyline in the SVG is then a data curve.
    chart
        .configure_mesh()
        .bold_line_style(BLACK.mix(0.16).stroke_width(1))
        .light_line_style(BLACK.mix(0.06).stroke_width(1))
        .axis_style(TRANSPARENT.stroke_width(1))
        .label_style(font(12.0, &BLACK))
        .axis_desc_style(font(12.0, &GREY))
        .x_desc("step")
        .draw()?;
    let (px, py) = chart.plotting_area().get_pixel_range();
    let axis = GREY.filled();
    root.draw(&Rectangle::new(
        [(px.start - 1, py.start), (px.start, py.end + 1)],
        axis,
    ))?;
    root.draw(&Rectangle::new(
        [(px.start - 1, py.end), (px.end, py.end + 1)],
        axis,
    ))?;
    for tick in &x.major {
        let (cx, _) = chart.backend_coord(&(*tick, panel.y.lo));
        root.draw(&Rectangle::new(
            [(cx, py.end + 1), (cx + 1, py.end + 6)],
            axis,
        ))?;
    }
    for tick in &panel.y.major {
        let (_, cy) = chart.backend_coord(&(x.lo, *tick));
        root.draw(&Rectangle::new(
            [(px.start - 6, cy), (px.start - 1, cy + 1)],
            axis,
        ))?;
    }

    for line in &panel.lines {
        let color = PALETTE[line.color % PALETTE.len()];
        match &line.smoothed {
            Some((smoothed, _)) => {
                chart.draw_series(LineSeries::new(
                    line.points.iter().copied(),
                    color.mix(0.3).stroke_width(1),
                ))?;
                chart.draw_series(LineSeries::new(
                    smoothed.iter().copied(),
                    color.stroke_width(2),
                ))?;
            }
            None => {
                chart.draw_series(LineSeries::new(
                    line.points.iter().copied(),
                    color.stroke_width(2),
                ))?;
            }
        }
        if line.markers {
            chart.draw_series(
                line.points
                    .iter()
                    .map(|p| Circle::new(*p, 3, color.filled())),
            )?;
        }
    }
    if panel.lines.iter().all(|l| l.points.is_empty()) {
        let (pw, ph) = plot.dim_in_pixel();
        plot.draw(&Text::new(
            "no finite values",
            (pw as i32 / 2, ph as i32 / 2),
            font(14.0, &GREY).pos(Pos::new(HPos::Center, VPos::Center)),
        ))?;
    }

    // Legend beside the plot, top-aligned with the plotting area.
    let left = Pos::new(HPos::Left, VPos::Center);
    let mut y = 40;
    for line in &panel.lines {
        let color = PALETTE[line.color % PALETTE.len()];
        legend.draw(&Rectangle::new([(4, y - 2), (26, y + 2)], color.filled()))?;
        if line.markers {
            legend.draw(&Circle::new((15, y), 3, color.filled()))?;
        }
        legend.draw(&Text::new(
            line.name.as_str(),
            (32, y),
            font(12.0, &BLACK).pos(left),
        ))?;
        y += 20;
    }
    let mut notes = Vec::new();
    if let Some(window) = panel
        .lines
        .iter()
        .filter_map(|l| l.smoothed.as_ref().map(|(_, w)| *w))
        .max()
    {
        notes.push("faint: raw values".to_string());
        notes.push(format!("bold: {window}-point mean"));
    }
    if panel.non_finite > 0 {
        notes.push(format!("{} non-finite not drawn", panel.non_finite));
    }
    if panel.non_positive > 0 {
        notes.push(format!("{} non-positive not drawn", panel.non_positive));
    }
    y += 6;
    for note in notes {
        if y + 8 > h as i32 {
            break;
        }
        legend.draw(&Text::new(note, (6, y), font(11.0, &GREY).pos(left)))?;
        y += 16;
    }
    Ok(())
}
