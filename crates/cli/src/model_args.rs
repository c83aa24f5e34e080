//! Flags that choose and load the model, shared by every subcommand that runs one.

use anyhow::{bail, Context, Result};
use clap::Args;
use rewarddance_model::{
    AnswerTokens, Checkpoint, DType, Device, LoadOptions, RewardModel, BUNDLED_MODEL_ID,
};

/// Which model to load, where, and the per-item limits.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// Checkpoint directory, or ORG/NAME from the local Hugging Face cache (never downloads).
    /// Default: the bundled tiny model with RANDOM weights (its scores mean nothing).
    #[arg(long, env = "REWARDDANCE_MODEL")]
    pub model: Option<String>,
    /// Device: `cpu` or `cuda:N` (needs a build with `--features cuda`).
    #[arg(long, env = "REWARDDANCE_DEVICE", default_value = "cpu")]
    pub device: String,
    /// Weight dtype: f32, f16 or bf16. Default: f32 on CPU, bf16 on CUDA.
    #[arg(long, env = "REWARDDANCE_DTYPE")]
    pub dtype: Option<String>,
    /// Answer token whose probability is the reward.
    #[arg(long, env = "REWARDDANCE_ANSWER_YES", default_value = "yes")]
    pub answer_yes: String,
    /// The negative answer token.
    #[arg(long, env = "REWARDDANCE_ANSWER_NO", default_value = "no")]
    pub answer_no: String,
    /// Largest accepted image in pixels (decompression-bomb guard).
    #[arg(
        long,
        env = "REWARDDANCE_MAX_IMAGE_PIXELS",
        default_value_t = 40_000_000
    )]
    pub max_image_pixels: u64,
    /// Most image tiles (all images and frames together) per item.
    #[arg(long, env = "REWARDDANCE_MAX_TILES", default_value_t = 64)]
    pub max_tiles: usize,
}

impl ModelArgs {
    /// Parses `cpu` / `cuda:N`.
    pub fn device(&self) -> Result<Device> {
        parse_device(&self.device)
    }

    /// Loads the model these flags describe.
    pub fn load(&self) -> Result<RewardModel> {
        let checkpoint = match &self.model {
            Some(spec) => Checkpoint::resolve(spec)?,
            None => Checkpoint::bundled(),
        };
        let dtype = match self.dtype.as_deref() {
            None => None,
            Some("f32") => Some(DType::F32),
            Some("f16") => Some(DType::F16),
            Some("bf16") => Some(DType::BF16),
            Some(other) => bail!("unknown dtype {other:?} (expected f32, f16 or bf16)"),
        };
        let options = LoadOptions {
            device: self.device()?,
            dtype,
            answers: AnswerTokens {
                yes: self.answer_yes.clone(),
                no: self.answer_no.clone(),
            },
            max_image_pixels: self.max_image_pixels,
            max_tiles_per_item: self.max_tiles,
            ..LoadOptions::default()
        };
        let model = RewardModel::load(&checkpoint, options)
            .with_context(|| format!("loading model {}", checkpoint.id))?;
        if model.id() == BUNDLED_MODEL_ID {
            eprintln!(
                "note: using the bundled default model ({BUNDLED_MODEL_ID}): tiny, RANDOM weights, \
                 scores are meaningless; pass --model DIR for a real checkpoint"
            );
        }
        Ok(model)
    }
}

/// `cpu`, `cuda` or `cuda:N`.
pub fn parse_device(spec: &str) -> Result<Device> {
    match spec {
        "cpu" => Ok(Device::Cpu),
        s if s == "cuda" || s.starts_with("cuda:") => {
            let ordinal: usize = s
                .strip_prefix("cuda:")
                .unwrap_or("0")
                .parse()
                .context("cuda device ordinal")?;
            Device::new_cuda(ordinal).with_context(|| {
                format!("cannot open {s} (was the binary built with --features cuda?)")
            })
        }
        other => bail!("unknown device {other:?} (expected cpu or cuda:N)"),
    }
}
