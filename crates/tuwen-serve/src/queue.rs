//! The batching queue between the HTTP handlers and the model workers.
//!
//! Handlers announce a job of a kind once a request's form is read ([`JobQueue::announce`]) and
//! push it once its image is decoded; a free worker takes the oldest job and every queued job of
//! the same kind ([`Batchable::key`]) up to `max_batch`, waiting at most `max_wait` for the batch
//! to fill (the dynamic batching of TorchServe's `max_batch_delay` and Triton's
//! `max_queue_delay`), but only while announced jobs of that kind are still on their way: a lone
//! request never waits, and under load batches fill while the workers are busy.
//!
//! Written by hand: the batching is by key over a multi-consumer queue, which neither
//! `std::sync::mpsc` (one consumer) nor tokio's channels (no grouping) offer.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// A job that can share a batch with the other jobs of the same key.
pub trait Batchable {
    /// Jobs with equal keys run in one batch.
    type Key: PartialEq + Clone;
    /// This job's key.
    fn key(&self) -> Self::Key;
}

/// How batches form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Batching {
    /// Most jobs in one batch.
    pub max_batch: usize,
    /// Longest a batch waits for more jobs after its first one.
    pub max_wait: Duration,
}

impl Default for Batching {
    /// Up to 16 jobs, 5 ms.
    fn default() -> Self {
        Self {
            max_batch: 16,
            max_wait: Duration::from_millis(5),
        }
    }
}

struct State<J, K> {
    jobs: VecDeque<J>,
    /// The kinds of the announced jobs not yet pushed (or dropped), one entry per job.
    announced: Vec<K>,
    closed: bool,
    stats: BatchStats,
}

/// What a queue has handed out so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct BatchStats {
    /// Batches taken.
    pub batches: u64,
    /// Jobs in them.
    pub jobs: u64,
    /// The largest batch.
    pub largest: usize,
}

/// A multi-producer, multi-consumer job queue that hands out batches.
pub struct JobQueue<J: Batchable> {
    state: Mutex<State<J, J::Key>>,
    changed: Condvar,
    batching: Batching,
}

impl<J: Batchable> JobQueue<J> {
    /// An empty, open queue.
    pub fn new(batching: Batching) -> Self {
        Self {
            state: Mutex::new(State {
                jobs: VecDeque::new(),
                announced: Vec::new(),
                closed: false,
                stats: BatchStats::default(),
            }),
            changed: Condvar::new(),
            batching: Batching {
                max_batch: batching.max_batch.max(1),
                ..batching
            },
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<J, J::Key>> {
        // A worker that panicked while holding the lock left the queue itself consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Says a job of kind `key` is on its way: batches of that kind being formed wait for it (up
    /// to `max_wait`) until it is pushed through the returned handle or the handle is dropped.
    pub fn announce(&self, key: J::Key) -> Announced<'_, J> {
        self.lock().announced.push(key.clone());
        Announced {
            queue: self,
            key,
            live: true,
        }
    }

    /// Forgets one announcement of `key`.
    fn unannounce(state: &mut State<J, J::Key>, key: &J::Key) {
        if let Some(i) = state.announced.iter().position(|k| k == key) {
            state.announced.swap_remove(i);
        }
    }

    /// Queues `job`; `Err(job)` when the queue is closed.
    pub fn push(&self, job: J) -> Result<(), J> {
        self.push_with(job, None)
    }

    fn push_with(&self, job: J, announced: Option<&J::Key>) -> Result<(), J> {
        let mut state = self.lock();
        if let Some(key) = announced {
            Self::unannounce(&mut state, key);
        }
        if state.closed {
            return Err(job);
        }
        state.jobs.push_back(job);
        drop(state);
        self.changed.notify_all();
        Ok(())
    }

    /// Batches and jobs handed out so far.
    pub fn stats(&self) -> BatchStats {
        self.lock().stats
    }

    /// Jobs waiting.
    pub fn len(&self) -> usize {
        self.lock().jobs.len()
    }

    /// Whether no job waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Closes the queue: no more pushes; workers drain what is queued, then get `None`.
    pub fn close(&self) {
        self.lock().closed = true;
        self.changed.notify_all();
    }

    /// The next batch (oldest job first, all of its key), blocking until there is one; `None`
    /// once the queue is closed and empty.
    pub fn take_batch(&self) -> Option<Vec<J>> {
        let mut state = self.lock();
        loop {
            while state.jobs.is_empty() {
                if state.closed {
                    return None;
                }
                state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
            }
            let key = state.jobs[0].key();
            let deadline = Instant::now() + self.batching.max_wait;
            loop {
                let ready = state.jobs.iter().filter(|j| j.key() == key).count();
                let now = Instant::now();
                let full = ready >= self.batching.max_batch;
                let coming = state.announced.contains(&key);
                if full || !coming || state.closed || now >= deadline {
                    break;
                }
                state = self
                    .changed
                    .wait_timeout(state, deadline - now)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            let batch = self.drain_key(&mut state, &key);
            if !state.jobs.is_empty() {
                self.changed.notify_all();
            }
            // Another worker may have taken this key's jobs while this one waited.
            if !batch.is_empty() {
                let stats = &mut state.stats;
                stats.batches += 1;
                stats.jobs += batch.len() as u64;
                stats.largest = stats.largest.max(batch.len());
                return Some(batch);
            }
        }
    }

    /// Removes up to `max_batch` jobs with `key`, oldest first, keeping the others in order.
    fn drain_key(&self, state: &mut State<J, J::Key>, key: &J::Key) -> Vec<J> {
        let mut batch = Vec::new();
        let mut rest = VecDeque::with_capacity(state.jobs.len());
        for job in state.jobs.drain(..) {
            if batch.len() < self.batching.max_batch && job.key() == *key {
                batch.push(job);
            } else {
                rest.push_back(job);
            }
        }
        state.jobs = rest;
        batch
    }
}

/// A job on its way to the queue (see [`JobQueue::announce`]).
pub struct Announced<'q, J: Batchable> {
    queue: &'q JobQueue<J>,
    key: J::Key,
    live: bool,
}

impl<J: Batchable> Announced<'_, J> {
    /// Queues the announced job; `Err(job)` when the queue is closed.
    pub fn push(mut self, job: J) -> Result<(), J> {
        self.live = false;
        self.queue.push_with(job, Some(&self.key))
    }
}

impl<J: Batchable> Drop for Announced<'_, J> {
    fn drop(&mut self) {
        if self.live {
            JobQueue::unannounce(&mut self.queue.lock(), &self.key);
            // A worker may be waiting for this job.
            self.queue.changed.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[derive(Debug, PartialEq)]
    struct Job(char, usize);

    impl Batchable for Job {
        type Key = char;
        fn key(&self) -> char {
            self.0
        }
    }

    fn queue(max_batch: usize, wait_ms: u64) -> JobQueue<Job> {
        JobQueue::new(Batching {
            max_batch,
            max_wait: Duration::from_millis(wait_ms),
        })
    }

    #[test]
    fn a_batch_is_the_oldest_jobs_key_in_order_up_to_the_maximum() {
        let q = queue(2, 0);
        for job in [
            Job('a', 0),
            Job('b', 1),
            Job('a', 2),
            Job('a', 3),
            Job('b', 4),
        ] {
            q.push(job).unwrap();
        }
        assert_eq!(q.take_batch().unwrap(), vec![Job('a', 0), Job('a', 2)]);
        assert_eq!(q.take_batch().unwrap(), vec![Job('b', 1), Job('b', 4)]);
        assert_eq!(q.take_batch().unwrap(), vec![Job('a', 3)]);
        assert!(q.is_empty());
        let stats = q.stats();
        assert_eq!((stats.batches, stats.jobs, stats.largest), (3, 5, 2));
    }

    #[test]
    fn a_batch_waits_for_more_jobs_but_not_past_the_maximum_wait() {
        let q = Arc::new(queue(3, 2_000));
        q.push(Job('a', 0)).unwrap();
        let (announced, pushed) = std::sync::mpsc::channel();
        let pusher = {
            let q = Arc::clone(&q);
            std::thread::spawn(move || {
                let (one, two) = (q.announce('a'), q.announce('a'));
                announced.send(()).unwrap();
                std::thread::sleep(Duration::from_millis(50));
                one.push(Job('a', 1)).unwrap();
                two.push(Job('a', 2)).unwrap();
            })
        };
        pushed.recv().unwrap();
        let start = Instant::now();
        assert_eq!(q.take_batch().unwrap().len(), 3, "full batch");
        assert!(
            start.elapsed() < Duration::from_millis(1_500),
            "returned when full"
        );
        pusher.join().unwrap();

        // An announced job that never comes: the batch waits `max_wait`, no longer.
        let q = queue(3, 30);
        let _coming = q.announce('a');
        let _other_kind = q.announce('b');
        q.push(Job('a', 0)).unwrap();
        let start = Instant::now();
        assert_eq!(q.take_batch().unwrap().len(), 1);
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_millis(30) && waited < Duration::from_millis(1_000),
            "{waited:?}"
        );
    }

    #[test]
    fn a_lone_job_or_a_dropped_announcement_is_not_waited_for() {
        let q = queue(3, 5_000);
        q.push(Job('a', 0)).unwrap();
        let start = Instant::now();
        assert_eq!(q.take_batch().unwrap().len(), 1);
        assert!(
            start.elapsed() < Duration::from_millis(1_000),
            "nothing announced"
        );

        std::thread::scope(|s| {
            let coming = q.announce('a');
            let _other_kind = q.announce('b');
            q.push(Job('a', 1)).unwrap();
            s.spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                drop(coming);
            });
            let start = Instant::now();
            assert_eq!(q.take_batch().unwrap().len(), 1);
            assert!(
                start.elapsed() < Duration::from_millis(2_000),
                "the drop ended the wait"
            );
        });
    }

    #[test]
    fn a_closed_queue_refuses_pushes_and_drains_before_ending() {
        let q = queue(4, 0);
        q.push(Job('a', 0)).unwrap();
        q.close();
        assert_eq!(q.push(Job('a', 1)), Err(Job('a', 1)));
        assert_eq!(q.take_batch().unwrap(), vec![Job('a', 0)]);
        assert_eq!(q.take_batch(), None);
    }

    #[test]
    fn concurrent_workers_lose_no_job_and_run_none_twice() {
        let q = Arc::new(queue(5, 1));
        let workers: Vec<_> = (0..3)
            .map(|_| {
                let q = Arc::clone(&q);
                std::thread::spawn(move || {
                    let mut seen = Vec::new();
                    while let Some(batch) = q.take_batch() {
                        assert!(!batch.is_empty() && batch.len() <= 5);
                        assert!(batch.iter().all(|j| j.0 == batch[0].0), "one key a batch");
                        seen.extend(batch.into_iter().map(|j| j.1));
                    }
                    seen
                })
            })
            .collect();
        for i in 0..1_000 {
            q.push(Job(if i % 3 == 0 { 'x' } else { 'y' }, i)).unwrap();
        }
        q.close();
        let mut all: Vec<usize> = workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect();
        all.sort_unstable();
        assert_eq!(all, (0..1_000).collect::<Vec<_>>());
    }
}
