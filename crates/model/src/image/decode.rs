//! Decoding untrusted image bytes into 8-bit RGB the way Pillow would.

use std::io::Cursor;

use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageError, ImageFormat, ImageReader, Limits, RgbImage};

use super::{DecodeLimits, ImageInput};
use crate::{Error, Result};

/// PNG file signature.
const PNG_SIGNATURE: &[u8; 8] = b"\x89PNG\r\n\x1a\n";

/// Headroom on top of the decoded buffer for the decoders' own allocations (row buffers,
/// metadata chunks, zune-jpeg's component planes...).
const ALLOC_SLACK: u64 = 256 * 1024 * 1024;

/// Decode an image into 8-bit RGB, refusing oversized images before decoding their pixels.
///
/// The rules, chosen to reproduce
/// `ImageOps.exif_transpose(Image.open(f))` followed by
/// `Image.alpha_composite(white, im.convert("RGBA")).convert("RGB")` in Pillow 13
/// (or plain `convert("RGB")` for images without alpha):
///
/// * **Size guard.** The dimensions are read from the header first (for PNG straight from the
///   `IHDR` chunk, before any decoder is built); `width * height > limits.max_pixels` fails
///   with [`Error::ImageTooLarge`]. The `image` crate's own [`Limits`] (maximum width, height
///   and allocation) are set as a second guard.
/// * **Errors.** Empty, unrecognised, corrupt or truncated data and zero-size images fail with
///   [`Error::InvalidImage`], naming the format when it was recognised. A JPEG must reach its
///   `EOI` marker and a PNG's compressed text / ICC chunks must stay within Pillow's bounds
///   ([`super::container`]), both checked before decoding.
/// * **Orientation.** The EXIF orientation (JPEG, WebP, PNG `eXIf`) is applied; unreadable
///   EXIF is treated as "no transform", like Pillow.
/// * **Alpha** (RGBA, LA, WebP alpha, and palette PNGs with `tRNS`) is composited on opaque
///   white. Pillow's `alpha_composite` and `paste(mask=alpha)` both reduce, against white, to
///   `out = (c*a + 255*(255-a) + 127) / 255` (integer division, i.e.
///   `round(c*a/255 + 255*(1-a/255))`, no ties possible; checked against Pillow for all
///   65,536 `(c, a)` pairs).
/// * **Colour-key transparency** (`tRNS` on a gray or RGB PNG) is ignored, as Pillow's
///   `convert("RGB")` ignores `info["transparency"]`: the keyed pixels keep their colour.
/// * **Grayscale** is replicated to R = G = B.
/// * **16-bit PNGs** follow Pillow: RGB(A)16 and LA16 keep the high byte of each sample
///   (`v >> 8`, truncation, not rounding); 16-bit grayscale opens as Pillow mode `I;16`, whose
///   conversion to RGB *clamps* (`min(v, 255)`), so most such images come out near white. That
///   quirk is reproduced on purpose, for parity.
/// * **JPEG** is decoded by zune-jpeg, not libjpeg-turbo: the IDCT and chroma upsampling
///   differ, so pixels can differ from Pillow's by a few levels.
pub fn decode(input: &ImageInput, limits: &DecodeLimits) -> Result<RgbImage> {
    match input {
        ImageInput::Encoded(bytes) => decode_encoded(bytes, limits),
        ImageInput::Rgb8 {
            width,
            height,
            data,
        } => decode_raw(*width, *height, data, limits),
        ImageInput::Prepared(_) => Err(Error::InvalidInput(
            "this image was already decoded and tiled".into(),
        )),
        ImageInput::Float(_) => Err(Error::InvalidInput(
            "a float image has no 8-bit decoding".into(),
        )),
    }
}

/// Validate raw RGB8 pixels and wrap them in an [`RgbImage`].
fn decode_raw(width: u32, height: u32, data: &[u8], limits: &DecodeLimits) -> Result<RgbImage> {
    check_dimensions(width, height, limits)?;
    let expected = u64::from(width) * u64::from(height) * 3;
    if data.len() as u64 != expected {
        return Err(Error::InvalidImage(format!(
            "raw RGB8 image of {width}x{height} needs {expected} bytes, got {}",
            data.len()
        )));
    }
    RgbImage::from_raw(width, height, data.to_vec()).ok_or_else(|| {
        Error::InvalidImage(format!("raw RGB8 buffer does not fit {width}x{height}"))
    })
}

/// Refuse zero-size images and images over the pixel limit.
pub(crate) fn check_dimensions(width: u32, height: u32, limits: &DecodeLimits) -> Result<()> {
    if width == 0 || height == 0 {
        return Err(Error::InvalidImage(format!(
            "image has zero size ({width}x{height})"
        )));
    }
    let pixels = u64::from(width) * u64::from(height);
    if pixels > limits.max_pixels {
        return Err(Error::ImageTooLarge {
            width: u64::from(width),
            height: u64::from(height),
            pixels,
            limit: limits.max_pixels,
        });
    }
    Ok(())
}

/// A human name for the formats we decode.
fn format_name(format: Option<ImageFormat>) -> &'static str {
    match format {
        Some(ImageFormat::Png) => "PNG",
        Some(ImageFormat::Jpeg) => "JPEG",
        Some(ImageFormat::WebP) => "WebP",
        Some(_) => "unsupported format",
        None => "unknown format",
    }
}

/// Map an `image` error to [`Error::InvalidImage`] with context.
fn invalid(format: Option<ImageFormat>, what: &str, err: &ImageError) -> Error {
    let name = format_name(format);
    match err {
        ImageError::Unsupported(_) => Error::InvalidImage(format!("{name}: unsupported: {err}")),
        _ => Error::InvalidImage(format!("{name}: {what}: {err}")),
    }
}

/// Width, height and color type from a PNG `IHDR`, if `bytes` starts like a PNG. Needs only
/// 26 bytes, so a bare header claiming a huge image is refused without building a decoder.
fn png_header(bytes: &[u8]) -> Option<(u32, u32, u8)> {
    let header: &[u8; 26] = bytes.get(..26)?.try_into().ok()?;
    if &header[..8] != PNG_SIGNATURE || &header[12..16] != b"IHDR" {
        return None;
    }
    let width = u32::from_be_bytes([header[16], header[17], header[18], header[19]]);
    let height = u32::from_be_bytes([header[20], header[21], header[22], header[23]]);
    Some((width, height, header[25]))
}

/// The `image` crate's own limits for an image within `limits`.
fn image_limits(max_pixels: u64) -> Limits {
    let side = u32::try_from(max_pixels).unwrap_or(u32::MAX);
    let mut l = Limits::default();
    l.max_image_width = Some(side);
    l.max_image_height = Some(side);
    // 8 bytes per pixel: the widest layout our decoders produce (RGBA16).
    l.max_alloc = Some(max_pixels.saturating_mul(8).saturating_add(ALLOC_SLACK));
    l
}

/// Decode PNG/JPEG/WebP bytes.
fn decode_encoded(bytes: &[u8], limits: &DecodeLimits) -> Result<RgbImage> {
    if bytes.is_empty() {
        return Err(Error::InvalidImage("empty image data".into()));
    }
    let png = png_header(bytes);
    if let Some((w, h, _)) = png {
        check_dimensions(w, h, limits)?;
        super::container::check_png_chunks(bytes)?;
    }
    if let Some((w, h)) = super::container::webp_header(bytes) {
        check_dimensions(w, h, limits)?;
    }
    // Gray (0) and RGB (2) PNGs have no alpha channel; any alpha the decoder reports comes from
    // a tRNS colour key, which Pillow keeps in `info["transparency"]` and `convert("RGB")`
    // ignores (the reference only composites RGBA/LA/PA and palette-with-transparency).
    let color_key_only = matches!(png, Some((_, _, 0 | 2)));
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| Error::InvalidImage(format!("cannot read image data: {e}")))?;
    let format = reader.format();
    match format {
        Some(ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::WebP) => {}
        Some(other) => {
            return Err(Error::InvalidImage(format!(
                "unsupported image format {other:?} (expected PNG, JPEG or WebP)"
            )))
        }
        None => {
            return Err(Error::InvalidImage(
                "unrecognised image data (expected PNG, JPEG or WebP)".into(),
            ))
        }
    }
    if format == Some(ImageFormat::Jpeg) {
        super::container::check_jpeg_complete(bytes)?;
    }
    // Header pass: only the allocation cap, so that an oversized image is reported by us with
    // its dimensions rather than as an anonymous `image` limit error.
    let mut header_limits = Limits::default();
    header_limits.max_alloc = image_limits(limits.max_pixels).max_alloc;
    reader.limits(header_limits);
    let mut decoder = reader
        .into_decoder()
        .map_err(|e| invalid(format, "cannot read header", &e))?;
    let (width, height) = decoder.dimensions();
    check_dimensions(width, height, limits)?;

    // Second guard: the `image` crate's strict limits for the rest of the decode.
    let mut strict = image_limits(limits.max_pixels);
    let too_large = || Error::ImageTooLarge {
        width: u64::from(width),
        height: u64::from(height),
        pixels: u64::from(width) * u64::from(height),
        limit: limits.max_pixels,
    };
    strict
        .reserve(decoder.total_bytes())
        .map_err(|_| too_large())?;
    decoder.set_limits(strict).map_err(|e| match e {
        ImageError::Limits(_) => too_large(),
        other => invalid(format, "cannot apply limits", &other),
    })?;

    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let mut img = DynamicImage::from_decoder(decoder).map_err(|e| match e {
        ImageError::Limits(_) => too_large(),
        other => invalid(format, "corrupt or truncated image data", &other),
    })?;
    img.apply_orientation(orientation);
    if color_key_only {
        img = drop_alpha(img);
    }
    Ok(to_rgb8_like_pil(img))
}

/// Composite one 8-bit channel value with alpha `a` on white (Pillow's `alpha_composite`).
#[inline]
pub(crate) fn over_white(c: u8, a: u8) -> u8 {
    let (c, a) = (u32::from(c), u32::from(a));
    // <= (255*255 + 127) / 255 = 255, so the cast is lossless.
    ((c * a + 255 * (255 - a) + 127) / 255) as u8
}

/// High byte of a 16-bit sample (Pillow's `;16B` unpackers).
#[inline]
fn hi(v: u16) -> u8 {
    (v >> 8) as u8
}

/// Build an RGB image by mapping each `n`-sample source pixel to RGB.
fn build<T: Copy>(w: u32, h: u32, src: &[T], n: usize, f: impl Fn(&[T]) -> [u8; 3]) -> RgbImage {
    let out: Vec<u8> = src.chunks_exact(n).flat_map(f).collect();
    RgbImage::from_raw(w, h, out).unwrap_or_else(|| RgbImage::new(w, h))
}

/// Drop an alpha channel without compositing (exact channel copy).
fn drop_alpha(img: DynamicImage) -> DynamicImage {
    match img {
        DynamicImage::ImageRgba8(_) => DynamicImage::ImageRgb8(img.to_rgb8()),
        DynamicImage::ImageLumaA8(_) => DynamicImage::ImageLuma8(img.to_luma8()),
        DynamicImage::ImageRgba16(_) => DynamicImage::ImageRgb16(img.to_rgb16()),
        DynamicImage::ImageLumaA16(_) => DynamicImage::ImageLuma16(img.to_luma16()),
        other => other,
    }
}

/// Convert any decoded image to RGB8 with Pillow's rules (see [`decode`]).
pub(crate) fn to_rgb8_like_pil(img: DynamicImage) -> RgbImage {
    let (w, h) = (img.width(), img.height());
    match img {
        DynamicImage::ImageRgb8(rgb) => rgb,
        DynamicImage::ImageLuma8(l) => build(w, h, l.as_raw(), 1, |p| [p[0]; 3]),
        DynamicImage::ImageLumaA8(la) => {
            build(w, h, la.as_raw(), 2, |p| [over_white(p[0], p[1]); 3])
        }
        DynamicImage::ImageRgba8(rgba) => flatten_rgba8(w, h, rgba.as_raw()),
        // Pillow mode I;16 -> RGB clamps instead of scaling.
        DynamicImage::ImageLuma16(l) => build(w, h, l.as_raw(), 1, |p| [p[0].min(255) as u8; 3]),
        // Pillow opens LA16 PNGs as RGBA with the high bytes.
        DynamicImage::ImageLumaA16(la) => build(w, h, la.as_raw(), 2, |p| {
            [over_white(hi(p[0]), hi(p[1])); 3]
        }),
        DynamicImage::ImageRgb16(rgb) => {
            build(w, h, rgb.as_raw(), 3, |p| [hi(p[0]), hi(p[1]), hi(p[2])])
        }
        DynamicImage::ImageRgba16(rgba) => build(w, h, rgba.as_raw(), 4, |p| {
            let a = hi(p[3]);
            [
                over_white(hi(p[0]), a),
                over_white(hi(p[1]), a),
                over_white(hi(p[2]), a),
            ]
        }),
        // Float images cannot come out of PNG/JPEG/WebP; convert generically.
        other if other.color().has_alpha() => flatten_rgba8(w, h, other.to_rgba8().as_raw()),
        other => other.to_rgb8(),
    }
}

/// Flatten interleaved RGBA8 on white.
fn flatten_rgba8(w: u32, h: u32, s: &[u8]) -> RgbImage {
    build(w, h, s, 4, |p| {
        [
            over_white(p[0], p[3]),
            over_white(p[1], p[3]),
            over_white(p[2], p[3]),
        ]
    })
}

#[cfg(test)]
#[path = "decode_tests.rs"]
mod tests;
