//! Unit tests for InternVL grid selection, resizing, tiling and normalisation.
//! Expected values marked "Pillow" / "CPython" / "torch" were produced with Pillow 13.0.0,
//! CPython 3.11 and torch 2.11.

use image::RgbImage;

use super::*;
use crate::image::resize_bicubic;
use crate::Error;

// ---- grid selection ----

fn cfg(s: u32, min: usize, max: usize) -> TilingConfig {
    TilingConfig {
        image_size: s,
        min_tiles: min,
        max_tiles: max,
        ..TilingConfig::default()
    }
}

#[test]
fn target_ratio_order_matches_cpython() {
    // Printed by CPython 3.11: sorted(set(...), key=lambda x: x[0] * x[1]).
    let py12 = [
        (1, 1),
        (1, 2),
        (2, 1),
        (3, 1),
        (1, 3),
        (2, 2),
        (4, 1),
        (1, 4),
        (5, 1),
        (1, 5),
        (1, 6),
        (6, 1),
        (3, 2),
        (2, 3),
        (7, 1),
        (1, 7),
        (4, 2),
        (2, 4),
        (1, 8),
        (8, 1),
        (1, 9),
        (3, 3),
        (9, 1),
        (2, 5),
        (5, 2),
        (10, 1),
        (1, 10),
        (11, 1),
        (1, 11),
        (12, 1),
        (3, 4),
        (4, 3),
        (1, 12),
        (6, 2),
        (2, 6),
    ];
    assert_eq!(target_ratios(&cfg(448, 1, 12)), py12);
    let py6 = [
        (1, 1),
        (1, 2),
        (2, 1),
        (3, 1),
        (1, 3),
        (4, 1),
        (1, 4),
        (2, 2),
        (1, 5),
        (5, 1),
        (6, 1),
        (2, 3),
        (1, 6),
        (3, 2),
    ];
    assert_eq!(target_ratios(&cfg(448, 1, 6)), py6);
    let py4 = [
        (1, 1),
        (1, 2),
        (2, 1),
        (3, 1),
        (1, 3),
        (4, 1),
        (1, 4),
        (2, 2),
    ];
    assert_eq!(target_ratios(&cfg(448, 1, 4)), py4);
    assert_eq!(target_ratios(&cfg(448, 4, 4)), [(4, 1), (1, 4), (2, 2)]);
    assert_eq!(
        target_ratios(&cfg(448, 6, 6)),
        [(2, 3), (1, 6), (3, 2), (6, 1)]
    );
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
    assert_eq!(
        max_tiles_for(&TilingConfig {
            use_thumbnail: false,
            ..TilingConfig::default()
        }),
        12
    );
}

// ---- resize ----

/// A deterministic, high-frequency test pattern (shows any rounding or pass-order difference).
fn pattern(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([0u32, 1, 2].map(|c| (((x * 37 + y * 91 + c * 53) * 17) % 256) as u8))
    })
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

#[test]
fn resize_matches_pillow_bytes() {
    // Pillow 13: pattern(9, 9).resize((7, 2), BICUBIC); height shrinks far more than width,
    // so Pillow runs the vertical pass first.
    let want = [
        48, 130, 58, 124, 87, 134, 109, 150, 119, 166, 133, 176, 141, 169, 151, 138, 157, 148, 160,
        104, 170, 100, 162, 110, 117, 112, 127, 114, 86, 124, 66, 123, 76, 124, 84, 134, 104, 148,
        114, 177, 121, 187,
    ];
    assert_eq!(
        resize_bicubic(&pattern(9, 9), 7, 2).unwrap().as_raw(),
        &want
    );
    // FNV-1a of Pillow's bytes: vertical-first (widen + shorten), horizontal-first (both
    // grow), single horizontal pass, single vertical pass.
    for ((w, h, ow, oh), hash) in [
        ((9, 7, 12, 3), 0x458f_239f_e1ac_b708u64),
        ((6, 5, 13, 11), 0x4195_b958_3749_a70b),
        ((12, 4, 5, 4), 0x2aaf_772c_84d6_ba94),
        ((4, 9, 4, 20), 0xad7c_91b0_ca4f_3ca4),
    ] {
        let out = resize_bicubic(&pattern(w, h), ow, oh).unwrap();
        assert_eq!(fnv1a(out.as_raw()), hash, "{w}x{h} -> {ow}x{oh}");
    }
    assert!(matches!(
        resize_bicubic(&pattern(3, 3), 0, 3),
        Err(Error::InvalidInput(_))
    ));
}

// ---- tiling + normalisation ----

fn gradient(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x * 7 + y) as u8, (y * 5) as u8, ((x ^ y) * 3) as u8])
    })
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
            let got = normalize(v, m[c], s[c]);
            assert_eq!(got.to_bits(), want[c][k], "channel {c} value {v}");
        }
    }
}

#[test]
fn same_size_resize_is_a_copy() {
    let img = gradient(32, 32);
    let t = tile_image(&img, &cfg(32, 1, 6)).unwrap();
    assert_eq!((t.grid, t.num_tiles, t.thumbnail), ((1, 1), 1, false));
    let norm = |v: u8, c: usize| {
        normalize(
            v,
            TilingConfig::IMAGENET_MEAN[c],
            TilingConfig::IMAGENET_STD[c],
        )
    };
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
    let norm0 = normalize(p[0], c.mean[0], c.std[0]);
    assert_eq!(tile4[9 * s as usize + 5], norm0);
    // The thumbnail is the whole image resized to S x S.
    let thumb = resize_bicubic(&img, s, s).unwrap();
    let last = &t.pixels[6 * 3 * plane..];
    let q = thumb.get_pixel(3, 11);
    assert_eq!(
        last[2 * plane + 11 * s as usize + 3],
        normalize(q[2], c.mean[2], c.std[2])
    );
    // No thumbnail when disabled.
    let t = tile_image(
        &img,
        &TilingConfig {
            use_thumbnail: false,
            ..c
        },
    )
    .unwrap();
    assert_eq!(
        (t.num_tiles, t.thumbnail, t.pixels.len()),
        (6, false, 6 * 3 * plane)
    );
}

#[test]
fn frame_tile_is_one_tile() {
    let t = frame_tile(&gradient(50, 20), &cfg(16, 1, 12)).unwrap();
    assert_eq!(
        (t.grid, t.num_tiles, t.thumbnail, t.pixels.len()),
        ((1, 1), 1, false, 3 * 256)
    );
    assert!(matches!(
        frame_tile(&RgbImage::new(0, 3), &cfg(16, 1, 12)),
        Err(Error::InvalidImage(_))
    ));
    assert!(matches!(
        tile_image(&gradient(4, 4), &cfg(0, 1, 12)),
        Err(Error::InvalidInput(_))
    ));
}

/// Issue #14: a 1 x 39,999,999 image cost 5x the memory of a square one of the same pixel
/// count, in the resampler's filter tables (which grow with the long side). Such shapes are
/// refused before any table is built; elongated but sane ones (panoramas) still tile.
#[test]
fn extreme_aspect_ratios_are_refused_before_resampling() {
    let cfg = TilingConfig::default();
    let thin = RgbImage::new(1, 4_000_000);
    let start = std::time::Instant::now();
    let err = tile_image(&thin, &cfg).expect_err("too elongated");
    assert!(
        matches!(err, crate::Error::InvalidImage(ref m) if m.contains("elongated")),
        "{err}"
    );
    assert!(start.elapsed() < std::time::Duration::from_millis(500));
    // The table estimate is what the resampler builds: 1 x 4M to 448 x 5376 needs ~64 MiB.
    let bytes = crate::image::table_bytes(1, 4_000_000, 448, 5376);
    assert!((60 << 20..70 << 20).contains(&bytes), "{bytes}");
    // A 12:1 panorama and a tall strip of a few thousand pixels are fine.
    for (w, h) in [(6000, 500), (40, 6000), (1, 2000)] {
        let t = tile_image(&RgbImage::new(w, h), &cfg).unwrap_or_else(|e| panic!("{w}x{h}: {e}"));
        assert!(t.num_tiles >= 1);
    }
}
