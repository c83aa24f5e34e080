//! Chain-of-thought rationales: after the prefill that gives the score, decode the model's
//! answer and reasoning with a KV cache, batched across the items that asked for it.
//!
//! The score is always the first-token probability from the prefill; decoding never changes
//! it. Items leave the decode batch when they emit the end-of-turn token, reach `max_tokens`,
//! or their caller says stop (deadline passed, client gone).

use candle_core::Tensor;

use crate::error::Result;
use crate::item::Score;
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
}

impl Default for RationaleOptions {
    fn default() -> Self {
        RationaleOptions {
            max_tokens: 256,
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
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

struct Active {
    item: usize,
    options: RationaleOptions,
    rng: SplitMix64,
    ids: Vec<u32>,
    text: String,
}

impl RewardModel {
    /// Scores `batch` and decodes a rationale for every item whose `options` entry is set.
    /// `on_text(item, new_text)` receives each increment of an item's text as it is decoded
    /// and returns `false` to stop that item (its rationale then ends with
    /// [`StopReason::Stopped`]).
    pub fn score_with_rationales(
        &self,
        batch: &[&PreparedItem],
        options: &[Option<RationaleOptions>],
        on_text: &mut dyn FnMut(usize, &str) -> bool,
    ) -> Result<Vec<(Score, Option<Rationale>)>> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let (embeds, packing) = self.packed_inputs(batch)?;
        let (hidden, caches) = self.language.prefill_with_cache(&embeds, &packing)?;
        let logits = self.language.logits(&hidden)?;
        let scores = self.scores_from_logits(&logits)?;
        let end = self.prompt_builder().end_token_id();

        let mut done: Vec<Option<Rationale>> = vec![None; batch.len()];
        let mut active: Vec<Active> = Vec::new();
        let mut active_caches = Vec::new();
        for (i, cache) in caches.into_iter().enumerate() {
            if let Some(Some(opts)) = options.get(i) {
                active.push(Active {
                    item: i,
                    options: *opts,
                    rng: SplitMix64(opts.seed),
                    ids: Vec::new(),
                    text: String::new(),
                });
                active_caches.push(cache);
            }
        }
        let rows: Vec<u32> = active.iter().map(|a| a.item as u32).collect();
        let mut step_logits = if rows.is_empty() {
            None
        } else {
            Some(logits.index_select(&Tensor::new(rows, self.device())?, 0)?)
        };
        while let Some(current) = step_logits.take() {
            let rows: Vec<Vec<f32>> = current.to_vec2::<f32>()?;
            let mut next_ids = Vec::with_capacity(active.len());
            let mut keep = Vec::with_capacity(active.len());
            for (a, row) in active.iter_mut().zip(rows) {
                let id = sample(&row, &a.options, &mut a.rng);
                let stop = if Some(id) == end {
                    Some(StopReason::EndOfTurn)
                } else {
                    a.ids.push(id);
                    let text = self.prompt_builder().decode(&a.ids)?;
                    let fresh = text
                        .strip_prefix(a.text.as_str())
                        .unwrap_or(&text)
                        .to_string();
                    a.text = text;
                    if !fresh.is_empty() && !on_text(a.item, &fresh) {
                        Some(StopReason::Stopped)
                    } else if a.ids.len() >= a.options.max_tokens {
                        Some(StopReason::MaxTokens)
                    } else {
                        None
                    }
                };
                keep.push(stop.is_none());
                match stop {
                    Some(stop) => {
                        done[a.item] = Some(Rationale {
                            token_ids: std::mem::take(&mut a.ids),
                            text: std::mem::take(&mut a.text),
                            stop,
                        })
                    }
                    None => next_ids.push(id),
                }
            }
            let mut flags = keep.iter();
            active.retain(|_| *flags.next().unwrap_or(&false));
            let mut flags = keep.iter();
            active_caches.retain(|_| *flags.next().unwrap_or(&false));
            if !active.is_empty() {
                let hidden = self.language.decode_step(&next_ids, &mut active_caches)?;
                step_logits = Some(self.language.logits(&hidden)?);
            }
        }
        Ok(scores.into_iter().zip(done).collect())
    }
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
    let mut probs: Vec<(u32, f64)> = logits
        .iter()
        .enumerate()
        .map(|(i, &v)| (i as u32, (((v - max) / opts.temperature) as f64).exp()))
        .collect();
    probs.sort_by(|a, b| b.1.total_cmp(&a.1));
    let total: f64 = probs.iter().map(|p| p.1).sum();
    let mut kept = 0.0;
    let cutoff = probs
        .iter()
        .position(|p| {
            kept += p.1 / total;
            kept >= opts.top_p.clamp(1e-6, 1.0) as f64
        })
        .map_or(probs.len(), |i| i + 1);
    let mass: f64 = probs[..cutoff].iter().map(|p| p.1).sum();
    let mut draw = (rng.next() >> 11) as f64 / (1u64 << 53) as f64 * mass;
    for &(id, p) in &probs[..cutoff] {
        if draw < p {
            return id;
        }
        draw -= p;
    }
    probs[cutoff - 1].0
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
