//! Flags that choose and load the model, shared by every subcommand that runs one.

use crate::notes::{note, warn_note};
use anyhow::{bail, Context, Result};
use clap::Args;
use rewarddance_model::image::DecodeLimits;
use rewarddance_model::pipeline::memory::{
    check_fits, check_gradient_fits, unmerged_adapter_bytes, BatchBudget,
};
use rewarddance_model::pipeline::rewards::read_rewards;
use rewarddance_model::{
    AnswerTokens, Checkpoint, DType, Device, FamilyConfig, LoadOptions, RewardModel,
    BUNDLED_MODEL_ID,
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
    #[arg(long, env = "REWARDDANCE_ANSWER_YES", default_value = AnswerTokens::DEFAULT_YES)]
    pub answer_yes: String,
    /// The negative answer token.
    #[arg(long, env = "REWARDDANCE_ANSWER_NO", default_value = AnswerTokens::DEFAULT_NO)]
    pub answer_no: String,
    /// Largest accepted image in pixels (decompression-bomb guard).
    #[arg(
        long,
        env = "REWARDDANCE_MAX_IMAGE_PIXELS",
        default_value_t = DecodeLimits::DEFAULT_MAX_PIXELS
    )]
    pub max_image_pixels: u64,
    /// Most image tiles (all images and frames together) per item.
    #[arg(long, env = "REWARDDANCE_MAX_TILES", default_value_t = LoadOptions::DEFAULT_MAX_TILES_PER_ITEM)]
    pub max_tiles: usize,
    /// Vision-feature cache per device in MiB (0 disables it; repeats inside a batch are still
    /// encoded once).
    #[arg(long, env = "REWARDDANCE_FEATURE_CACHE_MIB", default_value_t = LoadOptions::DEFAULT_FEATURE_CACHE_MIB)]
    pub feature_cache_mib: usize,
    /// Items of a batch sharing at least this many leading tokens compute them once.
    #[arg(
        long,
        env = "REWARDDANCE_PREFIX_REUSE_MIN_TOKENS",
        default_value_t = LoadOptions::DEFAULT_PREFIX_REUSE_MIN_TOKENS
    )]
    pub prefix_reuse_min_tokens: usize,
    /// Chat template: `auto` (what the checkpoint's own code uses: OpenGVLab layout
    /// `config.json` "template", HF layout its Jinja chat template), `jinja` (the checkpoint's
    /// Jinja template on any layout), or an OpenGVLab conversation template name
    /// (`internvl2_5`, `internlm2-chat`, `Hermes-2`, `phi3-chat`).
    #[arg(long, env = "REWARDDANCE_TEMPLATE", default_value = "auto")]
    pub template: String,
    /// A LoRA adapter directory (peft's `adapter_config.json` + `adapter_model.safetensors`,
    /// as peft and ms-swift save it), merged into the weights at load. Loading fails, naming
    /// the tensor or option, when any part of it would not apply.
    #[arg(long, env = "REWARDDANCE_ADAPTER")]
    pub adapter: Option<std::path::PathBuf>,
    /// A rewards file (TOML): named rewards on this model, one `[rewards.NAME]` table each
    /// with optional `adapter` (a directory, relative to the file), `instruction`,
    /// `pairwise_instruction`, `video_instruction`, `answer_yes`, `answer_no`, `mode`. The
    /// first is the default. Without it the model has one reward, `default`.
    #[arg(long, env = "REWARDDANCE_REWARDS")]
    pub rewards: Option<std::path::PathBuf>,
    /// Memory of each device in GiB for the start-up fit check. Default: what the GPU reports,
    /// or the machine's available memory on CPU.
    #[arg(long, env = "REWARDDANCE_DEVICE_MEMORY_GIB")]
    pub device_memory_gib: Option<f64>,
}

impl ModelArgs {
    /// Parses `cpu` / `cuda:N`.
    pub fn device(&self) -> Result<Device> {
        parse_device(&self.device)
    }

    /// The checkpoint these flags name (the bundled model by default).
    pub fn checkpoint(&self) -> Result<Checkpoint> {
        Ok(match &self.model {
            Some(spec) => Checkpoint::resolve(spec)?,
            None => Checkpoint::bundled(),
        })
    }

    /// Load options from these flags.
    pub fn options(&self) -> Result<LoadOptions> {
        Ok(LoadOptions {
            device: self.device()?,
            dtype: self.dtype()?,
            answers: AnswerTokens {
                yes: self.answer_yes.clone(),
                no: self.answer_no.clone(),
            },
            max_image_pixels: self.max_image_pixels,
            max_tiles_per_item: self.max_tiles,
            feature_cache_bytes: self.feature_cache_mib << 20,
            prefix_reuse_min_tokens: self.prefix_reuse_min_tokens,
            template: self.template.parse()?,
            adapter: self.adapter.clone(),
            ..LoadOptions::default()
        })
    }

    /// Loads the model these flags describe.
    pub fn load(&self) -> Result<RewardModel> {
        let checkpoint = self.checkpoint()?;
        let options = self.options()?;
        let model = match &self.rewards {
            Some(file) => RewardModel::load_rewards(&checkpoint, options, &read_rewards(file)?),
            None => RewardModel::load(&checkpoint, options),
        }
        .with_context(|| format!("loading model {}", checkpoint.id))?;
        if model.id() == BUNDLED_MODEL_ID {
            note!(model = BUNDLED_MODEL_ID; format!(
                "using the bundled default model ({BUNDLED_MODEL_ID}): tiny, RANDOM weights, \
                 scores are meaningless; pass --model DIR for a real checkpoint"
            ));
        } else if model.id().starts_with("random:") {
            note!(model = model.id(); format!(
                "{} has the real shapes of its preset but RANDOM weights: scores are \
                 meaningless (for benchmarks and memory checks only)",
                model.id()
            ));
        }
        Ok(model)
    }
}

impl ModelArgs {
    /// Refuses, before loading anything, a model + batch budget that cannot fit in the memory
    /// of the device these flags name (see `rewarddance_model::pipeline::memory`).
    pub fn check_memory(&self, tokens: usize, items: usize, gradient_tiles: usize) -> Result<()> {
        let checkpoint = match &self.model {
            Some(spec) => Checkpoint::resolve(spec)?,
            None => Checkpoint::bundled(),
        };
        let config = FamilyConfig::parse(
            &checkpoint.config_json,
            checkpoint.preprocessor_config_json.as_deref(),
        )?;
        let device = self.device()?;
        let dtype = self
            .dtype()?
            .unwrap_or_else(|| LoadOptions::default_dtype(&device));
        let Some(available) = self.device_memory_bytes(&device) else {
            warn_note!(device = self.device; format!(
                "memory check skipped: cannot read the memory of {} (pass --device-memory-gib)",
                self.device
            ));
            return Ok(());
        };
        // The feature cache is held on the device too, and so are unmerged adapters.
        let adapters = match &self.rewards {
            Some(file) => unmerged_adapter_bytes(&read_rewards(file)?),
            None => 0,
        };
        let available = available
            .saturating_sub((self.feature_cache_mib as u64) << 20)
            .saturating_sub(adapters);
        let per_tile = config.tokens_per_tile().max(1);
        let budget = BatchBudget {
            tokens,
            tiles: (items * self.max_tiles).min(tokens / per_tile + items),
            max_sequence_tokens: config.text().max_position_embeddings.min(tokens),
            sequences: items,
        };
        let estimate = check_fits(&config, dtype, &budget, available)
            .with_context(|| format!("{} on {}", checkpoint.id, self.device))?;
        // A ScoreGrad batch holds one item's activations at a time, with its whole prompt.
        let gradient_tokens =
            (gradient_tiles * per_tile + 512).min(config.text().max_position_embeddings);
        check_gradient_fits(&config, dtype, gradient_tiles, gradient_tokens, available)
            .with_context(|| format!("{} on {}", checkpoint.id, self.device))?;
        let available_gib = format!("{:.1}", available as f64 / (1u64 << 30) as f64);
        note!(
            model = checkpoint.id,
            device = self.device,
            needs = estimate,
            available_gib = available_gib;
            format!(
                "memory check: {} on {} needs about {estimate}; {available_gib} GiB available",
                checkpoint.id, self.device
            )
        );
        Ok(())
    }

    fn dtype(&self) -> Result<Option<DType>> {
        Ok(match self.dtype.as_deref() {
            None => None,
            Some("f32") => Some(DType::F32),
            Some("f16") => Some(DType::F16),
            Some("bf16") => Some(DType::BF16),
            Some(other) => bail!("unknown dtype {other:?} (expected f32, f16 or bf16)"),
        })
    }

    /// The flag, else the device's own figure: total GPU memory, or MemAvailable on CPU.
    fn device_memory_bytes(&self, device: &Device) -> Option<u64> {
        if let Some(gib) = self.device_memory_gib {
            return Some((gib * (1u64 << 30) as f64) as u64);
        }
        if device.is_cpu() {
            let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
            let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            return Some(kib * 1024);
        }
        cuda_total_memory(&self.device)
    }
}

/// Total memory of GPU `cuda:N` as `nvidia-smi` (shipped with the driver) reports it; `None`
/// when it cannot be asked (then the check is skipped with a note).
fn cuda_total_memory(spec: &str) -> Option<u64> {
    let ordinal = spec.strip_prefix("cuda:").unwrap_or("0");
    let out = std::process::Command::new("nvidia-smi")
        .args([
            "--query-gpu=memory.total",
            "--format=csv,noheader,nounits",
            "-i",
            ordinal,
        ])
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    let mib: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().ok()?;
    Some(mib << 20)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flags_default_to_the_model_defaults() {
        // One source for each default: a model loaded without flags is loaded as the model
        // crate's own `LoadOptions::default()` describes.
        #[derive(clap::Parser)]
        struct Wrapper {
            #[command(flatten)]
            args: ModelArgs,
        }
        let flags = <Wrapper as clap::Parser>::parse_from(["score"]).args;
        assert_eq!(
            format!("{:?}", flags.options().unwrap()),
            format!("{:?}", LoadOptions::default())
        );
    }
}
