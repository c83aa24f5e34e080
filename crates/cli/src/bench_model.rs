//! `rewarddance bench-model`: model throughput at real shapes (random weights) or on a real
//! checkpoint, in-process, with MFU against a matmul peak measured in the same run.
//!
//! Items are those of the transformers baseline (`tools/gpu/baseline.py`): pointwise = ~72
//! text tokens + one 448x448 image (1 tile); pairwise = the same with a reference image. Every image is distinct (no reuse), the feature
//! cache is off, so the numbers are raw compute.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use rewarddance_model::image::FloatImage;
use rewarddance_model::pipeline::gradient::Objective;
use rewarddance_model::{
    Candidate, Checkpoint, DType, FamilyConfig, ImageInput, LoadOptions, Mode, PreparedItem,
    RewardModel, ScoreItem,
};

use rewarddance_ranking::{schedule_pairs, Schedule};

use crate::model_args::parse_device;

/// Arguments of `rewarddance bench-model`.
#[derive(Args, Debug)]
pub struct BenchModelArgs {
    /// Real-size shapes with random weights: 1b, 2b, 8b (InternViT-300M + Qwen2 0.5B/1.5B/7B) or
    /// mini (1/100 of the 1B). Conflicts with --model.
    #[arg(long, conflicts_with = "model")]
    preset: Option<String>,
    /// Accepted for clarity with --preset (preset weights are always random).
    #[arg(long)]
    random_weights: bool,
    /// A real checkpoint directory or hub id instead of a preset.
    #[arg(long)]
    model: Option<String>,
    /// cpu or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// f32, f16 or bf16 (default: f32 on CPU, bf16 on CUDA).
    #[arg(long)]
    dtype: Option<String>,
    /// Batch sizes to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    batch: Vec<usize>,
    /// Modes to measure.
    #[arg(long, value_delimiter = ',', default_value = "pointwise,pairwise")]
    mode: Vec<String>,
    /// Timed repetitions per row (after one warm-up).
    #[arg(long, default_value_t = 3)]
    iters: usize,
    /// Instead of the throughput table, measure reuse: a group of 16 candidates against one
    /// reference, and an all-pairs ranking of 8 candidates, with and without reuse.
    #[arg(long)]
    reuse: bool,
    /// Instead of the throughput table, compare ScoreGrad (the gradient of p_yes with respect
    /// to a float candidate) with Score on the same items: ms per item and the peak RSS of the
    /// gradient run (Linux; reset before each row).
    #[arg(long, conflicts_with = "reuse")]
    grad: bool,
    /// Instead of the throughput table, measure named rewards with N random LoRA adapters
    /// (r 8, alpha 32, every linear layer of the language model; Qwen2 presets): the base
    /// alone, one merged adapter, 2..N unmerged adapters mixed in a batch, and N rewards per
    /// item in one call against N calls.
    #[arg(long, value_name = "N", conflicts_with_all = ["reuse", "grad"])]
    lora: Option<usize>,
    /// With `--lora`: the adapters also change every linear layer of the vision tower and
    /// `mlp1`, so each adapter's rewards encode images with their own weights.
    #[arg(long, requires = "lora")]
    lora_vision: bool,
}

/// Runs the benchmark and prints a table.
pub fn run(args: BenchModelArgs) -> Result<std::process::ExitCode> {
    let device = parse_device(&args.device)?;
    let dtype = match args.dtype.as_deref() {
        None => LoadOptions::default_dtype(&device),
        Some("f32") => DType::F32,
        Some("f16") => DType::F16,
        Some("bf16") => DType::BF16,
        Some(other) => bail!("unknown dtype {other:?}"),
    };
    let checkpoint = match (&args.preset, &args.model) {
        (Some(p), _) => Checkpoint::random(p)?,
        (None, Some(m)) => Checkpoint::resolve(m)?,
        (None, None) => bail!("pass --preset NAME --random-weights or --model DIR"),
    };
    let options = LoadOptions {
        device: device.clone(),
        dtype: Some(dtype),
        feature_cache_bytes: 0,
        prefix_reuse_min_tokens: usize::MAX,
        reuse_images: false,
        ..LoadOptions::default()
    };
    if args.reuse {
        return reuse_table(&checkpoint, options, args.iters);
    }
    if let Some(adapters) = args.lora {
        return crate::bench_lora::run(
            &checkpoint,
            options,
            adapters,
            args.lora_vision,
            args.iters,
            &args.batch,
        );
    }
    let started = Instant::now();
    let model = RewardModel::load(&checkpoint, options.clone()).context("loading the model")?;
    eprintln!(
        "loaded {} in {:.1}s",
        model.id(),
        started.elapsed().as_secs_f64()
    );
    if args.grad {
        let reuse = RewardModel::load(
            &checkpoint,
            LoadOptions {
                prefix_reuse_min_tokens: LoadOptions::DEFAULT_PREFIX_REUSE_MIN_TOKENS,
                ..options
            },
        )?;
        return grad_table(&model, &reuse, &args);
    }
    let peak = matmul_peak(&device, dtype)?;
    println!(
        "model {}  device {}  dtype {:?}  measured matmul peak {:.1} TFLOP/s",
        model.id(),
        args.device,
        dtype,
        peak / 1e12
    );
    println!("| mode | batch | tokens/item | TFLOP/item | ms/batch | items/s | MFU |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for mode_name in &args.mode {
        let mode: Mode = mode_name.parse()?;
        for &batch in &args.batch {
            let items: Vec<PreparedItem> = (0..batch)
                .map(|i| model.prepare(&synthetic_item(&model, mode, i)))
                .collect::<rewarddance_model::Result<_>>()?;
            let refs: Vec<&PreparedItem> = items.iter().collect();
            model.score_prepared(&refs)?; // warm-up
            let t = Instant::now();
            for _ in 0..args.iters.max(1) {
                model.score_prepared(&refs)?;
            }
            let secs = t.elapsed().as_secs_f64() / args.iters.max(1) as f64;
            let flops = item_flops(model.config(), &items[0]);
            let rate = batch as f64 / secs;
            println!(
                "| {mode_name} | {batch} | {} | {:.3} | {:.1} | {:.1} | {:.2} |",
                items[0].num_tokens(),
                flops / 1e12,
                secs * 1e3,
                rate,
                rate * flops / peak
            );
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// ScoreGrad against Score on the same float-candidate items, ScoreGrad with constant-prefix
/// reuse off (`plain`) and on (`reuse`).
fn grad_table(
    plain: &RewardModel,
    reuse: &RewardModel,
    args: &BenchModelArgs,
) -> Result<std::process::ExitCode> {
    println!(
        "model {}  device {}  ScoreGrad (p_yes) vs Score, one-tile float candidates (pairwise: one shared encoded reference)",
        plain.id(),
        args.device,
    );
    println!("| mode | batch | score ms/item | grad ms/item | grad / score | grad, prefix reuse ms/item | grad / score | grad peak RSS MiB |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    let side = plain.config().tile_size();
    for mode_name in &args.mode {
        let mode: Mode = mode_name.parse()?;
        for &batch in &args.batch {
            let items: Vec<PreparedItem> = (0..batch)
                .map(|i| {
                    let mut item = synthetic_item(plain, mode, i);
                    item.candidate = Candidate::Image(noise_float(side, 2 * i as u64)?);
                    // One reference for the whole batch, as in best-of-N against a reference:
                    // its prefix is computed once per batch when prefix reuse is on.
                    if mode == Mode::Pairwise {
                        item.reference = Some(noise_image(side, 1));
                    }
                    Ok(plain.prepare(&item)?)
                })
                .collect::<Result<_>>()?;
            let refs: Vec<&PreparedItem> = items.iter().collect();
            let iters = args.iters.max(1);
            let per_item = |t: Instant| t.elapsed().as_secs_f64() * 1e3 / (iters * batch) as f64;
            plain.score_prepared(&refs)?;
            let t = Instant::now();
            for _ in 0..iters {
                plain.score_prepared(&refs)?;
            }
            let score_ms = per_item(t);
            let objectives = vec![Objective::PYes; batch];
            let grad = |model: &RewardModel| -> Result<f64> {
                let t = Instant::now();
                for _ in 0..iters {
                    model.score_grad_batch(&refs, &objectives)?;
                }
                Ok(per_item(t))
            };
            reset_peak_rss();
            let grad_ms = grad(plain)?;
            let rss = peak_rss_mib().map_or_else(|| "n/a".to_string(), |m| format!("{m:.0}"));
            let reuse_ms = grad(reuse)?;
            println!(
                "| {mode_name} | {batch} | {score_ms:.1} | {grad_ms:.1} | {:.2}x | {reuse_ms:.1} | {:.2}x | {rss} |",
                grad_ms / score_ms,
                reuse_ms / score_ms
            );
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// A deterministic noise image of one tile as floats in [0, 1].
fn noise_float(side: u32, seed: u64) -> Result<ImageInput> {
    let values = noise_bytes(side, seed)
        .iter()
        .map(|&v| f32::from(v) / 255.0)
        .collect();
    Ok(ImageInput::Float(
        FloatImage::new(side, side, values)?.into(),
    ))
}

/// Resets the kernel's peak-RSS mark of this process (Linux `clear_refs` 5).
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Peak RSS since the last reset, in MiB (Linux `VmHWM`).
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// A deterministic noise image of one tile, distinct per `seed`.
fn noise_image(side: u32, seed: u64) -> ImageInput {
    ImageInput::Rgb8 {
        width: side,
        height: side,
        data: noise_bytes(side, seed),
    }
}

/// `side x side` RGB noise bytes, distinct per `seed`.
fn noise_bytes(side: u32, seed: u64) -> Vec<u8> {
    let mut state = (seed + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (0..side * side * 3)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

const BENCH_PROMPT: &str =
    "a watercolor painting of a lighthouse on a rocky coast at sunset with seagulls";

/// A distinct noise image of one tile, and ~72 text tokens around it.
pub(crate) fn synthetic_item(model: &RewardModel, mode: Mode, index: usize) -> ScoreItem {
    let side = model.config().tile_size();
    let seed = 2 * index as u64;
    ScoreItem {
        prompt: BENCH_PROMPT.into(),
        candidate: Candidate::Image(noise_image(side, seed)),
        reference: (mode == Mode::Pairwise).then(|| noise_image(side, seed + 1)),
        instruction: None,
        mode,
    }
}

/// Group scoring and all-pairs ranking, with reuse off (every image encoded per item, no shared
/// prefixes) and on (each distinct image encoded once, shared prefixes computed once).
fn reuse_table(
    checkpoint: &Checkpoint,
    plain: LoadOptions,
    iters: usize,
) -> Result<std::process::ExitCode> {
    let reuse = LoadOptions {
        prefix_reuse_min_tokens: LoadOptions::default().prefix_reuse_min_tokens,
        reuse_images: true,
        ..plain.clone()
    };
    let models = [
        RewardModel::load(checkpoint, plain)?,
        RewardModel::load(checkpoint, reuse)?,
    ];
    let side = models[0].config().tile_size();
    let pair = |reference: u64, candidate: u64| ScoreItem {
        prompt: BENCH_PROMPT.into(),
        candidate: Candidate::Image(noise_image(side, candidate)),
        reference: Some(noise_image(side, reference)),
        instruction: None,
        mode: Mode::Pairwise,
    };
    let group: Vec<ScoreItem> = (1..=16).map(|c| pair(0, c)).collect();
    let ranking: Vec<ScoreItem> = schedule_pairs(8, Schedule::AllPairs)
        .into_iter()
        .map(|(i, j)| pair(i as u64, j as u64))
        .collect();
    let iters = iters.max(1);
    println!(
        "model {}  reuse benchmark ({iters} timed runs each)",
        models[0].id()
    );
    println!("| scenario | items | no reuse ms | reuse ms | speed-up |");
    println!("|---|---:|---:|---:|---:|");
    let scenarios = [
        ("group: 16 candidates vs 1 reference", &group),
        ("ranking: 8 candidates, all pairs", &ranking),
    ];
    for (name, items) in scenarios {
        let mut ms = [0.0; 2];
        for (slot, model) in models.iter().enumerate() {
            let prepared = items
                .iter()
                .map(|i| model.prepare(i))
                .collect::<rewarddance_model::Result<Vec<_>>>()?;
            let refs: Vec<&PreparedItem> = prepared.iter().collect();
            model.score_prepared(&refs)?;
            let t = Instant::now();
            for _ in 0..iters {
                model.score_prepared(&refs)?;
            }
            ms[slot] = t.elapsed().as_secs_f64() * 1e3 / iters as f64;
        }
        println!(
            "| {name} | {} | {:.1} | {:.1} | {:.2}x |",
            items.len(),
            ms[0],
            ms[1],
            ms[0] / ms[1]
        );
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// Matmul FLOPs of one item, `2 x params x tokens` (a multiply and an add per weight and
/// token): the family's image side over every tile, the decoder over every token, and the
/// output head at the last position only.
fn item_flops(cfg: &FamilyConfig, item: &PreparedItem) -> f64 {
    let t = cfg.text();
    let q = t.num_heads * t.head_dim;
    let kv = t.num_kv_heads * t.head_dim;
    let llm_params = (t.num_layers
        * (t.hidden_size * (2 * q + 2 * kv) + 3 * t.hidden_size * t.intermediate_size))
        as f64;
    cfg.image_flops_per_tile() * item.num_tiles() as f64
        + 2.0 * (llm_params * item.num_tokens() as f64 + (t.hidden_size * t.vocab_size) as f64)
}

/// Best of a few large square matmuls in `dtype` on `device`, in FLOP/s.
fn matmul_peak(device: &rewarddance_model::Device, dtype: DType) -> Result<f64> {
    let n = if device.is_cpu() { 1024 } else { 8192 };
    let a = candle_core::Tensor::randn(0f32, 1.0, (n, n), device)?.to_dtype(dtype)?;
    let b = candle_core::Tensor::randn(0f32, 1.0, (n, n), device)?.to_dtype(dtype)?;
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let t = Instant::now();
        let c = a.matmul(&b)?;
        device.synchronize()?;
        drop(c);
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(2.0 * (n as f64).powi(3) / best)
}
