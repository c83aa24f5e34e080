//! Preprocessing one 1024x1024 JPEG the way InternVL does (448 tiles, up to 12 + thumbnail):
//! decode, tile with bicubic resize, normalise.

use criterion::{criterion_group, criterion_main, Criterion};
use rewarddance_model::family::internvl::tiling::{tile_image, TilingConfig};
use rewarddance_model::image::{decode, DecodeLimits};
use rewarddance_model::ImageInput;

/// A deterministic 1024x1024 photo-like JPEG (smooth gradients plus texture).
fn jpeg_1024() -> Vec<u8> {
    let img = image::RgbImage::from_fn(1024, 1024, |x, y| {
        let n = (x.wrapping_mul(2654435761) ^ y.wrapping_mul(40503)) % 32;
        image::Rgb([
            ((x / 4) as u8).wrapping_add(n as u8),
            (y / 4) as u8,
            ((x + y) / 8) as u8,
        ])
    });
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
        .encode_image(&img)
        .expect("encode");
    out
}

fn bench(c: &mut Criterion) {
    let input = ImageInput::Encoded(jpeg_1024());
    let limits = DecodeLimits::default();
    let tiling = TilingConfig::default();
    let mut group = c.benchmark_group("preprocess_1024_jpeg");
    group.bench_function("decode", |b| {
        b.iter(|| decode(&input, &limits).expect("decode"))
    });
    let img = decode(&input, &limits).expect("decode");
    group.bench_function("tile_448_max12", |b| {
        b.iter(|| tile_image(&img, &tiling).expect("tile"))
    });
    group.bench_function("decode_and_tile", |b| {
        b.iter(|| tile_image(&decode(&input, &limits).expect("decode"), &tiling).expect("tile"))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
