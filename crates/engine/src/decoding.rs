//! The rationales a device worker is decoding: continuous batching across prefill batches.
//!
//! After a prefill, items that asked for a rationale join the worker's [`DecodeSet`] with
//! their score already known. Each [`DecodeSet::step`] picks one token per sequence on the
//! host, streams the new text to its caller, answers the sequences that ended (end of turn,
//! `max_tokens`, deadline) or drops those whose caller went away, and runs one batched
//! decoder step for the rest.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;

use rewarddance_model::{Score, StopReason};

use crate::backend::{Backend, Sequence};
use crate::job::Job;
use crate::metrics;
use crate::result::{RationaleEnd, RationaleOutput};

/// One item decoding its rationale.
pub(crate) struct Decoding {
    pub sequence: Sequence,
    pub job: Job,
    pub score: Score,
    /// When its prefill ended.
    pub started: Instant,
}

impl Decoding {
    /// Answers the item with its score and the rationale so far.
    fn finish(self, end: RationaleEnd, backend: &dyn Backend) {
        let Decoding {
            sequence,
            mut job,
            score,
            started,
        } = self;
        let (text, token_ids) = match backend.finish(sequence, end.to_model()) {
            Ok(rationale) => (rationale.text, rationale.token_ids),
            Err(err) => {
                tracing::error!(parent: &job.span, error = %err, "ending a rationale failed");
                (String::new(), Vec::new())
            }
        };
        job.timing.decode = started.elapsed();
        job.succeed(
            score,
            Some(RationaleOutput {
                text,
                token_ids,
                end,
            }),
        );
    }
}

/// The rationales one device is decoding.
#[derive(Default)]
pub(crate) struct DecodeSet {
    running: Vec<Decoding>,
    /// How long the last step took: a sequence whose deadline falls within the next step is
    /// answered now, while its answer can still arrive in time.
    last_step: std::time::Duration,
}

/// How a step went.
pub(crate) enum StepOutcome {
    /// Every sequence advanced (or ended normally).
    Ok,
    /// The decoder step failed or panicked: its sequences were answered with what they had.
    Failed { panicked: bool },
}

impl DecodeSet {
    /// Sequences decoding.
    pub fn len(&self) -> usize {
        self.running.len()
    }

    /// Whether nothing is decoding.
    pub fn is_empty(&self) -> bool {
        self.running.is_empty()
    }

    /// Adds a freshly prefilled sequence.
    pub fn join(&mut self, decoding: Decoding) {
        self.running.push(decoding);
    }

    /// One token for every sequence, then one batched decoder step.
    pub fn step(&mut self, backend: &dyn Backend, device: &str) -> StepOutcome {
        let start = Instant::now();
        let horizon = start + self.last_step;
        let mut next = Vec::with_capacity(self.running.len());
        let mut tokens = 0usize;
        for mut d in self.running.drain(..) {
            if d.job.abandoned() {
                // Cancellation: nobody reads the text any more, stop decoding it.
                d.job.discard();
                continue;
            }
            if d.job.expired(horizon) {
                d.finish(RationaleEnd::Deadline, backend);
                continue;
            }
            match catch_unwind(AssertUnwindSafe(|| backend.next_token(&mut d.sequence))) {
                Ok(Ok(token)) => {
                    if token.stop != Some(StopReason::EndOfTurn) {
                        tokens += 1;
                    }
                    if !token.text.is_empty() {
                        d.job.stream_text(&token.text);
                    }
                    match token.stop {
                        Some(stop) => d.finish(RationaleEnd::from_model(stop), backend),
                        None => next.push(d),
                    }
                }
                Ok(Err(err)) => {
                    tracing::error!(parent: &d.job.span, error = %err, "picking a token failed");
                    d.finish(RationaleEnd::Failed, backend);
                }
                Err(_) => {
                    tracing::error!(parent: &d.job.span, "picking a token panicked");
                    d.finish(RationaleEnd::Failed, backend);
                }
            }
        }
        let outcome = if next.is_empty() {
            StepOutcome::Ok
        } else {
            let mut refs: Vec<&mut Sequence> = next.iter_mut().map(|d| &mut d.sequence).collect();
            match catch_unwind(AssertUnwindSafe(|| backend.decode_forward(&mut refs))) {
                Ok(Ok(())) => StepOutcome::Ok,
                Ok(Err(err)) => {
                    tracing::error!(device, error = %err, "decode step failed");
                    StepOutcome::Failed { panicked: false }
                }
                Err(_) => {
                    tracing::error!(device, "decode step panicked");
                    StepOutcome::Failed { panicked: true }
                }
            }
        };
        if matches!(outcome, StepOutcome::Failed { .. }) {
            for d in next.drain(..) {
                d.finish(RationaleEnd::Failed, backend);
            }
        }
        self.running = next;
        self.last_step = start.elapsed();
        metrics::record_decode_step(
            device,
            tokens,
            self.last_step.as_secs_f64(),
            self.running.len(),
        );
        outcome
    }
}
