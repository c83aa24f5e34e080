//! An image decoded and tiled once, shareable by many items: a `Rank` request's candidates
//! each appear in up to `2 (N - 1)` pairs, and are decoded, tiled and held in memory once.

use std::sync::Arc;

use serde::Serialize;

use super::{decode, DecodeLimits, FloatImage, ImageInput, ImageKey, RgbImage, TiledImage};
use crate::error::Result;

/// How one image of an item was tiled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageLayout {
    /// Size after EXIF orientation, (width, height).
    pub size: (u32, u32),
    /// Tile grid, (columns, rows).
    pub grid: (u32, u32),
    /// Whether a thumbnail tile was appended.
    pub thumbnail: bool,
    /// Tiles fed to the vision tower for this image.
    pub num_tiles: usize,
}

/// The backward of a family's tiling of a float image: the gradient with respect to the
/// image, `(H, W, 3)`, from the gradient with respect to its normalised tiles.
pub trait TileBackward: std::fmt::Debug + Send + Sync {
    /// `d image` for `d tiles` (`(num_tiles, 3, S, S)`).
    fn backward(&self, grad_tiles: &[f32]) -> Result<Vec<f32>>;
}

/// One image's normalised tiles with their layout and content key.
#[derive(Debug, Clone)]
pub struct PreparedImage {
    layout: ImageLayout,
    key: ImageKey,
    frame: bool,
    pixels: Arc<[f32]>,
    /// Set for float images: how to map tile gradients back to the image.
    backward: Option<Arc<dyn TileBackward>>,
}

impl PreparedImage {
    /// Decodes `input` and tiles it with `tile` (a family's tiling: dynamic for a still image,
    /// one tile when `frame`, a video frame). `preprocessing` encodes every setting `tile`
    /// depends on (it is part of the content key). An already prepared input is returned as it
    /// is when it was prepared as the same kind (image or frame).
    pub fn prepare(
        input: &ImageInput,
        frame: bool,
        limits: &DecodeLimits,
        preprocessing: &[u8],
        tile: impl FnOnce(&RgbImage) -> Result<TiledImage>,
    ) -> Result<Arc<Self>> {
        if let ImageInput::Prepared(p) = input {
            if p.frame != frame {
                return Err(crate::Error::InvalidInput(format!(
                    "an image prepared as a {} is used as a {}",
                    kind(p.frame),
                    kind(frame)
                )));
            }
            return Ok(p.clone());
        }
        let img = decode(input, limits)?;
        let key = ImageKey::of(&img, frame, preprocessing);
        let tiled = tile(&img)?;
        Ok(Arc::new(PreparedImage {
            layout: ImageLayout {
                size: img.dimensions(),
                grid: tiled.grid,
                thumbnail: tiled.thumbnail,
                num_tiles: tiled.num_tiles,
            },
            key,
            frame,
            pixels: tiled.pixels.into(),
            backward: None,
        }))
    }

    /// Tiles of a float image made by a family's float tiling, with the backward of that
    /// tiling; keyed by the float values and `preprocessing`.
    pub fn from_float(
        img: &FloatImage,
        frame: bool,
        preprocessing: &[u8],
        tiled: TiledImage,
        backward: Arc<dyn TileBackward>,
    ) -> Self {
        PreparedImage {
            layout: ImageLayout {
                size: (img.width(), img.height()),
                grid: tiled.grid,
                thumbnail: tiled.thumbnail,
                num_tiles: tiled.num_tiles,
            },
            key: ImageKey::of_float(img, frame, preprocessing),
            frame,
            pixels: tiled.pixels.into(),
            backward: Some(backward),
        }
    }

    /// Wraps tiles supplied directly (e.g. a reference implementation's), keyed by their
    /// values.
    pub(crate) fn from_pixels(layout: ImageLayout, frame: bool, pixels: Vec<f32>) -> Self {
        PreparedImage {
            key: ImageKey::of_pixels(&pixels),
            layout,
            frame,
            pixels: pixels.into(),
            backward: None,
        }
    }

    /// The backward of the tiling, for an image prepared from floats.
    pub fn tile_backward(&self) -> Option<&Arc<dyn TileBackward>> {
        self.backward.as_ref()
    }

    /// How the image was tiled.
    pub fn layout(&self) -> &ImageLayout {
        &self.layout
    }

    /// Whether it was tiled as a video frame (one tile) rather than dynamically.
    pub fn is_frame(&self) -> bool {
        self.frame
    }

    /// The content key (decoded pixels + tiling settings).
    pub fn key(&self) -> ImageKey {
        self.key
    }

    /// The normalised tiles, `(num_tiles, 3, S, S)` row-major.
    pub fn pixels(&self) -> &[f32] {
        &self.pixels
    }

    /// Bytes held by the tiles.
    pub fn bytes(&self) -> usize {
        std::mem::size_of_val(&*self.pixels)
    }
}

/// Two prepared images are equal when their content keys are (the key hashes the pixels and
/// every setting that made the tiles).
impl PartialEq for PreparedImage {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key && self.frame == other.frame
    }
}

impl Eq for PreparedImage {}

fn kind(frame: bool) -> &'static str {
    if frame {
        "video frame"
    } else {
        "still image"
    }
}
