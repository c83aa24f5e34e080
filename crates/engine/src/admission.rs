//! Admission: the queue's slots. A submission takes its slots all at once or none
//! ([`SubmitError`]); each admitted item (or image) holds one until it is answered or its
//! caller lets go of the ticket, whichever comes first. The count of held slots is what a
//! drain waits on.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use rewarddance_model::ScoreItem;
use tokio::sync::Notify;

use crate::metrics;

/// Why a submission was refused as a whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// Taking the items would exceed `max_queue_items`.
    #[error("queue full: {requested} items requested, {in_flight} of {capacity} slots in use")]
    QueueFull {
        /// Items in the refused submission.
        requested: usize,
        /// Items held when it arrived.
        in_flight: usize,
        /// `max_queue_items`.
        capacity: usize,
    },
    /// The engine is draining (or failed to start).
    #[error("server is shutting down")]
    ShuttingDown,
}

/// The queue's slots: how many are held, whether new submissions are taken, and a wake-up
/// for whoever waits for the last one to be released.
pub(crate) struct Slots {
    capacity: usize,
    in_flight: AtomicUsize,
    accepting: AtomicBool,
    idle: Notify,
}

impl Slots {
    /// `capacity` slots, none held, accepting.
    pub fn new(capacity: usize) -> Arc<Self> {
        metrics::set_queue_capacity(capacity);
        metrics::set_in_flight(0);
        Arc::new(Slots {
            capacity,
            in_flight: AtomicUsize::new(0),
            accepting: AtomicBool::new(true),
            idle: Notify::new(),
        })
    }

    /// Slots held now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Takes `n` slots at once, or none; during a drain only for an accepted call.
    pub fn reserve(&self, n: usize, accepted_call: bool) -> Result<(), SubmitError> {
        if !accepted_call && !self.accepting.load(Ordering::Acquire) {
            return Err(SubmitError::ShuttingDown);
        }
        let capacity = self.capacity;
        let mut current = self.in_flight.load(Ordering::Acquire);
        loop {
            if current + n > capacity {
                metrics::record_rejected(n);
                return Err(SubmitError::QueueFull {
                    requested: n,
                    in_flight: current,
                    capacity,
                });
            }
            match self.in_flight.compare_exchange_weak(
                current,
                current + n,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                Err(actual) => current = actual,
            }
        }
        metrics::add_in_flight(n as f64);
        Ok(())
    }

    /// Stops taking new submissions (accepted calls still finish).
    pub fn close(&self) {
        self.accepting.store(false, Ordering::Release);
    }

    /// Waits until no slot is held.
    pub async fn drained(&self) {
        loop {
            let notified = self.idle.notified();
            if self.in_flight() == 0 {
                return;
            }
            notified.await;
        }
    }

    fn release_one(&self) {
        let left = self.in_flight.fetch_sub(1, Ordering::AcqRel) - 1;
        metrics::add_in_flight(-1.0);
        if left == 0 {
            self.idle.notify_waiters();
        }
    }
}

/// What an admitted item's ticket and its job share: its slot, released exactly once by
/// whichever lets go first (the job when it answers or is dropped, the ticket when the caller
/// stops waiting), and its input while it waits for preprocessing (freed with the slot when
/// the caller goes away).
struct Admission {
    slots: Arc<Slots>,
    released: AtomicBool,
    item: Mutex<Option<ScoreItem>>,
}

impl Admission {
    fn release(&self) {
        if !self.released.swap(true, Ordering::AcqRel) {
            self.slots.release_one();
        }
    }

    fn take_item(&self) -> Option<ScoreItem> {
        self.item.lock().map_or(None, |mut item| item.take())
    }
}

/// A handle on an admitted item's slot; dropping either of its two handles releases it.
pub(crate) struct Slot(Arc<Admission>);

impl Slot {
    /// The two handles (the ticket's, the job's) of a slot already reserved from `slots`;
    /// `item` is the input waiting for preprocessing, if any.
    pub fn pair(slots: &Arc<Slots>, item: Option<ScoreItem>) -> (Slot, Slot) {
        let admission = Arc::new(Admission {
            slots: slots.clone(),
            released: AtomicBool::new(false),
            item: Mutex::new(item),
        });
        (Slot(admission.clone()), Slot(admission))
    }

    /// The item's input, taken for preprocessing; `None` once its caller went away.
    pub fn take_item(&self) -> Option<ScoreItem> {
        self.0.take_item()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.release();
        // The ticket's side: the caller may be gone before preprocessing took the input.
        drop(self.0.take_item());
    }
}
