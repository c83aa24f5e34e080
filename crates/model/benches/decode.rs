//! Rationale decoding on CPU (f32): tokens per second at batch 1 and 16 on the `1b` preset
//! (Qwen2-0.5B decoder shapes, random weights), and on the bundled tiny model (overheads).
//!
//! Each sample decodes `STEPS` tokens per sequence from a prefill done once outside the timing
//! (the sequences are forked from it), so only decode steps are measured: host sampling and
//! detokenisation included, prefill excluded. Criterion's throughput line is tokens/s.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rewarddance_model::{
    Candidate, Checkpoint, Generation, ImageInput, LoadOptions, Mode, RationaleOptions,
    RewardModel, ScoreItem,
};

const STEPS: usize = 16;

fn item(i: usize) -> ScoreItem {
    ScoreItem {
        prompt: format!("a red fox standing in fresh snow at dawn, take {i}"),
        // One image shared by every item: the vision tower runs once per prefill.
        candidate: Candidate::Image(ImageInput::Rgb8 {
            width: 64,
            height: 64,
            data: vec![90; 64 * 64 * 3],
        }),
        reference: None,
        instruction: None,
        mode: Mode::Pointwise,
    }
}

/// Decodes `STEPS` tokens for copies of `start`; returns the time taken.
fn decode(model: &RewardModel, start: &[Generation]) -> Duration {
    let mut running: Vec<Generation> = start.iter().map(|g| g.fork().expect("fork")).collect();
    let t = Instant::now();
    for _ in 0..STEPS {
        for g in running.iter_mut() {
            model.next_token(g).expect("token");
        }
        let mut refs: Vec<&mut Generation> = running.iter_mut().collect();
        model.decode_forward(&mut refs).expect("step");
    }
    t.elapsed()
}

fn bench_model(c: &mut Criterion, name: &str, checkpoint: Checkpoint) {
    let model = RewardModel::load(&checkpoint, LoadOptions::default()).expect("model");
    let options = RationaleOptions {
        max_tokens: usize::MAX,
        ignore_end: true,
        ..RationaleOptions::default()
    };
    let mut group = c.benchmark_group(format!("decode_{name}_f32"));
    group.sample_size(10);
    for batch in [1usize, 16] {
        let items: Vec<ScoreItem> = (0..batch).map(item).collect();
        let prepared: Vec<_> = items
            .iter()
            .map(|i| model.prepare(i).expect("prepare"))
            .collect();
        let refs: Vec<_> = prepared.iter().collect();
        let (_, generations) = model
            .prefill_for_rationales(&refs, &vec![Some(options); batch])
            .expect("prefill");
        let start: Vec<Generation> = generations.into_iter().flatten().collect();
        group.throughput(Throughput::Elements((batch * STEPS) as u64));
        group.bench_with_input(BenchmarkId::from_parameter(batch), &start, |b, start| {
            b.iter_custom(|iters| (0..iters).map(|_| decode(&model, start)).sum())
        });
    }
    group.finish();
}

fn bench(c: &mut Criterion) {
    bench_model(c, "bundled", Checkpoint::bundled());
    bench_model(c, "1b", Checkpoint::random("1b").expect("preset"));
}

criterion_group!(benches, bench);
criterion_main!(benches);
