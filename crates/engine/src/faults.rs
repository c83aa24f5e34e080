//! Fault injection for tests (cargo feature `fault-injection`): a [`Model`] wrapper that
//! fails, panics or stalls on purpose, so tests can prove that one item never fails its
//! neighbours and that health follows the device rather than what callers send.
//!
//! Faults are asked for by markers in an item's prompt text (they reach the backend inside the
//! rendered user message):
//! - `[[fault:panic]]`: any forward containing the item panics.
//! - `[[fault:error]]`: any forward containing the item fails with a compute error.
//! - `[[fault:invalid]]`: any forward containing the item fails with a caller error
//!   (`InvalidInput`), as a batch-level check of one item's input would.
//! - `[[fault:oom]]`: a forward containing the item *and others* fails with an out-of-memory
//!   compute error; the item alone succeeds (a batch too big for the device).
//! - `[[fault:sleep=MS]]`: the forward sleeps MS milliseconds first.
//! - `[[fault:prepare_sleep=MS]]`: preprocessing the item sleeps MS milliseconds first.
//!
//! [`FaultyBackend::break_device`] makes every forward fail (a device that really broke).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rewarddance_model::{
    Error, ImageInput, ModelInfo, PreparedImage, PreparedItem, Rationale, Result, ReuseStats,
    ScoreItem, StopReason, Token,
};

use crate::backend::Model;
use crate::task::{Output, Task};

/// Wraps a model whose prepared items are `PreparedItem`s (where the markers are read) and
/// injects the faults its items ask for.
pub struct FaultyBackend<B: Model<Prepared = PreparedItem>> {
    inner: B,
    broken: AtomicBool,
    forwards: AtomicUsize,
}

impl<B: Model<Prepared = PreparedItem>> FaultyBackend<B> {
    /// Wraps `inner`.
    pub fn new(inner: B) -> Self {
        FaultyBackend {
            inner,
            broken: AtomicBool::new(false),
            forwards: AtomicUsize::new(0),
        }
    }

    /// Makes every forward fail (`true`) or work again (`false`).
    pub fn break_device(&self, broken: bool) {
        self.broken.store(broken, Ordering::SeqCst);
    }

    /// Forward passes attempted so far (the warm-up included).
    pub fn forwards(&self) -> usize {
        self.forwards.load(Ordering::SeqCst)
    }

    /// The wrapped backend.
    pub fn inner(&self) -> &B {
        &self.inner
    }

    /// Applies the faults `batch` asks for.
    fn inject(&self, batch: &[&PreparedItem]) -> Result<()> {
        self.forwards.fetch_add(1, Ordering::SeqCst);
        if self.broken.load(Ordering::SeqCst) {
            return Err(compute("injected device failure"));
        }
        for item in batch {
            if let Some(ms) = marker_value(&item.user_content, "[[fault:sleep=") {
                std::thread::sleep(Duration::from_millis(ms));
            }
        }
        let has = |marker: &str| batch.iter().any(|p| p.user_content.contains(marker));
        if has("[[fault:panic]]") {
            panic!("injected panic");
        }
        if has("[[fault:error]]") {
            return Err(compute("injected compute error"));
        }
        if has("[[fault:invalid]]") {
            return Err(Error::InvalidInput("injected invalid input".into()));
        }
        if batch.len() > 1 && has("[[fault:oom]]") {
            return Err(compute("injected CUDA_ERROR_OUT_OF_MEMORY"));
        }
        Ok(())
    }
}

fn compute(message: &str) -> Error {
    Error::Compute(candle_core::Error::Msg(message.to_string()))
}

/// `N` of a `{opening}N]]` marker in `text`.
fn marker_value(text: &str, opening: &str) -> Option<u64> {
    let rest = &text[text.find(opening)? + opening.len()..];
    rest[..rest.find("]]")?].parse().ok()
}

impl<B: Model<Prepared = PreparedItem>> Model for FaultyBackend<B> {
    type Prepared = PreparedItem;
    type Sequence = B::Sequence;

    fn info(&self) -> ModelInfo {
        self.inner.info()
    }

    fn prepare(&self, item: &ScoreItem, reward: usize) -> Result<PreparedItem> {
        if let Some(ms) = marker_value(&item.prompt, "[[fault:prepare_sleep=") {
            std::thread::sleep(Duration::from_millis(ms));
        }
        self.inner.prepare(item, reward)
    }

    fn tokens(prepared: &PreparedItem) -> usize {
        B::tokens(prepared)
    }

    fn tiles(prepared: &PreparedItem) -> usize {
        B::tiles(prepared)
    }

    fn prepare_image(&self, input: &ImageInput) -> Result<Arc<PreparedImage>> {
        self.inner.prepare_image(input)
    }

    fn forward(&self, batch: &[&PreparedItem], tasks: &[Task]) -> Result<Vec<Output<B::Sequence>>> {
        self.inject(batch)?;
        self.inner.forward(batch, tasks)
    }

    fn next_token(&self, sequence: &mut B::Sequence) -> Result<Token> {
        self.inner.next_token(sequence)
    }

    fn decode_forward(&self, sequences: &mut [&mut B::Sequence]) -> Result<()> {
        if self.broken.load(Ordering::SeqCst) {
            return Err(compute("injected device failure"));
        }
        self.inner.decode_forward(sequences)
    }

    fn finish(&self, sequence: B::Sequence, stop: StopReason) -> Rationale {
        self.inner.finish(sequence, stop)
    }

    fn reuse_stats(&self) -> ReuseStats {
        self.inner.reuse_stats()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn sleep_markers_parse() {
        let sleep = |text| super::marker_value(text, "[[fault:sleep=");
        assert_eq!(sleep("a [[fault:sleep=250]] b"), Some(250));
        assert_eq!(sleep("[[fault:sleep=x]]"), None);
        assert_eq!(sleep("nothing"), None);
    }
}
