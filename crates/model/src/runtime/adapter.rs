//! LoRA adapters in PEFT's format, merged into the base weights as the model loads them.
//!
//! An adapter directory holds `adapter_config.json` and `adapter_model.safetensors`
//! (`save_pretrained` of huggingface/peft, which ms-swift also writes). Each LoRA module `m`
//! has `base_model.model.<m>.lora_A.weight` `(r, in)` and `...lora_B.weight` `(out, r)`; the
//! merged weight is `W + s · B A` (transposed when `fan_in_fan_out`) with `s = alpha / r`, or
//! `alpha / sqrt(r)` with `use_rslora` (peft `tuners/lora/layer.py` `update_layer`), `r` and
//! `alpha` per module from `rank_pattern` / `alpha_pattern`. Any other tensor of the file
//! (`modules_to_save` copies, biases trained with `bias = "all" | "lora_only"`) replaces the
//! base tensor of the same name.
//!
//! Loading is strict: an unsupported adapter kind or option, a tensor that names no tensor of
//! the checkpoint, a module that no target selects, a target that selects no module, and a
//! shape or rank that does not fit each fail the load with a message naming it. A tensor of a
//! layer the model never runs (vision layers after `select_layer`) is listed in the summary's
//! `unread` and logged: it has no effect, as the checkpoint's own weights there have none. An
//! adapter never loads as a silent no-op.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;
use serde::Deserialize;

use crate::error::{Error, Result};
pub use crate::info::AdapterSummary;

/// The prefix PEFT puts before every module name of the wrapped model.
const PEFT_PREFIX: &str = "base_model.model.";

/// `adapter_config.json`, the keys that change what the adapter computes. Keys that only
/// matter for training (dropout, init) are ignored.
#[derive(Debug, Clone, Deserialize)]
struct PeftConfig {
    #[serde(default)]
    peft_type: Option<String>,
    r: usize,
    lora_alpha: f64,
    #[serde(default)]
    target_modules: Option<TargetModules>,
    #[serde(default)]
    rank_pattern: BTreeMap<String, usize>,
    #[serde(default)]
    alpha_pattern: BTreeMap<String, f64>,
    #[serde(default)]
    use_rslora: bool,
    #[serde(default)]
    use_dora: bool,
    #[serde(default)]
    fan_in_fan_out: bool,
    #[serde(default)]
    modules_to_save: Option<Vec<String>>,
    #[serde(default = "bias_none")]
    bias: String,
    #[serde(default)]
    lora_bias: bool,
    #[serde(default)]
    layer_replication: Option<serde_json::Value>,
    #[serde(default)]
    target_parameters: Option<serde_json::Value>,
    #[serde(default)]
    trainable_token_indices: Option<serde_json::Value>,
    #[serde(default)]
    alora_invocation_tokens: Option<serde_json::Value>,
}

fn bias_none() -> String {
    "none".into()
}

/// `target_modules`: names matched as peft does (`check_target_module_exists`): a list entry
/// selects a module whose name is the entry or ends with `.` + the entry; a string is a regex
/// the whole module name must match.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum TargetModules {
    List(Vec<String>),
    Regex(String),
}

/// What one checkpoint tensor becomes.
#[derive(Debug)]
enum Delta {
    /// `W + scale · B A` (`(B A)ᵀ` when `transpose`), for the adapter's `module`.
    LowRank {
        module: String,
        a: Tensor,
        b: Tensor,
        scale: f64,
        transpose: bool,
    },
    /// The tensor itself, instead of the checkpoint's.
    Replace(Tensor),
}

/// A LoRA adapter read from a directory, matched against a checkpoint's tensor names.
#[derive(Debug)]
pub struct Adapter {
    /// What it was loaded from (the directory), for messages.
    source: String,
    /// Summary for `Info`.
    pub summary: AdapterSummary,
    /// Checkpoint tensor name -> what it becomes.
    deltas: BTreeMap<String, Delta>,
}

/// How a module name of the adapter (the trained model's names) becomes a checkpoint tensor
/// name: the model family knows its layouts' renames. Given `"<module>.<param>"`, returns the
/// checkpoint's name for it, if the checkpoint holds one.
pub type NameResolver<'a> = dyn Fn(&str) -> Option<String> + 'a;

impl Adapter {
    /// Reads the adapter in `dir` and matches every tensor to a checkpoint tensor through
    /// `resolve`. Shapes against the checkpoint's are checked as the model reads its weights.
    pub fn read(dir: &Path, resolve: &NameResolver<'_>) -> Result<Self> {
        let source = dir.display().to_string();
        let fail = |what: String| Error::Checkpoint(format!("adapter {source}: {what}"));
        let config_path = dir.join("adapter_config.json");
        let text = std::fs::read_to_string(&config_path)
            .map_err(|e| fail(format!("{}: {e}", config_path.display())))?;
        let config: PeftConfig =
            serde_json::from_str(&text).map_err(|e| fail(format!("adapter_config.json: {e}")))?;
        check_supported(&config).map_err(fail)?;
        let weights_path = dir.join("adapter_model.safetensors");
        let tensors = candle_core::safetensors::load(&weights_path, &Device::Cpu)
            .map_err(|e| fail(format!("{}: {e}", weights_path.display())))?;
        Self::from_parts(source.clone(), &config, tensors, resolve).map_err(fail)
    }

    fn from_parts(
        source: String,
        config: &PeftConfig,
        tensors: HashMap<String, Tensor>,
        resolve: &NameResolver<'_>,
    ) -> std::result::Result<Self, String> {
        let targets = Targets::new(config)?;
        // module -> (A, B); anything else is a whole tensor.
        let mut pairs: BTreeMap<String, (Option<Tensor>, Option<Tensor>)> = BTreeMap::new();
        let mut whole: BTreeMap<String, Tensor> = BTreeMap::new();
        for (key, tensor) in tensors {
            let name = key
                .strip_prefix(PEFT_PREFIX)
                .ok_or_else(|| format!("tensor {key} does not start with {PEFT_PREFIX:?}"))?;
            if let Some(module) = name.strip_suffix(".lora_A.weight") {
                pairs.entry(module.to_string()).or_default().0 = Some(tensor);
            } else if let Some(module) = name.strip_suffix(".lora_B.weight") {
                pairs.entry(module.to_string()).or_default().1 = Some(tensor);
            } else if name.contains(".lora_") || name.contains("lora_magnitude_vector") {
                return Err(format!("tensor {key} is of a LoRA kind this server does not apply (only lora_A / lora_B of linear layers)"));
            } else {
                whole.insert(name.to_string(), tensor);
            }
        }
        if pairs.is_empty() && whole.is_empty() {
            return Err("adapter_model.safetensors holds no tensor".into());
        }
        let mut deltas = BTreeMap::new();
        for (module, pair) in &pairs {
            let (Some(a), Some(b)) = pair else {
                return Err(format!(
                    "module {module} has lora_{} but not lora_{}",
                    if pair.0.is_some() { "A" } else { "B" },
                    if pair.0.is_some() { "B" } else { "A" }
                ));
            };
            if !targets.selects(module)? {
                return Err(format!(
                    "module {module} has LoRA weights but no target_modules entry selects it"
                ));
            }
            let weight = format!("{module}.weight");
            let name = resolve(&weight).ok_or_else(|| {
                format!("module {module}: the checkpoint has no tensor for {weight}")
            })?;
            let rank = config.rank_for(module);
            if a.rank() != 2
                || b.rank() != 2
                || a.dim(0).ok() != Some(rank)
                || b.dim(1).ok() != Some(rank)
            {
                return Err(format!(
                    "module {module}: lora_A {:?} and lora_B {:?} are not of rank {rank}",
                    a.dims(),
                    b.dims()
                ));
            }
            let alpha = config.alpha_for(module);
            let scale = if config.use_rslora {
                alpha / (rank as f64).sqrt()
            } else {
                alpha / rank as f64
            };
            deltas.insert(
                name,
                Delta::LowRank {
                    module: module.clone(),
                    a: a.clone(),
                    b: b.clone(),
                    scale,
                    transpose: config.fan_in_fan_out,
                },
            );
        }
        let mut replaced = Vec::new();
        for (param, tensor) in whole {
            // `bias = "lora_only" | "all"`: an adapted module's bias is saved under its
            // `base_layer`.
            let param = match param.rsplit_once(".base_layer.") {
                Some((module, p)) => format!("{module}.{p}"),
                None => param,
            };
            let is_bias = param.ends_with(".bias") && config.bias != "none";
            let saved_module = config.modules_to_save.iter().flatten().any(|m| {
                let mut path = param.as_str();
                while let Some((parent, _)) = path.rsplit_once('.') {
                    if list_entry_selects(m, parent) {
                        return true;
                    }
                    path = parent;
                }
                false
            });
            if !is_bias && !saved_module {
                return Err(format!(
                    "tensor {param} is no LoRA weight, under no modules_to_save entry and no bias trained with bias = \"all\" | \"lora_only\""
                ));
            }
            let name = resolve(&param)
                .ok_or_else(|| format!("tensor {param}: the checkpoint has no such tensor"))?;
            if deltas.contains_key(&name) {
                return Err(format!("{name} is both replaced and LoRA-adapted"));
            }
            replaced.push(param);
            deltas.insert(name, Delta::Replace(tensor));
        }
        targets.check_all_used(pairs.keys().map(String::as_str))?;
        Ok(Adapter {
            source: source.clone(),
            summary: AdapterSummary {
                source,
                rank: config.r,
                alpha: config.lora_alpha,
                rslora: config.use_rslora,
                modules: pairs.keys().cloned().collect(),
                replaced,
                unread: Vec::new(),
            },
            deltas,
        })
    }

    /// The checkpoint tensors the adapter changes (what a model loaded from
    /// [`Self::merge_into`] should read: [`crate::runtime::reads::ReadLog::unread`]).
    pub fn changed_tensors(&self) -> Vec<String> {
        self.deltas.keys().cloned().collect()
    }

    /// A weight source that reads `base` with this adapter merged in.
    pub fn merge_into(self, base: VarBuilder<'static>) -> MergedWeights {
        MergedWeights {
            base,
            source: self.source,
            deltas: self.deltas,
        }
    }
}

/// One LoRA module's factors and scale, for applying it unmerged.
#[derive(Debug, Clone)]
pub struct LowRankParts {
    /// `lora_A`, `(r, in)`.
    pub a: Tensor,
    /// `lora_B`, `(out, r)`.
    pub b: Tensor,
    /// `alpha / r` (or `alpha / sqrt(r)`).
    pub scale: f64,
}

impl Adapter {
    /// The adapter's LoRA modules by checkpoint tensor name, for serving it unmerged next to
    /// other adapters. Whole-tensor replacements (`modules_to_save`, trained biases) and
    /// `fan_in_fan_out` are refused: only merging applies them.
    pub fn low_rank_parts(self) -> Result<BTreeMap<String, LowRankParts>> {
        let source = self.source;
        self.deltas
            .into_iter()
            .map(|(name, delta)| match delta {
                Delta::LowRank {
                    a,
                    b,
                    scale,
                    transpose: false,
                    ..
                } => Ok((name, LowRankParts { a, b, scale })),
                Delta::LowRank { .. } => Err(Error::Checkpoint(format!(
                    "adapter {source}: fan_in_fan_out adapters can only be served merged, as the model's only adapter"
                ))),
                Delta::Replace(_) => Err(Error::Checkpoint(format!(
                    "adapter {source}: it replaces {name} whole (modules_to_save or a trained bias), which only a merged adapter can do: serve it as the model's only adapter"
                ))),
            })
            .collect()
    }
}

/// Refuses what changes the adapter's maths beyond plain LoRA on linear layers.
fn check_supported(config: &PeftConfig) -> std::result::Result<(), String> {
    match config.peft_type.as_deref() {
        None | Some("LORA") => {}
        Some(other) => return Err(format!("peft_type {other} is not supported (only LORA)")),
    }
    let unsupported = [
        (config.use_dora, "use_dora (DoRA)"),
        (config.lora_bias, "lora_bias"),
        (config.layer_replication.is_some(), "layer_replication"),
        (
            config
                .target_parameters
                .as_ref()
                .is_some_and(|v| !is_empty(v)),
            "target_parameters",
        ),
        (
            config.trainable_token_indices.is_some(),
            "trainable_token_indices",
        ),
        (
            config.alora_invocation_tokens.is_some(),
            "alora_invocation_tokens (aLoRA)",
        ),
    ];
    if let Some((_, what)) = unsupported.iter().find(|(on, _)| *on) {
        return Err(format!("{what} is not supported"));
    }
    match config.bias.as_str() {
        "none" | "all" | "lora_only" => {}
        other => return Err(format!("bias {other:?} is not one of none, all, lora_only")),
    }
    if config.r == 0 {
        return Err("r is 0".into());
    }
    Ok(())
}

fn is_empty(v: &serde_json::Value) -> bool {
    v.is_null() || v.as_array().is_some_and(Vec::is_empty)
}

impl PeftConfig {
    /// peft's `get_pattern_key`: the first pattern key `k` (in the file's order... sorted here)
    /// for which the module name matches `(.*\.)?k$`.
    fn pattern_value<T: Copy>(patterns: &BTreeMap<String, T>, module: &str) -> Option<T> {
        patterns
            .iter()
            .find(|(k, _)| pattern_matches(k, module))
            .map(|(_, v)| *v)
    }

    fn rank_for(&self, module: &str) -> usize {
        Self::pattern_value(&self.rank_pattern, module).unwrap_or(self.r)
    }

    fn alpha_for(&self, module: &str) -> f64 {
        Self::pattern_value(&self.alpha_pattern, module).unwrap_or(self.lora_alpha)
    }
}

/// Whether `module` matches the rank/alpha pattern key `key` (`(.*\.)?key$` as a regex).
fn pattern_matches(key: &str, module: &str) -> bool {
    fancy_regex::Regex::new(&format!(r"^(.*\.)?(?:{key})$"))
        .ok()
        .and_then(|re| re.is_match(module).ok())
        .unwrap_or(false)
}

/// The compiled `target_modules`.
enum Targets {
    /// No `target_modules` (peft then picks per architecture; the tensors say which).
    Any,
    List(Vec<String>),
    Regex(String, fancy_regex::Regex),
}

impl Targets {
    fn new(config: &PeftConfig) -> std::result::Result<Self, String> {
        Ok(match &config.target_modules {
            None => Targets::Any,
            Some(TargetModules::List(list)) => Targets::List(list.clone()),
            Some(TargetModules::Regex(re)) => {
                // peft: `re.fullmatch(target_modules, key)`.
                let compiled = fancy_regex::Regex::new(&format!("^(?:{re})$"))
                    .map_err(|e| format!("target_modules regex {re:?}: {e}"))?;
                Targets::Regex(re.clone(), compiled)
            }
        })
    }

    fn selects(&self, module: &str) -> std::result::Result<bool, String> {
        Ok(match self {
            Targets::Any => true,
            Targets::List(list) => list.iter().any(|t| list_entry_selects(t, module)),
            Targets::Regex(re, compiled) => compiled
                .is_match(module)
                .map_err(|e| format!("target_modules regex {re:?} on {module}: {e}"))?,
        })
    }

    /// Every list entry (or the regex) selects at least one of `modules`.
    fn check_all_used<'a>(
        &self,
        modules: impl Iterator<Item = &'a str> + Clone,
    ) -> std::result::Result<(), String> {
        match self {
            Targets::Any => Ok(()),
            Targets::List(list) => {
                for t in list {
                    if !modules.clone().any(|m| list_entry_selects(t, m)) {
                        return Err(format!(
                            "target module {t:?} selects none of the adapter's modules"
                        ));
                    }
                }
                Ok(())
            }
            Targets::Regex(re, _) => {
                if modules.clone().next().is_none() {
                    Err(format!("target_modules regex {re:?} selects no module"))
                } else {
                    Ok(())
                }
            }
        }
    }
}

/// peft's list rule: the module is the entry, or ends with `.` + the entry.
fn list_entry_selects(entry: &str, module: &str) -> bool {
    module == entry || module.ends_with(&format!(".{entry}"))
}

/// A checkpoint's weights with an adapter merged in (a candle weight source).
pub struct MergedWeights {
    base: VarBuilder<'static>,
    source: String,
    deltas: BTreeMap<String, Delta>,
}

impl MergedWeights {
    fn merged(&self, name: &str, base: Tensor, dtype: DType) -> candle_core::Result<Tensor> {
        let Some(delta) = self.deltas.get(name) else {
            return Ok(base);
        };
        let device = base.device().clone();
        let dims = base.dims().to_vec();
        match delta {
            Delta::Replace(t) => {
                if t.dims() != dims.as_slice() {
                    candle_core::bail!(
                        "adapter {}: tensor {name} is {:?} in the adapter but {dims:?} in the checkpoint",
                        self.source,
                        t.dims()
                    );
                }
                t.to_device(&device)?.to_dtype(dtype)
            }
            Delta::LowRank {
                module,
                a,
                b,
                scale,
                transpose,
            } => {
                let (out, inp) = match (dims.as_slice(), *transpose) {
                    ([o, i], false) | ([i, o], true) => (*o, *i),
                    _ => candle_core::bail!(
                        "adapter {}: module {module}: {name} is {dims:?}, not a matrix",
                        self.source
                    ),
                };
                if a.dim(1)? != inp || b.dim(0)? != out {
                    candle_core::bail!(
                        "adapter {}: module {module}: lora_A {:?} and lora_B {:?} do not fit {name} {dims:?}",
                        self.source,
                        a.dims(),
                        b.dims()
                    );
                }
                add_low_rank(&base, a, b, *scale, *transpose, dtype)
            }
        }
    }
}

/// `base + scale · B A` (`(B A)ᵀ` when `transpose`), computed in f32 on `base`'s device and
/// rounded once into `dtype`. Shapes must fit (`base` `(out, in)`, `a` `(r, in)`, `b` `(out, r)`).
pub fn add_low_rank(
    base: &Tensor,
    a: &Tensor,
    b: &Tensor,
    scale: f64,
    transpose: bool,
    dtype: DType,
) -> candle_core::Result<Tensor> {
    let device = base.device();
    let (a, b) = (
        a.to_dtype(DType::F32)?.to_device(device)?,
        b.to_dtype(DType::F32)?.to_device(device)?,
    );
    let mut ba = (b.matmul(&a)? * scale)?;
    if transpose {
        ba = ba.t()?;
    }
    (base.to_dtype(DType::F32)? + ba)?.to_dtype(dtype)
}

impl MergedWeights {
    /// Reads `name` (checked against `shape` when given) with its delta merged; a merged
    /// tensor's base is read in f32 so that the sum is rounded once, into `dtype`.
    fn read(
        &self,
        name: &str,
        shape: Option<(Shape, candle_nn::Init)>,
        dtype: DType,
    ) -> candle_core::Result<Tensor> {
        let wide = if self.deltas.contains_key(name) {
            DType::F32
        } else {
            dtype
        };
        let base = match shape {
            Some((s, h)) => self.base.get_with_hints_dtype(s, name, h, wide)?,
            None => self.base.get_unchecked_dtype(name, wide)?,
        };
        self.merged(name, base, dtype)
    }
}

impl SimpleBackend for MergedWeights {
    fn get(
        &self,
        s: Shape,
        name: &str,
        h: candle_nn::Init,
        dtype: DType,
        _dev: &Device,
    ) -> candle_core::Result<Tensor> {
        self.read(name, Some((s, h)), dtype)
    }

    fn get_unchecked(
        &self,
        name: &str,
        dtype: DType,
        _dev: &Device,
    ) -> candle_core::Result<Tensor> {
        self.read(name, None, dtype)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.base.contains_tensor(name)
    }
}

#[cfg(test)]
#[path = "adapter_tests.rs"]
mod tests;
