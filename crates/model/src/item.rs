//! What a caller asks to score, and what comes back.

use serde::Serialize;

use crate::image::ImageInput;

/// How the candidate is judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// One image (or video) against the prompt: "does it match, is it good?"
    Pointwise,
    /// Candidate against a reference image: "is image 2 better than image 1?"
    Pairwise,
}

impl std::str::FromStr for Mode {
    type Err = crate::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "pointwise" => Ok(Mode::Pointwise),
            "pairwise" => Ok(Mode::Pairwise),
            other => Err(crate::Error::InvalidInput(format!(
                "unknown mode {other:?} (expected \"pointwise\" or \"pairwise\")"
            ))),
        }
    }
}

/// The visual being scored.
#[derive(Debug, Clone)]
pub enum Candidate {
    /// A single image, tiled dynamically.
    Image(ImageInput),
    /// Video frames in order, one tile each.
    Video(Vec<ImageInput>),
}

/// One item to score.
#[derive(Debug, Clone)]
pub struct ScoreItem {
    /// The generation prompt the candidate was made from.
    pub prompt: String,
    /// The candidate image or video.
    pub candidate: Candidate,
    /// Reference image (Image 1), required in pairwise mode and refused in pointwise mode.
    pub reference: Option<ImageInput>,
    /// Instruction template overriding the default; `{prompt}` is replaced by the prompt.
    pub instruction: Option<String>,
    /// Pointwise or pairwise.
    pub mode: Mode,
}

/// The reward for one item, read off the answer token's distribution at the last position.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Score {
    /// P(yes) normalised over the two answer tokens: the RewardDance reward.
    pub p_yes: f64,
    /// P(yes) over the full vocabulary.
    pub p_yes_vocab: f64,
    /// Raw logit of the "yes" token.
    pub logit_yes: f32,
    /// Raw logit of the "no" token.
    pub logit_no: f32,
}

impl Score {
    /// Builds a score from the two answer logits and the log-partition of the full vocabulary.
    pub fn from_logits(logit_yes: f32, logit_no: f32, logsumexp: f32) -> Self {
        let (y, n) = (logit_yes as f64, logit_no as f64);
        Score {
            p_yes: 1.0 / (1.0 + (n - y).exp()),
            p_yes_vocab: (y - logsumexp as f64).exp(),
            logit_yes,
            logit_no,
        }
    }
}
