//! Data parallelism across processes: `mpirun -np N tuwen train` (Open MPI, the `mpi` feature).
//!
//! Every rank draws the whole batch of each step (a pure function of the seed and the step: no
//! data is sent) but reads the region features of its own rows only
//! ([`crate::pretrain::own_rows`], [`crate::batch::Shard`]: the other rows' captions and masks
//! are drawn alike, so every rank's parts are those of one process), splits it into
//! `N x devices x micro-batches` parts as one process would, and
//! computes the gradients of its own contiguous parts, each weighted by its share of the whole
//! batch's items; the gradients are then summed over the ranks (every gradient in one flat
//! buffer, sent in buckets of [`tuwen_mpi::BUCKET`] values; then the step's losses in a second,
//! small all-reduce), so every rank applies the same update: `N` ranks x `b` rows train as one
//! process with `N x b` rows split into the same parts. Before the first step the ranks check
//! that they continue the same run ([`check_agreement`]).
//!
//! A library caller running [`crate::pretrain::run`] under `mpirun` must end the job when it
//! fails on one rank ([`abort_job`]), as `tuwen train` does: the other ranks would otherwise wait
//! in the next collective. Rank 0 writes the run directory (configuration, vocabulary,
//! metrics, checkpoints, plots) and evaluates; the others follow ([`RunDir::follower`]) and read
//! the same checkpoint to resume.
//!
//! [`RunDir::follower`]: crate::run_dir::RunDir::follower

use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Tensor, TensorData};

use crate::flat::FlatGrads;
use crate::model::PretrainModel;
use crate::pretrain::StepLosses;

#[cfg(feature = "mpi")]
pub use tuwen_mpi::World;

/// Stand-in for `tuwen_mpi::World` in builds without the `mpi` feature (never constructed).
#[cfg(not(feature = "mpi"))]
#[derive(Debug)]
pub enum World {}

#[cfg(not(feature = "mpi"))]
impl World {
    /// This process's rank.
    pub fn rank(&self) -> usize {
        match *self {}
    }
    /// Processes in the job.
    pub fn size(&self) -> usize {
        match *self {}
    }
    /// Ends the job.
    pub fn abort(&self, _message: &str, _code: i32) -> ! {
        match *self {}
    }
    fn barrier(&self) -> Result<(), String> {
        match *self {}
    }
    fn allreduce_sum(&self, _values: &mut [f32]) -> Result<(), String> {
        match *self {}
    }
    fn allreduce_sum_f64(&self, _values: &mut [f64]) -> Result<(), String> {
        match *self {}
    }
    fn finalize(&self) -> Result<(), String> {
        match *self {}
    }
    fn agree(&self, _values: &[f64]) -> Result<bool, String> {
        match *self {}
    }
}

static WORLD: OnceLock<Result<Option<World>, String>> = OnceLock::new();

static STATS: Mutex<CommStats> = Mutex::new(CommStats {
    steps: 0,
    bytes: 0,
    seconds: 0.0,
});

/// What this process's gradient all-reduces cost so far.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CommStats {
    /// Steps all-reduced.
    pub steps: u64,
    /// Bytes this process contributed (gradients as `f32`, losses and flags as `f64`).
    pub bytes: u64,
    /// Wall time inside the all-reduce calls (waiting for slower ranks included).
    pub seconds: f64,
}

/// The all-reduce costs of this process so far (zero alone).
pub fn comm_stats() -> CommStats {
    *STATS.lock().unwrap_or_else(|e| e.into_inner())
}

/// The MPI job this process belongs to: `None` when it runs alone; initialised (MPI_Init) on the
/// first call. An error when `mpirun` started it but MPI cannot be used (or the build lacks the
/// `mpi` feature).
pub fn world() -> Result<Option<&'static World>, String> {
    WORLD
        .get_or_init(init)
        .as_ref()
        .map(Option::as_ref)
        .map_err(Clone::clone)
}

#[cfg(feature = "mpi")]
fn init() -> Result<Option<World>, String> {
    World::from_env().map_err(|e| e.to_string())
}

#[cfg(not(feature = "mpi"))]
fn init() -> Result<Option<World>, String> {
    match std::env::var("OMPI_COMM_WORLD_SIZE") {
        Ok(n) if n.trim() != "1" => Err(format!(
            "started by mpirun with {n} processes, but this tuwen was built without the `mpi` \
             feature: rebuild with it (on by default in tuwen-cli) or run without mpirun"
        )),
        _ => Ok(None),
    }
}

/// `(rank, size)` of this process (`(0, 1)` alone).
pub fn placement() -> Result<(usize, usize), String> {
    Ok(world()?.map_or((0, 1), |w| (w.rank(), w.size())))
}

/// Waits for every rank (nothing alone).
pub fn barrier() -> Result<(), String> {
    match world()? {
        Some(w) => w.barrier().map_err(|e| e.to_string()),
        None => Ok(()),
    }
}

/// Ends MPI before a successful exit (nothing alone). Every rank must call it once its last
/// collective is done.
pub fn finalize() -> Result<(), String> {
    match world()? {
        Some(w) => w.finalize().map_err(|e| e.to_string()),
        None => Ok(()),
    }
}

/// Ends the whole MPI job after `message` when this process is one of its ranks (so the others
/// never wait for it); alone, returns and the caller reports the error.
pub fn abort_job(message: &str) {
    if let Ok(Some(w)) = world() {
        w.abort(message, 1);
    }
}

/// Checks that every rank starts training from the same state: the same step, configuration
/// and weights (a fingerprint of each, compared across the ranks). Alone, nothing to check.
/// Every rank must call it (a collective); every rank gets the same answer.
pub fn check_agreement(model: &PretrainModel, step: usize, config: &str) -> Result<(), String> {
    use std::hash::{Hash, Hasher};
    let Some(world) = world()? else {
        return Ok(());
    };
    struct Fingerprint(std::collections::hash_map::DefaultHasher);
    impl ModuleVisitor for Fingerprint {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let v: Vec<f32> = tuwen_weights::host::computed(param.val().into_data(), "weights");
            v.iter().for_each(|x: &f32| x.to_bits().hash(&mut self.0));
        }
    }
    let mut weights = Fingerprint(Default::default());
    model.visit(&mut weights);
    let mut text = std::collections::hash_map::DefaultHasher::new();
    config.hash(&mut text);
    // 32-bit halves: exact in f64.
    let halves = |h: u64| [(h >> 32) as f64, (h & 0xffff_ffff) as f64];
    let mut values = vec![step as f64];
    values.extend(halves(text.finish()));
    values.extend(halves(weights.0.finish()));
    if world.agree(&values).map_err(|e| e.to_string())? {
        Ok(())
    } else {
        Err(format!(
            "the {} processes of this MPI job start from different states (step, configuration \
             or weights differ; rank {} is at step {step}): every rank must read the same run \
             directory (a file system all machines share), the same configuration file and the \
             same --device",
            world.size(),
            world.rank()
        ))
    }
}

/// The gradients and losses of the whole step: this rank's `grads` and `losses` summed over the
/// ranks (unchanged alone). A parameter has a gradient afterwards when any rank had one (so the
/// optimiser skips exactly the parameters a single process would skip).
pub fn allreduce(
    model: &PretrainModel,
    grads: GradientsParams,
    losses: StepLosses,
) -> Result<(GradientsParams, StepLosses), String> {
    let Some(world) = world()? else {
        return Ok((grads, losses));
    };
    let sizes = crate::flat::sizes(model);
    let flat = crate::flat::gather_grads(model, &grads);
    let (mut values, present) = expand(flat, &sizes);
    let mut scalars = losses.to_array().to_vec();
    scalars.extend(present.iter().map(|&p| f64::from(u8::from(p))));
    let start = Instant::now();
    world
        .allreduce_sum(&mut values)
        .map_err(|e| e.to_string())?;
    world
        .allreduce_sum_f64(&mut scalars)
        .map_err(|e| e.to_string())?;
    {
        let mut stats = STATS.lock().unwrap_or_else(|e| e.into_inner());
        stats.steps += 1;
        stats.bytes += (values.len() * 4 + scalars.len() * 8) as u64;
        stats.seconds += start.elapsed().as_secs_f64();
    }
    let present: Vec<bool> = scalars[StepLosses::FIELDS..]
        .iter()
        .map(|&p| p > 0.0)
        .collect();
    let grads = crate::flat::scatter_grads(model, compact(&values, &sizes, present, model));
    let losses = StepLosses::from_array(&scalars[..StepLosses::FIELDS]);
    Ok((grads, losses))
}

/// This rank's gradients as one host buffer over every parameter (read back in one transfer:
/// one synchronisation on a GPU, not one per parameter), zeros where it has none, and which
/// parameters have one.
fn expand(flat: FlatGrads, sizes: &[usize]) -> (Vec<f32>, Vec<bool>) {
    let mine: Vec<f32> = flat.values.map_or_else(Vec::new, |v| {
        tuwen_weights::host::computed(v.into_data(), "gradient")
    });
    let mut values = Vec::with_capacity(sizes.iter().sum());
    let mut offset = 0;
    for (&n, &has) in sizes.iter().zip(&flat.present) {
        if has {
            values.extend_from_slice(&mine[offset..offset + n]);
            offset += n;
        } else {
            values.extend(std::iter::repeat_n(0.0, n));
        }
    }
    (values, flat.present)
}

/// The summed buffer's `present` gradients, uploaded in one transfer to `model`'s device.
fn compact(
    values: &[f32],
    sizes: &[usize],
    present: Vec<bool>,
    model: &PretrainModel,
) -> FlatGrads {
    let mut kept = Vec::new();
    let mut offset = 0;
    for (&n, &has) in sizes.iter().zip(&present) {
        if has {
            kept.extend_from_slice(&values[offset..offset + n]);
        }
        offset += n;
    }
    let values = (!kept.is_empty()).then(|| {
        let device = model
            .devices()
            .into_iter()
            .next()
            .expect("a model has a device");
        let len = kept.len();
        Tensor::from_data(TensorData::new(kept, [len]), &device.inner())
    });
    FlatGrads { values, present }
}
