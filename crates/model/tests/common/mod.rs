//! Shared helpers for tests that read the committed fixtures (`fixtures/`, made by
//! `tools/fixtures/generate.py`): thin panicking wrappers over `rewarddance_model::fixtures`,
//! which `rewarddance parity` uses too.
#![allow(dead_code)]

use std::path::PathBuf;

use rewarddance_model::fixtures::{self, Fixtures};
use rewarddance_model::{ImageInput, LoadOptions, RewardModel, ScoreItem};
use serde_json::Value;

// Not every test binary uses both.
#[allow(unused_imports)]
pub use rewarddance_model::fixtures::{all_png, MODELS};

/// Repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
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
