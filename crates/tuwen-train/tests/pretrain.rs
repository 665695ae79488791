//! The pretraining loop: runs, logs, checkpoints, and resumes from the last checkpoint.

use tuwen_testkit::flex;
use tuwen_train::pretrain::{PretrainConfig, run};

fn tiny() -> PretrainConfig {
    PretrainConfig {
        steps: 20,
        batch_size: 6,
        hidden_size: 32,
        layers: 1,
        heads: 2,
        warmup_steps: 4,
        eval_every: 10,
        eval_scenes: 32,
        log_every: 1,
        ..PretrainConfig::default()
    }
}

fn losses(dir: &std::path::Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter_map(|v| Some((v["step"].as_u64()?, v.get("train/mlm")?.as_f64()?)))
        .collect()
}

#[test]
fn a_run_writes_its_outputs_and_an_interrupted_run_resumes_from_its_checkpoint() {
    let device = flex();
    let a = tempfile::tempdir().unwrap();
    let summary = run(&tiny(), a.path(), &device, None, |_| {}).unwrap();
    assert_eq!(summary.steps, 20);
    assert!(a.path().join("checkpoints/last/model.bpk").is_file());
    assert!(a.path().join("train.svg").is_file() && a.path().join("eval.svg").is_file());
    assert!(a.path().join("config.json").is_file());
    assert_eq!(losses(a.path()).len(), 20);
    assert!(summary.eval.itm_accuracy.is_finite() && summary.eval.mlm_accuracy.is_finite());

    let b = tempfile::tempdir().unwrap();
    let first = run(&tiny(), b.path(), &device, Some(10), |_| {}).unwrap();
    assert_eq!(first.steps, 10);
    let mut resumed_from = None;
    let second = run(&tiny(), b.path(), &device, None, |line| {
        if line.starts_with("resuming") {
            resumed_from = Some(line.to_string());
        }
    })
    .unwrap();
    assert!(resumed_from.unwrap().contains("step 10"));
    assert_eq!(second.steps, 20);
    let logged: Vec<u64> = losses(b.path()).iter().map(|(s, _)| *s).collect();
    assert_eq!(
        logged,
        (0..20).collect::<Vec<u64>>(),
        "every step exactly once across the interruption"
    );
}

/// Resuming is exact: the data order is a function of the step, model + optimiser + run state
/// round-trip bit for bit, and the vocabulary is deterministic and saved with the run.
#[test]
fn an_interrupted_and_resumed_run_matches_an_uninterrupted_one() {
    let device = flex();
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    run(&tiny(), a.path(), &device, None, |_| {}).unwrap();
    run(&tiny(), b.path(), &device, Some(10), |_| {}).unwrap();
    run(&tiny(), b.path(), &device, None, |_| {}).unwrap();
    let read = |d: &std::path::Path| std::fs::read_to_string(d.join("metrics.jsonl")).unwrap();
    assert_eq!(losses(a.path()).len(), 20);
    assert_eq!(
        read(a.path()),
        read(b.path()),
        "same losses, gradient norms and evaluations, bit for bit"
    );
}

/// The default run, for measuring (not part of CI): `cargo test --workspace --test pretrain
/// default_run -- --ignored --nocapture`. Prints progress and the held-out metrics.
#[test]
#[ignore = "the full default run takes minutes; run explicitly to measure"]
fn default_run() {
    let dir = std::env::var("TUWEN_RUN_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| std::env::temp_dir().join("tuwen-default-run"));
    let summary = run(&PretrainConfig::default(), &dir, &flex(), None, |line| {
        println!("{line}")
    })
    .unwrap();
    println!("final: {:?} in {:.0} s", summary.eval, summary.seconds);
}
