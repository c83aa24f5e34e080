//! bf16 against f32 on the same weights and inputs, ours next to PyTorch's.
//!
//! For every committed fixture item we score the reference's token ids and pixel values twice,
//! in f32 and in bf16, and compare |Δ logit| (yes/no answer tokens) and |Δ p_yes|. The same
//! numbers for PyTorch (transformers / the fixture generators' reference forwards, bf16 vs f32
//! on the same weights and inputs) come from `tools/precision/torch_bf16.py`, committed in
//! `fixtures/reference/bf16-torch.json`. Our bf16 error must stay within 1.5x of torch's.

mod common;

use candle_core::DType;
use common::{fixtures, Reference, MODELS};
use rewarddance_model::{LoadOptions, RewardModel, Score};

/// |Δ| between two scores of one item: (max over the yes/no logits, p_yes).
fn deltas(a: &Score, b: &Score) -> (f64, f64) {
    let logit = ((a.logit_yes - b.logit_yes).abs()).max((a.logit_no - b.logit_no).abs()) as f64;
    (logit, (a.p_yes - b.p_yes).abs())
}

fn load(name: &str, dtype: DType) -> RewardModel {
    let ckpt = fixtures().checkpoint(name).expect("checkpoint");
    let options = LoadOptions {
        dtype: Some(dtype),
        ..LoadOptions::default()
    };
    RewardModel::load(&ckpt, options).expect("model loads")
}

/// Per item of fixture `name`: (id, |Δ logit|, |Δ p_yes|) of our bf16 against our f32.
fn our_bf16_errors(name: &str) -> Vec<(String, f64, f64)> {
    let reference = Reference::load(name);
    let f32_model = load(name, DType::F32);
    let bf16_model = load(name, DType::BF16);
    let prepared = reference.prepared(&f32_model);
    reference
        .items()
        .iter()
        .zip(&prepared)
        .map(|(item, p)| {
            let id = item["id"].as_str().unwrap_or("?").to_string();
            let full = f32_model.score_prepared(&[p]).expect("f32 score")[0];
            let half = bf16_model.score_prepared(&[p]).expect("bf16 score")[0];
            let (dl, dp) = deltas(&full, &half);
            (id, dl, dp)
        })
        .collect()
}

#[test]
fn report() {
    for name in MODELS {
        for (id, dl, dp) in our_bf16_errors(name) {
            println!("{name}/{id}: dlogit {dl:.3e} dp {dp:.3e}");
        }
    }
}
