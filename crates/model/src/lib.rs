//! # rewarddance-model
//!
//! The RewardDance generative reward model on candle: an InternVL vision-language model reads
//! `[instruction, reference image?, candidate image or video frames, prompt]` and the reward is
//! the probability of the answer token "yes" at the last position of one prefill pass.
//!
//! Pure compute: no async, no RPC, no batching policy. Layout of the crate, in the order a
//! request flows through it:
//! - [`checkpoint`]: find and read a checkpoint (directory, hub cache, bundled default)
//! - [`config`]: both InternVL config layouts parsed into one [`ModelConfig`]
//! - [`image`]: decode, EXIF, alpha, InternVL dynamic tiling, normalisation
//! - [`prompt`]: instructions, image-token expansion, tokenisation; [`chat_template`] picks and
//!   renders the template ([`conversation`]: OpenGVLab's `conversation.py` templates)
//!   ([`bpe_vocab`]: Qwen2 `vocab.json` + `merges.txt`, [`sentencepiece`]: `tokenizer.model`,
//!   converted at load when there is no `tokenizer.json`)
//! - [`vision`] + [`projector`]: InternViT, pixel shuffle, `mlp1`
//! - [`language`]: Qwen2 / InternLM2 decoder over packed variable-length sequences
//! - [`memory`]: weights + activations estimate, start-up fit check
//! - [`scorer`]: [`RewardModel`], tying it together into [`Score`]s
//! - [`report`]: what a load chooses and why (`rewarddance check-model`)
//! - [`fixtures`]: reading the committed parity fixtures (tests and `rewarddance parity`)
//! - [`seeded`]: weights computed from tensor names (the real-config conformance suite)

pub mod bpe_vocab;
pub mod chat_template;
pub mod checkpoint;
pub mod config;
pub mod conversation;
pub mod error;
pub mod feature_cache;
pub mod fixtures;
pub mod fused_attention;
pub mod image;
pub mod info;
pub mod item;
pub mod language;
pub mod layers;
pub mod memory;
pub mod prefix;
pub mod presets;
pub mod projector;
pub mod prompt;
pub mod ranking;
pub mod rationale;
pub mod report;
pub mod scorer;
pub mod seeded;
pub mod sentencepiece;
mod tokenizer_files;
pub mod vision;

pub use chat_template::{TemplateChoice, TemplateSource};
pub use checkpoint::{Checkpoint, TokenizerSource, BUNDLED_MODEL_ID};
pub use config::{Layout, ModelConfig};
pub use error::{Error, Result};
pub use feature_cache::CacheStats;
pub use image::{ImageInput, PreparedImage};
pub use info::{ItemLimits, ModelInfo, ReuseStats};
pub use item::{Candidate, Mode, Score, ScoreItem};
pub use prompt::AnswerTokens;
pub use rationale::{Generation, Rationale, RationaleOptions, StopReason, Token};
pub use scorer::{ImageLayout, LoadOptions, PreparedItem, RewardModel};

/// Re-exported so callers can pick devices and dtypes without depending on candle directly.
pub use candle_core::{DType, Device};
