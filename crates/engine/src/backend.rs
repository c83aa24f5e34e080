//! What the engine runs items on: a model on one device, behind two traits.
//!
//! [`Model`] is what a model implements, in its own types: what it is ([`ModelInfo`]), how it
//! prepares an item on the CPU, how it runs one batch of [`Task`]s on its device, how it picks
//! and computes the next token of the rationales it decodes, and what it saved by reuse.
//! `RewardModel` is one; a test can be one without any model (fixed scores), or wrap one to
//! inject faults.
//!
//! [`Backend`] is the same surface with the model's types erased ([`Prepared`], [`Sequence`]),
//! so the engine holds one `Arc<dyn Backend>` per device whatever runs there. Every [`Model`]
//! is a [`Backend`]; the engine calls nothing else.

use std::any::{Any, TypeId};
use std::sync::Arc;

use candle_core::DeviceLocation;
use rewarddance_model::{
    Device, Error, Generation, ImageInput, ModelInfo, PreparedImage, PreparedItem, Rationale,
    RationaleOptions, Result, ReuseStats, RewardModel, ScoreItem, StopReason, Token,
};

use crate::task::{Output, Task};

/// A model on one device, in its own types. Every method must be pure per item: batching
/// never changes a score.
pub trait Model: Send + Sync + 'static {
    /// An item ready for the device (tokens, tiles).
    type Prepared: Send + 'static;
    /// A rationale being decoded (its key/value cache, its sampler, the text so far).
    type Sequence: Send + 'static;

    /// Identity, limits and geometry (what `Info` reports and admission checks); the engine
    /// asks once per device, at start.
    fn info(&self) -> ModelInfo;

    /// CPU half: decode, tile, render and tokenise one item for reward `reward` (an index
    /// into [`ModelInfo::rewards`]). Called concurrently. The engine prepares every item on
    /// its first backend, whichever device then runs it, so the result must not depend on the
    /// device.
    fn prepare(&self, item: &ScoreItem, reward: usize) -> Result<Self::Prepared>;

    /// [`Self::prepare`] for each of `rewards`: a model whose rewards share images decodes
    /// them once (the default prepares each on its own).
    fn prepare_each(&self, item: &ScoreItem, rewards: &[usize]) -> Vec<Result<Self::Prepared>> {
        rewards.iter().map(|&r| self.prepare(item, r)).collect()
    }

    /// Tokens `prepared` adds to a batch (the unit of the batcher's token budget).
    fn tokens(prepared: &Self::Prepared) -> usize;

    /// Image tiles `prepared` holds (the unit of a gradient batch's budget). No default: a
    /// wrapper that reported a constant would let any gradient item past the budget.
    fn tiles(prepared: &Self::Prepared) -> usize;

    /// CPU half for one still image shared by several items (a `Rank`'s candidates): decoded
    /// and tiled once. Called concurrently.
    fn prepare_image(&self, input: &ImageInput) -> Result<Arc<PreparedImage>>;

    /// Device half: one packed forward pass over `batch`, where `tasks[i]` is what item `i`
    /// asks for. One output per item, in batch order. Called from the device's worker thread
    /// only.
    fn forward(
        &self,
        batch: &[&Self::Prepared],
        tasks: &[Task],
    ) -> Result<Vec<Output<Self::Sequence>>>;

    /// Picks a sequence's next token (host side).
    fn next_token(&self, sequence: &mut Self::Sequence) -> Result<Token>;

    /// One batched decode step over sequences from any forward passes.
    fn decode_forward(&self, sequences: &mut [&mut Self::Sequence]) -> Result<()>;

    /// Ends a sequence for `stop` and returns what it decoded.
    fn finish(&self, sequence: Self::Sequence, stop: StopReason) -> Rationale;

    /// Work saved by reuse since start-up (cumulative; published after each batch).
    fn reuse_stats(&self) -> ReuseStats;
}

/// An item a backend prepared, waiting for its forward pass: opaque to the engine except for
/// its size.
pub struct Prepared {
    tokens: usize,
    tiles: usize,
    item: Box<dyn Any + Send>,
}

impl Prepared {
    /// Tokens it adds to a batch.
    pub fn tokens(&self) -> usize {
        self.tokens
    }

    /// Image tiles it holds.
    pub fn tiles(&self) -> usize {
        self.tiles
    }
}

/// A rationale a backend is decoding, opaque to the engine.
pub struct Sequence(Box<dyn Any + Send>);

/// A [`Model`] as the engine holds it, its types erased. Implemented for every [`Model`];
/// only the engine calls it.
pub trait Backend: Send + Sync + 'static {
    /// [`Model::info`].
    fn info(&self) -> ModelInfo;
    /// [`Model::prepare`].
    fn prepare(&self, item: &ScoreItem, reward: usize) -> Result<Prepared>;
    /// [`Model::prepare_each`].
    fn prepare_each(&self, item: &ScoreItem, rewards: &[usize]) -> Vec<Result<Prepared>>;
    /// [`Model::prepare_image`].
    fn prepare_image(&self, input: &ImageInput) -> Result<Arc<PreparedImage>>;
    /// [`Model::forward`].
    fn forward(&self, batch: &[&Prepared], tasks: &[Task]) -> Result<Vec<Output<Sequence>>>;
    /// [`Model::next_token`].
    fn next_token(&self, sequence: &mut Sequence) -> Result<Token>;
    /// [`Model::decode_forward`].
    fn decode_forward(&self, sequences: &mut [&mut Sequence]) -> Result<()>;
    /// [`Model::finish`].
    fn finish(&self, sequence: Sequence, stop: StopReason) -> Result<Rationale>;
    /// [`Model::reuse_stats`].
    fn reuse_stats(&self) -> ReuseStats;
    /// The model's type: one engine's backends share it, since an item prepared on one of
    /// them runs on any.
    fn model_type(&self) -> TypeId;
}

/// A model's prepared item with its type erased.
fn erase<M: Model>(prepared: M::Prepared) -> Prepared {
    Prepared {
        tokens: M::tokens(&prepared),
        tiles: M::tiles(&prepared),
        item: Box::new(prepared),
    }
}

/// An item or sequence that another kind of backend made (the engine refuses mixed backends
/// at start, so this is a bug).
fn foreign() -> Error {
    Error::Compute(candle_core::Error::Msg(
        "the backend got an item another kind of backend prepared".into(),
    ))
}

impl<M: Model> Backend for M {
    fn info(&self) -> ModelInfo {
        Model::info(self)
    }

    fn prepare(&self, item: &ScoreItem, reward: usize) -> Result<Prepared> {
        Model::prepare(self, item, reward).map(erase::<M>)
    }

    fn prepare_each(&self, item: &ScoreItem, rewards: &[usize]) -> Vec<Result<Prepared>> {
        Model::prepare_each(self, item, rewards)
            .into_iter()
            .map(|p| p.map(erase::<M>))
            .collect()
    }

    fn prepare_image(&self, input: &ImageInput) -> Result<Arc<PreparedImage>> {
        Model::prepare_image(self, input)
    }

    fn forward(&self, batch: &[&Prepared], tasks: &[Task]) -> Result<Vec<Output<Sequence>>> {
        let items = batch
            .iter()
            .map(|p| p.item.downcast_ref::<M::Prepared>().ok_or_else(foreign))
            .collect::<Result<Vec<_>>>()?;
        let outputs = Model::forward(self, &items, tasks)?;
        Ok(outputs
            .into_iter()
            .map(|o| o.map_sequence(|s| Sequence(Box::new(s))))
            .collect())
    }

    fn next_token(&self, sequence: &mut Sequence) -> Result<Token> {
        let sequence = sequence
            .0
            .downcast_mut::<M::Sequence>()
            .ok_or_else(foreign)?;
        Model::next_token(self, sequence)
    }

    fn decode_forward(&self, sequences: &mut [&mut Sequence]) -> Result<()> {
        let mut typed = sequences
            .iter_mut()
            .map(|s| s.0.downcast_mut::<M::Sequence>().ok_or_else(foreign))
            .collect::<Result<Vec<_>>>()?;
        Model::decode_forward(self, &mut typed)
    }

    fn finish(&self, sequence: Sequence, stop: StopReason) -> Result<Rationale> {
        let sequence = sequence
            .0
            .downcast::<M::Sequence>()
            .map_err(|_| foreign())?;
        Ok(Model::finish(self, *sequence, stop))
    }

    fn reuse_stats(&self) -> ReuseStats {
        Model::reuse_stats(self)
    }

    fn model_type(&self) -> TypeId {
        TypeId::of::<M>()
    }
}

impl Model for RewardModel {
    type Prepared = PreparedItem;
    type Sequence = Generation;

    fn info(&self) -> ModelInfo {
        RewardModel::info(self)
    }

    fn prepare(&self, item: &ScoreItem, reward: usize) -> Result<PreparedItem> {
        RewardModel::prepare_for(self, item, reward)
    }

    fn prepare_each(&self, item: &ScoreItem, rewards: &[usize]) -> Vec<Result<PreparedItem>> {
        RewardModel::prepare_rewards(self, item, rewards)
    }

    fn tokens(prepared: &PreparedItem) -> usize {
        prepared.num_tokens()
    }

    fn prepare_image(&self, input: &ImageInput) -> Result<Arc<PreparedImage>> {
        RewardModel::prepare_image(self, input)
    }

    fn tiles(prepared: &PreparedItem) -> usize {
        prepared.num_tiles()
    }

    fn forward(&self, batch: &[&PreparedItem], tasks: &[Task]) -> Result<Vec<Output<Generation>>> {
        if tasks.iter().any(Task::is_gradient) {
            // Gradient batches are their own kind (the batcher keeps them apart): each item is
            // one forward and one backward, sharing only constant prefixes. Anything else in
            // such a batch is scored alone.
            let gradient: Vec<(&PreparedItem, _)> = batch
                .iter()
                .zip(tasks)
                .filter_map(|(item, task)| match task {
                    Task::Gradient(objective) => Some((*item, *objective)),
                    _ => None,
                })
                .collect();
            let (items, objectives): (Vec<_>, Vec<_>) = gradient.into_iter().unzip();
            let mut gradients = self.score_grad_batch(&items, &objectives)?.into_iter();
            return batch
                .iter()
                .zip(tasks)
                .map(|(item, task)| match task {
                    Task::Gradient(_) => gradients
                        .next()
                        .map(|g| Output::Gradient(Box::new(g)))
                        .ok_or_else(|| Error::InvalidInput("a gradient went missing".into())),
                    _ => Ok(Output::Score(self.score_prepared(&[item])?[0])),
                })
                .collect();
        }
        if tasks.iter().all(|t| *t == Task::Score) {
            // The fast path: trainers want the number only.
            let scores = self.score_prepared(batch)?;
            return Ok(scores.into_iter().map(Output::Score).collect());
        }
        let options: Vec<Option<RationaleOptions>> = tasks.iter().map(Task::rationale).collect();
        let (scores, generations) = self.prefill_for_rationales(batch, &options)?;
        let mut generations = generations.into_iter();
        Ok(scores
            .into_iter()
            .map(|score| match generations.next().flatten() {
                Some(generation) => Output::Rationale(score, generation),
                None => Output::Score(score),
            })
            .collect())
    }

    fn next_token(&self, generation: &mut Generation) -> Result<Token> {
        RewardModel::next_token(self, generation)
    }

    fn decode_forward(&self, generations: &mut [&mut Generation]) -> Result<()> {
        RewardModel::decode_forward(self, generations)
    }

    fn finish(&self, generation: Generation, stop: StopReason) -> Rationale {
        generation.finish(stop)
    }

    fn reuse_stats(&self) -> ReuseStats {
        RewardModel::reuse_stats(self)
    }
}

/// `cpu`, `cuda:N` or `metal:N`.
pub fn device_name(device: &Device) -> String {
    match device.location() {
        DeviceLocation::Cpu => "cpu".to_string(),
        DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}
