//! What runs on a preprocessing thread: an item is dropped (caller gone), expired or prepared
//! and handed to the batcher; an image is prepared for the items that will share it. Both run
//! on the engine's first backend ([`Model::prepare`](crate::Model::prepare) does not depend on
//! the device) and are answered right there when they fail.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Instant;

use rewarddance_model::{ImageInput, PreparedImage};
use tokio::sync::{mpsc, oneshot};

use crate::admission::Slot;
use crate::backend::Backend;
use crate::batcher::BatcherMsg;
use crate::job::{Job, PreparedJob};
use crate::metrics;
use crate::result::{FailureKind, ItemError};

/// Prepares one admitted item for each of its rewards (`jobs[i]` answers `rewards[i]`; the
/// first job's slot holds the item) and queues each for a batch (or answers it).
pub(crate) fn item(
    backend: &dyn Backend,
    to_batcher: &mpsc::UnboundedSender<BatcherMsg>,
    jobs: Vec<Job>,
    rewards: Vec<usize>,
    max_gradient_tiles: usize,
) {
    let start = Instant::now();
    let mut item = None;
    let mut live: Vec<(Job, usize)> = Vec::with_capacity(jobs.len());
    for (mut job, reward) in jobs.into_iter().zip(rewards) {
        job.timing.queue = start - job.admitted;
        if item.is_none() {
            item = job.slot.take_item();
        }
        if let Some(job) = job.check(start) {
            live.push((job, reward));
        }
    }
    let Some(item) = item else {
        live.into_iter().for_each(|(job, _)| job.discard());
        return;
    };
    if live.is_empty() {
        return;
    }
    let wanted: Vec<usize> = live.iter().map(|(_, r)| *r).collect();
    let prepared = catch_unwind(AssertUnwindSafe(|| backend.prepare_each(&item, &wanted)));
    drop(item);
    let elapsed = start.elapsed();
    metrics::record_preprocess(elapsed.as_secs_f64());
    match prepared {
        Ok(results) if results.len() == live.len() => {
            for ((mut job, _), result) in live.into_iter().zip(results) {
                job.timing.preprocess = elapsed;
                dispatch(to_batcher, job, result, max_gradient_tiles);
            }
        }
        Ok(_) => live.into_iter().for_each(|(job, _)| {
            job.fail(ItemError::new(
                FailureKind::Internal,
                "preprocessing returned the wrong number of items",
            ))
        }),
        Err(_) => live.into_iter().for_each(|(job, _)| {
            tracing::error!(parent: &job.span, "preprocessing panicked");
            job.fail(ItemError::new(
                FailureKind::Internal,
                "preprocessing failed unexpectedly",
            ))
        }),
    }
}

/// Queues one prepared job for a batch, or answers it with why not.
fn dispatch(
    to_batcher: &mpsc::UnboundedSender<BatcherMsg>,
    job: Job,
    prepared: rewarddance_model::Result<crate::backend::Prepared>,
    max_gradient_tiles: usize,
) {
    match prepared {
        // A gradient item's activations grow with its tiles, and the memory check at start-up
        // sized a gradient batch for `max_gradient_tiles`: a larger one is refused, not run.
        Ok(prepared) if job.task.is_gradient() && prepared.tiles() > max_gradient_tiles => {
            job.fail(ItemError::from_model(
                &rewarddance_model::Error::TooManyTiles {
                    tiles: prepared.tiles(),
                    limit: max_gradient_tiles,
                },
            ));
        }
        Ok(prepared) => {
            let msg = BatcherMsg::Job(Box::new(PreparedJob {
                job,
                prepared,
                enqueued: Instant::now(),
            }));
            if let Err(mpsc::error::SendError(BatcherMsg::Job(p))) = to_batcher.send(msg) {
                p.job
                    .fail(ItemError::new(FailureKind::Internal, "the batcher stopped"));
            }
        }
        Err(err) => {
            let error = ItemError::from_model(&err);
            tracing::debug!(parent: &job.span, %error, "item refused in preprocessing");
            job.fail(error);
        }
    }
}

/// Prepares one admitted image and answers its ticket; the slot goes with the answer.
pub(crate) fn image(
    backend: &dyn Backend,
    input: ImageInput,
    deadline: Option<Instant>,
    reply: oneshot::Sender<Result<Arc<PreparedImage>, ItemError>>,
    slot: Slot,
) {
    if reply.is_closed() {
        return;
    }
    let answer = if deadline.is_some_and(|d| Instant::now() >= d) {
        Err(ItemError::new(
            FailureKind::DeadlineExceeded,
            "deadline passed before the image was prepared",
        ))
    } else {
        match catch_unwind(AssertUnwindSafe(|| backend.prepare_image(&input))) {
            Ok(Ok(prepared)) => Ok(prepared),
            Ok(Err(err)) => Err(ItemError::from_model(&err)),
            Err(_) => Err(ItemError::new(
                FailureKind::Internal,
                "preprocessing failed unexpectedly",
            )),
        }
    };
    drop(input);
    let _ = reply.send(answer);
    drop(slot);
}
