//! What the engine runs items on: a loaded [`RewardModel`] on one device, behind a small trait
//! so that tests can inject faults (slow batches, panics) without touching the model.

use candle_core::DeviceLocation;
use std::sync::Arc;

use rewarddance_model::{
    Device, Generation, ImageInput, PreparedImage, PreparedItem, RationaleOptions, Result,
    RewardModel, Score, ScoreItem, Token,
};

/// A model on one device. Every method must be pure per item (batching never changes a score).
pub trait Backend: Send + Sync + 'static {
    /// The underlying model (identity, config and limits for `Info`).
    fn model(&self) -> &RewardModel;

    /// CPU half: decode, tile, render and tokenise one item. Called concurrently.
    fn prepare(&self, item: &ScoreItem) -> Result<PreparedItem> {
        self.model().prepare(item)
    }

    /// CPU half for one still image shared by several items (a `Rank`'s candidates): decoded
    /// and tiled once. Called concurrently.
    fn prepare_image(&self, input: &ImageInput) -> Result<Arc<PreparedImage>> {
        self.model().prepare_image(input)
    }

    /// Device half: one packed forward pass, scores in batch order. Called from the device's
    /// worker thread only.
    fn score_prepared(&self, batch: &[&PreparedItem]) -> Result<Vec<Score>> {
        self.model().score_prepared(batch)
    }

    /// Device half when some items want a rationale: one prefill, the scores, and a
    /// [`Generation`] for each item whose `options` entry is set.
    fn prefill_for_rationales(
        &self,
        batch: &[&PreparedItem],
        options: &[Option<RationaleOptions>],
    ) -> Result<(Vec<Score>, Vec<Option<Generation>>)> {
        self.model().prefill_for_rationales(batch, options)
    }

    /// Picks a generation's next token (host side).
    fn next_token(&self, generation: &mut Generation) -> Result<Token> {
        self.model().next_token(generation)
    }

    /// One batched decode step over generations from any prefills.
    fn decode_forward(&self, generations: &mut [&mut Generation]) -> Result<()> {
        self.model().decode_forward(generations)
    }

    /// Device label for logs, metrics and `Info`: `cpu`, `cuda:N`.
    fn device_name(&self) -> String {
        device_name(self.model().device())
    }
}

impl Backend for RewardModel {
    fn model(&self) -> &RewardModel {
        self
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
