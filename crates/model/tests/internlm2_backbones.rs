//! The InternLM2 / InternViT-6B fixtures beyond the shared parity loop: what the checkpoints
//! exercise (no tokenizer.json, dynamic NTK on the long items, RMSNorm + QK-norm vision) and the
//! measured distance to the reference forward (printed with `--nocapture`).

mod common;

use common::{load_model, repo_root, score_item, Reference};
use rewarddance_model::nn::language::config::{RopeScaling, TextArch};
use rewarddance_model::nn::layers::NormKind;
use rewarddance_model::{Checkpoint, ModelConfig};

fn config(name: &str) -> ModelConfig {
    let dir = repo_root().join("fixtures/models").join(name);
    let ckpt = Checkpoint::from_dir(&dir).expect("checkpoint");
    ModelConfig::parse(&ckpt.config_json, None).expect("config")
}

#[test]
fn fixtures_cover_the_internlm2_and_6b_features() {
    let dir = repo_root().join("fixtures/models/tiny-internvl-internlm2");
    assert!(
        !dir.join("tokenizer.json").exists(),
        "SentencePiece-only checkpoint"
    );
    let c = config("tiny-internvl-internlm2");
    assert_eq!(c.text.arch, TextArch::InternLm2);
    assert!(c.text.num_kv_heads < c.text.num_heads && !c.text.attention_bias);
    let RopeScaling::Dynamic {
        original_max_position_embeddings: max,
        ..
    } = c.text.rope_scaling
    else {
        panic!(
            "dynamic rope scaling expected, got {:?}",
            c.text.rope_scaling
        );
    };
    // Some reference items are longer than the trained length (scaled base), some are not.
    let lens: Vec<usize> = Reference::load("tiny-internvl-internlm2")
        .items()
        .iter()
        .map(|i| i["expected"]["input_ids"].as_array().unwrap().len())
        .collect();
    assert!(
        lens.iter().any(|&l| l > max) && lens.iter().any(|&l| l <= max),
        "{lens:?}"
    );

    let c = config("tiny-internvl-vit6b");
    assert_eq!(c.vision.norm, NormKind::RmsNorm);
    assert!(c.vision.qk_norm && !c.vision.qkv_bias);
    assert_eq!(c.feature_layer, -1);
    assert!(c.text.attention_bias);
    assert!(matches!(c.text.rope_scaling, RopeScaling::Linear { .. }));
}

#[test]
fn measured_distance_to_the_reference_forward() {
    for name in ["tiny-internvl-internlm2", "tiny-internvl-vit6b"] {
        let model = load_model(name);
        let reference = Reference::load(name);
        let mut worst = 0f64;
        for item in reference.items() {
            let p = model
                .prepare(&score_item(item))
                .and_then(|p| p.with_pixels(reference.pixels_of(item)))
                .expect("prepare");
            let s = model.score_prepared(&[&p]).expect("score")[0];
            let e = &item["expected"];
            for (got, want) in [
                (s.logit_yes as f64, e["logit_yes"].as_f64().unwrap()),
                (s.logit_no as f64, e["logit_no"].as_f64().unwrap()),
                (s.p_yes, e["p_yes"].as_f64().unwrap()),
            ] {
                worst = worst.max((got - want).abs());
            }
        }
        eprintln!("{name}: max |Δ| over logits and p_yes = {worst:.2e}");
        assert!(worst < 1e-4, "{name}: {worst}");
    }
}
