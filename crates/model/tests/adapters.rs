//! LoRA adapters merged at load, against peft (`fixtures/reference/lora.json`, made by
//! `tools/fixtures/generate_lora.py` with peft 0.21.2): adapters saved by peft itself for the
//! committed tiny checkpoints (ms-swift's all-linear regex, OpenGVLab names with rank and
//! alpha patterns, `modules_to_save` with trained biases, rsLoRA, InternLM2's fused `wqkv`),
//! a checkpoint with InternVL's wrapped LoRA inside, and every way an adapter can fail to
//! apply, each refused with a message that names it.

mod common;

use std::path::{Path, PathBuf};

use common::{fixtures, repo_root, Reference};
use rewarddance_model::{LoadOptions, PreparedItem, RewardModel};
use serde_json::Value;

/// Logit tolerance against peft (f32 on CPU), as for the base references.
const LOGIT_TOL: f64 = 1e-4;

fn lora_reference() -> Value {
    let path = repo_root().join("fixtures/reference/lora.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("lora.json")).expect("json")
}

fn model_name(path: &str) -> &str {
    path.rsplit('/').next().expect("a model directory")
}

fn load_with(model: &str, adapter: Option<PathBuf>) -> rewarddance_model::Result<RewardModel> {
    let ckpt = fixtures().checkpoint(model).expect("checkpoint");
    RewardModel::load(
        &ckpt,
        LoadOptions {
            adapter,
            ..LoadOptions::default()
        },
    )
}

/// Our logits for each reference item of `base` (the reference's pixel values swapped in),
/// by item id.
fn logits(model: &RewardModel, base: &str) -> Vec<(String, f64, f64)> {
    let reference = Reference::load(base);
    let prepared: Vec<PreparedItem> = reference.prepared(model);
    let refs: Vec<&PreparedItem> = prepared.iter().collect();
    let scores = model.score_prepared(&refs).expect("scores");
    reference
        .items()
        .iter()
        .zip(scores)
        .map(|(item, s)| {
            (
                item["id"].as_str().expect("id").to_string(),
                f64::from(s.logit_yes),
                f64::from(s.logit_no),
            )
        })
        .collect()
}

fn check_against(name: &str, ours: &[(String, f64, f64)], expected: &[Value]) {
    assert_eq!(ours.len(), expected.len(), "{name}: items");
    for (id, yes, no) in ours {
        let item = expected
            .iter()
            .find(|e| e["id"] == id.as_str())
            .unwrap_or_else(|| panic!("{name}: no reference for {id}"));
        let base = &item["base"];
        for variant in ["merged", "unmerged"] {
            let want = &item[variant];
            let dy = (yes - want["logit_yes"].as_f64().unwrap()).abs();
            let dn = (no - want["logit_no"].as_f64().unwrap()).abs();
            assert!(
                dy <= LOGIT_TOL && dn <= LOGIT_TOL,
                "{name}/{id} vs peft {variant}: logit diffs {dy:.2e} / {dn:.2e}"
            );
        }
        // The adapter has an effect: the base's logits are far from ours.
        let moved = (yes - base["logit_yes"].as_f64().unwrap())
            .abs()
            .max((no - base["logit_no"].as_f64().unwrap()).abs());
        assert!(
            moved > 100.0 * LOGIT_TOL,
            "{name}/{id}: moved only {moved:.2e}"
        );
    }
}

#[test]
fn peft_adapters_match_peft_merged_and_unmerged() {
    let reference = lora_reference();
    let mut checked = 0;
    for adapter in reference["adapters"].as_array().expect("adapters") {
        let name = adapter["name"].as_str().unwrap();
        if adapter["format"] != "peft" || adapter["expect"] != "load" {
            continue;
        }
        let base = model_name(adapter["base_model"].as_str().unwrap());
        let dir = repo_root().join(adapter["path"].as_str().unwrap());
        let model = load_with(base, Some(dir)).unwrap_or_else(|e| panic!("{name}: {e}"));
        let summary = model.adapter().expect("an adapter summary");
        let layers = adapter["lora_layers"].as_object().expect("lora_layers");
        assert_eq!(summary.modules.len(), layers.len(), "{name}: LoRA modules");
        check_against(
            name,
            &logits(&model, base),
            adapter["items"].as_array().unwrap(),
        );
        checked += 1;
    }
    assert_eq!(checked, 5, "every peft adapter with references");
}

#[test]
fn adapters_on_layers_the_model_skips_are_reported_not_refused() {
    // tiny-internvl-ogv reads vision features at select_layer -2: its last vision layer (and
    // the adapter's LoRA there) changes nothing, for peft as for us.
    let dir = repo_root().join("fixtures/adapters/ogv-llm-vit-mlp1");
    let model = load_with("tiny-internvl-ogv", Some(dir)).expect("loads");
    let unread = &model.adapter().expect("summary").unread;
    assert!(!unread.is_empty());
    assert!(
        unread
            .iter()
            .all(|t| t.starts_with("vision_model.encoder.layers.2.")),
        "{unread:?}"
    );
}

#[test]
fn a_checkpoint_with_internvl_wrapped_lora_merges_it() {
    let reference = lora_reference();
    let adapter = reference["adapters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["format"] == "internvl_wrapped")
        .expect("the wrapped checkpoint");
    let model = load_with("tiny-internvl-ogv-lora", None).expect("loads");
    assert!(
        model.adapter().is_none(),
        "wrapped LoRA is the checkpoint's own"
    );
    check_against(
        "tiny-internvl-ogv-lora",
        &logits(&model, "tiny-internvl-ogv"),
        adapter["items"].as_array().unwrap(),
    );
}

/// A copy of a fixture directory in a fresh temporary directory.
fn copy_dir(from: &Path, tag: &str) -> PathBuf {
    let to = std::env::temp_dir().join(format!(
        "rd-adapter-{tag}-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = std::fs::remove_dir_all(&to);
    std::fs::create_dir_all(&to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
    to
}

fn edit_config(dir: &Path, edit: impl FnOnce(&mut Value)) {
    let path = dir.join("adapter_config.json");
    let mut config: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut config);
    std::fs::write(path, config.to_string()).unwrap();
}

fn edit_tensors(
    dir: &Path,
    edit: impl FnOnce(
        std::collections::HashMap<String, candle_core::Tensor>,
    ) -> std::collections::HashMap<String, candle_core::Tensor>,
) {
    let path = dir.join("adapter_model.safetensors");
    let tensors = candle_core::safetensors::load(&path, &candle_core::Device::Cpu).unwrap();
    candle_core::safetensors::save(&edit(tensors), &path).unwrap();
}

/// The load error of `model` with the adapter in `dir`.
fn refused(model: &str, dir: &Path) -> String {
    match load_with(model, Some(dir.to_path_buf())) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => e.to_string(),
    }
}

/// [`refused`] for a temporary copy, removed afterwards.
fn refused_copy(model: &str, dir: PathBuf) -> String {
    let err = refused(model, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    err
}

#[test]
fn every_adapter_that_would_not_apply_is_refused_by_name() {
    let fx = repo_root().join("fixtures/adapters");
    // DoRA.
    let err = refused("tiny-internvl-hf", &fx.join("hf-dora"));
    assert!(err.contains("use_dora"), "{err}");

    // A prefix mismatch: the modules renamed so that they name nothing in the checkpoint.
    let dir = copy_dir(&fx.join("hf-llm-swift"), "prefix");
    edit_tensors(&dir, |t| {
        t.into_iter()
            .map(|(k, v)| (k.replace("model.language_model.", "llm."), v))
            .collect()
    });
    edit_config(&dir, |c| c["target_modules"] = Value::from(".*"));
    let err = refused_copy("tiny-internvl-hf", dir);
    assert!(
        err.contains("the checkpoint has no tensor for llm.layers."),
        "{err}"
    );

    // The adapter applied to the wrong base (OpenGVLab names on the HF checkpoint).
    let err = refused("tiny-internvl-hf", &fx.join("ogv-llm-vit-mlp1"));
    assert!(err.contains("the checkpoint has no tensor"), "{err}");

    // A target that selects nothing.
    let dir = copy_dir(&fx.join("ogv-llm-vit-mlp1"), "target");
    edit_config(&dir, |c| {
        c["target_modules"]
            .as_array_mut()
            .unwrap()
            .push("attention.wqkv".into())
    });
    let err = refused_copy("tiny-internvl-ogv", dir);
    assert!(err.contains("\"attention.wqkv\""), "{err}");

    // A module no target selects.
    let dir = copy_dir(&fx.join("hf-rslora"), "untargeted");
    edit_config(&dir, |c| {
        c["target_modules"] = serde_json::json!(["q_proj"])
    });
    let err = refused_copy("tiny-internvl-hf", dir);
    assert!(err.contains("no target_modules entry selects it"), "{err}");

    // A rank that does not match the config's.
    let dir = copy_dir(&fx.join("hf-llm-swift"), "rank");
    edit_config(&dir, |c| c["r"] = 4.into());
    let err = refused_copy("tiny-internvl-hf", dir);
    assert!(err.contains("not of rank 4"), "{err}");

    // A LoRA pair that does not fit the checkpoint's matrix (A's input width).
    let dir = copy_dir(&fx.join("hf-llm-swift"), "shape");
    edit_tensors(&dir, |t| {
        t.into_iter()
            .map(|(k, v)| {
                if k.ends_with("layers.0.mlp.up_proj.lora_A.weight") {
                    let wider = candle_core::Tensor::cat(&[&v, &v], 1).unwrap();
                    (k, wider)
                } else {
                    (k, v)
                }
            })
            .collect()
    });
    let err = refused_copy("tiny-internvl-hf", dir);
    assert!(
        err.contains("do not fit") && err.contains("up_proj"),
        "{err}"
    );

    // A stray full tensor (neither LoRA, nor modules_to_save, nor a trained bias).
    let dir = copy_dir(&fx.join("hf-rslora"), "stray");
    edit_tensors(&dir, |mut t| {
        let any = t.values().next().unwrap().clone();
        t.insert(
            "base_model.model.model.language_model.norm.weight".into(),
            any,
        );
        t
    });
    let err = refused_copy("tiny-internvl-hf", dir);
    assert!(err.contains("model.language_model.norm.weight"), "{err}");

    // Half a pair.
    let dir = copy_dir(&fx.join("hf-rslora"), "half");
    edit_tensors(&dir, |t| {
        t.into_iter()
            .filter(|(k, _)| !k.ends_with("layers.0.self_attn.q_proj.lora_B.weight"))
            .collect()
    });
    let err = refused_copy("tiny-internvl-hf", dir);
    assert!(err.contains("lora_A but not lora_B"), "{err}");

    // No adapter there at all.
    let err = refused("tiny-internvl-hf", &fx.join("no-such-adapter"));
    assert!(err.contains("adapter_config.json"), "{err}");
}

#[test]
fn a_wrapped_rank_without_wrapped_lora_is_refused() {
    let models = repo_root().join("fixtures/models");
    let dir = copy_dir(&models.join("tiny-internvl-ogv"), "wrapped");
    let path = dir.join("config.json");
    let mut config: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    config["use_llm_lora"] = 8.into();
    std::fs::write(&path, config.to_string()).unwrap();
    let ckpt = rewarddance_model::Checkpoint::from_dir(&dir).expect("checkpoint");
    let err = RewardModel::load(&ckpt, LoadOptions::default())
        .err()
        .expect("refused")
        .to_string();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(err.contains("use_llm_lora"), "{err}");
}
