//! # rewarddance-model
//!
//! The RewardDance generative reward model on candle: an InternVL vision-language model reads
//! `[instruction, reference image?, candidate image or video frames, prompt]` and the reward is
//! the probability of the answer token "yes" at the last position of one prefill pass.
//!
//! Pure compute: no async, no RPC, no batching policy. The crate is layered; each layer uses
//! only the ones above it in this list:
//! - [`error`], [`item`] (what a caller scores), [`info`] (a loaded model in neutral terms)
//! - [`image`]: decoding untrusted images (PNG, JPEG, WebP; EXIF, alpha), Pillow's bicubic
//!   resize, prepared (tiled) images and their content keys
//! - [`text`]: tokenizers, chat templates, the prompt an item becomes
//! - [`nn`]: shared network code: layers, fused attention, the packed Qwen2 / InternLM2 decoder
//!   and its key/value cache
//! - [`runtime`]: checkpoints (directory, hub cache, bundled default), the memory estimate,
//!   the load report (`rewarddance check-model`)
//! - [`family`]: what differs between backbones, behind one seam ([`family::internvl`]:
//!   config, tiling, InternViT, projector, weight names, memory)
//! - [`pipeline`]: [`RewardModel`], tying a family to the decoder: feature cache, shared
//!   prefixes, packed scoring, rationales
//! - [`testing`]: parity fixtures and name-seeded weights (tests and `rewarddance parity`)

pub mod error;
pub mod family;
pub mod image;
pub mod info;
pub mod item;
pub mod nn;
pub mod pipeline;
pub mod runtime;
pub mod testing;
pub mod text;

pub use error::{Error, Result};
pub use family::internvl::config::{CheckpointLayout, ModelConfig};
pub use family::FamilyConfig;
pub use image::{ImageInput, ImageLayout, PreparedImage};
pub use info::{ItemLimits, ModelInfo, ReuseStats};
pub use item::{Candidate, Mode, Score, ScoreItem};
pub use pipeline::feature_cache::CacheStats;
pub use pipeline::rationale::{Generation, Rationale, RationaleOptions, StopReason, Token};
pub use pipeline::sampling::SplitMix64;
pub use pipeline::{LoadOptions, PreparedItem, RewardModel};
pub use runtime::checkpoint::{Checkpoint, TokenizerSource, BUNDLED_MODEL_ID};
pub use text::chat_template::{TemplateChoice, TemplateSource};
pub use text::prompt::AnswerTokens;

/// Re-exported so callers can pick devices and dtypes without depending on candle directly.
pub use candle_core::{DType, Device};
