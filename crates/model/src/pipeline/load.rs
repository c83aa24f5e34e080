//! Loading a [`RewardModel`]: the checkpoint, a merged adapter, and the named rewards with
//! their unmerged adapters.
//!
//! Adapters: `LoadOptions::adapter` is merged into the weights. Of the rewards' adapters, a
//! single one that every reward uses is merged too (zero overhead); otherwise each distinct
//! adapter becomes a slot applied per row ([`crate::nn::lora`]) on the one copy of the base
//! weights. A slot may change only the decoder's linear layers: an adapter that changes the
//! vision tower, the projector or whole tensors is refused there (it can be served merged).

use std::path::PathBuf;
use std::sync::atomic::AtomicU64;

use candle_nn::VarBuilder;

use super::feature_cache::FeatureCache;
use super::rewards::{check_names, Reward, RewardSpec, DEFAULT_REWARD};
use super::{LoadOptions, RewardModel};
use crate::error::{candle_message, Error, Result};
use crate::family::FamilyConfig;
use crate::nn::language::LanguageModel;
use crate::runtime::adapter::{Adapter, AdapterSummary};
use crate::runtime::checkpoint::Checkpoint;

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
        let merged_dir = match (&options.adapter, &shared) {
            (Some(dir), _) => Some(dir.clone()),
            (None, Some(dir)) => Some(dir.clone()),
            (None, None) => None,
        };
        let base = vb.clone();
        let resolve =
            |name: &str| config.adapter_tensor_name(name, &|n: &str| base.contains_tensor(n));
        let (vb, merged) = match &merged_dir {
            None => (vb, None),
            Some(dir) => {
                let adapter = Adapter::read(dir, &resolve)?;
                let summary = adapter.summary.clone();
                let (weights, all_read) = adapter.merge_into(vb);
                let vb = VarBuilder::from_backend(Box::new(weights), dtype, options.device.clone());
                (vb, Some((summary, all_read)))
            }
        };
        let named = |e: candle_core::Error| {
            Error::Checkpoint(format!("{}: {}", checkpoint.id, candle_message(&e)))
        };
        let parts = config.load(vb).map_err(named)?;
        let mut language =
            LanguageModel::load(config.text(), parts.text_weights, parts.head_weights)
                .map_err(named)?;
        if let Some(check) = family_check {
            check()?;
        }
        let adapter = merged.map(|(mut summary, all_read)| {
            summary.unread = all_read.unread();
            if !summary.unread.is_empty() {
                tracing::warn!(
                    adapter = %summary.source,
                    unread = ?summary.unread,
                    "the model never reads these adapted tensors (the checkpoint's own are unused there too)"
                );
            }
            summary
        });

        // One slot per distinct unmerged adapter, in declaration order.
        let mut slot_dirs: Vec<PathBuf> = Vec::new();
        let mut slots: Vec<AdapterSummary> = Vec::new();
        let mut rewards = Vec::with_capacity(specs.len());
        let vocab = config.text().vocab_size as u32;
        for spec in specs {
            let slot = match (&spec.adapter, &shared) {
                (None, _) | (Some(_), Some(_)) => None,
                (Some(dir), None) => Some(match slot_dirs.iter().position(|d| d == dir) {
                    Some(i) => i,
                    None => {
                        let summary =
                            attach_unmerged(&mut language, dir, slot_dirs.len(), &resolve)?;
                        slot_dirs.push(dir.clone());
                        slots.push(summary);
                        slots.len() - 1
                    }
                }),
            };
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

/// Reads the adapter in `dir` and attaches it to the decoder as `slot`.
fn attach_unmerged(
    language: &mut LanguageModel,
    dir: &std::path::Path,
    slot: usize,
    resolve: &dyn Fn(&str) -> Option<String>,
) -> Result<AdapterSummary> {
    let adapter = Adapter::read(dir, resolve)?;
    let summary = adapter.summary.clone();
    let parts = adapter.low_rank_parts()?;
    let used = language
        .attach_adapter(slot, &|name: &str| {
            parts.get(name).map(|p| (p.a.clone(), p.b.clone(), p.scale))
        })
        .map_err(|e| {
            Error::Checkpoint(format!("adapter {}: {}", dir.display(), candle_message(&e)))
        })?;
    let outside: Vec<&str> = parts
        .keys()
        .filter(|k| !used.contains(*k))
        .map(String::as_str)
        .collect();
    if !outside.is_empty() {
        return Err(Error::Checkpoint(format!(
            "adapter {}: it changes {} outside the language model's linear layers; next to other \
             adapters only those can be applied (serve it as the model's only adapter to merge it)",
            dir.display(),
            outside.join(", ")
        )));
    }
    Ok(summary)
}
