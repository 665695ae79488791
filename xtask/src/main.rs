//! `cargo xtask`: tuwen's project automation.
//!
//! * `cargo xtask test`   — the whole test suite, exactly what CI runs (`.ci/run`): fetches the
//!   assets, checks formatting and clippy, then runs every test in strict mode (a test whose
//!   prerequisite — wgpu adapter, asset — is missing fails instead of skipping).
//! * `cargo xtask assets` — fetches and verifies the real weights and data (see `docs/assets.md`).
//! * `cargo xtask train [ARGS]` — the main job: builds `tuwen` and runs `tuwen train ARGS`; with
//!   no arguments the default run (MLM + ITM on the built-in scenes, `configs/default.toml`).
//! * `cargo xtask parity DIR [--device flex|ndarray|wgpu] [--tol 1e-4]` — numerical parity of a
//!   tuwen model with reference outputs (see `tuwen parity`).
//! * `cargo xtask tuwen ARGS` — any `tuwen` command (`tokenize`, `classify`, `extract-regions`,
//!   ...), built by the same build as the tests: no second Burn build.
//! * `cargo xtask bench [--torch PYTHON] [--threads N]` — tuwen's training and inference work
//!   (`crates/tuwen-train/tests/bench_compare.rs`), then with `--torch` the same work in
//!   PyTorch + HF transformers (`xtask/bench/torch_bench.py`) with as many threads, and one
//!   table of both and the ratio (without `--torch`: the PyTorch figures last recorded in
//!   `docs/benchmarks.md`). `--criterion` runs the criterion micro-benchmarks instead.
//! * `cargo xtask fuzz [--cases N]` — the parser fuzz test (`crates/tuwen-fuzz/tests/fuzz.rs`)
//!   with N cases per parser (default 100000; `cargo xtask test` runs it with 1000), and a table
//!   of cases, rejections, panics, hangs and the slowest case per parser.

use std::path::PathBuf;
use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

mod bench;

#[derive(Parser)]
#[command(name = "cargo xtask", about = "tuwen project automation")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Run the whole test suite (what CI runs).
    Test {
        /// Skip `cargo fmt --check` and clippy.
        #[arg(long)]
        no_lint: bool,
        /// Extra arguments passed to `cargo test` (after `--workspace`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Fetch, verify and unpack the real weights and data into $TUWEN_HOME.
    Assets {
        /// Cache directory (default: $TUWEN_HOME or ~/.cache/tuwen).
        #[arg(long)]
        home: Option<PathBuf>,
        /// Only this asset (default: all).
        #[arg(long)]
        only: Vec<String>,
    },
    /// Train a vision-language model on the embedded default dataset.
    Train {
        /// Train data-parallel over N processes: `mpirun -np N tuwen train ARGS` (Open MPI).
        #[arg(long, value_name = "N")]
        mpi: Option<usize>,
        /// Arguments for `tuwen train`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Fine-tune a pretrained run on a task (see `tuwen finetune --help`).
    Finetune {
        /// Arguments for `tuwen finetune`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Compare a model with reference outputs in a fixture directory (see `tuwen parity --help`).
    Parity {
        /// Fixture directory (config.json, model/inputs/expected.safetensors).
        dir: PathBuf,
        /// Backend: flex, ndarray or wgpu.
        #[arg(long, default_value = "flex")]
        device: String,
        /// Maximum absolute difference allowed per output.
        #[arg(long, default_value = "1e-4")]
        tol: String,
    },
    /// Run any `tuwen` command (built with the test suite's profile and features).
    Tuwen {
        /// Arguments for `tuwen`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Fuzz every file parser with mutated fixtures and print per-parser figures.
    Fuzz {
        /// Cases per parser.
        #[arg(long, default_value_t = 100_000)]
        cases: usize,
        /// Extra arguments for the test binary (e.g. a parser name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Measure tuwen's training and inference work side by side with PyTorch.
    Bench {
        /// A Python with torch and transformers: run the PyTorch reference
        /// (xtask/bench/torch_bench.py) right after tuwen's side, on the same batches.
        #[arg(long, value_name = "PYTHON")]
        torch: Option<PathBuf>,
        /// With --torch: also each step of the reference under bf16 autocast (f32 weights),
        /// against tuwen's f32 figure. Needs a CPU with bf16 kernels (AVX512-BF16 / AMX).
        #[arg(long, requires = "torch")]
        torch_bf16: bool,
        /// Threads on each side: RAYON_NUM_THREADS for tuwen, torch.set_num_threads for
        /// PyTorch (default: the machine's cores).
        #[arg(long)]
        threads: Option<usize>,
        /// Timed iterations of every work (default: each work's own, 5 to 40).
        #[arg(long)]
        iters: Option<usize>,
        /// Warm-up iterations of every work (default: each work's own).
        #[arg(long)]
        warmup: Option<usize>,
        /// Run the criterion micro-benchmarks instead (`cargo test --workspace --benches --
        /// --bench ARGS`).
        #[arg(long)]
        criterion: bool,
        /// Works to run (test-name filters: default_step, visualbert_minilm_step,
        /// visualbert_minilm_forward, visualbert_minilm_answer, extract_regions; a `_bf16`
        /// suffix for the bf16 ones); with --criterion, criterion's arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse().command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(task: Task) -> Result<()> {
    match task {
        Task::Test { no_lint, args } => test(no_lint, &args),
        Task::Assets { home, only } => assets(home, &only),
        Task::Train { mpi: None, args } => tuwen("train", &args),
        Task::Train { mpi: Some(n), args } => tuwen_mpi(n, &args),
        Task::Finetune { args } => tuwen("finetune", &args),
        Task::Fuzz { cases, args } => fuzz(cases, &args),
        Task::Tuwen { args } => match args.split_first() {
            Some((command, rest)) => tuwen(command, rest),
            None => tuwen("--help", &[]),
        },
        Task::Parity { dir, device, tol } => {
            let dir = dir.to_string_lossy().into_owned();
            tuwen(
                "parity",
                &[dir, "--device".into(), device, "--tol".into(), tol],
            )
        }
        // Benches are built in the test profile (dependencies at opt-level 3, see Cargo.toml), so
        // they reuse the test build instead of a second 20-minute release build of Burn;
        // `--bench` makes criterion measure instead of smoke-running each routine once.
        Task::Bench {
            criterion: true,
            args,
            ..
        } => {
            let mut extra = vec!["--".to_string(), "--bench".to_string()];
            extra.extend(args);
            cargo(&["test", "--workspace", "--benches"], &extra, &[])
        }
        Task::Bench {
            torch,
            torch_bf16,
            threads,
            iters,
            warmup,
            args,
            ..
        } => bench::run(&bench::Options {
            torch,
            torch_bf16,
            threads,
            iters,
            warmup,
            filters: args,
        }),
    }
}

fn cargo(base: &[&str], extra: &[String], env: &[(&str, &str)]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(&cargo);
    cmd.args(base).args(extra);
    for (k, v) in env {
        cmd.env(k, v);
    }
    eprintln!("$ cargo {} {}", base.join(" "), extra.join(" "));
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {cargo}"))?;
    if !status.success() {
        bail!("`cargo {}` failed ({status})", base.join(" "));
    }
    Ok(())
}

fn test(no_lint: bool, args: &[String]) -> Result<()> {
    // Tests that need the real weights find them through tuwen_assets::locate.
    assets(None, &[])?;
    if !no_lint {
        cargo(&["fmt", "--all", "--", "--check"], &[], &[])?;
        cargo(
            &[
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ],
            &[],
            &[],
        )?;
    }
    cargo(
        &["test", "--workspace"],
        args,
        &[("TUWEN_STRICT_TESTS", "1")],
    )
}

/// Runs the fuzz test with `cases` cases per parser, streaming its output, then prints the
/// per-parser `FUZZ` summary lines as a table.
fn fuzz(cases: usize, args: &[String]) -> Result<()> {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;

    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(&cargo);
    cmd.args(["test", "--workspace", "--test", "fuzz", "--", "--nocapture"])
        .args(args)
        .env("TUWEN_FUZZ_CASES", cases.to_string())
        .stdout(Stdio::piped());
    eprintln!(
        "$ TUWEN_FUZZ_CASES={cases} cargo test --workspace --test fuzz -- --nocapture {}",
        args.join(" ")
    );
    let started = std::time::Instant::now();
    let mut child = cmd.spawn().with_context(|| format!("cannot run {cargo}"))?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut rows: Vec<Vec<(String, String)>> = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading the test output")?;
        println!("{line}");
        // `FUZZ <parser> cases=.. rejected=.. ...` (tuwen_fuzz::Report::summary_line).
        if let Some(rest) = line.strip_prefix("FUZZ ") {
            let mut words = rest.split_whitespace();
            let Some(parser) = words.next() else { continue };
            let fields: Vec<(String, String)> = words
                .filter_map(|w| w.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            if fields.first().is_some_and(|(k, _)| k == "cases") {
                let mut row = vec![("parser".to_string(), parser.to_string())];
                row.extend(fields);
                rows.push(row);
            }
        }
    }
    let status = child.wait().context("waiting for cargo test")?;
    let wall = started.elapsed();
    let columns = [
        ("parser", "parser"),
        ("cases", "cases"),
        ("rejected", "rejected"),
        ("accepted", "accepted"),
        ("panics", "panics"),
        ("hangs", "hangs"),
        ("empty_errors", "empty errors"),
        ("huge_allocs", "huge allocs"),
        ("max_case_ms", "max ms/case"),
        ("total_s", "total s"),
    ];
    rows.sort_by(|a, b| a[0].1.cmp(&b[0].1));
    let get = |row: &[(String, String)], key: &str| {
        row.iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    println!();
    println!(
        "| {} |",
        columns
            .iter()
            .map(|(_, h)| *h)
            .collect::<Vec<_>>()
            .join(" | ")
    );
    println!("|{}", "---|".repeat(columns.len()));
    for row in &rows {
        let cells: Vec<String> = columns.iter().map(|(k, _)| get(row, k)).collect();
        println!("| {} |", cells.join(" | "));
    }
    println!(
        "\n{} parsers, {cases} cases each, {:.1} min wall time (build included)",
        rows.len(),
        wall.as_secs_f64() / 60.0
    );
    if !status.success() {
        bail!("the fuzz test failed ({status}); findings and seeds are listed above");
    }
    Ok(())
}

/// Builds `tuwen` and runs `tuwen COMMAND ARGS` (`train` with no arguments: the default run).
///
/// The binary is built by `cargo test --workspace --no-run`: the same profile and the same
/// unified dependency features as the test suite, so every README command shares one build
/// (a separate `cargo build` / `cargo run -p tuwen-cli` resolves other Burn features and
/// recompiles Burn, 20+ minutes on a small machine).
fn tuwen(command: &str, args: &[String]) -> Result<()> {
    cargo(&["test", "--workspace", "--no-run", "--quiet"], &[], &[])?;
    let tuwen = target_dir()?
        .join("debug")
        .join(if cfg!(windows) { "tuwen.exe" } else { "tuwen" });
    let mut cmd = Command::new(&tuwen);
    cmd.arg(command).args(args);
    eprintln!("$ {} {command} {}", tuwen.display(), args.join(" "));
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {}", tuwen.display()))?;
    if !status.success() {
        bail!("`tuwen {command}` failed ({status})");
    }
    Ok(())
}

/// `mpirun -np n tuwen train ARGS` with the `tuwen` of this build (`--allow-run-as-root`, as
/// containers and CI run as root; `--oversubscribe`, so `n` may exceed the cores).
fn tuwen_mpi(n: usize, args: &[String]) -> Result<()> {
    cargo(&["test", "--workspace", "--no-run", "--quiet"], &[], &[])?;
    let tuwen = target_dir()?.join("debug").join("tuwen");
    let mut cmd = Command::new("mpirun");
    cmd.args([
        "--allow-run-as-root",
        "--oversubscribe",
        "-np",
        &n.to_string(),
    ])
    .arg(&tuwen)
    .arg("train")
    .args(args);
    eprintln!(
        "$ mpirun -np {n} {} train {}",
        tuwen.display(),
        args.join(" ")
    );
    let status = cmd.status().context(
        "cannot run mpirun (Open MPI; Debian: apt-get install libopenmpi-dev openmpi-bin)",
    )?;
    if !status.success() {
        bail!("`mpirun -np {n} tuwen train` failed ({status})");
    }
    Ok(())
}

/// Cargo's target directory for this workspace (honours CARGO_TARGET_DIR and config).
fn target_dir() -> Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(&cargo)
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .output()
        .with_context(|| format!("cannot run {cargo} metadata"))?;
    if !out.status.success() {
        bail!(
            "`cargo metadata` failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let meta: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("`cargo metadata` printed invalid JSON")?;
    meta["target_directory"]
        .as_str()
        .map(PathBuf::from)
        .context("`cargo metadata` gave no target_directory")
}

fn assets(home: Option<PathBuf>, only: &[String]) -> Result<()> {
    let home = home.unwrap_or_else(tuwen_assets::home);
    for name in only {
        tuwen_assets::asset(name).with_context(|| {
            let known: Vec<_> = tuwen_assets::ASSETS.iter().map(|a| a.name).collect();
            format!("unknown asset {name}; known: {}", known.join(", "))
        })?;
    }
    eprintln!("assets in {}", home.display());
    for asset in tuwen_assets::ASSETS {
        if !only.is_empty() && !only.iter().any(|n| n == asset.name) {
            continue;
        }
        let status = tuwen_assets::ensure(&home, asset)
            .with_context(|| format!("asset {} ({})", asset.name, asset.requirement))?;
        for (path, quarantined) in &status.repaired {
            eprintln!(
                "  {}: {} failed verification, quarantined to {}",
                asset.name,
                path.display(),
                quarantined.display()
            );
        }
        let action = if status.downloaded || status.extracted > 0 || status.converted > 0 {
            format!(
                "fetched{} ({} extracted, {} converted)",
                if status.downloaded {
                    " + downloaded"
                } else {
                    ""
                },
                status.extracted,
                status.converted
            )
        } else {
            "present, nothing downloaded".to_string()
        };
        println!(
            "{:<13} {:<40} {} files verified, {action}\n{:<13} {}",
            asset.name,
            asset.requirement,
            status.verified,
            "",
            status.dir.display()
        );
    }
    Ok(())
}
