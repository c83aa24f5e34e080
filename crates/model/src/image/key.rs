//! The content key of a preprocessed image: what the feature cache and in-batch dedupe key on.

use super::RgbImage;

/// Content key of one preprocessed image: decoded pixels + how they were tiled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ImageKey([u8; 32]);

impl ImageKey {
    /// Hashes the decoded RGB pixels, their size, whether the image is a video frame, and
    /// `preprocessing`: the family's encoding of every setting that changes the tiles.
    pub fn of(img: &RgbImage, frame: bool, preprocessing: &[u8]) -> Self {
        let mut h = blake3::Hasher::new();
        h.update(&[frame as u8]);
        for v in [img.width(), img.height()] {
            h.update(&v.to_le_bytes());
        }
        h.update(&(preprocessing.len() as u64).to_le_bytes());
        h.update(preprocessing);
        h.update(img.as_raw());
        ImageKey(*h.finalize().as_bytes())
    }

    /// Hashes a float image's values and size, whether it is a video frame, and the family's
    /// `preprocessing` settings.
    pub fn of_float(img: &super::FloatImage, frame: bool, preprocessing: &[u8]) -> Self {
        let mut h = blake3::Hasher::new();
        h.update(b"float-rgb");
        h.update(&[frame as u8]);
        for v in [img.width(), img.height()] {
            h.update(&v.to_le_bytes());
        }
        h.update(&(preprocessing.len() as u64).to_le_bytes());
        h.update(preprocessing);
        let bytes: Vec<u8> = img.data().iter().flat_map(|v| v.to_le_bytes()).collect();
        h.update(&bytes);
        ImageKey(*h.finalize().as_bytes())
    }

    /// The key of this image's features under the unmerged adapter `slot` that changes the
    /// image side (`None`: the base's features, this key itself).
    pub fn for_adapter(self, slot: Option<usize>) -> Self {
        match slot {
            None => self,
            Some(s) => {
                let mut h = blake3::Hasher::new();
                h.update(b"adapter-slot");
                h.update(&(s as u64).to_le_bytes());
                h.update(&self.0);
                ImageKey(*h.finalize().as_bytes())
            }
        }
    }

    /// Hashes already-normalised tiles (for items whose pixels were supplied directly).
    pub fn of_pixels(pixels: &[f32]) -> Self {
        let mut h = blake3::Hasher::new();
        h.update(b"normalised-f32-tiles");
        let bytes: Vec<u8> = pixels.iter().flat_map(|v| v.to_le_bytes()).collect();
        h.update(&bytes);
        ImageKey(*h.finalize().as_bytes())
    }
}
