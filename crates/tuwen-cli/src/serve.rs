//! `tuwen serve`: the web demo and JSON API of `tuwen_serve`, on a tokio runtime, until SIGINT or
//! SIGTERM.

use anyhow::{Result, anyhow};
use tuwen_serve::{ServeConfig, Server};

/// Loads the models, prints `listening on http://ADDR` (stdout, flushed: scripts and tests read
/// the address from it when the port was 0) and serves until SIGINT / SIGTERM, finishing the
/// requests in progress.
pub fn serve(config: ServeConfig) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("tuwen-http")
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let server = Server::bind(config).await.map_err(|e| anyhow!(e))?;
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
        use std::io::Write;
        std::io::stdout().flush()?;
        server
            .run(tuwen_serve::shutdown_signal())
            .await
            .map_err(|e| anyhow!(e))?;
        eprintln!("shut down");
        Ok(())
    })
}
