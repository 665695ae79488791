//! `cargo xtask bench`: tuwen's training and inference work, then (with `--torch`) the same work
//! in PyTorch + HF transformers with as many threads, and one table of both.
//!
//! tuwen's side is `crates/tuwen-train/tests/bench_compare.rs` (ignored tests, built by the test
//! suite's build: no second Burn build). Each of its works prints a JSON line and exports its
//! batch and configuration to `target/bench/<work>/`; `xtask/bench/torch_bench.py` reads them, so
//! both sides compute on the same tokens, masks, labels and region features with the same
//! model sizes (both print their parameter count), losses, optimiser and iteration counts.
//! Without `--torch` the PyTorch column is the one last recorded in `docs/benchmarks.md`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// What `cargo xtask bench` was asked.
pub struct Options {
    /// Python with torch + transformers (None: the recorded PyTorch figures).
    pub torch: Option<PathBuf>,
    /// Also measure the reference's steps under bf16 autocast.
    pub torch_bf16: bool,
    /// Threads on each side.
    pub threads: Option<usize>,
    /// Timed iterations of every work.
    pub iters: Option<usize>,
    /// Warm-up iterations of every work.
    pub warmup: Option<usize>,
    /// Test-name filters.
    pub filters: Vec<String>,
}

/// The marker before the table whose PyTorch column is "the last recorded figures".
const RECORD_MARKER: &str = "<!-- cargo xtask bench: recorded figures -->";

/// One measured work of one side.
#[derive(Clone, Debug)]
struct Figure {
    work: String,
    /// A PyTorch-only variant of the work (`bf16 autocast`), compared with tuwen's figure.
    variant: Option<String>,
    what: String,
    ms: f64,
    min_ms: f64,
    max_ms: f64,
    iters: u64,
    warmup: u64,
    threads: u64,
    params: u64,
    first_loss: Option<f64>,
}

impl Figure {
    fn parse(v: &Value) -> Option<Self> {
        let num = |k: &str| v.get(k).and_then(Value::as_f64);
        let int = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
        Some(Self {
            work: v.get("work")?.as_str()?.to_string(),
            variant: v.get("variant").and_then(Value::as_str).map(str::to_string),
            what: v
                .get("what")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            ms: num("ms")?,
            min_ms: num("min_ms").unwrap_or(f64::NAN),
            max_ms: num("max_ms").unwrap_or(f64::NAN),
            iters: int("iters"),
            warmup: int("warmup"),
            threads: int("threads"),
            params: int("params"),
            first_loss: num("first_loss"),
        })
    }
}

pub fn run(opts: &Options) -> Result<()> {
    let root = workspace_root();
    let threads = opts.threads.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    if threads == 0 {
        bail!("--threads must be at least 1");
    }
    let python = opts.torch.as_ref().map(|p| expand_home(p));
    if let Some(py) = &python {
        // Fail before minutes of tuwen's side when the reference cannot run at all.
        let out = Command::new(py)
            .args(["-c", "import torch, transformers, numpy"])
            .output()
            .with_context(|| format!("cannot run {}", py.display()))?;
        if !out.status.success() {
            bail!(
                "{} cannot import torch, transformers and numpy:\n{}",
                py.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    let dir = crate::target_dir()?.join("bench");
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    let started = utc_now();
    let commit = git_commit(&root);

    // tuwen: build first (so the build does not share the CPU with the measurements), then run.
    crate::cargo(
        &[
            "test",
            "--workspace",
            "--test",
            "bench_compare",
            "--no-run",
            "--quiet",
        ],
        &[],
        &[],
    )?;
    let threads_s = threads.to_string();
    let mut env: Vec<(&str, String)> = vec![
        ("RAYON_NUM_THREADS", threads_s.clone()),
        ("TUWEN_BENCH_DIR", dir.to_string_lossy().into_owned()),
        // What `tuwen` sets with `mallopt` at start-up (crates/tuwen-cli/src/main.rs): the
        // bench binary does not run tuwen's main.
        (
            "GLIBC_TUNABLES",
            "glibc.malloc.mmap_threshold=268435456:glibc.malloc.trim_threshold=536870912".into(),
        ),
    ];
    if let Some(n) = opts.iters {
        env.push(("TUWEN_BENCH_ITERS", n.to_string()));
    }
    if let Some(n) = opts.warmup {
        env.push(("TUWEN_BENCH_WARMUP", n.to_string()));
    }
    let load_before = load_average();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(&cargo);
    cmd.args([
        "test",
        "--workspace",
        "--test",
        "bench_compare",
        "--quiet",
        "--",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .args(&opts.filters);
    for (k, v) in &env {
        cmd.env(k, v);
    }
    eprintln!(
        "$ {} cargo test --workspace --test bench_compare -- --ignored --nocapture --test-threads=1 {}",
        env.iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" "),
        opts.filters.join(" ")
    );
    let tuwen = run_json_lines(cmd, "tuwen")?;
    if tuwen.is_empty() {
        bail!("tuwen's side measured nothing (do the filters match a test of bench_compare.rs?)");
    }
    let load_tuwen = load_average();

    let (torch, torch_label, load_torch) = match &python {
        Some(py) => {
            let script = root.join("xtask").join("bench").join("torch_bench.py");
            let works: Vec<&str> = tuwen.iter().map(|f| f.work.as_str()).collect();
            let mut cmd = Command::new(py);
            cmd.arg(&script)
                .arg("--dir")
                .arg(&dir)
                .args(["--threads", &threads_s, "--works", &works.join(",")])
                .args(opts.torch_bf16.then_some("--bf16"))
                .env("OMP_NUM_THREADS", &threads_s)
                .env("MKL_NUM_THREADS", &threads_s);
            eprintln!(
                "$ OMP_NUM_THREADS={threads} {} {} --dir {} --threads {threads} --works {}{}",
                py.display(),
                script.display(),
                dir.display(),
                works.join(","),
                if opts.torch_bf16 { " --bf16" } else { "" }
            );
            let figures = run_json_lines(cmd, "pytorch")?;
            (figures, "PyTorch ms".to_string(), Some(load_average()))
        }
        None => {
            let doc = root.join("docs").join("benchmarks.md");
            let (figures, note) = recorded(&doc)?;
            (figures, format!("PyTorch ms ({note})"), None)
        }
    };

    // The table.
    let by_work: BTreeMap<(&str, Option<&str>), &Figure> = torch
        .iter()
        .map(|f| ((f.work.as_str(), f.variant.as_deref()), f))
        .collect();
    println!();
    println!(
        "{started}, commit {commit}, {threads} thread(s) each side{}",
        match &python {
            Some(_) => ", measured one after the other",
            None => ", tuwen measured now",
        }
    );
    println!(
        "load average (1/5/15 min): {load_before} before tuwen, {load_tuwen} after tuwen{}",
        load_torch
            .map(|l| format!(", {l} after PyTorch"))
            .unwrap_or_default()
    );
    println!();
    println!("| work | tuwen ms | {torch_label} | tuwen / PyTorch speed |");
    println!("|---|---:|---:|---:|");
    for t in &tuwen {
        let p = by_work.get(&(t.work.as_str(), None));
        println!(
            "| `{}` | {} | {} | {} |",
            t.work,
            ms(t.ms),
            p.map_or("—".to_string(), |p| ms(p.ms)),
            p.map_or("—".to_string(), |p| format!("{:.2}x", p.ms / t.ms)),
        );
        // A bf16 work against the reference's f32 figure of the same work too.
        if let Some(p) = t
            .work
            .strip_suffix("-bf16")
            .and_then(|f32_work| by_work.get(&(f32_work, None)))
        {
            println!(
                "| `{}` (PyTorch f32: `{}`) | {} | {} | {:.2}x |",
                t.work,
                p.work,
                ms(t.ms),
                ms(p.ms),
                p.ms / t.ms
            );
        }
        for p in torch
            .iter()
            .filter(|p| p.work == t.work && p.variant.is_some())
        {
            println!(
                "| `{}` (PyTorch {}) | {} | {} | {:.2}x |",
                t.work,
                p.variant.as_deref().unwrap_or_default(),
                ms(t.ms),
                ms(p.ms),
                p.ms / t.ms
            );
        }
    }
    println!();
    for t in &tuwen {
        println!("- `{}`: {}", t.work, t.what);
        let side = |name: &str, f: &Figure| {
            format!(
                "{name} median of {} after {} warm-up (min {}, max {}), {} threads, {} parameters{}",
                f.iters,
                f.warmup,
                ms(f.min_ms),
                ms(f.max_ms),
                f.threads,
                f.params,
                f.first_loss
                    .map(|l| format!(", first loss {l:.3}"))
                    .unwrap_or_default()
            )
        };
        println!("  {}", side("tuwen", t));
        if python.is_some() {
            for p in torch.iter().filter(|p| p.work == t.work) {
                let name = match &p.variant {
                    Some(v) => format!("PyTorch {v}"),
                    None => "PyTorch".to_string(),
                };
                println!("  {}", side(&name, p));
                if p.params != t.params {
                    println!(
                        "  WARNING: the models differ: {} parameters in tuwen, {} in {name}",
                        t.params, p.params
                    );
                }
            }
        }
    }
    println!("\nspeed = PyTorch ms / tuwen ms (above 1: tuwen is faster)");
    if python.is_none() {
        println!(
            "PyTorch figures not measured now: the last recorded ones from docs/benchmarks.md \
             (`--torch PYTHON` measures them)"
        );
    }
    Ok(())
}

/// Runs `cmd`, echoing its output, and returns the figures of its JSON lines of `side`.
fn run_json_lines(mut cmd: Command, side: &str) -> Result<Vec<Figure>> {
    cmd.stdout(Stdio::piped());
    let mut child = cmd.spawn().context("cannot start the benchmark")?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut figures = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading the benchmark's output")?;
        println!("{line}");
        let Some(start) = line.find('{') else {
            continue;
        };
        if let Ok(v) = serde_json::from_str::<Value>(&line[start..])
            && v.get("side").and_then(Value::as_str) == Some(side)
            && let Some(f) = Figure::parse(&v)
        {
            figures.push(f);
        }
    }
    let status = child.wait().context("waiting for the benchmark")?;
    if !status.success() {
        bail!("{side}'s side failed ({status})");
    }
    Ok(figures)
}

/// The PyTorch column of the table after [`RECORD_MARKER`] in `doc` (the last one when the file
/// records several), and the text of the line that dates it (`Recorded ...`).
fn recorded(doc: &Path) -> Result<(Vec<Figure>, String)> {
    let text =
        std::fs::read_to_string(doc).with_context(|| format!("reading {}", doc.display()))?;
    let Some(at) = text.rfind(RECORD_MARKER) else {
        bail!(
            "{} records no PyTorch figures (no `{RECORD_MARKER}` table); run with --torch PYTHON",
            doc.display()
        );
    };
    let mut figures = Vec::new();
    let mut note = "last recorded in docs/benchmarks.md".to_string();
    let mut in_table = false;
    for line in text[at + RECORD_MARKER.len()..].lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("Recorded ") {
            let date = rest.split([',', ' ']).next().unwrap_or("");
            note = format!("recorded {date}");
        }
        if !line.starts_with('|') {
            if in_table {
                break;
            }
            continue;
        }
        in_table = true;
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        if cells.len() < 3 {
            continue;
        }
        let Some(work) = cells[0].split('`').nth(1) else {
            continue;
        };
        let variant = cells[0]
            .split_once("(PyTorch ")
            .and_then(|(_, rest)| rest.split_once(')'))
            .map(|(v, _)| v.to_string());
        let Ok(value) = cells[2].replace(',', "").parse::<f64>() else {
            continue;
        };
        figures.push(Figure {
            work: work.to_string(),
            variant,
            what: String::new(),
            ms: value,
            min_ms: f64::NAN,
            max_ms: f64::NAN,
            iters: 0,
            warmup: 0,
            threads: 0,
            params: 0,
            first_loss: None,
        });
    }
    if figures.is_empty() {
        bail!(
            "{}: the table after `{RECORD_MARKER}` has no PyTorch figures",
            doc.display()
        );
    }
    Ok((figures, note))
}

/// Milliseconds as the table shows them: 1,234 / 123 / 12.3.
fn ms(v: f64) -> String {
    if !v.is_finite() {
        return "—".into();
    }
    if v >= 100.0 {
        let n = v.round() as u64;
        let s = n.to_string();
        let mut out = String::new();
        for (i, c) in s.chars().enumerate() {
            if i > 0 && (s.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(c);
        }
        out
    } else {
        format!("{v:.1}")
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits in the workspace")
        .to_path_buf()
}

/// `~/...` expanded (a shell leaves `--torch ~/x` unexpanded after `=`).
fn expand_home(p: &Path) -> PathBuf {
    match (p.strip_prefix("~"), std::env::var_os("HOME")) {
        (Ok(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => p.to_path_buf(),
    }
}

/// `/proc/loadavg`'s three averages ("n/a" elsewhere).
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "n/a".into())
}

/// `git rev-parse --short HEAD`, with `+changes` when the tree differs from it.
fn git_commit(root: &Path) -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(root)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let Some(head) = git(&["rev-parse", "--short", "HEAD"]) else {
        return "unknown".into();
    };
    let dirty =
        git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    if dirty {
        format!("{head}+changes")
    } else {
        head
    }
}

/// The current UTC time, `YYYY-MM-DD HH:MM UTC`.
fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        rem / 3_600,
        rem % 3_600 / 60
    )
}
