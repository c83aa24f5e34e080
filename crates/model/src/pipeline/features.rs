//! The vision half of a batch: every distinct image encoded once (or served from the feature
//! cache), and the feature row each image-context token reads.

use std::collections::HashMap;

use candle_core::Tensor;

use super::{PreparedItem, RewardModel};
use crate::error::{Error, Result};
use crate::image::ImageKey;

impl RewardModel {
    /// Projected features of every distinct image in `batch`, each encoded at most once (and
    /// not at all when cached), plus the feature row each image-context token reads, in order.
    pub(super) fn batch_image_features(
        &self,
        batch: &[&PreparedItem],
    ) -> Result<(Option<Tensor>, Vec<u32>)> {
        let rows_per_tile = self.config.tokens_per_tile();
        let side = self.config.tile_size() as usize;
        let tile_len = 3 * side * side;
        // Distinct images in first-seen order, with their pixels.
        let mut index: HashMap<ImageKey, usize> = HashMap::new();
        let mut distinct: Vec<(ImageKey, &[f32], usize)> = Vec::new();
        let mut occurrences: Vec<usize> = Vec::new();
        for item in batch {
            for tile in &item.tiles {
                let key = &tile.key();
                let seen_before = index
                    .get(key)
                    .copied()
                    .filter(|_| self.options.reuse_images);
                let slot = match seen_before {
                    Some(slot) => {
                        self.feature_cache.record_batch_hit();
                        slot
                    }
                    None => {
                        distinct.push((*key, tile.pixels(), tile.layout().num_tiles));
                        index.insert(*key, distinct.len() - 1);
                        distinct.len() - 1
                    }
                };
                occurrences.push(slot);
            }
        }
        if distinct.is_empty() {
            return Ok((None, Vec::new()));
        }
        let mut blocks: Vec<Option<Tensor>> = distinct
            .iter()
            .map(|(key, _, _)| {
                self.options
                    .reuse_images
                    .then(|| self.feature_cache.get(key))
                    .flatten()
            })
            .collect();
        let missing: Vec<usize> = (0..distinct.len())
            .filter(|&i| blocks[i].is_none())
            .collect();
        if !missing.is_empty() {
            let tiles: usize = missing.iter().map(|&i| distinct[i].2).sum();
            let mut pixels = Vec::with_capacity(tiles * tile_len);
            for &i in &missing {
                pixels.extend_from_slice(distinct[i].1);
            }
            let pixels = Tensor::from_vec(pixels, (tiles, 3, side, side), &self.device)?
                .to_dtype(self.dtype)?;
            let encoded = self
                .images
                .encode_tiles(&pixels, self.options.vision_batch_tiles)?;
            let mut row = 0;
            for &i in &missing {
                let rows = distinct[i].2 * rows_per_tile;
                let block = encoded.narrow(0, row, rows)?;
                if self.options.reuse_images {
                    self.feature_cache.insert(distinct[i].0, block.clone());
                }
                blocks[i] = Some(block);
                row += rows;
            }
        }
        let mut offsets = Vec::with_capacity(distinct.len());
        let mut parts = Vec::with_capacity(distinct.len());
        let mut offset = 0u32;
        for (block, (_, _, tiles)) in blocks.into_iter().zip(&distinct) {
            offsets.push(offset);
            offset += (tiles * rows_per_tile) as u32;
            parts.push(block.ok_or_else(|| Error::InvalidInput("image features missing".into()))?);
        }
        let image_rows = occurrences
            .iter()
            .flat_map(|&slot| {
                let start = offsets[slot];
                start..start + (distinct[slot].2 * rows_per_tile) as u32
            })
            .collect();
        Ok((Some(Tensor::cat(&parts, 0)?), image_rows))
    }
}
