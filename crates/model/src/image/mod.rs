//! Image input shared by every family: bytes in, decoded and tiled images out.
//!
//! 1. [`decode`]: an [`ImageInput`] (PNG/JPEG/WebP bytes, or raw RGB8) becomes an
//!    [`RgbImage`]. The declared dimensions are checked against [`DecodeLimits`] *before* any
//!    pixel buffer is allocated, EXIF orientation is applied, alpha is flattened on white and
//!    grayscale is replicated to RGB, all the way Pillow does it (see [`decode`] for the exact
//!    rules).
//! 2. [`PreparedImage::prepare`]: a family's tiling turns the decoded image into normalised
//!    `(num_tiles, 3, S, S)` tiles with a content key ([`ImageKey`]); InternVL's
//!    (`dynamic_preprocess` + `build_transform`) is
//!    [`crate::family::internvl::tiling`]. Resizing uses [`resize_bicubic`], a Pillow-identical
//!    bicubic filter. Float images ([`FloatImage`], for gradients) are resized with the same
//!    weights, unrounded ([`FloatResize`]).
//!
//! Parity with the Python reference (Pillow 13 + torchvision) was measured, not assumed:
//! the bicubic resize, alpha flattening, grayscale/16-bit conversion and grid choice are
//! bit-exact; JPEG decoding (zune-jpeg vs libjpeg-turbo) is not, see [`decode`].

pub mod container;
mod decode;
mod float;
mod key;
mod prepared;
mod resample;

pub use ::image::RgbImage;
pub(crate) use decode::check_dimensions;
pub use decode::decode;
#[cfg(test)]
pub(crate) use float::noise as float_noise;
pub use float::{FloatFormat, FloatImage, FloatResize};
pub use key::ImageKey;
pub use prepared::{ImageLayout, PreparedImage, TileBackward};
pub(crate) use resample::check_image;
pub use resample::resize_bicubic;
#[cfg(test)]
pub(crate) use resample::table_bytes;

/// One image as the caller sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageInput {
    /// An encoded PNG, JPEG or WebP file; the format is sniffed from the content.
    Encoded(Vec<u8>),
    /// Raw interleaved 8-bit RGB pixels, row-major, `data.len() == width * height * 3`.
    Rgb8 {
        /// Width in pixels (nonzero).
        width: u32,
        /// Height in pixels (nonzero).
        height: u32,
        /// `width * height * 3` bytes: R, G, B for each pixel, rows top to bottom.
        data: Vec<u8>,
    },
    /// RGB floats (`(H, W, 3)`, nominally in `[0, 1]`): the input whose gradient `ScoreGrad`
    /// returns. Tiled with the same grid as an 8-bit image, resized without rounding.
    Float(std::sync::Arc<FloatImage>),
    /// An image this process already decoded and tiled ([`PreparedImage::prepare`]), shared
    /// between items without another decode (what `Rank` sends its pairs).
    Prepared(std::sync::Arc<PreparedImage>),
}

/// Limits applied while decoding untrusted images.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Largest accepted `width * height`; larger images fail with
    /// [`Error::ImageTooLarge`](crate::Error::ImageTooLarge) before their pixels are decoded.
    pub max_pixels: u64,
}

impl DecodeLimits {
    /// The default pixel limit: 40 megapixels (`--max-image-pixels`).
    pub const DEFAULT_MAX_PIXELS: u64 = 40_000_000;
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self {
            max_pixels: Self::DEFAULT_MAX_PIXELS,
        }
    }
}

/// The model-ready tiles of one image.
#[derive(Debug, Clone, PartialEq)]
pub struct TiledImage {
    /// Grid as `(cols, rows)`; the grid tiles are `cols * rows` of the `num_tiles`.
    pub grid: (u32, u32),
    /// True when the last tile is a whole-image thumbnail.
    pub thumbnail: bool,
    /// Number of `S x S` tiles in `pixels` (grid tiles plus the thumbnail, if any).
    pub num_tiles: usize,
    /// Normalised pixels, `(num_tiles, 3, S, S)` row-major (tile, channel, y, x).
    pub pixels: Vec<f32>,
}
