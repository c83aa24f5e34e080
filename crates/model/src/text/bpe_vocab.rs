//! Qwen2 `vocab.json` + `merges.txt` loading: InternVL2.5-1B/4B/8B and InternVL3 checkpoints are
//! saved with the slow Qwen2 tokenizer and may ship no `tokenizer.json`. They are converted at load
//! into the `tokenizers` pipeline that transformers builds for `Qwen2Tokenizer` from the same files
//! (transformers 5.17 `models/qwen2/tokenization_qwen2.py`; the fast conversion of the 4.x slow
//! tokenizer, `convert_slow_tokenizer.Qwen2Converter`, is the same pipeline):
//!
//! - normaliser: NFC;
//! - pre-tokeniser: Qwen2's split regex (isolated matches), then byte-level without a prefix space
//!   (`add_prefix_space` from `tokenizer_config.json`, default false) and without its own regex;
//! - model: byte-level BPE over the vocabulary and merges; no unknown token, no byte fallback;
//! - decoder: byte-level;
//! - no post-processor: Qwen2 adds no BOS/EOS;
//! - added tokens: `tokenizer_config.json`'s `added_tokens_decoder` with its flags (else the legacy
//!   `added_tokens.json`), then any special token named in the config but not listed there, as
//!   transformers adds `all_special_tokens`. Each lands on its declared id.

use serde_json::{json, Map, Value};

use crate::error::{Error, Result};
use crate::text::tokenizer_files::{added_tokens_decoder, json_or_null, serialise_checked};

/// Qwen2's pre-tokenisation pattern (`PRETOKENIZE_REGEX` in transformers' `tokenization_qwen2.py`).
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Builds `tokenizer.json` bytes from `vocab.json`, `merges.txt`, and optionally
/// `tokenizer_config.json` and `added_tokens.json`.
pub fn tokenizer_json(
    vocab_json: &[u8],
    merges_txt: &str,
    tokenizer_config_json: Option<&str>,
    added_tokens_json: Option<&str>,
) -> Result<Vec<u8>> {
    let mut vocab: Map<String, Value> = serde_json::from_slice(vocab_json)
        .map_err(|e| Error::Tokenizer(format!("vocab.json: {e}")))?;
    let merges = parse_merges(merges_txt)?;
    let config = json_or_null("tokenizer_config.json", tokenizer_config_json)?;
    let legacy = json_or_null("added_tokens.json", added_tokens_json)?;
    let added = added_tokens(&vocab, &config, &legacy)?;
    // Added tokens also enter the model's vocabulary at their ids, so each lands on its declared
    // id even across gaps (`tokenizers` otherwise numbers added tokens from the vocabulary's end).
    // BPE cannot reach them: no merge produces them.
    for t in &added {
        if let (Some(content), Some(id)) = (t["content"].as_str(), t["id"].as_u64()) {
            vocab.entry(content.to_string()).or_insert(json!(id));
        }
    }
    let add_prefix_space = config["add_prefix_space"].as_bool().unwrap_or(false);
    let tokenizer = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": QWEN2_SPLIT}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": add_prefix_space, "trim_offsets": true, "use_regex": false},
        ]},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": "",
            "end_of_word_suffix": "", "fuse_unk": false, "byte_fallback": false,
            "ignore_merges": false, "vocab": vocab, "merges": merges,
        },
    });
    serialise_checked(&tokenizer, &added, "vocab.json + merges.txt")
}

/// `merges.txt`: one `left right` pair a line, after an optional `#version` header; blank lines
/// and CR line ends are tolerated.
fn parse_merges(text: &str) -> Result<Vec<Value>> {
    let mut merges = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.is_empty() || (n == 0 && line.starts_with("#version")) {
            continue;
        }
        let (a, b) = line.split_once(' ').ok_or_else(|| {
            Error::Tokenizer(format!("merges.txt line {}: no space in {line:?}", n + 1))
        })?;
        merges.push(json!([a, b]));
    }
    Ok(merges)
}

/// Added tokens in id order, as `tokenizers` JSON entries.
fn added_tokens(vocab: &Map<String, Value>, config: &Value, legacy: &Value) -> Result<Vec<Value>> {
    let entry = |id: u64, t: &Value, content: &str, special: bool| {
        let flag = |k: &str, default: bool| t[k].as_bool().unwrap_or(default);
        json!({"id": id, "content": content, "single_word": flag("single_word", false),
               "lstrip": flag("lstrip", false), "rstrip": flag("rstrip", false),
               "normalized": flag("normalized", !special), "special": flag("special", special)})
    };
    let text = |v: &Value| {
        v.as_str()
            .or_else(|| v["content"].as_str())
            .map(String::from)
    };
    let mut special_names: Vec<String> = ["bos_token", "eos_token", "unk_token", "pad_token"]
        .iter()
        .filter_map(|k| text(&config[*k]))
        .collect();
    for key in ["additional_special_tokens", "extra_special_tokens"] {
        if let Some(list) = config[key].as_array() {
            special_names.extend(list.iter().filter_map(text));
        }
    }
    let mut out: Vec<(u64, Value)> = Vec::new();
    if let Some(decoder) = added_tokens_decoder(config)? {
        for (id, t, content) in decoder {
            let id = id as u64;
            out.push((id, entry(id, t, content, true)));
        }
    } else if let Some(map) = legacy.as_object() {
        for (content, id) in map {
            let id = id.as_u64().ok_or_else(|| {
                Error::Tokenizer(format!("added_tokens.json: {content:?} has no integer id"))
            })?;
            let special = special_names.contains(content);
            out.push((id, entry(id, &Value::Null, content, special)));
        }
    }
    out.sort_by_key(|(id, _)| *id);
    if let Some(dup) = out.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(Error::Tokenizer(format!(
            "two added tokens share id {}",
            dup[0].0
        )));
    }
    // transformers adds every named special token; one not listed yet goes after the last id.
    let mut next = out
        .last()
        .map(|(id, _)| id + 1)
        .unwrap_or(0)
        .max(vocab.len() as u64);
    for name in special_names {
        let listed = out.iter().any(|(_, t)| t["content"] == name.as_str());
        if !listed && !vocab.contains_key(&name) {
            out.push((next, entry(next, &Value::Null, &name, true)));
            next += 1;
        }
    }
    Ok(out.into_iter().map(|(_, v)| v).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(config: &str) -> Result<tokenizers::Tokenizer> {
        // Byte-level texts: `Ġ` is the space byte.
        let vocab = r#"{"a": 0, "b": 1, "Ġ": 2, "ab": 3, "Ġa": 4}"#.as_bytes();
        let merges = "#version: 0.2\r\na b\r\n\r\nĠ a\r\n";
        let json = tokenizer_json(vocab, merges, Some(config), None)?;
        Ok(tokenizers::Tokenizer::from_bytes(&json).expect("valid tokenizer.json"))
    }

    #[test]
    fn merges_with_crlf_and_header_apply() {
        let tok = build("{}").unwrap();
        assert_eq!(tok.encode("ab a", false).unwrap().get_ids(), &[3, 4]);
    }

    #[test]
    fn added_tokens_keep_declared_ids_across_gaps() {
        let config = r#"{"added_tokens_decoder": {
            "7": {"content": "<x>", "special": true},
            "9": {"content": "<y>", "special": false}}, "eos_token": "<e>"}"#;
        let tok = build(config).unwrap();
        assert_eq!(
            tok.encode("a<x>b<y>", false).unwrap().get_ids(),
            &[0, 7, 1, 9]
        );
        // A named special token missing from the table goes after the last id.
        assert_eq!(tok.token_to_id("<e>"), Some(10));
        assert_eq!(tok.decode(&[0, 7, 9], true).unwrap(), "a<y>");
    }

    #[test]
    fn two_tokens_on_one_id_are_refused() {
        let config =
            r#"{"added_tokens_decoder": {"7": {"content": "<x>"}, "07": {"content": "<z>"}}}"#;
        let err = build(config).unwrap_err().to_string();
        assert!(err.contains("share id 7"), "{err}");
    }
}
