//! Tokenizer conformance on the real tokenizers (issue 13): a checkpoint directory holding the
//! real tokenizer files is loaded with `Checkpoint::from_dir`, as `rewarddance` loads one, and its
//! tokenizer must give the ids of the reference tokenizers on the texts of
//! `fixtures/real/tokenizers/expected_ids.json` (made by `tools/conformance/tokenizer_ids.py`):
//! OpenGVLab's `InternLM2Tokenizer` over the real InternLM2 `tokenizer.model`, and transformers'
//! `Qwen2Tokenizer` over the real Qwen2 `vocab.json` + `merges.txt`, each with the InternVL
//! tokenizer_config.json beside it. With and without special tokens (InternLM2 adds `<s>`), and
//! the decode round trip wherever the reference's own decode gives the text back.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};

use common::{real_file, repo_root, skip_without_real_file};
use rewarddance_model::{Checkpoint, TokenizerSource};
use serde_json::Value;

fn expected(name: &str) -> Value {
    let path = repo_root().join("fixtures/real/tokenizers/expected_ids.json");
    let text = std::fs::read_to_string(&path).expect("expected_ids.json");
    let all: Value = serde_json::from_str(&text).expect("json");
    all["tokenizers"][name].clone()
}

fn gunzip(path: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path).expect("gz file"))
        .read_to_end(&mut out)
        .expect("gunzip");
    out
}

/// A checkpoint directory with the given tokenizer files, a stub config.json and an empty
/// model.safetensors (`from_dir` only checks that the weights exist).
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str, files: &[(&str, Vec<u8>)]) -> Dir {
        let dir = std::env::temp_dir().join(format!("rd-tokconf-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::write(dir.join("config.json"), "{}").expect("config");
        std::fs::write(dir.join("model.safetensors"), "").expect("weights stub");
        for (file, bytes) in files {
            std::fs::write(dir.join(file), bytes).expect("tokenizer file");
        }
        Dir(dir)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn ids(v: &Value) -> Vec<Vec<u32>> {
    serde_json::from_value(v.clone()).expect("ids")
}

/// Loads `dir` as a checkpoint and compares every text; returns the mismatches.
fn conform(dir: &Path, want: &Value, source: TokenizerSource) -> Vec<String> {
    let ckpt = Checkpoint::from_dir(dir).expect("the checkpoint directory loads");
    assert_eq!(ckpt.tokenizer_source, source);
    let tok = tokenizers::Tokenizer::from_bytes(&ckpt.tokenizer_json).expect("tokenizer");
    let texts: Vec<String> = serde_json::from_value(want["texts"].clone()).expect("texts");
    let decoded: Vec<String> = serde_json::from_value(want["decoded"].clone()).expect("decoded");
    let (with, without) = (ids(&want["ids"]), ids(&want["ids_without_special"]));
    assert_eq!(texts.len(), with.len());
    let mut bad = Vec::new();
    let mut round_trips = 0;
    for (i, text) in texts.iter().enumerate() {
        for (special, want) in [(true, &with[i]), (false, &without[i])] {
            let got = tok.encode(text.as_str(), special).expect("encode");
            if got.get_ids() != want.as_slice() {
                bad.push(format!(
                    "{text:?} (special {special}): got {:?}, want {want:?}",
                    got.get_ids()
                ));
            }
        }
        if decoded[i] == *text {
            round_trips += 1;
            let back = tok.decode(&without[i], false).expect("decode");
            if back != *text {
                bad.push(format!("{text:?}: decodes to {back:?}"));
            }
        }
    }
    eprintln!(
        "{} texts, {} decode round trips checked, {} mismatches",
        texts.len(),
        round_trips,
        bad.len()
    );
    assert!(texts.len() >= 40 && round_trips >= 30, "too few cases");
    bad
}

#[test]
fn qwen2_vocab_and_merges_give_transformers_ids() {
    let real = repo_root().join("fixtures/real/tokenizers/qwen2");
    let dir = Dir::new(
        "qwen2",
        &[
            ("vocab.json", gunzip(&real.join("vocab.json.gz"))),
            ("merges.txt", gunzip(&real.join("merges.txt.gz"))),
            (
                "tokenizer_config.json",
                std::fs::read(real.join("tokenizer_config.json")).expect("config"),
            ),
        ],
    );
    let bad = conform(&dir.0, &expected("qwen2"), TokenizerSource::VocabMerges);
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

#[test]
fn internlm2_tokenizer_model_gives_opengvlab_ids() {
    let rel = "tokenizers/internlm2/tokenizer.model";
    let Some(model) = real_file(rel) else {
        skip_without_real_file("the InternLM2 tokenizer conformance", rel);
        return;
    };
    let config = repo_root().join("fixtures/real/tokenizers/internlm2/tokenizer_config.json");
    let dir = Dir::new(
        "internlm2",
        &[
            (
                "tokenizer.model",
                std::fs::read(model).expect("tokenizer.model"),
            ),
            (
                "tokenizer_config.json",
                std::fs::read(config).expect("config"),
            ),
        ],
    );
    let bad = conform(
        &dir.0,
        &expected("internlm2"),
        TokenizerSource::SentencePiece,
    );
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

#[test]
fn tokenizer_json_wins_over_vocab_and_merges() {
    let real = repo_root().join("fixtures/real/tokenizers/qwen2");
    let bundled = Checkpoint::bundled();
    let dir = Dir::new(
        "order",
        &[
            ("tokenizer.json", bundled.tokenizer_json.clone()),
            ("vocab.json", gunzip(&real.join("vocab.json.gz"))),
            ("merges.txt", gunzip(&real.join("merges.txt.gz"))),
        ],
    );
    let ckpt = Checkpoint::from_dir(&dir.0).expect("loads");
    assert_eq!(ckpt.tokenizer_source, TokenizerSource::TokenizerJson);
    assert_eq!(ckpt.tokenizer_json, bundled.tokenizer_json);
    assert_eq!(bundled.tokenizer_source, TokenizerSource::Bundled);
}
