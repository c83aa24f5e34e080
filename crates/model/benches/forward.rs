//! One packed forward pass of the bundled tiny model on CPU (f32) at batch 1 and 16, plus the
//! CPU half (`prepare`) per item. Items: 72-ish text tokens + one 100x60 image (7 tiles).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rewarddance_model::{
    Candidate, Checkpoint, ImageInput, LoadOptions, Mode, RewardModel, ScoreItem,
};

fn item() -> ScoreItem {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fixtures/images/fox_100x60.png"
    );
    ScoreItem {
        prompt: "a red fox standing in fresh snow at dawn".into(),
        candidate: Candidate::Image(ImageInput::Encoded(
            std::fs::read(path).expect("fixture image"),
        )),
        reference: None,
        instruction: None,
        mode: Mode::Pointwise,
    }
}

fn bench(c: &mut Criterion) {
    let model = RewardModel::load(&Checkpoint::bundled(), LoadOptions::default()).expect("model");
    let item = item();
    c.bench_function("prepare_item", |b| {
        b.iter(|| model.prepare(&item).expect("prepare"))
    });
    let prepared = model.prepare(&item).expect("prepare");
    let mut group = c.benchmark_group("forward_bundled_f32");
    for batch in [1usize, 16] {
        let items: Vec<_> = (0..batch).map(|_| &prepared).collect();
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_with_input(BenchmarkId::from_parameter(batch), &items, |b, items| {
            b.iter(|| model.score_prepared(items).expect("score"))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
