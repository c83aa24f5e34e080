//! `rewarddance bench-model --lora N`: named rewards with N random LoRA adapters (r 8,
//! alpha 32, ms-swift's default, on every linear layer of the language model; with
//! `--lora-vision` also on the vision tower's and `mlp1`'s) at a preset's real shapes. Rows:
//! the base alone, one adapter merged into the weights, 2 and N adapters unmerged with the
//! batch's items spread over them, and N rewards of each item scored in one call (its image
//! encoded once, or once per adapter when they change the image side) against N calls that
//! share nothing.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Result};
use rewarddance_model::family::internvl::config::CheckpointLayout;
use rewarddance_model::nn::language::config::TextArch;
use rewarddance_model::pipeline::rewards::RewardSpec;
use rewarddance_model::{Checkpoint, FamilyConfig, LoadOptions, Mode, PreparedItem, RewardModel};

use crate::bench_model::synthetic_item;

/// LoRA rank and alpha of the generated adapters.
const RANK: usize = 8;
const ALPHA: f64 = 32.0;

/// Runs the table for `adapters` adapters over each of `batches`; `vision`: the adapters also
/// change the vision tower and the projector.
pub fn run(
    checkpoint: &Checkpoint,
    options: LoadOptions,
    adapters: usize,
    vision: bool,
    iters: usize,
    batches: &[usize],
) -> Result<std::process::ExitCode> {
    if adapters < 2 {
        bail!("--lora needs at least 2 adapters");
    }
    let config = FamilyConfig::parse(
        &checkpoint.config_json,
        checkpoint.preprocessor_config_json.as_deref(),
    )?;
    if config.text().arch != TextArch::Qwen2 {
        bail!("--lora generates Qwen2 module names: use a Qwen2 preset (mini, 1b, 2b, 8b)");
    }
    let dir = std::env::temp_dir().join(format!("rd-bench-lora-{}", std::process::id()));
    let dirs: Vec<PathBuf> = (0..adapters)
        .map(|k| write_adapter(&dir.join(format!("a{k}")), &config, k as u64, vision))
        .collect::<Result<_>>()?;
    let reward = |name: &str, adapter: Option<&PathBuf>| RewardSpec {
        adapter: adapter.cloned(),
        ..RewardSpec::named(name)
    };
    let unmerged = |k: usize| -> Vec<RewardSpec> {
        dirs[..k]
            .iter()
            .enumerate()
            .map(|(i, d)| reward(&format!("r{i}"), Some(d)))
            .collect()
    };
    let iters = iters.max(1);
    let scope = if vision {
        "every linear layer of the language model, the vision tower and mlp1"
    } else {
        "every language-model linear layer"
    };
    println!(
        "model {}  LoRA r {RANK} alpha {ALPHA} on {scope}; pointwise items, one distinct image each",
        checkpoint.id
    );
    println!("| setup | batch | items/s | vs base |");
    println!("|---|---:|---:|---:|");
    let setups: Vec<(String, Vec<RewardSpec>)> = vec![
        ("base".into(), vec![reward("base", None)]),
        (
            "1 adapter, merged".into(),
            vec![reward("a", Some(&dirs[0]))],
        ),
        ("2 adapters, unmerged, mixed".into(), unmerged(2)),
        (
            format!("{adapters} adapters, unmerged, mixed"),
            unmerged(adapters),
        ),
    ];
    for &batch in batches {
        let mut base_rate = None;
        for (name, specs) in &setups {
            let model = RewardModel::load_rewards(checkpoint, options.clone(), specs)?;
            let items: Vec<PreparedItem> = (0..batch)
                .map(|i| {
                    model.prepare_for(&synthetic_item(&model, Mode::Pointwise, i), i % specs.len())
                })
                .collect::<rewarddance_model::Result<_>>()?;
            let rate = batch as f64 / seconds(iters, || score(&model, &items))?;
            let base = *base_rate.get_or_insert(rate);
            println!("| {name} | {batch} | {rate:.2} | {:.2}x |", rate / base);
        }
    }
    // N rewards per item: one call (images encoded once in-batch, or once per adapter with
    // `--lora-vision`) vs N calls sharing nothing.
    println!();
    println!("| {adapters} rewards per item | items | scores/s | speed-up |");
    println!("|---|---:|---:|---:|");
    let specs = unmerged(adapters);
    let rewards: Vec<usize> = (0..adapters).collect();
    for &batch in batches {
        let shared = RewardModel::load_rewards(
            checkpoint,
            LoadOptions {
                reuse_images: true,
                ..options.clone()
            },
            &specs,
        )?;
        let items: Vec<_> = (0..batch)
            .map(|i| synthetic_item(&shared, Mode::Pointwise, i))
            .collect();
        let one_call = seconds(iters, || {
            let prepared: Vec<PreparedItem> = items
                .iter()
                .flat_map(|item| shared.prepare_rewards(item, &rewards))
                .collect::<rewarddance_model::Result<_>>()?;
            score(&shared, &prepared)
        })?;
        drop(shared);
        let apart = RewardModel::load_rewards(checkpoint, options.clone(), &specs)?;
        let n_calls = seconds(iters, || {
            for &r in &rewards {
                let prepared: Vec<PreparedItem> = items
                    .iter()
                    .map(|item| apart.prepare_for(item, r))
                    .collect::<rewarddance_model::Result<_>>()?;
                score(&apart, &prepared)?;
            }
            Ok(())
        })?;
        let scores = (batch * adapters) as f64;
        println!(
            "| {adapters} calls, nothing shared | {batch} | {:.2} | 1.00x |",
            scores / n_calls
        );
        println!(
            "| one call, {adapters} rewards each | {batch} | {:.2} | {:.2}x |",
            scores / one_call,
            n_calls / one_call
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(std::process::ExitCode::SUCCESS)
}

/// Scores `items` as one batch.
fn score(model: &RewardModel, items: &[PreparedItem]) -> Result<()> {
    let refs: Vec<&PreparedItem> = items.iter().collect();
    model.score_prepared(&refs)?;
    Ok(())
}

/// Mean seconds of `iters` runs of `f` after one warm-up.
fn seconds(iters: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let t = Instant::now();
    for _ in 0..iters {
        f()?;
    }
    Ok(t.elapsed().as_secs_f64() / iters as f64)
}

/// A LoRA module: its peft name (after `base_model.model.`), in and out widths.
type Module = (String, usize, usize);

/// The linear layers of the Qwen2 language model, and with `vision` those of InternViT and
/// `mlp1` (OpenGVLab names, as the presets are laid out).
fn modules(config: &FamilyConfig, vision: bool) -> Result<Vec<Module>> {
    let t = config.text();
    let (h, d, i) = (t.hidden_size, t.head_dim, t.intermediate_size);
    let mut out = Vec::new();
    for layer in 0..t.num_layers {
        let at = |n: &str| format!("language_model.model.layers.{layer}.{n}");
        out.extend([
            (at("self_attn.q_proj"), h, t.num_heads * d),
            (at("self_attn.k_proj"), h, t.num_kv_heads * d),
            (at("self_attn.v_proj"), h, t.num_kv_heads * d),
            (at("self_attn.o_proj"), t.num_heads * d, h),
            (at("mlp.gate_proj"), h, i),
            (at("mlp.up_proj"), h, i),
            (at("mlp.down_proj"), i, h),
        ]);
    }
    if vision {
        let FamilyConfig::InternVl(c) = config;
        if c.layout != CheckpointLayout::OpenGvLab {
            bail!("--lora-vision generates OpenGVLab vision names: use a preset");
        }
        let (v, vi) = (c.vision.hidden_size, c.vision.intermediate_size);
        for layer in 0..c.vision.num_layers {
            let at = |n: &str| format!("vision_model.encoder.layers.{layer}.{n}");
            out.extend([
                (at("attn.qkv"), v, 3 * v),
                (at("attn.proj"), v, v),
                (at("mlp.fc1"), v, vi),
                (at("mlp.fc2"), vi, v),
            ]);
        }
        let factor = (1.0 / c.downsample_ratio).round() as usize;
        out.push(("mlp1.1".into(), v * factor * factor, h));
        out.push(("mlp1.3".into(), h, h));
    }
    Ok(out)
}

/// Writes a peft adapter directory for [`modules`], with seeded small values, and returns it.
fn write_adapter(dir: &Path, config: &FamilyConfig, seed: u64, vision: bool) -> Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let modules = modules(config, vision)?;
    let device = candle_core::Device::Cpu;
    let mut rng = rewarddance_model::SplitMix64(seed + 1);
    let mut noise = |n: usize, scale: f32| -> Vec<f32> {
        (0..n)
            .map(|_| (((rng.next() >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) as f32) * scale)
            .collect()
    };
    let mut tensors = std::collections::HashMap::new();
    for (name, inp, out) in &modules {
        let key = format!("base_model.model.{name}");
        let a = candle_core::Tensor::from_vec(noise(RANK * inp, 0.02), (RANK, *inp), &device)?;
        let b = candle_core::Tensor::from_vec(noise(out * RANK, 0.02), (*out, RANK), &device)?;
        tensors.insert(format!("{key}.lora_A.weight"), a);
        tensors.insert(format!("{key}.lora_B.weight"), b);
    }
    candle_core::safetensors::save(&tensors, dir.join("adapter_model.safetensors"))?;
    // peft matches a list entry against the end of a module name after a dot: the last two
    // parts (`self_attn.q_proj`, `attn.qkv`, `mlp1.1`) select each kind of layer.
    let mut targets: Vec<String> = modules
        .iter()
        .map(|(n, _, _)| {
            let mut parts = n.rsplitn(3, '.');
            let (last, before) = (parts.next().unwrap_or(n), parts.next().unwrap_or(""));
            format!("{before}.{last}")
        })
        .collect();
    targets.sort();
    targets.dedup();
    let config = serde_json::json!({
        "peft_type": "LORA",
        "r": RANK,
        "lora_alpha": ALPHA,
        "target_modules": targets,
    });
    std::fs::write(dir.join("adapter_config.json"), config.to_string())?;
    Ok(dir.to_path_buf())
}
