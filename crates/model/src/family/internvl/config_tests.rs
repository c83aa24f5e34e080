//! Unit tests of `config.rs`.

use super::*;
use crate::nn::language::config::RopeScaling;

#[test]
fn rejects_unknown_architecture() {
    let err = ModelConfig::parse(r#"{"architectures":["LlamaForCausalLM"]}"#, None).unwrap_err();
    assert!(
        err.to_string().contains("unsupported architecture"),
        "{err}"
    );
}

#[test]
fn rejects_unknown_llm_with_clear_message() {
    let cfg = r#"{"architectures":["InternVLChatModel"],"llm_config":{"architectures":["Phi3ForCausalLM"]},"vision_config":{}}"#;
    let err = ModelConfig::parse(cfg, None).unwrap_err();
    assert!(err.to_string().contains("Phi3ForCausalLM"), "{err}");
    assert!(err.to_string().contains("InternLM2"), "{err}");
}

#[test]
fn parses_internlm2_rope_scaling() {
    let t: Value = serde_json::from_str(
        r#"{"hidden_size":64,"num_attention_heads":4,"num_key_value_heads":2,"num_hidden_layers":1,
            "intermediate_size":8,"vocab_size":10,"max_position_embeddings":100,"bias":false,
            "rope_scaling":{"type":"dynamic","factor":2.0}}"#,
    )
    .unwrap();
    let c = parse_internlm2(&t, "llm_config").unwrap();
    assert_eq!(
        (c.head_dim, c.max_position_embeddings, c.attention_bias),
        (16, 200, false)
    );
    assert_eq!(
        c.rope_scaling,
        RopeScaling::Dynamic {
            factor: 2.0,
            original_max_position_embeddings: 100
        }
    );
    let bad: Value = serde_json::from_str(
        r#"{"hidden_size":64,"num_attention_heads":4,"num_hidden_layers":1,"intermediate_size":8,
            "vocab_size":10,"rope_scaling":{"type":"yarn","factor":2.0}}"#,
    )
    .unwrap();
    let err = parse_internlm2(&bad, "llm_config").unwrap_err();
    assert!(err.to_string().contains("yarn"), "{err}");
}

#[test]
fn names_missing_field() {
    let cfg = r#"{"architectures":["InternVLForConditionalGeneration"],"vision_config":{"hidden_size":8},"text_config":{}}"#;
    let err = ModelConfig::parse(cfg, None).unwrap_err();
    assert!(
        err.to_string().contains("vision_config.num_hidden_layers"),
        "{err}"
    );
}

const QWEN2_TEXT: &str = r#""hidden_size":64,"num_attention_heads":4,"num_key_value_heads":2,
    "num_hidden_layers":1,"intermediate_size":8,"vocab_size":10,"max_position_embeddings":100"#;

#[test]
fn parses_qwen2_dynamic_rope_in_every_spelling() {
    // InternVL3 / `-hf` text configs: `rope_scaling` with `type` or `rope_type`, and
    // transformers 5's `rope_parameters`.
    for scaling in [
        r#""rope_scaling":{"type":"dynamic","factor":2.0}"#,
        r#""rope_scaling":{"rope_type":"dynamic","factor":2.0}"#,
        r#""rope_parameters":{"rope_type":"dynamic","factor":2.0,"rope_theta":1000000.0}"#,
    ] {
        let t: Value = serde_json::from_str(&format!("{{{QWEN2_TEXT},{scaling}}}")).unwrap();
        let c = parse_qwen2(&t, "text_config", None).unwrap();
        assert_eq!(
            c.rope_scaling,
            RopeScaling::Dynamic {
                factor: 2.0,
                original_max_position_embeddings: 100
            },
            "{scaling}"
        );
        assert_eq!(c.max_position_embeddings, 200, "{scaling}");
    }
    let t: Value = serde_json::from_str(&format!(
        "{{{QWEN2_TEXT},\"rope_scaling\":{{\"rope_type\":\"yarn\",\"factor\":4.0}}}}"
    ))
    .unwrap();
    let err = parse_qwen2(&t, "text_config", None).unwrap_err();
    assert!(err.to_string().contains("yarn"), "{err}");
}

#[test]
fn hf_layout_crops_to_patches_even_when_the_saved_config_says_false() {
    // What the conversion script saves; InternVLProcessor overrides it with its default True.
    let cfg = format!(
        r#"{{"architectures":["InternVLForConditionalGeneration"],
        "vision_config":{{"hidden_size":32,"num_hidden_layers":1,"num_attention_heads":4,
            "intermediate_size":8,"image_size":[448,448],"patch_size":[14,14]}},
        "text_config":{{"model_type":"qwen2",{QWEN2_TEXT}}}}}"#
    );
    let pre = r#"{"crop_to_patches":false,"min_patches":1,"max_patches":12,
        "size":{"height":448,"width":448}}"#;
    let c = ModelConfig::parse(&cfg, Some(pre)).unwrap();
    assert_eq!((c.tiling.min_tiles, c.tiling.max_tiles), (1, 12));
}

#[test]
fn opengvlab_template_and_system_message_are_read_and_null_is_unset() {
    let base = r#""architectures":["InternVLChatModel"],"template":"internlm2-chat",
        "vision_config":{"hidden_size":32,"num_hidden_layers":1,"num_attention_heads":4,
            "intermediate_size":8,"image_size":448,"patch_size":14},
        "llm_config":{"architectures":["Qwen2ForCausalLM"],"hidden_size":64,"num_attention_heads":4,
            "num_key_value_heads":2,"num_hidden_layers":1,"intermediate_size":8,"vocab_size":10}"#;
    let c = ModelConfig::parse(&format!("{{{base},\"system_message\":\"S\"}}"), None).unwrap();
    assert_eq!(
        (c.template.as_deref(), c.system_message.as_deref()),
        (Some("internlm2-chat"), Some("S"))
    );
    let c = ModelConfig::parse(&format!("{{{base},\"system_message\":null}}"), None).unwrap();
    assert_eq!(c.system_message, None);
}
