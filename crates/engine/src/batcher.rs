//! The batcher: one task that owns the queues of prepared items and the list of idle workers,
//! and cuts a batch whenever both are non-empty (waiting up to `max_batch_delay` for a batch to
//! fill). It also folds the workers' status reports into the engine's [`Health`].
//!
//! Gradient items (`ScoreGrad`) need a backward pass and queue apart: a gradient batch holds
//! gradient items only, up to `max_gradient_tiles` tiles (one item at least), and is cut at
//! once (batching them saves nothing). When items of both kinds wait, the batches alternate:
//! a score waits behind at most one gradient batch per device, and gradients behind at most
//! one score batch, so neither kind starves the other.

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
        gradients: VecDeque::new(),
        last_was_gradient: false,
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
                        wake = dispatch(&mut state, &config);
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
        if state.queue.len() + state.gradients.len() > config.max_batch_items {
            // Backed up behind busy devices: items whose callers left must not pile up.
            purge(&mut state.queue, Instant::now());
            purge(&mut state.gradients, Instant::now());
        }
        wake = dispatch(&mut state, &config);
    }
    for p in state.queue.into_iter().chain(state.gradients) {
        p.job
            .fail(ItemError::new(FailureKind::Internal, "the batcher stopped"));
    }
}

/// What the batcher owns: the queue of prepared items, the idle workers, and each worker's
/// status with the health they add up to.
struct State {
    queue: VecDeque<PreparedJob>,
    /// Gradient items, in arrival order.
    gradients: VecDeque<PreparedJob>,
    /// Whether the last batch handed out was a gradient batch (whose turn is next).
    last_was_gradient: bool,
    idle: VecDeque<(usize, std_mpsc::Sender<Batch>)>,
    statuses: Vec<WorkerStatus>,
    health: watch::Sender<Health>,
    devices: Vec<String>,
}

impl State {
    /// Folds one message in.
    fn take(&mut self, msg: BatcherMsg) {
        match msg {
            BatcherMsg::Job(job) if job.job.task.is_gradient() => self.gradients.push_back(*job),
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
/// score batch is waiting for its delay window to fill.
fn dispatch(state: &mut State, config: &EngineConfig) -> Option<Instant> {
    let result = loop {
        if state.idle.is_empty() {
            break None;
        }
        let now = Instant::now();
        purge(&mut state.queue, now);
        purge(&mut state.gradients, now);
        let gradient_turn = gradients_next(
            !state.queue.is_empty(),
            !state.gradients.is_empty(),
            state.last_was_gradient,
        );
        let jobs = if gradient_turn {
            take_gradient_batch(&mut state.gradients, config)
        } else {
            let Some(front) = state.queue.front() else {
                break None;
            };
            let open_until = front.enqueued + config.max_batch_delay;
            let full = fills_batch(state.queue.iter(), |p| p.prepared.tokens(), config);
            if !full && now < open_until {
                if state.gradients.is_empty() {
                    break Some(open_until);
                }
                // Gradients wait too: their batch goes first while this one fills.
                state.last_was_gradient = false;
                continue;
            }
            take_batch(&mut state.queue, |p| p.prepared.tokens(), config)
        };
        state.last_was_gradient = gradient_turn;
        let Some((worker, tx)) = state.idle.pop_front() else {
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
    metrics::set_queue_depth(state.queue.len() + state.gradients.len());
    result
}

/// Whether the next batch is a gradient batch: when only gradients wait, or when both kinds
/// wait and the last batch was not one (the kinds take turns).
fn gradients_next(scores_wait: bool, gradients_wait: bool, last_was_gradient: bool) -> bool {
    gradients_wait && (!scores_wait || !last_was_gradient)
}

/// The front gradient items within `max_gradient_tiles` tiles (at least one item; preprocessing
/// refuses a gradient item with more).
fn take_gradient_batch(
    queue: &mut VecDeque<PreparedJob>,
    config: &EngineConfig,
) -> Vec<PreparedJob> {
    let (mut count, mut tiles) = (0usize, 0usize);
    for p in queue.iter() {
        let n = p.prepared.tiles();
        if count > 0 && (tiles + n > config.max_gradient_tiles || count >= config.max_batch_items) {
            break;
        }
        count += 1;
        tiles += n;
    }
    queue.drain(..count).collect()
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
    fn gradient_and_score_batches_take_turns_when_both_wait() {
        // Both waiting: the kinds alternate, whichever went last.
        assert!(gradients_next(true, true, false));
        assert!(!gradients_next(true, true, true));
        // One kind waiting: it goes, whatever went last.
        assert!(gradients_next(false, true, true));
        assert!(!gradients_next(true, false, false));
        assert!(!gradients_next(false, false, false));
        // So with 8 gradient batches and 1 score batch waiting, the score runs second.
        let (mut gradients, mut scores, mut last, mut order) = (8, 1, false, String::new());
        while gradients + scores > 0 {
            last = gradients_next(scores > 0, gradients > 0, last);
            if last {
                gradients -= 1;
                order.push('G');
            } else {
                scores -= 1;
                order.push('S');
            }
        }
        assert_eq!(order, "GSGGGGGGG");
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
