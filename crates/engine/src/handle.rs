//! The engine handle every request handler shares: start, submit, health and drain.

use std::sync::Arc;
use std::time::Instant;

use rewarddance_model::{ImageInput, ModelInfo};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::Span;

use crate::admission::{Slot, Slots, SubmitError};
use crate::backend::{device_name, Backend};
use crate::batcher::{self, BatcherMsg};
use crate::config::EngineConfig;
use crate::fair::{FairPool, PoolTask};
use crate::health::Health;
use crate::job::Job;
use crate::metrics;
use crate::preprocess;
use crate::result::Timing;
use crate::task::{Task, Work};
use crate::ticket::{ImageTicket, Ticket};
use crate::worker;

/// Shared state behind [`Engine`] handles.
struct Inner {
    config: EngineConfig,
    /// What the model is (the first device's; every device runs the same model).
    model_info: ModelInfo,
    /// The reward names, as metric labels (index = reward).
    reward_names: Vec<Arc<str>>,
    /// Device labels, one per backend.
    devices: Vec<String>,
    /// Prepares every item and image, whichever device runs it (the first backend).
    preprocessor: Arc<dyn Backend>,
    to_batcher: mpsc::UnboundedSender<BatcherMsg>,
    pool: Arc<FairPool>,
    slots: Arc<Slots>,
    health: watch::Sender<Health>,
}

/// The engine: cheap to clone, shared by every request handler.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl Engine {
    /// Starts the batcher, one worker thread per backend (device) and the preprocessing pool.
    /// Must be called inside a tokio runtime. Each worker runs a warm-up forward first; health
    /// turns [`Health::Serving`] once all of them succeeded (see [`Engine::ready`]). The
    /// backends must run the same kind of model (an item prepared on one runs on any).
    pub fn start(backends: Vec<Arc<dyn Backend>>, config: EngineConfig) -> std::io::Result<Self> {
        let Some(first) = backends.first().cloned() else {
            return Err(std::io::Error::other(
                "the engine needs at least one device",
            ));
        };
        if backends
            .iter()
            .any(|b| b.model_type() != first.model_type())
        {
            return Err(std::io::Error::other(
                "the engine's devices must run the same kind of model",
            ));
        }
        let model_info = first.info();
        let devices: Vec<String> = backends
            .iter()
            .map(|b| device_name(&b.info().device))
            .collect();
        let pool = FairPool::new(config.preprocess_threads)?;
        let slots = Slots::new(config.max_queue_items);
        let (to_batcher, from_handles) = mpsc::unbounded_channel();
        let (health, _) = watch::channel(Health::Starting);
        for (index, (backend, device)) in backends.into_iter().zip(&devices).enumerate() {
            worker::spawn(
                index,
                device.clone(),
                backend,
                to_batcher.clone(),
                config.max_consecutive_failures,
                config.max_decoding_sequences,
            )?;
        }
        tokio::spawn(batcher::run(
            config.clone(),
            from_handles,
            health.clone(),
            devices.clone(),
        ));
        Ok(Engine {
            inner: Arc::new(Inner {
                config,
                reward_names: reward_names(&model_info),
                model_info,
                devices,
                preprocessor: first,
                to_batcher,
                pool,
                slots,
                health,
            }),
        })
    }

    /// Settings in use.
    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    /// What the model is: identity, limits and geometry (every device runs the same model;
    /// its `device` is the first one's).
    pub fn model_info(&self) -> &ModelInfo {
        &self.inner.model_info
    }

    /// Device labels (`cpu`, `cuda:N`), one per worker, in start order.
    pub fn devices(&self) -> &[String] {
        &self.inner.devices
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
        self.inner.slots.in_flight()
    }

    /// Admits `items` (each a `ScoreItem`, scored, or a [`Work`]) as a whole or not at all,
    /// and returns one ticket per item and reward ([`Work::rewards`]), in order.
    /// `deadline` applies to each item: one still waiting for a batch when it passes is
    /// answered with [`FailureKind::DeadlineExceeded`](crate::FailureKind::DeadlineExceeded)
    /// and never computed. `span` is the request's tracing span, carried through
    /// preprocessing and the batch.
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
        let works: Vec<Work> = items.into_iter().map(Into::into).collect();
        let answers: usize = works.iter().map(|w| w.rewards.len().max(1)).sum();
        inner.slots.reserve(answers, !held.is_empty())?;
        let admitted = Instant::now();
        let mut tickets = Vec::with_capacity(answers);
        let mut tasks: Vec<PoolTask> = Vec::with_capacity(works.len());
        for work in works {
            let rewards = work.reward_list();
            let Work { item, task, .. } = work;
            let mut item = Some(item);
            let mut jobs = Vec::with_capacity(rewards.len());
            for (k, &reward) in rewards.iter().enumerate() {
                // Only the first reward decodes a rationale.
                let task = match task {
                    Task::Rationale(_) if k > 0 => Task::Score,
                    other => other,
                };
                let (reply, result) = oneshot::channel();
                let (text_tx, text) = match task {
                    Task::Rationale(_) => {
                        let (tx, rx) = mpsc::unbounded_channel();
                        (Some(tx), Some(rx))
                    }
                    Task::Score | Task::Gradient(_) => (None, None),
                };
                // The first job's slot carries the item to preprocessing.
                let (ticket_slot, job_slot) = Slot::pair(&inner.slots, item.take());
                tickets.push(Ticket {
                    result,
                    text,
                    slot: ticket_slot,
                });
                jobs.push(Job {
                    task,
                    reward: inner.reward_name(reward),
                    text: text_tx,
                    reply,
                    deadline,
                    span: span.clone(),
                    admitted,
                    timing: Timing::default(),
                    slot: job_slot,
                });
            }
            let engine = inner.clone();
            tasks.push(Box::new(move || {
                preprocess::item(
                    engine.preprocessor.as_ref(),
                    &engine.to_batcher,
                    jobs,
                    rewards,
                    engine.config.max_gradient_tiles,
                )
            }));
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
        inner.slots.reserve(images.len(), false)?;
        let mut tickets = Vec::with_capacity(images.len());
        let mut tasks: Vec<PoolTask> = Vec::with_capacity(images.len());
        for input in images {
            let (reply, result) = oneshot::channel();
            let (ticket_slot, job_slot) = Slot::pair(&inner.slots, None);
            tickets.push(ImageTicket {
                result,
                _slot: ticket_slot,
            });
            let engine = inner.clone();
            tasks.push(Box::new(move || {
                preprocess::image(
                    engine.preprocessor.as_ref(),
                    input,
                    deadline,
                    reply,
                    job_slot,
                )
            }));
        }
        inner.pool.spawn_group(tasks);
        Ok(tickets)
    }

    /// Stops admitting items (submissions fail with [`SubmitError::ShuttingDown`]) and reports
    /// [`Health::Draining`]. Items already admitted are still scored and answered.
    pub fn close(&self) {
        self.inner.slots.close();
        self.inner.health.send_replace(Health::Draining);
        metrics::set_serving(false);
    }

    /// Waits until every admitted item has been answered (or dropped by its caller).
    pub async fn drained(&self) {
        self.inner.slots.drained().await;
    }
}

impl Inner {
    /// The label of reward `index` (`default` past the declared ones).
    fn reward_name(&self, index: usize) -> Arc<str> {
        self.reward_names
            .get(index)
            .cloned()
            .unwrap_or_else(|| Arc::from(rewarddance_model::pipeline::rewards::DEFAULT_REWARD))
    }
}

/// The reward names of `model` as metric labels (`default` when it declares none).
fn reward_names(model: &ModelInfo) -> Vec<Arc<str>> {
    if model.rewards.is_empty() {
        return vec![Arc::from(
            rewarddance_model::pipeline::rewards::DEFAULT_REWARD,
        )];
    }
    model
        .rewards
        .iter()
        .map(|r| Arc::from(r.name.as_str()))
        .collect()
}
