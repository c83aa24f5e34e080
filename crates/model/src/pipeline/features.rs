//! The vision half of a batch: every distinct image encoded once (or served from the feature
//! cache), and the feature row each image-context token reads. "Distinct" is per image-side
//! adapter: an image an adapter's vision encoder or projector changes has its own features
//! ([`ImageKey::for_adapter`]); every other reward shares the base's.

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
        // Distinct (image, image-side adapter) pairs in first-seen order, with their pixels.
        let mut index: HashMap<ImageKey, usize> = HashMap::new();
        let mut distinct: Vec<Distinct> = Vec::new();
        let mut occurrences: Vec<usize> = Vec::new();
        for item in batch {
            let adapter = self.image_slot_of(item)?;
            for tile in &item.tiles {
                let key = &tile.key().for_adapter(adapter);
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
                        distinct.push(Distinct {
                            key: *key,
                            pixels: tile.pixels(),
                            tiles: tile.layout().num_tiles,
                            adapter,
                        });
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
            .map(|d| {
                self.options
                    .reuse_images
                    .then(|| self.feature_cache.get(&d.key))
                    .flatten()
            })
            .collect();
        // The images not cached, encoded in one pass per image-side adapter.
        let mut missing: Vec<usize> = (0..distinct.len())
            .filter(|&i| blocks[i].is_none())
            .collect();
        while let Some(&first) = missing.first() {
            let adapter = distinct[first].adapter;
            let (group, rest): (Vec<usize>, Vec<usize>) = missing
                .iter()
                .partition(|&&i| distinct[i].adapter == adapter);
            missing = rest;
            let tiles: usize = group.iter().map(|&i| distinct[i].tiles).sum();
            let mut pixels = Vec::with_capacity(tiles * tile_len);
            for &i in &group {
                pixels.extend_from_slice(distinct[i].pixels);
            }
            let pixels = Tensor::from_vec(pixels, (tiles, 3, side, side), &self.device)?
                .to_dtype(self.dtype)?;
            let encoded =
                self.images
                    .encode_tiles(&pixels, self.options.vision_batch_tiles, adapter)?;
            let mut row = 0;
            for &i in &group {
                let rows = distinct[i].tiles * rows_per_tile;
                let block = encoded.narrow(0, row, rows)?;
                if self.options.reuse_images {
                    self.feature_cache.insert(distinct[i].key, block.clone());
                }
                blocks[i] = Some(block);
                row += rows;
            }
        }
        let mut offsets = Vec::with_capacity(distinct.len());
        let mut parts = Vec::with_capacity(distinct.len());
        let mut offset = 0u32;
        for (block, d) in blocks.into_iter().zip(&distinct) {
            offsets.push(offset);
            offset += (d.tiles * rows_per_tile) as u32;
            parts.push(block.ok_or_else(|| Error::InvalidInput("image features missing".into()))?);
        }
        let image_rows = occurrences
            .iter()
            .flat_map(|&slot| {
                let start = offsets[slot];
                start..start + (distinct[slot].tiles * rows_per_tile) as u32
            })
            .collect();
        Ok((Some(Tensor::cat(&parts, 0)?), image_rows))
    }
}

/// One distinct image of a batch under one image-side adapter.
struct Distinct<'a> {
    /// Its features' key ([`ImageKey::for_adapter`]).
    key: ImageKey,
    /// Its normalised tiles.
    pixels: &'a [f32],
    /// How many tiles.
    tiles: usize,
    /// The adapter slot its features are encoded with.
    adapter: Option<usize>,
}
