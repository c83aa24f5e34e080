//! Memory of one gradient item, measured by counting this process's heap: the peak during
//! `score_grad` stays under the estimate (`pipeline::memory::gradient_item_bytes`), and no
//! allocation has the size of a weight matrix (a weight's gradient would: candle's autograd
//! forms one for every matmul). Sizes a plain forward also allocates (gemm's packing buffers
//! are powers of two, like some weights) cannot tell a weight gradient apart and are skipped.
//!
//! Its own test binary: the counting allocator sees every allocation of the process, so
//! nothing else may run while it measures.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use rewarddance_model::image::FloatImage;
use rewarddance_model::pipeline::gradient::Objective;
use rewarddance_model::pipeline::memory::{gradient_item_bytes, parameter_count};
use rewarddance_model::{
    Candidate, Checkpoint, DType, FamilyConfig, ImageInput, LoadOptions, Mode, RewardModel,
    ScoreItem,
};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
/// Byte sizes of the model's weight matrices (0: unused slot), and allocations seen of each.
static WEIGHT_SIZES: [AtomicUsize; 16] = [const { AtomicUsize::new(0) }; 16];
static PER_SLOT: [AtomicUsize; 16] = [const { AtomicUsize::new(0) }; 16];

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(live, Ordering::Relaxed);
            if let Some(k) = WEIGHT_SIZES
                .iter()
                .position(|w| w.load(Ordering::Relaxed) == layout.size())
            {
                PER_SLOT[k].fetch_add(1, Ordering::Relaxed);
            }
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

#[test]
fn one_gradient_item_stays_under_its_estimate_and_never_allocates_weight_gradients() {
    let checkpoint = Checkpoint::random("mini").expect("preset");
    let model = RewardModel::load(&checkpoint, LoadOptions::default()).expect("loads");
    let config = FamilyConfig::parse(&checkpoint.config_json, None).unwrap();
    // A 448x224 image: a 2x1 grid of 224-pixel tiles plus the thumbnail.
    let (w, h) = (448u32, 224u32);
    let data = (0..w * h * 3).map(|i| (i % 251) as f32 / 251.0).collect();
    let item = ScoreItem {
        prompt: "a red fox in the snow".into(),
        candidate: Candidate::Image(ImageInput::Float(Arc::new(
            FloatImage::new(w, h, data).unwrap(),
        ))),
        reference: None,
        instruction: None,
        mode: Mode::Pointwise,
    };
    let prepared = model.prepare(&item).unwrap();
    let (tiles, tokens) = (prepared.num_tiles(), prepared.num_tokens());
    assert_eq!(tiles, 3);

    // Every weight matrix of the mini preset, as f32 bytes; sizes under 64 KiB are left out
    // (too common among activations to tell apart).
    let c = config.text().hidden_size;
    let t = config.text();
    let (q, kv) = (t.num_heads * t.head_dim, t.num_kv_heads * t.head_dim);
    let FamilyConfig::InternVl(ivl) = &config;
    let (vc, vi, p) = (
        ivl.vision.hidden_size,
        ivl.vision.intermediate_size,
        ivl.vision.patch_size,
    );
    let shuffled = vc * 4;
    let mut sizes: Vec<usize> = [
        (3 * vc, vc),
        (vc, vc),
        (vi, vc),
        (vc, vi),
        (vc, 3 * p * p),
        (c, shuffled),
        (c, c),
        (q, c),
        (kv, c),
        (c, q),
        (t.intermediate_size, c),
        (c, t.intermediate_size),
        (t.vocab_size, c),
    ]
    .iter()
    .map(|(a, b)| a * b * 4)
    .filter(|&bytes| bytes >= 64 << 10)
    .collect();
    sizes.sort_unstable();
    sizes.dedup();
    for (slot, size) in WEIGHT_SIZES.iter().zip(&sizes) {
        slot.store(*size, Ordering::SeqCst);
    }
    // Sizes the forward allocates too are not evidence of a weight gradient.
    let _ = model.score_prepared(&[&prepared]).unwrap();
    let in_forward: Vec<bool> = PER_SLOT
        .iter()
        .map(|a| a.swap(0, Ordering::SeqCst) > 0)
        .collect();
    let before = LIVE.load(Ordering::SeqCst);
    PEAK.store(before, Ordering::SeqCst);
    let grad = model.score_grad(&prepared, Objective::PYes).unwrap();
    let peak = (PEAK.load(Ordering::SeqCst) - before) as u64;
    let checked: Vec<(usize, usize)> = sizes
        .iter()
        .zip(&PER_SLOT)
        .zip(&in_forward)
        .filter(|(_, &forward)| !forward)
        .map(|((&size, seen), _)| (size, seen.load(Ordering::SeqCst)))
        .collect();
    for slot in &WEIGHT_SIZES {
        slot.store(0, Ordering::SeqCst);
    }
    drop(grad);

    let estimate = gradient_item_bytes(&config, DType::F32, tiles, tokens);
    let parameters = parameter_count(&config) * 4;
    println!(
        "mini, {tiles} tiles, {tokens} tokens: peak {:.1} MiB, estimate {:.1} MiB, \
         parameters {:.1} MiB",
        peak as f64 / 1048576.0,
        estimate as f64 / 1048576.0,
        parameters as f64 / 1048576.0
    );
    assert!(peak <= estimate, "peak {peak} over the estimate {estimate}");
    assert!(
        checked.len() >= 2,
        "too few distinctive weight sizes: {checked:?}"
    );
    assert!(
        checked.iter().all(|&(_, seen)| seen == 0),
        "allocations the size of a weight matrix (bytes, count): {checked:?}"
    );
}
