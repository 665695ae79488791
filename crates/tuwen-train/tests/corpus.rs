//! Training on real-format data: a COCO captions file paired with a feature store, the way
//! `tuwen extract-regions` writes it. The store here holds synthetic features whose regions
//! reflect the caption's words, so there is something to learn; what is checked is the path:
//! matching captions to stored images, held-out images, MRC against the stored classes,
//! retrieval, and exact resume.

use std::path::Path;

use tuwen_regions::{BoxXyxy, RegionFeatures, StoreDtype, StoreWriter};
use tuwen_testkit::flex;
use tuwen_train::config::TrainConfig;
use tuwen_train::pretrain::{Event, run};

const COLORS: [&str; 4] = ["red", "green", "blue", "yellow"];
const THINGS: [&str; 3] = ["dog", "car", "kite"];
const DIM: usize = 16;
const CLASSES: usize = 12;

/// 24 images `COCO_val2014_0000000000NN.jpg`, two captions each; features of each box encode its
/// (colour, thing) one-hot with noise; class distributions peak at that class.
fn write_corpus(dir: &Path) {
    let mut writer = StoreWriter::open(dir.join("store"), StoreDtype::F32, 8).unwrap();
    let mut images = Vec::new();
    let mut annotations = Vec::new();
    for i in 0..24usize {
        let (c, t) = (i % COLORS.len(), (i / COLORS.len()) % THINGS.len());
        let file = format!("COCO_val2014_{i:012}.jpg");
        images.push(serde_json::json!({"id": i, "file_name": file}));
        for (k, caption) in [
            format!("A {} {} in the park.", COLORS[c], THINGS[t]),
            format!("There is a {} {} next to a tree.", COLORS[c], THINGS[t]),
        ]
        .into_iter()
        .enumerate()
        {
            annotations
                .push(serde_json::json!({"id": i * 10 + k, "image_id": i, "caption": caption}));
        }
        let boxes = vec![
            BoxXyxy::new(10.0, 10.0, 200.0, 150.0),
            BoxXyxy::new(150.0, 40.0, 300.0, 220.0),
        ];
        let class = c * THINGS.len() + t;
        let mut features = vec![0.0f32; boxes.len() * DIM];
        let mut class_probs = vec![0.01f32; boxes.len() * CLASSES];
        for b in 0..boxes.len() {
            features[b * DIM + class] = 1.0;
            features[b * DIM + 12 + b] = 0.5 + 0.01 * i as f32;
            class_probs[b * CLASSES + class] = 0.89;
        }
        let global = (0..DIM)
            .map(|d| (features[d] + features[DIM + d]) / 2.0)
            .collect();
        let id = format!("COCO_val2014_{i:012}");
        writer
            .add(
                &id,
                RegionFeatures {
                    image_size: [320, 240],
                    boxes,
                    features,
                    dim: DIM,
                    global,
                    class_probs,
                    classes: CLASSES,
                    scores: vec![0.89, 0.89],
                },
            )
            .unwrap();
    }
    writer.finish().unwrap();
    // An image without features: its captions are dropped and counted.
    images.push(serde_json::json!({"id": 99, "file_name": "COCO_val2014_000000000099.jpg"}));
    annotations.push(serde_json::json!({"id": 990, "image_id": 99, "caption": "A lost cat."}));
    let json = serde_json::json!({"images": images, "annotations": annotations});
    std::fs::write(dir.join("captions.json"), json.to_string()).unwrap();
}

fn config(dir: &Path) -> TrainConfig {
    TrainConfig::from_toml(
        &format!(
            r#"
            [run]
            steps = 12
            batch_size = 8
            log_every = 1
            [model]
            architecture = "vilbert"
            hidden_size = 32
            layers = 2
            heads = 2
            v_hidden_size = 32
            v_layers = 2
            co_layers = 1
            itc_dim = 16
            [data]
            source = "store"
            captions = "{}"
            captions_format = "coco"
            store = "{}"
            held_out_images = 6
            region_mask_prob = 0.3
            [eval]
            every = 6
            scenes = 6
            retrieval_images = 6
            retrieval_top_k = 3
            "#,
            dir.join("captions.json").display(),
            dir.join("store").display()
        ),
        "store run",
    )
    .unwrap()
}

#[test]
fn a_coco_caption_file_with_a_feature_store_trains_evaluates_and_resumes() {
    let data = tempfile::tempdir().unwrap();
    write_corpus(data.path());
    let cfg = config(data.path());

    let a = tempfile::tempdir().unwrap();
    let mut notes = Vec::new();
    let summary = run(&cfg, a.path(), &[flex()], None, |e| {
        if let Event::Note(n) = e {
            notes.push(n)
        }
    })
    .unwrap();
    assert_eq!(summary.steps, 12);
    assert!(
        notes
            .iter()
            .any(|n| n.contains("18 training images, 6 held out; 1 captions without features")),
        "{notes:?}"
    );
    // The corpus vocabulary holds its words.
    let vocab = std::fs::read_to_string(a.path().join("vocab.txt")).unwrap();
    for word in ["kite", "park", "yellow"] {
        assert!(vocab.lines().any(|l| l == word), "{word} missing");
    }
    let r = summary.eval.retrieval;
    assert!(
        r.image_to_text[2] > 0.0 && r.text_to_image[2] > 0.0,
        "{r:?}"
    );
    let lines = std::fs::read_to_string(a.path().join("metrics.jsonl")).unwrap();
    assert!(lines.contains("train/region") && lines.contains("eval/region_accuracy"));

    // Interrupted at step 6 and resumed: the same log, bit for bit.
    let b = tempfile::tempdir().unwrap();
    run(&cfg, b.path(), &[flex()], Some(6), |_| {}).unwrap();
    run(&cfg, b.path(), &[flex()], None, |_| {}).unwrap();
    assert_eq!(
        lines,
        std::fs::read_to_string(b.path().join("metrics.jsonl")).unwrap()
    );
}

#[test]
fn a_store_run_names_missing_files_and_impossible_splits() {
    let data = tempfile::tempdir().unwrap();
    write_corpus(data.path());
    let mut cfg = config(data.path());
    cfg.data.store = Some("/nonexistent/store".into());
    let dir = tempfile::tempdir().unwrap();
    let err = run(&cfg, dir.path(), &[flex()], None, |_| {}).unwrap_err();
    assert!(err.contains("/nonexistent/store"), "{err}");

    let mut cfg = config(data.path());
    cfg.data.held_out_images = 24;
    let dir = tempfile::tempdir().unwrap();
    let err = run(&cfg, dir.path(), &[flex()], None, |_| {}).unwrap_err();
    assert!(err.contains("none would be left to train on"), "{err}");

    let mut cfg = config(data.path());
    cfg.data.captions = Some(data.path().join("missing.json").display().to_string());
    let dir = tempfile::tempdir().unwrap();
    let err = run(&cfg, dir.path(), &[flex()], None, |_| {}).unwrap_err();
    assert!(err.contains("missing.json"), "{err}");
}
