//! Loading a [`RewardModel`]: the checkpoint, a merged adapter, and the named rewards with
//! their unmerged adapters.
//!
//! Adapters: `LoadOptions::adapter` is merged into the weights. Of the rewards' adapters, a
//! single one that every reward uses is merged too (zero overhead); otherwise each distinct
//! adapter becomes a slot applied per row ([`crate::nn::lora`]) on the one copy of the base
//! weights. A slot may change the linear layers of the decoder, the vision tower and the
//! projector; an adapter that replaces whole tensors (`modules_to_save`, trained biases) or
//! changes another tensor the model reads (e.g. `lm_head`) is refused there (it can be served
//! merged). LoRA on layers the model never reads is reported, as merging reports it.

use std::path::PathBuf;
use std::sync::atomic::AtomicU64;

use candle_nn::VarBuilder;

use super::feature_cache::FeatureCache;
use super::rewards::{check_names, Reward, RewardSpec, DEFAULT_REWARD};
use super::{LoadOptions, RewardModel};
use crate::error::{candle_message, Error, Result};
use crate::family::{FamilyConfig, ImageEncoder};
use crate::nn::language::LanguageModel;
use crate::runtime::adapter::{Adapter, AdapterSummary};
use crate::runtime::checkpoint::Checkpoint;
use crate::runtime::reads::{ReadLog, RecordingWeights};

impl RewardModel {
    /// Loads `checkpoint` onto `options.device`, with one reward, [`DEFAULT_REWARD`].
    pub fn load(checkpoint: &Checkpoint, options: LoadOptions) -> Result<Self> {
        Self::load_rewards(checkpoint, options, &[RewardSpec::named(DEFAULT_REWARD)])
    }

    /// Loads `checkpoint` serving the rewards `specs` (the first is the one items get when
    /// they name none).
    pub fn load_rewards(
        checkpoint: &Checkpoint,
        options: LoadOptions,
        specs: &[RewardSpec],
    ) -> Result<Self> {
        check_names(specs)?;
        let config = FamilyConfig::parse(
            &checkpoint.config_json,
            checkpoint.preprocessor_config_json.as_deref(),
        )?;
        let prompt = Self::prompt_for(checkpoint, &config, &options)?;
        let dtype = options
            .dtype
            .unwrap_or_else(|| LoadOptions::default_dtype(&options.device));
        let (vb, family_check) = config.weights(checkpoint.var_builder(dtype, &options.device)?);
        // `--adapter` is merged into the base of every reward; else a single adapter shared by
        // every reward is.
        let shared = match options.adapter {
            Some(_) => None,
            None => shared_adapter(specs),
        };
        let merged_dir = options.adapter.clone().or_else(|| shared.clone());
        let base = vb.clone();
        let resolve =
            |name: &str| config.adapter_tensor_name(name, &|n: &str| base.contains_tensor(n));
        let (vb, merged) = match &merged_dir {
            None => (vb, None),
            Some(dir) => {
                let adapter = Adapter::read(dir, &resolve)?;
                let merged = (adapter.summary.clone(), adapter.changed_tensors());
                let weights = adapter.merge_into(vb);
                let vb = VarBuilder::from_backend(Box::new(weights), dtype, options.device.clone());
                (vb, Some(merged))
            }
        };
        let named = |e: candle_core::Error| {
            Error::Checkpoint(format!("{}: {}", checkpoint.id, candle_message(&e)))
        };
        let (vb, reads) = RecordingWeights::wrap(vb);
        let mut parts = config.load(vb).map_err(named)?;
        let mut language =
            LanguageModel::load(config.text(), parts.text_weights, parts.head_weights)
                .map_err(named)?;
        if let Some(check) = family_check {
            check()?;
        }
        let adapter = merged.map(|(mut summary, changed)| {
            summary.unread = reads.unread(changed.iter().map(String::as_str));
            warn_unread(&summary);
            summary
        });

        // One slot per distinct unmerged adapter, in declaration order.
        let mut slot_dirs: Vec<PathBuf> = Vec::new();
        let mut slots: Vec<AdapterSummary> = Vec::new();
        let mut slot_changes_images: Vec<bool> = Vec::new();
        let mut rewards = Vec::with_capacity(specs.len());
        let vocab = config.text().vocab_size as u32;
        for spec in specs {
            let slot = match (&spec.adapter, &shared) {
                (None, _) | (Some(_), Some(_)) => None,
                (Some(dir), None) => Some(match slot_dirs.iter().position(|d| d == dir) {
                    Some(i) => i,
                    None => {
                        let slot = slot_dirs.len();
                        let target = Target {
                            language: &mut language,
                            images: parts.images.as_mut(),
                            reads: &reads,
                        };
                        let (summary, images) = attach_unmerged(target, dir, slot, &resolve)?;
                        slot_dirs.push(dir.clone());
                        slots.push(summary);
                        slot_changes_images.push(images);
                        slot
                    }
                }),
            };
            let image_slot = slot.filter(|&s| slot_changes_images[s]);
            let answers = spec
                .answers
                .clone()
                .unwrap_or_else(|| options.answers.clone());
            let answer_ids = prompt
                .answer_ids_of(&answers)
                .map_err(|e| Error::InvalidInput(format!("reward {:?}: {e}", spec.name)))?;
            if answer_ids.0 >= vocab || answer_ids.1 >= vocab {
                return Err(Error::Checkpoint(format!(
                    "reward {:?}: answer token ids {answer_ids:?} are outside the model's vocabulary of {vocab}",
                    spec.name
                )));
            }
            let mut spec = spec.clone();
            spec.answers = Some(answers);
            rewards.push(Reward {
                spec,
                answer_ids,
                slot,
                image_slot,
            });
        }
        Ok(RewardModel {
            id: checkpoint.id.clone(),
            device: options.device.clone(),
            config,
            prompt,
            images: parts.images,
            language,
            dtype,
            feature_cache: FeatureCache::new(options.feature_cache_bytes),
            prefix_tokens_saved: AtomicU64::new(0),
            adapter,
            rewards,
            slots,
            options,
        })
    }
}

/// The adapter every reward uses, when they all use the same one (then it is merged).
fn shared_adapter(specs: &[RewardSpec]) -> Option<PathBuf> {
    let first = specs.first()?.adapter.clone()?;
    specs
        .iter()
        .all(|s| s.adapter.as_ref() == Some(&first))
        .then_some(first)
}

/// What an unmerged adapter is attached to.
struct Target<'a> {
    language: &'a mut LanguageModel,
    images: &'a mut dyn ImageEncoder,
    /// What the model read while loading.
    reads: &'a ReadLog,
}

/// Reads the adapter in `dir` and attaches it to the decoder and the image side as `slot`;
/// also says whether it changes the image side.
fn attach_unmerged(
    target: Target<'_>,
    dir: &std::path::Path,
    slot: usize,
    resolve: &dyn Fn(&str) -> Option<String>,
) -> Result<(AdapterSummary, bool)> {
    let adapter = Adapter::read(dir, resolve)?;
    let mut summary = adapter.summary.clone();
    let parts = adapter.low_rank_parts()?;
    let lookup = |name: &str| parts.get(name).map(|p| (p.a.clone(), p.b.clone(), p.scale));
    let failed = |e: String| Error::Checkpoint(format!("adapter {}: {e}", dir.display()));
    let mut used = target
        .language
        .attach_adapter(slot, &lookup)
        .map_err(|e| failed(candle_message(&e)))?;
    let image_side = target
        .images
        .attach_adapter(slot, &lookup)
        .map_err(|e| failed(candle_message(&e)))?;
    let changes_images = !image_side.is_empty();
    used.extend(image_side);
    // What is left either changes a layer the model skips (no effect, reported as merging
    // reports it) or one it reads but cannot apply a slot to (refused).
    let left: Vec<&str> = parts
        .keys()
        .filter(|k| !used.contains(*k))
        .map(String::as_str)
        .collect();
    summary.unread = target.reads.unread(left.iter().copied());
    let outside: Vec<&str> = left
        .into_iter()
        .filter(|k| target.reads.contains(k))
        .collect();
    warn_unread(&summary);
    if !outside.is_empty() {
        return Err(failed(format!(
            "it changes {}, which is not a linear layer of the language model, the vision \
             encoder or the projector; next to other adapters only those can be applied (serve \
             it as the model's only adapter to merge it)",
            outside.join(", ")
        )));
    }
    Ok((summary, changes_images))
}

/// Logs the tensors an adapter changes that the model never reads.
fn warn_unread(summary: &AdapterSummary) {
    if !summary.unread.is_empty() {
        tracing::warn!(
            adapter = %summary.source,
            unread = ?summary.unread,
            "the model never reads these adapted tensors (the checkpoint's own are unused there too)"
        );
    }
}
