//! # rewarddance-engine
//!
//! The scheduling half of the service: admission (a bounded queue), parallel preprocessing off
//! the async runtime, a dynamic batcher, and one worker thread per device. It knows items,
//! batches and deadlines; it knows nothing about gRPC (the server maps [`FailureKind`] to status
//! codes in one place).
//!
//! The path of one item:
//! 1. [`Engine::submit`] admits a request's items atomically (or refuses them all with
//!    [`SubmitError::QueueFull`]) and returns one [`Ticket`] per item. Each item is [`Work`]:
//!    the item and its [`Task`] (a score, or a score and a rationale).
//! 2. A preprocessing pool (`rayon`, `preprocess_threads` threads) decodes, tiles and tokenises
//!    the item ([`Model::prepare`]); bad items are answered right there. The pool serves
//!    submissions round-robin, one item per turn, so a large request never starves a later
//!    small one.
//! 3. One batcher task owns the queue of prepared items. When a worker is idle it cuts a batch
//!    by token budget and item cap, waiting at most `max_batch_delay` for a batch to fill, and
//!    skipping items whose caller is gone or whose deadline passed.
//! 4. The device worker (an OS thread) runs one packed forward pass over the batch's tasks
//!    ([`Model::forward`]) and answers every item of the batch from its task's [`Output`].
//!    When the batch fails, the worker checks the device with a probe forward; on a healthy
//!    device the batch is split until each failing item is alone, so one item never fails
//!    its neighbours, and only a device that fails its probe counts against health.
//! 5. Items that asked for a rationale stay on their worker after the prefill and join its
//!    running decode batch (continuous batching; see *Decoding* below).
//!
//! # The backend seam
//! The engine runs a model only through [`Model`] (what it is, prepare, a forward pass over a
//! batch of tasks, the decode step, reuse stats), held per device as an `Arc<dyn Backend>`;
//! `RewardModel` implements it, and so can a test backend with no model at all. The server
//! reads the model's identity and limits from [`Engine::model_info`].
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
//!
//! # Modules
//! Each depends only on those listed before it (no cycles):
//! - `result`, `task`, `health`, `config`: plain data (answers, the unit of work, health,
//!   settings); `fair`, `isolation`: self-contained algorithms.
//! - `metrics`: names and recording helpers (reads `result`).
//! - `backend`: the [`Model`] / [`Backend`] seam (reads `task`); `faults` (tests only)
//!   wraps a [`Model`].
//! - `admission`: queue slots and [`SubmitError`]; `ticket`: what callers hold.
//! - `job`: an item in flight (answers through `metrics`, holds a slot).
//! - `batcher`, then `decoding`, then `worker`, then `preprocess`: the pipeline stages.
//! - `handle`: [`Engine`], which starts and feeds them.

#![warn(missing_docs)]

mod admission;
mod backend;
mod batcher;
mod config;
mod decoding;
mod fair;
#[cfg(feature = "fault-injection")]
pub mod faults;
mod handle;
mod health;
mod isolation;
mod job;
pub mod metrics;
mod preprocess;
mod result;
mod task;
mod ticket;
mod worker;

pub use admission::SubmitError;
pub use backend::{device_name, Backend, Model, Prepared, Sequence};
pub use config::EngineConfig;
pub use handle::Engine;
pub use health::Health;
pub use result::{FailureKind, ItemError, ItemResult, RationaleEnd, RationaleOutput, Timing};
pub use task::{Output, Task, Work};
pub use ticket::{ImageTicket, Ticket};
