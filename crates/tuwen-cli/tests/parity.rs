//! `tuwen parity` on every committed fixture, on every backend, plus its failure modes.

use std::path::{Path, PathBuf};

use tuwen_cli::parity;
use tuwen_testkit::devices;

/// Parity tolerance required by the fixtures (max absolute difference, f32).
const TOL: f32 = 1e-4;

fn fixtures_dir() -> PathBuf {
    tuwen_testkit::package_path("tests/fixtures/parity")
}

/// Every directory under the fixtures directory: each must be a fixture (a directory without
/// `config.json` fails the test instead of being skipped).
fn fixtures() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(fixtures_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    for dir in &dirs {
        assert!(
            dir.join("config.json").is_file(),
            "{} is not a parity fixture (no config.json)",
            dir.display()
        );
    }
    dirs
}

#[test]
fn every_fixture_passes_on_every_backend() {
    let fixtures = fixtures();
    assert!(
        !fixtures.is_empty(),
        "no fixtures in {}",
        fixtures_dir().display()
    );
    let mut failures = Vec::new();
    for backend in devices("every_fixture_passes_on_every_backend") {
        for dir in &fixtures {
            let name = dir.file_name().unwrap().to_string_lossy();
            match parity::run(dir, &backend.device, TOL) {
                Ok(report) => {
                    println!("[{}] {name}: {report}", backend.name);
                    if !report.passed() {
                        failures.push(format!("[{}] {name}:\n{report}", backend.name));
                    }
                }
                Err(e) => failures.push(format!("[{}] {name}: {e:#}", backend.name)),
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Copies a committed fixture into a temp dir so a test can damage it.
fn scratch_copy(name: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixtures_dir().join(name)).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, tmp.path().join(path.file_name().unwrap())).unwrap();
    }
    tmp
}

fn rewrite_safetensors(
    path: &Path,
    edit: impl FnOnce(&mut Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)>),
) {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<_> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    edit(&mut tensors);
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(n, d, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

#[test]
fn an_output_the_model_cannot_produce_fails() {
    let dir = scratch_copy("bert_tiny");
    rewrite_safetensors(&dir.path().join("expected.safetensors"), |t| {
        t.push((
            "prediction_logits".into(),
            safetensors::Dtype::F32,
            vec![1],
            vec![0; 4],
        ));
    });
    let report = parity::run(dir.path(), &tuwen_testkit::flex(), TOL).unwrap();
    assert!(!report.passed(), "{report}");
    assert!(report.to_string().contains("prediction_logits"), "{report}");
}

#[test]
fn wrong_outputs_fail_and_print_the_difference() {
    let dir = scratch_copy("bert_tiny");
    rewrite_safetensors(&dir.path().join("expected.safetensors"), |t| {
        let pooled = t.iter_mut().find(|(n, ..)| n == "pooler_output").unwrap();
        pooled.3[0..4].copy_from_slice(&7.0f32.to_le_bytes());
    });
    let report = parity::run(dir.path(), &tuwen_testkit::flex(), TOL).unwrap();
    assert!(!report.passed());
    let text = report.to_string();
    assert!(
        text.contains("pooler_output") && text.contains("FAIL"),
        "{text}"
    );
}

#[test]
fn a_checkpoint_missing_a_tensor_is_an_error_naming_it() {
    let dir = scratch_copy("bert_tiny");
    rewrite_safetensors(&dir.path().join("model.safetensors"), |t| {
        t.retain(|(n, ..)| n != "encoder.layer.1.output.LayerNorm.bias");
    });
    let err = parity::run(dir.path(), &tuwen_testkit::flex(), TOL).unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("encoder.layers.1.ffn.output.layer_norm"),
        "{msg}"
    );
    assert!(msg.contains("model.safetensors"), "{msg}");
}

#[test]
fn an_unused_checkpoint_tensor_is_an_error_naming_it() {
    let dir = scratch_copy("bert_tiny");
    rewrite_safetensors(&dir.path().join("model.safetensors"), |t| {
        t.push((
            "cls.predictions.bias".into(),
            safetensors::Dtype::F32,
            vec![1],
            vec![0; 4],
        ));
    });
    let err = parity::run(dir.path(), &tuwen_testkit::flex(), TOL).unwrap_err();
    assert!(
        format!("{err:#}").contains("cls.predictions.bias"),
        "{err:#}"
    );
}

#[test]
fn unknown_architecture_is_refused() {
    let dir = scratch_copy("bert_tiny");
    let config = dir.path().join("config.json");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("\"BertModel\"", "\"GPT2Model\"");
    std::fs::write(&config, text).unwrap();
    let err = parity::run(dir.path(), &tuwen_testkit::flex(), TOL).unwrap_err();
    assert!(format!("{err:#}").contains("GPT2Model"), "{err:#}");
}

#[test]
fn an_empty_expected_file_is_an_error() {
    let dir = scratch_copy("bert_tiny");
    rewrite_safetensors(&dir.path().join("expected.safetensors"), |t| t.clear());
    let err = parity::run(dir.path(), &tuwen_testkit::flex(), TOL).unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("expected.safetensors") && msg.contains("nothing to compare"),
        "{msg}"
    );
}

#[test]
fn a_nan_expected_output_fails() {
    let dir = scratch_copy("bert_tiny");
    rewrite_safetensors(&dir.path().join("expected.safetensors"), |t| {
        let pooled = t.iter_mut().find(|(n, ..)| n == "pooler_output").unwrap();
        for chunk in pooled.3.chunks_exact_mut(4) {
            chunk.copy_from_slice(&f32::NAN.to_le_bytes());
        }
    });
    let report = parity::run(dir.path(), &tuwen_testkit::flex(), TOL).unwrap();
    assert!(!report.passed(), "{report}");
}

#[test]
fn an_expected_output_that_cannot_be_read_fails() {
    let dir = scratch_copy("bert_tiny");
    rewrite_safetensors(&dir.path().join("expected.safetensors"), |t| {
        let pooled = t.iter_mut().find(|(n, ..)| n == "pooler_output").unwrap();
        // Same byte count, a dtype that has no f32 reading.
        pooled.1 = safetensors::Dtype::BOOL;
        pooled.2 = vec![pooled.3.len()];
    });
    match parity::run(dir.path(), &tuwen_testkit::flex(), TOL) {
        Ok(report) => assert!(!report.passed(), "{report}"),
        Err(e) => assert!(format!("{e:#}").contains("expected.safetensors"), "{e:#}"),
    }
}
