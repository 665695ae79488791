//! Pretrain -> fine-tune -> ask, end to end through the `tuwen` binary, and the official VQA
//! scorer and the COCO caption scorer (`tuwen score`) on their committed fixtures.

mod common;

use common::{TINY_PRETRAIN, TINY_VQA as FINETUNE, ok, tuwen};

use std::path::Path;

#[test]
fn a_pretrained_run_is_fine_tuned_for_vqa_and_answers_questions_about_image_files() {
    let image = match tuwen_assets::locate("easy_vqa", "test/images/0.png") {
        Ok(p) => p,
        Err(e) => {
            return tuwen_testkit::skip_or_fail(
                "a_pretrained_run_is_fine_tuned_for_vqa_and_answers_questions_about_image_files",
                &e.to_string(),
            );
        }
    };
    let tmp = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = tmp.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let (pre_cfg, ft_cfg) = (write("pre.toml", TINY_PRETRAIN), write("ft.toml", FINETUNE));
    let (pre, ft) = (tmp.path().join("pre"), tmp.path().join("ft"));
    ok(&tuwen()
        .args(["train", "--config"])
        .arg(&pre_cfg)
        .arg("--run-dir")
        .arg(&pre)
        .output()
        .unwrap());
    let out = tuwen()
        .args(["finetune", "--task", "vqa", "--from"])
        .arg(&pre)
        .arg("--config")
        .arg(&ft_cfg)
        .arg("--run-dir")
        .arg(&ft)
        .output()
        .unwrap();
    ok(&out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("tensors reused") && stdout.contains("VQA accuracy"),
        "{stdout}"
    );
    assert!(ft.join("reuse.json").is_file() && ft.join("answers.txt").is_file());

    // One readable image, one missing: the first is answered, the second reported.
    let missing = tmp.path().join("missing.png");
    let out = tuwen()
        .args(["vqa", "--run"])
        .arg(&ft)
        .args(["--question", "what color is the shape?", "--json"])
        .arg(&image)
        .arg(&missing)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line: serde_json::Value = serde_json::from_str(stdout.lines().next().unwrap()).unwrap();
    let answers = line["answers"].as_array().unwrap();
    assert_eq!(answers.len(), 5);
    let answer_file = std::fs::read_to_string(ft.join("answers.txt")).unwrap();
    for a in answers {
        assert!(
            answer_file
                .lines()
                .any(|l| l == a["answer"].as_str().unwrap())
        );
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("missing.png") && stderr.contains("1 of 2 images"),
        "{stderr}"
    );

    // The linear layers in bf16 (CPUs with AVX512-BF16): the same ranking up to bf16's
    // rounding; refused on a GPU backend and on CPUs without the instructions.
    let answer = |precision: &str, device: &str| {
        tuwen()
            .args(["vqa", "--run"])
            .arg(&ft)
            .args(["--question", "what color is the shape?", "--json"])
            .args(["--precision", precision, "--device", device])
            .arg(&image)
            .output()
            .unwrap()
    };
    let scores = |out: &std::process::Output| -> Vec<(String, f64)> {
        ok(out);
        let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let answers = line["answers"].as_array().unwrap();
        let score = |a: &serde_json::Value| a["score"].as_f64().unwrap();
        answers
            .iter()
            .map(|a| (a["answer"].as_str().unwrap().to_string(), score(a)))
            .collect()
    };
    let bf16 = answer("bf16", "flex");
    if tuwen_fusion::precision::cpu_has_bf16() {
        let (f32_scores, bf16_scores) = (scores(&answer("f32", "flex")), scores(&bf16));
        let differ = f32_scores.iter().zip(&bf16_scores).any(|(a, b)| a.1 != b.1);
        assert!(differ, "bf16 gave the f32 scores: {bf16_scores:?}");
        // Every answer both list scores within bf16's rounding of its f32 score (so the top
        // answers agree unless two were within that distance).
        for (answer, bf16_score) in &bf16_scores {
            if let Some((_, f32_score)) = f32_scores.iter().find(|(a, _)| a == answer) {
                assert!(
                    (f32_score - bf16_score).abs() < 0.05,
                    "{answer}: f32 {f32_score}, bf16 {bf16_score}"
                );
            }
        }
        assert!(bf16_scores[0].1 >= f32_scores[0].1 - 0.05);
    } else {
        assert!(String::from_utf8_lossy(&bf16.stderr).contains("AVX512-BF16"));
    }
    let gpu = answer("bf16", "wgpu");
    assert!(!gpu.status.success());
    assert!(
        String::from_utf8_lossy(&gpu.stderr).contains("--precision bf16 runs on the CPU backends"),
        "{}",
        String::from_utf8_lossy(&gpu.stderr)
    );

    // A run without a VQA head, and a directory that is no run: clear errors.
    let out = tuwen()
        .args(["vqa", "--run"])
        .arg(&pre)
        .args(["--question", "q"])
        .arg(&image)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("no VQA answer head"));
    let out = tuwen()
        .args(["vqa", "--run"])
        .arg(tmp.path())
        .args(["--question", "q"])
        .arg(&image)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a tuwen run directory"));
}

#[test]
fn score_vqa_prints_the_official_figures() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tuwen-eval/tests/fixtures");
    let out = tuwen()
        .args(["score", "vqa", "--questions"])
        .arg(fixtures.join("vqa_questions.json"))
        .arg("--annotations")
        .arg(fixtures.join("vqa_annotations.json"))
        .arg("--results")
        .arg(fixtures.join("vqa_results.json"))
        .output()
        .unwrap();
    ok(&out);
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures.join("expected.json")).unwrap())
            .unwrap();
    assert_eq!(got["overall"], expected["overall"]);
    assert_eq!(got["perAnswerType"], expected["perAnswerType"]);
    // A results file that is not JSON: the file is named.
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad.json");
    std::fs::write(&bad, "[{").unwrap();
    let out = tuwen()
        .args(["score", "vqa", "--questions"])
        .arg(fixtures.join("vqa_questions.json"))
        .arg("--annotations")
        .arg(fixtures.join("vqa_annotations.json"))
        .arg("--results")
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad.json"));
}

#[test]
fn score_captions_prints_the_pycocoevalcap_figures() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tuwen-eval/tests/fixtures");
    let out = tuwen()
        .args(["score", "captions", "--references"])
        .arg(fixtures.join("caption_references.json"))
        .arg("--results")
        .arg(fixtures.join("caption_results.json"))
        .output()
        .unwrap();
    ok(&out);
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let expected: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures.join("caption_expected.json")).unwrap(),
    )
    .unwrap();
    let got = got.as_object().unwrap();
    let mut keys: Vec<&str> = got.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "CIDEr", "ROUGE_L"]
    );
    for (key, value) in got {
        let want = expected["scores"][key].as_f64().unwrap();
        let value = value.as_f64().unwrap();
        assert!((value - want).abs() <= 1e-6, "{key}: {value} != {want}");
    }
    // A result for an image the references do not have: the file and the record are named.
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad_results.json");
    std::fs::write(&bad, r#"[{"image_id": 1, "caption": "a cat"}]"#).unwrap();
    let out = tuwen()
        .args(["score", "captions", "--references"])
        .arg(fixtures.join("caption_references.json"))
        .arg("--results")
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("bad_results.json") && stderr.contains("result 0"),
        "{stderr}"
    );
}
