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

use candle_core::Tensor;

use super::{PreparedItem, RewardModel};
use crate::error::{Error, Result};
use crate::image::PreparedImage;
use crate::item::Score;

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

impl RewardModel {
    /// The reward of `item` and the gradient of `objective` with respect to each of its float
    /// images. An item without float images is refused (there is nothing to differentiate).
    pub fn score_grad(&self, item: &PreparedItem, objective: Objective) -> Result<ScoreGradient> {
        if item.tiles.iter().all(|t| t.tile_backward().is_none()) {
            return Err(Error::InvalidInput(
                "the item has no float image to differentiate".into(),
            ));
        }
        let side = self.config.tile_size() as usize;
        let pixels: Vec<Option<Tensor>> = item
            .tiles
            .iter()
            .map(|t| {
                t.tile_backward()
                    .map(|_| self.pixel_tensor(t, side))
                    .transpose()
            })
            .collect::<Result<_>>()?;
        // Features of every image, in prompt order.
        let mut rows = Vec::with_capacity(item.tiles.len());
        for (tile, px) in item.tiles.iter().zip(&pixels) {
            rows.push(match px {
                Some(px) => self
                    .images
                    .encode_tiles(px, self.options.vision_batch_tiles)?,
                None => self.constant_features(tile, side)?,
            });
        }
        let (embeds, image_positions) = self.embed_one(item, &rows)?;
        let (hidden, tape) = self.language.forward_for_grad(&embeds)?;
        let score = self.scores_from_logits(&self.language.logits(&hidden)?)?[0];
        let (yes, no) = self.prompt.answer_ids();
        let margin = f64::from(score.logit_yes) - f64::from(score.logit_no);
        let (value, d_margin) = objective.of_margin(margin);
        let d_embeds = self.language.backward_from_logits(
            &tape,
            &[yes, no],
            &[d_margin as f32, -d_margin as f32],
        )?;
        // The gradient of each image's feature rows, then through its encoder and tiling.
        let d_rows_all =
            d_embeds.index_select(&Tensor::new(image_positions.as_slice(), &self.device)?, 0)?;
        let mut images = Vec::with_capacity(item.tiles.len());
        let mut start = 0;
        for ((tile, px), r) in item.tiles.iter().zip(&pixels).zip(&rows) {
            let n = r.dim(0)?;
            images.push(match (tile.tile_backward(), px) {
                (Some(backward), Some(px)) => {
                    let d_rows = d_rows_all.narrow(0, start, n)?;
                    let d_pixels = self.images.encode_tiles_backward(px, &d_rows)?;
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

    /// Features of an image that is a constant of the gradient: from the feature cache when
    /// it holds them (and put there otherwise).
    fn constant_features(&self, tile: &PreparedImage, side: usize) -> Result<Tensor> {
        let key = tile.key();
        if self.options.reuse_images {
            if let Some(hit) = self.feature_cache.get(&key) {
                return Ok(hit);
            }
        }
        let rows = self.images.encode_tiles(
            &self.pixel_tensor(tile, side)?,
            self.options.vision_batch_tiles,
        )?;
        if self.options.reuse_images {
            self.feature_cache.insert(key, rows.clone());
        }
        Ok(rows)
    }

    /// The input embeddings of one item with `rows` (each image's feature rows, in prompt
    /// order) spliced in, and the positions of the image-context tokens, in order.
    fn embed_one(&self, item: &PreparedItem, rows: &[Tensor]) -> Result<(Tensor, Vec<u32>)> {
        let ctx_id = self.prompt.image_context_id();
        let positions: Vec<u32> = item
            .input_ids
            .iter()
            .enumerate()
            .filter(|(_, &id)| id == ctx_id)
            .map(|(i, _)| i as u32)
            .collect();
        let features = Tensor::cat(rows, 0)?;
        if features.dim(0)? != positions.len() {
            return Err(Error::InvalidInput(format!(
                "{} image-context tokens for {} image features",
                positions.len(),
                features.dim(0)?
            )));
        }
        // Row k of the table is text token k, or image row r at `len + r`.
        let len = item.input_ids.len();
        let mut next = 0u32;
        let gather: Vec<u32> = item
            .input_ids
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
        let text = self
            .language
            .embed(&Tensor::new(item.input_ids.as_slice(), &self.device)?)?;
        let table = Tensor::cat(&[&text, &features.to_dtype(text.dtype())?], 0)?;
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
