//! The unit of work: an item and the task to run on it. Admission takes [`Work`], the job
//! carries its [`Task`] through the queue, the backend runs a batch of tasks in one forward
//! pass and answers each with an [`Output`], and the worker dispatches on that output (answer
//! now, or keep decoding).

use rewarddance_model::pipeline::gradient::{Objective, ScoreGradient};
use rewarddance_model::{RationaleOptions, Score, ScoreItem};

/// What the engine computes for one item.
///
/// Score and rationale share one prefill, so a batch may mix them (cut by tokens and items).
/// A gradient needs a backward pass: gradient items queue apart and run in batches of their
/// own, cut by tiles ([`crate::EngineConfig::max_gradient_tiles`]); when both kinds wait, a
/// device takes them in turn (see the batcher), so neither starves the other.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Task {
    /// The score only: one forward pass, no decoding (what trainers ask for).
    Score,
    /// The score, then a rationale decoded after it on the same device (continuous batching:
    /// see the crate docs, *Decoding*).
    Rationale(RationaleOptions),
    /// The score and the gradient of `Objective` with respect to the item's float images
    /// (`ScoreGrad`): a forward and a backward pass.
    Gradient(Objective),
}

impl Task {
    /// The rationale options of a [`Task::Rationale`].
    pub fn rationale(&self) -> Option<RationaleOptions> {
        match self {
            Task::Rationale(options) => Some(*options),
            Task::Score | Task::Gradient(_) => None,
        }
    }

    /// Whether the task needs a backward pass (and so a batch of its own kind).
    pub fn is_gradient(&self) -> bool {
        matches!(self, Task::Gradient(_))
    }
}

/// One unit of work: an item and what to compute for it.
#[derive(Debug, Clone)]
pub struct Work {
    /// The item.
    pub item: ScoreItem,
    /// What to compute.
    pub task: Task,
    /// Which of the model's rewards score it (indices into `ModelInfo::rewards`), in order;
    /// empty means the first. The item is prepared once (its images decoded once) and
    /// answered once per reward: [`crate::Engine::submit`] returns a ticket per reward. Only
    /// the first reward decodes a rationale.
    pub rewards: Vec<usize>,
}

impl Work {
    /// The rewards it asks for, at least one.
    pub fn reward_list(&self) -> Vec<usize> {
        if self.rewards.is_empty() {
            vec![0]
        } else {
            self.rewards.clone()
        }
    }
}

impl From<ScoreItem> for Work {
    /// A plain score.
    fn from(item: ScoreItem) -> Self {
        Work {
            item,
            task: Task::Score,
            rewards: Vec::new(),
        }
    }
}

/// What one forward pass gives one item, per its task. `S` is the backend's decoding state.
#[derive(Debug)]
pub enum Output<S> {
    /// The item is answered: its score.
    Score(Score),
    /// The item's score, and the sequence that decodes its rationale (a [`Task::Rationale`]).
    Rationale(Score, S),
    /// The item's score with the gradients of a [`Task::Gradient`].
    Gradient(Box<ScoreGradient>),
}

impl<S> Output<S> {
    /// The same output with its decoding state converted.
    pub fn map_sequence<T>(self, f: impl FnOnce(S) -> T) -> Output<T> {
        match self {
            Output::Score(score) => Output::Score(score),
            Output::Rationale(score, s) => Output::Rationale(score, f(s)),
            Output::Gradient(g) => Output::Gradient(g),
        }
    }
}
