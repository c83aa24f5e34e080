//! InternVL's image side in the memory estimate ([`crate::pipeline::memory`]) and the FLOP
//! model: InternViT blocks up to the feature layer and the projector, their activations at a
//! tile budget, and their matmul FLOPs per tile.

use super::config::ModelConfig;
use crate::nn::fused_attention::{self, CUDA_MAX_HEAD_DIM};
use crate::nn::layers::NormKind;

/// Parameters the loader keeps for InternViT (blocks beyond the feature layer are skipped) and
/// the `mlp1` projector.
pub fn image_parameters(config: &ModelConfig) -> u64 {
    let v = &config.vision;
    let (c, i) = (v.hidden_size as u64, v.intermediate_size as u64);
    let p = v.patch_size as u64;
    let trained_grid = (v.image_size / v.patch_size) as u64;
    let norm = match v.norm {
        NormKind::LayerNorm => 2 * c,
        NormKind::RmsNorm => c,
    };
    let block = 2 * norm
        + 3 * c * c
        + if v.qkv_bias { 3 * c } else { 0 }
        + if v.qk_norm { 2 * c } else { 0 }
        + c * c
        + c
        + 2 * c
        + c * i
        + i
        + i * c
        + c;
    let layers = v.num_layers as i64;
    let kept = if config.feature_layer < 0 {
        layers + 1 + config.feature_layer
    } else {
        config.feature_layer
    }
    .clamp(0, layers) as u64;
    let vision = c * 3 * p * p + c + c + (trained_grid * trained_grid + 1) * c + kept * block;

    let h = config.text.hidden_size as u64;
    let factor = (1.0 / config.downsample_ratio).round() as u64;
    let proj_in = c * factor * factor;
    let projector = 2 * proj_in + proj_in * h + h + h * h + h;
    vision + projector
}

/// Peak bytes of the image side for one forward over `tiles` tiles (`bytes` per element): they all
/// go through InternViT at once; the peak of a block is its input, norm, q/k/v, output and MLP
/// hidden for every tile, plus two (tokens x tokens) score matrices per head (scores and
/// softmax) only where attention is not fused (the fused op runs for head dims up to
/// [`CUDA_MAX_HEAD_DIM`] unless `REWARDDANCE_FUSED_ATTENTION=0`); plus the f32 pixels and the
/// projected features.
pub fn image_activation_bytes(config: &ModelConfig, tiles: usize, bytes: u64) -> u64 {
    let Vit { n, c, i, heads: vh } = Vit::of(config);
    let tiles = tiles as u64;
    let fused = fused_attention::enabled() && (c / vh) as usize <= CUDA_MAX_HEAD_DIM;
    let scores = if fused { 0 } else { 2 * vh * n * n };
    let per_tile = n * (4 * c + 3 * c + i) + scores;
    let pixels = tiles * 3 * u64::from(config.tiling.image_size).pow(2) * 4;
    let features = tiles * config.tokens_per_tile() as u64 * config.text.hidden_size as u64;
    tiles * per_tile * bytes + pixels + features * bytes
}

/// Matmul FLOPs of one tile, `2 x params x tokens`: InternViT over every patch (+ class token)
/// and the projector over the tile's image tokens.
pub fn image_flops_per_tile(config: &ModelConfig) -> f64 {
    let v = &config.vision;
    let h = config.text.hidden_size;
    let grid = config.tiling.image_size as usize / v.patch_size;
    let vit_tokens = (grid * grid + 1) as f64;
    let vit_params = (v.num_layers
        * (4 * v.hidden_size * v.hidden_size + 2 * v.hidden_size * v.intermediate_size))
        as f64
        + (3 * v.patch_size * v.patch_size * v.hidden_size) as f64;
    let r = (1.0 / config.downsample_ratio).round() as usize;
    let proj_params = (v.hidden_size * r * r * h + h * h) as f64;
    2.0 * (vit_params * vit_tokens + proj_params * config.tokens_per_tile() as f64)
}

/// Peak bytes of the image side of one gradient item (`ScoreGrad`) over `tiles` tiles: the
/// forward of every tile (as for scoring), then the backward one tile at a time, each holding
/// every block's input plus one recomputed block with its gradients (f32) and four
/// (tokens x tokens) matrices per head (scores, probabilities and their gradients), and the
/// pixels of every tile with their gradients in f32.
pub fn image_gradient_bytes(config: &ModelConfig, tiles: usize, bytes: u64) -> u64 {
    let v = &config.vision;
    let Vit { n, c, i, heads } = Vit::of(config);
    let saved = v.num_layers as u64 * n * c * bytes;
    let block = 2 * n * (8 * c + 2 * i) * 4 + 4 * heads * n * n * 4;
    let pixels = 2 * tiles as u64 * 3 * u64::from(config.tiling.image_size).pow(2) * 4;
    image_activation_bytes(config, tiles, bytes) + saved + block + pixels
}

/// InternViT's shape as the estimates count it: tokens per tile (patches + class token),
/// width, MLP width and heads.
struct Vit {
    n: u64,
    c: u64,
    i: u64,
    heads: u64,
}

impl Vit {
    fn of(config: &ModelConfig) -> Self {
        let v = &config.vision;
        let grid = (config.tiling.image_size as usize / v.patch_size) as u64;
        Vit {
            n: grid * grid + 1,
            c: v.hidden_size as u64,
            i: v.intermediate_size as u64,
            heads: v.num_heads as u64,
        }
    }
}
