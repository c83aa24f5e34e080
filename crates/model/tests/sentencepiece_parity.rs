//! SentencePiece `tokenizer.model` converted at load vs the reference tokenizer
//! (`InternLM2Tokenizer` semantics: sentencepiece per chunk between added tokens, `<s>` first),
//! over texts with unicode, digits, runs of spaces, tabs/newlines and special tokens.
//! Two models: without (InternLM2-style) and with `add_dummy_prefix`.

mod common;

use common::repo_root;
use rewarddance_model::text::sentencepiece::{tokenizer_json, SentencePieceModel};
use serde_json::Value;

fn reference() -> Value {
    let text = std::fs::read_to_string(repo_root().join("fixtures/reference/sentencepiece.json"))
        .expect("sentencepiece.json");
    serde_json::from_str(&text).expect("json")
}

fn ids(v: &Value) -> Vec<Vec<u32>> {
    serde_json::from_value(v.clone()).expect("ids")
}

#[test]
fn converted_tokenizer_model_gives_the_reference_ids() {
    let reference = reference();
    let texts: Vec<String> = serde_json::from_value(reference["texts"].clone()).expect("texts");
    let tokenizers = reference["tokenizers"].as_object().expect("tokenizers");
    assert_eq!(tokenizers.len(), 2);
    for (name, case) in tokenizers {
        let dir = repo_root().join(case["model_dir"].as_str().expect("dir"));
        let model = std::fs::read(dir.join("tokenizer.model")).expect("tokenizer.model");
        let config = std::fs::read_to_string(dir.join("tokenizer_config.json")).ok();
        let json = tokenizer_json(&model, config.as_deref()).expect("conversion");
        let tok = tokenizers::Tokenizer::from_bytes(&json).expect("tokenizer");
        for (want, with_bos) in [
            (ids(&case["ids"]), true),
            (ids(&case["ids_without_bos"]), false),
        ] {
            for (text, want) in texts.iter().zip(&want) {
                let got = tok.encode(text.as_str(), with_bos).expect("encode");
                assert_eq!(
                    got.get_ids(),
                    want.as_slice(),
                    "{name}: {text:?} (bos {with_bos})"
                );
            }
        }
    }
}

#[test]
fn model_proto_fields_are_read() {
    let dir = repo_root().join("fixtures/models/tiny-internvl-internlm2");
    let model = SentencePieceModel::parse(&std::fs::read(dir.join("tokenizer.model")).unwrap())
        .expect("parse");
    assert_eq!(model.model_type, 2);
    assert!(model.byte_fallback);
    assert!(!model.add_dummy_prefix);
    assert!(!model.remove_extra_whitespaces);
    assert_eq!(model.normalizer, "identity");
    assert_eq!(model.pieces.len(), 900);
    assert_eq!(model.pieces[1].piece, "<s>");
    assert_eq!(model.pieces[3].piece, "<|im_start|>");
}

#[test]
fn unsupported_or_corrupt_models_fail_clearly() {
    let err = tokenizer_json(b"not a protobuf", None).unwrap_err();
    assert!(err.to_string().contains("tokenizer.model"), "{err}");
    // A unigram model (model_type 1, the protobuf default) is refused with a pointer to tokenizer.json.
    let unigram = [0x0a, 0x05, 0x0a, 0x01, b'a', 0x18, 0x01];
    let err = tokenizer_json(&unigram, None).unwrap_err();
    assert!(err.to_string().contains("tokenizer.json"), "{err}");
}
