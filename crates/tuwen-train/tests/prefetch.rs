//! Loader threads deliver batches in step order whatever their timing, and stop when dropped.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tuwen_train::prefetch::Prefetcher;

#[test]
fn batches_arrive_in_step_order_from_any_number_of_threads() {
    for threads in [0, 1, 3] {
        // Later steps finish first: a thread-ordered queue would reorder them.
        let build = Arc::new(|step: usize| {
            std::thread::sleep(Duration::from_millis(((7 - step % 7) * 2) as u64));
            Ok(step * 10)
        });
        let mut loader = Prefetcher::new(build, 5, 30, threads, 2);
        let got: Vec<usize> = (5..30).map(|_| loader.next_batch().unwrap()).collect();
        assert_eq!(
            got,
            (5..30).map(|s| s * 10).collect::<Vec<_>>(),
            "{threads} threads"
        );
    }
}

#[test]
fn errors_reach_the_consumer_and_dropping_stops_the_workers() {
    let built = Arc::new(AtomicUsize::new(0));
    let counter = built.clone();
    let build = Arc::new(move |step: usize| {
        counter.fetch_add(1, Ordering::SeqCst);
        if step == 3 {
            Err(format!("step {step}: bad scene"))
        } else {
            Ok(step)
        }
    });
    let mut loader = Prefetcher::new(build, 0, 1_000_000, 2, 2);
    for step in 0..3 {
        assert_eq!(loader.next_batch().unwrap(), step);
    }
    assert_eq!(loader.next_batch().unwrap_err(), "step 3: bad scene");
    drop(loader);
    // Bounded read-ahead: the workers built a handful of batches, not the million steps.
    assert!(
        built.load(Ordering::SeqCst) < 20,
        "{}",
        built.load(Ordering::SeqCst)
    );
}
