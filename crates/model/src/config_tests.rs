//! Unit tests of `config.rs`.

use super::*;

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
