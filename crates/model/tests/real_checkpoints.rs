//! The real-config conformance suite: published checkpoints' small files as published
//! (`fixtures/real/checkpoints/<Name>/`), the real tokenizers (`fixtures/real/tokenizers/`),
//! seeded weights at the real widths with layers cut, against references computed by
//! OpenGVLab's own code (OpenGVLab layout) and transformers (`-hf` layout):
//! `fixtures/real/reference/<Name>.json`, written by `tools/conformance/generate.py`.
//!
//! Every case must give the same user message, rendered prompt, token ids and tile grids, and
//! P(yes) within [`P_YES_TOL`] in f32. One test runs the checkpoints one after another (a
//! checkpoint at 8B/26B widths holds GBs of embeddings) and reports every difference at the end.
//! A checkpoint whose tokenizer files are not here (the InternLM2 `tokenizer.model`:
//! fixtures/real/README.md) is skipped with a message; `REWARDDANCE_REQUIRE_REAL_FILES=1` (for CI
//! that has them) turns a skip into a failure.

mod common;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use common::{fixtures, real_file, repo_root, skip_without_real_file};
use rewarddance_model::{Checkpoint, LoadOptions, RewardModel};
use serde_json::Value;

/// |Δ P(yes)| allowed against the reference (f32 on CPU).
const P_YES_TOL: f64 = 1e-4;

/// Tokenizer files of each LLM family, relative to a `real/` folder.
fn tokenizer_files(family: &str) -> &'static [&'static str] {
    match family {
        "internlm2" => &["tokenizers/internlm2/tokenizer.model"],
        _ => &[],
    }
}

fn real() -> PathBuf {
    repo_root().join("fixtures/real")
}

/// The family's tokenizer files, or the first one missing.
fn find_tokenizer(reference: &Value) -> Result<Vec<PathBuf>, String> {
    let family = reference["tokenizer"].as_str().unwrap_or_default();
    tokenizer_files(family)
        .iter()
        .map(|rel| real_file(rel).ok_or_else(|| rel.to_string()))
        .collect()
}

/// A temporary checkpoint directory: the vendored small files, the tokenizer files and
/// `config.json` with the layer counts the reference was made with.
fn stage(reference: &Value, tokenizer: &[PathBuf]) -> Result<PathBuf, String> {
    let name = reference["checkpoint"]
        .as_str()
        .ok_or("no checkpoint name")?;
    let src = real().join("checkpoints").join(name);
    let dst = std::env::temp_dir().join(format!("rd-real-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dst).map_err(|e| e.to_string())?;
    let copy = |from: &Path, to: &Path| {
        std::fs::copy(from, to).map_err(|e| format!("{}: {e}", from.display()))
    };
    for entry in std::fs::read_dir(&src).map_err(|e| format!("{}: {e}", src.display()))? {
        let path = entry.map_err(|e| e.to_string())?.path();
        let file = path.file_name().ok_or("bad file name")?;
        copy(&path, &dst.join(file))?;
    }
    for from in tokenizer {
        let file = from.file_name().ok_or("bad tokenizer file name")?;
        copy(from, &dst.join(file))?;
    }
    let text = std::fs::read_to_string(src.join("config.json")).map_err(|e| e.to_string())?;
    let mut config: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    let text_key = if config.get("llm_config").is_some() {
        "llm_config"
    } else {
        "text_config"
    };
    let llm_layers = reference["llm_layers"].as_u64().ok_or("no llm_layers")?;
    config["vision_config"]["num_hidden_layers"] = reference["vision_layers"].clone();
    config[text_key]["num_hidden_layers"] = llm_layers.into();
    if let Some(types) = config[text_key]["layer_types"].as_array_mut() {
        types.truncate(llm_layers as usize);
    }
    std::fs::write(dst.join("config.json"), config.to_string()).map_err(|e| e.to_string())?;
    Ok(dst)
}

fn expand_rle(rle: &Value) -> Vec<u32> {
    rle.as_array()
        .into_iter()
        .flatten()
        .flat_map(|run| {
            let id = run[0].as_u64().unwrap_or(u64::MAX) as u32;
            std::iter::repeat_n(id, run[1].as_u64().unwrap_or(0) as usize)
        })
        .collect()
}

/// Where two strings first differ, with a little context of each.
fn first_text_diff(got: &str, want: &str) -> String {
    let at = got
        .chars()
        .zip(want.chars())
        .position(|(a, b)| a != b)
        .unwrap_or(got.chars().count().min(want.chars().count()));
    let around = |s: &str| -> String { s.chars().skip(at.saturating_sub(12)).take(40).collect() };
    format!(
        "differ at char {at}: got …{:?}… want …{:?}… (lengths {} vs {})",
        around(got),
        around(want),
        got.chars().count(),
        want.chars().count()
    )
}

/// Where two id sequences first differ.
fn first_id_diff(got: &[u32], want: &[u32]) -> String {
    let at = got
        .iter()
        .zip(want)
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(want.len()));
    let window = |s: &[u32]| s[at.saturating_sub(2)..(at + 4).min(s.len())].to_vec();
    format!(
        "differ at token {at}: got {:?} want {:?} (lengths {} vs {})",
        window(got),
        window(want),
        got.len(),
        want.len()
    )
}

/// Checks one case; appends each difference to `failures`.
fn check_case(model: &RewardModel, name: &str, item: &Value, failures: &mut Vec<String>) {
    let id = format!("{name}/{}", item["id"].as_str().unwrap_or("?"));
    let mut fail = |what: String| failures.push(format!("{id}: {what}"));
    let score_item = match fixtures().score_item(item) {
        Ok(s) => s,
        Err(e) => return fail(format!("reading the case: {e}")),
    };
    let prepared = match model.prepare(&score_item) {
        Ok(p) => p,
        Err(e) => return fail(format!("prepare failed: {e}")),
    };
    let e = &item["expected"];
    let text = |k: &str| e[k].as_str().unwrap_or_default().to_string();
    if prepared.user_content != text("user_content") {
        fail(format!(
            "user content {}",
            first_text_diff(&prepared.user_content, &text("user_content"))
        ));
    }
    if prepared.rendered_prompt != text("rendered_prompt") {
        fail(format!(
            "rendered prompt {}",
            first_text_diff(&prepared.rendered_prompt, &text("rendered_prompt"))
        ));
    }
    let ids = expand_rle(&e["input_ids_rle"]);
    if prepared.input_ids != ids {
        fail(format!(
            "input_ids {}",
            first_id_diff(&prepared.input_ids, &ids)
        ));
    }
    let images = e["images"].as_array().map_or(&[][..], Vec::as_slice);
    if prepared.images.len() != images.len() {
        fail(format!(
            "{} images, want {}",
            prepared.images.len(),
            images.len()
        ));
    }
    for (k, (got, want)) in prepared.images.iter().zip(images).enumerate() {
        let pair = |v: &Value| {
            (
                v[0].as_u64().map(|x| x as u32),
                v[1].as_u64().map(|x| x as u32),
            )
        };
        let mut diffs = Vec::new();
        if pair(&want["size"]) != (Some(got.size.0), Some(got.size.1)) {
            diffs.push(format!("size {:?} want {}", got.size, want["size"]));
        }
        if want.get("grid").is_some() && pair(&want["grid"]) != (Some(got.grid.0), Some(got.grid.1))
        {
            diffs.push(format!("grid {:?} want {}", got.grid, want["grid"]));
        }
        if want.get("thumbnail").is_some() && want["thumbnail"].as_bool() != Some(got.thumbnail) {
            diffs.push(format!(
                "thumbnail {} want {}",
                got.thumbnail, want["thumbnail"]
            ));
        }
        if want["num_tiles"].as_u64() != Some(got.num_tiles as u64) {
            diffs.push(format!(
                "tiles {} want {}",
                got.num_tiles, want["num_tiles"]
            ));
        }
        if !diffs.is_empty() {
            fail(format!("image {k}: {}", diffs.join(", ")));
        }
    }
    let score = match model.score_prepared(&[&prepared]) {
        Ok(s) => s[0],
        Err(err) => return fail(format!("score failed: {err}")),
    };
    let want_p = e["p_yes"].as_f64().unwrap_or(f64::NAN);
    let delta = (score.p_yes - want_p).abs();
    eprintln!(
        "{id}: p_yes {:.7} reference {want_p:.7} |Δ| {delta:.1e}",
        score.p_yes
    );
    // NaN fails too.
    if delta.is_nan() || delta > P_YES_TOL {
        fail(format!(
            "p_yes {:.6} want {want_p:.6} (|Δ| {delta:.2e}); logits yes {:.4} / no {:.4} want {:.4} / {:.4}",
            score.p_yes,
            score.logit_yes,
            score.logit_no,
            e["logit_yes"].as_f64().unwrap_or(f64::NAN),
            e["logit_no"].as_f64().unwrap_or(f64::NAN)
        ));
    }
}

/// Loads one checkpoint with seeded weights and checks all its cases; the number of cases that
/// failed, or `None` when the tokenizer files are not here.
fn check_checkpoint(reference: &Value, failures: &mut Vec<String>) -> Option<usize> {
    let name = reference["checkpoint"].as_str().unwrap_or("?");
    let cases = reference["cases"].as_array().map_or(&[][..], Vec::as_slice);
    let before = failures.len();
    let tokenizer = match find_tokenizer(reference) {
        Ok(t) => t,
        Err(missing) => {
            skip_without_real_file(name, &missing);
            return None;
        }
    };
    let dir = match stage(reference, &tokenizer) {
        Ok(d) => d,
        Err(e) => {
            failures.push(format!("{name}: staging the checkpoint: {e}"));
            return Some(cases.len());
        }
    };
    let tensors = match serde_json::from_value(reference["tensors"].clone()) {
        Ok(t) => t,
        Err(e) => {
            failures.push(format!("{name}: no tensor inventory in the reference: {e}"));
            return Some(cases.len());
        }
    };
    let loaded = Checkpoint::from_dir_with_seeded_weights(&dir, tensors)
        .map_err(|e| format!("reading the checkpoint: {e}"))
        .and_then(|ckpt| {
            RewardModel::load(&ckpt, LoadOptions::default())
                .map_err(|e| format!("loading the model: {e}"))
        });
    let _ = std::fs::remove_dir_all(&dir);
    let model = match loaded {
        Ok(m) => m,
        Err(e) => {
            failures.push(format!("{name}: {e} (all {} cases fail)", cases.len()));
            return Some(cases.len());
        }
    };
    let want = (
        reference["yes_id"].as_u64().map(|x| x as u32),
        reference["no_id"].as_u64().map(|x| x as u32),
    );
    let (yes, no) = model.prompt_builder().answer_ids();
    if want != (Some(yes), Some(no)) {
        failures.push(format!("{name}: answer ids ({yes}, {no}), want {want:?}"));
    }
    for item in cases {
        check_case(&model, name, item, failures);
    }
    let failed_cases: std::collections::HashSet<&str> = failures[before..]
        .iter()
        .filter_map(|f| f.split(':').next().filter(|id| id.contains('/')))
        .collect();
    Some(failed_cases.len())
}

#[test]
fn published_checkpoints_match_their_reference_implementations() {
    let dir = real().join("reference");
    let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("fixtures/real/reference")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    names.sort();
    assert!(!names.is_empty(), "no references in {}", dir.display());
    let mut failures = Vec::new();
    let mut summary = String::new();
    for path in &names {
        let text = std::fs::read_to_string(path).expect("reference");
        let reference: Value = serde_json::from_str(&text).expect("reference JSON");
        let started = std::time::Instant::now();
        let total = reference["cases"].as_array().map_or(0, Vec::len);
        let name = reference["checkpoint"].as_str().unwrap_or("?");
        let _ = match check_checkpoint(&reference, &mut failures) {
            Some(failed) => writeln!(
                summary,
                "{name}: {}/{total} cases pass ({:.1}s)",
                total.saturating_sub(failed),
                started.elapsed().as_secs_f64()
            ),
            None => writeln!(summary, "{name}: skipped (tokenizer files absent)"),
        };
    }
    eprintln!("{summary}");
    assert!(
        failures.is_empty(),
        "{} differences from the reference implementations:\n{}\n{summary}",
        failures.len(),
        failures.join("\n")
    );
}
