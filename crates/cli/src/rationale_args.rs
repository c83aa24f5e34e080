//! `--rationale` and its decoding flags, shared by single-item and batch `rewarddance score`.

use clap::Args;
use rewarddance_model::{Rationale, RationaleOptions, StopReason};
use serde_json::{json, Value};

/// Decode the model's chain-of-thought rationale after its answer.
#[derive(Args, Debug, Clone)]
pub struct RationaleArgs {
    /// Decode a rationale for every item (the score is unchanged; decoding costs time).
    #[arg(long, env = "REWARDDANCE_RATIONALE")]
    pub rationale: bool,
    /// Most rationale tokens per item (the answer token included).
    #[arg(
        long,
        env = "REWARDDANCE_RATIONALE_MAX_TOKENS",
        default_value_t = RationaleOptions::DEFAULT_MAX_TOKENS,
        requires = "rationale"
    )]
    pub max_tokens: usize,
    /// Sampling temperature (0: greedy, deterministic).
    #[arg(
        long,
        env = "REWARDDANCE_RATIONALE_TEMPERATURE",
        default_value_t = RationaleOptions::DEFAULT_TEMPERATURE,
        requires = "rationale"
    )]
    pub temperature: f32,
    /// Nucleus sampling mass in (0, 1].
    #[arg(
        long,
        env = "REWARDDANCE_RATIONALE_TOP_P",
        default_value_t = RationaleOptions::DEFAULT_TOP_P,
        requires = "rationale"
    )]
    pub top_p: f32,
    /// Sampler seed (same seed, same inputs: same text).
    #[arg(
        long,
        env = "REWARDDANCE_RATIONALE_SEED",
        default_value_t = RationaleOptions::DEFAULT_SEED,
        requires = "rationale"
    )]
    pub seed: u64,
    /// Print rationale text to stderr as it is decoded (single items, in-process).
    #[arg(long, requires = "rationale")]
    pub stream: bool,
}

impl RationaleArgs {
    /// The decoding options, or `None` without `--rationale`. Errors on out-of-range values.
    pub fn options(&self) -> anyhow::Result<Option<RationaleOptions>> {
        if !self.rationale {
            return Ok(None);
        }
        anyhow::ensure!(self.max_tokens >= 1, "--max-tokens must be at least 1");
        anyhow::ensure!(
            self.temperature.is_finite() && self.temperature >= 0.0,
            "--temperature must be finite and >= 0"
        );
        anyhow::ensure!(
            self.top_p > 0.0 && self.top_p <= 1.0,
            "--top-p must be in (0, 1]"
        );
        Ok(Some(RationaleOptions {
            max_tokens: self.max_tokens,
            temperature: self.temperature,
            top_p: self.top_p,
            seed: self.seed,
            ignore_end: false,
        }))
    }
}

/// A rationale in output rows: `{"text", "stop", "tokens"}`.
pub fn to_json(text: &str, stop: &str, tokens: usize) -> Value {
    json!({ "text": text, "stop": stop, "tokens": tokens })
}

/// A model rationale in output rows.
pub fn model_json(r: &Rationale) -> Value {
    let stop = match r.stop {
        StopReason::EndOfTurn => "end_of_turn",
        StopReason::MaxTokens => "max_tokens",
        StopReason::Stopped => "stopped",
    };
    to_json(&r.text, stop, r.token_ids.len())
}
