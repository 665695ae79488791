//! `tuwen train`: a pretraining run from a TOML configuration, with a progress bar (`indicatif`,
//! on a terminal; one line per report otherwise) and a final summary table.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::tensor::Device;
use indicatif::{ProgressBar, ProgressStyle};
use tuwen_train::config::TrainConfig;
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

/// The configuration and run directory `args` select, checking the directory's state.
pub fn resolve(args: &TrainArgs) -> Result<(TrainConfig, PathBuf)> {
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
    if has_run && !args.resume && !args.overwrite {
        bail!(
            "{} already holds a run: pass --resume to continue it, --overwrite to start again, \
             or choose another --run-dir",
            dir.display()
        );
    }
    if args.overwrite && dir.exists() {
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
/// printing the summary table on `out`.
pub fn train(
    args: &TrainArgs,
    devices: &[Device],
    out: &mut impl Write,
    err: &mut impl Write,
) -> Result<Summary> {
    let (config, dir) = resolve(args)?;
    writeln!(
        err,
        "training {} on {} device(s) into {}",
        architecture(&config),
        devices.len(),
        dir.display()
    )?;
    // A live bar only on a terminal; otherwise (logs, captured output) one line per report.
    let bar = std::io::stderr()
        .is_terminal()
        .then(|| progress_bar(config.run.steps));
    // The first failed write to `err` (a closed pipe, a full disk): the run goes on (its
    // checkpoints and metrics are on disk) and the command then fails with it.
    let mut write_error: Option<std::io::Error> = None;
    let result = pretrain::run(&config, &dir, devices, None, |event| {
        let line = match event {
            Event::Note(note) => Some(note),
            Event::Step(report) => match &bar {
                Some(bar) => {
                    bar.set_length(report.steps as u64);
                    bar.set_position(report.step as u64);
                    bar.set_prefix(speed(&report));
                    bar.set_message(losses(&report));
                    None
                }
                None => Some(progress_line(&report)),
            },
            Event::Eval {
                step,
                metrics,
                best,
            } => Some(format!(
                "eval @ {step}: ITM acc {:.3}  MLM acc {:.3}  colour/shape MLM acc {:.3}{}{}{}{}",
                metrics.itm_accuracy,
                metrics.mlm_accuracy,
                metrics.mlm_color_shape_accuracy,
                if config.data.region_mask_prob > 0.0 {
                    format!("  region acc {:.3}", metrics.region_accuracy)
                } else {
                    String::new()
                },
                if config.data.vqa_weight > 0.0 {
                    format!("  VQA acc {:.3}", metrics.vqa_accuracy)
                } else {
                    String::new()
                },
                if config.model.itc_dim > 0 && config.eval.retrieval_images > 0 {
                    format!(
                        "  R@1 i->t {:.3} t->i {:.3}",
                        metrics.retrieval.image_to_text[0], metrics.retrieval.text_to_image[0]
                    )
                } else {
                    String::new()
                },
                if best { "  (best)" } else { "" }
            )),
        };
        if let Some(line) = line {
            // Above the bar: it is cleared, the line written, the bar redrawn below it.
            let written = match &bar {
                Some(bar) => bar.suspend(|| writeln!(err, "{line}")),
                None => writeln!(err, "{line}"),
            }
            .and_then(|()| err.flush());
            if let Err(e) = written {
                write_error.get_or_insert(e);
            }
        }
    });
    if let Some(bar) = bar {
        // Left on screen as the run's last progress line (also when the run failed).
        bar.abandon();
    }
    let summary = result
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("training run in {}", dir.display()))?;
    if let Some(e) = write_error {
        return Err(anyhow::Error::new(e).context(format!(
            "cannot write training progress (the run in {} finished)",
            dir.display()
        )));
    }
    write!(out, "{}", summary_table(&config, &summary))?;
    Ok(summary)
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
pub fn progress_line(r: &StepReport) -> String {
    format!(
        "step {:>6}/{}  {}  {}",
        r.step,
        r.steps,
        losses(r),
        speed(r)
    )
}

/// `mlm 2.345  itm 0.693 ...` (and the non-finite steps skipped so far, if any).
fn losses(r: &StepReport) -> String {
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
    let mut rows: Vec<(&str, Metric)> = vec![
        ("ITM accuracy", |m| m.itm_accuracy),
        ("MLM accuracy", |m| m.mlm_accuracy),
        ("MLM accuracy, colour/shape words", |m| {
            m.mlm_color_shape_accuracy
        }),
    ];
    if config.data.region_mask_prob > 0.0 {
        rows.push(("region classification accuracy", |m| m.region_accuracy));
    }
    if config.data.vqa_weight > 0.0 {
        rows.push(("VQA accuracy", |m| m.vqa_accuracy));
    }
    if config.model.itc_dim > 0 && config.eval.retrieval_images > 0 {
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
