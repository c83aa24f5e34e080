//! Prefix reuse for gradient items: what precedes an item's first float image (system prompt,
//! an encoded pairwise reference) is computed once per batch and the backward skips it. The
//! gradients and scores must be those of each item computed whole and alone (prefix reuse
//! off), and the tokens reused must be counted.

mod common;

use std::sync::Arc;

use common::{fixtures, image_file};
use rewarddance_model::image::{decode, DecodeLimits, FloatImage};
use rewarddance_model::pipeline::gradient::{Objective, ScoreGradient};
use rewarddance_model::testing::fixtures::MODELS;
use rewarddance_model::{
    Candidate, ImageInput, LoadOptions, Mode, PreparedItem, RewardModel, ScoreItem,
};

fn load(name: &str, prefix_reuse: bool) -> RewardModel {
    let ckpt = fixtures().checkpoint(name).expect("checkpoint");
    let options = LoadOptions {
        prefix_reuse_min_tokens: if prefix_reuse {
            LoadOptions::DEFAULT_PREFIX_REUSE_MIN_TOKENS
        } else {
            usize::MAX
        },
        ..LoadOptions::default()
    };
    RewardModel::load(&ckpt, options).expect("model loads")
}

fn float_of(path: &str) -> ImageInput {
    let img = decode(&image_file(path), &DecodeLimits::default()).expect("decodes");
    ImageInput::Float(Arc::new(FloatImage::from_rgb8(&img)))
}

/// Three pairwise items against one encoded reference, a pointwise item, and a pairwise item
/// with another reference.
fn items() -> Vec<ScoreItem> {
    let reference = image_file("fixtures/images/wide_200x50.png");
    let other_reference = image_file("fixtures/images/photo_120x90.jpg");
    let pair = |candidate: &str, reference: &ImageInput, prompt: &str| ScoreItem {
        prompt: prompt.into(),
        mode: Mode::Pairwise,
        instruction: None,
        reference: Some(reference.clone()),
        candidate: Candidate::Image(float_of(candidate)),
    };
    vec![
        pair("fixtures/images/square_130x130.png", &reference, "a fox"),
        ScoreItem {
            prompt: "a red fox in the snow".into(),
            mode: Mode::Pointwise,
            instruction: None,
            reference: None,
            candidate: Candidate::Image(float_of("fixtures/images/fox_100x60.png")),
        },
        pair(
            "fixtures/images/tall_30x220.png",
            &reference,
            "a tall tower",
        ),
        pair("fixtures/images/fox_100x60.png", &other_reference, "a fox"),
        pair(
            "fixtures/images/gray_64x64.png",
            &reference,
            "a grey square",
        ),
    ]
}

/// Tokens before the candidate's first image-context token (the candidate is the item's
/// first float image).
fn tokens_before_candidate(model: &RewardModel, item: &PreparedItem) -> usize {
    let ctx = model.prompt_builder().image_context_id();
    let reference_rows = if item.images.len() > 1 {
        item.images[0].num_tiles * model.config().tokens_per_tile()
    } else {
        0
    };
    item.input_ids
        .iter()
        .enumerate()
        .filter(|(_, &id)| id == ctx)
        .nth(reference_rows)
        .map(|(k, _)| k)
        .expect("the candidate's tokens")
}

fn max_abs(v: &[f32]) -> f32 {
    v.iter().fold(0.0, |m, x| m.max(x.abs()))
}

fn assert_same(name: &str, i: usize, ours: &ScoreGradient, alone: &ScoreGradient) {
    let d = (ours.score.p_yes - alone.score.p_yes).abs();
    assert!(d <= 1e-6, "{name} item {i}: p_yes differs by {d}");
    assert!(
        (ours.objective - alone.objective).abs() <= 1e-5 * alone.objective.abs().max(1.0),
        "{name} item {i}: objective {} vs {}",
        ours.objective,
        alone.objective
    );
    assert_eq!(ours.images.len(), alone.images.len());
    for (a, b) in ours.images.iter().zip(&alone.images) {
        match (a, b) {
            (Some(a), Some(b)) => {
                assert_eq!((a.width, a.height), (b.width, b.height));
                let scale = max_abs(&b.values);
                assert!(scale > 0.0, "{name} item {i}: a zero gradient");
                let diff = a
                    .values
                    .iter()
                    .zip(&b.values)
                    .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
                assert!(
                    diff <= 1e-5 * scale,
                    "{name} item {i}: gradients differ by {diff} (max |g| {scale})"
                );
            }
            (None, None) => {}
            _ => panic!("{name} item {i}: a gradient on one side only"),
        }
    }
}

#[test]
fn a_batch_sharing_prefixes_gives_each_items_own_gradient() {
    let objectives = [
        Objective::LogitMargin,
        Objective::PYes,
        Objective::LogPYes,
        Objective::LogitMargin,
        Objective::PYes,
    ];
    for name in MODELS {
        let (plain, reuse) = (load(name, false), load(name, true));
        let items = items();
        let prepared: Vec<PreparedItem> = items
            .iter()
            .map(|i| reuse.prepare(i).expect("prepares"))
            .collect();
        let refs: Vec<&PreparedItem> = prepared.iter().collect();
        let before = reuse.prefix_tokens_saved();
        let batch = reuse.score_grad_batch(&refs, &objectives).expect("batch");
        let saved = reuse.prefix_tokens_saved() - before;
        // Items 2 and 4 continue item 0's prefix (same reference); the others have their own.
        let shared = tokens_before_candidate(&reuse, &prepared[0]);
        // Dynamic NTK rope (the internlm2 fixture) rules reuse out for items past its trained
        // length.
        let sharing = [0, 2, 4]
            .iter()
            .filter(|&&i| reuse.shares_prefixes_at(prepared[i].num_tokens()))
            .count();
        let expected = sharing.saturating_sub(1) * shared;
        assert_eq!(saved as usize, expected, "{name}: prefix tokens reused");
        assert_eq!(batch.len(), items.len());
        for (i, (item, ours)) in prepared.iter().zip(&batch).enumerate() {
            let alone = plain.score_grad(item, objectives[i]).expect("alone");
            assert_same(name, i, ours, &alone);
            // The reported score is the item's Score.
            let score = plain.score_prepared(&[item]).expect("score")[0];
            assert!(
                (score.p_yes - ours.score.p_yes).abs() <= 1e-5,
                "{name} item {i}"
            );
        }
        // Without reuse, a batch is each item alone, exactly.
        let plain_batch = plain.score_grad_batch(&refs, &objectives).expect("batch");
        for (i, (a, item)) in plain_batch.iter().zip(&prepared).enumerate() {
            let alone = plain.score_grad(item, objectives[i]).expect("alone");
            assert_eq!(a.images, alone.images, "{name} item {i}");
        }
    }
}

#[test]
fn a_batch_checks_its_objectives_and_float_images() {
    let model = load(MODELS[0], true);
    let items = items();
    let prepared: Vec<PreparedItem> = items.iter().map(|i| model.prepare(i).unwrap()).collect();
    let refs: Vec<&PreparedItem> = prepared.iter().collect();
    let err = model
        .score_grad_batch(&refs, &[Objective::PYes])
        .expect_err("one objective for five items");
    assert!(err.to_string().contains("objectives"), "{err}");
    let encoded = model
        .prepare(&ScoreItem {
            prompt: "a fox".into(),
            mode: Mode::Pointwise,
            instruction: None,
            reference: None,
            candidate: Candidate::Image(image_file("fixtures/images/fox_100x60.png")),
        })
        .unwrap();
    let err = model
        .score_grad_batch(&[&prepared[0], &encoded], &[Objective::PYes; 2])
        .expect_err("no float image");
    assert!(err.to_string().contains("no float image"), "{err}");
}
