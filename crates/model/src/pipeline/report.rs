//! What loading a checkpoint chooses, and why, before anything is scored (`rewarddance
//! check-model`, `score --explain`): template, tokenizer, tile settings, answer tokens, rope.
//! Built by the same code as [`crate::RewardModel::load`], without reading the weights.

use serde::Serialize;

use crate::error::Result;
use crate::family::internvl::config::CheckpointLayout;
use crate::family::internvl::prompt_settings;
use crate::family::FamilyConfig;
use crate::nn::language::config::{RopeScaling, TextArch};
use crate::pipeline::LoadOptions;
use crate::runtime::checkpoint::Checkpoint;
use crate::TemplateSource;

/// Everything a load decides from a checkpoint's files and the load options.
#[derive(Debug, Clone, Serialize)]
pub struct ModelReport {
    /// Checkpoint id.
    pub id: String,
    /// Checkpoint layout (decides the template rule and tensor names).
    pub layout: CheckpointLayout,
    /// Language-model family.
    pub language_model: TextArch,
    /// Chat template in use, where it came from, and whether special tokens are added.
    pub template: TemplateSource,
    /// Tokenizer facts.
    pub tokenizer: TokenizerReport,
    /// The answer tokens whose probability is the reward.
    pub answers: AnswerReport,
    /// Image tiling and tokens.
    pub tiling: TilingReport,
    /// Rotary embedding settings.
    pub rope: RopeReport,
}

/// Tokenizer facts a prompt depends on.
#[derive(Debug, Clone, Serialize)]
pub struct TokenizerReport {
    /// Which file the tokenizer was built from.
    pub source: String,
    /// Vocabulary size with added tokens.
    pub vocab_size: usize,
    /// `bos_token` from `tokenizer_config.json` (empty when not set).
    pub bos_token: String,
    /// `eos_token` from `tokenizer_config.json` (empty when not set).
    pub eos_token: String,
    /// Id of the token where rationale decoding stops.
    pub end_of_turn_id: Option<u32>,
    /// Id of `<IMG_CONTEXT>`.
    pub image_context_id: u32,
}

/// The answer tokens.
#[derive(Debug, Clone, Serialize)]
pub struct AnswerReport {
    /// Positive answer text and id.
    pub yes: (String, u32),
    /// Negative answer text and id.
    pub no: (String, u32),
}

/// Tiling settings and where they came from.
#[derive(Debug, Clone, Serialize)]
pub struct TilingReport {
    /// Tile side in pixels.
    pub tile_size: u32,
    /// Fewest tiles per image.
    pub min_tiles: usize,
    /// Most tiles per image.
    pub max_tiles: usize,
    /// Whether a thumbnail tile follows a multi-tile grid.
    pub use_thumbnail: bool,
    /// Image-context tokens per tile.
    pub tokens_per_tile: usize,
    /// Which settings decided the above.
    pub from: &'static str,
}

/// Rotary settings.
#[derive(Debug, Clone, Serialize)]
pub struct RopeReport {
    /// Rotary base.
    pub theta: f64,
    /// `none`, `linear` or `dynamic`.
    pub scaling: &'static str,
    /// Scaling factor (1 when none).
    pub factor: f64,
    /// The trained length past which dynamic NTK changes the base.
    pub original_max_position_embeddings: Option<usize>,
    /// Longest accepted sequence.
    pub context: usize,
}

/// The report for `checkpoint` loaded with `options` (no weights are read).
pub fn check_model(checkpoint: &Checkpoint, options: &LoadOptions) -> Result<ModelReport> {
    // The report shows InternVL's tiling; a second family adds its own arm here.
    let FamilyConfig::InternVl(config) = FamilyConfig::parse(
        &checkpoint.config_json,
        checkpoint.preprocessor_config_json.as_deref(),
    )?;
    let prompt = super::prompt::prompt_builder(
        checkpoint,
        &prompt_settings(&config),
        &options.template,
        &options.answers,
    )?;
    let (yes, no) = prompt.answer_ids();
    let (bos, eos) = prompt.special_tokens();
    let t = &config.text;
    let (scaling, factor, original) = match t.rope_scaling {
        RopeScaling::None => ("none", 1.0, None),
        RopeScaling::Linear { factor } => ("linear", factor, None),
        RopeScaling::Dynamic {
            factor,
            original_max_position_embeddings,
        } => ("dynamic", factor, Some(original_max_position_embeddings)),
    };
    Ok(ModelReport {
        id: checkpoint.id.clone(),
        layout: config.layout,
        language_model: t.arch,
        template: prompt.template_source().clone(),
        tokenizer: TokenizerReport {
            source: checkpoint.tokenizer_source.to_string(),
            vocab_size: prompt.vocab_size(),
            bos_token: bos.to_string(),
            eos_token: eos.to_string(),
            end_of_turn_id: prompt.end_token_id(),
            image_context_id: prompt.image_context_id(),
        },
        answers: AnswerReport {
            yes: (options.answers.yes.clone(), yes),
            no: (options.answers.no.clone(), no),
        },
        tiling: TilingReport {
            tile_size: config.tiling.image_size,
            min_tiles: config.tiling.min_tiles,
            max_tiles: config.tiling.max_tiles,
            use_thumbnail: config.tiling.use_thumbnail,
            tokens_per_tile: config.tokens_per_tile(),
            from: match config.layout {
                CheckpointLayout::OpenGvLab => {
                    "config.json force_image_size / dynamic_image_size / min_dynamic_patch / \
                     max_dynamic_patch / use_thumbnail"
                }
                CheckpointLayout::HuggingFace => {
                    "preprocessor_config.json size / min_patches / max_patches; crop_to_patches \
                     is InternVLProcessor's default (true), whatever the file says"
                }
            },
        },
        rope: RopeReport {
            theta: t.rope_theta,
            scaling,
            factor,
            original_max_position_embeddings: original,
            context: t.max_position_embeddings,
        },
    })
}
