//! Data parallelism across processes: `mpirun -np 2 tuwen train` (Open MPI, localhost) trains
//! as one process with the same global batch split the same way, resumes bit for bit, and a
//! rank that fails ends the job with its message instead of leaving the others waiting.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{ok, tuwen, weights};

/// 12 steps of 8 scenes: each of 2 processes trains 4 rows a step. A constant learning rate
/// after warmup, so a job stopped by `--steps 6` and resumed continues the same schedule.
const CONFIG: &str = "[run]\nsteps = 12\nbatch_size = 8\nlog_every = 1\n\
    [optim]\nwarmup_steps = 2\ndecay = \"constant\"\n\
    [model]\nhidden_size = 32\nlayers = 2\nheads = 2\nitc_dim = 16\ndropout = 0.1\n\
    [data]\nvocab_scenes = 200\nregion_mask_prob = 0.15\n\
    [eval]\nevery = 6\nscenes = 16\nretrieval_images = 8\nretrieval_top_k = 4\n";

/// `mpirun` (Open MPI), or `None` after `skip_or_fail` when it is not installed.
fn mpirun(test: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("mpirun"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        tuwen_testkit::skip_or_fail(
            test,
            "mpirun is not installed (Debian: apt-get install libopenmpi-dev openmpi-bin)",
        );
    }
    found
}

/// `mpirun -np 2 tuwen train ARGS` (as root too, as CI runs), killed after two minutes.
fn mpi_train(mpirun: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(mpirun);
    cmd.args(["--allow-run-as-root", "--oversubscribe", "-np", "2"])
        .arg(env!("CARGO_BIN_EXE_tuwen"))
        .arg("train")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(120) {
            child.kill().unwrap();
            panic!("mpirun {args:?} still running after 120 s: a rank waits for another");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    child.wait_with_output().unwrap()
}

fn metrics(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Largest difference between the two runs' `last` weights, relative to the tensor's scale.
fn weight_difference(a: &Path, b: &Path) -> f32 {
    let file = |d: &Path| d.join("checkpoints/last/model.bpk");
    let (a, b) = (weights(&file(a)), weights(&file(b)));
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "the same tensors"
    );
    let mut worst = 0.0f32;
    for (name, x) in &a {
        let x = x.try_to_vec::<f32>().unwrap();
        let y = b[name].try_to_vec::<f32>().unwrap();
        let scale = y.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-3);
        let d = tuwen_testkit::max_abs_diff_slices(&x, &y) / scale;
        worst = worst.max(d);
    }
    worst
}

#[test]
fn two_processes_train_as_one_with_the_whole_batch_and_resume_exactly() {
    let Some(mpirun) = mpirun("two_processes_train_as_one_with_the_whole_batch_and_resume_exactly")
    else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("mpi.toml");
    std::fs::write(&config, CONFIG).unwrap();
    // One process with two micro-batches: the same parts, seeds and dropout draws.
    let single_config = tmp.path().join("single.toml");
    std::fs::write(
        &single_config,
        CONFIG.replace("[run]\n", "[run]\ngrad_accum_steps = 2\n"),
    )
    .unwrap();
    let (two, one, resumed) = (
        tmp.path().join("two"),
        tmp.path().join("one"),
        tmp.path().join("resumed"),
    );
    let c = config.to_str().unwrap();
    let out = mpi_train(
        &mpirun,
        &["--config", c, "--run-dir", two.to_str().unwrap()],
    );
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    ok(&out);
    assert!(stderr.contains("x 2 MPI processes"), "{stderr}");
    // Rank 0 prints; the summary table appears once.
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .matches("held-out metric")
            .count(),
        1
    );
    ok(&tuwen()
        .args([
            "train",
            "--config",
            single_config.to_str().unwrap(),
            "--run-dir",
        ])
        .arg(&one)
        .output()
        .unwrap());

    let (a, b) = (metrics(&two), metrics(&one));
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        for (k, v) in x.as_object().unwrap() {
            let (Some(v), Some(w)) = (v.as_f64(), y[k].as_f64()) else {
                continue;
            };
            assert!(
                (v - w).abs() <= 1e-5 * w.abs().max(1.0),
                "{k}: 2 processes {v}, 1 process {w}"
            );
        }
    }
    let d = weight_difference(&two, &one);
    eprintln!("2 processes vs 1: largest relative weight difference {d:e}");
    assert!(d <= 1e-5, "weights differ by {d} (relative)");

    // A job of 6 steps, then a new job resuming it to 12: the same log (but the 6-step job's
    // test-split line) and the same weights, bit for bit.
    let r = resumed.to_str().unwrap();
    ok(&mpi_train(
        &mpirun,
        &["--config", c, "--run-dir", r, "--steps", "6"],
    ));
    ok(&mpi_train(
        &mpirun,
        &["--config", c, "--run-dir", r, "--resume"],
    ));
    let without_test = |dir: &Path| -> Vec<serde_json::Value> {
        metrics(dir)
            .into_iter()
            .filter(|v| {
                !v.as_object()
                    .unwrap()
                    .keys()
                    .any(|k| k.starts_with("test/"))
            })
            .collect()
    };
    assert_eq!(without_test(&two), without_test(&resumed));
    assert_eq!(weight_difference(&two, &resumed), 0.0);
}

#[test]
fn a_rank_that_fails_ends_the_job_with_its_message() {
    let Some(mpirun) = mpirun("a_rank_that_fails_ends_the_job_with_its_message") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("mpi.toml");
    std::fs::write(&config, CONFIG.replace("steps = 12", "steps = 2")).unwrap();
    let dir = tmp.path().join("run");
    let (c, d) = (config.to_str().unwrap(), dir.to_str().unwrap());
    ok(&mpi_train(&mpirun, &["--config", c, "--run-dir", d]));
    // Rank 0 refuses to reuse the directory; rank 1, waiting for rank 0 to set it up, is ended
    // with the job (mpi_train fails the test if the job hangs).
    let out = mpi_train(&mpirun, &["--config", c, "--run-dir", d]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("already holds a run") && stderr.contains("rank 0 of 2"),
        "{stderr}"
    );
    // Ranks that would train different runs (here: another learning rate on rank 1) are
    // refused before the first step.
    let other = tmp.path().join("other.toml");
    std::fs::write(
        &other,
        CONFIG
            .replace("steps = 12", "steps = 2")
            .replace("warmup_steps = 2", "warmup_steps = 2\nlearning_rate = 1e-3"),
    )
    .unwrap();
    let tuwen_bin = env!("CARGO_BIN_EXE_tuwen");
    let mismatched = tmp.path().join("mismatched");
    let out = Command::new(&mpirun)
        .args([
            "--allow-run-as-root",
            "--oversubscribe",
            "-np",
            "1",
            tuwen_bin,
            "train",
        ])
        .args(["--config", c, "--run-dir"])
        .arg(&mismatched)
        .args([":", "-np", "1", tuwen_bin, "train", "--config"])
        .arg(&other)
        .arg("--run-dir")
        .arg(&mismatched)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("start from different states"), "{stderr}");
    // Fine-tuning is single-process: refused with a clear message.
    let mut finetune = Command::new(&mpirun);
    let out = finetune
        .args(["--allow-run-as-root", "--oversubscribe", "-np", "2"])
        .arg(env!("CARGO_BIN_EXE_tuwen"))
        .args(["finetune", "--from", d, "--task", "vqa", "--config"])
        .arg(tuwen_testkit::package_path("../../configs/scenes_vqa.toml"))
        .arg("--run-dir")
        .arg(tmp.path().join("vqa"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("fine-tuning in one process"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
