//! The feature store: round trips, precision, resuming, errors.

use tuwen_regions::{BoxXyxy, RegionFeatures, StoreDtype, StoreError, StoreReader, StoreWriter};

fn sample(n: usize, seed: f32) -> RegionFeatures {
    let dim = 6;
    let classes = 3;
    RegionFeatures {
        image_size: [640, 480],
        boxes: (0..n)
            .map(|i| BoxXyxy::new(i as f32, 2.0, 10.0 + i as f32, 20.5))
            .collect(),
        features: (0..n * dim).map(|i| seed + i as f32 * 0.25).collect(),
        dim,
        global: (0..dim).map(|i| seed - i as f32).collect(),
        class_probs: (0..n * classes)
            .map(|i| (i % classes) as f32 / 3.0)
            .collect(),
        classes,
        scores: (0..n).map(|i| 0.5 + i as f32 / 100.0).collect(),
    }
}

#[test]
fn f32_store_round_trips_exactly_across_shards() {
    let dir = tempfile::tempdir().unwrap();
    let mut writer = StoreWriter::open(dir.path(), StoreDtype::F32, 2).unwrap();
    for i in 0..5 {
        writer
            .add(&format!("img{i}"), sample(i + 1, i as f32))
            .unwrap();
    }
    writer.finish().unwrap();
    let shards = std::fs::read_dir(dir.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("shard-")
        })
        .count();
    assert_eq!(shards, 3, "2 + 2 + 1 images");
    let reader = StoreReader::open(dir.path()).unwrap();
    assert_eq!(reader.len(), 5);
    for i in 0..5 {
        assert_eq!(
            reader.get(&format!("img{i}")).unwrap(),
            sample(i + 1, i as f32)
        );
    }
    assert!(matches!(reader.get("nope"), Err(StoreError::Missing(_))));
}

#[test]
fn f16_store_keeps_half_precision() {
    let dir = tempfile::tempdir().unwrap();
    let mut writer = StoreWriter::open(dir.path(), StoreDtype::F16, 8).unwrap();
    writer.add("a", sample(3, 1.1)).unwrap();
    writer.finish().unwrap();
    let got = StoreReader::open(dir.path()).unwrap().get("a").unwrap();
    let want = sample(3, 1.1);
    for (g, w) in got.features.iter().zip(&want.features) {
        assert!((g - w).abs() <= w.abs() * 1e-3, "{g} vs {w}");
    }
    assert_eq!(got.boxes, want.boxes, "boxes stay f32");
}

#[test]
fn a_reopened_writer_resumes_and_refuses_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let mut writer = StoreWriter::open(dir.path(), StoreDtype::F32, 1).unwrap();
    writer.add("a", sample(1, 0.0)).unwrap();
    writer.finish().unwrap();
    let mut writer = StoreWriter::open(dir.path(), StoreDtype::F32, 1).unwrap();
    assert!(writer.contains("a"));
    assert!(matches!(
        writer.add("a", sample(1, 0.0)),
        Err(StoreError::Mismatch { .. })
    ));
    writer.add("b", sample(2, 1.0)).unwrap();
    writer.finish().unwrap();
    assert_eq!(StoreReader::open(dir.path()).unwrap().len(), 2);
    let err = StoreWriter::open(dir.path(), StoreDtype::F16, 1).unwrap_err();
    assert!(err.to_string().contains("meta.json"), "{err}");
}

#[test]
fn inconsistent_features_and_broken_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let mut writer = StoreWriter::open(dir.path(), StoreDtype::F32, 4).unwrap();
    writer.add("a", sample(1, 0.0)).unwrap();
    let mut wrong = sample(1, 0.0);
    wrong.dim = 5;
    wrong.features.pop();
    wrong.global.pop();
    assert!(
        writer
            .add("b", wrong)
            .unwrap_err()
            .to_string()
            .contains("dim 5")
    );
    writer.finish().unwrap();

    let index = dir.path().join("index.jsonl");
    std::fs::write(&index, "{\"id\": \"a\", truncated\n").unwrap();
    let err = StoreReader::open(dir.path()).unwrap_err();
    assert!(
        err.to_string().contains("index.jsonl") && err.to_string().contains("line 1"),
        "{err}"
    );
    let empty = tempfile::tempdir().unwrap();
    assert!(
        StoreReader::open(empty.path())
            .unwrap_err()
            .to_string()
            .contains("meta.json")
    );
}
