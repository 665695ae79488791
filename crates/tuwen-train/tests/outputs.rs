//! Metrics log + plots, and retrieval evaluation.

use tuwen_train::metrics::MetricsLog;
use tuwen_train::retrieval::evaluate;

#[test]
fn metrics_are_jsonl_and_every_prefix_gets_a_plot() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = MetricsLog::open(dir.path()).unwrap();
    for step in 0..5u64 {
        log.log(
            step,
            &[("train/mlm", 3.0 - step as f64 * 0.5), ("train/itm", 0.7)],
        )
        .unwrap();
    }
    log.log(4, &[("eval/itm_accuracy", 0.93), ("eval/nan", f64::NAN)])
        .unwrap();
    let text = std::fs::read_to_string(log.path()).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 6);
    assert_eq!(lines[2]["train/mlm"], 2.0);
    assert!(
        lines[5]["eval/nan"].is_null(),
        "NaN is written as null, keeping the file valid JSON"
    );
    let plots = log.plot(dir.path()).unwrap();
    let names: Vec<String> = plots
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["eval.svg", "train.svg"]);
    let svg = std::fs::read_to_string(dir.path().join("train.svg")).unwrap();
    assert!(
        svg.starts_with("<svg")
            && svg.matches("<polyline").count() == 2
            && svg.contains("train/mlm")
    );
}

#[test]
fn retrieval_reranks_only_the_top_k_and_computes_recall() {
    // 4 images, 8 texts (two per image). ITC puts the right texts close but not first for image 3;
    // ITM (an oracle here) fixes the order within the top-k.
    let text_image = [0, 0, 1, 1, 2, 2, 3, 3];
    let mut sim = vec![0.0f32; 4 * 8];
    for img in 0..4 {
        for t in 0..8 {
            sim[img * 8 + t] = if text_image[t] == img {
                0.8
            } else {
                0.1 * ((img + t) % 5) as f32
            };
        }
    }
    sim[3 * 8] = 0.95; // image 3's best ITC text is wrong
    let mut calls = 0;
    let recalls = evaluate(&sim, 4, 8, &text_image, 3, |img, texts| {
        calls += texts.len();
        texts
            .iter()
            .map(|&t| if text_image[t] == img { 1.0 } else { 0.0 })
            .collect()
    });
    assert_eq!(
        recalls.image_to_text[0], 1.0,
        "ITM re-ranking recovers image 3"
    );
    assert_eq!(recalls.text_to_image, [1.0, 1.0, 1.0]);
    assert!(
        calls <= 4 * 3 + 8 * 3,
        "only top-k candidates are scored ({calls})"
    );
    // Without re-ranking power (constant ITM), ITC's mistake stays.
    let flat = evaluate(&sim, 4, 8, &text_image, 3, |_, texts| {
        vec![0.0; texts.len()]
    });
    assert!(flat.image_to_text[0] < 1.0);
}

#[test]
fn a_resumed_log_drops_the_lines_after_the_checkpoint_and_keeps_the_earlier_series() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = MetricsLog::open(dir.path()).unwrap();
    for step in 0..5u64 {
        log.log(step, &[("train/mlm", step as f64)]).unwrap();
    }
    // A checkpoint was written after 3 lines; the run died after 5.
    drop(log);
    let mut log = MetricsLog::resume(dir.path(), 3).unwrap();
    assert_eq!(log.lines(), 3);
    log.log(3, &[("train/mlm", 30.0)]).unwrap();
    let text = std::fs::read_to_string(log.path()).unwrap();
    let steps: Vec<(u64, f64)> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|v| {
            (
                v["step"].as_u64().unwrap(),
                v["train/mlm"].as_f64().unwrap(),
            )
        })
        .collect();
    assert_eq!(steps, vec![(0, 0.0), (1, 1.0), (2, 2.0), (3, 30.0)]);
    log.plot(dir.path()).unwrap();
    let svg = std::fs::read_to_string(dir.path().join("train.svg")).unwrap();
    assert!(svg.contains("step 0"), "the plot covers the reloaded steps");

    // A log shorter than the checkpoint says is an error naming the file.
    let err = MetricsLog::resume(dir.path(), 10).unwrap_err().to_string();
    assert!(
        err.contains("metrics.jsonl") && err.contains("expects at least 10"),
        "{err}"
    );
    // So is a corrupt line.
    std::fs::write(dir.path().join("metrics.jsonl"), "{\"step\":0}\nnot json\n").unwrap();
    let err = MetricsLog::resume(dir.path(), 2).unwrap_err().to_string();
    assert!(err.contains("metrics.jsonl line 2"), "{err}");
}
