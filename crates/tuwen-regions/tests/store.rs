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

fn index_path(dir: &std::path::Path) -> std::path::PathBuf {
    dir.join("index.jsonl")
}

fn append(path: &std::path::Path, bytes: &str) {
    use std::io::Write;
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .unwrap()
        .write_all(bytes.as_bytes())
        .unwrap();
}

#[test]
fn a_torn_last_index_line_is_recovered_and_truncated_by_a_resumed_writer() {
    let dir = tempfile::tempdir().unwrap();
    let mut writer = StoreWriter::open(dir.path(), StoreDtype::F32, 1).unwrap();
    writer.add("a", sample(1, 0.0)).unwrap();
    writer.add("b", sample(2, 1.0)).unwrap();
    writer.finish().unwrap();
    let index = index_path(dir.path());
    let complete = std::fs::read_to_string(&index).unwrap();
    // A crash in the middle of an append: partial JSON, no newline.
    let torn = "{\"id\":\"c\",\"shard\":\"shard-000";
    append(&index, torn);

    let reader = StoreReader::open(dir.path()).unwrap();
    assert_eq!(reader.len(), 2, "the complete records survive");
    assert_eq!(reader.get("b").unwrap(), sample(2, 1.0));
    let note = reader.recovered().expect("the torn line is reported");
    assert_eq!(note.dropped_bytes, torn.len() as u64);
    assert_eq!((note.line, note.kept), (3, 2));
    let text = note.to_string();
    assert!(
        text.contains("index.jsonl") && text.contains(&format!("{} bytes", torn.len())),
        "{text}"
    );

    let mut writer = StoreWriter::open(dir.path(), StoreDtype::F32, 1).unwrap();
    assert_eq!(
        writer.recovered().map(|r| r.dropped_bytes),
        Some(torn.len() as u64)
    );
    assert_eq!(
        std::fs::read_to_string(&index).unwrap(),
        complete,
        "the torn tail is truncated before anything is appended"
    );
    writer.add("c", sample(3, 2.0)).unwrap();
    writer.finish().unwrap();
    let reader = StoreReader::open(dir.path()).unwrap();
    assert!(reader.recovered().is_none());
    assert_eq!(reader.len(), 3);
    assert_eq!(reader.get("c").unwrap(), sample(3, 2.0));
}

#[test]
fn a_complete_last_record_without_newline_is_kept_and_a_writer_appends_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut writer = StoreWriter::open(dir.path(), StoreDtype::F32, 1).unwrap();
    writer.add("a", sample(1, 0.0)).unwrap();
    writer.finish().unwrap();
    let index = index_path(dir.path());
    let text = std::fs::read_to_string(&index).unwrap();
    std::fs::write(&index, text.trim_end()).unwrap();
    let reader = StoreReader::open(dir.path()).unwrap();
    assert_eq!((reader.len(), reader.recovered()), (1, None));

    let mut writer = StoreWriter::open(dir.path(), StoreDtype::F32, 1).unwrap();
    assert!(writer.recovered().is_none() && writer.contains("a"));
    writer.add("b", sample(2, 1.0)).unwrap();
    writer.finish().unwrap();
    let reader = StoreReader::open(dir.path()).unwrap();
    assert_eq!(reader.len(), 2);
    assert_eq!(reader.get("a").unwrap(), sample(1, 0.0));
    assert_eq!(reader.get("b").unwrap(), sample(2, 1.0));
}

#[test]
fn a_malformed_line_before_the_end_is_still_an_error_naming_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let mut writer = StoreWriter::open(dir.path(), StoreDtype::F32, 1).unwrap();
    writer.add("a", sample(1, 0.0)).unwrap();
    writer.finish().unwrap();
    let index = index_path(dir.path());
    let good = std::fs::read_to_string(&index).unwrap();
    // Torn in the middle (newline-terminated garbage), then a complete record.
    std::fs::write(&index, format!("{good}{{\"id\":\"b\",\"sha\n{good}")).unwrap();
    for err in [
        StoreReader::open(dir.path()).unwrap_err(),
        StoreWriter::open(dir.path(), StoreDtype::F32, 1).unwrap_err(),
    ] {
        let text = err.to_string();
        assert!(
            text.contains("index.jsonl") && text.contains("line 2"),
            "{text}"
        );
    }
    // Shard names come from the file and may not leave the store directory.
    std::fs::write(
        &index,
        "{\"id\":\"x\",\"shard\":\"../elsewhere.safetensors\",\"regions\":1,\"width\":1,\"height\":1}\n",
    )
    .unwrap();
    let text = StoreReader::open(dir.path()).unwrap_err().to_string();
    assert!(
        text.contains("line 1") && text.contains("not a file name"),
        "{text}"
    );
}

#[test]
fn a_second_writer_is_refused_while_the_first_holds_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = StoreWriter::open(dir.path(), StoreDtype::F32, 1).unwrap();
    first.add("a", sample(1, 0.0)).unwrap();

    let err = StoreWriter::open(dir.path(), StoreDtype::F32, 1).unwrap_err();
    assert!(matches!(err, StoreError::InUse { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("store in use by another writer")
            && text.contains(&dir.path().display().to_string())
            && text.contains(&format!("pid {}", std::process::id())),
        "{text}"
    );
    // From another thread too (a separate open of the lock file, as another process would).
    let path = dir.path().to_path_buf();
    let other = std::thread::spawn(move || StoreWriter::open(path, StoreDtype::F32, 1).is_err());
    assert!(other.join().unwrap());

    first.finish().unwrap();
    let mut second = StoreWriter::open(dir.path(), StoreDtype::F32, 1).unwrap();
    assert!(second.contains("a"));
    second.add("b", sample(1, 1.0)).unwrap();
    drop(second);
    // Dropping releases the lock as well.
    let third = StoreWriter::open(dir.path(), StoreDtype::F32, 1).unwrap();
    assert!(third.contains("b"));
    // Readers need no lock.
    assert_eq!(StoreReader::open(dir.path()).unwrap().len(), 2);
}

#[test]
fn a_shard_header_is_parsed_once_per_reader() {
    use std::io::{Seek, SeekFrom, Write};
    let dir = tempfile::tempdir().unwrap();
    let mut writer = StoreWriter::open(dir.path(), StoreDtype::F32, 8).unwrap();
    writer.add("a", sample(2, 0.0)).unwrap();
    writer.add("b", sample(3, 1.0)).unwrap();
    writer.finish().unwrap();
    let reader = StoreReader::open(dir.path()).unwrap();
    assert_eq!(reader.get("a").unwrap(), sample(2, 0.0));

    // Clobber the JSON header in place (same length, data untouched): a reader that parsed it
    // once keeps its offsets; one that parses on every `get` would now fail.
    let shard = dir.path().join(&reader.entries()[0].shard);
    let bytes = std::fs::read(&shard).unwrap();
    let header = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .open(&shard)
        .unwrap();
    file.seek(SeekFrom::Start(8)).unwrap();
    file.write_all(&vec![b' '; header]).unwrap();
    file.sync_all().unwrap();

    for _ in 0..3 {
        assert_eq!(reader.get("b").unwrap(), sample(3, 1.0));
        assert_eq!(reader.get("a").unwrap(), sample(2, 0.0));
    }
    let fresh = StoreReader::open(dir.path()).unwrap();
    let text = fresh.get("a").unwrap_err().to_string();
    assert!(text.contains("shard-00000.safetensors"), "{text}");
}
