//! Fair preprocessing: the pool's threads serve submissions round-robin, one task per turn,
//! so a submission of many (or slow) items cannot starve the ones that arrive after it. A
//! plain FIFO would run a 1,000-item request to the end before a later 1-item request starts.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

/// One unit of preprocessing work.
pub(crate) type PoolTask = Box<dyn FnOnce() + Send>;

/// A thread pool whose work is grouped by submission and served round-robin.
pub(crate) struct FairPool {
    pool: rayon::ThreadPool,
    groups: Mutex<VecDeque<VecDeque<PoolTask>>>,
}

impl FairPool {
    /// A pool of `threads` threads named `rd-preprocess-N`.
    pub fn new(threads: usize) -> std::io::Result<Arc<Self>> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads.max(1))
            .thread_name(|i| format!("rd-preprocess-{i}"))
            // Item work runs under `catch_unwind`; a panic outside it (answering, metrics) must
            // cost that task only, never the process (rayon aborts without a handler).
            .panic_handler(|_| tracing::error!("a preprocessing task panicked"))
            .build()
            .map_err(std::io::Error::other)?;
        Ok(Arc::new(FairPool {
            pool,
            groups: Mutex::new(VecDeque::new()),
        }))
    }

    /// Queues one submission's tasks as a group; each turn of a thread runs the next task of
    /// the group at the front and moves that group to the back.
    pub fn spawn_group(self: &Arc<Self>, tasks: Vec<PoolTask>) {
        let n = tasks.len();
        if n == 0 {
            return;
        }
        self.lock().push_back(tasks.into());
        for _ in 0..n {
            let me = self.clone();
            self.pool.spawn_fifo(move || {
                if let Some(task) = me.next() {
                    task();
                }
            });
        }
    }

    /// The queue; a panic while it was held cannot leave it inconsistent (every change is a
    /// single push or pop), so a poisoned lock is used as it is rather than stranding tasks.
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<VecDeque<PoolTask>>> {
        self.groups
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The next task in round-robin order.
    fn next(&self) -> Option<PoolTask> {
        let mut groups = self.lock();
        let mut group = groups.pop_front()?;
        let task = group.pop_front();
        if !group.is_empty() {
            groups.push_back(group);
        }
        task
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn a_later_small_submission_is_not_stuck_behind_a_large_one() {
        let pool = FairPool::new(1).unwrap();
        let (tx, rx) = mpsc::channel();
        let task = |name: &'static str, i: usize| -> PoolTask {
            let tx = tx.clone();
            Box::new(move || {
                std::thread::sleep(Duration::from_millis(2));
                let _ = tx.send((name, i));
            })
        };
        pool.spawn_group((0..50).map(|i| task("big", i)).collect());
        pool.spawn_group(vec![task("small", 0)]);
        let order: Vec<(&str, usize)> = (0..51).map(|_| rx.recv().unwrap()).collect();
        let small_at = order.iter().position(|(n, _)| *n == "small").unwrap();
        // One thread: the big group may have one task running and one more turn, never 49.
        assert!(small_at <= 2, "the small submission ran {small_at}th");
        let big: Vec<usize> = order
            .iter()
            .filter(|(n, _)| *n == "big")
            .map(|(_, i)| *i)
            .collect();
        assert_eq!(
            big,
            (0..50).collect::<Vec<_>>(),
            "a group keeps its own order"
        );
    }
}
