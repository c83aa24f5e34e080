//! The gradient of an item's reward with respect to its float images (`ScoreGrad`).
//!
//! Each reward is a scalar, so the vector-Jacobian product is exact and stateless: one forward
//! and one backward per item give `r` and `dr/dx` for every float image of the item (the
//! candidate, or each video frame); a caller's autograd multiplies by `dL/dr`. Images given as
//! encoded bytes (a pairwise reference) are constants: they go through the feature cache like
//! any scored image and get no gradient. Float images never do: their features are computed
//! fresh, and so is everything after them.
//!
//! The backward recomputes each layer from its saved input (see [`crate::nn::grad`]) and reads
//! the output head's two answer rows only.

use std::sync::atomic::Ordering;

use candle_core::Tensor;

use super::{PreparedItem, RewardModel};
use crate::error::{Error, Result};
use crate::image::ImageKey;
use crate::image::PreparedImage;
use crate::item::Score;
use crate::nn::language::KvCache;

/// What the gradient is of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Objective {
    /// `p_yes = sigmoid(logit_yes - logit_no)`, the score's `p_yes`.
    #[default]
    PYes,
    /// `log p_yes`.
    LogPYes,
    /// `logit_yes - logit_no`.
    LogitMargin,
}

impl std::str::FromStr for Objective {
    type Err = Error;

    /// `p_yes`, `log_p_yes` or `logit_margin`.
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "p_yes" => Ok(Objective::PYes),
            "log_p_yes" => Ok(Objective::LogPYes),
            "logit_margin" => Ok(Objective::LogitMargin),
            other => Err(Error::InvalidInput(format!(
                "unknown objective {other:?} (expected p_yes, log_p_yes or logit_margin)"
            ))),
        }
    }
}

impl Objective {
    /// The name [`std::str::FromStr`] reads: `p_yes`, `log_p_yes`, `logit_margin`.
    pub fn name(self) -> &'static str {
        match self {
            Objective::PYes => "p_yes",
            Objective::LogPYes => "log_p_yes",
            Objective::LogitMargin => "logit_margin",
        }
    }

    /// The objective's value and its derivative with respect to the margin
    /// `logit_yes - logit_no`, in f64.
    fn of_margin(self, margin: f64) -> (f64, f64) {
        let p = 1.0 / (1.0 + (-margin).exp());
        match self {
            Objective::PYes => (p, p * (1.0 - p)),
            // log σ(m) = -softplus(-m) = -(max(-m, 0) + log(1 + e^-|m|)), stable for any m.
            Objective::LogPYes => (
                -((-margin).max(0.0) + (-margin.abs()).exp().ln_1p()),
                1.0 - p,
            ),
            Objective::LogitMargin => (margin, 1.0),
        }
    }
}

/// The gradient of the objective with respect to one float image.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageGradient {
    /// Width of the image, in pixels.
    pub width: u32,
    /// Height of the image, in pixels.
    pub height: u32,
    /// `(H, W, 3)` values: d objective / d pixel value (the `[0, 1]` image).
    pub values: Vec<f32>,
}

/// One item's reward and gradients.
#[derive(Debug, Clone)]
pub struct ScoreGradient {
    /// The score, as `score` gives it for the item alone.
    pub score: Score,
    /// The objective's value.
    pub objective: f64,
    /// For each image of the item, in prompt order: its gradient when it was given as floats,
    /// `None` for a constant image.
    pub images: Vec<Option<ImageGradient>>,
}

/// The constant prefix of a gradient item: its tokens before its first float image and the
/// images among them. Two items with equal prefixes share its keys and values.
#[derive(Debug, Default, PartialEq, Eq)]
struct ConstantPrefix {
    ids: Vec<u32>,
    images: Vec<ImageKey>,
    /// The adapter slot it runs with.
    adapter: Option<usize>,
}

impl ConstantPrefix {
    /// Tokens in the prefix.
    fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether there is nothing to share (prefix reuse is off for the item).
    fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

impl RewardModel {
    /// The reward of `item` and the gradient of `objective` with respect to each of its float
    /// images. An item without float images is refused (there is nothing to differentiate).
    pub fn score_grad(&self, item: &PreparedItem, objective: Objective) -> Result<ScoreGradient> {
        let mut out = self.score_grad_batch(&[item], &[objective])?;
        out.pop()
            .ok_or_else(|| Error::InvalidInput("no gradient for the item".into()))
    }

    /// [`Self::score_grad`] for each item of a batch, with `objectives[i]` for `items[i]`.
    /// Each item is its own forward and backward (the result is the item's alone), except that
    /// with prefix reuse on, what precedes an item's first float image (the system prompt, a
    /// constant reference image) is computed once for every item of the batch that starts the
    /// same way, and the backward never runs over it.
    pub fn score_grad_batch(
        &self,
        items: &[&PreparedItem],
        objectives: &[Objective],
    ) -> Result<Vec<ScoreGradient>> {
        if items.len() != objectives.len() {
            return Err(Error::InvalidInput(format!(
                "{} objectives for {} items",
                objectives.len(),
                items.len()
            )));
        }
        let prefixes = items
            .iter()
            .map(|item| self.constant_prefix(item))
            .collect::<Result<Vec<_>>>()?;
        // Items that share a prefix run one after the other, so one prefix is alive at a time.
        let mut order: Vec<usize> = (0..items.len()).collect();
        order.sort_by_key(|&i| prefixes.iter().position(|p| *p == prefixes[i]));
        let mut results: Vec<Option<ScoreGradient>> = (0..items.len()).map(|_| None).collect();
        let mut current: Option<(&ConstantPrefix, KvCache)> = None;
        for i in order {
            let prefix = &prefixes[i];
            if prefix.is_empty() {
                results[i] = Some(self.item_gradient(items[i], objectives[i], None)?);
                continue;
            }
            if matches!(&current, Some((p, _)) if *p == prefix) {
                self.prefix_tokens_saved
                    .fetch_add(prefix.len() as u64, Ordering::Relaxed);
            } else {
                current = Some((prefix, self.prefix_cache(items[i], prefix)?));
            }
            let with = current.as_ref().map(|(p, c)| (*p, c));
            results[i] = Some(self.item_gradient(items[i], objectives[i], with)?);
        }
        results
            .into_iter()
            .map(|r| r.ok_or_else(|| Error::InvalidInput("an item got no gradient".into())))
            .collect()
    }

    /// What of `item` is a constant of its gradient and can be computed once: its tokens up
    /// to its first float image, with the content keys of the images among them. Empty when
    /// prefix reuse is off or the rotary angles depend on the item's length.
    fn constant_prefix(&self, item: &PreparedItem) -> Result<ConstantPrefix> {
        let first_float = item
            .tiles
            .iter()
            .position(|t| t.tile_backward().is_some())
            .ok_or_else(|| {
                Error::InvalidInput("the item has no float image to differentiate".into())
            })?;
        let len = item.input_ids.len();
        if !self.shares_prefixes_at(len) {
            return Ok(ConstantPrefix::default());
        }
        let image_slot = self.image_slot_of(item)?;
        let per_tile = self.config.tokens_per_tile();
        let rows_before: usize = item.tiles[..first_float]
            .iter()
            .map(|t| t.layout().num_tiles * per_tile)
            .sum();
        let ctx_id = self.prompt.image_context_id();
        let end = item
            .input_ids
            .iter()
            .enumerate()
            .filter(|(_, &id)| id == ctx_id)
            .nth(rows_before)
            .map(|(k, _)| k)
            .ok_or_else(|| {
                Error::InvalidInput("fewer image-context tokens than image features".into())
            })?;
        Ok(ConstantPrefix {
            ids: item.input_ids[..end].to_vec(),
            images: item.tiles[..first_float]
                .iter()
                .map(|t| t.key().for_adapter(image_slot))
                .collect(),
            adapter: self.slot_of(item)?,
        })
    }

    /// The keys and values of `item`'s constant `prefix`.
    fn prefix_cache(&self, item: &PreparedItem, prefix: &ConstantPrefix) -> Result<KvCache> {
        let side = self.config.tile_size() as usize;
        let image_slot = self.image_slot_of(item)?;
        let rows = item
            .tiles
            .iter()
            .take(prefix.images.len())
            .map(|t| self.constant_features(t, side, image_slot))
            .collect::<Result<Vec<_>>>()?;
        let (embeds, _) = self.embed_tokens(&prefix.ids, &rows)?;
        Ok(self.language.prefix_cache(&embeds, prefix.adapter)?)
    }

    /// One item's forward and backward, continuing the keys and values of its constant prefix
    /// when given (then only the tokens and images after it are embedded and run).
    fn item_gradient(
        &self,
        item: &PreparedItem,
        objective: Objective,
        prefix: Option<(&ConstantPrefix, &KvCache)>,
    ) -> Result<ScoreGradient> {
        let side = self.config.tile_size() as usize;
        let (skip, skip_images) = prefix.map_or((0, 0), |(p, _)| (p.len(), p.images.len()));
        let tiles = &item.tiles[skip_images..];
        let image_slot = self.image_slot_of(item)?;
        let pixels: Vec<Option<Tensor>> = tiles
            .iter()
            .map(|t| {
                t.tile_backward()
                    .map(|_| self.pixel_tensor(t, side))
                    .transpose()
            })
            .collect::<Result<_>>()?;
        // Features of every image after the prefix, in prompt order.
        let mut rows = Vec::with_capacity(tiles.len());
        for (tile, px) in tiles.iter().zip(&pixels) {
            rows.push(match px {
                Some(px) => {
                    self.images
                        .encode_tiles(px, self.options.vision_batch_tiles, image_slot)?
                }
                None => self.constant_features(tile, side, image_slot)?,
            });
        }
        let (suffix, image_positions) = self.embed_tokens(&item.input_ids[skip..], &rows)?;
        let (hidden, tape) =
            self.language
                .forward_for_grad(&suffix, prefix.map(|(_, c)| c), self.slot_of(item)?)?;
        let score = self.scores_from_logits(&self.language.logits(&hidden)?, &[item])?[0];
        let (yes, no) = self.reward_of(item)?.answer_ids;
        let margin = f64::from(score.logit_yes) - f64::from(score.logit_no);
        let (value, d_margin) = objective.of_margin(margin);
        let d_suffix = self.language.backward_from_logits(
            &tape,
            &[yes, no],
            &[d_margin as f32, -d_margin as f32],
        )?;
        // The gradient of each float image's feature rows, then through its encoder and
        // tiling; the prefix's images are constants.
        let mut images: Vec<Option<ImageGradient>> = vec![None; skip_images];
        let mut start = 0;
        for ((tile, px), r) in tiles.iter().zip(&pixels).zip(&rows) {
            let n = r.dim(0)?;
            images.push(match (tile.tile_backward(), px) {
                (Some(backward), Some(px)) => {
                    let at = Tensor::new(&image_positions[start..start + n], &self.device)?;
                    let d_rows = d_suffix.index_select(&at, 0)?;
                    let d_pixels = self.images.encode_tiles_backward(px, &d_rows, image_slot)?;
                    let d_pixels = d_pixels
                        .to_dtype(candle_core::DType::F32)?
                        .flatten_all()?
                        .to_vec1::<f32>()?;
                    let (width, height) = tile.layout().size;
                    Some(ImageGradient {
                        width,
                        height,
                        values: backward.backward(&d_pixels)?,
                    })
                }
                _ => None,
            });
            start += n;
        }
        Ok(ScoreGradient {
            score,
            objective: value,
            images,
        })
    }

    /// `(num_tiles, 3, S, S)` pixels of one prepared image on the model's device and dtype.
    fn pixel_tensor(&self, tile: &PreparedImage, side: usize) -> Result<Tensor> {
        let n = tile.layout().num_tiles;
        Ok(
            Tensor::from_slice(tile.pixels(), (n, 3, side, side), &self.device)?
                .to_dtype(self.dtype)?,
        )
    }

    /// Features of an image that is a constant of the gradient, encoded with the image-side
    /// adapter `slot`: from the feature cache when it holds them (and put there otherwise).
    fn constant_features(
        &self,
        tile: &PreparedImage,
        side: usize,
        slot: Option<usize>,
    ) -> Result<Tensor> {
        let key = tile.key().for_adapter(slot);
        if self.options.reuse_images {
            if let Some(hit) = self.feature_cache.get(&key) {
                return Ok(hit);
            }
        }
        let rows = self.images.encode_tiles(
            &self.pixel_tensor(tile, side)?,
            self.options.vision_batch_tiles,
            slot,
        )?;
        if self.options.reuse_images {
            self.feature_cache.insert(key, rows.clone());
        }
        Ok(rows)
    }

    /// The input embeddings of the tokens `ids` with `rows` (each image's feature rows, in
    /// prompt order) spliced in, and the positions of the image-context tokens, in order.
    fn embed_tokens(&self, ids: &[u32], rows: &[Tensor]) -> Result<(Tensor, Vec<u32>)> {
        let ctx_id = self.prompt.image_context_id();
        let positions: Vec<u32> = ids
            .iter()
            .enumerate()
            .filter(|(_, &id)| id == ctx_id)
            .map(|(i, _)| i as u32)
            .collect();
        let rows_total = rows
            .iter()
            .map(|r| r.dim(0))
            .sum::<candle_core::Result<usize>>()?;
        if rows_total != positions.len() {
            return Err(Error::InvalidInput(format!(
                "{} image-context tokens for {rows_total} image features",
                positions.len(),
            )));
        }
        let text = self.language.embed(&Tensor::new(ids, &self.device)?)?;
        if rows.is_empty() {
            return Ok((text, positions));
        }
        // Row k of the table is text token k, or image row r at `len + r`.
        let len = ids.len();
        let mut next = 0u32;
        let gather: Vec<u32> = ids
            .iter()
            .enumerate()
            .map(|(k, &id)| {
                if id == ctx_id {
                    next += 1;
                    len as u32 + next - 1
                } else {
                    k as u32
                }
            })
            .collect();
        let features = Tensor::cat(rows, 0)?.to_dtype(text.dtype())?;
        let table = Tensor::cat(&[&text, &features], 0)?;
        let embeds = table.index_select(&Tensor::new(gather, &self.device)?, 0)?;
        Ok((embeds, positions))
    }
}

#[cfg(test)]
mod tests {
    use super::Objective;

    #[test]
    fn objectives_and_their_derivatives() {
        for m in [-40.0f64, -3.0, 0.0, 0.7, 25.0] {
            let p = 1.0 / (1.0 + (-m).exp());
            let (v, d) = Objective::PYes.of_margin(m);
            assert!((v - p).abs() < 1e-15 && (d - p * (1.0 - p)).abs() < 1e-15);
            let (v, d) = Objective::LogPYes.of_margin(m);
            let exact = -(1.0 + (-m).exp()).ln();
            assert!(
                (v - exact).abs() <= 1e-12 * exact.abs().max(1.0),
                "{m}: {v} vs {exact}"
            );
            assert!((d - (1.0 - p)).abs() < 1e-15);
            assert_eq!(Objective::LogitMargin.of_margin(m), (m, 1.0));
        }
    }
}
