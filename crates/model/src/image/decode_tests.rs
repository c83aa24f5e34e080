//! Unit tests for `crate::image` decoding. Expected values marked "Pillow" were produced with
//! Pillow 13 / torch 2.11 (see the module docs for how parity was measured).

use std::time::{Duration, Instant};

use image::{ImageEncoder, RgbImage};

use super::over_white;
use crate::image::*;
use crate::Error;

// ---- tiny PNG writer (stored deflate, no compression crate needed) ----

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
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
fn png(
    w: u32,
    h: u32,
    depth: u8,
    color: u8,
    pixels: &[u8],
    extra: &[(&[u8; 4], &[u8])],
) -> Vec<u8> {
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
    let raw = |w, h, n| {
        decode(
            &ImageInput::Rgb8 {
                width: w,
                height: h,
                data: vec![0; n],
            },
            &DecodeLimits::default(),
        )
    };
    assert_invalid(raw(0, 5, 0));
    assert_invalid(raw(5, 0, 0));
    // A PNG header with zero width (Pillow and the png crate both refuse it).
    assert_invalid(dec(png(0, 1, 8, 2, &[0; 3], &[])));
}

#[test]
fn raw_length_must_match() {
    let raw = |n| {
        decode(
            &ImageInput::Rgb8 {
                width: 4,
                height: 3,
                data: vec![1; n],
            },
            &DecodeLimits::default(),
        )
    };
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
            Err(Error::ImageTooLarge {
                width,
                height,
                pixels,
                limit,
            }) => {
                assert_eq!(
                    (width, height, pixels, limit),
                    (100_000, 100_000, 10_000_000_000, 40_000_000)
                );
            }
            other => panic!("expected ImageTooLarge, got {other:?}"),
        }
        assert!(t.elapsed() < Duration::from_millis(200));
    }
}

#[test]
fn pixel_limit_applies_to_every_input_kind() {
    let limits = DecodeLimits { max_pixels: 99 };
    let raw = ImageInput::Rgb8 {
        width: 10,
        height: 10,
        data: vec![0; 300],
    };
    assert!(matches!(
        decode(&raw, &limits),
        Err(Error::ImageTooLarge { pixels: 100, .. })
    ));
    // JPEG goes through the decoder-header check (no PNG sniffing).
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new(&mut jpeg)
        .write_image(&[128; 300], 10, 10, image::ExtendedColorType::Rgb8)
        .unwrap();
    let r = decode(&ImageInput::Encoded(jpeg.clone()), &limits);
    assert!(
        matches!(
            r,
            Err(Error::ImageTooLarge {
                width: 10,
                height: 10,
                ..
            })
        ),
        "{r:?}"
    );
    let img = decode(
        &ImageInput::Encoded(jpeg),
        &DecodeLimits { max_pixels: 100 },
    )
    .unwrap();
    assert_eq!(img.dimensions(), (10, 10));
}

#[test]
fn alpha_is_flattened_on_white_like_pillow() {
    // (c, a) -> Pillow alpha_composite(white, ...).convert("RGB")
    for (c, a, want) in [
        (200, 128, 227),
        (0, 0, 255),
        (10, 255, 10),
        (100, 1, 254),
        (37, 200, 84),
    ] {
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
    let img = dec(png(
        2,
        1,
        8,
        3,
        &[0, 1],
        &[(b"PLTE", &plte), (b"tRNS", &[128])],
    ))
    .unwrap();
    let want: Vec<u8> = [16, 32, 48]
        .iter()
        .map(|&c| over_white(c, 128))
        .chain([64, 80, 96])
        .collect();
    assert_eq!(img.as_raw(), &want);
}

#[test]
fn colour_key_transparency_is_ignored() {
    // Pillow keeps a gray/RGB tRNS key in info["transparency"]; convert("RGB") ignores it.
    let trns = [0, 5, 0, 6, 0, 7];
    let img = dec(png(2, 1, 8, 2, &[5, 6, 7, 1, 2, 3], &[(b"tRNS", &trns)])).unwrap();
    assert_eq!(img.as_raw(), &[5, 6, 7, 1, 2, 3]);
    let img = dec(png(2, 1, 8, 0, &[5, 9], &[(b"tRNS", &[0, 5])])).unwrap();
    assert_eq!(img.as_raw(), &[5, 5, 5, 9, 9, 9]);
}

#[test]
fn grayscale_is_replicated() {
    let img = dec(png(3, 1, 8, 0, &[0, 77, 255], &[])).unwrap();
    assert_eq!(img.as_raw(), &[0, 0, 0, 77, 77, 77, 255, 255, 255]);
}

#[test]
fn sixteen_bit_follows_pillow() {
    // RGB16: high byte (40000 >> 8 = 156, Pillow "RGB;16B").
    let px: Vec<u8> = [40_000u16, 30_000, 500]
        .iter()
        .flat_map(|v| v.to_be_bytes())
        .collect();
    assert_eq!(
        dec(png(1, 1, 16, 2, &px, &[])).unwrap().as_raw(),
        &[156, 117, 1]
    );
    // L16 opens as Pillow "I;16", whose convert("RGB") clamps to 255.
    let px: Vec<u8> = [129u16, 4129]
        .iter()
        .flat_map(|v| v.to_be_bytes())
        .collect();
    assert_eq!(
        dec(png(2, 1, 16, 0, &px, &[])).unwrap().as_raw(),
        &[129, 129, 129, 255, 255, 255]
    );
    // RGBA16: high bytes, then flattened.
    let px: Vec<u8> = [51_200u16, 0, 9_472, 32_768]
        .iter()
        .flat_map(|v| v.to_be_bytes())
        .collect();
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

// ---- container checks (decompression bombs beyond the pixel count, truncated JPEG) ----

fn zlib(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    z.write_all(data).unwrap();
    z.finish().unwrap()
}

/// A 64x64 PNG with one extra chunk.
fn png_with(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    png(64, 64, 8, 2, &[90; 64 * 64 * 3], &[(kind, data)])
}

#[test]
fn compressed_png_chunks_past_pillows_bounds_are_refused_fast() {
    let bomb = zlib(&vec![0u8; 64 << 20]); // 64 MiB of zeros in ~64 KiB
    let cases: [(&[u8; 4], Vec<u8>); 3] = [
        (b"iCCP", [b"icc\0\0".as_slice(), &bomb].concat()),
        (b"zTXt", [b"Comment\0\0".as_slice(), &bomb].concat()),
        (
            b"iTXt",
            [b"Comment\0\x01\0en\0\0".as_slice(), &bomb].concat(),
        ),
    ];
    for (kind, data) in cases {
        let start = Instant::now();
        let r = dec(png_with(kind, &data));
        let err = r.unwrap_err().to_string();
        assert!(err.contains("decompression bomb"), "{err}");
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
    }
    // Within the bound: a 512 KiB profile and an uncompressed text chunk decode as before.
    let icc = [b"icc\0\0".as_slice(), &zlib(&vec![1u8; 512 << 10])].concat();
    assert!(dec(png_with(b"iCCP", &icc)).is_ok());
    assert!(dec(png_with(b"tEXt", b"Comment\0hello")).is_ok());
    // Many text chunks add up against MAX_TEXT_MEMORY.
    let text = [b"k\0".as_slice(), &vec![b'a'; 1 << 20]].concat();
    let chunks: Vec<(&[u8; 4], &[u8])> = (0..65).map(|_| (b"tEXt", text.as_slice())).collect();
    let err = dec(png(2, 2, 8, 2, &[0; 12], &chunks))
        .unwrap_err()
        .to_string();
    assert!(err.contains("text chunks"), "{err}");
}

#[test]
fn truncated_jpeg_is_invalid_at_every_cut() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fixtures/images/photo_120x90.jpg"
    );
    let full = std::fs::read(path).unwrap();
    assert!(dec(full.clone()).is_ok());
    for percent in [30, 50, 70, 90, 95, 99] {
        let cut = full.len() * percent / 100;
        assert_invalid(dec(full[..cut].to_vec()));
    }
    assert_invalid(dec(full[..full.len() - 2].to_vec())); // everything but EOI
                                                          // Bytes after EOI are ignored, as by Pillow.
    assert!(dec([full.as_slice(), b"trailing"].concat()).is_ok());
}

/// A WebP file of `kind` ("VP8L" or "VP8X") whose header claims `w` x `h`, with no image data.
fn webp_header_only(kind: &[u8; 4], w: u32, h: u32) -> Vec<u8> {
    let mut chunk = Vec::new();
    match kind {
        b"VP8L" => {
            chunk.push(0x2f);
            let bits = (w - 1) | ((h - 1) << 14);
            chunk.extend_from_slice(&bits.to_le_bytes());
        }
        _ => {
            chunk.extend_from_slice(&[0u8; 4]); // flags + reserved
            chunk.extend_from_slice(&(w - 1).to_le_bytes()[..3]);
            chunk.extend_from_slice(&(h - 1).to_le_bytes()[..3]);
        }
    }
    let mut out = b"RIFF".to_vec();
    out.extend_from_slice(&((4 + 8 + chunk.len()) as u32).to_le_bytes());
    out.extend_from_slice(b"WEBP");
    out.extend_from_slice(kind);
    out.extend_from_slice(&(chunk.len() as u32).to_le_bytes());
    out.extend_from_slice(&chunk);
    out
}

/// Issue #14: a WebP header over the pixel limit was `invalid_image`, where PNG and JPEG are
/// `image_too_large`; it must be refused the same way, from the header alone, and fast.
#[test]
fn webp_headers_over_the_pixel_limit_are_too_large() {
    let limits = DecodeLimits::default();
    for (kind, w, h) in [(b"VP8L", 16_384, 16_384), (b"VP8X", 100_000, 1_000)] {
        let start = Instant::now();
        let r = decode(&ImageInput::Encoded(webp_header_only(kind, w, h)), &limits);
        assert!(
            matches!(r, Err(Error::ImageTooLarge { width, height, .. })
                if width == u64::from(w) && height == u64::from(h)),
            "{}: {r:?}",
            String::from_utf8_lossy(kind)
        );
        assert!(start.elapsed() < Duration::from_millis(200));
    }
    // Within the limit, the same header-only file is just truncated.
    let r = decode(
        &ImageInput::Encoded(webp_header_only(b"VP8L", 64, 64)),
        &limits,
    );
    assert!(matches!(r, Err(Error::InvalidImage(_))), "{r:?}");
}

/// The WebP header reader against files Pillow 13 (libwebp) wrote, one per layout: lossy
/// `VP8 `, lossless `VP8L`, extended `VP8X` (alpha + EXIF). Header and decoder must agree.
#[test]
fn webp_headers_read_like_libwebp_writes_them() {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/real/images/webp");
    for (name, chunk) in [
        ("lossy-321x123.webp", b"VP8 "),
        ("lossless-321x123.webp", b"VP8L"),
        ("alpha-321x123.webp", b"VP8X"),
    ] {
        let bytes = std::fs::read(dir.join(name)).expect("fixture");
        assert_eq!(&bytes[12..16], chunk, "{name}");
        assert_eq!(
            crate::image::container::webp_header(&bytes),
            Some((321, 123)),
            "{name}"
        );
        let img = decode(&ImageInput::Encoded(bytes), &DecodeLimits::default()).expect(name);
        assert_eq!(img.dimensions(), (321, 123), "{name}");
        let too_small = DecodeLimits {
            max_pixels: 321 * 123 - 1,
        };
        let bytes = std::fs::read(dir.join(name)).expect("fixture");
        assert!(matches!(
            decode(&ImageInput::Encoded(bytes), &too_small),
            Err(Error::ImageTooLarge {
                width: 321,
                height: 123,
                ..
            })
        ));
    }
}
