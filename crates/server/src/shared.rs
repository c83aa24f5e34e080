//! What every RPC handler shares: the engine, the limits, and the two halves of an item's
//! trip through it: admission (converted items in, tickets out) and collection (tickets in,
//! a response out, under the call's deadline).

use std::sync::Arc;
use std::time::Instant;

use futures_util::stream::{FuturesUnordered, StreamExt};
use rewarddance_engine::{
    Engine, FailureKind, ImageTicket, ItemError, ItemResult, SubmitError, Ticket, Work,
};
use rewarddance_model::Score;
use rewarddance_proto::v1;
use tonic::Status;

use crate::config::ServerArgs;
use crate::limits::Limits;
use crate::{convert, deadline, status};

/// The state every handler reads (cheap to clone).
#[derive(Clone)]
pub(crate) struct Core {
    pub engine: Engine,
    pub limits: Limits,
    pub model_id: Arc<str>,
}

impl Core {
    /// The core over a started engine: limits from `args` and the engine's model.
    pub fn new(engine: Engine, args: &ServerArgs) -> Self {
        let model = engine.model_info();
        Core {
            limits: Limits::new(model, args),
            model_id: model.id.as_str().into(),
            engine,
        }
    }

    /// Refuses `n` units of work that the queue could never hold at once (INVALID_ARGUMENT, not
    /// a retryable RESOURCE_EXHAUSTED).
    pub fn check_capacity(&self, n: usize, what: &str, advice: &str) -> Result<(), ItemAdmitError> {
        let capacity = self.engine.config().max_queue_items;
        if n > capacity {
            return Err(ItemAdmitError::Invalid(format!(
                "{n} {what} exceed the server's queue capacity of {capacity} items \
                 (Limits.max_queue_items): {advice}"
            )));
        }
        Ok(())
    }

    /// Admits a call's items: the valid ones go to the engine as a whole (or the call is
    /// refused), the others are answered with their error at once. `held`: the image tickets
    /// of the call's first phase (Rank), which keep it admitted through a drain. Returns, per
    /// item in order, its id and its pending answer.
    pub fn admit(
        &self,
        items: Vec<convert::Item>,
        deadline: Option<Instant>,
        span: &tracing::Span,
        held: &[ImageTicket],
    ) -> Result<Vec<(String, Pending)>, ItemAdmitError> {
        let answers: usize = items
            .iter()
            .map(|i| i.work.as_ref().map_or(1, |w| w.rewards.len().max(1)))
            .sum();
        self.check_capacity(
            answers,
            "items (each reward of an item counts)",
            "split the request",
        )?;
        let mut good: Vec<Work> = Vec::with_capacity(items.len());
        // Per item: its id, the reward names it gave, and (valid) whether its text streams and
        // how many answers it gets, or its error.
        type Admitted = Result<(bool, usize), ItemError>;
        let mut slots: Vec<(String, Vec<String>, Admitted)> = Vec::with_capacity(items.len());
        for item in items {
            let slot = match item.work {
                Ok(work) => {
                    let n = work.rewards.len().max(1);
                    good.push(work);
                    Ok((item.stream_text, n))
                }
                Err(e) => Err(e),
            };
            slots.push((item.id, item.names, slot));
        }
        let mut tickets = self
            .engine
            .submit_continuing(good, deadline::engine_deadline(deadline), span, held)
            .map_err(ItemAdmitError::Refused)?
            .into_iter();
        Ok(slots
            .into_iter()
            .map(|(id, names, slot)| {
                let parts = match slot {
                    Ok((stream, n)) => (0..n)
                        .map(|k| match tickets.next() {
                            Some(ticket) => Part::Ticket {
                                ticket,
                                stream: stream && k == 0,
                            },
                            None => Part::Done(Box::new(ItemResult::failed(ItemError::new(
                                FailureKind::Internal,
                                "lost ticket",
                            )))),
                        })
                        .collect(),
                    Err(e) => vec![Part::Done(Box::new(ItemResult::failed(e)))],
                };
                (id, Pending { parts, names })
            })
            .collect())
    }
}

/// Whole-request refusals.
pub(crate) enum ItemAdmitError {
    /// Malformed request (INVALID_ARGUMENT).
    Invalid(String),
    /// The engine refused the items (queue full or draining).
    Refused(SubmitError),
}

/// The call-level status of a refusal (unary calls; streams answer per item instead).
impl From<ItemAdmitError> for Status {
    fn from(e: ItemAdmitError) -> Self {
        match e {
            ItemAdmitError::Invalid(msg) => Status::invalid_argument(msg),
            ItemAdmitError::Refused(e) => status::submit_status(&e),
        }
    }
}

/// An item's answers (one per reward it asked for), pending or known.
pub(crate) struct Pending {
    /// The first reward's answer, then the others'.
    parts: Vec<Part>,
    /// The reward names the caller gave (empty: none; the result then has no per-reward list).
    names: Vec<String>,
}

/// One answer, pending or known.
enum Part {
    /// In the engine; `stream`: the caller wants its rationale text as it is decoded.
    Ticket {
        ticket: Ticket,
        stream: bool,
    },
    Done(Box<ItemResult>),
}

/// An item's answers: the first reward's, and each named reward's (when the caller named
/// them; an item that failed before it was queued has its error under every name).
pub(crate) struct Answered {
    pub first: ItemResult,
    pub rewards: Vec<(String, Result<Score, ItemError>)>,
}

/// Where a stream's rationale text goes while it is decoded.
pub(crate) struct DeltaSink {
    /// The stream's progress channel.
    pub tx: tokio::sync::mpsc::UnboundedSender<v1::RationaleDelta>,
    /// Position of the request message on the stream.
    pub request: u64,
}

impl Pending {
    /// Waits for every answer, the first forwarding streamed rationale text to `sink` first
    /// (so every delta precedes the result).
    async fn resolve(self, sink: Option<(&DeltaSink, usize, &str)>) -> Answered {
        let mut results = Vec::with_capacity(self.parts.len());
        for (k, part) in self.parts.into_iter().enumerate() {
            results.push(part.resolve(if k == 0 { sink } else { None }).await);
        }
        let mut results = results.into_iter();
        let first = results.next().unwrap_or_else(|| {
            ItemResult::failed(ItemError::new(FailureKind::Internal, "no answer"))
        });
        let rewards = if self.names.is_empty() {
            Vec::new()
        } else {
            let mut outcomes = vec![first.outcome.clone()];
            outcomes.extend(results.map(|r| r.outcome));
            // An item refused before it was queued has one answer: its error, for every name.
            while outcomes.len() < self.names.len() {
                outcomes.push(first.outcome.clone());
            }
            self.names.into_iter().zip(outcomes).collect()
        };
        Answered { first, rewards }
    }
}

impl Part {
    /// Waits for the answer, forwarding streamed rationale text to `sink` first.
    async fn resolve(self, sink: Option<(&DeltaSink, usize, &str)>) -> ItemResult {
        let (mut ticket, stream) = match self {
            Part::Done(r) => return *r,
            Part::Ticket { ticket, stream } => (ticket, stream),
        };
        let text = if stream { ticket.take_text() } else { None };
        if let (Some(mut text), Some((sink, index, id))) = (text, sink) {
            while let Some(piece) = text.recv().await {
                let _ = sink.tx.send(v1::RationaleDelta {
                    request: sink.request,
                    index: index as u32,
                    id: id.to_string(),
                    text: piece,
                });
            }
        }
        ticket.wait().await
    }
}

/// Answers a request's items into a response (in request order; items resolve concurrently,
/// so one item's streamed text is never held up behind another's). The deadline contract
/// ([`crate::deadline`]): when `until` passes first, or an item comes back expired, the call
/// fails with DEADLINE_EXCEEDED and the items still pending are dropped (their queue slots
/// freed, their compute skipped).
pub(crate) async fn collect(
    items: Vec<(String, Pending)>,
    until: Option<Instant>,
    model_id: &str,
    sink: Option<&DeltaSink>,
) -> Result<v1::ScoreResponse, Status> {
    let results: Vec<v1::ItemResult> = collect_with(items, until, sink)
        .await?
        .into_iter()
        .map(|(index, id, a)| {
            let mut result = convert::result(id, index, &a.first);
            result.rewards = a
                .rewards
                .iter()
                .map(|(name, r)| convert::reward_outcome(name, r))
                .collect();
            result
        })
        .collect();
    Ok(v1::ScoreResponse {
        timing: Some(convert::request_timing(&results)),
        results,
        model_id: model_id.to_string(),
        rationale_deltas: Vec::new(),
    })
}

/// Every item's engine result with its position and id, in request order, under the same
/// deadline contract as [`collect`] (for handlers with their own answer message).
pub(crate) async fn collect_results(
    items: Vec<(String, Pending)>,
    until: Option<Instant>,
) -> Result<Vec<(usize, String, ItemResult)>, Status> {
    Ok(collect_with(items, until, None)
        .await?
        .into_iter()
        .map(|(index, id, a)| (index, id, a.first))
        .collect())
}

async fn collect_with(
    items: Vec<(String, Pending)>,
    until: Option<Instant>,
    sink: Option<&DeltaSink>,
) -> Result<Vec<(usize, String, Answered)>, Status> {
    let total = items.len();
    let answered = std::sync::atomic::AtomicUsize::new(0);
    let all = async {
        let mut pending: FuturesUnordered<_> = items
            .into_iter()
            .enumerate()
            .map(|(index, (id, pending))| async move {
                let r = pending.resolve(sink.map(|s| (s, index, id.as_str()))).await;
                (index, id, r)
            })
            .collect();
        let mut results: Vec<Option<(usize, String, Answered)>> =
            (0..total).map(|_| None).collect();
        while let Some((index, id, r)) = pending.next().await {
            let expired = |o: &Result<Score, ItemError>| matches!(o, Err(e) if e.kind == FailureKind::DeadlineExceeded);
            if expired(&r.first.outcome) || r.rewards.iter().any(|(_, o)| expired(o)) {
                return Err(());
            }
            results[index] = Some((index, id, r));
            answered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(results.into_iter().flatten().collect::<Vec<_>>())
    };
    let results = match until {
        None => all.await,
        Some(at) => tokio::time::timeout_at(at.into(), all)
            .await
            .unwrap_or(Err(())),
    }
    .map_err(|()| deadline::exceeded(total - answered.into_inner(), total))?;
    Ok(results)
}
