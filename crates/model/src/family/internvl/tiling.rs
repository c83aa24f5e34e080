//! InternVL dynamic tiling (`dynamic_preprocess`) and normalisation (`build_transform`).

use super::pyorder::python_target_ratios;
use image::RgbImage;
use std::sync::Arc;

use crate::image::{
    check_dimensions, check_image, resize_bicubic, DecodeLimits, ImageInput, PreparedImage,
    TiledImage,
};
use crate::{Error, Result};

/// The candidate grids `(cols, rows)` in the order InternVL's Python code tries them:
/// every `(i, j)` with `min_tiles <= i * j <= max_tiles`, sorted by `i * j`, ties in CPython's
/// set iteration order (see the `pyorder` module; it matters only when `min_tiles > 1`).
/// Empty when `min_tiles > max_tiles`.
pub fn target_ratios(cfg: &TilingConfig) -> Vec<(u32, u32)> {
    python_target_ratios(cfg.min_tiles, cfg.max_tiles)
        .into_iter()
        .filter_map(|(i, j)| Some((u32::try_from(i).ok()?, u32::try_from(j).ok()?)))
        .collect()
}

/// The grid `(cols, rows)` InternVL picks for a `width x height` image
/// (`find_closest_aspect_ratio`).
///
/// Walks [`target_ratios`] and keeps the grid whose aspect ratio `cols / rows` is closest to
/// `width / height`; on an exact tie a later grid wins only if the image area exceeds half the
/// grid's pixel area (`w*h > 0.5 * S * S * cols * rows`). All arithmetic is `f64` in Python's
/// operation order, so the float comparisons are identical. Falls back to `(1, 1)` when no
/// grid qualifies (e.g. `min_tiles > max_tiles`), as the Python code does.
pub fn select_grid(width: u32, height: u32, cfg: &TilingConfig) -> (u32, u32) {
    let aspect = f64::from(width) / f64::from(height);
    // Exact below 2^53 pixels, like Python's int-vs-float comparison.
    let area = (u64::from(width) * u64::from(height)) as f64;
    let s = f64::from(cfg.image_size);
    let mut best_diff = f64::INFINITY;
    let mut best = (1, 1);
    for (i, j) in target_ratios(cfg) {
        let diff = (aspect - f64::from(i) / f64::from(j)).abs();
        if diff < best_diff {
            best_diff = diff;
            best = (i, j);
        } else if diff == best_diff && area > 0.5 * s * s * f64::from(i) * f64::from(j) {
            best = (i, j);
        }
    }
    best
}

/// The most tiles one image can produce with `cfg`: the largest grid plus the thumbnail.
pub fn max_tiles_for(cfg: &TilingConfig) -> usize {
    let largest = if cfg.max_tiles >= cfg.min_tiles.max(1) {
        cfg.max_tiles
    } else {
        1 // no grid qualifies: Python falls back to (1, 1)
    };
    largest + usize::from(cfg.use_thumbnail && largest != 1)
}

/// Tile a still image the InternVL way.
///
/// Resizes the whole image to `(S * cols, S * rows)` for the [`select_grid`] grid, cuts it
/// into `S x S` tiles row-major (tile `k` at `x = (k % cols) * S`, `y = (k / cols) * S`), and,
/// if `use_thumbnail` and the grid has more than one tile, appends the whole image resized to
/// `S x S`. Every tile is then normalised (see [`TiledImage::pixels`]).
///
/// Resizing is [`resize_bicubic`], a bit-exact port of Pillow's `Image.resize(size, BICUBIC)`
/// (a resize to the same size is a copy, as in Pillow).
pub fn tile_image(img: &RgbImage, cfg: &TilingConfig) -> Result<TiledImage> {
    check_image(img)?;
    check_config(cfg)?;
    let s = cfg.image_size;
    let (cols, rows) = select_grid(img.width(), img.height(), cfg);
    let too_big = || Error::InvalidInput(format!("tile grid {cols}x{rows} of {s}px is too large"));
    let target_w = s.checked_mul(cols).ok_or_else(too_big)?;
    let target_h = s.checked_mul(rows).ok_or_else(too_big)?;
    let blocks = cols as usize * rows as usize;
    let thumbnail = cfg.use_thumbnail && blocks != 1;
    let num_tiles = blocks + usize::from(thumbnail);

    let resized = resize_bicubic(img, target_w, target_h)?;
    let norm = NormTable::new(cfg);
    let mut pixels = alloc_pixels(num_tiles, s)?;
    for k in 0..blocks {
        let x0 = (k % cols as usize) * s as usize;
        let y0 = (k / cols as usize) * s as usize;
        norm.write_tile(&resized, x0, y0, s as usize, &mut pixels);
    }
    if thumbnail {
        let thumb = resize_bicubic(img, s, s)?;
        norm.write_tile(&thumb, 0, 0, s as usize, &mut pixels);
    }
    Ok(TiledImage {
        grid: (cols, rows),
        thumbnail,
        num_tiles,
        pixels,
    })
}

/// Turn one video frame into exactly one tile: resize to `S x S` (bicubic, as in
/// [`tile_image`]), no grid search, no thumbnail; `grid` is `(1, 1)`.
///
/// This is InternVL's `load_video` path (`dynamic_preprocess(max_num=1)`, whose only grid is
/// `(1, 1)` and which never adds a thumbnail to a single tile).
pub fn frame_tile(img: &RgbImage, cfg: &TilingConfig) -> Result<TiledImage> {
    check_image(img)?;
    check_config(cfg)?;
    let s = cfg.image_size;
    let resized = resize_bicubic(img, s, s)?;
    let mut pixels = alloc_pixels(1, s)?;
    NormTable::new(cfg).write_tile(&resized, 0, 0, s as usize, &mut pixels);
    Ok(TiledImage {
        grid: (1, 1),
        thumbnail: false,
        num_tiles: 1,
        pixels,
    })
}

/// Refuse configurations that cannot produce tiles.
fn check_config(cfg: &TilingConfig) -> Result<()> {
    if cfg.image_size == 0 {
        return Err(Error::InvalidInput("tiling image_size must be > 0".into()));
    }
    Ok(())
}

/// A zeroed `(num_tiles, 3, S, S)` buffer; tiles are appended in order by `write_tile`.
fn alloc_pixels(num_tiles: usize, s: u32) -> Result<Vec<f32>> {
    let len = (s as usize)
        .checked_mul(s as usize)
        .and_then(|n| n.checked_mul(3 * num_tiles))
        .ok_or_else(|| Error::InvalidInput(format!("{num_tiles} tiles of {s}px overflow")))?;
    Ok(Vec::with_capacity(len))
}

/// Per-channel lookup of torchvision's `Normalize(mean, std)(ToTensor()(v))` for every byte.
struct NormTable([[f32; 256]; 3]);

impl NormTable {
    /// `((v as f32) / 255 - mean[c]) / std[c]`, each step rounded to `f32` as torch does.
    fn new(cfg: &TilingConfig) -> Self {
        let mut t = [[0f32; 256]; 3];
        for (c, row) in t.iter_mut().enumerate() {
            for (v, out) in row.iter_mut().enumerate() {
                *out = normalize(v as u8, cfg.mean[c], cfg.std[c]);
            }
        }
        Self(t)
    }

    /// Append the `s x s` tile at `(x0, y0)` of `img` as planar CHW to `out`.
    fn write_tile(&self, img: &RgbImage, x0: usize, y0: usize, s: usize, out: &mut Vec<f32>) {
        let raw = img.as_raw();
        let stride = img.width() as usize * 3;
        for (c, table) in self.0.iter().enumerate() {
            for y in y0..y0 + s {
                let row = &raw[y * stride + x0 * 3..y * stride + (x0 + s) * 3];
                out.extend(row.chunks_exact(3).map(|px| table[px[c] as usize]));
            }
        }
    }
}

/// torchvision `ToTensor` + `Normalize` for one byte, in `f32`.
#[inline]
pub(crate) fn normalize(v: u8, mean: f32, std: f32) -> f32 {
    (f32::from(v) / 255.0 - mean) / std
}

/// InternVL dynamic-resolution settings (`dynamic_preprocess` + `build_transform`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TilingConfig {
    /// Tile side `S` in pixels (InternVL: 448).
    pub image_size: u32,
    /// Fewest tiles a grid may have (`min_num`).
    pub min_tiles: usize,
    /// Most tiles a grid may have (`max_num`), not counting the thumbnail.
    pub max_tiles: usize,
    /// Append a whole-image `S x S` thumbnail when the grid has more than one tile.
    pub use_thumbnail: bool,
    /// Per-channel mean subtracted after scaling to `[0, 1]`.
    pub mean: [f32; 3],
    /// Per-channel standard deviation divided by after subtracting the mean.
    pub std: [f32; 3],
}

impl TilingConfig {
    /// ImageNet mean, as used by InternVL.
    pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
    /// ImageNet standard deviation, as used by InternVL.
    pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];
}

impl Default for TilingConfig {
    /// 448-pixel tiles, 1 to 12 tiles, thumbnail on, ImageNet normalisation.
    fn default() -> Self {
        Self {
            image_size: 448,
            min_tiles: 1,
            max_tiles: 12,
            use_thumbnail: true,
            mean: Self::IMAGENET_MEAN,
            std: Self::IMAGENET_STD,
        }
    }
}

impl TilingConfig {
    /// Every setting that changes the tiles, as bytes: part of each image's content key, so
    /// the feature cache never serves tiles made with other settings.
    pub fn key_bytes(&self) -> Vec<u8> {
        let mut out = vec![self.use_thumbnail as u8];
        out.extend(self.image_size.to_le_bytes());
        for v in [self.min_tiles, self.max_tiles] {
            out.extend((v as u64).to_le_bytes());
        }
        for v in self.mean.iter().chain(&self.std) {
            out.extend(v.to_le_bytes());
        }
        out
    }
}

/// Decodes `input` and tiles it: dynamically as a still image, or as one tile when `frame` (a
/// video frame). An already prepared input is returned as it is.
pub fn prepare_image(
    input: &ImageInput,
    frame: bool,
    tiling: &TilingConfig,
    limits: &DecodeLimits,
) -> Result<Arc<PreparedImage>> {
    if let ImageInput::Float(img) = input {
        check_dimensions(img.width(), img.height(), limits)?;
        let (tiled, plan) = super::float_tiling::tile_float(img, frame, tiling)?;
        return Ok(Arc::new(PreparedImage::from_float(
            img,
            frame,
            &tiling.key_bytes(),
            tiled,
            Arc::new(plan),
        )));
    }
    PreparedImage::prepare(input, frame, limits, &tiling.key_bytes(), |img| {
        if frame {
            frame_tile(img, tiling)
        } else {
            tile_image(img, tiling)
        }
    })
}

#[cfg(test)]
#[path = "tiling_tests.rs"]
mod tests;
