//! BUTD TSV import/export on a committed sample in the exact reference layout.

use std::path::PathBuf;

use tuwen_regions::StoreDtype;
use tuwen_regions::store::{StoreReader, StoreWriter};
use tuwen_regions::tsv::{self, OnMalformed, TsvError};

fn sample() -> PathBuf {
    tuwen_testkit::package_path("tests/fixtures/butd_sample.tsv")
}

#[test]
fn malformed_line_fails_with_file_and_line_or_is_skipped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let mut writer = StoreWriter::open(dir.path(), StoreDtype::F32, 16).unwrap();
    let err = tsv::import(&sample(), &mut writer, OnMalformed::Fail).unwrap_err();
    let TsvError::Malformed { line, .. } = &err else {
        panic!("{err}")
    };
    assert_eq!(*line, 3);
    assert!(
        err.to_string().contains("butd_sample.tsv:3")
            && err.to_string().contains("10 tab-separated"),
        "{err}"
    );

    let dir = tempfile::tempdir().unwrap();
    let mut writer = StoreWriter::open(dir.path(), StoreDtype::F32, 16).unwrap();
    let summary = tsv::import(&sample(), &mut writer, OnMalformed::Skip).unwrap();
    writer.finish().unwrap();
    assert_eq!((summary.imported, summary.skipped), (3, 1));
    let store = StoreReader::open(dir.path()).unwrap();
    let first = store.get("COCO_val2014_000000000042").unwrap();
    assert_eq!(
        (first.len(), first.dim, first.image_size),
        (5, 16, [640, 480])
    );
    for b in &first.boxes {
        assert!(
            b.x1 <= b.y1 && b.y1 <= b.x2 && b.x2 <= b.y2,
            "sorted as generated: {b:?}"
        );
    }
}

#[test]
fn export_then_import_round_trips_features_boxes_and_scores() {
    let a = tempfile::tempdir().unwrap();
    let mut writer = StoreWriter::open(a.path(), StoreDtype::F32, 2).unwrap();
    tsv::import(&sample(), &mut writer, OnMalformed::Skip).unwrap();
    writer.finish().unwrap();
    let first = StoreReader::open(a.path()).unwrap();
    let exported = a.path().join("out.tsv");
    assert_eq!(tsv::export(&first, &exported).unwrap(), 3);

    let b = tempfile::tempdir().unwrap();
    let mut writer = StoreWriter::open(b.path(), StoreDtype::F32, 2).unwrap();
    let summary = tsv::import(&exported, &mut writer, OnMalformed::Fail).unwrap();
    writer.finish().unwrap();
    assert_eq!(summary.imported, 3);
    let second = StoreReader::open(b.path()).unwrap();
    for entry in first.entries() {
        assert_eq!(
            first.get(&entry.id).unwrap(),
            second.get(&entry.id).unwrap(),
            "{}",
            entry.id
        );
    }
}

/// The sample's first (valid) line with field `index` replaced by `value`.
fn first_line_with(index: usize, value: &str) -> String {
    let text = std::fs::read_to_string(sample()).unwrap();
    let mut fields: Vec<String> = text
        .lines()
        .next()
        .unwrap()
        .split('\t')
        .map(String::from)
        .collect();
    fields[index] = value.to_string();
    fields.join("\t")
}

#[test]
fn absurd_counts_and_sizes_from_the_file_are_errors_not_overflows() {
    for (field, value) in [
        (7, "18446744073709551615"),
        (7, "4611686018427387904"),
        (1, "4294967296"),
        (2, "18446744073709551615"),
    ] {
        let err = tsv::parse_line(&first_line_with(field, value)).unwrap_err();
        assert!(!err.is_empty(), "field {field} = {value}");
    }
}

#[test]
fn a_line_the_store_cannot_take_is_a_malformed_line_of_the_file() {
    // Second image with another feature width: base64 of 5 boxes x 3 floats.
    let narrow = base64_f32(&[0.5; 15]);
    let text = std::fs::read_to_string(sample()).unwrap();
    let first = text.lines().next().unwrap();
    let other = first_line_with(9, &narrow).replacen("COCO_val2014_000000000042", "other", 1);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mixed.tsv");
    std::fs::write(&path, format!("{first}\n{other}\n")).unwrap();

    let store = dir.path().join("strict");
    let mut writer = StoreWriter::open(&store, StoreDtype::F32, 4).unwrap();
    let err = tsv::import(&path, &mut writer, OnMalformed::Fail).unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, TsvError::Malformed { line: 2, .. })
            && text.contains("mixed.tsv:2")
            && text.contains("dim 3"),
        "{text}"
    );

    let store = dir.path().join("lenient");
    let mut writer = StoreWriter::open(&store, StoreDtype::F32, 4).unwrap();
    let summary = tsv::import(&path, &mut writer, OnMalformed::Skip).unwrap();
    assert_eq!((summary.imported, summary.skipped), (1, 1));
}

fn base64_f32(values: &[f32]) -> String {
    use base64::Engine;
    let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(raw)
}
