//! Real-size InternVL shapes with random weights, for benchmarks and memory checks on machines
//! without the real checkpoints: `Checkpoint::random(preset)`.
//!
//! The shapes: InternViT-300M (448 tiles, patch 14, 24 blocks of width 1024) with decoders at
//! the Qwen2.5-0.5B / 1.5B / 7B shapes (hidden size, layers, heads and MLP width of each
//! model's published `config.json`), OpenGVLab layout, downsample 0.5 (256 tokens per tile). `mini` keeps the 1B model's vision/language FLOP split (~70% vision for a
//! 72-token + 1-image item) at ~1/100 of the compute, so CPU timings predict GPU ratios.

use candle_core::{DType, Device, Result, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;

/// Names accepted by `Checkpoint::random`.
pub const PRESETS: [&str; 4] = ["1b", "2b", "8b", "mini"];

struct Shapes {
    vit_width: usize,
    vit_layers: usize,
    vit_heads: usize,
    vit_mlp: usize,
    tile: usize,
    patch: usize,
    llm_width: usize,
    llm_layers: usize,
    llm_heads: usize,
    llm_kv_heads: usize,
    llm_mlp: usize,
    vocab: usize,
}

/// `config.json` (OpenGVLab layout) of a preset, or `None` for an unknown name.
pub fn preset_config(name: &str) -> Option<String> {
    let vit300m = (1024, 24, 16, 4096, 448, 14);
    let s = match name {
        "1b" => shapes(vit300m, (896, 24, 14, 2, 4864, 151_674)),
        "2b" => shapes(vit300m, (1536, 28, 12, 2, 8960, 151_674)),
        "8b" => shapes(vit300m, (3584, 28, 28, 4, 18_944, 152_064)),
        // ~1/100 of the 1B: ViT width 128 x 12 blocks on 224 tiles, Qwen2 width 128 x 12 blocks.
        "mini" => shapes((128, 12, 4, 512, 224, 14), (128, 8, 4, 2, 512, 8_192)),
        _ => return None,
    };
    Some(
        serde_json::json!({
            "architectures": ["InternVLChatModel"],
            "model_type": "internvl_chat",
            "downsample_ratio": 0.5,
            "dynamic_image_size": true,
            "force_image_size": s.tile,
            "min_dynamic_patch": 1,
            "max_dynamic_patch": 12,
            "ps_version": "v2",
            "select_layer": -1,
            "template": "internvl2_5",
            "use_thumbnail": true,
            "vision_config": {
                "hidden_size": s.vit_width, "num_hidden_layers": s.vit_layers,
                "num_attention_heads": s.vit_heads, "intermediate_size": s.vit_mlp,
                "image_size": s.tile, "patch_size": s.patch, "qkv_bias": true,
                "qk_normalization": false, "norm_type": "layer_norm", "layer_norm_eps": 1e-6,
                "hidden_act": "gelu"
            },
            "llm_config": {
                "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
                "hidden_size": s.llm_width, "num_hidden_layers": s.llm_layers,
                "num_attention_heads": s.llm_heads, "num_key_value_heads": s.llm_kv_heads,
                "intermediate_size": s.llm_mlp, "vocab_size": s.vocab, "rms_norm_eps": 1e-6,
                "rope_theta": 1_000_000.0, "max_position_embeddings": 32_768,
                "tie_word_embeddings": false, "hidden_act": "silu"
            }
        })
        .to_string(),
    )
}

fn shapes(
    (vit_width, vit_layers, vit_heads, vit_mlp, tile, patch): (
        usize,
        usize,
        usize,
        usize,
        usize,
        usize,
    ),
    (llm_width, llm_layers, llm_heads, llm_kv_heads, llm_mlp, vocab): (
        usize,
        usize,
        usize,
        usize,
        usize,
        usize,
    ),
) -> Shapes {
    Shapes {
        vit_width,
        vit_layers,
        vit_heads,
        vit_mlp,
        tile,
        patch,
        llm_width,
        llm_layers,
        llm_heads,
        llm_kv_heads,
        llm_mlp,
        vocab,
    }
}

/// A weight source that makes up every tensor it is asked for: biases 0, norm weights 1, layer
/// scales 0.1, everything else N(0, 0.02). Scores from it are meaningless; speed and memory are
/// those of the real shapes.
pub struct RandomWeights;

impl SimpleBackend for RandomWeights {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> Result<Tensor> {
        let leaf = name.rsplit('.').next().unwrap_or(name);
        let t = if leaf == "bias" {
            Tensor::zeros(shape, DType::F32, dev)?
        } else if matches!(leaf, "ls1" | "ls2" | "lambda_1" | "lambda_2") {
            Tensor::full(0.1f32, shape, dev)?
        } else if name.contains("norm") || name.starts_with("mlp1.0") {
            Tensor::ones(shape, DType::F32, dev)?
        } else {
            Tensor::randn(0f32, 0.02, shape, dev)?
        };
        t.to_dtype(dtype)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> Result<Tensor> {
        candle_core::bail!("random weights have no shape for {name}")
    }

    fn contains_tensor(&self, _: &str) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ModelConfig;

    #[test]
    fn every_preset_parses() {
        for name in PRESETS {
            let cfg = ModelConfig::parse(&preset_config(name).unwrap(), None).unwrap();
            assert_eq!(
                cfg.tokens_per_tile(),
                if name == "mini" { 64 } else { 256 },
                "{name}"
            );
        }
        assert!(preset_config("3b").is_none());
    }
}
