//! Float images and the float resize: the differentiable half of preprocessing.
//!
//! A caller that wants the gradient of the reward with respect to its pixels sends them as
//! floats (what a VAE decoder gives). They are resized with the same Pillow bicubic weights
//! as 8-bit images ([`super::resize_bicubic`]), kept in float: no fixed-point rounding and no
//! clipping, so the resize is linear, `out[c] = Ry · x[c] · Rxᵀ`, and its backward is the
//! transpose, `dx[c] = Ryᵀ · dout[c] · Rx`. On an image with exact 8-bit values the float path
//! differs from the 8-bit one only by Pillow's rounding of each pass.

use crate::error::{Error, Result};

/// An RGB image as floats in `[0, 1]` (nominally; values outside are kept), `(H, W, 3)`
/// row-major: R, G, B for each pixel, rows top to bottom.
#[derive(Debug, Clone, PartialEq)]
pub struct FloatImage {
    width: u32,
    height: u32,
    data: Vec<f32>,
}

impl FloatImage {
    /// Wraps `data` (`height * width * 3` values, `(H, W, 3)`); refuses empty images, a wrong
    /// length and non-finite values.
    pub fn new(width: u32, height: u32, data: Vec<f32>) -> Result<Self> {
        if width == 0 || height == 0 {
            return Err(Error::InvalidImage(format!(
                "image has zero size ({width}x{height})"
            )));
        }
        let expected = (width as usize)
            .checked_mul(height as usize)
            .and_then(|n| n.checked_mul(3));
        if expected != Some(data.len()) {
            return Err(Error::InvalidInput(format!(
                "a {width}x{height} RGB float image needs {} values, got {}",
                expected.map_or_else(|| "too many".to_string(), |n| n.to_string()),
                data.len()
            )));
        }
        if let Some(i) = data.iter().position(|v| !v.is_finite()) {
            return Err(Error::InvalidInput(format!(
                "pixel value {i} is not finite ({})",
                data[i]
            )));
        }
        Ok(FloatImage {
            width,
            height,
            data,
        })
    }

    /// The exact float values of an 8-bit image (`v / 255`).
    pub fn from_rgb8(img: &image::RgbImage) -> Self {
        FloatImage {
            width: img.width(),
            height: img.height(),
            data: img.as_raw().iter().map(|&v| f32::from(v) / 255.0).collect(),
        }
    }

    /// Width in pixels.
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Height in pixels.
    pub fn height(&self) -> u32 {
        self.height
    }

    /// `(H, W, 3)` values.
    pub fn data(&self) -> &[f32] {
        &self.data
    }
}

/// How a caller's float pixels are laid out on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FloatFormat {
    /// Planar `(3, H, W)` (a torch tensor) rather than interleaved `(H, W, 3)`.
    pub planar: bool,
    /// bfloat16 elements rather than f32.
    pub bf16: bool,
    /// Values in `[-1, 1]` (mapped to `[0, 1]` as `(x + 1) / 2`) rather than `[0, 1]`.
    pub signed: bool,
}

impl FloatFormat {
    /// Bytes per element.
    pub fn element_bytes(&self) -> usize {
        if self.bf16 {
            2
        } else {
            4
        }
    }

    /// Reads `width x height` little-endian pixels in this format into a [`FloatImage`].
    pub fn decode(&self, width: u32, height: u32, bytes: &[u8]) -> Result<FloatImage> {
        let n = (width as usize)
            .checked_mul(height as usize)
            .and_then(|n| n.checked_mul(3))
            .ok_or_else(|| Error::InvalidInput(format!("{width}x{height} is too large")))?;
        if bytes.len() != n.saturating_mul(self.element_bytes()) {
            return Err(Error::InvalidInput(format!(
                "a {width}x{height} float image of {}-byte elements needs {} bytes, got {}",
                self.element_bytes(),
                n.saturating_mul(self.element_bytes()),
                bytes.len()
            )));
        }
        let values: Vec<f32> = if self.bf16 {
            bytes
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect()
        } else {
            bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect()
        };
        let unit = |v: f32| if self.signed { (v + 1.0) * 0.5 } else { v };
        let plane = n / 3;
        let data = if self.planar {
            (0..plane)
                .flat_map(|i| (0..3).map(move |c| c * plane + i))
                .map(|k| unit(values[k]))
                .collect()
        } else {
            values.into_iter().map(unit).collect()
        };
        FloatImage::new(width, height, data)
    }

    /// The gradient with respect to the values a caller sent in this format, from the gradient
    /// `(H, W, 3)` with respect to the `[0, 1]` image: relaid out, scaled by `1/2` for `[-1, 1]`
    /// inputs, and encoded as this format's dtype (or f32 when `f32_out`).
    pub fn encode_gradient(&self, grad: &[f32], f32_out: bool) -> Vec<u8> {
        let scale = if self.signed { 0.5 } else { 1.0 };
        let plane = grad.len() / 3;
        let ordered: Vec<f32> = if self.planar {
            (0..3)
                .flat_map(|c| (0..plane).map(move |i| i * 3 + c))
                .map(|k| grad[k] * scale)
                .collect()
        } else {
            grad.iter().map(|g| g * scale).collect()
        };
        if self.bf16 && !f32_out {
            ordered
                .iter()
                .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
                .collect()
        } else {
            ordered.iter().flat_map(|v| v.to_le_bytes()).collect()
        }
    }
}

/// Float images are compared by value; their values are finite (checked at construction), so
/// equality is reflexive.
impl Eq for FloatImage {}

/// One axis of the float resize: for each output index, a window of input indices and their
/// weights (Pillow's bicubic taps, normalised to sum 1).
#[derive(Debug, Clone)]
struct Axis {
    in_size: usize,
    out_size: usize,
    ksize: usize,
    bounds: Vec<(usize, usize)>,
    weights: Vec<f32>,
}

impl Axis {
    fn bicubic(in_size: u32, out_size: u32) -> Self {
        let (ksize, bounds, weights) = if in_size == out_size {
            // Pillow skips an unchanged axis: the identity.
            (
                1,
                (0..in_size as usize).map(|i| (i, 1)).collect(),
                vec![1.0; in_size as usize],
            )
        } else {
            let (k, b, w) = super::resample::bicubic_weights(in_size, out_size);
            (k, b, w.into_iter().map(|w| w as f32).collect())
        };
        Axis {
            in_size: in_size as usize,
            out_size: out_size as usize,
            ksize,
            bounds,
            weights,
        }
    }

    /// `(start, weights)` of output index `o`.
    fn taps(&self, o: usize) -> (usize, &[f32]) {
        let (start, len) = self.bounds[o];
        (start, &self.weights[o * self.ksize..][..len])
    }
}

/// A float resize of a `W x H` image to `out_w x out_h` with Pillow's bicubic weights.
#[derive(Debug, Clone)]
pub struct FloatResize {
    x: Axis,
    y: Axis,
}

impl FloatResize {
    /// The resize from `(in_w, in_h)` to `(out_w, out_h)`; all sizes nonzero.
    pub fn bicubic(input: (u32, u32), output: (u32, u32)) -> Result<Self> {
        if input.0 == 0 || input.1 == 0 || output.0 == 0 || output.1 == 0 {
            return Err(Error::InvalidInput(format!(
                "cannot resize {}x{} to {}x{}",
                input.0, input.1, output.0, output.1
            )));
        }
        // Float taps weigh as much as the 8-bit ones: the same budget.
        super::resample::check_table_budget(input, output)?;
        Ok(FloatResize {
            x: Axis::bicubic(input.0, output.0),
            y: Axis::bicubic(input.1, output.1),
        })
    }

    /// Output size `(width, height)`.
    pub fn output_size(&self) -> (u32, u32) {
        (self.x.out_size as u32, self.y.out_size as u32)
    }

    /// `Ry · x · Rxᵀ` per channel, `(out_h, out_w, 3)`.
    pub fn forward(&self, img: &FloatImage) -> Result<Vec<f32>> {
        self.check(img.width as usize, img.height as usize)?;
        let (w, ow, oh) = (self.x.in_size, self.x.out_size, self.y.out_size);
        // Horizontal pass on every input row, then vertical.
        let mut rows = vec![0f32; self.y.in_size * ow * 3];
        for (src, dst) in img
            .data
            .chunks_exact(w * 3)
            .zip(rows.chunks_exact_mut(ow * 3))
        {
            for o in 0..ow {
                let (start, taps) = self.x.taps(o);
                let mut acc = [0f32; 3];
                for (k, &t) in taps.iter().enumerate() {
                    let p = &src[(start + k) * 3..][..3];
                    for c in 0..3 {
                        acc[c] += t * p[c];
                    }
                }
                dst[o * 3..][..3].copy_from_slice(&acc);
            }
        }
        let mut out = vec![0f32; oh * ow * 3];
        for (o, dst) in out.chunks_exact_mut(ow * 3).enumerate() {
            let (start, taps) = self.y.taps(o);
            for (k, &t) in taps.iter().enumerate() {
                let src = &rows[(start + k) * ow * 3..][..ow * 3];
                for (d, &s) in dst.iter_mut().zip(src) {
                    *d += t * s;
                }
            }
        }
        Ok(out)
    }

    /// The backward of [`Self::forward`]: `Ryᵀ · g · Rx` per channel for `grad`
    /// `(out_h, out_w, 3)`, added into `into` (`(in_h, in_w, 3)`).
    pub fn backward_into(&self, grad: &[f32], into: &mut [f32]) -> Result<()> {
        let (w, h, ow, oh) = (
            self.x.in_size,
            self.y.in_size,
            self.x.out_size,
            self.y.out_size,
        );
        if grad.len() != oh * ow * 3 || into.len() != h * w * 3 {
            return Err(Error::InvalidInput(format!(
                "resize backward: gradient of {} values for {ow}x{oh}, input of {} for {w}x{h}",
                grad.len(),
                into.len()
            )));
        }
        // Transpose of the vertical pass: (h, ow, 3).
        let mut rows = vec![0f32; h * ow * 3];
        for (o, g) in grad.chunks_exact(ow * 3).enumerate() {
            let (start, taps) = self.y.taps(o);
            for (k, &t) in taps.iter().enumerate() {
                let dst = &mut rows[(start + k) * ow * 3..][..ow * 3];
                for (d, &s) in dst.iter_mut().zip(g) {
                    *d += t * s;
                }
            }
        }
        // Transpose of the horizontal pass.
        for (g, dst) in rows.chunks_exact(ow * 3).zip(into.chunks_exact_mut(w * 3)) {
            for o in 0..ow {
                let (start, taps) = self.x.taps(o);
                let gp = &g[o * 3..][..3];
                for (k, &t) in taps.iter().enumerate() {
                    let d = &mut dst[(start + k) * 3..][..3];
                    for c in 0..3 {
                        d[c] += t * gp[c];
                    }
                }
            }
        }
        Ok(())
    }

    fn check(&self, width: usize, height: usize) -> Result<()> {
        if (width, height) != (self.x.in_size, self.y.in_size) {
            return Err(Error::InvalidInput(format!(
                "resize planned for {}x{} applied to {width}x{height}",
                self.x.in_size, self.y.in_size
            )));
        }
        Ok(())
    }
}

/// A seeded stream of values in [-0.5, 0.5) for tests (a 64-bit LCG's high bits).
#[cfg(test)]
pub(crate) fn noise(seed: u64) -> impl FnMut() -> f32 {
    let mut state = seed;
    move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 40) as f32 / (1u64 << 24) as f32) - 0.5
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sharp-edged content kept within [40, 215], so that bicubic overshoot never reaches
    /// Pillow's clipping (where the float path, which does not clip, must differ).
    fn pattern(w: u32, h: u32) -> image::RgbImage {
        let level = |v: u32| (40 + v % 176) as u8;
        image::RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([
                level(x * 37 + y * 11),
                level(x * x + 3 * y),
                level((x ^ y) * 29),
            ])
        })
    }

    #[test]
    fn the_float_resize_is_pillows_before_rounding() {
        // Same weights as the bit-exact 8-bit port: rounding the float result lands within one
        // level of it (Pillow rounds after each of its two passes).
        for (w, h, ow, oh) in [
            (37, 23, 64, 48),
            (100, 60, 48, 96),
            (9, 9, 7, 2),
            (64, 64, 64, 64),
        ] {
            let img = pattern(w, h);
            let eight = crate::image::resize_bicubic(&img, ow, oh).unwrap();
            let float = FloatResize::bicubic((w, h), (ow, oh))
                .unwrap()
                .forward(&FloatImage::from_rgb8(&img))
                .unwrap();
            let worst = float
                .iter()
                .zip(eight.as_raw())
                .map(|(&f, &e)| ((f * 255.0).round().clamp(0.0, 255.0) - f32::from(e)).abs())
                .fold(0f32, f32::max);
            assert!(worst <= 1.0, "{w}x{h} -> {ow}x{oh}: {worst} levels");
        }
    }

    #[test]
    fn the_backward_is_the_transpose() {
        // <R x, g> == <x, R^T g> for random x and g.
        let mut next = noise(7);
        for (w, h, ow, oh) in [(37, 23, 64, 48), (100, 60, 48, 96), (5, 300, 5, 17)] {
            let x: Vec<f32> = (0..w * h * 3).map(|_| next()).collect();
            let g: Vec<f32> = (0..ow * oh * 3).map(|_| next()).collect();
            let resize = FloatResize::bicubic((w, h), (ow, oh)).unwrap();
            let rx = resize
                .forward(&FloatImage::new(w, h, x.clone()).unwrap())
                .unwrap();
            let mut rtg = vec![0f32; x.len()];
            resize.backward_into(&g, &mut rtg).unwrap();
            let lhs: f64 = rx.iter().zip(&g).map(|(a, b)| f64::from(a * b)).sum();
            let rhs: f64 = x.iter().zip(&rtg).map(|(a, b)| f64::from(a * b)).sum();
            assert!(
                (lhs - rhs).abs() <= 1e-4 * lhs.abs().max(1.0),
                "{lhs} vs {rhs}"
            );
        }
    }

    #[test]
    fn wire_formats_round_trip_and_gradients_follow_the_input() {
        // A 2x1 image: pixel 0 = (0.25, 0.5, 1.0), pixel 1 = (0, 0.75, 0.5).
        let hwc = [0.25f32, 0.5, 1.0, 0.0, 0.75, 0.5];
        let chw = [0.25f32, 0.0, 0.5, 0.75, 1.0, 0.5];
        let bytes = |v: &[f32]| -> Vec<u8> { v.iter().flat_map(|x| x.to_le_bytes()).collect() };
        let f = |planar, bf16, signed| FloatFormat {
            planar,
            bf16,
            signed,
        };
        let a = f(false, false, false).decode(2, 1, &bytes(&hwc)).unwrap();
        let b = f(true, false, false).decode(2, 1, &bytes(&chw)).unwrap();
        let signed: Vec<f32> = chw.iter().map(|v| 2.0 * v - 1.0).collect();
        let c = f(true, false, true).decode(2, 1, &bytes(&signed)).unwrap();
        let bf: Vec<u8> = hwc
            .iter()
            .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
            .collect();
        let d = f(false, true, false).decode(2, 1, &bf).unwrap();
        assert_eq!(a.data(), &hwc);
        assert_eq!(
            (b.data(), c.data(), d.data()),
            (&hwc[..], &hwc[..], &hwc[..])
        );
        // The gradient comes back in the caller's layout, scaled for [-1, 1].
        let g = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0];
        let back = f(true, false, true).encode_gradient(&g, false);
        let got: Vec<f32> = back
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        assert_eq!(got, vec![0.5, 2.0, 1.0, 2.5, 1.5, 3.0]);
        assert_eq!(f(false, true, false).encode_gradient(&g, false).len(), 12);
        assert_eq!(f(false, true, false).encode_gradient(&g, true).len(), 24);
        assert!(f(false, false, false)
            .decode(2, 1, &bytes(&hwc[..5]))
            .is_err());
    }

    #[test]
    fn bad_float_images_are_refused() {
        assert!(FloatImage::new(0, 4, vec![]).is_err());
        assert!(FloatImage::new(2, 2, vec![0.5; 11]).is_err());
        let mut nan = vec![0.5; 12];
        nan[5] = f32::NAN;
        let err = FloatImage::new(2, 2, nan).unwrap_err().to_string();
        assert!(err.contains("not finite"), "{err}");
    }
}
