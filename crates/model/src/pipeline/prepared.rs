//! An item after the CPU half of scoring: token ids and the tiles of its images.

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::image::{ImageLayout, PreparedImage};

/// An item ready for the device: token ids and normalised tiles.
#[derive(Debug, Clone)]
pub struct PreparedItem {
    /// The user message with image placeholders.
    pub user_content: String,
    /// The chat template's output with image placeholders (before expansion).
    pub rendered_prompt: String,
    /// Token ids fed to the language model, image-context tokens included.
    pub input_ids: Vec<u32>,
    /// Per image, in prompt order.
    pub images: Vec<ImageLayout>,
    /// The tiles of each image (same order), shared with other items that use the same
    /// prepared image; their content keys drive in-batch dedupe and the feature cache.
    pub(crate) tiles: Vec<Arc<PreparedImage>>,
    /// The reward it was prepared for (an index into the model's rewards).
    pub reward: usize,
}

impl PreparedItem {
    /// Tokens in the sequence.
    pub fn num_tokens(&self) -> usize {
        self.input_ids.len()
    }

    /// Tiles across all images.
    pub fn num_tiles(&self) -> usize {
        self.images.iter().map(|i| i.num_tiles).sum()
    }

    /// The normalised pixels of all images, (num_tiles, 3, S, S) row-major.
    pub fn pixels(&self) -> Vec<f32> {
        self.tiles
            .iter()
            .flat_map(|t| t.pixels())
            .copied()
            .collect()
    }

    /// Bytes of tiles this item holds (shared tiles are counted by each item using them).
    pub fn pixel_bytes(&self) -> usize {
        self.tiles.iter().map(|t| t.bytes()).sum()
    }

    /// Replaces the pixels (e.g. with a reference implementation's), keeping the layout.
    pub fn with_pixels(mut self, pixels: Vec<f32>) -> Result<Self> {
        let expected: usize = self.tiles.iter().map(|t| t.pixels().len()).sum();
        if pixels.len() != expected {
            return Err(Error::InvalidInput(format!(
                "expected {expected} pixel values, got {}",
                pixels.len()
            )));
        }
        // The keys must follow the content: hash the new tiles themselves.
        let mut start = 0;
        for tile in self.tiles.iter_mut() {
            let end = start + tile.pixels().len();
            *tile = Arc::new(PreparedImage::from_pixels(
                tile.layout().clone(),
                tile.is_frame(),
                pixels[start..end].to_vec(),
            ));
            start = end;
        }
        Ok(self)
    }
}
