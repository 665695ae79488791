//! The training loop shared by pretraining and fine-tuning, generic over the [`Task`]: batches
//! built ahead on loader threads, gradients, global-norm clipping, the NaN guard, decoupled
//! weight decay and AdamW per parameter group (frozen, slower, the rest), held-out evaluation on
//! the validation split every `eval.every` steps with `best` / `last` checkpoints, exact resume,
//! `metrics.jsonl` and plots, and the test split once at the end with the model selected on
//! validation.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::Tensor;
use rand::SeedableRng;
use rand::rngs::StdRng;
use tuwen_data::scene::Split;

use crate::checkpoint;
use crate::clip::clip_global_norm;
use crate::config::TrainConfig;
use crate::decay::{apply_weight_decay, decayed_params};
use crate::event::{EvalMetrics, Event, StepReport};
use crate::guard::{NanGuard, StepAction};
use crate::metrics::MetricsLog;
use crate::model::PretrainModel;
use crate::prefetch::Prefetcher;
use crate::pretrain::{RunState, StepLosses, Summary};
use crate::run_dir::RunDir;
use crate::schedule::LrSchedule;

/// Parameter groups of the optimiser step.
#[derive(Clone, Debug, Default)]
pub struct Groups {
    /// Never updated (their gradients are dropped before clipping).
    pub frozen: HashSet<ParamId>,
    /// Updated at `slow_ratio` times the learning rate (a pretrained encoder).
    pub slow: HashSet<ParamId>,
    /// Learning-rate ratio of the `slow` group.
    pub slow_ratio: f64,
}

/// What a task gives the loop.
pub trait Task: Send + Sync + 'static {
    /// A batch, built on loader threads.
    type Batch: Send + 'static;

    /// The batch of training step `step` (a pure function of the seed and the step, so a
    /// resumed run sees the batches the interrupted one would have).
    fn batch(&self, step: usize) -> Result<Self::Batch, String>;

    /// Gradients (summed on the main device) and losses of one step; `seed` seeds its random
    /// draws (dropout).
    fn gradients(
        &self,
        model: &PretrainModel,
        batch: &Self::Batch,
        seed: u64,
    ) -> Result<(GradientsParams, StepLosses), String>;

    /// The loss the NaN guard watches.
    fn total(&self, losses: &StepLosses) -> f32;

    /// The `train/...` values of a logged step.
    fn train_values(
        &self,
        losses: &StepLosses,
        grad_norm: f32,
        lr: f64,
    ) -> Vec<(&'static str, f64)>;

    /// Held-out metrics of `model` (evaluation mode, plain device) on `split`.
    fn evaluate(&self, model: &PretrainModel, split: Split) -> Result<EvalMetrics, String>;

    /// The `metrics.jsonl` values of held-out `metrics` under `prefix` (`eval`, `test`).
    fn metric_values(
        &self,
        prefix: &str,
        metrics: &EvalMetrics,
        model: &PretrainModel,
    ) -> Vec<(String, f64)>;

    /// The parameter groups of `model`.
    fn groups(&self, model: &PretrainModel) -> Groups;

    /// Whether the run has a test split to report at its end.
    fn has_test(&self) -> bool {
        true
    }

    /// The note printed with the test split's metrics.
    fn test_note(&self, step: usize, metrics: &EvalMetrics) -> String;
}

/// Moves the gradients of `ids` out of `grads` into a new set.
pub fn take_grads<M: Module>(
    model: &M,
    grads: &mut GradientsParams,
    ids: &HashSet<ParamId>,
) -> GradientsParams {
    struct Take<'a> {
        from: &'a mut GradientsParams,
        to: GradientsParams,
        ids: &'a HashSet<ParamId>,
    }
    impl ModuleVisitor for Take<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if self.ids.contains(&param.id)
                && let Some(g) = self.from.remove::<D>(param.id)
            {
                self.to.register::<D>(param.id, g);
            }
        }
    }
    let mut t = Take {
        from: grads,
        to: GradientsParams::new(),
        ids,
    };
    model.visit(&mut t);
    t.to
}

/// The examples (`step * batch .. (step + 1) * batch`) and the generator of training step
/// `step`: a pure function of the seed and the step.
pub fn step_examples(seed: u64, step: usize, batch: usize) -> (StdRng, Vec<u64>) {
    let rng = StdRng::seed_from_u64(seed.wrapping_mul(1_000_003) ^ step as u64);
    let b = batch as u64;
    (rng, (0..b).map(|i| step as u64 * b + i).collect())
}

fn values_refs(values: &[(String, f64)]) -> Vec<(&str, f64)> {
    values.iter().map(|(k, v)| (k.as_str(), *v)).collect()
}

/// Trains `model` on `task` in `run_dir` (resuming from its `last` checkpoint when there is one)
/// until `cfg.run.steps`, or `stop_after` steps in total (as an interruption would). `devices`
/// is the number of devices the task spreads a step over (recorded for resumes).
#[allow(clippy::too_many_arguments)]
pub fn train<T: Task>(
    task: Arc<T>,
    mut model: PretrainModel,
    cfg: &TrainConfig,
    run_dir: &RunDir,
    devices: usize,
    stop_after: Option<usize>,
    events: &mut impl FnMut(Event),
) -> Result<Summary, String> {
    for device in model.devices() {
        crate::pretrain::check_precision(cfg.run.precision, &device)?;
    }
    let dir = run_dir.path();
    let ckpt_dir = run_dir.checkpoints();
    let o = &cfg.optim;
    let adamw = AdamWConfig::new()
        .with_beta_1(o.beta1)
        .with_beta_2(o.beta2)
        .with_epsilon(o.epsilon)
        .with_weight_decay(0.0);
    let mut optim = adamw.init();
    let mut state = RunState::default();
    let mut resumed = false;
    if let Some(loaded) =
        checkpoint::load::<_, RunState>(&ckpt_dir, "last", model.clone(), adamw.init())
            .map_err(|e| e.to_string())?
    {
        events(Event::Note(format!(
            "resuming from {} at step {}",
            loaded.path.display(),
            loaded.state.step
        )));
        if loaded.state.devices != 0 && loaded.state.devices != devices {
            events(Event::Note(format!(
                "the run trained on {} device(s) and resumes on {devices}: the micro-batches \
                 change, so the continuation is not bit-identical",
                loaded.state.devices,
            )));
        }
        model = loaded.model;
        optim = loaded.optimizer;
        state = loaded.state;
        resumed = true;
    }
    // In an MPI job every rank must continue the same run (a run directory not shared, or
    // another configuration or device, would silently train N different models).
    crate::distributed::check_agreement(&model, state.step, &cfg.to_toml())?;
    if state.step > cfg.run.steps {
        return Err(format!(
            "{} is already at step {}, beyond run.steps = {}",
            dir.display(),
            state.step,
            cfg.run.steps
        ));
    }
    // Rank 0 of an MPI job writes the directory and evaluates; the others only train.
    let primary = !run_dir.is_follower();
    // Written once the run is known to proceed (a refused resume leaves the saved one).
    if primary {
        checkpoint::write_atomic(&run_dir.config_path(), cfg.to_toml().as_bytes())
            .map_err(|e| e.to_string())?;
    }
    let schedule = LrSchedule {
        peak: o.learning_rate,
        warmup_steps: o.warmup_steps,
        total_steps: cfg.run.steps,
        decay: o.decay,
        final_ratio: o.final_lr_ratio,
    };
    let groups = task.groups(&model);
    let decayed: HashSet<ParamId> = decayed_params(&model)
        .difference(&groups.frozen)
        .copied()
        .collect();
    let (slow_decayed, fast_decayed): (HashSet<ParamId>, HashSet<ParamId>) =
        decayed.into_iter().partition(|id| groups.slow.contains(id));
    let mut guard = NanGuard::new(cfg.run.max_nan_steps);
    guard.skipped = state.skipped;
    let metrics_path = dir.join("metrics.jsonl");
    let metrics_err = |e: std::io::Error| format!("{}: {e}", metrics_path.display());
    let mut log = match (primary, resumed) {
        (false, _) => None,
        (true, true) => Some(MetricsLog::resume(dir, state.metrics_lines).map_err(metrics_err)?),
        (true, false) => Some(MetricsLog::open(dir).map_err(metrics_err)?),
    };
    let start = Instant::now();
    let first = state.step;
    let end = stop_after.unwrap_or(cfg.run.steps).min(cfg.run.steps);
    let build = {
        let task = task.clone();
        Arc::new(move |step: usize| task.batch(step))
    };
    let mut loader = Prefetcher::new(build, state.step, end, cfg.run.loader_threads, 2);
    while state.step < end {
        let step = state.step;
        let batch = loader.next_batch()?;
        let seed = crate::pretrain::step_seed(cfg.run.seed, step);
        let (mut grads, losses) = cfg
            .run
            .precision
            .run(|| task.gradients(&model, &batch, seed))
            .map_err(|e| format!("step {step}: {e}"))?;
        if !groups.frozen.is_empty() {
            take_grads(&model, &mut grads, &groups.frozen);
        }
        let norm = if o.max_grad_norm > 0.0 {
            clip_global_norm(&model, &mut grads, o.max_grad_norm)
        } else {
            crate::clip::global_norm(&model, &grads)
        };
        let lr = schedule.lr(step);
        match guard.observe(step as u64, task.total(&losses), norm) {
            StepAction::Apply => {
                // PyTorch's AdamW order per group: decoupled decay, then the Adam update.
                let slow =
                    (!groups.slow.is_empty()).then(|| take_grads(&model, &mut grads, &groups.slow));
                model = apply_weight_decay(model, &fast_decayed, lr, o.weight_decay);
                model = optim.step(lr, model, grads);
                let slow_lr = lr * groups.slow_ratio;
                if let Some(slow_grads) = slow.filter(|_| slow_lr > 0.0) {
                    model = apply_weight_decay(model, &slow_decayed, slow_lr, o.weight_decay);
                    model = optim.step(slow_lr, model, slow_grads);
                }
                model = model.after_step();
            }
            StepAction::Skip => {}
            StepAction::Abort(msg) => return Err(msg),
        }
        state.step += 1;
        state.skipped = guard.skipped;
        if step % cfg.run.log_every.max(1) == 0 || state.step == cfg.run.steps {
            let elapsed = start.elapsed().as_secs_f64().max(1e-9);
            let rate = (state.step - first) as f64 / elapsed;
            if let Some(log) = log.as_mut() {
                log.log(step as u64, &task.train_values(&losses, norm, lr))
                    .map_err(metrics_err)?;
            }
            events(Event::Step(StepReport {
                step: state.step,
                steps: cfg.run.steps,
                mlm: losses.mlm,
                itm: losses.itm,
                region: losses.region,
                itc: losses.itc,
                vqa: losses.vqa,
                lm: losses.lm,
                itm_accuracy: losses.itm_accuracy,
                grad_norm: norm,
                lr,
                scenes_per_second: rate * cfg.run.batch_size as f64,
                eta_seconds: (cfg.run.steps - state.step) as f64 / rate.max(1e-9),
                skipped: state.skipped,
            }));
        }
        let evaluates = state.step % cfg.eval.every == 0 || state.step == cfg.run.steps;
        if let (true, Some(log)) = (evaluates, log.as_mut()) {
            if !crate::guard::all_finite(&model) {
                return Err(format!(
                    "step {step}: the weights are no longer finite (lower the learning rate); \
                     the last checkpoint in {} is kept",
                    ckpt_dir.display()
                ));
            }
            // Model selection reads the validation split; the test split is read once, at the end.
            state.eval = task.evaluate(&model.valid(), Split::Validation)?;
            let values = task.metric_values("eval", &state.eval, &model);
            log.log(state.step as u64, &values_refs(&values))
                .map_err(metrics_err)?;
            state.metrics_lines = log.lines();
            state.devices = devices;
            let score = state.eval.get(cfg.eval.best);
            let best = state.best.is_none_or(|(_, m)| score > m.get(cfg.eval.best));
            if best {
                state.best = Some((state.step, state.eval));
            }
            // `best` first: a crash between the two leaves `last` at the previous evaluation,
            // which resumes correctly (the best is re-found on the way).
            if best {
                checkpoint::save(&ckpt_dir, "best", &model, &optim, &state)
                    .map_err(|e| e.to_string())?;
            }
            checkpoint::save(&ckpt_dir, "last", &model, &optim, &state)
                .map_err(|e| e.to_string())?;
            events(Event::Eval {
                step: state.step,
                metrics: state.eval,
                best,
            });
        }
    }
    // The test split, once, with the model validation selected (the run's end only: an
    // interrupted run has not chosen yet).
    let test = if state.step == cfg.run.steps && task.has_test() && primary {
        let (step, selected) = match state.best {
            Some((best_step, _)) if best_step != state.step => {
                let best = checkpoint::load_model(&ckpt_dir, "best", model.clone())
                    .map_err(|e| e.to_string())?
                    .ok_or_else(|| {
                        format!("{}: the best checkpoint is missing", ckpt_dir.display())
                    })?;
                (best_step, best)
            }
            _ => (state.step, model.clone()),
        };
        let metrics = task.evaluate(&selected.valid(), Split::Test)?;
        let values = task.metric_values("test", &metrics, &selected);
        if let Some(log) = log.as_mut() {
            log.log(state.step as u64, &values_refs(&values))
                .map_err(metrics_err)?;
        }
        events(Event::Note(task.test_note(step, &metrics)));
        Some((step, metrics))
    } else {
        None
    };
    if let Some(log) = &log {
        log.plot(dir)
            .map_err(|e| format!("plots in {}: {e}", dir.display()))?;
    }
    Ok(Summary {
        eval: state.eval,
        test,
        best: state.best,
        steps: state.step,
        skipped: state.skipped,
        seconds: start.elapsed().as_secs_f64(),
        dir: dir.to_path_buf(),
    })
}
