//! The reward model end to end: items -> prompt + tiles -> packed batch -> P(yes).
//!
//! Scoring is split in two so callers can parallelise the CPU-heavy half:
//! [`RewardModel::prepare`] (decode, tile, render, tokenise; `&self`, thread-safe) and
//! [`RewardModel::score_prepared`] (one packed forward pass on the device).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

pub mod feature_cache;
mod features;
pub mod gradient;
mod load;
pub mod memory;
mod options;
pub mod prefix;
mod prepared;
pub mod prompt;
pub mod rationale;
pub mod report;
pub mod rewards;
pub mod sampling;

pub use options::LoadOptions;
pub use prepared::PreparedItem;

use crate::error::{Error, Result};
use crate::family::{FamilyConfig, ImageEncoder};
use crate::image::{DecodeLimits, ImageInput, PreparedImage};
use crate::info::{ItemLimits, ModelInfo, ReuseStats};
use crate::item::{Candidate, Score, ScoreItem};
use crate::nn::language::{LanguageModel, Packing};
use crate::nn::layers::logsumexp_last;
use crate::runtime::adapter::AdapterSummary;
use crate::runtime::checkpoint::Checkpoint;
use crate::text::prompt::PromptBuilder;
use feature_cache::{CacheStats, FeatureCache};
use rewards::{Reward, RewardInfo};

/// A generative reward model loaded on one device: a family's image side in front of the
/// shared decoder.
pub struct RewardModel {
    id: String,
    config: FamilyConfig,
    prompt: PromptBuilder,
    images: Box<dyn ImageEncoder>,
    pub(crate) language: LanguageModel,
    device: Device,
    dtype: DType,
    feature_cache: FeatureCache,
    prefix_tokens_saved: AtomicU64,
    /// The LoRA adapter merged into the weights, if any.
    adapter: Option<AdapterSummary>,
    /// The rewards it serves, [`rewards::DEFAULT_REWARD`] alone without a rewards file.
    rewards: Vec<Reward>,
    /// The unmerged adapters, by slot.
    slots: Vec<AdapterSummary>,
    options: LoadOptions,
}

impl RewardModel {
    /// The prompt builder for `checkpoint`, checked against the model: the image-context id
    /// the config states and the answer ids must fit the vocabulary.
    fn prompt_for(
        checkpoint: &Checkpoint,
        config: &FamilyConfig,
        options: &LoadOptions,
    ) -> Result<PromptBuilder> {
        let prompt = prompt::prompt_builder(
            checkpoint,
            &config.prompt_settings(),
            &options.template,
            &options.answers,
        )?;
        if let Some(id) = config.image_token_id() {
            if id != prompt.image_context_id() {
                return Err(Error::Checkpoint(format!(
                    "config image_token_id {id} differs from the tokenizer's <IMG_CONTEXT> id {}",
                    prompt.image_context_id()
                )));
            }
        }
        let (yes, no) = prompt.answer_ids();
        let vocab = config.text().vocab_size as u32;
        if yes >= vocab || no >= vocab {
            return Err(Error::Checkpoint(format!(
                "answer token ids ({yes}, {no}) are outside the model's vocabulary of {vocab}"
            )));
        }
        Ok(prompt)
    }

    /// Checkpoint id (directory, hub id or the bundled model's id).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Parsed configuration.
    pub fn config(&self) -> &FamilyConfig {
        &self.config
    }

    /// Prompt construction for this checkpoint.
    pub fn prompt_builder(&self) -> &PromptBuilder {
        &self.prompt
    }

    /// The LoRA adapter merged into the weights at load, if any.
    pub fn adapter(&self) -> Option<&AdapterSummary> {
        self.adapter.as_ref()
    }

    /// Options the model was loaded with.
    pub fn options(&self) -> &LoadOptions {
        &self.options
    }

    /// Weight dtype.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Device the model runs on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Largest prompt accepted, in tokens.
    pub fn max_tokens_per_item(&self) -> usize {
        let ctx = self.config.text().max_position_embeddings;
        self.options.max_tokens_per_item.map_or(ctx, |m| m.min(ctx))
    }

    /// Decodes and tiles one still image under this model's limits and tiling, once, for use
    /// by several items ([`ImageInput::Prepared`]).
    pub fn prepare_image(&self, input: &ImageInput) -> Result<Arc<PreparedImage>> {
        let limits = DecodeLimits {
            max_pixels: self.options.max_image_pixels,
        };
        self.images.prepare_image(input, false, &limits)
    }

    /// CPU half of scoring: decode and tile images, render and tokenise the prompt, check
    /// limits. For the first reward.
    pub fn prepare(&self, item: &ScoreItem) -> Result<PreparedItem> {
        self.prepare_for(item, 0)
    }

    /// [`Self::prepare`] for reward `reward` (an index into [`Self::rewards`]): its
    /// instructions, answer tokens and adapter.
    pub fn prepare_for(&self, item: &ScoreItem, reward: usize) -> Result<PreparedItem> {
        let user_content = self.user_content_for(item, reward)?;
        let tiled = self.tile_images(item)?;
        self.finish_prepare(user_content, tiled, reward)
    }

    /// [`Self::prepare_for`] for each of `rewards`, decoding and tiling the item's images
    /// once for all of them (the prepared items share the tiles).
    pub fn prepare_rewards(
        &self,
        item: &ScoreItem,
        rewards: &[usize],
    ) -> Vec<Result<PreparedItem>> {
        let contents: Vec<Result<String>> = rewards
            .iter()
            .map(|&r| self.user_content_for(item, r))
            .collect();
        if contents.iter().all(Result::is_err) {
            return contents
                .into_iter()
                .map(|c| {
                    Err(c
                        .err()
                        .unwrap_or_else(|| Error::InvalidInput("no reward".into())))
                })
                .collect();
        }
        match self.tile_images(item) {
            Ok(tiled) => contents
                .into_iter()
                .zip(rewards)
                .map(|(content, &r)| self.finish_prepare(content?, tiled.clone(), r))
                .collect(),
            Err(e) => rewards.iter().map(|_| Err(e.duplicate())).collect(),
        }
    }

    /// The user message of `item` under reward `reward`'s instructions.
    fn user_content_for(&self, item: &ScoreItem, reward: usize) -> Result<String> {
        let spec = &self.reward_at(reward)?.spec;
        self.prompt.user_content_with(item, &spec.instructions)
    }

    /// Decodes and tiles the item's images, in prompt order, within the tile limit.
    fn tile_images(&self, item: &ScoreItem) -> Result<Vec<Arc<PreparedImage>>> {
        let limits = DecodeLimits {
            max_pixels: self.options.max_image_pixels,
        };
        let max_tiles = self.options.max_tiles_per_item;
        let tile_one = |input: &ImageInput, frame: bool| -> Result<Arc<PreparedImage>> {
            self.images.prepare_image(input, frame, &limits)
        };
        let mut tiled = Vec::new();
        if let Some(reference) = &item.reference {
            tiled.push(tile_one(reference, false)?);
        }
        match &item.candidate {
            Candidate::Image(img) => tiled.push(tile_one(img, false)?),
            Candidate::Video(frames) => {
                if frames.len() > max_tiles {
                    return Err(Error::TooManyTiles {
                        tiles: frames.len(),
                        limit: max_tiles,
                    });
                }
                for f in frames {
                    tiled.push(tile_one(f, true)?);
                }
            }
        }
        let total_tiles: usize = tiled.iter().map(|t| t.layout().num_tiles).sum();
        if total_tiles > max_tiles {
            return Err(Error::TooManyTiles {
                tiles: total_tiles,
                limit: max_tiles,
            });
        }
        Ok(tiled)
    }

    /// Renders and tokenises the prompt around tiled images, within the token limit.
    fn finish_prepare(
        &self,
        user_content: String,
        tiled: Vec<Arc<PreparedImage>>,
        reward: usize,
    ) -> Result<PreparedItem> {
        let per_tile = self.config.tokens_per_tile();
        let image_tokens: Vec<usize> = tiled
            .iter()
            .map(|t| t.layout().num_tiles * per_tile)
            .collect();
        let rendered_prompt = self.prompt.render(&user_content)?;
        let input_ids = self.prompt.tokenize(&rendered_prompt, &image_tokens)?;
        let limit = self.max_tokens_per_item();
        if input_ids.len() > limit {
            return Err(Error::TooManyTokens {
                tokens: input_ids.len(),
                limit,
            });
        }
        Ok(PreparedItem {
            user_content,
            rendered_prompt,
            input_ids,
            images: tiled.iter().map(|t| t.layout().clone()).collect(),
            tiles: tiled,
            reward,
        })
    }

    /// The rewards this model serves, in declaration order.
    pub fn rewards(&self) -> Vec<RewardInfo> {
        self.rewards
            .iter()
            .map(|r| RewardInfo {
                name: r.spec.name.clone(),
                adapter: match r.slot {
                    Some(s) => self.slots.get(s).cloned(),
                    None if r.spec.adapter.is_some() => self.adapter.clone(),
                    None => None,
                },
                merged: r.slot.is_none() && r.spec.adapter.is_some(),
                answers: r.spec.answers.clone().unwrap_or_default(),
                answer_ids: r.answer_ids,
                instructions: r.spec.instructions.clone(),
                mode: r.spec.mode,
            })
            .collect()
    }

    /// The indices of the rewards `names` ([`rewards::reward_indices`]); none named: the
    /// first reward.
    pub fn reward_indices(&self, names: &[String]) -> std::result::Result<Vec<usize>, String> {
        if names.is_empty() {
            return Ok(vec![0]);
        }
        let declared: Vec<&str> = self.rewards.iter().map(|r| r.spec.name.as_str()).collect();
        rewards::reward_indices(names, &declared)
    }

    /// The index of the reward called `name`.
    pub fn reward_index(&self, name: &str) -> Option<usize> {
        self.rewards.iter().position(|r| r.spec.name == name)
    }

    /// Reward `index` (into [`Self::rewards`]).
    fn reward_at(&self, index: usize) -> Result<&Reward> {
        self.rewards
            .get(index)
            .ok_or_else(|| Error::InvalidInput(format!("no reward #{index}")))
    }

    /// The reward an item was prepared for.
    pub(crate) fn reward_of(&self, item: &PreparedItem) -> Result<&Reward> {
        self.reward_at(item.reward)
    }

    /// The adapter slot an item runs with.
    pub(crate) fn slot_of(&self, item: &PreparedItem) -> Result<Option<usize>> {
        Ok(self.reward_of(item)?.slot)
    }

    /// The adapter slot an item's images are encoded with (`None`: the base encoder).
    pub(crate) fn image_slot_of(&self, item: &PreparedItem) -> Result<Option<usize>> {
        Ok(self.reward_of(item)?.image_slot)
    }

    /// Device half of scoring: one packed forward pass over `batch`, scores in order.
    pub fn score_prepared(&self, batch: &[&PreparedItem]) -> Result<Vec<Score>> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        self.scores_from_logits(&self.last_logits(batch)?, batch)
    }

    /// Next-token logits (items, vocab) in f32 at each item's last prompt position: what
    /// [`Self::score_prepared`] reads the answer tokens from.
    pub fn last_logits(&self, batch: &[&PreparedItem]) -> Result<Tensor> {
        let (embeds, packing) = self.packed_inputs(batch)?;
        let hidden = self.language.forward_last(&embeds, &packing)?;
        Ok(self.language.logits(&hidden)?)
    }

    /// The batch's input embeddings (text + spliced image features) laid out for the decoder,
    /// shared prefixes factored out.
    pub(crate) fn packed_inputs(&self, batch: &[&PreparedItem]) -> Result<(Tensor, Packing)> {
        let (features, image_rows) = self.batch_image_features(batch)?;

        // What each token of each item reads: its text embedding, or a row of the
        // (deduplicated) image features; as one u64 so shared prefixes can be found.
        // A token's identity: bit 63 marks an image row, bits 32..48 the adapter slot (+1;
        // tokens of different adapters never match, so prefixes are shared only within one
        // adapter), the low 32 bits the text id or image row.
        const IMAGE_ROW: u64 = 1 << 63;
        const LOW: u64 = 0xFFFF_FFFF;
        let ctx_id = self.prompt.image_context_id();
        let mut next_image_row = image_rows.iter();
        let mut signatures = Vec::with_capacity(batch.len());
        let mut slots = Vec::with_capacity(batch.len());
        for item in batch {
            let slot = self.slot_of(item)?;
            let tag = slot.map_or(0, |s| (s as u64 + 1) << 32);
            slots.push(slot);
            let mut sig = Vec::with_capacity(item.input_ids.len());
            for &id in &item.input_ids {
                if id == ctx_id {
                    let row = next_image_row.next().ok_or_else(|| {
                        Error::InvalidInput("more image-context tokens than image features".into())
                    })?;
                    sig.push(IMAGE_ROW | tag | *row as u64);
                } else {
                    sig.push(tag | id as u64);
                }
            }
            signatures.push(sig);
        }
        if next_image_row.next().is_some() {
            return Err(Error::InvalidInput(
                "fewer image-context tokens than image features".into(),
            ));
        }
        // Length-dependent rotary scaling (dynamic NTK past the trained length) makes a prefix's
        // keys depend on the whole sequence: no sharing then.
        let shareable = signatures.iter().all(|s| self.shares_prefixes_at(s.len()));
        let min_shared = if shareable {
            self.options.prefix_reuse_min_tokens
        } else {
            usize::MAX
        };
        // Laid out by adapter slot, so each slot's rows are one contiguous run.
        let keys: Vec<u64> = slots
            .iter()
            .map(|s| s.map_or(0, |s| s as u64 + 1))
            .collect();
        let plan = prefix::plan_grouped(&signatures, &keys, min_shared);
        let unshared: usize = signatures.iter().map(Vec::len).sum();
        self.prefix_tokens_saved
            .fetch_add((unshared - plan.packed_len()) as u64, Ordering::Relaxed);

        // Splice: packed token k reads row k of the text embeddings, or row `total + r` of the
        // image features for image row r.
        let total = plan.packed_len();
        let mut ids = Vec::with_capacity(total);
        let mut gather = Vec::with_capacity(total);
        for (k, &(item, t)) in plan.tokens.iter().enumerate() {
            let sig = signatures[item][t];
            if sig & IMAGE_ROW != 0 {
                ids.push(ctx_id);
                gather.push(total as u32 + (sig & LOW) as u32);
            } else {
                ids.push((sig & LOW) as u32);
                gather.push(k as u32);
            }
        }
        let ids_t = Tensor::new(ids, &self.device)?;
        let text = self.language.embed(&ids_t)?;
        let table = match &features {
            Some(f) => Tensor::cat(&[&text, f], 0)?,
            None => text,
        };
        let embeds = table.index_select(&Tensor::new(gather, &self.device)?, 0)?;
        // Each segment runs with the adapter of the item its first token is from.
        let starts = crate::nn::language::Segment::starts(&plan.segments);
        let adapters = starts.iter().map(|&s| slots[plan.tokens[s].0]).collect();
        let packing = Packing {
            segments: plan.segments,
            outputs: plan.last_tokens,
            adapters,
        };
        Ok((embeds, packing))
    }

    /// Scores from output-head logits (items, vocab), each row with the answer tokens of
    /// its item's reward.
    pub(crate) fn scores_from_logits(
        &self,
        logits: &Tensor,
        items: &[&PreparedItem],
    ) -> Result<Vec<Score>> {
        let lse = logsumexp_last(logits)?.to_vec1::<f32>()?;
        let pairs: Vec<(u32, u32)> = items
            .iter()
            .map(|i| Ok(self.reward_of(i)?.answer_ids))
            .collect::<Result<_>>()?;
        // The answer columns any item needs, read once.
        let mut columns: Vec<u32> = pairs.iter().flat_map(|&(y, n)| [y, n]).collect();
        columns.sort_unstable();
        columns.dedup();
        let answers = logits
            .index_select(&Tensor::new(columns.as_slice(), &self.device)?, 1)?
            .to_vec2::<f32>()?;
        let col = |id: u32| columns.binary_search(&id).unwrap_or_default();
        Ok(answers
            .iter()
            .zip(lse)
            .zip(&pairs)
            .map(|((row, lse), &(yes, no))| Score::from_logits(row[col(yes)], row[col(no)], lse))
            .collect())
    }

    /// Prepares and scores `items` as one batch; a bad item gets its own error and the rest
    /// are still scored.
    pub fn score(&self, items: &[ScoreItem]) -> Vec<Result<Score>> {
        self.score_for(items, 0)
    }

    /// [`Self::score`] with reward `reward` (an index into [`Self::rewards`]).
    pub fn score_for(&self, items: &[ScoreItem], reward: usize) -> Vec<Result<Score>> {
        self.score_each(items.iter().map(|i| self.prepare_for(i, reward)).collect())
    }

    /// Scores the successfully prepared items in one forward pass and returns one result per
    /// input, in order: preparation errors pass through; a failed forward pass fails every
    /// prepared item with the same compute error.
    pub fn score_each(&self, prepared: Vec<Result<PreparedItem>>) -> Vec<Result<Score>> {
        let ok: Vec<&PreparedItem> = prepared.iter().filter_map(|p| p.as_ref().ok()).collect();
        let batch = self.score_prepared(&ok).map_err(|e| e.to_string());
        let mut next = 0;
        prepared
            .into_iter()
            .map(|p| {
                p?;
                next += 1;
                match &batch {
                    Ok(scores) => scores.get(next - 1).copied().ok_or_else(|| {
                        Error::Compute(candle_core::Error::Msg(
                            "batch returned too few scores".into(),
                        ))
                    }),
                    Err(msg) => Err(Error::Compute(candle_core::Error::Msg(msg.clone()))),
                }
            })
            .collect()
    }

    /// Language-model tokens not computed since start-up thanks to shared prefixes.
    /// Whether an item of `tokens` tokens may share a prefix with others: prefix reuse is on
    /// and the rotary angles do not depend on the sequence's length (dynamic NTK past the
    /// trained length).
    pub fn shares_prefixes_at(&self, tokens: usize) -> bool {
        self.options.prefix_reuse_min_tokens != usize::MAX
            && !self.language.rope_depends_on_length(tokens)
    }

    pub fn prefix_tokens_saved(&self) -> u64 {
        self.prefix_tokens_saved.load(Ordering::Relaxed)
    }

    /// Vision-feature cache counters (hits include repeats inside one batch).
    pub fn feature_cache_stats(&self) -> CacheStats {
        self.feature_cache.stats()
    }

    /// Work saved by reuse since start-up (feature cache and shared prefixes together).
    pub fn reuse_stats(&self) -> ReuseStats {
        ReuseStats {
            feature_cache: self.feature_cache_stats(),
            prefix_tokens_saved: self.prefix_tokens_saved(),
        }
    }

    /// Identity, limits and geometry in family-neutral terms (what `Info` reports).
    pub fn info(&self) -> ModelInfo {
        ModelInfo {
            id: self.id.clone(),
            family: self.config.name(),
            layout: self.config.layout(),
            dtype: self.dtype,
            device: self.device.clone(),
            limits: ItemLimits {
                max_image_pixels: self.options.max_image_pixels,
                max_tiles_per_item: self.options.max_tiles_per_item,
                max_tokens_per_item: self.max_tokens_per_item(),
            },
            answers: self.options.answers.clone(),
            answer_ids: self.prompt.answer_ids(),
            rewards: self.rewards(),
            tile_size: self.config.tile_size(),
            tokens_per_tile: self.config.tokens_per_tile() as u32,
        }
    }
}
