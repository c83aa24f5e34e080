//! What a caller holds for each admitted item (or image): its pending answer, and its queue
//! slot until the answer arrives or the caller lets go.

use std::sync::Arc;

use rewarddance_model::PreparedImage;
use tokio::sync::{mpsc, oneshot};

use crate::admission::Slot;
use crate::result::{FailureKind, ItemError, ItemResult};

/// One item's pending answer. Dropping it tells the engine nobody waits any more: the item's
/// queue slot is released at once (its input is freed if it still waits for preprocessing),
/// and the item is dropped before compute, or its rationale stops decoding.
pub struct Ticket {
    pub(crate) result: oneshot::Receiver<ItemResult>,
    pub(crate) text: Option<mpsc::UnboundedReceiver<String>>,
    pub(crate) slot: Slot,
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

/// One image's pending preparation ([`Engine::prepare_images`](crate::Engine::prepare_images)).
/// Dropping it frees its queue slot, and the image is not prepared if no thread has started on
/// it.
pub struct ImageTicket {
    pub(crate) result: oneshot::Receiver<Result<Arc<PreparedImage>, ItemError>>,
    pub(crate) _slot: Slot,
}

impl ImageTicket {
    /// Waits for the prepared image, or why it could not be prepared. The ticket keeps its
    /// queue slot until it is dropped: a call that goes on to submit items from the image
    /// holds it until then ([`Engine::submit_continuing`](crate::Engine::submit_continuing)),
    /// so a drain cannot end between.
    pub async fn wait(&mut self) -> Result<Arc<PreparedImage>, ItemError> {
        (&mut self.result).await.unwrap_or_else(|_| {
            Err(ItemError::new(
                FailureKind::Internal,
                "the engine dropped the image without an answer",
            ))
        })
    }
}
