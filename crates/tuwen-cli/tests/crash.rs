//! Crash safety end to end: `tuwen train` killed with SIGKILL at random points (during steps,
//! evaluations and checkpoint writes alike), resumed each time, ends with the same
//! `metrics.jsonl` and the same weights as a run that was never interrupted.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::weights;

use burn::tensor::TensorData;

/// Long enough that training, evaluations and checkpoint writes (every 8 steps) fill most of a
/// run, not the process start-up (~0.1 s; the whole run ~2 s on the development machine).
const CONFIG: &str = "[run]\nsteps = 1200\nbatch_size = 4\nlog_every = 1\n\
    [model]\nhidden_size = 32\nlayers = 1\nheads = 2\n\
    [data]\nvocab_scenes = 100\n[eval]\nevery = 8\nscenes = 16\n";

fn train(config: &Path, run_dir: &Path, resume: bool) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tuwen"));
    cmd.arg("train")
        .arg("--config")
        .arg(config)
        .arg("--run-dir")
        .arg(run_dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if resume {
        cmd.arg("--resume");
    }
    cmd
}

/// What a finished run leaves that must not depend on interruptions.
type Outcome = (
    String,
    BTreeMap<String, TensorData>,
    BTreeMap<String, TensorData>,
);

fn outcome(run_dir: &Path) -> Outcome {
    let path = run_dir.join("metrics.jsonl");
    let ckpt = run_dir.join("checkpoints");
    (
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
        weights(&ckpt.join("last").join("model.bpk")),
        weights(&ckpt.join("best").join("model.bpk")),
    )
}

/// The step of the run's last checkpoint (0: none yet).
fn checkpoint_step(run_dir: &Path) -> u64 {
    let state = run_dir.join("checkpoints/last/state.json");
    std::fs::read_to_string(state)
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v["step"].as_u64())
        .unwrap_or(0)
}

/// A small deterministic generator for the kill delays (SplitMix64).
fn delays(seed: u64, n: usize, max: Duration) -> Vec<Duration> {
    let mut x = seed;
    (0..n)
        .map(|_| {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            max.mul_f64((z >> 11) as f64 / (1u64 << 53) as f64)
        })
        .collect()
}

#[test]
fn a_run_killed_at_random_points_and_resumed_ends_as_an_uninterrupted_one() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("crash.toml");
    std::fs::write(&config, CONFIG).unwrap();

    let reference = dir.path().join("reference");
    let started = Instant::now();
    let out = train(&config, &reference, false).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let whole = started.elapsed();
    let expected = outcome(&reference);

    let crashed = dir.path().join("crashed");
    let mut kills = 0;
    let mut progress = Vec::new();
    // Each start lives 10-30% of a whole run (start-up, about as long for a resume as for a
    // fresh start, included), so kills land in start-up, steps, evaluations and checkpoint
    // writes, and the run needs several starts.
    for (i, delay) in delays(7, 30, whole / 5).into_iter().enumerate() {
        let delay = whole / 10 + delay;
        // The first start creates the run; later ones resume whatever the kill left.
        let mut child = train(&config, &crashed, i > 0).spawn().unwrap();
        std::thread::sleep(delay);
        let finished = child.try_wait().unwrap().is_some();
        if !finished {
            child.kill().unwrap(); // SIGKILL on Unix
            kills += 1;
        }
        let status = child.wait_with_output().unwrap();
        progress.push(checkpoint_step(&crashed));
        if finished {
            break;
        }
        // A run killed before it wrote anything is started fresh by the next --resume; a run
        // that finished before its kill is fine too. Any other failure is a bug.
        if status.status.code().is_some() && !status.status.success() {
            panic!(
                "start {i} failed: {}",
                String::from_utf8_lossy(&status.stderr)
            );
        }
    }
    let out = train(&config, &crashed, true).output().unwrap();
    assert!(
        out.status.success(),
        "final resume: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(kills >= 3, "only {kills} starts were killed mid-run");
    println!(
        "{kills} starts killed; checkpoint step after each: {progress:?}; the \
         uninterrupted run took {whole:?}"
    );
    // The kills must land inside training, not only in start-up: the run advanced between
    // kills at least twice.
    let advanced = progress.windows(2).filter(|w| w[1] > w[0]).count();
    assert!(
        advanced >= 2,
        "the run advanced only {advanced} times: {progress:?}"
    );
    let got = outcome(&crashed);
    assert_eq!(
        got.0, expected.0,
        "metrics.jsonl differs after {kills} kills"
    );
    assert!(!expected.1.is_empty(), "no tensors in the last checkpoint");
    assert!(
        got.1 == expected.1,
        "last weights differ after {kills} kills"
    );
    assert!(
        got.2 == expected.2,
        "best weights differ after {kills} kills"
    );
}
