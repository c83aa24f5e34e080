//! InternVL tiling of a float image, and its backward: the differentiable twin of
//! [`super::tiling::tile_image`] / [`super::tiling::frame_tile`].
//!
//! The grid and the thumbnail are chosen exactly as for an 8-bit image; the resizes are
//! [`FloatResize`] (Pillow's bicubic weights without rounding or clipping), and each tile is
//! normalised `(v - mean) / std`. Every step is linear, so [`TilePlan::backward`] maps the
//! gradient of the tiles back to the gradient of the image exactly.

use super::tiling::{select_grid, TilingConfig};
use crate::error::{Error, Result};
use crate::image::{FloatImage, FloatResize, TiledImage};

/// What the backward of one image's tiling needs: its size, grid and resizes.
#[derive(Debug, Clone)]
pub struct TilePlan {
    size: (u32, u32),
    grid: (u32, u32),
    side: usize,
    grid_resize: FloatResize,
    thumbnail: Option<FloatResize>,
    std: [f32; 3],
}

/// Tiles `img` as InternVL does (one `S x S` tile when `frame`), normalised, with the plan of
/// its backward.
pub fn tile_float(
    img: &FloatImage,
    frame: bool,
    cfg: &TilingConfig,
) -> Result<(TiledImage, TilePlan)> {
    if cfg.image_size == 0 {
        return Err(Error::InvalidInput("tiling image_size must be > 0".into()));
    }
    let s = cfg.image_size;
    let size = (img.width(), img.height());
    let grid = if frame {
        (1, 1)
    } else {
        select_grid(size.0, size.1, cfg)
    };
    let too_big = || Error::InvalidInput(format!("tile grid {grid:?} of {s}px is too large"));
    let target = (
        s.checked_mul(grid.0).ok_or_else(too_big)?,
        s.checked_mul(grid.1).ok_or_else(too_big)?,
    );
    let blocks = grid.0 as usize * grid.1 as usize;
    let with_thumbnail = !frame && cfg.use_thumbnail && blocks != 1;
    let plan = TilePlan {
        size,
        grid,
        side: s as usize,
        grid_resize: FloatResize::bicubic(size, target)?,
        thumbnail: if with_thumbnail {
            Some(FloatResize::bicubic(size, (s, s))?)
        } else {
            None
        },
        std: cfg.std,
    };
    let num_tiles = blocks + usize::from(with_thumbnail);
    let side = s as usize;
    let mut pixels = Vec::with_capacity(num_tiles * 3 * side * side);
    let resized = plan.grid_resize.forward(img)?;
    for k in 0..blocks {
        let (x0, y0) = plan.tile_origin(k);
        write_tile(&resized, target.0 as usize, x0, y0, side, cfg, &mut pixels);
    }
    if let Some(thumb) = &plan.thumbnail {
        write_tile(&thumb.forward(img)?, side, 0, 0, side, cfg, &mut pixels);
    }
    Ok((
        TiledImage {
            grid,
            thumbnail: with_thumbnail,
            num_tiles,
            pixels,
        },
        plan,
    ))
}

impl crate::image::TileBackward for TilePlan {
    fn backward(&self, grad_tiles: &[f32]) -> Result<Vec<f32>> {
        TilePlan::backward(self, grad_tiles)
    }
}

impl TilePlan {
    /// Tiles this plan produces.
    pub fn num_tiles(&self) -> usize {
        self.grid.0 as usize * self.grid.1 as usize + usize::from(self.thumbnail.is_some())
    }

    /// The gradient with respect to the image, `(H, W, 3)`, from the gradient with respect to
    /// its normalised tiles, `(num_tiles, 3, S, S)`.
    pub fn backward(&self, grad_tiles: &[f32]) -> Result<Vec<f32>> {
        let side = self.side;
        let per_tile = 3 * side * side;
        if grad_tiles.len() != self.num_tiles() * per_tile {
            return Err(Error::InvalidInput(format!(
                "tile gradient of {} values for {} tiles of {side}px",
                grad_tiles.len(),
                self.num_tiles()
            )));
        }
        let (tw, th) = self.grid_resize.output_size();
        let (tw, th) = (tw as usize, th as usize);
        let blocks = self.grid.0 as usize * self.grid.1 as usize;
        let mut resized = vec![0f32; th * tw * 3];
        for k in 0..blocks {
            let (x0, y0) = self.tile_origin(k);
            self.scatter_tile(
                &grad_tiles[k * per_tile..][..per_tile],
                &mut resized,
                tw,
                x0,
                y0,
            );
        }
        let mut grad = vec![0f32; self.size.1 as usize * self.size.0 as usize * 3];
        self.grid_resize.backward_into(&resized, &mut grad)?;
        if let Some(thumb) = &self.thumbnail {
            let mut g = vec![0f32; side * side * 3];
            self.scatter_tile(&grad_tiles[blocks * per_tile..], &mut g, side, 0, 0);
            thumb.backward_into(&g, &mut grad)?;
        }
        Ok(grad)
    }

    /// Top-left corner of grid tile `k` in the resized image (row-major).
    fn tile_origin(&self, k: usize) -> (usize, usize) {
        let cols = self.grid.0 as usize;
        ((k % cols) * self.side, (k / cols) * self.side)
    }

    /// Adds the gradient of one normalised `(3, S, S)` tile into the `(H, W, 3)` gradient of
    /// the image it was cut from (width `w`) at `(x0, y0)`, through the normalisation.
    fn scatter_tile(&self, tile: &[f32], into: &mut [f32], w: usize, x0: usize, y0: usize) {
        let s = self.side;
        for (c, plane) in tile.chunks_exact(s * s).enumerate() {
            let inv = 1.0 / self.std[c];
            for (y, row) in plane.chunks_exact(s).enumerate() {
                let base = ((y0 + y) * w + x0) * 3 + c;
                for (x, &g) in row.iter().enumerate() {
                    into[base + x * 3] += g * inv;
                }
            }
        }
    }
}

/// Appends the `(3, S, S)` normalised tile at `(x0, y0)` of `src` (`(H, w, 3)`).
fn write_tile(
    src: &[f32],
    w: usize,
    x0: usize,
    y0: usize,
    s: usize,
    cfg: &TilingConfig,
    out: &mut Vec<f32>,
) {
    for c in 0..3 {
        let (mean, std) = (cfg.mean[c], cfg.std[c]);
        for y in 0..s {
            let row = &src[((y0 + y) * w + x0) * 3..][..s * 3];
            out.extend(row.iter().skip(c).step_by(3).map(|&v| (v - mean) / std));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::family::internvl::tiling::tile_image;

    fn cfg(s: u32, max: usize) -> TilingConfig {
        TilingConfig {
            image_size: s,
            max_tiles: max,
            ..TilingConfig::default()
        }
    }

    fn smooth(w: u32, h: u32) -> image::RgbImage {
        image::RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([
                (60 + (x * 131 / w.max(1)) % 120) as u8,
                (50 + (y * 97 / h.max(1)) % 140) as u8,
                (90 + ((x + y) % 17) * 5) as u8,
            ])
        })
    }

    #[test]
    fn float_tiles_match_eight_bit_tiles_up_to_rounding() {
        for (w, h, s, max) in [
            (100, 60, 32, 6),
            (48, 48, 48, 4),
            (30, 220, 28, 6),
            (64, 64, 64, 6),
        ] {
            let img = smooth(w, h);
            let eight = tile_image(&img, &cfg(s, max)).unwrap();
            let (float, plan) =
                tile_float(&FloatImage::from_rgb8(&img), false, &cfg(s, max)).unwrap();
            assert_eq!((float.grid, float.thumbnail), (eight.grid, eight.thumbnail));
            assert_eq!(float.num_tiles, plan.num_tiles());
            // Pillow rounds each of its two passes: the unrounded float result is within 1.5
            // levels of it (half a level from the last rounding, the first pass's half level
            // through the second pass's weights), normalised by std >= 0.224.
            let bound = 1.5 / 255.0 / 0.224;
            let worst = float
                .pixels
                .iter()
                .zip(&eight.pixels)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(worst <= bound, "{w}x{h} S={s}: {worst}");
            if (w, h) == (s, s) {
                assert!(worst <= 1e-6, "no resize: exact ({worst})");
            }
        }
    }

    #[test]
    fn the_tiling_backward_is_the_transpose_of_the_tiling() {
        // Tiling minus its constant (the mean) is linear: <T x, g> == <x, T^T g>.
        let mut next = crate::image::float_noise(11);
        for (w, h, frame) in [(100, 60, false), (41, 97, false), (70, 50, true)] {
            let c = cfg(32, 6);
            let x: Vec<f32> = (0..w * h * 3).map(|_| next()).collect();
            let zero = FloatImage::new(w, h, vec![0.0; x.len()]).unwrap();
            let (offset, _) = tile_float(&zero, frame, &c).unwrap();
            let (tiles, plan) =
                tile_float(&FloatImage::new(w, h, x.clone()).unwrap(), frame, &c).unwrap();
            let g: Vec<f32> = (0..tiles.pixels.len()).map(|_| next()).collect();
            let tg = plan.backward(&g).unwrap();
            let lhs: f64 = tiles
                .pixels
                .iter()
                .zip(&offset.pixels)
                .zip(&g)
                .map(|((t, o), g)| f64::from((t - o) * g))
                .sum();
            let rhs: f64 = x.iter().zip(&tg).map(|(a, b)| f64::from(a * b)).sum();
            assert!(
                (lhs - rhs).abs() <= 1e-4 * lhs.abs().max(1.0),
                "{w}x{h}: {lhs} vs {rhs}"
            );
        }
    }
}
