//! Unit tests for `crate::image`. Expected values marked "Pillow" were produced with
//! Pillow 13 / torch 2.11 (see the module docs for how parity was measured).

use std::time::{Duration, Instant};

use image::{ImageEncoder, RgbImage};

use super::decode::over_white;
use super::tiling;
use super::*;
use crate::Error;

// ---- tiny PNG writer (stored deflate, no compression crate needed) ----

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let start = out.len();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let crc = crc32(&out[start..]);
    out.extend_from_slice(&crc.to_be_bytes());
}

fn zlib_stored(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x78, 0x01];
    let mut blocks = data.chunks(65_535).peekable();
    if blocks.peek().is_none() {
        out.extend_from_slice(&[1, 0, 0, 0xFF, 0xFF]);
    }
    while let Some(block) = blocks.next() {
        out.push(u8::from(blocks.peek().is_none()));
        let len = block.len() as u16;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(block);
    }
    let (mut a, mut b) = (1u32, 0u32);
    for &x in data {
        a = (a + u32::from(x)) % 65_521;
        b = (b + a) % 65_521;
    }
    out.extend_from_slice(&((b << 16) | a).to_be_bytes());
    out
}

fn ihdr(w: u32, h: u32, depth: u8, color: u8) -> Vec<u8> {
    let mut d = Vec::new();
    d.extend_from_slice(&w.to_be_bytes());
    d.extend_from_slice(&h.to_be_bytes());
    d.extend_from_slice(&[depth, color, 0, 0, 0]);
    d
}

/// A PNG from unfiltered rows (`row_bytes` per row; a 0 filter byte is prepended).
fn png(w: u32, h: u32, depth: u8, color: u8, pixels: &[u8], extra: &[(&[u8; 4], &[u8])]) -> Vec<u8> {
    let row_bytes = pixels.len() / h as usize;
    let mut raw = Vec::new();
    for row in pixels.chunks(row_bytes) {
        raw.push(0);
        raw.extend_from_slice(row);
    }
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    chunk(&mut out, b"IHDR", &ihdr(w, h, depth, color));
    for (kind, data) in extra {
        chunk(&mut out, kind, data);
    }
    chunk(&mut out, b"IDAT", &zlib_stored(&raw));
    chunk(&mut out, b"IEND", &[]);
    out
}

fn dec(bytes: Vec<u8>) -> crate::Result<RgbImage> {
    decode(&ImageInput::Encoded(bytes), &DecodeLimits::default())
}

fn assert_invalid(r: crate::Result<RgbImage>) {
    assert!(matches!(r, Err(Error::InvalidImage(_))), "{r:?}");
}

// ---- decode ----

#[test]
fn corrupt_and_empty_bytes_are_invalid() {
    assert_invalid(dec(vec![]));
    assert_invalid(dec(b"definitely not an image".to_vec()));
    assert_invalid(dec(vec![0xFF, 0xD8, 0xFF, 0xE0, 1, 2, 3])); // JPEG magic, then junk
    let mut bad_crc = png(2, 2, 8, 2, &[7; 12], &[]);
    bad_crc[29] ^= 0xFF; // IHDR CRC
    assert_invalid(dec(bad_crc));
}

#[test]
fn truncated_png_is_invalid() {
    let full = png(16, 16, 8, 2, &[9; 16 * 16 * 3], &[]);
    assert!(dec(full.clone()).is_ok());
    for cut in [8, 20, 33, 60, full.len() - 13] {
        assert_invalid(dec(full[..cut].to_vec()));
    }
    let err = dec(full[..60].to_vec()).unwrap_err().to_string();
    assert!(err.contains("PNG"), "{err}");
}

#[test]
fn zero_size_images_are_invalid() {
    let raw = |w, h, n| decode(&ImageInput::Rgb8 { width: w, height: h, data: vec![0; n] }, &DecodeLimits::default());
    assert_invalid(raw(0, 5, 0));
    assert_invalid(raw(5, 0, 0));
    // A PNG header with zero width (Pillow and the png crate both refuse it).
    assert_invalid(dec(png(0, 1, 8, 2, &[0; 3], &[])));
}

#[test]
fn raw_length_must_match() {
    let raw = |n| decode(&ImageInput::Rgb8 { width: 4, height: 3, data: vec![1; n] }, &DecodeLimits::default());
    assert_invalid(raw(35));
    assert_invalid(raw(37));
    assert_eq!(raw(36).unwrap().dimensions(), (4, 3));
}

#[test]
fn huge_png_header_fails_fast() {
    let mut header = b"\x89PNG\r\n\x1a\n".to_vec();
    chunk(&mut header, b"IHDR", &ihdr(100_000, 100_000, 8, 6));
    let mut with_data = header.clone();
    chunk(&mut with_data, b"IDAT", &zlib_stored(&[0; 1000]));
    chunk(&mut with_data, b"IEND", &[]);
    for bytes in [header, with_data] {
        let t = Instant::now();
        match dec(bytes) {
            Err(Error::ImageTooLarge { width, height, pixels, limit }) => {
                assert_eq!((width, height, pixels, limit), (100_000, 100_000, 10_000_000_000, 40_000_000));
            }
            other => panic!("expected ImageTooLarge, got {other:?}"),
        }
        assert!(t.elapsed() < Duration::from_millis(200));
    }
}

#[test]
fn pixel_limit_applies_to_every_input_kind() {
    let limits = DecodeLimits { max_pixels: 99 };
    let raw = ImageInput::Rgb8 { width: 10, height: 10, data: vec![0; 300] };
    assert!(matches!(decode(&raw, &limits), Err(Error::ImageTooLarge { pixels: 100, .. })));
    // JPEG goes through the decoder-header check (no PNG sniffing).
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new(&mut jpeg)
        .write_image(&[128; 300], 10, 10, image::ExtendedColorType::Rgb8)
        .unwrap();
    let r = decode(&ImageInput::Encoded(jpeg.clone()), &limits);
    assert!(matches!(r, Err(Error::ImageTooLarge { width: 10, height: 10, .. })), "{r:?}");
    let img = decode(&ImageInput::Encoded(jpeg), &DecodeLimits { max_pixels: 100 }).unwrap();
    assert_eq!(img.dimensions(), (10, 10));
}

#[test]
fn alpha_is_flattened_on_white_like_pillow() {
    // (c, a) -> Pillow alpha_composite(white, ...).convert("RGB")
    for (c, a, want) in [(200, 128, 227), (0, 0, 255), (10, 255, 10), (100, 1, 254), (37, 200, 84)] {
        assert_eq!(over_white(c, a), want, "c={c} a={a}");
    }
    let rgba = [200, 0, 37, 128, 10, 20, 30, 255, 1, 2, 3, 0];
    let img = dec(png(3, 1, 8, 6, &rgba, &[])).unwrap();
    assert_eq!(img.as_raw(), &[227, 127, 146, 10, 20, 30, 255, 255, 255]);
    // Gray + alpha.
    let img = dec(png(2, 1, 8, 4, &[37, 200, 0, 0], &[])).unwrap();
    assert_eq!(img.as_raw(), &[84, 84, 84, 255, 255, 255]);
    // Palette with tRNS (Pillow: P -> RGBA -> composite).
    let plte = [16, 32, 48, 64, 80, 96];
    let img = dec(png(2, 1, 8, 3, &[0, 1], &[(b"PLTE", &plte), (b"tRNS", &[128])])).unwrap();
    let want: Vec<u8> = [16, 32, 48].iter().map(|&c| over_white(c, 128)).chain([64, 80, 96]).collect();
    assert_eq!(img.as_raw(), &want);
}

#[test]
fn grayscale_is_replicated() {
    let img = dec(png(3, 1, 8, 0, &[0, 77, 255], &[])).unwrap();
    assert_eq!(img.as_raw(), &[0, 0, 0, 77, 77, 77, 255, 255, 255]);
}

#[test]
fn sixteen_bit_follows_pillow() {
    // RGB16: high byte (40000 >> 8 = 156, Pillow "RGB;16B").
    let px: Vec<u8> = [40_000u16, 30_000, 500].iter().flat_map(|v| v.to_be_bytes()).collect();
    assert_eq!(dec(png(1, 1, 16, 2, &px, &[])).unwrap().as_raw(), &[156, 117, 1]);
    // L16 opens as Pillow "I;16", whose convert("RGB") clamps to 255.
    let px: Vec<u8> = [129u16, 4129].iter().flat_map(|v| v.to_be_bytes()).collect();
    assert_eq!(dec(png(2, 1, 16, 0, &px, &[])).unwrap().as_raw(), &[129, 129, 129, 255, 255, 255]);
    // RGBA16: high bytes, then flattened.
    let px: Vec<u8> = [51_200u16, 0, 9_472, 32_768].iter().flat_map(|v| v.to_be_bytes()).collect();
    let a = 128;
    let want = [over_white(200, a), over_white(0, a), over_white(37, a)];
    assert_eq!(dec(png(1, 1, 16, 6, &px, &[])).unwrap().as_raw(), &want);
}

#[test]
fn exif_orientation_is_applied() {
    // Little-endian TIFF header, one IFD entry: Orientation (0x0112) = 6 (rotate 90 CW).
    let mut exif = b"II*\0\x08\0\0\0\x01\0".to_vec();
    exif.extend_from_slice(&[0x12, 0x01, 3, 0, 1, 0, 0, 0, 6, 0, 0, 0, 0, 0, 0, 0]);
    let px: Vec<u8> = (0..6u8).flat_map(|i| [i * 10; 3]).collect(); // 3x2, value = 10 * index
    let img = dec(png(3, 2, 8, 2, &px, &[(b"eXIf", &exif)])).unwrap();
    // Pillow ImageOps.exif_transpose: size (2, 3), red channel [[30, 0], [40, 10], [50, 20]].
    assert_eq!(img.dimensions(), (2, 3));
    let red: Vec<u8> = img.pixels().map(|p| p[0]).collect();
    assert_eq!(red, [30, 0, 40, 10, 50, 20]);
}

// ---- grid selection ----

fn cfg(s: u32, min: usize, max: usize) -> TilingConfig {
    TilingConfig { image_size: s, min_tiles: min, max_tiles: max, ..TilingConfig::default() }
}

#[test]
fn target_ratio_order_matches_cpython() {
    // Printed by CPython 3.11: sorted(set(...), key=lambda x: x[0] * x[1]).
    let py12 = [
        (1, 1), (1, 2), (2, 1), (3, 1), (1, 3), (2, 2), (4, 1), (1, 4), (5, 1), (1, 5), (1, 6),
        (6, 1), (3, 2), (2, 3), (7, 1), (1, 7), (4, 2), (2, 4), (1, 8), (8, 1), (1, 9), (3, 3),
        (9, 1), (2, 5), (5, 2), (10, 1), (1, 10), (11, 1), (1, 11), (12, 1), (3, 4), (4, 3),
        (1, 12), (6, 2), (2, 6),
    ];
    assert_eq!(target_ratios(&cfg(448, 1, 12)), py12);
    let py6 = [
        (1, 1), (1, 2), (2, 1), (3, 1), (1, 3), (4, 1), (1, 4), (2, 2), (1, 5), (5, 1), (6, 1),
        (2, 3), (1, 6), (3, 2),
    ];
    assert_eq!(target_ratios(&cfg(448, 1, 6)), py6);
    let py4 = [(1, 1), (1, 2), (2, 1), (3, 1), (1, 3), (4, 1), (1, 4), (2, 2)];
    assert_eq!(target_ratios(&cfg(448, 1, 4)), py4);
    assert_eq!(target_ratios(&cfg(448, 4, 4)), [(4, 1), (1, 4), (2, 2)]);
    assert_eq!(target_ratios(&cfg(448, 6, 6)), [(2, 3), (1, 6), (3, 2), (6, 1)]);
    assert!(target_ratios(&cfg(448, 5, 4)).is_empty());
}

#[test]
fn select_grid_known_cases() {
    assert_eq!(select_grid(100, 60, &cfg(64, 1, 6)), (3, 2));
    // Squares: (1,1), (2,2), (3,3) tie on aspect; a later one wins only if area > 0.5*S*S*n.
    let d = TilingConfig::default();
    assert_eq!(select_grid(448, 448, &d), (1, 1));
    assert_eq!(select_grid(700, 700, &d), (2, 2));
    assert_eq!(select_grid(1000, 1000, &d), (3, 3));
    // Same-count tie (min = max = 4, aspect 0.625 halfway between 1/4 and 1): set order decides.
    assert_eq!(select_grid(5, 8, &cfg(448, 4, 4)), (1, 4));
    assert_eq!(select_grid(5000, 8000, &cfg(448, 4, 4)), (2, 2));
    // No grid qualifies: Python's (1, 1) fallback.
    assert_eq!(select_grid(300, 100, &cfg(448, 5, 4)), (1, 1));
}

#[test]
fn max_tiles_counts_the_thumbnail() {
    assert_eq!(max_tiles_for(&TilingConfig::default()), 13);
    assert_eq!(max_tiles_for(&cfg(448, 1, 1)), 1);
    assert_eq!(max_tiles_for(&TilingConfig { use_thumbnail: false, ..TilingConfig::default() }), 12);
}

// ---- tiling + normalisation ----

fn gradient(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 7 + y) as u8, (y * 5) as u8, ((x ^ y) * 3) as u8]))
}

#[test]
fn normalisation_matches_torchvision() {
    // torch: (v.float().div(255) - mean) / std, float32 bit patterns.
    let m = TilingConfig::IMAGENET_MEAN;
    let s = TilingConfig::IMAGENET_STD;
    let want: [[u32; 5]; 3] = [
        [0xc0078bbd, 0xc006732b, 0x3d97af32, 0x400ed58a, 0x400fee1d],
        [0xc0024924, 0xc0012a4f, 0x3e521b48, 0x401a4ee0, 0x401b6db7],
        [0xbfe6f809, 0xbfe4bcea, 0x3eda5d3c, 0x4027d834, 0x4028f5c3],
    ];
    for c in 0..3 {
        for (k, v) in [0u8, 1, 128, 254, 255].into_iter().enumerate() {
            let got = tiling::normalize(v, m[c], s[c]);
            assert_eq!(got.to_bits(), want[c][k], "channel {c} value {v}");
        }
    }
}

#[test]
fn same_size_resize_is_a_copy() {
    let img = gradient(32, 32);
    let t = tile_image(&img, &cfg(32, 1, 6)).unwrap();
    assert_eq!((t.grid, t.num_tiles, t.thumbnail), ((1, 1), 1, false));
    let norm = |v: u8, c: usize| tiling::normalize(v, TilingConfig::IMAGENET_MEAN[c], TilingConfig::IMAGENET_STD[c]);
    for (x, y, p) in img.enumerate_pixels() {
        for c in 0..3 {
            let got = t.pixels[c * 32 * 32 + y as usize * 32 + x as usize];
            assert_eq!(got, norm(p[c], c));
        }
    }
    assert_eq!(frame_tile(&img, &cfg(32, 1, 6)).unwrap().pixels, t.pixels);
}

#[test]
fn tiles_are_row_major_crops_plus_thumbnail() {
    let s = 16u32;
    let img = gradient(48, 32); // aspect 1.5 -> (3, 2) with max 6
    let c = cfg(s, 1, 6);
    let t = tile_image(&img, &c).unwrap();
    assert_eq!((t.grid, t.num_tiles, t.thumbnail), ((3, 2), 7, true));
    let plane = (s * s) as usize;
    assert_eq!(t.pixels.len(), 7 * 3 * plane);
    // Target size == source size: tiles are exact crops. Tile 4 is column 1, row 1.
    let tile4 = &t.pixels[4 * 3 * plane..5 * 3 * plane];
    let p = img.get_pixel(16 + 5, 16 + 9);
    let norm0 = tiling::normalize(p[0], c.mean[0], c.std[0]);
    assert_eq!(tile4[9 * s as usize + 5], norm0);
    // The thumbnail is the whole image resized to S x S.
    let thumb = tiling::resize_bicubic(&img, s, s).unwrap();
    let last = &t.pixels[6 * 3 * plane..];
    let q = thumb.get_pixel(3, 11);
    assert_eq!(last[2 * plane + 11 * s as usize + 3], tiling::normalize(q[2], c.mean[2], c.std[2]));
    // No thumbnail when disabled.
    let t = tile_image(&img, &TilingConfig { use_thumbnail: false, ..c }).unwrap();
    assert_eq!((t.num_tiles, t.thumbnail, t.pixels.len()), (6, false, 6 * 3 * plane));
}

#[test]
fn frame_tile_is_one_tile() {
    let t = frame_tile(&gradient(50, 20), &cfg(16, 1, 12)).unwrap();
    assert_eq!((t.grid, t.num_tiles, t.thumbnail, t.pixels.len()), ((1, 1), 1, false, 3 * 256));
    assert!(matches!(frame_tile(&RgbImage::new(0, 3), &cfg(16, 1, 12)), Err(Error::InvalidImage(_))));
    assert!(matches!(tile_image(&gradient(4, 4), &cfg(0, 1, 12)), Err(Error::InvalidInput(_))));
}
