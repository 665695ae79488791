//! The VQA evaluation against figures of the official `vqaEval.py` on a fixture that exercises
//! its normalisation and quirks (`tests/fixtures/make_vqa_reference.py`), and on bad input.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use tuwen_eval::vqa::{self, VqaError, VqaScores};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn read(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(name)).unwrap()).unwrap()
}

/// A fresh directory for one test's files.
fn scratch(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("vqa_eval")
        .join(test);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write(dir: &Path, name: &str, value: &Value) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, serde_json::to_string(value).unwrap()).unwrap();
    path
}

/// Scores the fixture with `results` in place of its results file.
fn evaluate_with_results(test: &str, results: &Value) -> (Result<VqaScores, VqaError>, PathBuf) {
    let path = write(&scratch(test), "my_results.json", results);
    let scores = vqa::evaluate(
        &fixture("vqa_questions.json"),
        &fixture("vqa_annotations.json"),
        &path,
    );
    (scores, path)
}

fn assert_same_map<K: Ord + std::fmt::Debug>(
    what: &str,
    got: &std::collections::BTreeMap<K, f64>,
    want: &std::collections::BTreeMap<K, f64>,
) {
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "{what}: keys"
    );
    for (k, w) in want {
        assert!((got[k] - w).abs() < 1e-9, "{what} {k:?}: {} != {w}", got[k]);
    }
}

#[test]
fn fixture_scores_equal_the_official_script() {
    let scores = vqa::evaluate(
        &fixture("vqa_questions.json"),
        &fixture("vqa_annotations.json"),
        &fixture("vqa_results.json"),
    )
    .unwrap();
    let want: VqaScores = serde_json::from_value(read("expected.json")).unwrap();
    assert!(
        (scores.overall - want.overall).abs() < 1e-9,
        "overall: {} != {}",
        scores.overall,
        want.overall
    );
    assert_same_map(
        "perAnswerType",
        &scores.per_answer_type,
        &want.per_answer_type,
    );
    assert_same_map(
        "perQuestionType",
        &scores.per_question_type,
        &want.per_question_type,
    );
    assert_same_map("perQuestion", &scores.per_question, &want.per_question);
    assert_eq!(scores.per_question.len(), 50);
    // The fixture's exact tie: 100 * 0.25 / 8 = 3.125 rounds to the even 3.12.
    assert_eq!(scores.per_question_type["what color is the"], 3.12);
}

#[test]
fn scores_serialise_with_the_official_keys() {
    let scores = vqa::evaluate(
        &fixture("vqa_questions.json"),
        &fixture("vqa_annotations.json"),
        &fixture("vqa_results.json"),
    )
    .unwrap();
    let value = serde_json::to_value(&scores).unwrap();
    let mut keys: Vec<&str> = value
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        ["overall", "perAnswerType", "perQuestion", "perQuestionType"]
    );
    assert_eq!(value["perQuestion"]["100000"], json!(100.0));
    let back: VqaScores = serde_json::from_value(value).unwrap();
    assert_eq!(back, scores);
}

#[test]
fn soft_score_is_the_leave_one_out_accuracy() {
    let answers = |agreeing: usize| -> Vec<String> {
        (0..10)
            .map(|i| {
                if i < agreeing {
                    "cat".to_string()
                } else {
                    format!("other {i}")
                }
            })
            .collect()
    };
    for (agreeing, want) in [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)] {
        let got = vqa::soft_score(&answers(agreeing), "cat");
        assert!((got - want).abs() < 1e-6, "{agreeing} agreeing: {got}");
    }
    assert_eq!(vqa::soft_score(&["cat".to_string()], "cat"), 0.0);
    assert_eq!(vqa::soft_score(&[], "cat"), 0.0);
}

#[test]
fn normalize_answer_as_vqa_eval() {
    let forty_periods = format!("wait{}", ".".repeat(40));
    let eight_periods = format!("wait{}", ".".repeat(8));
    let cases = [
        (" Two Dogs.\n", "2 dogs"),
        ("1,000", "1000"),
        ("1,000-2,000", "10002000"),
        ("1.000", "1.000"),
        ("3.", "3"),
        ("t-shirt", "t shirt"),
        ("black / white", "black white"),
        ("black/white", "black white"),
        ("red, white, and blue", "red white and blue"),
        ("red,white,blue", "red white blue"),
        ("\"stop\"", "stop"),
        ("Dont", "don't"),
        ("CANT TELL", "can't tell"),
        ("3 oclock", "3 o'clock"),
        ("Im here", "im here"),
        ("somebody'd", "somebodyd"),
        ("St.Louis", "stlouis"),
        ("The\tcat", "cat"),
        ("a man and an apple", "man and apple"),
        ("None", "0"),
        ("e_mail@home", "e mail home"),
        ("\u{1f}red\u{1c}blue", "red blue"),
        ("CAFÉ", "café"),
        (
            "\u{661},\u{660}\u{660}\u{660}",
            "\u{661}\u{660}\u{660}\u{660}",
        ),
        ("#1 & $2 *ok*", "#1 & $2 *ok*"),
        (forty_periods.as_str(), eight_periods.as_str()),
        ("", ""),
    ];
    for (answer, want) in cases {
        assert_eq!(vqa::normalize_answer(answer), want, "{answer:?}");
    }
}

#[test]
fn missing_file_is_named() {
    let err = vqa::evaluate(
        &fixture("vqa_questions.json"),
        &fixture("no_such_annotations.json"),
        &fixture("vqa_results.json"),
    )
    .unwrap_err();
    assert!(matches!(err, VqaError::Io(_)), "{err}");
    assert!(
        err.to_string().contains("no_such_annotations.json"),
        "{err}"
    );
}

#[test]
fn malformed_json_names_the_file_and_the_key() {
    let dir = scratch("malformed");
    let truncated = dir.join("truncated_results.json");
    std::fs::write(&truncated, r#"[{"question_id": 100000, "answer": "#).unwrap();
    let err = vqa::evaluate(
        &fixture("vqa_questions.json"),
        &fixture("vqa_annotations.json"),
        &truncated,
    )
    .unwrap_err();
    assert!(matches!(err, VqaError::Malformed { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("truncated_results.json") && text.contains("line 1"),
        "{text}"
    );

    let mut annotations = read("vqa_annotations.json");
    annotations["annotations"][2]["question_id"] = json!("not a number");
    let path = write(&dir, "bad_annotations.json", &annotations);
    let err = vqa::evaluate(
        &fixture("vqa_questions.json"),
        &path,
        &fixture("vqa_results.json"),
    )
    .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("bad_annotations.json") && text.contains("annotations[2].question_id"),
        "{text}"
    );

    let err = vqa::evaluate(
        &write(
            &dir,
            "questions.json",
            &json!({"questions": [{"image_id": 1}]}),
        ),
        &fixture("vqa_annotations.json"),
        &fixture("vqa_results.json"),
    )
    .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("questions.json") && text.contains("missing field `question_id`"),
        "{text}"
    );
}

#[test]
fn result_for_an_unknown_question_is_an_error() {
    let mut results = read("vqa_results.json");
    results
        .as_array_mut()
        .unwrap()
        .push(json!({"question_id": 987654321, "answer": "yes"}));
    let (scores, _) = evaluate_with_results("unknown", &results);
    let err = scores.unwrap_err();
    assert!(
        matches!(
            err,
            VqaError::UnknownQuestion {
                question_id: 987654321,
                ..
            }
        ),
        "{err}"
    );
    let text = err.to_string();
    assert!(
        text.contains("my_results.json")
            && text.contains("987654321")
            && text.contains("vqa_annotations.json"),
        "{text}"
    );
}

#[test]
fn missing_result_is_an_error() {
    let mut results = read("vqa_results.json");
    let removed = results.as_array_mut().unwrap().remove(7);
    let question_id = removed["question_id"].as_u64().unwrap();
    let (scores, _) = evaluate_with_results("missing", &results);
    let err = scores.unwrap_err();
    assert!(
        matches!(err, VqaError::MissingResult { question_id: id, .. } if id == question_id),
        "{err}"
    );
    let text = err.to_string();
    assert!(
        text.contains("my_results.json") && text.contains(&question_id.to_string()),
        "{text}"
    );
}

#[test]
fn duplicate_result_is_an_error() {
    let mut results = read("vqa_results.json");
    let list = results.as_array_mut().unwrap();
    let again = json!({"question_id": list[3]["question_id"], "answer": "no"});
    let question_id = again["question_id"].as_u64().unwrap();
    list.push(again);
    let (scores, _) = evaluate_with_results("duplicate", &results);
    let err = scores.unwrap_err();
    assert!(matches!(err, VqaError::DuplicateResult { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("my_results.json") && text.contains(&question_id.to_string()),
        "{text}"
    );
}

#[test]
fn duplicate_annotation_and_empty_answers_are_errors() {
    let dir = scratch("annotations");
    let mut annotations = read("vqa_annotations.json");
    let list = annotations["annotations"].as_array_mut().unwrap();
    let first = list[0].clone();
    list.push(first);
    let path = write(&dir, "twice.json", &annotations);
    let err = vqa::evaluate(
        &fixture("vqa_questions.json"),
        &path,
        &fixture("vqa_results.json"),
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            VqaError::DuplicateAnnotation {
                question_id: 100000,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("twice.json"), "{err}");

    let mut annotations = read("vqa_annotations.json");
    annotations["annotations"][0]["answers"] = json!([]);
    let path = write(&dir, "no_answers.json", &annotations);
    let err = vqa::evaluate(
        &fixture("vqa_questions.json"),
        &path,
        &fixture("vqa_results.json"),
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            VqaError::NoAnswers {
                question_id: 100000,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn multiple_choice_answers_must_be_choices() {
    let dir = scratch("multiple_choice");
    let mut questions = read("vqa_questions.json");
    questions["task_type"] = json!("Multiple Choice");
    for q in questions["questions"].as_array_mut().unwrap() {
        q["multiple_choices"] = json!(["yes", "no", "2"]);
    }
    let questions = write(&dir, "mc_questions.json", &questions);
    let err = vqa::evaluate(
        &questions,
        &fixture("vqa_annotations.json"),
        &fixture("vqa_results.json"),
    )
    .unwrap_err();
    assert!(matches!(err, VqaError::NotAChoice { .. }), "{err}");
    assert!(err.to_string().contains("mc_questions.json"), "{err}");

    // Every answer a choice: scored as usual.
    let mut results = read("vqa_results.json");
    for r in results.as_array_mut().unwrap() {
        r["answer"] = json!("yes");
    }
    let results = write(&dir, "mc_results.json", &results);
    let scores = vqa::evaluate(&questions, &fixture("vqa_annotations.json"), &results).unwrap();
    assert_eq!(scores.per_question[&100000], 100.0);
}
