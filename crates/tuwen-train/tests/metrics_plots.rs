//! Plots drawn from `metrics.jsonl`: one panel per quantity, log axes for losses, PNG + SVG.

use std::collections::HashMap;
use std::path::Path;

use tuwen_train::metrics::MetricsLog;

/// A text element of the SVG: its content, anchor and position.
#[derive(Debug)]
struct Label {
    text: String,
    anchor: String,
    x: f64,
    y: f64,
}

/// Parses `path` as XML (fails on anything not well-formed) and returns the root's attributes and
/// every text element.
fn parse_svg(path: &Path) -> (HashMap<String, String>, Vec<Label>) {
    use xml::reader::{EventReader, XmlEvent};
    let file = std::fs::File::open(path).unwrap();
    let mut root = None;
    let mut labels = Vec::new();
    let mut open: Option<Label> = None;
    for event in EventReader::new(std::io::BufReader::new(file)) {
        match event.unwrap_or_else(|e| panic!("{} is not well-formed: {e}", path.display())) {
            XmlEvent::StartElement {
                name, attributes, ..
            } => {
                let attrs: HashMap<String, String> = attributes
                    .into_iter()
                    .map(|a| (a.name.local_name, a.value))
                    .collect();
                if root.is_none() {
                    assert_eq!(name.local_name, "svg");
                    root = Some(attrs.clone());
                }
                if name.local_name == "text" {
                    let num = |k: &str| attrs[k].parse::<f64>().unwrap();
                    open = Some(Label {
                        text: String::new(),
                        anchor: attrs.get("text-anchor").cloned().unwrap_or_default(),
                        x: num("x"),
                        y: num("y"),
                    });
                }
            }
            XmlEvent::Characters(s) => {
                if let Some(label) = open.as_mut() {
                    label.text.push_str(s.trim());
                }
            }
            XmlEvent::EndElement { name } if name.local_name == "text" => {
                labels.extend(open.take());
            }
            _ => {}
        }
    }
    (root.expect("an <svg> root"), labels)
}

fn find<'a>(labels: &'a [Label], text: &str) -> Vec<&'a Label> {
    labels.iter().filter(|l| l.text == text).collect()
}

/// A run's worth of metrics, written as `metrics.jsonl` lines: losses falling from 10 to 0.1
/// with noise, grad norm from ~192, a warmup-then-decay learning rate peaking at 5e-4, train
/// accuracy every step and held-out metrics every 100 steps.
fn synthetic_jsonl(steps: u64) -> String {
    let mut out = String::new();
    let mut noise = 0x2545_f491_4f6c_dd1du64;
    let mut jitter = || {
        noise ^= noise << 13;
        noise ^= noise >> 7;
        noise ^= noise << 17;
        1.0 + 0.2 * ((noise % 1000) as f64 / 1000.0 - 0.5)
    };
    for step in 0..steps {
        let f = step as f64 / steps as f64;
        let lr = if step < 100 {
            5e-4 * step as f64 / 100.0
        } else {
            5e-4 * (1.0 - f)
        };
        let line = serde_json::json!({
            "step": step,
            "train/mlm": 10.0 * (0.1f64).powf(f) * jitter(),
            "train/itm": 0.7 * (0.12f64 / 0.7).powf(f) * jitter(),
            "train/itm_accuracy": (0.5 + 0.45 * f) * jitter().min(1.0),
            "train/grad_norm": 192.0 * (1.0f64 / 192.0).powf(f) * jitter(),
            "train/lr": lr,
        });
        out.push_str(&format!("{line}\n"));
        if (step + 1) % 100 == 0 {
            let eval = serde_json::json!({
                "step": step,
                "eval/itm_accuracy": 0.5 + 0.4 * f,
                "eval/mlm_accuracy": 0.2 + 0.6 * f,
                "eval/i2t_r1": 0.1 + 0.5 * f,
                "eval/t2i_r1": 0.1 + 0.4 * f,
            });
            out.push_str(&format!("{eval}\n"));
        }
    }
    out
}

#[test]
fn plots_have_one_panel_per_quantity_with_ticks_and_a_log_loss_axis_in_svg_and_png() {
    let dir = tempfile::tempdir().unwrap();
    let jsonl = synthetic_jsonl(1000);
    let lines = jsonl.lines().count();
    std::fs::write(dir.path().join("metrics.jsonl"), &jsonl).unwrap();
    let log = MetricsLog::resume(dir.path(), lines).unwrap();
    let written = log.plot(dir.path()).unwrap();
    assert_eq!(
        written,
        vec![dir.path().join("eval.svg"), dir.path().join("train.svg")]
    );

    for group in ["train", "eval"] {
        let svg = dir.path().join(format!("{group}.svg"));
        let png = dir.path().join(format!("{group}.png"));
        assert!(svg.is_file() && png.is_file(), "{group} plots missing");
        let (root, _) = parse_svg(&svg);
        let image = image::open(&png).unwrap().to_rgb8();
        assert_eq!(
            (image.width().to_string(), image.height().to_string()),
            (root["width"].clone(), root["height"].clone()),
            "{group}.png has the SVG's size"
        );
        assert_eq!(image.width(), 1200);
        // Something is drawn, in colour: curves, not just a white page with axes.
        let coloured = image
            .pixels()
            .filter(|p| {
                let [r, g, b] = p.0;
                r.max(g).max(b) - r.min(g).min(b) > 60
            })
            .count();
        assert!(
            coloured > 2000,
            "{group}.png has {coloured} coloured pixels"
        );
    }

    let (_, labels) = parse_svg(&dir.path().join("train.svg"));
    let texts: Vec<&str> = labels.iter().map(|l| l.text.as_str()).collect();
    // One panel (one caption) per quantity.
    for title in [
        "loss (log scale)",
        "accuracy",
        "learning rate",
        "grad norm, before clipping (log scale)",
    ] {
        assert_eq!(
            find(&labels, title).len(),
            1,
            "panel {title:?} in {texts:?}"
        );
    }
    // Legends name every series, the held-out accuracies included; a smoothed line says so.
    for name in [
        "train/mlm",
        "train/itm",
        "train/itm_accuracy",
        "eval/itm_accuracy",
        "eval/mlm_accuracy",
        "train/grad_norm",
        "train/lr",
    ] {
        assert_eq!(find(&labels, name).len(), 1, "legend entry {name}");
    }
    assert!(texts.contains(&"bold: 21-point mean"), "{texts:?}");
    // Every polyline is a curve: raw + 21-point mean for the two losses, train accuracy and
    // grad norm; the two held-out accuracies and the (exact) learning rate once each.
    let svg = std::fs::read_to_string(dir.path().join("train.svg")).unwrap();
    assert_eq!(svg.matches("<polyline").count(), 2 * 4 + 2 + 1);
    assert!(texts.contains(&"train: step 0 to 999"), "{texts:?}");

    // The loss panel (top left: y labels are right-aligned, below its caption, above the
    // learning-rate caption, left of its caption's centre) has y tick labels 0.1, 1, 10 one decade apart: a log axis.
    let loss = find(&labels, "loss (log scale)")[0];
    let below = find(&labels, "learning rate")[0].y;
    let y_ticks: HashMap<&str, f64> = labels
        .iter()
        .filter(|l| l.anchor == "end" && l.y > loss.y && l.y < below && l.x < loss.x)
        .map(|l| (l.text.as_str(), l.y))
        .collect();
    for tick in ["0.1", "1", "10"] {
        assert!(
            y_ticks.contains_key(tick),
            "loss tick {tick} in {y_ticks:?}"
        );
    }
    let decade = y_ticks["0.1"] - y_ticks["1"];
    assert!(decade > 40.0, "decades are far apart: {y_ticks:?}");
    assert!(
        (decade - (y_ticks["1"] - y_ticks["10"])).abs() <= 2.0,
        "equal spacing per decade: {y_ticks:?}"
    );
    // The learning rate has its own axis: its peak is a tick label, not a flat line at 0.
    assert!(texts.contains(&"5e-4"), "{texts:?}");
    // Grad norm: log ticks up to 100.
    assert!(texts.contains(&"100"), "{texts:?}");
    // Step ticks along the x axes.
    for tick in ["0", "200", "400", "600", "800"] {
        assert!(texts.contains(&tick), "step tick {tick}");
    }

    let (_, labels) = parse_svg(&dir.path().join("eval.svg"));
    for title in ["accuracy", "retrieval recall@k"] {
        assert_eq!(find(&labels, title).len(), 1, "eval panel {title:?}");
    }
    for tick in ["0", "0.2", "0.4", "0.6", "0.8", "1"] {
        assert!(!find(&labels, tick).is_empty(), "accuracy tick {tick}");
    }
}

#[test]
fn odd_series_still_plot_nan_only_single_point_constant_zero_negative() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = MetricsLog::open(dir.path()).unwrap();
    log.log(
        3,
        &[
            ("train/mlm", 2.0),
            ("train/itm", f64::NAN),
            ("train/vqa", 0.0),
            ("train/lr", 0.0),
            ("train/odd", -1.5),
        ],
    )
    .unwrap();
    log.log(
        4,
        &[
            ("train/mlm", 2.0),
            ("train/odd", 3.0),
            ("eval/nan", f64::NAN),
        ],
    )
    .unwrap();
    let written = log.plot(dir.path()).unwrap();
    assert_eq!(written.len(), 2);
    let (_, labels) = parse_svg(&dir.path().join("train.svg"));
    let texts: Vec<&str> = labels.iter().map(|l| l.text.as_str()).collect();
    // A constant positive loss still gets a log axis with labelled ticks; a series with
    // negative values gets a linear panel of its own.
    assert!(
        texts.contains(&"loss (log scale)") && texts.contains(&"train/odd"),
        "{texts:?}"
    );
    assert!(texts.contains(&"1 non-finite not drawn"), "{texts:?}");
    // A zero loss (no masked token in the batch) cannot sit on the log axis: counted instead.
    assert!(texts.contains(&"1 non-positive not drawn"), "{texts:?}");
    let (_, labels) = parse_svg(&dir.path().join("eval.svg"));
    assert!(labels.iter().any(|l| l.text == "no finite values"));
    assert!(image::open(dir.path().join("eval.png")).is_ok());
}
