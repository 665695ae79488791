//! The MPI collectives data-parallel training needs — rank, size, sum all-reduce, barrier,
//! abort — over the system's Open MPI, loaded at run time.
//!
//! Written by hand rather than with the `mpi` crate: that crate generates its bindings with
//! bindgen (libclang and the MPI headers at build time) and its dependencies change the feature
//! sets of crates Burn shares, which rebuilds Burn (~40 minutes on the development machine).
//! Loading `libmpi.so.40` with `dlopen` needs neither: a build without MPI installed runs single
//! process, and a process started by `mpirun` finds the library the launcher itself uses.
//! Open MPI only: its handles (`MPI_COMM_WORLD`, `MPI_FLOAT`, `MPI_SUM`) are the addresses of
//! exported objects, which `dlsym` gives; MPICH's are integer constants of another ABI.
//!
//! ```no_run
//! let world = tuwen_mpi::World::from_env().unwrap().expect("started by mpirun");
//! let mut grads = vec![1.0f32; 10];
//! world.allreduce_sum(&mut grads).unwrap();
//! assert_eq!(grads[0], world.size() as f32);
//! ```

use std::ffi::{c_int, c_void};
use std::time::{Duration, Instant};

use libloading::os::unix::{Library, RTLD_GLOBAL, RTLD_NOW, Symbol};

/// Elements per all-reduce message: gradients go in buckets of this many `f32`s (64 MiB), so a
/// step sends a few large messages, not one per tensor.
pub const BUCKET: usize = 16 << 20;

/// Why MPI could not be used.
#[derive(Debug, thiserror::Error)]
pub enum MpiError {
    /// The launcher's library could not be loaded.
    #[error(
        "started by mpirun (OMPI_COMM_WORLD_SIZE = {size}) but Open MPI's libmpi could not be \
         loaded ({reason}); install it (Debian: apt-get install libopenmpi-dev openmpi-bin) or \
         run without mpirun"
    )]
    Load {
        /// World size the launcher announced.
        size: String,
        /// The loader's message.
        reason: String,
    },
    /// A launcher other than Open MPI's.
    #[error(
        "started as one of several tasks by a launcher other than Open MPI's mpirun ({0} is \
         set above 1, OMPI_COMM_WORLD_SIZE is not): tuwen's MPI support loads Open MPI's libmpi; \
         run with Open MPI's mpirun"
    )]
    NotOpenMpi(&'static str),
    /// MPI cannot serve calls from the main thread while other threads run.
    #[error("Open MPI provides thread level {0}; tuwen needs MPI_THREAD_FUNNELED (1)")]
    ThreadLevel(c_int),
    /// An MPI call returned an error code.
    #[error("{call} failed with MPI error code {code}")]
    Call {
        /// The MPI function.
        call: &'static str,
        /// Its return code.
        code: c_int,
    },
}

type Handle = *const c_void;

/// The MPI functions used, resolved once.
struct Api {
    comm_world: Handle,
    float: Handle,
    double: Handle,
    sum: Handle,
    min: Handle,
    max: Handle,
    allreduce: Symbol<
        unsafe extern "C" fn(*const c_void, *mut c_void, c_int, Handle, Handle, Handle) -> c_int,
    >,
    barrier: Symbol<unsafe extern "C" fn(Handle) -> c_int>,
    abort: Symbol<unsafe extern "C" fn(Handle, c_int) -> c_int>,
    finalize: Symbol<unsafe extern "C" fn() -> c_int>,
}

/// This process's place in an MPI job (`MPI_COMM_WORLD`), initialised by
/// [`World::from_env`]; call [`World::finalize`] before a successful exit.
pub struct World {
    rank: usize,
    size: usize,
    api: Api,
    // Kept loaded for the symbols above.
    _lib: Library,
}

impl std::fmt::Debug for World {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("World")
            .field("rank", &self.rank)
            .field("size", &self.size)
            .finish()
    }
}

// MPI is initialised at MPI_THREAD_FUNNELED: only the thread that initialised it (the training
// loop's, the main thread) calls into it, while loader, rayon and GPU threads run beside it.
unsafe impl Send for World {}
unsafe impl Sync for World {}

impl World {
    /// The job this process belongs to when `mpirun` started it with two or more processes;
    /// `None` when it runs alone (no launcher, or a world of one). Initialises MPI.
    pub fn from_env() -> Result<Option<World>, MpiError> {
        let Ok(size) = std::env::var("OMPI_COMM_WORLD_SIZE") else {
            // Several tasks started by another launcher (MPICH's, Slurm's srun): they would
            // each train the whole run into the same directory.
            for other in [
                "PMI_SIZE",
                "PMIX_SIZE",
                "MPI_LOCALNRANKS",
                "SLURM_NTASKS",
                "SLURM_STEP_NUM_TASKS",
            ] {
                let several = std::env::var(other)
                    .ok()
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .is_some_and(|n| n > 1);
                if several {
                    return Err(MpiError::NotOpenMpi(other));
                }
            }
            return Ok(None);
        };
        if size.trim() == "1" {
            return Ok(None);
        }
        let load = |reason: String| MpiError::Load {
            size: size.clone(),
            reason,
        };
        let lib = ["libmpi.so.40", "libmpi.so"]
            .iter()
            // RTLD_GLOBAL: Open MPI's own plugins resolve libmpi's symbols through it.
            .find_map(|name| unsafe { Library::open(Some(name), RTLD_NOW | RTLD_GLOBAL).ok() })
            .ok_or_else(|| load("neither libmpi.so.40 nor libmpi.so was found".into()))?;
        let api = unsafe { Api::resolve(&lib) }.map_err(|e| load(e.to_string()))?;
        let init: Symbol<
            unsafe extern "C" fn(*mut c_int, *mut c_void, c_int, *mut c_int) -> c_int,
        > = unsafe { lib.get(b"MPI_Init_thread\0") }.map_err(|e| load(e.to_string()))?;
        let rank_of: Symbol<unsafe extern "C" fn(Handle, *mut c_int) -> c_int> =
            unsafe { lib.get(b"MPI_Comm_rank\0") }.map_err(|e| load(e.to_string()))?;
        let size_of: Symbol<unsafe extern "C" fn(Handle, *mut c_int) -> c_int> =
            unsafe { lib.get(b"MPI_Comm_size\0") }.map_err(|e| load(e.to_string()))?;
        let (mut rank, mut world, mut provided) = (0, 0, 0);
        const MPI_THREAD_FUNNELED: c_int = 1;
        unsafe {
            check(
                "MPI_Init_thread",
                init(
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    MPI_THREAD_FUNNELED,
                    &mut provided,
                ),
            )?;
            if provided < MPI_THREAD_FUNNELED {
                return Err(MpiError::ThreadLevel(provided));
            }
            check("MPI_Comm_rank", rank_of(api.comm_world, &mut rank))?;
            check("MPI_Comm_size", size_of(api.comm_world, &mut world))?;
        }
        Ok(Some(World {
            rank: rank as usize,
            size: world as usize,
            api,
            _lib: lib,
        }))
    }

    /// This process's rank, `0..size`.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Processes in the job.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Replaces `values` on every rank by their sum over the ranks (`MPI_Allreduce`, `MPI_SUM`),
    /// in messages of at most [`BUCKET`] values. Every rank gets the same result.
    pub fn allreduce_sum(&self, values: &mut [f32]) -> Result<(), MpiError> {
        let mut out = vec![0.0f32; values.len().min(BUCKET)];
        for chunk in values.chunks_mut(BUCKET) {
            let out = &mut out[..chunk.len()];
            self.allreduce(chunk, out, self.api.float, self.api.sum)?;
            chunk.copy_from_slice(out);
        }
        Ok(())
    }

    /// [`World::allreduce_sum`] for `f64` values (one message; small arrays: losses, counts).
    pub fn allreduce_sum_f64(&self, values: &mut [f64]) -> Result<(), MpiError> {
        let mut out = vec![0.0f64; values.len()];
        self.allreduce(values, &mut out, self.api.double, self.api.sum)?;
        values.copy_from_slice(&out);
        Ok(())
    }

    /// Whether every rank passed the same `values` (element by element: the minimum over the
    /// ranks equals the maximum). Every rank gets the same answer.
    pub fn agree(&self, values: &[f64]) -> Result<bool, MpiError> {
        let mut low = vec![0.0f64; values.len()];
        let mut high = vec![0.0f64; values.len()];
        self.allreduce(values, &mut low, self.api.double, self.api.min)?;
        self.allreduce(values, &mut high, self.api.double, self.api.max)?;
        Ok(low == high)
    }

    /// `MPI_Allreduce(send, recv, len, datatype, op, MPI_COMM_WORLD)`; `datatype` must describe
    /// `T` (`float` for `f32`, `double` for `f64`) and `send` fit in one message.
    fn allreduce<T>(
        &self,
        send: &[T],
        recv: &mut [T],
        datatype: Handle,
        op: Handle,
    ) -> Result<(), MpiError> {
        assert_eq!(send.len(), recv.len());
        let count = c_int::try_from(send.len()).map_err(|_| MpiError::Call {
            call: "MPI_Allreduce (message too large)",
            code: -1,
        })?;
        // SAFETY: both buffers hold `count` elements of the type `datatype` names.
        unsafe {
            check(
                "MPI_Allreduce",
                (self.api.allreduce)(
                    send.as_ptr().cast(),
                    recv.as_mut_ptr().cast(),
                    count,
                    datatype,
                    op,
                    self.api.comm_world,
                ),
            )
        }
    }

    /// Waits until every rank has called it.
    pub fn barrier(&self) -> Result<(), MpiError> {
        unsafe { check("MPI_Barrier", (self.api.barrier)(self.api.comm_world)) }
    }

    /// Ends the whole job with exit status `code` (every rank), after printing `message` on
    /// this rank's stderr: what a rank that fails calls, so the others do not wait for it.
    pub fn abort(&self, message: &str, code: i32) -> ! {
        eprintln!("error (rank {} of {}): {message}", self.rank, self.size);
        unsafe {
            (self.api.abort)(self.api.comm_world, code);
        }
        std::process::exit(code)
    }

    /// Ends MPI in this process (`MPI_Finalize`); every rank calls it once, after its last
    /// collective, before exiting with success (a process that exits without it is taken by
    /// `mpirun` for a failed one).
    pub fn finalize(&self) -> Result<(), MpiError> {
        unsafe { check("MPI_Finalize", (self.api.finalize)()) }
    }

    /// Seconds an all-reduce of `values` takes on average over `repeats` (for the scaling
    /// figures; every rank must call it).
    pub fn time_allreduce(&self, values: usize, repeats: usize) -> Result<Duration, MpiError> {
        let mut buf = vec![1.0f32; values];
        self.barrier()?;
        let start = Instant::now();
        for _ in 0..repeats.max(1) {
            self.allreduce_sum(&mut buf)?;
        }
        Ok(start.elapsed() / repeats.max(1) as u32)
    }
}

impl Api {
    /// # Safety
    /// `lib` must be Open MPI's libmpi.
    unsafe fn resolve(lib: &Library) -> Result<Self, libloading::Error> {
        unsafe {
            let object = |name: &[u8]| -> Result<Handle, libloading::Error> {
                let s: Symbol<*const c_void> = lib.get(name)?;
                Ok(*s)
            };
            Ok(Api {
                comm_world: object(b"ompi_mpi_comm_world\0")?,
                float: object(b"ompi_mpi_float\0")?,
                double: object(b"ompi_mpi_double\0")?,
                sum: object(b"ompi_mpi_op_sum\0")?,
                min: object(b"ompi_mpi_op_min\0")?,
                max: object(b"ompi_mpi_op_max\0")?,
                allreduce: lib.get(b"MPI_Allreduce\0")?,
                barrier: lib.get(b"MPI_Barrier\0")?,
                abort: lib.get(b"MPI_Abort\0")?,
                finalize: lib.get(b"MPI_Finalize\0")?,
            })
        }
    }
}

fn check(call: &'static str, code: c_int) -> Result<(), MpiError> {
    if code == 0 {
        Ok(())
    } else {
        Err(MpiError::Call { call, code })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_not_started_by_mpirun_runs_alone() {
        if std::env::var_os("OMPI_COMM_WORLD_SIZE").is_none() {
            assert!(World::from_env().unwrap().is_none());
        }
    }
}
