//! Vision-feature reuse: repeats inside a batch are encoded once (cache on or off), the cache
//! serves later batches, respects its byte budget, and never changes a score.

mod common;

use common::image_file;
use rewarddance_model::nn::language::config::RopeScaling;
use rewarddance_model::{Candidate, Checkpoint, LoadOptions, Mode, RewardModel, Score, ScoreItem};

const TOL: f64 = 1e-5;

fn model(cache_bytes: usize) -> RewardModel {
    let options = LoadOptions {
        feature_cache_bytes: cache_bytes,
        ..LoadOptions::default()
    };
    RewardModel::load(&Checkpoint::bundled(), options).expect("bundled model")
}

fn pair(reference: &str, candidate: &str) -> ScoreItem {
    ScoreItem {
        prompt: "a quiet harbour at dusk".into(),
        candidate: Candidate::Image(image_file(candidate)),
        reference: Some(image_file(reference)),
        instruction: None,
        mode: Mode::Pairwise,
    }
}

fn scores(model: &RewardModel, items: &[ScoreItem]) -> Vec<Score> {
    model
        .score(items)
        .into_iter()
        .map(|r| r.expect("scored"))
        .collect()
}

fn assert_close(a: &[Score], b: &[Score]) {
    for (x, y) in a.iter().zip(b) {
        assert!((x.p_yes - y.p_yes).abs() < TOL, "{x:?} vs {y:?}");
        assert!(
            ((x.logit_yes - y.logit_yes) as f64).abs() < TOL,
            "{x:?} vs {y:?}"
        );
    }
}

/// A group: one reference, several candidates (two of them the same file).
fn group() -> Vec<ScoreItem> {
    let reference = "fixtures/images/square_130x130.png";
    [
        "fox_100x60.png",
        "tall_30x220.png",
        "fox_100x60.png",
        "gray_64x64.png",
    ]
    .iter()
    .map(|c| pair(reference, &format!("fixtures/images/{c}")))
    .collect()
}

#[test]
fn repeats_in_a_batch_are_encoded_once_even_without_cache() {
    let uncached = model(0);
    let items = group();
    let batched = scores(&uncached, &items);
    let stats = uncached.feature_cache_stats();
    // 8 image occurrences: square x4, fox x2, tall, gray -> 4 distinct encodes, 4 reuses.
    assert_eq!(
        (stats.misses, stats.hits, stats.entries),
        (4, 4, 0),
        "{stats:?}"
    );
    let alone: Vec<Score> = items
        .iter()
        .flat_map(|i| scores(&uncached, std::slice::from_ref(i)))
        .collect();
    assert_close(&batched, &alone);
}

#[test]
fn the_cache_serves_later_batches_with_equal_scores() {
    let cached = model(64 << 20);
    let items = group();
    let first = scores(&cached, &items);
    let after_first = cached.feature_cache_stats();
    assert_eq!(after_first.entries, 4);
    let second = scores(&cached, &items);
    let after_second = cached.feature_cache_stats();
    assert_eq!(
        after_second.misses, after_first.misses,
        "no new encodes: {after_second:?}"
    );
    assert!(after_second.hits >= after_first.hits + 8);
    assert_close(&first, &second);
    assert_close(&first, &scores(&model(0), &items));
}

#[test]
fn the_byte_budget_evicts_least_recently_used() {
    // The bundled model's features: tiles * 16 rows * 48 f32 = 3072 bytes per tile.
    let one_tile = 16 * 48 * 4;
    let small = model(8 * one_tile);
    let gray = ScoreItem {
        prompt: "p".into(),
        candidate: Candidate::Image(image_file("fixtures/images/gray_64x64.png")),
        reference: None,
        instruction: None,
        mode: Mode::Pointwise,
    };
    let fox = ScoreItem {
        candidate: Candidate::Image(image_file("fixtures/images/fox_100x60.png")),
        ..gray.clone()
    };
    scores(&small, std::slice::from_ref(&gray)); // 1 tile
    scores(&small, std::slice::from_ref(&fox)); // 7 tiles: 8 in all, fits
    assert_eq!(small.feature_cache_stats().evictions, 0);
    let tall = ScoreItem {
        candidate: Candidate::Image(image_file("fixtures/images/tall_30x220.png")),
        ..gray.clone()
    };
    scores(&small, std::slice::from_ref(&tall));
    let stats = small.feature_cache_stats();
    assert!(stats.evictions >= 1, "{stats:?}");
    assert!(stats.bytes as usize <= 8 * one_tile, "{stats:?}");
}

#[test]
fn replaced_pixels_get_a_new_key() {
    let cached = model(64 << 20);
    let item = group().remove(0);
    let prepared = cached.prepare(&item).expect("prepare");
    let original = cached.score_prepared(&[&prepared]).expect("score")[0];
    let flipped: Vec<f32> = prepared.pixels().iter().map(|v| -v).collect();
    let changed = prepared.clone().with_pixels(flipped).expect("same length");
    let other = cached.score_prepared(&[&changed]).expect("score")[0];
    assert_ne!(
        original.logit_yes, other.logit_yes,
        "new pixels must not hit the old entry"
    );
}

#[test]
fn shared_prefixes_are_computed_once_with_equal_scores() {
    for name in common::MODELS {
        let load = |min: usize| {
            let ckpt =
                Checkpoint::from_dir(&common::repo_root().join("fixtures/models").join(name))
                    .unwrap();
            RewardModel::load(
                &ckpt,
                LoadOptions {
                    prefix_reuse_min_tokens: min,
                    feature_cache_bytes: 0,
                    ..LoadOptions::default()
                },
            )
            .unwrap()
        };
        let (shared, plain) = (load(1), load(usize::MAX));
        let items = group();
        let with_reuse = scores(&shared, &items);
        let without = scores(&plain, &items);
        assert_close(&with_reuse, &without);
        assert_eq!(plain.prefix_tokens_saved(), 0);
        let longest = items
            .iter()
            .map(|i| shared.prepare(i).unwrap().num_tokens())
            .max()
            .unwrap();
        let saved = shared.prefix_tokens_saved();
        match shared.config().text().rope_scaling {
            // Past the trained length dynamic NTK rescales every position: nothing is shared.
            RopeScaling::Dynamic {
                original_max_position_embeddings: max,
                ..
            } if longest > max => {
                assert_eq!(saved, 0, "{name}")
            }
            // Every item after the first shares the system prompt and the reference image.
            _ => assert!(
                saved >= 3 * shared.config().tokens_per_tile() as u64,
                "{name}: saved {saved}"
            ),
        }
        // Mixed batch: a pointwise item with no shared prefix rides along unchanged.
        let mut mixed = items.clone();
        mixed.insert(
            1,
            ScoreItem {
                mode: Mode::Pointwise,
                reference: None,
                ..items[0].clone()
            },
        );
        assert_close(&scores(&shared, &mixed), &scores(&plain, &mixed));
    }
}
