//! The InternVL2.5 family at its published shapes (OpenGVLab `config.json`s of
//! InternVL2_5-{1B,2B,4B,8B,26B}); `cargo test -p rewarddance-model memory -- --nocapture`
//! prints the README's memory table.

use super::*;
use crate::{FamilyConfig, ModelConfig};

/// (name, vision (width, layers, heads, mlp, 6B-style), LLM (arch, width, layers, heads, kv, mlp, vocab)).
type Size = (
    &'static str,
    (usize, usize, usize, usize, bool),
    (&'static str, usize, usize, usize, usize, usize, usize),
);

const SIZES: [Size; 5] = [
    (
        "1B",
        (1024, 24, 16, 4096, false),
        ("Qwen2ForCausalLM", 896, 24, 14, 2, 4864, 151_674),
    ),
    (
        "2B",
        (1024, 24, 16, 4096, false),
        ("InternLM2ForCausalLM", 2048, 24, 16, 8, 8192, 92_553),
    ),
    (
        "4B",
        (1024, 24, 16, 4096, false),
        ("Qwen2ForCausalLM", 2048, 36, 16, 2, 11_008, 151_674),
    ),
    (
        "8B",
        (1024, 24, 16, 4096, false),
        ("InternLM2ForCausalLM", 4096, 32, 32, 8, 14_336, 92_553),
    ),
    (
        "26B",
        (3200, 45, 25, 12_800, true),
        ("InternLM2ForCausalLM", 6144, 48, 48, 8, 16_384, 92_553),
    ),
];

fn config(size: &Size) -> ModelConfig {
    let (_, (vw, vl, vh, vm, six_b), (arch, w, l, h, kv, m, vocab)) = *size;
    let json = serde_json::json!({
        "architectures": ["InternVLChatModel"], "downsample_ratio": 0.5, "force_image_size": 448,
        "max_dynamic_patch": 12, "ps_version": "v2", "select_layer": -1,
        "vision_config": {
            "hidden_size": vw, "num_hidden_layers": vl, "num_attention_heads": vh,
            "intermediate_size": vm, "image_size": 448, "patch_size": 14, "qkv_bias": !six_b,
            "qk_normalization": six_b, "norm_type": if six_b { "rms_norm" } else { "layer_norm" }
        },
        "llm_config": {
            "architectures": [arch], "hidden_size": w, "num_hidden_layers": l,
            "num_attention_heads": h, "num_key_value_heads": kv, "intermediate_size": m,
            "vocab_size": vocab, "max_position_embeddings": 32_768, "bias": false,
            "rope_scaling": if arch.starts_with("InternLM2") {
                serde_json::json!({"type": "dynamic", "factor": 2.0})
            } else {
                serde_json::Value::Null
            },
            "tie_word_embeddings": false
        }
    });
    ModelConfig::parse(&json.to_string(), None).expect("config")
}

#[test]
fn parameter_counts_match_the_published_sizes() {
    // Published totals (model cards): 0.94B, 2.21B, 3.71B, 8.08B, 25.5B.
    let published = [0.94e9, 2.21e9, 3.71e9, 8.08e9, 25.5e9];
    for (size, want) in SIZES.iter().zip(published) {
        let got = parameter_count(&config(size).into()) as f64;
        assert!(
            (got / want - 1.0).abs() < 0.03,
            "{}: {got:.3e} vs {want:.3e}",
            size.0
        );
    }
}

#[test]
fn memory_table_for_the_internvl2_5_family() {
    let budget = BatchBudget::default();
    println!(
        "| size | parameters | weights (bf16) | vision act. | language act. | overhead | total |"
    );
    for size in &SIZES {
        let e = estimate(&config(size).into(), DType::BF16, &budget);
        let g = |b: u64| b as f64 / GIB;
        println!(
            "| {} | {:.2}B | {:.1} GiB | {:.1} GiB | {:.1} GiB | {:.1} GiB | {:.1} GiB |",
            size.0,
            e.parameters as f64 / 1e9,
            g(e.weights),
            g(e.vision_activations),
            g(e.language_activations),
            g(e.overhead),
            g(e.total())
        );
        assert!(e.total() > e.weights);
    }
}

#[test]
fn check_fits_refuses_with_a_clear_message() {
    let c: FamilyConfig = config(&SIZES[4]).into();
    let budget = BatchBudget::default();
    let fits = check_fits(&c, DType::BF16, &budget, 141 << 30);
    assert!(fits.is_ok(), "{fits:?}");
    let err = check_fits(&c, DType::BF16, &budget, 40 << 30)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("weights alone") && err.contains("GiB"),
        "{err}"
    );
    let err = check_fits(&c, DType::F32, &budget, 80 << 30)
        .unwrap_err()
        .to_string();
    assert!(err.contains("bf16"), "{err}");
    let big = BatchBudget {
        tokens: 65_536,
        tiles: 512,
        max_sequence_tokens: 32_768,
        sequences: 256,
    };
    let err = check_fits(&config(&SIZES[0]).into(), DType::BF16, &big, 16 << 30)
        .unwrap_err()
        .to_string();
    assert!(err.contains("lower the batch budget"), "{err}");
}

#[test]
fn a_gradient_budget_that_cannot_fit_is_refused_with_the_flag_to_change() {
    let c: FamilyConfig = config(&SIZES[0]).into();
    let tokens = 16 * c.tokens_per_tile() + 512;
    let item = check_gradient_fits(&c, DType::BF16, 16, tokens, 141 << 30).expect("fits an H200");
    assert!(item > 1 << 30, "16 tiles of the 1B hold over a GiB: {item}");
    let err = check_gradient_fits(&c, DType::BF16, 16, tokens, 3 << 30)
        .unwrap_err()
        .to_string();
    assert!(err.contains("--max-gradient-tiles"), "{err}");
    assert!(check_gradient_fits(&c, DType::BF16, 1, 768, 4 << 30).is_ok());
}

#[test]
fn unmerged_adapters_count_their_factors_and_a_merged_one_nothing() {
    use crate::pipeline::rewards::RewardSpec;
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/adapters");
    let with = |name: &str, dir: &str| RewardSpec {
        adapter: Some(fixtures.join(dir)),
        ..RewardSpec::named(name)
    };
    let size = |dir: &str| {
        std::fs::metadata(fixtures.join(dir).join("adapter_model.safetensors"))
            .unwrap()
            .len()
    };
    let merged = [with("a", "hf-llm-swift"), with("b", "hf-llm-swift")];
    assert_eq!(unmerged_adapter_bytes(&merged), 0);
    let mixed = [
        RewardSpec::named("base"),
        with("a", "hf-llm-swift"),
        with("b", "hf-llm-swift"),
        with("c", "hf-rslora"),
    ];
    let expected = size("hf-llm-swift") + size("hf-rslora");
    assert!(expected > 0);
    assert_eq!(unmerged_adapter_bytes(&mixed), expected);
    assert_eq!(unmerged_adapter_bytes(&[RewardSpec::named("base")]), 0);
}
