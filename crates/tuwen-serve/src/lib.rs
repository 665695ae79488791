//! `tuwen serve`: a local web demo and JSON API for trained tuwen runs.
//!
//! One static page (no build step, no external resource) and a JSON API over HTTP/1.1 (axum on
//! tokio), loopback by default:
//!
//! | Endpoint | What |
//! |---|---|
//! | `POST /v1/vqa` | multipart `image` + `question` (+ `top`) -> the best answers with scores |
//! | `POST /v1/caption` | multipart `image` (+ `beams`) -> a caption |
//! | `GET /v1/search?q=TEXT&k=5` | the served image folder ranked for a text (ITC top k, ITM re-rank) |
//! | `GET /v1/images/{i}` | image `i` of the folder (the search results link to it) |
//! | `GET /v1/health`, `GET /v1/info` | liveness; the models, runs, backend, limits |
//!
//! The models load through the same code as `tuwen vqa`, `tuwen caption` and `tuwen retrieve`
//! ([`models`]); requests from concurrent clients are batched ([`queue`]) for a pool of model
//! workers, each with its own copy of the models. Every limit ([`Limits`]) answers with a 4xx
//! status and a JSON `{"error": ...}`; so does a bad image, naming the problem. The whole API
//! is described, with curl examples, in `docs/api.md`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), String> {
//! use tuwen_serve::{Limits, Runs, ServeConfig, Server};
//! let config = ServeConfig::new(Runs {
//!     run: "runs/vqa".into(),
//!     vqa: None,
//!     caption: None,
//!     images: None,
//!     index: None,
//!     which: tuwen_train::run_dir::Which::Best,
//! });
//! let server = Server::bind(config).await?;
//! println!("listening on http://{}", server.local_addr());
//! let shutdown = tuwen_serve::shutdown_signal().map_err(|e| e.to_string())?;
//! server.run(shutdown).await
//! # }
//! ```

pub mod api;
pub mod models;
pub mod queue;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use burn::tensor::Device;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

pub use models::{Runs, Served};
pub use queue::Batching;

use models::{Job, Models};
use queue::JobQueue;

/// What a server accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Limits {
    /// Largest request body, in bytes (an upload with its form fields).
    pub max_upload_bytes: usize,
    /// Most pixels (width x height) of an uploaded image, checked on its header before
    /// decoding.
    pub max_pixels: u64,
    /// Longest question or search text, in characters.
    pub max_question_chars: usize,
    /// Model requests (VQA, caption, search) in progress at once; more get 429.
    pub max_concurrent: usize,
    /// Most beams a caption request may ask for.
    pub max_beams: usize,
    /// Most search results a request may ask for.
    pub max_k: usize,
    /// Longest a request may take to send its body, in seconds (then 408).
    pub read_timeout_secs: u64,
}

impl Default for Limits {
    /// 10 MiB uploads, 24 megapixels (a 6000 x 4000 camera image), 200-character questions,
    /// 32 requests at once, 8 beams, 50 results, 30 s to send a body.
    ///
    /// Memory is bounded by these: at most `max_concurrent` decoded images exist at once
    /// (32 x 24 MP x 3 bytes = 2.3 GB at worst), and at most one decode per CPU runs at a time.
    fn default() -> Self {
        Self {
            max_upload_bytes: 10 << 20,
            max_pixels: 24_000_000,
            max_question_chars: 200,
            max_concurrent: 32,
            max_beams: 8,
            max_k: 50,
            read_timeout_secs: 30,
        }
    }
}

/// How a server runs.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// The runs served.
    pub runs: Runs,
    /// Where to listen (port 0: any free port, see [`Server::local_addr`]).
    pub addr: SocketAddr,
    /// Model workers, each with its own copy of the models.
    pub threads: usize,
    /// Request limits.
    pub limits: Limits,
    /// How requests are batched.
    pub batching: Batching,
    /// The device the models run on.
    pub device: Device,
    /// The backend's name, for `GET /v1/info`.
    pub backend: String,
    /// Run the Transformers' linear layers of every request in bf16
    /// (`tuwen_fusion::precision::with_bf16`; CPU backends with AVX512-BF16, f32 elsewhere).
    /// Loading (the search index included) stays f32.
    pub bf16: bool,
}

impl ServeConfig {
    /// `runs` on loopback port 8080 with one model worker on the default device, default
    /// limits and batching.
    pub fn new(runs: Runs) -> Self {
        Self {
            runs,
            addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            threads: 1,
            limits: Limits::default(),
            batching: Batching::default(),
            device: Device::default(),
            backend: "default".into(),
            bf16: false,
        }
    }
}

/// How long a shutdown waits for the requests in progress.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// The longest `Batching::max_wait` a server accepts.
pub const MAX_BATCH_WAIT: Duration = Duration::from_secs(10);

/// What the handlers share.
pub(crate) struct AppState {
    queue: Arc<JobQueue<Job>>,
    served: Served,
    images: Vec<PathBuf>,
    limits: Limits,
    batching: Batching,
    /// Slots of `max_concurrent` model requests.
    permits: Arc<Semaphore>,
    /// Slots of image decodes running at once (one per CPU).
    decodes: Arc<Semaphore>,
    backend: String,
    /// `"bf16"` or `"f32"`, for `GET /v1/info`.
    precision: &'static str,
    threads: usize,
}

/// A server with its models loaded and its port bound, not yet answering.
pub struct Server {
    listener: TcpListener,
    state: Arc<AppState>,
    workers: Vec<JoinHandle<()>>,
}

impl Server {
    /// Binds the address, then loads the models (one copy per worker, one worker after the
    /// other). Errors name the address or the run at fault.
    pub async fn bind(config: ServeConfig) -> Result<Self, String> {
        check(&config)?;
        let listener = TcpListener::bind(config.addr)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", config.addr))?;
        let images = match &config.runs.images {
            Some(folder) => models::search_files(folder)?,
            None => Vec::new(),
        };
        let queue = Arc::new(JobQueue::new(config.batching));
        let started = {
            let (queue, runs, device) = (
                Arc::clone(&queue),
                config.runs.clone(),
                config.device.clone(),
            );
            let (threads, images, bf16) = (config.threads, images.clone(), config.bf16);
            tokio::task::spawn_blocking(move || {
                start_workers(&queue, &runs, &images, &device, threads, bf16)
            })
            .await
            .map_err(|e| format!("loading the models: {e}"))??
        };
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let state = AppState {
            queue,
            served: started.served,
            images,
            limits: config.limits,
            batching: config.batching,
            permits: Arc::new(Semaphore::new(config.limits.max_concurrent)),
            decodes: Arc::new(Semaphore::new(cpus)),
            backend: config.backend,
            precision: if config.bf16 { "bf16" } else { "f32" },
            threads: config.threads,
        };
        Ok(Self {
            listener,
            state: Arc::new(state),
            workers: started.workers,
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// What it serves.
    pub fn served(&self) -> &Served {
        &self.state.served
    }

    /// Answers requests until `shutdown` completes, then finishes the requests in progress
    /// (for at most [`SHUTDOWN_GRACE`]) and stops the model workers.
    pub async fn run(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), String> {
        use std::future::IntoFuture;
        let router = api::router(Arc::clone(&self.state));
        let (stopping, stopped) = tokio::sync::oneshot::channel::<()>();
        let signal = async move {
            shutdown.await;
            let _ = stopping.send(());
        };
        let serving = axum::serve(self.listener, router)
            .with_graceful_shutdown(signal)
            .into_future();
        let grace = async {
            if stopped.await.is_ok() {
                tokio::time::sleep(SHUTDOWN_GRACE).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        let served = tokio::select! {
            served = serving => served.map_err(|e| format!("serving: {e}")),
            () = grace => {
                eprintln!(
                    "requests still in progress {} s after the shutdown signal: stopping anyway",
                    SHUTDOWN_GRACE.as_secs()
                );
                Ok(())
            }
        };
        stop_workers(&self.state.queue, self.workers).await;
        served
    }
}

/// The checks of a configuration that need no model.
fn check(config: &ServeConfig) -> Result<(), String> {
    if config.threads == 0 {
        return Err("threads must be at least 1".into());
    }
    if config.limits.max_concurrent == 0 {
        return Err("max_concurrent must be at least 1".into());
    }
    if config.batching.max_wait > MAX_BATCH_WAIT {
        return Err(format!(
            "the batch wait {:?} is over the limit of {:?}",
            config.batching.max_wait, MAX_BATCH_WAIT
        ));
    }
    Ok(())
}

/// A future that completes on SIGINT (Ctrl-C) or SIGTERM, with both handlers registered before
/// it returns (so a signal sent as soon as the server says it listens is not lost). Call it
/// inside a tokio runtime.
pub fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()> + Send> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        Ok(async move {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
        })
    }
}

struct Started {
    served: Served,
    workers: Vec<JoinHandle<()>>,
}

/// Starts `threads` model workers one after the other (so only the first computes the search
/// index); the first that cannot load its models stops them all. With `bf16` each worker
/// answers its requests inside a bf16 scope.
fn start_workers(
    queue: &Arc<JobQueue<Job>>,
    runs: &models::Runs,
    images: &[PathBuf],
    device: &Device,
    threads: usize,
    bf16: bool,
) -> Result<Started, String> {
    let mut workers = Vec::new();
    let mut first = None;
    for i in 0..threads {
        let (ready, loaded) = std::sync::mpsc::channel();
        let (worker_queue, runs, device) = (Arc::clone(queue), runs.clone(), device.clone());
        let images = images.to_vec();
        let spawned = std::thread::Builder::new()
            .name(format!("tuwen-model-{i}"))
            .spawn(move || match Models::load(&runs, &images, &device) {
                Ok(models) => {
                    let _ = ready.send(Ok(models.served()));
                    if bf16 {
                        tuwen_fusion::precision::with_bf16(|| work(i, &worker_queue, &models));
                    } else {
                        work(i, &worker_queue, &models);
                    }
                }
                Err(e) => {
                    let _ = ready.send(Err(e));
                }
            })
            .map_err(|e| format!("starting model worker {i}: {e}"));
        let result = spawned.and_then(|handle| {
            workers.push(handle);
            loaded
                .recv()
                .map_err(|_| format!("model worker {i} stopped while loading"))?
        });
        match result {
            Ok(served) => {
                first.get_or_insert(served);
            }
            Err(e) => {
                queue.close();
                workers.into_iter().for_each(|w| drop(w.join()));
                return Err(e);
            }
        }
    }
    let served = first.expect("at least one worker");
    Ok(Started { served, workers })
}

/// A model worker: batches until the queue closes. A batch that panics answers its requests
/// with an error (their reply channels close) and the worker goes on.
fn work(i: usize, queue: &JobQueue<Job>, models: &Models) {
    while let Some(batch) = queue.take_batch() {
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            models.run_batch(batch);
        }));
        if run.is_err() {
            eprintln!("model worker {i}: a batch panicked; its requests were answered with 500");
        }
    }
}

async fn stop_workers(queue: &Arc<JobQueue<Job>>, workers: Vec<JoinHandle<()>>) {
    queue.close();
    let joined = tokio::task::spawn_blocking(move || {
        for w in workers {
            let _ = w.join();
        }
    });
    let _ = tokio::time::timeout(Duration::from_secs(60), joined).await;
}
