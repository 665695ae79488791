//! `tuwen train`: a pretraining run from a TOML configuration, with a progress bar and a final
//! summary table.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::tensor::Device;
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
    let tty = std::io::stderr().is_terminal();
    writeln!(
        err,
        "training {} on {} device(s) into {}",
        architecture(&config),
        devices.len(),
        dir.display()
    )?;
    let mut last_line_open = false;
    let summary = pretrain::run(&config, &dir, devices, None, |event| {
        let _ = match event {
            Event::Note(note) => writeln!(err, "{}{note}", newline(&mut last_line_open)),
            Event::Step(report) => {
                let bar = progress_line(&report);
                if tty {
                    last_line_open = true;
                    write!(err, "\r{bar}\x1b[K")
                } else {
                    writeln!(err, "{bar}")
                }
            }
            Event::Eval {
                step,
                metrics,
                best,
            } => writeln!(
                err,
                "{}eval @ {step}: ITM acc {:.3}  MLM acc {:.3}  colour/shape MLM acc {:.3}{}{}{}{}",
                newline(&mut last_line_open),
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
            ),
        };
        let _ = err.flush();
    })
    .map_err(anyhow::Error::msg)
    .with_context(|| format!("training run in {}", dir.display()))?;
    if last_line_open {
        writeln!(err)?;
    }
    write!(out, "{}", summary_table(&config, &summary))?;
    Ok(summary)
}

fn newline(open: &mut bool) -> &'static str {
    if std::mem::take(open) { "\n" } else { "" }
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

/// `[#####.....] step/steps  losses  throughput  ETA`.
pub fn progress_line(r: &StepReport) -> String {
    let width = 24;
    let filled = (r.step * width / r.steps.max(1)).min(width);
    let eta = r.eta_seconds.round() as u64;
    let mut line = format!(
        "[{}{}] {:>6}/{}  mlm {:.3}  itm {:.3}",
        "#".repeat(filled),
        ".".repeat(width - filled),
        r.step,
        r.steps,
        r.mlm,
        r.itm
    );
    if r.region > 0.0 {
        line.push_str(&format!("  region {:.3}", r.region));
    }
    if r.itc > 0.0 {
        line.push_str(&format!("  itc {:.3}", r.itc));
    }
    if r.vqa > 0.0 {
        line.push_str(&format!("  vqa {:.3}", r.vqa));
    }
    line.push_str(&format!(
        "  {:.1} scenes/s  ETA {}m{:02}s",
        r.scenes_per_second,
        eta / 60,
        eta % 60
    ));
    if r.skipped > 0 {
        line.push_str(&format!("  ({} non-finite steps skipped)", r.skipped));
    }
    line
}

/// Reads one metric.
type Metric = fn(&EvalMetrics) -> f32;

/// The final table: held-out metrics at the end and at the best checkpoint.
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
    t.push_str(&format!(
        "{:<34} {:>8} {:>14}\n",
        "held-out metric",
        "final",
        format!("best @ {best_step}")
    ));
    for (name, get) in rows {
        t.push_str(&format!(
            "{:<34} {:>8.3} {:>14.3}\n",
            name,
            get(&s.eval),
            get(&best)
        ));
    }
    t
}
