//! Batches built ahead of the training step by loader threads, delivered in step order.
//!
//! Worker `t` of `n` builds the batches of steps `start + t`, `start + t + n`, ... into its own
//! bounded channel and the consumer reads the channels round-robin, so the order is exactly the
//! step order whatever the threads' timing, memory stays bounded (`depth` batches per worker),
//! and resuming at step `s` is starting the workers at `s`: a batch is a pure function of its
//! step. Dropping the [`Prefetcher`] stops the workers.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

/// Builds the batch of one step.
pub type BuildFn<T> = dyn Fn(usize) -> Result<T, String> + Send + Sync;

/// Ordered batches from loader threads (or built inline with zero threads).
pub struct Prefetcher<T> {
    build: Arc<BuildFn<T>>,
    receivers: Vec<Receiver<Result<T, String>>>,
    workers: Vec<JoinHandle<()>>,
    start: usize,
    next: usize,
}

impl<T: Send + 'static> Prefetcher<T> {
    /// Batches of steps `start..end` from `threads` workers, each at most `depth` ahead.
    pub fn new(
        build: Arc<BuildFn<T>>,
        start: usize,
        end: usize,
        threads: usize,
        depth: usize,
    ) -> Self {
        let mut receivers = Vec::new();
        let mut workers = Vec::new();
        for t in 0..threads {
            let (tx, rx): (SyncSender<Result<T, String>>, _) = sync_channel(depth.max(1));
            let build = build.clone();
            workers.push(std::thread::spawn(move || {
                for step in (start + t..end).step_by(threads) {
                    // A closed channel means the consumer is gone: stop quietly.
                    if tx.send(build(step)).is_err() {
                        return;
                    }
                }
            }));
            receivers.push(rx);
        }
        Self {
            build,
            receivers,
            workers,
            start,
            next: start,
        }
    }

    /// The batch of the next step.
    pub fn next_batch(&mut self) -> Result<T, String> {
        let step = self.next;
        self.next += 1;
        if self.receivers.is_empty() {
            return (self.build)(step);
        }
        let worker = (step - self.start) % self.receivers.len();
        self.receivers[worker]
            .recv()
            .map_err(|_| format!("the loader thread of step {step} stopped"))?
    }
}

impl<T> Drop for Prefetcher<T> {
    fn drop(&mut self) {
        // Closing the channels unblocks workers waiting to send.
        self.receivers.clear();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}
