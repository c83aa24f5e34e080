//! Shared helpers for tests that read the committed fixtures (`fixtures/`, made by
//! `tools/fixtures/generate.py`): thin panicking wrappers over `rewarddance_model::testing::fixtures`,
//! which `rewarddance parity` uses too.
#![allow(dead_code)]

use std::path::PathBuf;

use rewarddance_model::testing::fixtures::{self, Fixtures};
use rewarddance_model::{ImageInput, LoadOptions, RewardModel, ScoreItem};
use serde_json::Value;

// Not every test binary uses both.
#[allow(unused_imports)]
pub use rewarddance_model::testing::fixtures::{all_png, MODELS};

/// Repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A real checkpoint file (`rel` under a `real/` folder): in the repository's `fixtures/real/`,
/// else (the InternLM2 `tokenizer.model`, which this repository cannot hold:
/// fixtures/real/README.md) under `$REWARDDANCE_REAL_FILES` or `shared/real/` beside the checkout.
pub fn real_file(rel: &str) -> Option<PathBuf> {
    [
        Some(repo_root().join("fixtures/real").join(rel)),
        std::env::var_os("REWARDDANCE_REAL_FILES").map(|d| PathBuf::from(d).join(rel)),
        Some(repo_root().join("../shared/real").join(rel)),
    ]
    .into_iter()
    .flatten()
    .find(|p| p.is_file())
}

/// Says that `what` is skipped because a real file is absent, or fails the test when
/// `REWARDDANCE_REQUIRE_REAL_FILES` is set (CI that has the files).
pub fn skip_without_real_file(what: &str, missing: &str) {
    let message = format!(
        "SKIPPED {what}: the real {missing} is not here (fixtures/real/README.md says where it \
         comes from; set REWARDDANCE_REAL_FILES or place it under ../shared/real)"
    );
    assert!(
        std::env::var_os("REWARDDANCE_REQUIRE_REAL_FILES").is_none(),
        "REWARDDANCE_REQUIRE_REAL_FILES is set: {message}"
    );
    eprintln!("{message}");
}

/// The repository's `fixtures/`.
pub fn fixtures() -> Fixtures {
    Fixtures::new(repo_root().join("fixtures"))
}

/// Reference outputs of one fixture checkpoint.
pub struct Reference(fixtures::Reference);

impl std::ops::Deref for Reference {
    type Target = fixtures::Reference;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl Reference {
    pub fn load(model: &str) -> Reference {
        Reference(fixtures().reference(model).expect("reference fixture"))
    }

    /// Every item prepared by `model`, with the reference's pixel values swapped in (so model
    /// parity is tested apart from image decoding).
    pub fn prepared(&self, model: &RewardModel) -> Vec<rewarddance_model::PreparedItem> {
        self.0.prepared(&fixtures(), model).expect("prepare")
    }

    /// Reference pixel values of an item, flattened.
    pub fn pixels_of(&self, item: &Value) -> Vec<f32> {
        self.0.pixels_of(item).expect("pixels")
    }
}

pub fn load_model(model: &str) -> RewardModel {
    let ckpt = fixtures().checkpoint(model).expect("checkpoint");
    RewardModel::load(&ckpt, LoadOptions::default()).expect("model loads")
}

pub fn image_file(path: &str) -> ImageInput {
    fixtures().image(path).expect("image file")
}

/// The reference item as a [`ScoreItem`].
pub fn score_item(item: &Value) -> ScoreItem {
    fixtures().score_item(item).expect("score item")
}
