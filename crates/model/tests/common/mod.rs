//! Shared helpers for tests that read the committed fixtures (`fixtures/`, made by
//! `tools/fixtures/generate.py`).
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use rewarddance_model::{
    Candidate, Checkpoint, Device, ImageInput, LoadOptions, Mode, RewardModel, ScoreItem,
};
use serde_json::Value;

/// Repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The fixture checkpoints, by name.
pub const MODELS: [&str; 4] = [
    "tiny-internvl-hf",
    "tiny-internvl-ogv",
    "tiny-internvl-internlm2",
    "tiny-internvl-vit6b",
];

/// Reference outputs of one fixture checkpoint.
pub struct Reference {
    pub json: Value,
    pub pixels: HashMap<String, candle_core::Tensor>,
}

impl Reference {
    pub fn load(model: &str) -> Reference {
        let dir = repo_root().join("fixtures/reference");
        let text =
            std::fs::read_to_string(dir.join(format!("{model}.json"))).expect("reference json");
        let pixels = candle_core::safetensors::load(
            dir.join(format!("{model}.pixel_values.safetensors")),
            &Device::Cpu,
        )
        .expect("reference pixels");
        Reference {
            json: serde_json::from_str(&text).expect("valid json"),
            pixels,
        }
    }

    pub fn items(&self) -> &Vec<Value> {
        self.json["items"].as_array().expect("items")
    }

    /// Every item prepared by `model`, with the reference's pixel values swapped in (so model
    /// parity is tested apart from image decoding).
    pub fn prepared(&self, model: &RewardModel) -> Vec<rewarddance_model::PreparedItem> {
        self.items()
            .iter()
            .map(|item| {
                model
                    .prepare(&score_item(item))
                    .and_then(|p| p.with_pixels(self.pixels_of(item)))
                    .expect("prepare")
            })
            .collect()
    }

    /// Reference pixel values of an item, flattened.
    pub fn pixels_of(&self, item: &Value) -> Vec<f32> {
        let key = item["expected"]["pixel_values_key"].as_str().expect("key");
        self.pixels[key]
            .flatten_all()
            .and_then(|t| t.to_vec1())
            .expect("pixels")
    }
}

pub fn load_model(model: &str) -> RewardModel {
    let ckpt =
        Checkpoint::from_dir(&repo_root().join("fixtures/models").join(model)).expect("checkpoint");
    RewardModel::load(&ckpt, LoadOptions::default()).expect("model loads")
}

pub fn image_file(path: &str) -> ImageInput {
    ImageInput::Encoded(std::fs::read(repo_root().join(path)).expect("image file"))
}

/// The reference item as a [`ScoreItem`].
pub fn score_item(item: &Value) -> ScoreItem {
    let candidate = if let Some(p) = item["candidate"]["image"].as_str() {
        Candidate::Image(image_file(p))
    } else {
        let frames = item["candidate"]["video"].as_array().expect("video");
        Candidate::Video(
            frames
                .iter()
                .map(|f| image_file(f.as_str().expect("frame")))
                .collect(),
        )
    };
    ScoreItem {
        prompt: item["prompt"].as_str().expect("prompt").to_string(),
        candidate,
        reference: item["reference"].as_str().map(image_file),
        instruction: item["instruction"].as_str().map(String::from),
        mode: item["mode"]
            .as_str()
            .expect("mode")
            .parse::<Mode>()
            .expect("mode"),
    }
}

/// Whether all of an item's images are losslessly coded (PNG).
pub fn all_png(item: &Value) -> bool {
    item["expected"]["images"]
        .as_array()
        .expect("images")
        .iter()
        .all(|i| i["path"].as_str().is_some_and(|p| p.ends_with(".png")))
}
