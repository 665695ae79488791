//! The `tuwen` binary end to end.

use std::process::Command;

fn tuwen() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tuwen"))
}

#[test]
fn tokenize_prints_one_json_array_per_text() {
    let vocab = match tuwen_assets::locate("minilm", "vocab.txt") {
        Ok(v) => v,
        Err(e) => {
            return tuwen_testkit::skip_or_fail(
                "tokenize_prints_one_json_array_per_text",
                &e.to_string(),
            );
        }
    };
    let out = tuwen()
        .args(["tokenize", "--vocab"])
        .arg(&vocab)
        .args(["A man is riding a horse on the beach.", "a"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "[101,1037,2158,2003,5559,1037,3586,2006,1996,3509,1012,102]\n[101,1037,102]\n"
    );
}

#[test]
fn tokenize_with_a_missing_vocab_names_the_file() {
    let out = tuwen()
        .args(["tokenize", "--vocab", "/nonexistent/vocab.txt", "hello"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/vocab.txt"), "{err}");
}

#[test]
fn classify_prints_top5_labels_and_names_bad_files() {
    let photo = match tuwen_assets::locate("photos", "coffee.png") {
        Ok(p) => p,
        Err(e) => {
            return tuwen_testkit::skip_or_fail(
                "classify_prints_top5_labels_and_names_bad_files",
                &e.to_string(),
            );
        }
    };
    if let Err(e) = tuwen_assets::locate("mobilenet_v2", "mobilenet_v2.safetensors") {
        return tuwen_testkit::skip_or_fail(
            "classify_prints_top5_labels_and_names_bad_files",
            &e.to_string(),
        );
    }
    let out = tuwen().arg("classify").arg(&photo).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 6, "{text}");
    assert!(lines[1].ends_with("espresso"), "{text}");

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("broken.jpg");
    std::fs::write(&bad, "not a jpeg").unwrap();
    let out = tuwen().arg("classify").arg(&bad).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("broken.jpg"));
}
