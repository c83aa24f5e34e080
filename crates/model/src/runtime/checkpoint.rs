//! Finding and reading a checkpoint: a local directory, a Hugging Face hub-cache entry
//! (`ORG/NAME`, offline), or the bundled default model compiled into the binary.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::VarBuilder;

use crate::error::{Error, Result};

/// Identifier under which the bundled default model reports itself.
pub const BUNDLED_MODEL_ID: &str = "bundled:tiny-internvl-random";

/// Where the weights live.
enum Weights {
    /// safetensors files on disk, memory-mapped at load.
    Files(Vec<PathBuf>),
    /// One safetensors blob in memory (the bundled model).
    Static(&'static [u8]),
    /// Made-up weights at a preset's real shapes (benchmarks only).
    Random,
    /// Weights computed from tensor names ([`crate::runtime::seeded`]): the conformance suite.
    Seeded(crate::runtime::seeded::TensorInventory),
}

/// Which files the tokenizer was built from (first found wins, in this order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenizerSource {
    /// `tokenizer.json`, used as it is.
    TokenizerJson,
    /// Qwen2 `vocab.json` + `merges.txt` (+ `tokenizer_config.json`), converted at load.
    VocabMerges,
    /// SentencePiece `tokenizer.model` (+ `tokenizer_config.json`), converted at load.
    SentencePiece,
    /// The tokenizer compiled into the binary (bundled and `random:` models).
    Bundled,
}

impl std::fmt::Display for TokenizerSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TokenizerSource::TokenizerJson => "tokenizer.json",
            TokenizerSource::VocabMerges => "vocab.json + merges.txt (converted as Qwen2Tokenizer)",
            TokenizerSource::SentencePiece => "tokenizer.model (converted as InternLM2Tokenizer)",
            TokenizerSource::Bundled => "bundled",
        })
    }
}

/// The files of one checkpoint, read into memory except for the weights.
pub struct Checkpoint {
    /// Human-readable id: the directory, the hub id, or [`BUNDLED_MODEL_ID`].
    pub id: String,
    /// `config.json`.
    pub config_json: String,
    /// `tokenizer.json`, or the one converted from a SentencePiece `tokenizer.model`.
    pub tokenizer_json: Vec<u8>,
    /// Which files [`Checkpoint::tokenizer_json`] came from.
    pub tokenizer_source: TokenizerSource,
    /// `tokenizer_config.json`, when present (chat template, special tokens).
    pub tokenizer_config_json: Option<String>,
    /// `preprocessor_config.json`, when present (HF layout tiling settings).
    pub preprocessor_config_json: Option<String>,
    /// `chat_template.jinja` (transformers 5), else `chat_template.json`'s `chat_template`
    /// (older processors), when present.
    pub chat_template: Option<String>,
    weights: Weights,
}

impl std::fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoint")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Checkpoint {
    /// Resolves `spec`: an existing directory, else a hub id looked up in the local Hugging Face
    /// cache (`$HF_HOME/hub`, never the network), or `random:<preset>` (real shapes, random
    /// weights: benchmarks of the whole service without a checkpoint).
    pub fn resolve(spec: &str) -> Result<Self> {
        if let Some(preset) = spec.strip_prefix("random:") {
            return Self::random(preset);
        }
        let path = Path::new(spec);
        if path.is_dir() {
            return Self::from_dir(path);
        }
        if path.exists() {
            return Err(Error::Checkpoint(format!(
                "{spec} is a file; pass the checkpoint directory that holds config.json"
            )));
        }
        let looks_like_hub_id = spec.split('/').count() == 2 && !spec.starts_with('.');
        if !looks_like_hub_id {
            return Err(Error::Checkpoint(format!(
                "{spec}: no such directory (and not an ORG/NAME hub id)"
            )));
        }
        let cache = hf_hub::Cache::from_env();
        let repo = cache.model(spec.to_string());
        let config = repo.get("config.json").ok_or_else(|| {
            Error::Checkpoint(format!(
                "{spec}: not a local directory and not in the Hugging Face cache at {}; this \
                 server never downloads: fetch it first (e.g. `huggingface-cli download {spec}`) \
                 or pass a directory",
                cache.path().display()
            ))
        })?;
        let dir = config
            .parent()
            .ok_or_else(|| Error::Checkpoint(format!("{spec}: bad cache path")))?;
        let mut ckpt = Self::from_dir(dir)?;
        ckpt.id = spec.to_string();
        Ok(ckpt)
    }

    /// Reads a checkpoint directory.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        Self::read_dir(dir, None)
    }

    /// Reads the small files of a checkpoint directory (configs, tokenizer, templates) and
    /// ignores its weights, if any: the tensors of `tensors` (names and shapes, as the
    /// checkpoint's safetensors would hold them) come from [`crate::runtime::seeded`] instead. For the
    /// real-config conformance suite, where the published weights are not at hand.
    pub fn from_dir_with_seeded_weights(
        dir: &Path,
        tensors: crate::runtime::seeded::TensorInventory,
    ) -> Result<Self> {
        Self::read_dir(dir, Some(Weights::Seeded(tensors)))
    }

    /// Reads `dir`; its safetensors files unless `weights` says otherwise.
    fn read_dir(dir: &Path, weights: Option<Weights>) -> Result<Self> {
        let read = |name: &str| -> Result<Option<Vec<u8>>> {
            let p = dir.join(name);
            match std::fs::read(&p) {
                Ok(bytes) => Ok(Some(bytes)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(Error::Checkpoint(format!("{}: {e}", p.display()))),
            }
        };
        let text = |name: &str| -> Result<Option<String>> {
            read(name)?
                .map(|b| {
                    String::from_utf8(b)
                        .map_err(|_| Error::Checkpoint(format!("{name} is not UTF-8")))
                })
                .transpose()
        };
        let missing =
            |name: &str| Error::Checkpoint(format!("{} is missing", dir.join(name).display()));
        let config_json = text("config.json")?.ok_or_else(|| missing("config.json"))?;
        let tokenizer_config_json = text("tokenizer_config.json")?;
        // `tokenizer.json` first; else Qwen2's `vocab.json` + `merges.txt` (slow-tokenizer
        // saves: InternVL2.5-1B, InternVL3), else a SentencePiece `tokenizer.model` (InternLM2.5
        // checkpoints often ship only that), each converted on the spot.
        let config = tokenizer_config_json.as_deref();
        let (tokenizer_json, tokenizer_source) = if let Some(json) = read("tokenizer.json")? {
            (json, TokenizerSource::TokenizerJson)
        } else if let (Some(vocab), Some(merges)) = (read("vocab.json")?, text("merges.txt")?) {
            let added = text("added_tokens.json")?;
            let json =
                crate::text::bpe_vocab::tokenizer_json(&vocab, &merges, config, added.as_deref())?;
            (json, TokenizerSource::VocabMerges)
        } else if let Some(model) = read("tokenizer.model")? {
            let json = crate::text::sentencepiece::tokenizer_json(&model, config)?;
            (json, TokenizerSource::SentencePiece)
        } else {
            return Err(Error::Checkpoint(format!(
                "{}: no tokenizer: none of tokenizer.json, vocab.json + merges.txt, tokenizer.model",
                dir.display()
            )));
        };
        Ok(Checkpoint {
            id: dir.display().to_string(),
            config_json,
            tokenizer_json,
            tokenizer_source,
            tokenizer_config_json,
            preprocessor_config_json: text("preprocessor_config.json")?,
            chat_template: match text("chat_template.jinja")? {
                Some(t) => Some(t),
                None => text("chat_template.json")?
                    .map(|j| chat_template_from_json(&j))
                    .transpose()?,
            },
            weights: match weights {
                Some(w) => w,
                None => Weights::Files(weight_files(dir)?),
            },
        })
    }

    /// The bundled default model: a tiny InternVL with **random weights** (the HF-layout test
    /// fixture), so `rewarddance score` / `serve` work on a fresh machine. Its scores mean nothing.
    pub fn bundled() -> Self {
        macro_rules! fixture {
            ($name:literal) => {
                include_bytes!(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/../../fixtures/models/tiny-internvl-hf/",
                    $name
                ))
            };
        }
        let utf8 = |b: &'static [u8]| String::from_utf8_lossy(b).into_owned();
        Checkpoint {
            id: BUNDLED_MODEL_ID.to_string(),
            config_json: utf8(fixture!("config.json")),
            tokenizer_json: fixture!("tokenizer.json").to_vec(),
            tokenizer_source: TokenizerSource::Bundled,
            tokenizer_config_json: Some(utf8(fixture!("tokenizer_config.json"))),
            preprocessor_config_json: Some(utf8(fixture!("preprocessor_config.json"))),
            chat_template: None,
            weights: Weights::Static(fixture!("model.safetensors")),
        }
    }

    /// A [`VarBuilder`] over the weights, converting to `dtype` on `device` as tensors are read.
    pub fn var_builder(&self, dtype: DType, device: &Device) -> Result<VarBuilder<'static>> {
        match &self.weights {
            Weights::Files(paths) => {
                // SAFETY: the files are mapped read-only; like every mmap-based loader (candle,
                // safetensors, transformers) we assume nobody truncates them while we run.
                unsafe { VarBuilder::from_mmaped_safetensors(paths, dtype, device) }
                    .map_err(|e| Error::Checkpoint(format!("reading safetensors: {e}")))
            }
            Weights::Static(bytes) => {
                VarBuilder::from_buffered_safetensors(bytes.to_vec(), dtype, device)
                    .map_err(|e| Error::Checkpoint(format!("reading bundled safetensors: {e}")))
            }
            Weights::Random => Ok(VarBuilder::from_backend(
                Box::new(crate::family::internvl::presets::RandomWeights),
                dtype,
                device.clone(),
            )),
            Weights::Seeded(tensors) => Ok(VarBuilder::from_backend(
                Box::new(crate::runtime::seeded::SeededWeights::new(tensors.clone())),
                dtype,
                device.clone(),
            )),
        }
    }

    /// A real-size InternVL with **random weights** (see [`crate::family::internvl::presets`]): for benchmarks and
    /// memory checks only. Uses the bundled tokenizer and the `internvl2_5` template.
    pub fn random(preset: &str) -> Result<Self> {
        let config_json =
            crate::family::internvl::presets::preset_config(preset).ok_or_else(|| {
                Error::Checkpoint(format!(
                    "unknown preset {preset:?} (expected one of {:?})",
                    crate::family::internvl::presets::PRESETS
                ))
            })?;
        let bundled = Self::bundled();
        Ok(Checkpoint {
            id: format!("random:{preset}"),
            config_json,
            tokenizer_json: bundled.tokenizer_json,
            tokenizer_source: TokenizerSource::Bundled,
            tokenizer_config_json: None,
            preprocessor_config_json: None,
            chat_template: None,
            weights: Weights::Random,
        })
    }
}

/// The template in a processor's `chat_template.json` (`{"chat_template": "..."}`).
fn chat_template_from_json(text: &str) -> Result<String> {
    let v: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| Error::Checkpoint(format!("chat_template.json: {e}")))?;
    v["chat_template"]
        .as_str()
        .map(String::from)
        .ok_or_else(|| {
            Error::Checkpoint("chat_template.json has no \"chat_template\" string".into())
        })
}

/// `model.safetensors`, or every shard named by `model.safetensors.index.json`.
fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let text = std::fs::read_to_string(&index)
            .map_err(|e| Error::Checkpoint(format!("{}: {e}", index.display())))?;
        let json: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::Checkpoint(format!("{}: {e}", index.display())))?;
        let map = json["weight_map"].as_object().ok_or_else(|| {
            Error::Checkpoint(format!("{}: no weight_map object", index.display()))
        })?;
        let mut files: Vec<String> = map
            .values()
            .filter_map(|v| v.as_str().map(String::from))
            .collect();
        files.sort();
        files.dedup();
        let paths: Vec<PathBuf> = files.iter().map(|f| dir.join(f)).collect();
        if let Some(p) = paths.iter().find(|p| !p.exists()) {
            return Err(Error::Checkpoint(format!(
                "shard {} is missing",
                p.display()
            )));
        }
        return Ok(paths);
    }
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    Err(Error::Checkpoint(format!(
        "{}: neither model.safetensors nor model.safetensors.index.json found",
        dir.display()
    )))
}
