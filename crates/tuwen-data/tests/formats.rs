//! The loaders on small files in each format's exact layout, including malformed input.

use std::path::PathBuf;

use tuwen_data::formats::{self, FormatError, OnMalformed};

fn fixture(name: &str) -> PathBuf {
    tuwen_testkit::package_path("tests/fixtures").join(name)
}

#[test]
fn coco_captions_and_instances() {
    let caps = formats::coco_captions(&fixture("coco_captions.json")).unwrap();
    assert_eq!(caps.len(), 3);
    assert_eq!(caps[0].image, "COCO_val2014_000000391895.jpg");
    assert_eq!(caps[0].image_id, "391895");
    assert_eq!(
        caps[2].caption,
        "A woman wearing a net on her head cutting a cake."
    );
    let boxes = formats::coco_instances(&fixture("coco_instances.json")).unwrap();
    let (cat, b) = boxes["391895"][0];
    assert_eq!(cat, 4);
    assert!((b.x2 - (359.17 + 112.45)).abs() < 1e-3 && (b.y2 - (146.17 + 213.57)).abs() < 1e-3);
}

#[test]
fn karpathy_split_json_keeps_splits() {
    let caps = formats::karpathy(&fixture("dataset_flickr30k.json")).unwrap();
    assert_eq!(caps.len(), 3);
    assert_eq!(caps[0].split.as_deref(), Some("train"));
    assert_eq!(caps[2].split.as_deref(), Some("test"));
    assert_eq!(caps[2].image, "10002456.jpg");
    // The COCO Karpathy file carries both imgid and cocoid, and a file path.
    let coco = formats::karpathy(&fixture("dataset_coco.json")).unwrap();
    assert_eq!(coco[0].image_id, "391895");
    assert_eq!(coco[0].image, "val2014/COCO_val2014_000000391895.jpg");
}

#[test]
fn cc_tsv_fails_on_or_skips_malformed_lines() {
    let err = formats::cc_tsv(&fixture("cc_sample.tsv"), OnMalformed::Fail).unwrap_err();
    let FormatError::Malformed { line, .. } = &err else {
        panic!("{err}")
    };
    assert_eq!(*line, 3);
    assert!(err.to_string().contains("cc_sample.tsv:3"), "{err}");
    let loaded = formats::cc_tsv(&fixture("cc_sample.tsv"), OnMalformed::Skip).unwrap();
    assert_eq!((loaded.records.len(), loaded.skipped), (3, 2));
    assert_eq!(loaded.records[2].image, "images/girl.jpg");
}

#[test]
fn vqa_v2_joins_questions_and_annotations_with_soft_scores() {
    let qa = formats::vqa_v2(
        &fixture("vqa_questions.json"),
        Some(&fixture("vqa_annotations.json")),
    )
    .unwrap();
    assert_eq!(qa.len(), 2);
    assert_eq!(qa[0].answers.len(), 10);
    assert_eq!(formats::soft_score(&qa[0].answers, "down"), 1.0);
    // The official leave-one-out accuracy: 1 of 10 agreeing scores 0.3 (not 1/3).
    assert!((formats::soft_score(&qa[0].answers, "table") - 0.3).abs() < 1e-6);
    assert_eq!(formats::soft_score(&qa[1].answers, "sitting"), 0.0);
    // Two answers, one agreeing: (1/3 + 0) / 2.
    assert!((formats::soft_score(&qa[1].answers, "watching") - 1.0 / 6.0).abs() < 1e-6);
    let test_split = formats::vqa_v2(&fixture("vqa_questions.json"), None).unwrap();
    assert!(test_split.iter().all(|q| q.answers.is_empty()));
}

#[test]
fn easy_vqa_rows() {
    let qa = formats::easy_vqa(&fixture("easy_vqa_questions.json")).unwrap();
    assert_eq!(qa.len(), 3);
    assert_eq!(
        (qa[1].answers[0].as_str(), qa[2].image_id.as_str()),
        ("blue", "1")
    );
}

#[test]
fn truncated_or_missing_json_names_the_file_and_line() {
    let err = formats::coco_captions(&fixture("coco_truncated.json")).unwrap_err();
    assert!(matches!(err, FormatError::Malformed { .. }));
    assert!(err.to_string().contains("coco_truncated.json:"), "{err}");
    let err = formats::karpathy(&fixture("nope.json")).unwrap_err();
    assert!(matches!(err, FormatError::Io(_)) && err.to_string().contains("nope.json"));
}
