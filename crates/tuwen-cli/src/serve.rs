//! `tuwen serve`: the web demo and JSON API of `tuwen_serve`, on a tokio runtime, until SIGINT or
//! SIGTERM.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, anyhow};
use tuwen_serve::{Batching, Limits, Runs, ServeConfig, Server};

use crate::device::{DeviceName, Precision};

/// What `tuwen serve` was asked.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// The main run: answers VQA / captions when it is such a run, and searches --images with
    /// its ITC head.
    #[arg(long)]
    pub run: PathBuf,
    /// A fine-tuned VQA run (default: --run, when it has a VQA head).
    #[arg(long)]
    pub vqa: Option<PathBuf>,
    /// A fine-tuned captioning run (default: --run, when it is one).
    #[arg(long)]
    pub caption: Option<PathBuf>,
    /// A folder of JPEG/PNG files searched by text (--run needs an ITC head).
    #[arg(long)]
    pub images: Option<PathBuf>,
    /// Where the search's embedding index lives (default: RUN/retrieval-index).
    #[arg(long)]
    pub index: Option<PathBuf>,
    /// Address to listen on (loopback by default; port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,
    /// Model workers, each with its own copy of the models.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Checkpoint of every run: best, last or a step number.
    #[arg(long, default_value = "best")]
    pub checkpoint: String,
    /// Largest request body in bytes.
    #[arg(long, default_value_t = Limits::default().max_upload_bytes)]
    pub max_upload_bytes: usize,
    /// Most pixels (width x height) of an uploaded image.
    #[arg(long, default_value_t = Limits::default().max_pixels)]
    pub max_pixels: u64,
    /// Longest question or search text, in characters.
    #[arg(long, default_value_t = Limits::default().max_question_chars)]
    pub max_question_chars: usize,
    /// Model requests in progress at once (more get HTTP 429).
    #[arg(long, default_value_t = Limits::default().max_concurrent)]
    pub max_concurrent: usize,
    /// Seconds a request may take to send its body (then HTTP 408).
    #[arg(long, default_value_t = Limits::default().read_timeout_secs)]
    pub read_timeout_secs: u64,
    /// Most requests batched into one model call.
    #[arg(long, default_value_t = Batching::default().max_batch)]
    pub max_batch: usize,
    /// Longest a batch waits for requests already arriving, in milliseconds (at most 10,000).
    #[arg(long, default_value_t = Batching::default().max_wait.as_millis() as u64)]
    pub max_wait_ms: u64,
    /// Backend (those compiled in).
    #[arg(long, value_enum, default_value_t = DeviceName::Flex)]
    pub device: DeviceName,
    /// Precision of the Transformers' linear layers while answering (bf16: CPU backends with
    /// AVX512-BF16, as `tuwen vqa --precision bf16`).
    #[arg(long, value_enum, default_value_t = Precision::F32)]
    pub precision: Precision,
}

impl ServeArgs {
    /// The server configuration these arguments describe (opens the device).
    pub fn config(self) -> Result<ServeConfig> {
        self.precision.check(self.device)?;
        let backend = format!("{:?}", self.device).to_lowercase();
        Ok(ServeConfig {
            runs: Runs {
                run: self.run,
                vqa: self.vqa,
                caption: self.caption,
                images: self.images,
                index: self.index,
                which: self.checkpoint.parse().map_err(anyhow::Error::msg)?,
            },
            addr: self.addr,
            threads: self.threads,
            limits: Limits {
                max_upload_bytes: self.max_upload_bytes,
                max_pixels: self.max_pixels,
                max_question_chars: self.max_question_chars,
                max_concurrent: self.max_concurrent,
                read_timeout_secs: self.read_timeout_secs,
                ..Limits::default()
            },
            batching: Batching {
                max_batch: self.max_batch,
                max_wait: Duration::from_millis(self.max_wait_ms),
            },
            device: self.device.open()?,
            backend,
            bf16: self.precision == Precision::Bf16,
        })
    }
}

/// Loads the models, prints `listening on http://ADDR` (stdout, flushed: scripts and tests read
/// the address from it when the port was 0) once the signal handlers are in place, and serves
/// until SIGINT / SIGTERM, finishing the requests in progress.
pub fn serve(args: ServeArgs) -> Result<()> {
    let config = args.config()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("tuwen-http")
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let server = Server::bind(config).await.map_err(|e| anyhow!(e))?;
        let shutdown = tuwen_serve::shutdown_signal()?;
        let served = server.served();
        let what: Vec<&str> = [
            served.vqa.as_ref().map(|_| "POST /v1/vqa"),
            served.caption.as_ref().map(|_| "POST /v1/caption"),
            served.search.as_ref().map(|_| "GET /v1/search"),
        ]
        .into_iter()
        .flatten()
        .collect();
        eprintln!("serving {}", what.join(", "));
        println!("listening on http://{}", server.local_addr());
        std::io::stdout().flush()?;
        server.run(shutdown).await.map_err(|e| anyhow!(e))?;
        eprintln!("shut down");
        Ok(())
    })
}
