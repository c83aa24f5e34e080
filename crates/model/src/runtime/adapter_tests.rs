//! Parsing and matching rules of [`super::Adapter`] on made-up tensors; the parity of merged
//! adapters against peft is in `tests/adapters.rs`.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use super::*;
use crate::runtime::reads::{ReadLog, RecordingWeights};

fn config(json: &str) -> PeftConfig {
    serde_json::from_str(json).expect("config parses")
}

fn pair(module: &str, r: usize, out: usize, inp: usize) -> [(String, Tensor); 2] {
    let dev = Device::Cpu;
    let a = Tensor::arange(0f32, (r * inp) as f32, &dev).unwrap();
    let b = Tensor::arange(0f32, (out * r) as f32, &dev).unwrap();
    [
        (
            format!("{PEFT_PREFIX}{module}.lora_A.weight"),
            (a.reshape((r, inp)).unwrap() * 0.01).unwrap(),
        ),
        (
            format!("{PEFT_PREFIX}{module}.lora_B.weight"),
            (b.reshape((out, r)).unwrap() * 0.01).unwrap(),
        ),
    ]
}

const BASE: [&str; 3] = [
    "language_model.model.layers.0.self_attn.q_proj.weight",
    "language_model.model.layers.0.mlp.up_proj.weight",
    "language_model.model.layers.0.mlp.up_proj.bias",
];

fn resolve(name: &str) -> Option<String> {
    BASE.contains(&name).then(|| name.to_string())
}

fn parts(
    config_json: &str,
    tensors: Vec<(String, Tensor)>,
) -> std::result::Result<Adapter, String> {
    Adapter::from_parts(
        "test".into(),
        &config(config_json),
        tensors.into_iter().collect::<HashMap<_, _>>(),
        &resolve,
    )
}

const Q: &str = "language_model.model.layers.0.self_attn.q_proj";
const UP: &str = "language_model.model.layers.0.mlp.up_proj";

#[test]
fn list_and_regex_targets_select_as_peft_does() {
    assert!(list_entry_selects("q_proj", Q));
    assert!(list_entry_selects("self_attn.q_proj", Q));
    assert!(!list_entry_selects("proj", Q));
    let tensors: Vec<_> = pair(Q, 2, 4, 3)
        .into_iter()
        .chain(pair(UP, 2, 5, 3))
        .collect();
    let ok = parts(
        r#"{"r": 2, "lora_alpha": 4, "target_modules": ["q_proj", "up_proj"]}"#,
        tensors.clone(),
    );
    assert_eq!(
        ok.expect("loads").summary.modules,
        vec![UP.to_string(), Q.to_string()]
    );
    // ms-swift writes a regex with a negative lookahead: the regex crate has none.
    let swift = r#"{"r": 2, "lora_alpha": 4, "target_modules": "^(language_model)(?!.*(lm_head|output|emb|wte|shared)).*"}"#;
    assert!(parts(swift, tensors.clone()).is_ok());
    let narrow = r#"{"r": 2, "lora_alpha": 4, "target_modules": ".*\\.q_proj"}"#;
    let err = parts(narrow, tensors.clone()).expect_err("up_proj is not targeted");
    assert!(
        err.contains(UP) && err.contains("no target_modules entry"),
        "{err}"
    );
    let unused = r#"{"r": 2, "lora_alpha": 4, "target_modules": ["q_proj", "up_proj", "wqkv"]}"#;
    let err = parts(unused, tensors).expect_err("wqkv selects nothing");
    assert!(err.contains("\"wqkv\""), "{err}");
}

#[test]
fn scales_follow_rank_and_alpha_patterns_and_rslora() {
    let tensors: Vec<_> = pair(Q, 4, 4, 3)
        .into_iter()
        .chain(pair(UP, 2, 5, 3))
        .collect();
    let json = r#"{"r": 2, "lora_alpha": 8, "rank_pattern": {"q_proj": 4}, "alpha_pattern": {"layers.0.mlp.up_proj": 3}}"#;
    let adapter = parts(json, tensors.clone()).expect("loads");
    let scale = |a: &Adapter, name: &str| match &a.deltas[&format!("{name}.weight")] {
        Delta::LowRank { scale, .. } => *scale,
        Delta::Replace(_) => panic!("not low rank"),
    };
    assert_eq!(scale(&adapter, Q), 8.0 / 4.0);
    assert_eq!(scale(&adapter, UP), 3.0 / 2.0);
    let rs = r#"{"r": 2, "lora_alpha": 8, "rank_pattern": {"q_proj": 4}, "use_rslora": true}"#;
    let adapter = parts(rs, tensors).expect("loads");
    assert_eq!(scale(&adapter, Q), 8.0 / 2.0);
    assert_eq!(scale(&adapter, UP), 8.0 / 2f64.sqrt());
    // A pattern is a suffix at a module boundary.
    assert!(pattern_matches("q_proj", Q));
    assert!(!pattern_matches("_proj", Q));
}

#[test]
fn every_unsupported_or_inconsistent_part_is_named() {
    let tensors: Vec<_> = pair(Q, 2, 4, 3).into_iter().collect();
    for (json, named) in [
        (r#"{"r": 2, "lora_alpha": 4, "use_dora": true}"#, "use_dora"),
        (r#"{"r": 2, "lora_alpha": 4, "peft_type": "IA3"}"#, "IA3"),
        (
            r#"{"r": 2, "lora_alpha": 4, "lora_bias": true}"#,
            "lora_bias",
        ),
        (r#"{"r": 2, "lora_alpha": 4, "bias": "some"}"#, "bias"),
        (
            r#"{"r": 2, "lora_alpha": 4, "layer_replication": [[0, 1]]}"#,
            "layer_replication",
        ),
    ] {
        let err = check_supported(&config(json)).expect_err(json);
        assert!(err.contains(named), "{json}: {err}");
    }
    // Rank other than the config's.
    let err = parts(r#"{"r": 3, "lora_alpha": 4}"#, tensors.clone()).expect_err("rank 2 != 3");
    assert!(err.contains("rank 3"), "{err}");
    // A module the checkpoint lacks (a prefix mismatch).
    let moved: Vec<_> = pair("model.layers.0.self_attn.q_proj", 2, 4, 3)
        .into_iter()
        .collect();
    let err = parts(r#"{"r": 2, "lora_alpha": 4}"#, moved).expect_err("no such tensor");
    assert!(
        err.contains("model.layers.0.self_attn.q_proj.weight"),
        "{err}"
    );
    // Half a pair.
    let half = vec![tensors[0].clone()];
    let err = parts(r#"{"r": 2, "lora_alpha": 4}"#, half).expect_err("no lora_B");
    assert!(err.contains("lora_B"), "{err}");
    // A DoRA magnitude or an embedding LoRA tensor.
    let dora = vec![(
        format!("{PEFT_PREFIX}{Q}.lora_magnitude_vector"),
        Tensor::zeros(4, DType::F32, &Device::Cpu).unwrap(),
    )];
    let err = parts(r#"{"r": 2, "lora_alpha": 4}"#, dora).expect_err("DoRA tensor");
    assert!(err.contains("lora_magnitude_vector"), "{err}");
    // Not under peft's prefix.
    let bare = vec![(format!("{Q}.lora_A.weight"), tensors[0].1.clone())];
    let err = parts(r#"{"r": 2, "lora_alpha": 4}"#, bare).expect_err("no prefix");
    assert!(err.contains("base_model.model."), "{err}");
}

#[test]
fn merged_weights_add_the_scaled_product_and_replace_whole_tensors() {
    let dev = Device::Cpu;
    let w = Tensor::ones((4, 3), DType::F32, &dev).unwrap();
    let up = Tensor::zeros((5, 3), DType::F32, &dev).unwrap();
    let bias = Tensor::zeros(5, DType::F32, &dev).unwrap();
    let base: HashMap<String, Tensor> = [
        (BASE[0].to_string(), w.clone()),
        (BASE[1].to_string(), up),
        (BASE[2].to_string(), bias),
    ]
    .into_iter()
    .collect();
    let vb = VarBuilder::from_tensors(base, DType::F32, &dev);
    let mut tensors: Vec<_> = pair(Q, 2, 4, 3).into_iter().collect();
    let new_bias = Tensor::new(&[1f32, 2., 3., 4., 5.], &dev).unwrap();
    tensors.push((format!("{PEFT_PREFIX}{UP}.bias"), new_bias.clone()));
    let adapter = parts(
        r#"{"r": 2, "lora_alpha": 6, "target_modules": ["q_proj"], "bias": "all"}"#,
        tensors.clone(),
    )
    .expect("loads");
    assert_eq!(adapter.summary.replaced, vec![format!("{UP}.bias")]);
    let changed = adapter.changed_tensors();
    let unread = |log: &ReadLog| log.unread(changed.iter().map(String::as_str));
    let weights = adapter.merge_into(vb);
    let (merged, log) = RecordingWeights::wrap(VarBuilder::from_backend(
        Box::new(weights),
        DType::F32,
        dev.clone(),
    ));
    assert_eq!(unread(&log).len(), 2, "nothing read yet");
    let q = merged.get((4, 3), BASE[0]).unwrap();
    let expected = (w + (tensors[1].1.matmul(&tensors[0].1).unwrap() * 3.0).unwrap()).unwrap();
    let diff = (q - expected)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(diff < 1e-6, "{diff}");
    assert_eq!(
        unread(&log),
        vec![BASE[2].to_string()],
        "the bias is unread"
    );
    let b = merged.get(5, BASE[2]).unwrap();
    assert_eq!(
        b.to_vec1::<f32>().unwrap(),
        new_bias.to_vec1::<f32>().unwrap()
    );
    assert!(unread(&log).is_empty(), "all read");
    // A base of another shape than the adapter's pair fails when read.
    let vb = VarBuilder::from_tensors(
        [(
            BASE[0].to_string(),
            Tensor::ones((4, 7), DType::F32, &dev).unwrap(),
        )]
        .into_iter()
        .collect(),
        DType::F32,
        &dev,
    );
    let adapter = parts(
        r#"{"r": 2, "lora_alpha": 6}"#,
        pair(Q, 2, 4, 3).into_iter().collect(),
    )
    .unwrap();
    let merged = VarBuilder::from_backend(Box::new(adapter.merge_into(vb)), DType::F32, dev);
    let err = merged.get((4, 7), BASE[0]).expect_err("shapes differ");
    assert!(err.to_string().contains("do not fit"), "{err}");
}
