//! Chain-of-thought rationales: after the prefill that gives the score, decode the model's
//! answer and reasoning with a KV cache, batched across the items that asked for it.
//!
//! The score is always the first-token probability from the prefill; decoding never changes
//! it. Items leave the decode batch when they emit the end-of-turn token, reach `max_tokens`,
//! or their caller says stop (deadline passed, client gone).

use candle_core::Tensor;

use crate::error::Result;
use crate::item::Score;
use crate::language::KvCache;
use crate::ranking::SplitMix64;
use crate::scorer::{PreparedItem, RewardModel};

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

impl Default for RationaleOptions {
    fn default() -> Self {
        RationaleOptions {
            max_tokens: 256,
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
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
    text: String,
    /// The prefix of `text` already handed out as increments.
    emitted: String,
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
            text: self.text.clone(),
            emitted: self.emitted.clone(),
            cache: self.cache.fork()?,
            pending: self.pending.clone(),
        })
    }

    /// Ends the generation with `stop` and returns what it decoded.
    pub fn finish(self, stop: StopReason) -> Rationale {
        Rationale {
            token_ids: self.ids,
            text: self.text,
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
        let scores = self.scores_from_logits(&logits)?;
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
                    text: String::new(),
                    emitted: String::new(),
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
        if Some(id) == self.prompt_builder().end_token_id() && !g.options.ignore_end {
            return Ok(Token {
                text: g.flush(),
                stop: Some(StopReason::EndOfTurn),
            });
        }
        g.ids.push(id);
        g.text = self.prompt_builder().decode(&g.ids)?;
        let stop = (g.ids.len() >= g.options.max_tokens).then_some(StopReason::MaxTokens);
        let text = if stop.is_some() {
            g.flush()
        } else {
            g.increment()
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
    /// Text decoded since the last increment, held back while it ends in an incomplete
    /// character (U+FFFD) or while detokenisation rewrote already emitted text.
    fn increment(&mut self) -> String {
        if self.text.ends_with('\u{FFFD}') {
            return String::new();
        }
        self.flush()
    }

    /// Everything not yet emitted (the end of a generation). Nothing when detokenising the
    /// longer sequence changed text already emitted: the final `text` is authoritative.
    fn flush(&mut self) -> String {
        match self.text.strip_prefix(self.emitted.as_str()) {
            Some(fresh) if !fresh.is_empty() => {
                let fresh = fresh.to_string();
                self.emitted.push_str(&fresh);
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

/// Greedy at temperature 0; otherwise softmax at `temperature`, nucleus `top_p`, one draw.
fn sample(logits: &[f32], opts: &RationaleOptions, rng: &mut SplitMix64) -> u32 {
    let argmax = || {
        logits
            .iter()
            .enumerate()
            .fold((0usize, f32::NEG_INFINITY), |best, (i, &v)| {
                if v > best.1 {
                    (i, v)
                } else {
                    best
                }
            })
            .0 as u32
    };
    if opts.temperature <= 0.0 {
        return argmax();
    }
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let weight = |v: f32| (((v - max) / opts.temperature) as f64).exp();
    let top_p = opts.top_p.clamp(1e-6, 1.0) as f64;
    if top_p >= 1.0 {
        // The whole distribution: one pass, no sort.
        let total: f64 = logits.iter().map(|&v| weight(v)).sum();
        let mut draw = unit(rng) * total;
        for (i, &v) in logits.iter().enumerate() {
            draw -= weight(v);
            if draw < 0.0 {
                return i as u32;
            }
        }
        return argmax();
    }
    let mut probs: Vec<(u32, f64)> = logits
        .iter()
        .enumerate()
        .map(|(i, &v)| (i as u32, weight(v)))
        .collect();
    probs.sort_by(|a, b| b.1.total_cmp(&a.1));
    let total: f64 = probs.iter().map(|p| p.1).sum();
    let mut kept = 0.0;
    let cutoff = probs
        .iter()
        .position(|p| {
            kept += p.1 / total;
            kept >= top_p
        })
        .map_or(probs.len(), |i| i + 1);
    let mass: f64 = probs[..cutoff].iter().map(|p| p.1).sum();
    let mut draw = unit(rng) * mass;
    for &(id, p) in &probs[..cutoff] {
        if draw < p {
            return id;
        }
        draw -= p;
    }
    probs[cutoff - 1].0
}

/// A uniform draw in [0, 1) with 53 random bits.
fn unit(rng: &mut SplitMix64) -> f64 {
    (rng.next() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_and_seeded_sampling() {
        let logits = [0.1f32, 2.0, 1.9, -3.0];
        let greedy = RationaleOptions::default();
        assert_eq!(sample(&logits, &greedy, &mut SplitMix64(1)), 1);
        let hot = RationaleOptions {
            temperature: 1.0,
            ..greedy
        };
        let draws = |seed| {
            (0..50)
                .map(|_| 0)
                .scan(SplitMix64(seed), |rng, _| Some(sample(&logits, &hot, rng)))
                .collect::<Vec<_>>()
        };
        assert_eq!(draws(7), draws(7));
        assert!(
            draws(7).contains(&2),
            "temperature 1 explores the runner-up"
        );
        let narrow = RationaleOptions {
            temperature: 1.0,
            // The top token holds 0.485 of the mass: a 0.4 nucleus is that token alone.
            top_p: 0.4,
            ..greedy
        };
        let mut rng = SplitMix64(3);
        assert!(
            (0..50).all(|_| sample(&logits, &narrow, &mut rng) == 1),
            "top_p 0.4 keeps the top token only"
        );
    }
}
