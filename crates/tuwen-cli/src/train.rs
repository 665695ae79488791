//! `tuwen train`: a pretraining run from a TOML configuration, with a progress bar (`indicatif`,
//! on a terminal; one line per report otherwise) and a final summary table.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::tensor::Device;
use indicatif::{ProgressBar, ProgressStyle};
use tuwen_train::config::{Task, TrainConfig};
use tuwen_train::pretrain::{self, EvalMetrics, Event, StepReport, Summary};

/// How `tuwen train` was asked to run.
#[derive(Clone, Debug, Default)]
pub struct TrainArgs {
    /// TOML configuration (`None`: the built-in default run, `configs/default.toml`).
    pub config: Option<PathBuf>,
    /// Run directory (`None`: `runs/<config name>`).
    pub run_dir: Option<PathBuf>,
    /// Continue the run in `run_dir` from its last checkpoint.
    pub resume: bool,
    /// Delete what `run_dir` holds and start again.
    pub overwrite: bool,
    /// Override `run.steps`.
    pub steps: Option<usize>,
}

/// The configuration and run directory `args` select, checking the directory's state (and
/// emptying it for `--overwrite`).
pub fn resolve(args: &TrainArgs) -> Result<(TrainConfig, PathBuf)> {
    resolve_as(args, true)
}

/// [`resolve`]; `checks_dir = false` (a rank other than 0 of an MPI job) only reads the
/// configuration: rank 0 checks and empties the directory.
fn resolve_as(args: &TrainArgs, checks_dir: bool) -> Result<(TrainConfig, PathBuf)> {
    let name = args
        .config
        .as_ref()
        .and_then(|p| p.file_stem())
        .map_or("default".to_string(), |s| s.to_string_lossy().into_owned());
    let dir = args
        .run_dir
        .clone()
        .unwrap_or_else(|| Path::new("runs").join(&name));
    let saved = dir.join("config.toml");
    let has_run = dir.join("checkpoints").is_dir();
    if checks_dir && has_run && !args.resume && !args.overwrite {
        bail!(
            "{} already holds a run: pass --resume to continue it, --overwrite to start again, \
             or choose another --run-dir",
            dir.display()
        );
    }
    if checks_dir && args.overwrite && dir.exists() {
        // Only a run directory is deleted, never an arbitrary one given by mistake.
        if !(saved.is_file()
            || dir.join("checkpoints").is_dir()
            || dir.join("metrics.jsonl").is_file())
        {
            bail!(
                "{} is not a tuwen run directory (no config.toml, checkpoints/ or metrics.jsonl); \
                 --overwrite deletes run directories only",
                dir.display()
            );
        }
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    let mut config = match (&args.config, args.resume && saved.is_file()) {
        (Some(path), _) => TrainConfig::load(path)?,
        (None, true) => TrainConfig::load(&saved)?,
        (None, false) => TrainConfig::default(),
    };
    if let Some(steps) = args.steps {
        config.run.steps = steps;
    }
    config.validate().map_err(anyhow::Error::msg)?;
    Ok((config, dir))
}

/// Runs `args` on `devices` (the first is the main device), drawing progress on `err` and
/// printing the summary table on `out`. Started by `mpirun` (Open MPI, two or more processes),
/// every process trains its share of each step (`tuwen_train::distributed`); only rank 0 reads
/// `--overwrite`, writes the run directory and prints.
pub fn train(
    args: &TrainArgs,
    devices: &[Device],
    out: &mut impl Write,
    err: &mut impl Write,
) -> Result<Summary> {
    let (rank, ranks) = tuwen_train::distributed::placement().map_err(anyhow::Error::msg)?;
    if rank > 0 {
        let (config, dir) = resolve_as(args, false)?;
        let result = pretrain::run(&config, &dir, devices, None, |_| {});
        return result.map_err(anyhow::Error::msg);
    }
    let (config, dir) = resolve(args)?;
    let processes = if ranks > 1 {
        format!(" x {ranks} MPI processes")
    } else {
        String::new()
    };
    writeln!(
        err,
        "training {} on {} device(s){processes} into {}",
        architecture(&config),
        devices.len(),
        dir.display()
    )?;
    let mut progress = Progress::new(&config, err);
    let result = pretrain::run(&config, &dir, devices, None, |event| progress.event(event));
    let summary = progress.finish(result, &dir)?;
    let comm = tuwen_train::distributed::comm_stats();
    if ranks > 1 && comm.steps > 0 {
        let steps = comm.steps as f64;
        writeln!(
            err,
            "MPI all-reduce (rank 0): {:.2} MB per step, {:.1} ms per step ({:.1}% of the run's \
             wall time, waiting for the slower rank included)",
            comm.bytes as f64 / steps / 1e6,
            comm.seconds / steps * 1e3,
            100.0 * comm.seconds / summary.seconds.max(1e-9)
        )?;
    }
    write!(out, "{}", summary_table(&config, &summary))?;
    Ok(summary)
}

/// How `tuwen finetune` was asked to run.
#[derive(Clone, Debug, Default)]
pub struct FinetuneArgs {
    /// The run settings (`config` is required and must have a `[finetune]` section).
    pub train: TrainArgs,
    /// The pretrained run or HF BERT checkpoint directory (`None`: from scratch).
    pub from: Option<PathBuf>,
}

/// Runs `tuwen finetune` on `device`: progress on `err`, the reuse counts and the summary
/// table on `out`.
pub fn finetune(
    args: &FinetuneArgs,
    device: &Device,
    out: &mut impl Write,
    err: &mut impl Write,
) -> Result<Summary> {
    let (mut config, dir) = resolve(&args.train)?;
    let Some(f) = config.finetune.as_mut() else {
        bail!(
            "{}: no [finetune] section (the task and its data; see configs/easy_vqa.toml)",
            args.train
                .config
                .as_deref()
                .map_or("the configuration".into(), |p| p.display().to_string())
        );
    };
    if let Some(from) = &args.from {
        f.from = Some(from.display().to_string());
    }
    let source = f.from.clone().unwrap_or_else(|| "scratch".into());
    writeln!(
        err,
        "fine-tuning for {:?} from {source} into {}",
        f.task,
        dir.display()
    )?;
    let mut progress = Progress::new(&config, err);
    let result =
        tuwen_train::finetune::run(&config, &dir, std::slice::from_ref(device), None, |e| {
            progress.event(e)
        });
    let (summary, reuse) = progress.finish(result, &dir)?;
    writeln!(
        out,
        "weights from {} (also in {}):",
        reuse.from.as_deref().unwrap_or("scratch"),
        dir.join("reuse.json").display()
    )?;
    for (what, names) in [
        ("reused", &reuse.reused),
        (
            "kept unchanged (pretraining heads the task does not use)",
            &reuse.kept,
        ),
        ("new", &reuse.new),
        ("dropped", &reuse.dropped),
    ] {
        writeln!(out, "  {} tensors {what}", names.len())?;
        for name in names {
            writeln!(out, "    {name}")?;
        }
    }
    write!(out, "{}", summary_table(&config, &summary))?;
    Ok(summary)
}

/// Progress of a run on `err`: a live bar on a terminal, one line per report otherwise, notes
/// and evaluations above the bar.
struct Progress<'a, W: Write> {
    finetune: Option<Task>,
    extras: Extras,
    bar: Option<ProgressBar>,
    err: &'a mut W,
    // The first failed write to `err` (a closed pipe, a full disk): the run goes on (its
    // checkpoints and metrics are on disk) and the command then fails with it.
    write_error: Option<std::io::Error>,
}

/// Which optional metrics a run reports.
#[derive(Clone, Copy)]
struct Extras {
    region: bool,
    vqa: bool,
    retrieval: bool,
}

impl<'a, W: Write> Progress<'a, W> {
    fn new(config: &TrainConfig, err: &'a mut W) -> Self {
        Self {
            finetune: config.finetune.as_ref().map(|f| f.task),
            extras: Extras {
                region: config.data.region_mask_prob > 0.0,
                vqa: config.data.vqa_weight > 0.0,
                retrieval: config.model.itc_dim > 0 && config.eval.retrieval_images > 0,
            },
            // A live bar only on a terminal; otherwise (logs, captured output) one line per report.
            bar: std::io::stderr()
                .is_terminal()
                .then(|| progress_bar(config.run.steps)),
            err,
            write_error: None,
        }
    }

    fn event(&mut self, event: Event) {
        let line = match event {
            Event::Note(note) => Some(note),
            Event::Step(report) => match &self.bar {
                Some(bar) => {
                    bar.set_length(report.steps as u64);
                    bar.set_position(report.step as u64);
                    bar.set_prefix(speed(&report));
                    bar.set_message(losses(&report, self.finetune));
                    None
                }
                None => Some(progress_line(&report, self.finetune)),
            },
            Event::Eval {
                step,
                metrics,
                best,
            } => Some(format!(
                "eval @ {step}: {}{}",
                eval_line(&metrics, self.finetune, self.extras),
                if best { "  (best)" } else { "" }
            )),
        };
        if let Some(line) = line {
            // Above the bar: it is cleared, the line written, the bar redrawn below it.
            let err = &mut *self.err;
            let written = match &self.bar {
                Some(bar) => bar.suspend(|| writeln!(err, "{line}")),
                None => writeln!(err, "{line}"),
            }
            .and_then(|()| err.flush());
            if let Err(e) = written {
                self.write_error.get_or_insert(e);
            }
        }
    }

    /// The run's result, or its error; a failed progress write fails the command after the run.
    fn finish<T>(self, result: Result<T, String>, dir: &Path) -> Result<T> {
        if let Some(bar) = self.bar {
            // Left on screen as the run's last progress line (also when the run failed).
            bar.abandon();
        }
        let value = result
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("training run in {}", dir.display()))?;
        if let Some(e) = self.write_error {
            return Err(anyhow::Error::new(e).context(format!(
                "cannot write training progress (the run in {} finished)",
                dir.display()
            )));
        }
        Ok(value)
    }
}

/// The held-out metrics of one evaluation, as one line.
fn eval_line(m: &EvalMetrics, finetune: Option<Task>, extras: Extras) -> String {
    match finetune {
        Some(Task::Vqa) => return format!("VQA acc {:.4}", m.vqa_accuracy),
        Some(Task::Caption) => {
            return format!(
                "BLEU-4 {:.4}  CIDEr {:.4}  next-token acc {:.3}",
                m.bleu4, m.cider, m.lm_accuracy
            );
        }
        Some(Task::Retrieval) => {
            let r = &m.retrieval;
            return format!(
                "R@1/5/10 i->t {:.3}/{:.3}/{:.3}  t->i {:.3}/{:.3}/{:.3}",
                r.image_to_text[0],
                r.image_to_text[1],
                r.image_to_text[2],
                r.text_to_image[0],
                r.text_to_image[1],
                r.text_to_image[2]
            );
        }
        None => {}
    }
    let mut line = format!(
        "ITM acc {:.3}  MLM acc {:.3}  colour/shape MLM acc {:.3}",
        m.itm_accuracy, m.mlm_accuracy, m.mlm_color_shape_accuracy
    );
    if extras.region {
        line.push_str(&format!("  region acc {:.3}", m.region_accuracy));
    }
    if extras.vqa {
        line.push_str(&format!("  VQA acc {:.3}", m.vqa_accuracy));
    }
    if extras.retrieval {
        line.push_str(&format!(
            "  R@1 i->t {:.3} t->i {:.3}",
            m.retrieval.image_to_text[0], m.retrieval.text_to_image[0]
        ));
    }
    line
}

fn architecture(config: &TrainConfig) -> String {
    let m = &config.model;
    match m.architecture {
        tuwen_train::config::Architecture::VisualBert => match &m.init {
            Some(init) => format!("VisualBERT initialised from {init}"),
            None => format!("VisualBERT ({} wide, {} layers)", m.hidden_size, m.layers),
        },
        tuwen_train::config::Architecture::Vilbert => format!(
            "ViLBERT ({} + {} layers, {} co-attention)",
            m.layers, m.v_layers, m.co_layers
        ),
        tuwen_train::config::Architecture::Lxmert => format!(
            "LXMERT ({} language + {} relational layers, {} cross-modality)",
            m.layers, m.v_layers, m.co_layers
        ),
    }
}

/// The terminal progress bar (`indicatif`): bar, step/steps, [`speed`], then [`losses`] cut to
/// the terminal's width (so the bar never wraps).
fn progress_bar(steps: usize) -> ProgressBar {
    let style =
        ProgressStyle::with_template("{bar:20.cyan/blue} {pos:>6}/{len}  {prefix}  {wide_msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
    ProgressBar::new(steps as u64).with_style(style)
}

/// The line printed per report when stderr is not a terminal:
/// `step step/steps  losses  throughput  ETA`.
pub fn progress_line(r: &StepReport, finetune: Option<Task>) -> String {
    format!(
        "step {:>6}/{}  {}  {}",
        r.step,
        r.steps,
        losses(r, finetune),
        speed(r)
    )
}

/// `mlm 2.345  itm 0.693 ...` (and the non-finite steps skipped so far, if any).
fn losses(r: &StepReport, finetune: Option<Task>) -> String {
    match finetune {
        Some(Task::Vqa) => return format!("vqa {:.4}", r.vqa),
        Some(Task::Caption) => return format!("lm {:.4}", r.lm),
        Some(Task::Retrieval) => return format!("itm {:.4}  itc {:.4}", r.itm, r.itc),
        None => {}
    }
    let mut line = format!("mlm {:.3}  itm {:.3}", r.mlm, r.itm);
    if r.region > 0.0 {
        line.push_str(&format!("  region {:.3}", r.region));
    }
    if r.itc > 0.0 {
        line.push_str(&format!("  itc {:.3}", r.itc));
    }
    if r.vqa > 0.0 {
        line.push_str(&format!("  vqa {:.3}", r.vqa));
    }
    if r.skipped > 0 {
        line.push_str(&format!("  ({} non-finite steps skipped)", r.skipped));
    }
    line
}

/// `321.0 scenes/s  ETA 1m05s`.
fn speed(r: &StepReport) -> String {
    let eta = r.eta_seconds.round() as u64;
    format!(
        "{:.1} scenes/s  ETA {}m{:02}s",
        r.scenes_per_second,
        eta / 60,
        eta % 60
    )
}

/// Reads one metric.
type Metric = fn(&EvalMetrics) -> f32;

/// The final table: validation metrics at the end and at the best checkpoint, and the test
/// split's metrics of the selected model (when the run reached its last step).
pub fn summary_table(config: &TrainConfig, s: &Summary) -> String {
    let best = s.best.map(|(_, m)| m).unwrap_or_default();
    let best_step = s.best.map_or("-".to_string(), |(step, _)| step.to_string());
    let mut rows: Vec<(&str, Metric)> = match config.finetune.as_ref().map(|f| f.task) {
        Some(Task::Vqa) => vec![("VQA accuracy", |m| m.vqa_accuracy)],
        Some(Task::Caption) => vec![
            ("BLEU-4 (greedy)", |m| m.bleu4),
            ("CIDEr-D (greedy)", |m| m.cider),
            ("next-token accuracy", |m| m.lm_accuracy),
        ],
        // The recall rows below.
        Some(Task::Retrieval) => Vec::new(),
        None => vec![
            ("ITM accuracy", |m| m.itm_accuracy),
            ("MLM accuracy", |m| m.mlm_accuracy),
            ("MLM accuracy, colour/shape words", |m| {
                m.mlm_color_shape_accuracy
            }),
        ],
    };
    if config.data.region_mask_prob > 0.0 {
        rows.push(("region classification accuracy", |m| m.region_accuracy));
    }
    if config.data.vqa_weight > 0.0 && config.finetune.is_none() {
        rows.push(("VQA accuracy", |m| m.vqa_accuracy));
    }
    let retrieval_task = config
        .finetune
        .as_ref()
        .is_some_and(|f| f.task == Task::Retrieval);
    if retrieval_task || (config.model.itc_dim > 0 && config.eval.retrieval_images > 0) {
        rows.extend([
            (
                "image->text R@1",
                (|m| m.retrieval.image_to_text[0]) as Metric,
            ),
            ("image->text R@5", |m| m.retrieval.image_to_text[1]),
            ("image->text R@10", |m| m.retrieval.image_to_text[2]),
            ("text->image R@1", |m| m.retrieval.text_to_image[0]),
            ("text->image R@5", |m| m.retrieval.text_to_image[1]),
            ("text->image R@10", |m| m.retrieval.text_to_image[2]),
        ]);
    }
    let mut t = String::new();
    t.push_str(&format!(
        "\nrun        {}\nsteps      {} ({} non-finite skipped) in {:.0} s\ncheckpoints {}/checkpoints/{{last,best}}\n\n",
        s.dir.display(),
        s.steps,
        s.skipped,
        s.seconds,
        s.dir.display()
    ));
    let test_header = s
        .test
        .map_or(String::new(), |(step, _)| format!("test @ {step}"));
    t.push_str(&format!(
        "{:<34} {:>8} {:>14} {:>12}\n",
        "held-out metric",
        "val final",
        format!("val best @ {best_step}"),
        test_header
    ));
    for (name, get) in rows {
        let test = s
            .test
            .map_or(String::new(), |(_, m)| format!("{:.3}", get(&m)));
        t.push_str(&format!(
            "{:<34} {:>8.3} {:>14.3} {:>12}\n",
            name,
            get(&s.eval),
            get(&best),
            test
        ));
    }
    t
}
