//! # rewarddance-engine
//!
//! The scheduling half of the service: admission (a bounded queue), parallel preprocessing off
//! the async runtime, a dynamic batcher, and one worker thread per device. It knows items,
//! batches and deadlines; it knows nothing about gRPC (the server maps [`FailureKind`] to status
//! codes in one place).
//!
//! The path of one item:
//! 1. [`Engine::submit`] admits a request's items atomically (or refuses them all with
//!    [`SubmitError::QueueFull`]) and returns one [`Ticket`] per item.
//! 2. A preprocessing pool (`rayon`, `preprocess_threads` threads) decodes, tiles and tokenises
//!    the item ([`Backend::prepare`]); bad items are answered right there. The pool serves
//!    submissions round-robin, one item per turn, so a large request never starves a later
//!    small one.
//! 3. One batcher task owns the queue of prepared items. When a worker is idle it cuts a batch
//!    by token budget and item cap, waiting at most `max_batch_delay` for a batch to fill, and
//!    skipping items whose caller is gone or whose deadline passed.
//! 4. The device worker (an OS thread) runs one packed forward pass and answers every item of
//!    the batch. When the batch fails, the worker checks the device with a probe forward; on
//!    a healthy device the batch is split until each failing item is alone, so one item never
//!    fails its neighbours, and only a device that fails its probe counts against health.
//! 5. Items that asked for a rationale stay on their worker after the prefill and join its
//!    running decode batch (continuous batching; see *Decoding* below).
//!
//! # Decoding
//! How prefill and decode share a device: the worker alternates. Between two decode steps it
//! takes at most one prefill batch if the batcher has one ready for it, so a new batch waits
//! at most one decode step (the score latency trainers see stays the prefill latency), and
//! running rationales advance by one token per prefill batch at worst (no starvation). All
//! rationales on a device decode together, one token each per step, whatever batch they were
//! prefilled in; a finished, cancelled or expired one leaves the step at once. While
//! `max_decoding_sequences` rationales run, the worker takes no new prefill batch (other
//! devices still do), which bounds the memory held by key/value caches.
//!
//! Every admitted item is answered exactly once (or dropped because nobody is listening). An
//! item holds its queue slot until it is answered or its caller lets go of the ticket,
//! whichever comes first: a cancelled call frees its slots (and the input of items still
//! waiting for preprocessing) at once. The count of held slots is what [`Engine::drained`]
//! waits on during shutdown.

#![warn(missing_docs)]

mod backend;
mod batcher;
mod config;
mod decoding;
mod engine;
mod fair;
#[cfg(feature = "fault-injection")]
pub mod faults;
mod isolation;
mod job;
pub mod metrics;
mod worker;

pub use backend::{device_name, Backend};
pub use config::EngineConfig;
pub use engine::{Engine, Health, ImageTicket, SubmitError, Ticket, Work};
pub use job::{FailureKind, ItemError, ItemResult, RationaleEnd, RationaleOutput, Timing};
