//! The batcher: one task that owns the queue of prepared items and the list of idle workers,
//! and cuts a batch whenever both are non-empty (waiting up to `max_batch_delay` for a batch to
//! fill). It also folds the workers' status reports into the engine's [`Health`].

use std::collections::VecDeque;
use std::sync::mpsc as std_mpsc;
use std::time::Instant;

use tokio::sync::{mpsc, watch};

use crate::config::EngineConfig;
use crate::health::Health;
use crate::job::PreparedJob;
use crate::metrics;
use crate::result::{FailureKind, ItemError};

/// A batch handed to a worker.
pub(crate) struct Batch {
    pub jobs: Vec<PreparedJob>,
}

/// A worker's state as the batcher tracks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum WorkerStatus {
    /// Warm-up pending.
    Starting,
    /// Ran its last batch (or warm-up) fine.
    Healthy,
    /// Failed repeatedly (or its warm-up failed).
    Failing(String),
}

/// Messages to the batcher task.
pub(crate) enum BatcherMsg {
    /// A prepared item joins the queue.
    Job(Box<PreparedJob>),
    /// Worker `worker` is idle and takes its next batch on `tx`.
    Ready {
        worker: usize,
        tx: std_mpsc::Sender<Batch>,
    },
    /// Worker `worker` changed status.
    Status { worker: usize, status: WorkerStatus },
}

/// The batcher loop; runs until every sender is gone.
pub(crate) async fn run(
    config: EngineConfig,
    mut rx: mpsc::UnboundedReceiver<BatcherMsg>,
    health: watch::Sender<Health>,
    devices: Vec<String>,
) {
    let mut state = State {
        queue: VecDeque::new(),
        idle: VecDeque::new(),
        statuses: vec![WorkerStatus::Starting; devices.len()],
        health,
        devices,
    };
    let mut wake: Option<Instant> = None;
    loop {
        let msg = match wake {
            Some(at) => {
                tokio::select! {
                    msg = rx.recv() => msg,
                    _ = tokio::time::sleep_until(at.into()) => {
                        wake = dispatch(&mut state.queue, &mut state.idle, &config);
                        continue;
                    }
                }
            }
            None => rx.recv().await,
        };
        let Some(msg) = msg else { break };
        state.take(msg);
        // Drain whatever else is already waiting before deciding, so that a burst of arrivals
        // becomes one batch rather than several.
        while let Ok(msg) = rx.try_recv() {
            state.take(msg);
        }
        if state.queue.len() > config.max_batch_items {
            // Backed up behind busy devices: items whose callers left must not pile up.
            purge(&mut state.queue, Instant::now());
        }
        wake = dispatch(&mut state.queue, &mut state.idle, &config);
    }
    for p in state.queue {
        p.job
            .fail(ItemError::new(FailureKind::Internal, "the batcher stopped"));
    }
}

/// What the batcher owns: the queue of prepared items, the idle workers, and each worker's
/// status with the health they add up to.
struct State {
    queue: VecDeque<PreparedJob>,
    idle: VecDeque<(usize, std_mpsc::Sender<Batch>)>,
    statuses: Vec<WorkerStatus>,
    health: watch::Sender<Health>,
    devices: Vec<String>,
}

impl State {
    /// Folds one message in.
    fn take(&mut self, msg: BatcherMsg) {
        match msg {
            BatcherMsg::Job(job) => self.queue.push_back(*job),
            BatcherMsg::Ready { worker, tx } => self.idle.push_back((worker, tx)),
            BatcherMsg::Status { worker, status } => {
                if let Some(slot) = self.statuses.get_mut(worker) {
                    *slot = status;
                }
                update_health(&self.health, &self.statuses, &self.devices);
            }
        }
    }
}

/// Serving when every device is healthy; Failing as soon as one keeps failing; Draining wins.
fn update_health(health: &watch::Sender<Health>, statuses: &[WorkerStatus], devices: &[String]) {
    let next = if let Some((i, WorkerStatus::Failing(why))) = statuses
        .iter()
        .enumerate()
        .find(|(_, s)| matches!(s, WorkerStatus::Failing(_)))
    {
        Health::Failing(format!("device {}: {why}", devices[i]))
    } else if statuses.iter().all(|s| *s == WorkerStatus::Healthy) {
        Health::Serving
    } else {
        Health::Starting
    };
    health.send_if_modified(|current| {
        if *current == Health::Draining || *current == next {
            return false;
        }
        tracing::info!(from = ?current, to = ?next, "engine health changed");
        metrics::set_serving(next.is_serving());
        *current = next;
        true
    });
}

/// Hands batches to idle workers while both exist. Returns when to look again if the front
/// batch is waiting for its delay window to fill.
fn dispatch(
    queue: &mut VecDeque<PreparedJob>,
    idle: &mut VecDeque<(usize, std_mpsc::Sender<Batch>)>,
    config: &EngineConfig,
) -> Option<Instant> {
    let result = loop {
        if idle.is_empty() || queue.is_empty() {
            break None;
        }
        let now = Instant::now();
        purge(queue, now);
        let Some(front) = queue.front() else {
            break None;
        };
        let open_until = front.enqueued + config.max_batch_delay;
        let full = fills_batch(queue.iter(), |p| p.prepared.tokens(), config);
        if !full && now < open_until {
            break Some(open_until);
        }
        let jobs = take_batch(queue, |p| p.prepared.tokens(), config);
        let Some((worker, tx)) = idle.pop_front() else {
            break None;
        };
        if let Err(std_mpsc::SendError(batch)) = tx.send(Batch { jobs }) {
            tracing::error!(worker, "device worker is gone; failing its batch");
            for p in batch.jobs {
                p.job.fail(ItemError::new(
                    FailureKind::Internal,
                    "device worker stopped",
                ));
            }
        }
    };
    metrics::set_queue_depth(queue.len());
    result
}

/// Drops abandoned items and answers expired ones, keeping the order of the rest.
fn purge(queue: &mut VecDeque<PreparedJob>, now: Instant) {
    if queue
        .iter()
        .all(|p| !p.job.abandoned() && !p.job.expired(now))
    {
        return;
    }
    let kept: VecDeque<PreparedJob> = queue.drain(..).filter_map(|p| p.check(now)).collect();
    *queue = kept;
}

/// True when the queue's front already fills a batch (a limit stops the batch before the
/// queue ends), so waiting longer cannot make it bigger.
fn fills_batch<'a, T: 'a>(
    queue: impl Iterator<Item = &'a T>,
    tokens_of: impl Fn(&T) -> usize,
    config: &EngineConfig,
) -> bool {
    let (mut items, mut tokens) = (0usize, 0usize);
    for t in queue {
        let n = tokens_of(t);
        if items >= config.max_batch_items || (items > 0 && tokens + n > config.max_batch_tokens) {
            return true;
        }
        items += 1;
        tokens += n;
    }
    items >= config.max_batch_items || tokens >= config.max_batch_tokens
}

/// Takes the longest prefix of the queue within the item cap and token budget (at least one
/// item: an item over the budget runs alone).
fn take_batch<T>(
    queue: &mut VecDeque<T>,
    tokens_of: impl Fn(&T) -> usize,
    config: &EngineConfig,
) -> Vec<T> {
    let (mut count, mut tokens) = (0usize, 0usize);
    for t in queue.iter() {
        let n = tokens_of(t);
        if count >= config.max_batch_items.max(1)
            || (count > 0 && tokens + n > config.max_batch_tokens)
        {
            break;
        }
        count += 1;
        tokens += n;
    }
    queue.drain(..count).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(items: usize, tokens: usize) -> EngineConfig {
        EngineConfig {
            max_batch_items: items,
            max_batch_tokens: tokens,
            ..EngineConfig::default()
        }
    }

    #[test]
    fn batches_respect_the_token_budget_and_item_cap() {
        let mut q: VecDeque<usize> = [100, 200, 300, 400].into();
        let b = take_batch(&mut q, |t| *t, &config(10, 600));
        assert_eq!(b, vec![100, 200, 300]);
        let b = take_batch(&mut q, |t| *t, &config(10, 600));
        assert_eq!(b, vec![400]);
        let mut q: VecDeque<usize> = [1, 1, 1, 1, 1].into();
        assert_eq!(take_batch(&mut q, |t| *t, &config(2, 600)), vec![1, 1]);
    }

    #[test]
    fn an_item_over_the_budget_runs_alone() {
        let mut q: VecDeque<usize> = [5000, 10].into();
        assert_eq!(take_batch(&mut q, |t| *t, &config(10, 600)), vec![5000]);
        assert_eq!(q.len(), 1);
    }

    #[test]
    fn full_means_waiting_cannot_grow_the_batch() {
        let c = config(3, 600);
        assert!(!fills_batch([100usize, 200].iter(), |t| *t, &c));
        assert!(fills_batch([100usize, 200, 300].iter(), |t| *t, &c)); // item cap
        assert!(fills_batch([100usize, 200, 400].iter(), |t| *t, &c)); // next does not fit
        assert!(fills_batch([600usize].iter(), |t| *t, &c)); // budget exactly used
        assert!(!fills_batch(std::iter::empty::<&usize>(), |t| *t, &c));
    }
}
