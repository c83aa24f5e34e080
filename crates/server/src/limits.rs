//! Request limits the service enforces, from the `serve` flags and the model's own limits
//! ([`ModelInfo::limits`], read from the engine).

use rewarddance_model::{Mode, ModelInfo};

use crate::config::ServerArgs;

/// Request limits the service enforces.
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    /// Most items per request.
    pub max_items_per_request: usize,
    /// Most candidates per Rank request.
    pub max_rank_candidates: usize,
    /// Unanswered items per stream.
    pub max_stream_in_flight: usize,
    /// What a single item may carry (checked before it is queued).
    pub item: ItemLimits,
    /// What an item may ask of the rationale decoder.
    pub rationale: RationaleLimits,
    /// The rewards items may name, in the model's order.
    pub rewards: Vec<RewardLimits>,
}

/// A reward as requests see it.
#[derive(Debug, Clone)]
pub struct RewardLimits {
    /// Its name.
    pub name: String,
    /// The mode its items get when they leave theirs unspecified.
    pub mode: Option<Mode>,
}

impl Limits {
    /// The limits for `model` under `args`.
    pub fn new(model: &ModelInfo, args: &ServerArgs) -> Self {
        Limits {
            max_items_per_request: args.max_items_per_request,
            max_rank_candidates: args.max_rank_candidates,
            max_stream_in_flight: args.max_stream_in_flight.max(1),
            item: ItemLimits {
                max_image_pixels: model.limits.max_image_pixels,
                max_text_bytes: args.max_text_bytes(model.limits.max_tokens_per_item),
            },
            rationale: RationaleLimits {
                max_tokens: args.max_rationale_tokens,
                default_tokens: args.default_rationale_tokens,
            },
            rewards: model
                .rewards
                .iter()
                .map(|r| RewardLimits {
                    name: r.name.clone(),
                    mode: r.mode,
                })
                .collect(),
        }
    }
}

/// What one item may carry, checked before it is queued.
#[derive(Debug, Clone, Copy)]
pub struct ItemLimits {
    /// Pixel limit for raw images (the model checks encoded ones from their header).
    pub max_image_pixels: u64,
    /// Most bytes of `prompt` and of `instruction`, each (checked before tokenising).
    pub max_text_bytes: usize,
}

/// Limits on what an item may ask of the rationale decoder.
#[derive(Debug, Clone, Copy)]
pub struct RationaleLimits {
    /// Most tokens per item.
    pub max_tokens: u32,
    /// Tokens when the item leaves `max_tokens` at 0.
    pub default_tokens: u32,
}
