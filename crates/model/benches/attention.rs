//! Vision-tower attention on CPU (f32): the fused op (flash-style, no score matrix) against
//! matmul, softmax, matmul, at InternViT-300M's shape per layer: 4 tiles x 16 heads x 1025 tokens
//! x head dim 64 (and 1 tile). The naive path materialises a (4 x 16 x 1025 x 1025) f32 score
//! matrix and as much again for the probabilities: 269 MB each.

use candle_core::{Device, Tensor};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use rewarddance_model::nn::fused_attention::{attention, naive_attention};

fn bench(c: &mut Criterion) {
    let dev = Device::Cpu;
    let mut group = c.benchmark_group("vision_attention_f32");
    group.sample_size(10);
    for (b, h, t, d) in [(4usize, 16usize, 1025usize, 64usize), (1, 16, 1025, 64)] {
        let q = Tensor::randn(0f32, 1.0, (b, h, t, d), &dev).expect("q");
        let k = Tensor::randn(0f32, 1.0, (b, h, t, d), &dev).expect("k");
        let v = Tensor::randn(0f32, 1.0, (b, h, t, d), &dev).expect("v");
        let scale = (d as f64).powf(-0.5);
        let id = format!("{b}x{h}x{t}x{d}");
        group.bench_with_input(BenchmarkId::new("naive", &id), &(), |bench, _| {
            bench.iter(|| naive_attention(&q, &k, &v, scale, false).expect("naive"))
        });
        group.bench_with_input(BenchmarkId::new("fused", &id), &(), |bench, _| {
            bench.iter(|| attention(&q, &k, &v, scale, false).expect("fused"))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
