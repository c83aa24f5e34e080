//! ScoreGrad against PyTorch autograd: on every committed fixture checkpoint, the gradient of
//! the reward with respect to the input pixels equals the float64 reference of
//! `tools/fixtures/generate_grads.py` (transformers / the OpenGVLab-style forwards, with the
//! same float resize): pointwise without and with resize (multi-tile + thumbnail), pairwise
//! (gradient of the candidate only) and video (a gradient per frame), for all three objectives.

mod common;

use std::sync::Arc;

use common::{image_file, load_model, repo_root};
use rewarddance_model::image::{decode, DecodeLimits, FloatImage};
use rewarddance_model::pipeline::gradient::Objective;
use rewarddance_model::testing::fixtures::MODELS;
use rewarddance_model::{Candidate, ImageInput, Mode, ScoreItem};
use serde_json::Value;

fn float_image(path: &str) -> ImageInput {
    let img = decode(&image_file(path), &DecodeLimits::default()).expect("decodes");
    ImageInput::Float(Arc::new(FloatImage::from_rgb8(&img)))
}

fn score_item(item: &Value) -> ScoreItem {
    let candidate = match (&item["candidate"]["image"], &item["candidate"]["video"]) {
        (Value::String(path), _) => Candidate::Image(float_image(path)),
        (_, Value::Array(frames)) => Candidate::Video(
            frames
                .iter()
                .map(|f| float_image(f.as_str().unwrap()))
                .collect(),
        ),
        _ => panic!("item {} has no candidate", item["id"]),
    };
    ScoreItem {
        prompt: item["prompt"].as_str().unwrap().to_string(),
        candidate,
        reference: item["reference"].as_str().map(image_file),
        instruction: item["instruction"].as_str().map(String::from),
        mode: if item["mode"] == "pairwise" {
            Mode::Pairwise
        } else {
            Mode::Pointwise
        },
    }
}

struct Stats {
    cosine: f64,
    max_diff_over_max: f64,
}

fn compare(ours: &[f32], theirs: &[f32]) -> Stats {
    assert_eq!(ours.len(), theirs.len());
    let (mut dot, mut a2, mut b2, mut diff, mut top) = (0f64, 0f64, 0f64, 0f64, 0f64);
    for (&a, &b) in ours.iter().zip(theirs) {
        let (a, b) = (f64::from(a), f64::from(b));
        dot += a * b;
        a2 += a * a;
        b2 += b * b;
        diff = diff.max((a - b).abs());
        top = top.max(b.abs());
    }
    Stats {
        cosine: dot / (a2.sqrt() * b2.sqrt()),
        max_diff_over_max: diff / top,
    }
}

#[test]
fn gradients_match_pytorch_autograd_on_every_fixture() {
    let root = repo_root().join("fixtures/reference");
    for name in MODELS {
        let model = load_model(name);
        let reference: Value =
            serde_json::from_slice(&std::fs::read(root.join(format!("{name}.grad.json"))).unwrap())
                .unwrap();
        let tensors = std::fs::read(root.join(format!("{name}.grad.safetensors"))).unwrap();
        let tensors = safetensors::SafeTensors::deserialize(&tensors).unwrap();
        let get = |key: &str| -> Vec<f32> {
            tensors
                .tensor(key)
                .unwrap()
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect()
        };
        for item in reference["items"].as_array().unwrap() {
            let id = item["id"].as_str().unwrap();
            let prepared = model.prepare(&score_item(item)).unwrap();
            let want_ids: Vec<u32> = item["input_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect();
            assert_eq!(prepared.input_ids, want_ids, "{name} {id}: token ids");
            if let Some(key) = item["pixel_values_key"].as_str() {
                let theirs = get(key);
                let worst = prepared
                    .pixels()
                    .iter()
                    .zip(&theirs)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max);
                println!("{name} {id}: float tiles max |diff| {worst:.2e}");
                assert!(worst <= 1e-5, "{name} {id}: float tiles differ by {worst}");
            }
            let f64s = &item["float64"];
            let margin = model.score_grad(&prepared, Objective::LogitMargin).unwrap();
            let p = margin.score.p_yes;
            let dp = (p - f64s["p_yes"].as_f64().unwrap()).abs();
            assert!(dp < 1e-5, "{name} {id}: p_yes {p} vs {}", f64s["p_yes"]);
            if id.ends_with("noresize") {
                let uint8 = model
                    .score_prepared(&[&model
                        .prepare(&ScoreItem {
                            candidate: Candidate::Image(image_file(
                                item["candidate"]["image"].as_str().unwrap(),
                            )),
                            ..score_item(item)
                        })
                        .unwrap()])
                    .unwrap()[0];
                let d = (uint8.p_yes - p).abs();
                println!("{name} {id}: |p_yes float - p_yes uint8| {d:.2e}");
                assert!(d < 1e-4, "{name} {id}: float {p} vs uint8 {}", uint8.p_yes);
            }
            // The three objectives' gradients are the margin's, scaled (checked exactly in
            // tests/gradient.rs); each is compared with the reference scaled the same way.
            for (objective, scale) in [
                (Objective::LogitMargin, 1.0),
                (Objective::PYes, p * (1.0 - p)),
                (Objective::LogPYes, 1.0 - p),
            ] {
                let ours = if objective == Objective::LogitMargin {
                    margin.clone()
                } else {
                    model.score_grad(&prepared, objective).unwrap()
                };
                let images = item["images"].as_array().unwrap();
                for (image, got) in images.iter().zip(&ours.images) {
                    match (image["grad_key"].as_str(), got) {
                        (Some(key), Some(got)) => {
                            let got = &got.values;
                            let want: Vec<f32> = get(key)
                                .iter()
                                .map(|g| (f64::from(*g) * scale) as f32)
                                .collect();
                            let s = compare(got, &want);
                            println!(
                                "{name} {id} {key} {objective:?}: cos {:.7} max|diff|/max|g| {:.2e}",
                                s.cosine, s.max_diff_over_max
                            );
                            assert!(s.cosine >= 0.9999, "{name} {id} {key}: cos {}", s.cosine);
                            assert!(
                                s.max_diff_over_max <= 1e-3,
                                "{name} {id} {key}: max diff {}",
                                s.max_diff_over_max
                            );
                        }
                        (None, None) => {}
                        (key, got) => panic!(
                            "{name} {id}: reference gradient {key:?}, ours {}",
                            if got.is_some() { "present" } else { "absent" }
                        ),
                    }
                }
            }
        }
    }
}
