//! The gradient of the reward with respect to float input images (`ScoreGrad`): finite
//! differences along random directions, the score it reports, and the exact float values of
//! an 8-bit image against the 8-bit path.

mod common;

use std::sync::Arc;

use common::{image_file, load_model};
use rewarddance_model::image::{decode, DecodeLimits, FloatImage};
use rewarddance_model::pipeline::gradient::Objective;
use rewarddance_model::testing::fixtures::MODELS;
use rewarddance_model::{Candidate, ImageInput, Mode, RewardModel, ScoreItem};

fn float_of(path: &str) -> FloatImage {
    let img = decode(&image_file(path), &DecodeLimits::default()).expect("decodes");
    FloatImage::from_rgb8(&img)
}

fn item(candidate: FloatImage, reference: Option<ImageInput>) -> ScoreItem {
    ScoreItem {
        prompt: "a red fox in the snow".into(),
        mode: if reference.is_some() {
            Mode::Pairwise
        } else {
            Mode::Pointwise
        },
        instruction: None,
        reference,
        candidate: Candidate::Image(ImageInput::Float(Arc::new(candidate))),
    }
}

fn objective_at(
    model: &RewardModel,
    x: &FloatImage,
    reference: Option<&ImageInput>,
    o: Objective,
) -> f64 {
    let prepared = model.prepare(&item(x.clone(), reference.cloned())).unwrap();
    model.score_grad(&prepared, o).unwrap().objective
}

/// A seeded direction in [-1, 1]^n.
fn direction(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn shifted(x: &FloatImage, v: &[f32], eps: f32) -> FloatImage {
    let data = x.data().iter().zip(v).map(|(a, b)| a + eps * b).collect();
    FloatImage::new(x.width(), x.height(), data).unwrap()
}

#[test]
fn gradients_agree_with_central_differences_on_every_fixture() {
    // eps 1e-2 in [0, 1] pixel units: small enough that the curvature term is negligible,
    // large enough that float32 rounding of the forward is.
    let eps = 1e-2f32;
    for name in MODELS {
        let model = load_model(name);
        for (path, reference) in [
            ("fixtures/images/fox_100x60.png", None),
            (
                "fixtures/images/square_130x130.png",
                Some(image_file("fixtures/images/wide_200x50.png")),
            ),
        ] {
            let x = float_of(path);
            let prepared = model.prepare(&item(x.clone(), reference.clone())).unwrap();
            let grad = model.score_grad(&prepared, Objective::LogitMargin).unwrap();
            let g = grad
                .images
                .last()
                .unwrap()
                .as_ref()
                .expect("candidate gradient");
            assert_eq!((g.width, g.height), (x.width(), x.height()));
            let g = &g.values;
            assert_eq!(g.len(), x.data().len());
            if reference.is_some() {
                assert!(grad.images[0].is_none(), "the reference is a constant");
            }
            for seed in [1, 2] {
                let v = direction(g.len(), seed);
                let gv: f64 = g.iter().zip(&v).map(|(a, b)| f64::from(a * b)).sum();
                let plus = objective_at(
                    &model,
                    &shifted(&x, &v, eps),
                    reference.as_ref(),
                    Objective::LogitMargin,
                );
                let minus = objective_at(
                    &model,
                    &shifted(&x, &v, -eps),
                    reference.as_ref(),
                    Objective::LogitMargin,
                );
                let fd = (plus - minus) / (2.0 * f64::from(eps));
                // Relative to |g.v|, or to its typical size for a random direction,
                // |g| |v| / sqrt(n), when this direction happens to be nearly orthogonal to g.
                let norm = |a: &[f32]| a.iter().map(|x| f64::from(x * x)).sum::<f64>().sqrt();
                let typical = norm(g) * norm(&v) / (g.len() as f64).sqrt();
                let rel = (fd - gv).abs() / gv.abs().max(typical);
                println!("{name} {path} seed {seed}: g.v {gv:.6e} fd {fd:.6e} rel {rel:.2e}");
                assert!(rel < 1e-2, "{name} {path} seed {seed}: g.v {gv} vs fd {fd}");
            }
        }
    }
}

#[test]
fn the_reported_score_is_the_items_score_and_objectives_scale_one_gradient() {
    for name in MODELS {
        let model = load_model(name);
        let x = float_of("fixtures/images/fox_100x60.png");
        let prepared = model.prepare(&item(x, None)).unwrap();
        let scored = model.score_prepared(&[&prepared]).unwrap()[0];
        let margin = model.score_grad(&prepared, Objective::LogitMargin).unwrap();
        assert!((margin.score.p_yes - scored.p_yes).abs() < 1e-5, "{name}");
        let p = margin.score.p_yes;
        let gm = margin.images[0].clone().unwrap().values;
        for (objective, scale) in [
            (Objective::PYes, p * (1.0 - p)),
            (Objective::LogPYes, 1.0 - p),
        ] {
            let g = model.score_grad(&prepared, objective).unwrap().images[0]
                .clone()
                .unwrap()
                .values;
            let worst = g
                .iter()
                .zip(&gm)
                .map(|(a, b)| (f64::from(*a) - scale * f64::from(*b)).abs())
                .fold(0f64, f64::max);
            let top = gm.iter().map(|v| f64::from(v.abs())).fold(0f64, f64::max) * scale;
            assert!(
                worst <= 1e-5 * top.max(1e-12),
                "{name} {objective:?}: {worst} vs {top}"
            );
        }
    }
}

#[test]
fn an_item_without_float_images_is_refused() {
    let model = load_model("tiny-internvl-hf");
    let plain = ScoreItem {
        candidate: Candidate::Image(image_file("fixtures/images/fox_100x60.png")),
        ..item(float_of("fixtures/images/fox_100x60.png"), None)
    };
    let err = model
        .score_grad(&model.prepare(&plain).unwrap(), Objective::PYes)
        .unwrap_err()
        .to_string();
    assert!(err.contains("no float image"), "{err}");
}
