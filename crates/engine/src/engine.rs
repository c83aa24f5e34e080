//! The engine handle: admission, preprocessing dispatch, health and drain.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use rewarddance_model::{Candidate, ImageInput, Mode, PreparedImage, RationaleOptions, ScoreItem};
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tracing::Span;

use crate::backend::Backend;
use crate::batcher::{self, BatcherMsg};
use crate::config::EngineConfig;
use crate::fair::{FairPool, Task};
use crate::job::{FailureKind, ItemError, ItemResult, Job, PreparedJob, Timing};
use crate::metrics;
use crate::worker;

/// What the engine reports for health checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Workers are loading or warming up.
    Starting,
    /// Every device ran its warm-up forward and is healthy.
    Serving,
    /// A device keeps failing (the message says which and why).
    Failing(String),
    /// Shutdown was requested; no new items are taken.
    Draining,
}

impl Health {
    /// True only for [`Health::Serving`].
    pub fn is_serving(&self) -> bool {
        matches!(self, Health::Serving)
    }
}

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

/// One unit of work: an item to score and, optionally, a rationale to decode after it.
#[derive(Debug, Clone)]
pub struct Work {
    /// The item.
    pub item: ScoreItem,
    /// Decode a rationale (absent: score only, no decoding).
    pub rationale: Option<RationaleOptions>,
}

impl From<ScoreItem> for Work {
    fn from(item: ScoreItem) -> Self {
        Work {
            item,
            rationale: None,
        }
    }
}

/// One item's pending answer. Dropping it tells the engine nobody waits any more: the item's
/// queue slot is released at once (its input is freed if it still waits for preprocessing),
/// and the item is dropped before compute, or its rationale stops decoding.
pub struct Ticket {
    result: oneshot::Receiver<ItemResult>,
    text: Option<mpsc::UnboundedReceiver<String>>,
    slot: Slot,
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticket").finish_non_exhaustive()
    }
}

impl Ticket {
    /// Takes the stream of rationale text increments (only for work that asked for a
    /// rationale). It ends when the item is answered; the increments add up to the final
    /// rationale's text. Not taking it costs nothing.
    pub fn take_text(&mut self) -> Option<mpsc::UnboundedReceiver<String>> {
        self.text.take()
    }

    /// Waits for the item's result.
    pub async fn wait(self) -> ItemResult {
        // Text nobody took is not kept while the rationale decodes. The slot stays held until
        // the answer arrives (the job releases it first when it answers).
        let Ticket { result, text, slot } = self;
        drop(text);
        let answer = result.await;
        drop(slot);
        answer.unwrap_or_else(|_| {
            ItemResult::failed(ItemError::new(
                FailureKind::Internal,
                "the engine dropped the item without an answer",
            ))
        })
    }
}

/// One image's pending preparation ([`Engine::prepare_images`]). Dropping it frees its queue
/// slot, and the image is not prepared if no thread has started on it.
pub struct ImageTicket {
    result: oneshot::Receiver<Result<Arc<PreparedImage>, ItemError>>,
    _slot: Slot,
}

impl ImageTicket {
    /// Waits for the prepared image, or why it could not be prepared. The ticket keeps its
    /// queue slot until it is dropped: a call that goes on to submit items from the image
    /// holds it until then ([`Engine::submit_continuing`]), so a drain cannot end between.
    pub async fn wait(&mut self) -> Result<Arc<PreparedImage>, ItemError> {
        (&mut self.result).await.unwrap_or_else(|_| {
            Err(ItemError::new(
                FailureKind::Internal,
                "the engine dropped the image without an answer",
            ))
        })
    }
}

/// Shared state behind [`Engine`] handles.
pub(crate) struct Inner {
    pub config: EngineConfig,
    pub backends: Vec<Arc<dyn Backend>>,
    pub to_batcher: mpsc::UnboundedSender<BatcherMsg>,
    pool: Arc<FairPool>,
    in_flight: AtomicUsize,
    accepting: AtomicBool,
    idle: Notify,
    pub health: watch::Sender<Health>,
}

/// What an admitted item's ticket and its job share: its queue slot, released exactly once by
/// whichever lets go first (the job when it answers or is dropped, the ticket when the caller
/// stops waiting), and its input while it waits for preprocessing (freed with the slot when
/// the caller goes away).
struct Admission {
    engine: Arc<Inner>,
    released: AtomicBool,
    item: std::sync::Mutex<Option<ScoreItem>>,
}

impl Admission {
    fn new(engine: &Arc<Inner>, item: Option<ScoreItem>) -> Arc<Self> {
        Arc::new(Admission {
            engine: engine.clone(),
            released: AtomicBool::new(false),
            item: std::sync::Mutex::new(item),
        })
    }

    fn release(&self) {
        if self.released.swap(true, Ordering::AcqRel) {
            return;
        }
        let left = self.engine.in_flight.fetch_sub(1, Ordering::AcqRel) - 1;
        metrics::add_in_flight(-1.0);
        if left == 0 {
            self.engine.idle.notify_waiters();
        }
    }

    fn take_item(&self) -> Option<ScoreItem> {
        self.item.lock().map_or(None, |mut item| item.take())
    }
}

/// A handle on an item's [`Admission`]; dropping either handle releases the slot.
pub(crate) struct Slot(Arc<Admission>);

impl Slot {
    /// The item's input, taken for preprocessing; `None` once its caller went away.
    pub(crate) fn take_item(&self) -> Option<ScoreItem> {
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

/// The engine: cheap to clone, shared by every request handler.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl Engine {
    /// Starts the batcher, one worker thread per backend (device) and the preprocessing pool.
    /// Must be called inside a tokio runtime. Each worker runs a warm-up forward first; health
    /// turns [`Health::Serving`] once all of them succeeded (see [`Engine::ready`]).
    pub fn start(backends: Vec<Arc<dyn Backend>>, config: EngineConfig) -> std::io::Result<Self> {
        if backends.is_empty() {
            return Err(std::io::Error::other(
                "the engine needs at least one device",
            ));
        }
        let pool = FairPool::new(config.preprocess_threads)?;
        metrics::set_queue_capacity(config.max_queue_items);
        metrics::set_in_flight(0);
        let (to_batcher, from_handles) = mpsc::unbounded_channel();
        let (health, _) = watch::channel(Health::Starting);
        let inner = Arc::new(Inner {
            config,
            backends,
            to_batcher,
            pool,
            in_flight: AtomicUsize::new(0),
            accepting: AtomicBool::new(true),
            idle: Notify::new(),
            health,
        });
        let warmup = warmup_item();
        let mut devices = Vec::new();
        for (index, backend) in inner.backends.iter().enumerate() {
            let name = backend.device_name();
            devices.push(name.clone());
            worker::spawn(
                index,
                name,
                backend.clone(),
                warmup.clone(),
                inner.to_batcher.clone(),
                inner.config.max_consecutive_failures,
                inner.config.max_decoding_sequences,
            )?;
        }
        tokio::spawn(batcher::run(
            inner.config.clone(),
            from_handles,
            inner.health.clone(),
            devices,
        ));
        Ok(Engine { inner })
    }

    /// Settings in use.
    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    /// The backends, one per device (the first is used for preprocessing and `Info`).
    pub fn backends(&self) -> &[Arc<dyn Backend>] {
        &self.inner.backends
    }

    /// Watches health changes.
    pub fn health(&self) -> watch::Receiver<Health> {
        self.inner.health.subscribe()
    }

    /// Waits until every device finished its warm-up, or returns the failure.
    pub async fn ready(&self) -> Result<(), String> {
        let mut rx = self.health();
        loop {
            match &*rx.borrow_and_update() {
                Health::Serving => return Ok(()),
                Health::Failing(why) => return Err(why.clone()),
                Health::Draining => return Err("draining".into()),
                Health::Starting => {}
            }
            rx.changed()
                .await
                .map_err(|_| "engine stopped".to_string())?;
        }
    }

    /// Items admitted and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.inner.in_flight.load(Ordering::Acquire)
    }

    /// Admits `items` (each a [`ScoreItem`] or a [`Work`]) as a whole or not at all, and
    /// returns one ticket per item, in order.
    /// `deadline` applies to each item: one still waiting for a batch when it passes is
    /// answered with [`FailureKind::DeadlineExceeded`] and never computed. `span` is the
    /// request's tracing span, carried through preprocessing and the batch.
    pub fn submit<W: Into<Work>>(
        &self,
        items: Vec<W>,
        deadline: Option<Instant>,
        span: &Span,
    ) -> Result<Vec<Ticket>, SubmitError> {
        self.submit_continuing(items, deadline, span, &[])
    }

    /// [`Engine::submit`] for the second phase of a call whose first phase was admitted
    /// ([`Engine::prepare_images`]): while `held` is not empty the call is already accepted,
    /// so it is admitted during a drain too (a `Rank` accepted before SIGTERM finishes).
    pub fn submit_continuing<W: Into<Work>>(
        &self,
        items: Vec<W>,
        deadline: Option<Instant>,
        span: &Span,
        held: &[ImageTicket],
    ) -> Result<Vec<Ticket>, SubmitError> {
        let inner = &self.inner;
        self.reserve(items.len(), !held.is_empty())?;
        let admitted = Instant::now();
        let mut tickets = Vec::with_capacity(items.len());
        let mut tasks: Vec<Task> = Vec::with_capacity(items.len());
        for work in items {
            let Work { item, rationale } = work.into();
            let (reply, result) = oneshot::channel();
            let (text_tx, text) = match rationale {
                Some(_) => {
                    let (tx, rx) = mpsc::unbounded_channel();
                    (Some(tx), Some(rx))
                }
                None => (None, None),
            };
            let admission = Admission::new(inner, Some(item));
            tickets.push(Ticket {
                result,
                text,
                slot: Slot(admission.clone()),
            });
            let job = Job {
                rationale,
                text: text_tx,
                reply,
                deadline,
                span: span.clone(),
                admitted,
                timing: Timing::default(),
                slot: Slot(admission),
            };
            let engine = inner.clone();
            tasks.push(Box::new(move || preprocess(&engine, job)));
        }
        inner.pool.spawn_group(tasks);
        Ok(tickets)
    }

    /// Decodes and tiles still images once each, for items that share them (a `Rank`'s
    /// candidates, each in many pairs). Admission is the same as for items: each image takes
    /// a queue slot until it is prepared (or its ticket is dropped), the whole call is
    /// refused when the queue cannot take it, and the work runs on the preprocessing pool.
    pub fn prepare_images(
        &self,
        images: Vec<ImageInput>,
        deadline: Option<Instant>,
    ) -> Result<Vec<ImageTicket>, SubmitError> {
        let inner = &self.inner;
        self.reserve(images.len(), false)?;
        let mut tickets = Vec::with_capacity(images.len());
        let mut tasks: Vec<Task> = Vec::with_capacity(images.len());
        for input in images {
            let (reply, result) = oneshot::channel();
            let slot = Slot(Admission::new(inner, None));
            tickets.push(ImageTicket {
                result,
                _slot: Slot(slot.0.clone()),
            });
            let engine = inner.clone();
            tasks.push(Box::new(move || {
                if reply.is_closed() {
                    return;
                }
                let answer = if deadline.is_some_and(|d| Instant::now() >= d) {
                    Err(ItemError::new(
                        FailureKind::DeadlineExceeded,
                        "deadline passed before the image was prepared",
                    ))
                } else {
                    let backend = &engine.backends[0];
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
            }));
        }
        inner.pool.spawn_group(tasks);
        Ok(tickets)
    }

    /// Takes `n` queue slots at once, or none; during a drain only for an accepted call.
    fn reserve(&self, n: usize, accepted_call: bool) -> Result<(), SubmitError> {
        let inner = &self.inner;
        if !accepted_call && !inner.accepting.load(Ordering::Acquire) {
            return Err(SubmitError::ShuttingDown);
        }
        let capacity = inner.config.max_queue_items;
        let mut current = inner.in_flight.load(Ordering::Acquire);
        loop {
            if current + n > capacity {
                metrics::record_rejected(n);
                return Err(SubmitError::QueueFull {
                    requested: n,
                    in_flight: current,
                    capacity,
                });
            }
            match inner.in_flight.compare_exchange_weak(
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

    /// Stops admitting items (submissions fail with [`SubmitError::ShuttingDown`]) and reports
    /// [`Health::Draining`]. Items already admitted are still scored and answered.
    pub fn close(&self) {
        self.inner.accepting.store(false, Ordering::Release);
        self.inner.health.send_replace(Health::Draining);
        metrics::set_serving(false);
    }

    /// Waits until every admitted item has been answered (or dropped by its caller).
    pub async fn drained(&self) {
        loop {
            let notified = self.inner.idle.notified();
            if self.in_flight() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// Runs on a preprocessing thread: drop / expire / prepare, then hand to the batcher.
fn preprocess(inner: &Inner, mut job: Job) {
    let start = Instant::now();
    job.timing.queue = start - job.admitted;
    let Some(mut job) = job.check(start) else {
        return;
    };
    let Some(item) = job.slot.take_item() else {
        job.discard();
        return;
    };
    let backend = &inner.backends[0];
    let prepared = catch_unwind(AssertUnwindSafe(|| backend.prepare(&item)));
    drop(item);
    job.timing.preprocess = start.elapsed();
    metrics::record_preprocess(job.timing.preprocess.as_secs_f64());
    match prepared {
        Ok(Ok(prepared)) => {
            let msg = BatcherMsg::Job(Box::new(PreparedJob {
                job,
                prepared,
                enqueued: Instant::now(),
            }));
            if let Err(mpsc::error::SendError(BatcherMsg::Job(p))) = inner.to_batcher.send(msg) {
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

/// A tiny synthetic item for each device's warm-up forward.
fn warmup_item() -> ScoreItem {
    ScoreItem {
        prompt: "warm-up".into(),
        candidate: Candidate::Image(ImageInput::Rgb8 {
            width: 32,
            height: 32,
            data: vec![128; 32 * 32 * 3],
        }),
        reference: None,
        instruction: None,
        mode: Mode::Pointwise,
    }
}
