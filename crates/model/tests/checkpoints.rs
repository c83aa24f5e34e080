//! Checkpoint resolution and loading errors: hub cache lookup, missing and mis-shaped tensors,
//! missing files, and dtypes.

mod common;

use std::path::{Path, PathBuf};

use common::repo_root;
use rewarddance_model::{Checkpoint, DType, Error, LoadOptions, RewardModel};

/// A scratch copy of a fixture checkpoint, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn copy_of(model: &str, tag: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("rd-ckpt-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        copy_dir(&repo_root().join("fixtures/models").join(model), &dir);
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

fn load_err(dir: &Path) -> Error {
    let ckpt = match Checkpoint::from_dir(dir) {
        Ok(c) => c,
        Err(e) => return e,
    };
    RewardModel::load(&ckpt, LoadOptions::default())
        .err()
        .expect("load must fail")
}

#[test]
fn resolves_hub_ids_from_the_local_cache_only() {
    let home = std::env::temp_dir().join(format!("rd-hf-home-{}", std::process::id()));
    let snapshot = home.join("hub/models--acme--tiny-reward/snapshots/0123abcd");
    copy_dir(
        &repo_root().join("fixtures/models/tiny-internvl-ogv"),
        &snapshot,
    );
    std::fs::create_dir_all(home.join("hub/models--acme--tiny-reward/refs")).unwrap();
    std::fs::write(
        home.join("hub/models--acme--tiny-reward/refs/main"),
        "0123abcd",
    )
    .unwrap();
    std::env::set_var("HF_HOME", &home);

    let ckpt = Checkpoint::resolve("acme/tiny-reward").expect("found in cache");
    assert_eq!(ckpt.id, "acme/tiny-reward");
    RewardModel::load(&ckpt, LoadOptions::default()).expect("loads from the cache");

    let err = Checkpoint::resolve("acme/not-downloaded").unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("never downloads") && msg.contains("acme/not-downloaded"),
        "{msg}"
    );
    let err = Checkpoint::resolve("./no/such/dir").unwrap_err();
    assert!(err.to_string().contains("no such directory"), "{err}");
    std::fs::remove_dir_all(&home).unwrap();
}

#[test]
fn missing_tensor_is_named() {
    // Drop one shard from the index: its tensors go missing.
    let scratch = Scratch::copy_of("tiny-internvl-ogv", "missing");
    let index_path = scratch.0.join("model.safetensors.index.json");
    let mut index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&index_path).unwrap()).unwrap();
    let map = index["weight_map"].as_object_mut().unwrap();
    map.retain(|_, file| file.as_str() != Some("model-00001-of-00002.safetensors"));
    std::fs::write(&index_path, index.to_string()).unwrap();
    let err = load_err(&scratch.0);
    let msg = err.to_string();
    assert!(matches!(err, Error::Checkpoint(_)), "{err:?}");
    assert!(msg.contains("vision_model."), "names the tensor: {msg}");
    assert!(
        !msg.contains("stack backtrace") && !msg.contains("at /"),
        "no backtrace: {msg}"
    );
}

#[test]
fn mis_shaped_tensor_is_named() {
    let scratch = Scratch::copy_of("tiny-internvl-hf", "shape");
    let cfg_path = scratch.0.join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["text_config"]["intermediate_size"] = serde_json::json!(100);
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let msg = load_err(&scratch.0).to_string();
    assert!(
        msg.contains("mlp") && msg.contains("shape"),
        "names the tensor and the shape: {msg}"
    );
}

#[test]
fn missing_files_are_named() {
    let scratch = Scratch::copy_of("tiny-internvl-hf", "files");
    std::fs::remove_file(scratch.0.join("model.safetensors")).unwrap();
    assert!(load_err(&scratch.0)
        .to_string()
        .contains("model.safetensors"));
    std::fs::remove_file(scratch.0.join("tokenizer.json")).unwrap();
    assert!(load_err(&scratch.0).to_string().contains("tokenizer.json"));
}

#[test]
fn half_precision_weights_load_and_stay_close_to_f32() {
    let ckpt = Checkpoint::bundled();
    let item = rewarddance_model::ScoreItem {
        prompt: "a red fox".into(),
        candidate: rewarddance_model::Candidate::Image(common::image_file(
            "fixtures/images/fox_100x60.png",
        )),
        reference: None,
        instruction: None,
        mode: rewarddance_model::Mode::Pointwise,
    };
    let f32_score = RewardModel::load(&ckpt, LoadOptions::default())
        .unwrap()
        .score(std::slice::from_ref(&item))[0]
        .as_ref()
        .map(|s| s.p_yes)
        .unwrap();
    for dtype in [DType::BF16, DType::F16] {
        let model = RewardModel::load(
            &ckpt,
            LoadOptions {
                dtype: Some(dtype),
                ..LoadOptions::default()
            },
        )
        .unwrap();
        assert_eq!(model.dtype(), dtype);
        let p = model.score(std::slice::from_ref(&item))[0]
            .as_ref()
            .map(|s| s.p_yes)
            .unwrap();
        assert!(
            (p - f32_score).abs() < 0.05,
            "{dtype:?}: {p} vs f32 {f32_score}"
        );
    }
}

#[test]
fn random_presets_resolve_by_name() {
    let ckpt = Checkpoint::resolve("random:mini").expect("random:mini");
    let model = RewardModel::load(&ckpt, LoadOptions::default()).expect("loads");
    assert!(model.id().contains("mini"), "{}", model.id());
    let err = Checkpoint::resolve("random:nope")
        .expect_err("unknown preset")
        .to_string();
    assert!(
        err.contains("unknown preset") && err.contains("mini"),
        "{err}"
    );
}
