//! Reading the committed parity fixtures (`fixtures/`, written by `tools/fixtures/generate.py`):
//! the tiny checkpoints under `models/`, the transformers reference outputs under
//! `reference/<model>.json` + `<model>.pixel_values.safetensors`, and the test images.
//!
//! Shared by the model crate's parity tests and `rewarddance parity` (which runs the same
//! comparison on any device, e.g. a GPU machine without a Rust toolchain), so both read the
//! fixtures the same way.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde_json::Value;

use crate::{Candidate, Checkpoint, Error, ImageInput, Mode, PreparedItem, RewardModel, ScoreItem};

/// The fixture checkpoints with reference outputs, by name (`models/<name>`,
/// `reference/<name>.json`).
pub const MODELS: [&str; 4] = [
    "tiny-internvl-hf",
    "tiny-internvl-ogv",
    "tiny-internvl-internlm2",
    "tiny-internvl-vit6b",
];

/// A fixture file that is missing or not what the generator writes.
#[derive(Debug, thiserror::Error)]
pub enum FixtureError {
    /// A file could not be read or parsed.
    #[error("fixture {}: {message}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A reference item lacks a field or has one of the wrong type.
    #[error("fixture item {id}: {message}")]
    Item {
        /// The item's `id`.
        id: String,
        /// What is missing or wrong.
        message: String,
    },
    /// The model refused to load a fixture or prepare an item.
    #[error(transparent)]
    Model(#[from] Error),
}

/// Result of fixture reading.
pub type FixtureResult<T> = std::result::Result<T, FixtureError>;

/// The fixtures directory (the repository's `fixtures/`, or a copy of it).
#[derive(Debug, Clone)]
pub struct Fixtures {
    dir: PathBuf,
}

impl Fixtures {
    /// Fixtures under `dir` (the folder holding `models/`, `reference/` and `images/`).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Fixtures { dir: dir.into() }
    }

    /// The fixtures directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The checkpoint `models/<name>`.
    pub fn checkpoint(&self, name: &str) -> FixtureResult<Checkpoint> {
        Ok(Checkpoint::from_dir(&self.dir.join("models").join(name))?)
    }

    /// The reference outputs of checkpoint `name`.
    pub fn reference(&self, name: &str) -> FixtureResult<Reference> {
        let dir = self.dir.join("reference");
        let json_path = dir.join(format!("{name}.json"));
        let text = std::fs::read_to_string(&json_path).map_err(|e| file_error(&json_path, e))?;
        let json: Value = serde_json::from_str(&text).map_err(|e| file_error(&json_path, e))?;
        if !json["items"].is_array() {
            return Err(file_error(&json_path, "no `items` array"));
        }
        let pixels_path = dir.join(format!("{name}.pixel_values.safetensors"));
        let pixels = candle_core::safetensors::load(&pixels_path, &Device::Cpu)
            .map_err(|e| file_error(&pixels_path, e))?;
        Ok(Reference { json, pixels })
    }

    /// An image named as in the reference JSON (`fixtures/images/x.png`, relative to the
    /// repository root), read from this fixtures directory.
    pub fn image(&self, path: &str) -> FixtureResult<ImageInput> {
        let file = match path.strip_prefix("fixtures/") {
            Some(rest) => self.dir.join(rest),
            None => self.dir.join("..").join(path),
        };
        let bytes = std::fs::read(&file).map_err(|e| file_error(&file, e))?;
        Ok(ImageInput::Encoded(bytes))
    }

    /// A reference item as a [`ScoreItem`] (its images read from files).
    pub fn score_item(&self, item: &Value) -> FixtureResult<ScoreItem> {
        let candidate = if let Some(p) = item["candidate"]["image"].as_str() {
            Candidate::Image(self.image(p)?)
        } else {
            let frames = item["candidate"]["video"]
                .as_array()
                .ok_or_else(|| item_error(item, "candidate has neither `image` nor `video`"))?;
            let frames = frames
                .iter()
                .map(|f| {
                    let path = f
                        .as_str()
                        .ok_or_else(|| item_error(item, "a video frame is not a path"))?;
                    self.image(path)
                })
                .collect::<FixtureResult<_>>()?;
            Candidate::Video(frames)
        };
        let reference = match item["reference"].as_str() {
            Some(p) => Some(self.image(p)?),
            None => None,
        };
        Ok(ScoreItem {
            prompt: str_field(item, "prompt")?.to_string(),
            candidate,
            reference,
            instruction: item["instruction"].as_str().map(String::from),
            mode: str_field(item, "mode")?.parse::<Mode>()?,
        })
    }
}

/// Reference outputs of one fixture checkpoint: transformers' prompts, token ids, pixel values,
/// logits and P(yes) per item.
pub struct Reference {
    /// `reference/<model>.json` as written by the generator.
    pub json: Value,
    /// Pixel values per item (`expected.pixel_values_key`), as transformers saw them.
    pub pixels: HashMap<String, Tensor>,
}

impl Reference {
    /// The reference items (checked to be an array at load).
    pub fn items(&self) -> &[Value] {
        self.json["items"].as_array().map_or(&[], Vec::as_slice)
    }

    /// Reference pixel values of an item, flattened.
    pub fn pixels_of(&self, item: &Value) -> FixtureResult<Vec<f32>> {
        let key = item["expected"]["pixel_values_key"]
            .as_str()
            .ok_or_else(|| item_error(item, "no expected.pixel_values_key"))?;
        let tensor = self
            .pixels
            .get(key)
            .ok_or_else(|| item_error(item, &format!("no pixel values under {key:?}")))?;
        tensor
            .flatten_all()
            .and_then(|t| t.to_vec1())
            .map_err(|e| Error::from(e).into())
    }

    /// Every item prepared by `model` with the reference's pixel values swapped in, so that
    /// model parity is checked apart from image decoding.
    pub fn prepared(
        &self,
        fixtures: &Fixtures,
        model: &RewardModel,
    ) -> FixtureResult<Vec<PreparedItem>> {
        self.items()
            .iter()
            .map(|item| {
                let prepared = model.prepare(&fixtures.score_item(item)?)?;
                Ok(prepared.with_pixels(self.pixels_of(item)?)?)
            })
            .collect()
    }
}

/// The reference scores of one item (transformers, f32, eager attention).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ExpectedScore {
    /// Logit of the "yes" answer token.
    pub logit_yes: f64,
    /// Logit of the "no" answer token.
    pub logit_no: f64,
    /// P(yes) over the two answer tokens.
    pub p_yes: f64,
    /// P(yes) over the whole vocabulary.
    pub p_yes_vocab: f64,
}

impl ExpectedScore {
    /// Reads `expected.{logit_yes, logit_no, p_yes, p_yes_vocab}` of a reference item.
    pub fn of(item: &Value) -> FixtureResult<Self> {
        let field = |name: &str| {
            item["expected"][name]
                .as_f64()
                .ok_or_else(|| item_error(item, &format!("no number expected.{name}")))
        };
        Ok(ExpectedScore {
            logit_yes: field("logit_yes")?,
            logit_no: field("logit_no")?,
            p_yes: field("p_yes")?,
            p_yes_vocab: field("p_yes_vocab")?,
        })
    }
}

/// The `id` of a reference item (`?` when it has none).
pub fn item_id(item: &Value) -> &str {
    item["id"].as_str().unwrap_or("?")
}

/// Whether all of an item's images are losslessly coded (PNG).
pub fn all_png(item: &Value) -> bool {
    item["expected"]["images"].as_array().is_some_and(|images| {
        images
            .iter()
            .all(|i| i["path"].as_str().is_some_and(|p| p.ends_with(".png")))
    })
}

fn str_field<'a>(item: &'a Value, name: &str) -> FixtureResult<&'a str> {
    item[name]
        .as_str()
        .ok_or_else(|| item_error(item, &format!("no string `{name}`")))
}

fn item_error(item: &Value, message: &str) -> FixtureError {
    FixtureError::Item {
        id: item_id(item).to_string(),
        message: message.to_string(),
    }
}

fn file_error(path: &Path, err: impl std::fmt::Display) -> FixtureError {
    FixtureError::File {
        path: path.to_path_buf(),
        message: err.to_string(),
    }
}
