//! Pretrain -> fine-tune a captioner -> caption image files and score held-out scenes, end to end
//! through the `tuwen` binary.

mod common;

use common::{TINY_CAPTION as FINETUNE, TINY_PRETRAIN, ok, tuwen};

#[test]
fn a_pretrained_run_is_fine_tuned_to_caption_and_its_captions_are_scored() {
    let tmp = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = tmp.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let (pre_cfg, ft_cfg) = (write("pre.toml", TINY_PRETRAIN), write("ft.toml", FINETUNE));
    let (pre, ft, eval) = (
        tmp.path().join("pre"),
        tmp.path().join("ft"),
        tmp.path().join("eval"),
    );
    ok(&tuwen()
        .args(["train", "--config"])
        .arg(&pre_cfg)
        .arg("--run-dir")
        .arg(&pre)
        .output()
        .unwrap());
    let out = tuwen()
        .args(["finetune", "--task", "caption", "--from"])
        .arg(&pre)
        .arg("--config")
        .arg(&ft_cfg)
        .arg("--run-dir")
        .arg(&ft)
        .output()
        .unwrap();
    ok(&out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("CIDEr-D (greedy)"), "{stdout}");
    assert!(ft.join("test_captions.json").is_file());

    // Held-out scenes, beam search: scores, captions, references and images written.
    let out = tuwen()
        .args(["caption", "--run"])
        .arg(&ft)
        .args(["--eval", "--scenes", "6", "--beam", "3", "--out"])
        .arg(&eval)
        .output()
        .unwrap();
    ok(&out);
    let scores: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L", "CIDEr"] {
        assert!(scores[key].is_number(), "{key} missing in {scores}");
    }
    // `tuwen score captions` on what --eval wrote gives the figures --eval printed.
    let out = tuwen()
        .args(["score", "captions", "--references"])
        .arg(eval.join("references.json"))
        .arg("--results")
        .arg(eval.join("captions.json"))
        .output()
        .unwrap();
    ok(&out);
    let rescored: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in ["Bleu_4", "ROUGE_L", "CIDEr"] {
        let (a, b) = (
            scores[key].as_f64().unwrap(),
            rescored[key].as_f64().unwrap(),
        );
        assert!((a - b).abs() < 1e-9, "{key}: {a} vs {b}");
    }

    // The same scenes as image files named by a COCO caption file: the same scores.
    let references: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(eval.join("references.json")).unwrap())
            .unwrap();
    let images: Vec<serde_json::Value> = references["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| serde_json::json!({"id": i["id"], "file_name": format!("{}.png", i["id"])}))
        .collect();
    let coco = write(
        "coco.json",
        &serde_json::json!({"images": images, "annotations": references["annotations"]})
            .to_string(),
    );
    let out = tuwen()
        .args(["caption", "--run"])
        .arg(&ft)
        .args(["--eval", "--beam", "3", "--image-dir"])
        .arg(eval.join("images"))
        .arg("--captions")
        .arg(&coco)
        .output()
        .unwrap();
    ok(&out);
    let from_files: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(from_files, scores);
    // A caption file naming a missing image: the image is named.
    let broken = write(
        "broken.json",
        r#"{"images": [{"id": 7, "file_name": "nowhere.png"}],
            "annotations": [{"image_id": 7, "id": 1, "caption": "a red circle."}]}"#,
    );
    let out = tuwen()
        .args(["caption", "--run"])
        .arg(&ft)
        .args(["--eval", "--image-dir"])
        .arg(eval.join("images"))
        .arg("--captions")
        .arg(&broken)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("nowhere.png"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Image files: the saved scenes get the captions --eval wrote for them (same pipeline and
    // decoding); a missing file is reported while the others are captioned.
    let written: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(eval.join("captions.json")).unwrap())
            .unwrap();
    let first = &written[0];
    let image = eval
        .join("images")
        .join(format!("{}.png", first["image_id"]));
    let missing = tmp.path().join("missing.png");
    let out = tuwen()
        .args(["caption", "--run"])
        .arg(&ft)
        .args(["--beam", "3", "--json"])
        .arg(&image)
        .arg(&missing)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line: serde_json::Value = serde_json::from_str(stdout.lines().next().unwrap()).unwrap();
    assert_eq!(line["caption"], first["caption"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("missing.png") && stderr.contains("1 of 2 images"),
        "{stderr}"
    );

    // The linear layers in bf16 (CPUs with AVX512-BF16): captions the same image.
    if tuwen_fusion::precision::cpu_has_bf16() {
        let out = tuwen()
            .args(["caption", "--run"])
            .arg(&ft)
            .args(["--beam", "3", "--json", "--precision", "bf16"])
            .arg(&image)
            .output()
            .unwrap();
        ok(&out);
        let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let caption = line["caption"].as_str().unwrap();
        assert!(!caption.trim().is_empty(), "{line}");
    }

    // A run that does not caption, and a directory that is no run: clear errors.
    let out = tuwen()
        .args(["caption", "--run"])
        .arg(&pre)
        .arg(&image)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a captioning run"));
    let out = tuwen()
        .args(["caption", "--run"])
        .arg(tmp.path())
        .arg(&image)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a tuwen run directory"));
}
