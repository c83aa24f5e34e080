//! Chain-of-thought rationales: after the prefill that gives the score, decode the model's
//! answer and reasoning with a KV cache, batched across the items that asked for it.
//!
//! The score is always the first-token probability from the prefill; decoding never changes
//! it. Items leave the decode batch when they emit the end-of-turn token, reach `max_tokens`,
//! or their caller says stop (deadline passed, client gone).

use candle_core::Tensor;

use super::sampling::{sample, SplitMix64};
use crate::error::Result;
use crate::item::Score;
use crate::nn::language::KvCache;
use crate::pipeline::{PreparedItem, RewardModel};
use crate::text::prompt::PromptBuilder;

/// How to decode one item's rationale.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RationaleOptions {
    /// Most tokens to generate (the answer token included).
    pub max_tokens: usize,
    /// Softmax temperature; 0 is greedy (deterministic).
    pub temperature: f32,
    /// Nucleus sampling mass in (0, 1]; 1 keeps the whole distribution.
    pub top_p: f32,
    /// Seed of the item's sampler (same seed and inputs, same text).
    pub seed: u64,
    /// Keep decoding past the end-of-turn token until `max_tokens` (benchmarks only, like
    /// vLLM's `ignore_eos`).
    pub ignore_end: bool,
}

impl RationaleOptions {
    /// Default [`Self::max_tokens`].
    pub const DEFAULT_MAX_TOKENS: usize = 256;
    /// Default [`Self::temperature`] (greedy).
    pub const DEFAULT_TEMPERATURE: f32 = 0.0;
    /// Default [`Self::top_p`] (the whole distribution).
    pub const DEFAULT_TOP_P: f32 = 1.0;
    /// Default [`Self::seed`].
    pub const DEFAULT_SEED: u64 = 0;
}

impl Default for RationaleOptions {
    fn default() -> Self {
        RationaleOptions {
            max_tokens: Self::DEFAULT_MAX_TOKENS,
            temperature: Self::DEFAULT_TEMPERATURE,
            top_p: Self::DEFAULT_TOP_P,
            seed: Self::DEFAULT_SEED,
            ignore_end: false,
        }
    }
}

/// Why decoding stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// The model ended its turn.
    EndOfTurn,
    /// `max_tokens` were generated.
    MaxTokens,
    /// The caller stopped it (deadline, cancellation).
    Stopped,
}

/// A decoded rationale.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Rationale {
    /// Generated token ids (the end-of-turn token excluded).
    pub token_ids: Vec<u32>,
    /// Their text.
    pub text: String,
    /// Why decoding stopped.
    pub stop: StopReason,
}

/// One item's rationale in progress: its key/value cache, its sampler and the text so far.
///
/// A generation is advanced in two halves so that a server can interleave many of them with
/// other work on the device: [`RewardModel::next_token`] picks the next token from the pending
/// distribution on the host, and [`RewardModel::decode_forward`] feeds the picked tokens of
/// many generations (from any number of prefill batches) through the decoder in one step.
pub struct Generation {
    /// Position of the item in the batch it was prefilled with.
    pub item: usize,
    options: RationaleOptions,
    rng: SplitMix64,
    ids: Vec<u32>,
    /// Text already handed out as increments.
    emitted: String,
    /// Decoded text after `emitted` not handed out yet (an incomplete character).
    held: String,
    /// Detokenisation window: `ids[window.0..]` is decoded each step, and the text of
    /// `ids[window.0..window.1]` (already emitted) is what the new text must extend, so each
    /// step decodes a few tokens rather than the whole sequence.
    window: (usize, usize),
    /// The whole sequence decoded once at the end (authoritative).
    final_text: Option<String>,
    cache: KvCache,
    /// Logits of the next token (vocabulary-sized), when it has not been picked yet.
    pending: Option<Vec<f32>>,
}

/// What [`RewardModel::next_token`] produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Token {
    /// New text since the last increment (may be empty while a character is incomplete).
    pub text: String,
    /// Set when the generation ended with this step.
    pub stop: Option<StopReason>,
}

impl Generation {
    /// Tokens generated so far.
    pub fn tokens(&self) -> usize {
        self.ids.len()
    }

    /// The options it decodes with.
    pub fn options(&self) -> &RationaleOptions {
        &self.options
    }

    /// An independent copy (its own key/value buffers) that decodes exactly as this one would.
    pub fn fork(&self) -> Result<Generation> {
        Ok(Generation {
            item: self.item,
            options: self.options,
            rng: self.rng.clone(),
            ids: self.ids.clone(),
            emitted: self.emitted.clone(),
            held: self.held.clone(),
            window: self.window,
            final_text: self.final_text.clone(),
            cache: self.cache.fork()?,
            pending: self.pending.clone(),
        })
    }

    /// Ends the generation with `stop` and returns what it decoded.
    pub fn finish(self, stop: StopReason) -> Rationale {
        let text = self.final_text.unwrap_or(self.emitted + &self.held);
        Rationale {
            token_ids: self.ids,
            text,
            stop,
        }
    }
}

impl RewardModel {
    /// Prefills `batch` once: returns every item's score and, for each item whose `options`
    /// entry is set, a [`Generation`] ready for its first [`RewardModel::next_token`].
    pub fn prefill_for_rationales(
        &self,
        batch: &[&PreparedItem],
        options: &[Option<RationaleOptions>],
    ) -> Result<(Vec<Score>, Vec<Option<Generation>>)> {
        if batch.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        let (embeds, packing) = self.packed_inputs(batch)?;
        let (hidden, caches) = self.language.prefill_with_cache(&embeds, &packing)?;
        let logits = self.language.logits(&hidden)?;
        let scores = self.scores_from_logits(&logits, batch)?;
        let wanted: Vec<u32> = (0..batch.len())
            .filter(|&i| matches!(options.get(i), Some(Some(_))))
            .map(|i| i as u32)
            .collect();
        let mut rows = if wanted.is_empty() {
            Vec::new()
        } else {
            logits
                .index_select(&Tensor::new(wanted.as_slice(), self.device())?, 0)?
                .to_dtype(candle_core::DType::F32)?
                .to_vec2::<f32>()?
        }
        .into_iter();
        let mut generations = Vec::with_capacity(batch.len());
        for (i, cache) in caches.into_iter().enumerate() {
            generations.push(match options.get(i) {
                Some(Some(opts)) => Some(Generation {
                    item: i,
                    options: *opts,
                    rng: SplitMix64(opts.seed),
                    ids: Vec::new(),
                    emitted: String::new(),
                    held: String::new(),
                    window: (0, 0),
                    final_text: None,
                    cache,
                    pending: rows.next(),
                }),
                _ => None,
            });
        }
        Ok((scores, generations))
    }

    /// Picks `generation`'s next token from its pending distribution (host only) and returns
    /// the text it adds. After a token that does not end the generation, the generation must
    /// go through [`RewardModel::decode_forward`] before its next `next_token`.
    pub fn next_token(&self, generation: &mut Generation) -> Result<Token> {
        let g = generation;
        let Some(logits) = g.pending.take() else {
            return Err(misuse("next_token called twice without a decode step"));
        };
        let id = sample(&logits, &g.options, &mut g.rng);
        let prompt = self.prompt_builder();
        let stop = if Some(id) == prompt.end_token_id() && !g.options.ignore_end {
            Some(StopReason::EndOfTurn)
        } else {
            g.ids.push(id);
            (g.ids.len() >= g.options.max_tokens).then_some(StopReason::MaxTokens)
        };
        let text = match stop {
            Some(_) => {
                g.final_text = Some(prompt.decode(&g.ids)?);
                g.flush()
            }
            None => g.increment(prompt)?,
        };
        Ok(Token { text, stop })
    }

    /// One batched decoder step: feeds each generation's last picked token and leaves the
    /// distribution of its next token pending. Generations may come from different prefills.
    pub fn decode_forward(&self, generations: &mut [&mut Generation]) -> Result<()> {
        if generations.is_empty() {
            return Ok(());
        }
        let mut ids = Vec::with_capacity(generations.len());
        for g in generations.iter() {
            match (g.pending.is_none(), g.ids.last()) {
                (true, Some(&id)) => ids.push(id),
                _ => {
                    return Err(misuse(
                        "decode_forward needs a freshly picked token per generation",
                    ))
                }
            }
        }
        let mut caches: Vec<&mut KvCache> = generations.iter_mut().map(|g| &mut g.cache).collect();
        let hidden = self.language.decode_step(&ids, &mut caches)?;
        let rows = self
            .language
            .logits(&hidden)?
            .to_dtype(candle_core::DType::F32)?
            .to_vec2::<f32>()?;
        for (g, row) in generations.iter_mut().zip(rows) {
            g.pending = Some(row);
        }
        Ok(())
    }

    /// Scores `batch` and decodes a rationale for every item whose `options` entry is set,
    /// running the generations to completion together. `on_text(item, new_text)` receives
    /// each increment of an item's text as it is decoded and returns `false` to stop that item
    /// (its rationale then ends with [`StopReason::Stopped`]).
    pub fn score_with_rationales(
        &self,
        batch: &[&PreparedItem],
        options: &[Option<RationaleOptions>],
        on_text: &mut dyn FnMut(usize, &str) -> bool,
    ) -> Result<Vec<(Score, Option<Rationale>)>> {
        if options.iter().all(Option::is_none) {
            let scores = self.score_prepared(batch)?;
            return Ok(scores.into_iter().map(|s| (s, None)).collect());
        }
        let (scores, generations) = self.prefill_for_rationales(batch, options)?;
        let mut done: Vec<Option<Rationale>> = vec![None; batch.len()];
        let mut active: Vec<Generation> = generations.into_iter().flatten().collect();
        while !active.is_empty() {
            let mut running = Vec::with_capacity(active.len());
            for mut g in active {
                let token = self.next_token(&mut g)?;
                let item = g.item;
                let wanted = token.text.is_empty() || on_text(item, &token.text);
                match (token.stop, wanted) {
                    (Some(stop), _) => done[item] = Some(g.finish(stop)),
                    (None, false) => done[item] = Some(g.finish(StopReason::Stopped)),
                    (None, true) => running.push(g),
                }
            }
            let mut refs: Vec<&mut Generation> = running.iter_mut().collect();
            self.decode_forward(&mut refs)?;
            active = running;
        }
        Ok(scores.into_iter().zip(done).collect())
    }
}

impl Generation {
    /// Text decoded since the last increment (incremental detokenisation over a window of
    /// recent tokens, as text-generation-inference does), held back while it ends in an
    /// incomplete character (U+FFFD) or while detokenisation rewrote already emitted text.
    fn increment(&mut self, prompt: &PromptBuilder) -> Result<String> {
        let (start, read) = self.window;
        let before = prompt.decode(&self.ids[start..read])?;
        let after = prompt.decode(&self.ids[start..])?;
        let Some(fresh) = after.strip_prefix(before.as_str()) else {
            return Ok(String::new());
        };
        if fresh.is_empty() || fresh.ends_with('\u{FFFD}') {
            self.held = fresh.to_string();
            return Ok(String::new());
        }
        let fresh = fresh.to_string();
        self.emitted.push_str(&fresh);
        self.held.clear();
        self.window = (read, self.ids.len());
        Ok(fresh)
    }

    /// Everything not yet emitted (the end of a generation). Nothing when detokenising the
    /// whole sequence changed text already emitted: the final text is authoritative.
    fn flush(&mut self) -> String {
        let text = self.final_text.as_deref().unwrap_or_default();
        match text.strip_prefix(self.emitted.as_str()) {
            Some(fresh) if !fresh.is_empty() => {
                let fresh = fresh.to_string();
                self.emitted.push_str(&fresh);
                self.held.clear();
                fresh
            }
            _ => String::new(),
        }
    }
}

/// An API misuse inside the crate's callers (a bug, not a bad item).
fn misuse(what: &str) -> crate::Error {
    crate::Error::Compute(candle_core::Error::Msg(what.to_string()))
}
