//! The `tuwen` binary end to end.

mod common;

use common::tuwen;

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

#[test]
fn extract_regions_writes_a_readable_store_resumes_and_survives_bad_images() {
    let test = "extract_regions_writes_a_readable_store_resumes_and_survives_bad_images";
    let (coffee, chelsea) = match (
        tuwen_assets::locate("photos", "coffee.png"),
        tuwen_assets::locate("photos", "chelsea.png"),
    ) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => return tuwen_testkit::skip_or_fail(test, &e.to_string()),
    };
    if let Err(e) = tuwen_assets::locate("mobilenet_v2", "mobilenet_v2.safetensors") {
        return tuwen_testkit::skip_or_fail(test, &e.to_string());
    }
    let images = tempfile::tempdir().unwrap();
    std::fs::copy(&coffee, images.path().join("coffee.png")).unwrap();
    std::fs::copy(&chelsea, images.path().join("chelsea.png")).unwrap();
    std::fs::write(
        images.path().join("corrupt.jpg"),
        b"\xff\xd8\xff\xe0 truncated",
    )
    .unwrap();
    let store = tempfile::tempdir().unwrap();
    let boxes = images.path().join("boxes.json");
    std::fs::write(
        &boxes,
        r#"{"chelsea": [[120, 20, 360, 280], [0, 0, 451, 300]]}"#,
    )
    .unwrap();
    let run = || {
        tuwen()
            .args(["extract-regions", "--max-regions", "8", "--images"])
            .arg(images.path())
            .arg("--out")
            .arg(store.path())
            .arg("--boxes")
            .arg(&boxes)
            .output()
            .unwrap()
    };
    let out = run();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("corrupt.jpg")
            && err.contains("2 extracted, 0 already in the store, 1 failed"),
        "{err}"
    );

    let reader = tuwen_regions::StoreReader::open(store.path()).unwrap();
    assert_eq!(reader.len(), 2);
    let cat = reader.get("chelsea").unwrap();
    assert_eq!(cat.image_size, [451, 300]);
    assert_eq!(cat.len(), 2, "ground-truth boxes are used as given");
    assert_eq!(cat.dim, 1280);
    assert_eq!(cat.classes, 1000);
    let cup = reader.get("coffee").unwrap();
    assert!(cup.len() >= 2 && cup.len() <= 8, "{} regions", cup.len());
    // The whole-image proposal of the coffee photo is classified as espresso.
    let classes = tuwen_vision::imagenet_classes();
    let best = cup.class_probs.chunks_exact(1000).map(|row| {
        row.iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .unwrap()
            .0
    });
    assert!(best.map(|i| classes[i]).any(|c| c == "espresso"));

    let again = run();
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(
        err.contains("0 extracted, 2 already in the store, 1 failed"),
        "{err}"
    );
}

#[test]
fn train_runs_a_config_prints_the_summary_and_guards_the_run_directory() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tiny.toml");
    std::fs::write(
        &config,
        "[run]\nsteps = 4\nbatch_size = 4\nlog_every = 1\n\
         [model]\nhidden_size = 32\nlayers = 1\nheads = 2\n\
         [data]\nvocab_scenes = 100\n[eval]\nevery = 2\nscenes = 16\n",
    )
    .unwrap();
    let run_dir = dir.path().join("run");
    let args = |extra: &[&str]| {
        let mut a = vec![
            "train".to_string(),
            "--config".into(),
            config.display().to_string(),
            "--run-dir".into(),
            run_dir.display().to_string(),
        ];
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let out = tuwen().args(args(&[])).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("4/4") && stderr.contains("scenes/s") && stderr.contains("ETA"));
    assert!(
        stderr.contains("eval @ 2") && stderr.contains("eval @ 4"),
        "{stderr}"
    );
    for row in [
        "ITM accuracy",
        "MLM accuracy, colour/shape words",
        "best @",
        "test @",
    ] {
        assert!(stdout.contains(row), "{row} missing from\n{stdout}");
    }
    assert!(run_dir.join("config.toml").is_file() && run_dir.join("checkpoints/best").is_dir());

    // The directory now holds a run: neither silently resumed nor overwritten.
    let again = tuwen().args(args(&[])).output().unwrap();
    assert!(!again.status.success());
    let msg = String::from_utf8_lossy(&again.stderr);
    assert!(
        msg.contains("--resume") && msg.contains("already holds a run"),
        "{msg}"
    );
    // --resume continues it (here: already finished, nothing left to run).
    let resumed = tuwen().args(args(&["--resume"])).output().unwrap();
    let msg = String::from_utf8_lossy(&resumed.stderr);
    assert!(resumed.status.success(), "{msg}");
    assert!(msg.contains("resuming from"), "{msg}");
    // Data parallelism from the command line: two devices (Flex holds the model, NdArray a replica).
    let dp = tuwen()
        .args(args(&[
            "--overwrite",
            "--device",
            "flex",
            "--device",
            "ndarray",
        ]))
        .output()
        .unwrap();
    let msg = String::from_utf8_lossy(&dp.stderr);
    assert!(
        dp.status.success() && msg.contains("on 2 device(s)"),
        "{msg}"
    );
    // --overwrite deletes run directories only.
    let not_a_run = dir.path().join("precious");
    std::fs::create_dir_all(&not_a_run).unwrap();
    std::fs::write(not_a_run.join("notes.txt"), "keep me").unwrap();
    let refused = tuwen()
        .args([
            "train",
            "--overwrite",
            "--run-dir",
            &not_a_run.display().to_string(),
        ])
        .output()
        .unwrap();
    let msg = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && msg.contains("not a tuwen run directory"),
        "{msg}"
    );
    assert!(not_a_run.join("notes.txt").is_file());
    // A bad configuration names the file and the key.
    std::fs::write(&config, "[run]\nstepz = 4\n").unwrap();
    let bad = tuwen()
        .args(["train", "--config", &config.display().to_string()])
        .output()
        .unwrap();
    let msg = String::from_utf8_lossy(&bad.stderr);
    assert!(
        !bad.status.success() && msg.contains("tiny.toml") && msg.contains("stepz"),
        "{msg}"
    );
}

/// Every command the README shows runs from the one build the tests use: `cargo run -p`,
/// `cargo build -p` or `--release` would resolve other Burn features and build Burn again
/// (20+ minutes on a small machine).
#[test]
fn readme_commands_need_no_second_build() {
    let readme = std::fs::read_to_string(tuwen_testkit::package_path("../../README.md")).unwrap();
    let offending: Vec<&str> = readme
        .lines()
        .filter(|l| {
            let l = l.trim_start();
            l.starts_with("cargo ")
                && (l.contains(" -p ")
                    || l.contains("--package")
                    || l.contains("--release")
                    || l.starts_with("cargo build")
                    || l.starts_with("cargo run"))
        })
        .collect();
    assert!(
        offending.is_empty(),
        "README commands that build Burn again: {offending:?}"
    );
    assert!(
        readme.contains("cargo xtask tuwen "),
        "README shows `cargo xtask tuwen`"
    );
}

/// `tuwen devices` lists what `--device` can name; an index that does not exist is refused
/// with what does.
#[test]
fn devices_lists_the_devices_and_indices_are_checked() {
    let out = common::ok(&common::tuwen().arg("devices").output().unwrap());
    for name in ["flex", "ndarray", "wgpu", "cuda"] {
        assert!(
            out.lines().any(|l| l.starts_with(name)),
            "{name} missing:\n{out}"
        );
    }
    let tmp = tempfile::tempdir().unwrap();
    for (device, expected) in [
        ("wgpu:99", "no wgpu adapter 99"),
        ("flex:1", "one device"),
        ("tpu", "this build has: flex, ndarray, wgpu"),
        ("wgpu:x", "must be a number or `local`"),
        // `local`: the rank on the node that mpirun gives (here set by hand).
        (
            "wgpu:local",
            "no wgpu adapter 99 (this process's local rank)",
        ),
        ("flex:local", "one device"),
    ] {
        let out = common::tuwen()
            .args(["train", "--steps", "1", "--device", device, "--run-dir"])
            .arg(tmp.path().join("run"))
            .env("OMPI_COMM_WORLD_LOCAL_RANK", "99")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(expected),
            "{device}: {stderr}"
        );
    }
}

/// Memory does not grow with the steps: the default configuration's resident set at step 1,000
/// is within 5% of its size at step 101, the first logged after step 100 (read from
/// `/proc/PID/status` while it trains; an evaluation at step 500 falls between the two).
#[cfg(target_os = "linux")]
#[test]
fn memory_does_not_grow_over_a_long_run() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("long.toml");
    std::fs::write(&config, "[run]\nsteps = 1000\n[eval]\nevery = 500\n").unwrap();
    let mut child = common::tuwen()
        .args(["train", "--config"])
        .arg(&config)
        .arg("--run-dir")
        .arg(dir.path().join("run"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = format!("/proc/{}/status", child.id());
    let resident_kb = || -> u64 {
        let text = std::fs::read_to_string(&status).unwrap();
        let line = text.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    let mut samples = std::collections::BTreeMap::new();
    let mut log = Vec::new();
    for line in BufReader::new(child.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        for step in [101, 1000] {
            if line.starts_with("step") && line.contains(&format!(" {step}/1000 ")) {
                samples.insert(step, resident_kb());
            }
        }
        log.push(line);
    }
    assert!(child.wait().unwrap().success(), "{}", log.join("\n"));
    let (early, late) = (samples[&101], samples[&1000]);
    println!("resident set: {early} kB at step 101, {late} kB at step 1000");
    assert!(
        late as f64 <= early as f64 * 1.05,
        "the resident set grew from {early} kB at step 101 to {late} kB at step 1000"
    );
}
