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

/// Prepares one admitted item and queues it for a batch (or answers it).
pub(crate) fn item(
    backend: &dyn Backend,
    to_batcher: &mpsc::UnboundedSender<BatcherMsg>,
    mut job: Job,
    max_gradient_tiles: usize,
) {
    let start = Instant::now();
    job.timing.queue = start - job.admitted;
    let Some(mut job) = job.check(start) else {
        return;
    };
    let Some(item) = job.slot.take_item() else {
        job.discard();
        return;
    };
    let prepared = catch_unwind(AssertUnwindSafe(|| backend.prepare(&item, job.reward)));
    drop(item);
    job.timing.preprocess = start.elapsed();
    metrics::record_preprocess(job.timing.preprocess.as_secs_f64());
    match prepared {
        // A gradient item's activations grow with its tiles, and the memory check at start-up
        // sized a gradient batch for `max_gradient_tiles`: a larger one is refused, not run.
        Ok(Ok(prepared)) if job.task.is_gradient() && prepared.tiles() > max_gradient_tiles => {
            job.fail(ItemError::from_model(
                &rewarddance_model::Error::TooManyTiles {
                    tiles: prepared.tiles(),
                    limit: max_gradient_tiles,
                },
            ));
        }
        Ok(Ok(prepared)) => {
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
        Ok(Err(err)) => {
            let error = ItemError::from_model(&err);
            tracing::debug!(parent: &job.span, %error, "item refused in preprocessing");
            job.fail(error);
        }
        Err(_) => {
            tracing::error!(parent: &job.span, "preprocessing panicked");
            job.fail(ItemError::new(
                FailureKind::Internal,
                "preprocessing failed unexpectedly",
            ));
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
