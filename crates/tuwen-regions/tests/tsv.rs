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
