//! Named rewards on one base: unmerged LoRA adapters chosen per item (on the decoder, the
//! vision tower and the projector), against peft (`fixtures/reference/lora.json`), batch
//! invariance across rewards, what an unmerged slot refuses, and that several rewards of one
//! image encode it once per image-side adapter.

mod common;

use std::path::PathBuf;

use common::{fixtures, repo_root, score_item, Reference};
use rewarddance_model::pipeline::rewards::{RewardSpec, DEFAULT_REWARD};
use rewarddance_model::text::prompt::{AnswerTokens, Instructions};
use rewarddance_model::{LoadOptions, PreparedItem, RewardModel};
use serde_json::Value;

const LOGIT_TOL: f64 = 1e-4;
const BATCH_TOL: f32 = 1e-5;

fn adapter_dir(name: &str) -> PathBuf {
    repo_root().join("fixtures/adapters").join(name)
}

fn reward(name: &str, adapter: Option<PathBuf>) -> RewardSpec {
    RewardSpec {
        adapter,
        ..RewardSpec::named(name)
    }
}

fn load(model: &str, specs: &[RewardSpec]) -> rewarddance_model::Result<RewardModel> {
    let ckpt = fixtures().checkpoint(model).expect("checkpoint");
    RewardModel::load_rewards(&ckpt, LoadOptions::default(), specs)
}

fn lora_items(adapter: &str) -> Vec<Value> {
    let path = repo_root().join("fixtures/reference/lora.json");
    let all: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    all["adapters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == adapter)
        .unwrap_or_else(|| panic!("no {adapter} in lora.json"))["items"]
        .as_array()
        .unwrap()
        .clone()
}

/// Every reference item of `base`, prepared for reward `reward` with the reference's pixels.
fn prepared_for(model: &RewardModel, base: &str, reward: usize) -> Vec<PreparedItem> {
    let reference = Reference::load(base);
    reference
        .items()
        .iter()
        .map(|item| {
            let p = model
                .prepare_for(&score_item(item), reward)
                .expect("prepare");
            p.with_pixels(reference.pixels_of(item)).expect("pixels")
        })
        .collect()
}

#[test]
fn unmerged_adapters_match_peft_and_the_base_stays_the_base() {
    for (base, adapter) in [
        ("tiny-internvl-hf", "hf-llm-swift"),
        ("tiny-internvl-internlm2", "internlm2-wqkv"),
        // rsLoRA on every q/k/v/o, the HF-layout ViT's separate q/k/v (fused at load) too.
        ("tiny-internvl-hf", "hf-rslora"),
        // LLM + ViT (fused qkv, rank_pattern) + mlp1; the ViT's last layer is skipped.
        ("tiny-internvl-ogv", "ogv-llm-vit-mlp1"),
    ] {
        let specs = [
            reward(DEFAULT_REWARD, None),
            reward("tuned", Some(adapter_dir(adapter))),
        ];
        let model = load(base, &specs).unwrap_or_else(|e| panic!("{adapter}: {e}"));
        let infos = model.rewards();
        assert!(!infos[1].merged, "two rewards, one adapter: unmerged");
        assert!(infos[0].adapter.is_none());
        let expected = lora_items(adapter);
        // Both rewards in one batch: the base items, then the adapter's.
        let mut items = prepared_for(&model, base, 0);
        items.extend(prepared_for(&model, base, 1));
        let refs: Vec<&PreparedItem> = items.iter().collect();
        let scores = model.score_prepared(&refs).expect("scores");
        let n = items.len() / 2;
        let reference = Reference::load(base);
        for (k, item) in reference.items().iter().enumerate() {
            let id = item["id"].as_str().unwrap();
            let want = expected.iter().find(|e| e["id"] == id).expect("item");
            for (score, variant) in [(scores[k], "base"), (scores[n + k], "unmerged")] {
                let dy = (f64::from(score.logit_yes)
                    - want[variant]["logit_yes"].as_f64().unwrap())
                .abs();
                let dn =
                    (f64::from(score.logit_no) - want[variant]["logit_no"].as_f64().unwrap()).abs();
                assert!(
                    dy <= LOGIT_TOL && dn <= LOGIT_TOL,
                    "{adapter}/{id} {variant}: {dy:.2e} / {dn:.2e}"
                );
            }
        }
    }
}

/// A copy of `adapter` with every `lora_B` scaled: another adapter of the same shape.
fn scaled_copy(adapter: &str, factor: f64, tag: &str) -> PathBuf {
    let to = std::env::temp_dir().join(format!("rd-rewards-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&to);
    std::fs::create_dir_all(&to).unwrap();
    let from = adapter_dir(adapter);
    std::fs::copy(
        from.join("adapter_config.json"),
        to.join("adapter_config.json"),
    )
    .unwrap();
    let tensors = candle_core::safetensors::load(
        from.join("adapter_model.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let scaled: std::collections::HashMap<String, candle_core::Tensor> = tensors
        .into_iter()
        .map(|(k, v)| {
            let v = if k.contains("lora_B") {
                (v * factor).unwrap()
            } else {
                v
            };
            (k, v)
        })
        .collect();
    candle_core::safetensors::save(&scaled, to.join("adapter_model.safetensors")).unwrap();
    to
}

#[test]
fn a_batch_mixing_rewards_equals_each_item_alone() {
    let half = scaled_copy("hf-llm-swift", 0.5, "half");
    let specs = [
        reward(DEFAULT_REWARD, None),
        reward("swift", Some(adapter_dir("hf-llm-swift"))),
        RewardSpec {
            instructions: Instructions {
                pointwise: Some("Is '{prompt}' shown well? Answer yes or no.".into()),
                ..Instructions::default()
            },
            answers: Some(AnswerTokens {
                yes: "no".into(),
                no: "yes".into(),
            }),
            ..reward("half", Some(half.clone()))
        },
    ];
    let model = load("tiny-internvl-hf", &specs).expect("loads");
    let base = "tiny-internvl-hf";
    let per_reward: Vec<Vec<PreparedItem>> =
        (0..3).map(|r| prepared_for(&model, base, r)).collect();
    // Interleaved: item k of reward k % 3.
    let mixed: Vec<&PreparedItem> = (0..per_reward[0].len())
        .map(|k| &per_reward[k % 3][k])
        .collect();
    let batch = model.score_prepared(&mixed).expect("batch");
    for (k, item) in mixed.iter().enumerate() {
        let alone = model.score_prepared(&[item]).expect("alone")[0];
        let d = (batch[k].logit_yes - alone.logit_yes)
            .abs()
            .max((batch[k].logit_no - alone.logit_no).abs());
        assert!(d <= BATCH_TOL, "item {k} (reward {}): {d:.2e}", k % 3);
    }
    // The three rewards differ on the same item (adapter, scale, instruction and answers).
    let a = model
        .score_prepared(&[&per_reward[0][0], &per_reward[1][0], &per_reward[2][0]])
        .unwrap();
    assert!((a[0].p_yes - a[1].p_yes).abs() > 1e-3 && (a[1].p_yes - a[2].p_yes).abs() > 1e-3);
    let _ = std::fs::remove_dir_all(half);
}

#[test]
fn two_rewards_of_one_image_encode_it_once() {
    let specs = [
        reward(DEFAULT_REWARD, None),
        reward("swift", Some(adapter_dir("hf-llm-swift"))),
    ];
    let model = load("tiny-internvl-hf", &specs).expect("loads");
    let item = score_item(&Reference::load("tiny-internvl-hf").items()[0]);
    let a = model.prepare_for(&item, 0).unwrap();
    let b = model.prepare_for(&item, 1).unwrap();
    let before = model.feature_cache_stats();
    model.score_prepared(&[&a, &b]).unwrap();
    let after = model.feature_cache_stats();
    let images = a.images.len() as u64;
    assert_eq!(
        after.misses - before.misses,
        images,
        "each image encoded once"
    );
}

#[test]
fn an_adapter_on_the_image_side_encodes_its_own_features() {
    let specs = [
        reward(DEFAULT_REWARD, None),
        reward("swift", Some(adapter_dir("hf-llm-swift"))),
        reward("rslora", Some(adapter_dir("hf-rslora"))),
    ];
    let model = load("tiny-internvl-hf", &specs).expect("loads");
    let item = score_item(&Reference::load("tiny-internvl-hf").items()[0]);
    let prepared: Vec<PreparedItem> = (0..3)
        .map(|r| model.prepare_for(&item, r).unwrap())
        .collect();
    let refs: Vec<&PreparedItem> = prepared.iter().collect();
    let images = prepared[0].images.len() as u64;
    let before = model.feature_cache_stats();
    let first = model.score_prepared(&refs).unwrap();
    let after = model.feature_cache_stats();
    // The base and the LLM-only adapter share one encoding; the ViT adapter has its own.
    assert_eq!(
        after.misses - before.misses,
        2 * images,
        "two encodings per image"
    );
    // Again: both encodings come from the cache, and nothing changes.
    let again = model.score_prepared(&refs).unwrap();
    let last = model.feature_cache_stats();
    assert_eq!(last.misses, after.misses, "no new encoding");
    assert!(last.hits >= after.hits + 2 * images, "{last:?}");
    for (a, b) in first.iter().zip(&again) {
        assert!((a.logit_yes - b.logit_yes).abs() <= BATCH_TOL);
    }
    // The ViT adapter's reward alone, from a fresh model (no cache), is what it was.
    let fresh = load("tiny-internvl-hf", &specs).unwrap();
    let alone = fresh
        .score_prepared(&[&fresh.prepare_for(&item, 2).unwrap()])
        .unwrap()[0];
    assert!((alone.logit_yes - first[2].logit_yes).abs() <= BATCH_TOL);
    assert!((alone.logit_no - first[2].logit_no).abs() <= BATCH_TOL);
}

/// A variant of `hf-rslora` for what its uniform q/k/v leave out: on the ViT q and v adapted
/// but not k, v at rank 8 (not 16) and q with its own alpha, so the pieces of the fused q/k/v
/// differ in presence, rank and scale; plus LoRA on the HF ViT's `mlp.fc1` and the projector's
/// `linear_1` (seeded values).
fn uneven_vision_copy() -> PathBuf {
    use candle_core::{DType, Device, Tensor};
    let to = scaled_copy("hf-rslora", 1.0, "uneven");
    let device = Device::Cpu;
    let base = candle_core::safetensors::load(
        repo_root().join("fixtures/models/tiny-internvl-hf/model.safetensors"),
        &device,
    )
    .unwrap();
    let path = to.join("adapter_model.safetensors");
    let tensors = candle_core::safetensors::load(&path, &device).unwrap();
    let mut edited: std::collections::HashMap<String, Tensor> = tensors
        .into_iter()
        .filter(|(k, _)| !(k.contains("vision_tower") && k.contains("k_proj")))
        .map(|(k, v)| {
            let v = match (
                k.contains("vision_tower") && k.contains("v_proj"),
                k.contains("lora_A"),
            ) {
                (false, _) => v,
                (true, true) => v.narrow(0, 0, 8).unwrap(),
                (true, false) => v.narrow(1, 0, 8).unwrap(),
            };
            (k, v)
        })
        .collect();
    let seeded = |rows: usize, cols: usize, seed: f64| {
        let n = rows * cols;
        let t = Tensor::arange(0u32, n as u32, &device)
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap();
        (t.affine(0.37, seed).unwrap().sin().unwrap() * 0.2)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
            .reshape((rows, cols))
            .unwrap()
    };
    let r = 16;
    let mut add = |module: String, weight: &str, seed: f64| {
        let (out, inp) = base[weight].dims2().unwrap();
        edited.insert(
            format!("base_model.model.model.{module}.lora_A.weight"),
            seeded(r, inp, seed),
        );
        edited.insert(
            format!("base_model.model.model.{module}.lora_B.weight"),
            seeded(out, r, seed + 1.0),
        );
    };
    let mut layer = 0;
    while base.contains_key(&format!(
        "vision_tower.encoder.layer.{layer}.mlp.fc1.weight"
    )) {
        let module = format!("vision_tower.encoder.layer.{layer}.mlp.fc1");
        add(module.clone(), &format!("{module}.weight"), layer as f64);
        layer += 1;
    }
    assert!(layer > 0, "the fixture's vision layers");
    add(
        "multi_modal_projector.linear_1".into(),
        "multi_modal_projector.linear_1.weight",
        7.0,
    );
    candle_core::safetensors::save(&edited, &path).unwrap();
    let config_path = to.join("adapter_config.json");
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    let targets = config["target_modules"].as_array_mut().unwrap();
    targets.push("fc1".into());
    targets.push("linear_1".into());
    config["rank_pattern"] = serde_json::json!({ r"attention\.v_proj": 8 });
    config["alpha_pattern"] = serde_json::json!({ r"attention\.q_proj": 4 });
    std::fs::write(&config_path, config.to_string()).unwrap();
    to
}

#[test]
fn two_image_side_adapters_in_one_batch_equal_each_merged_alone() {
    let base = "tiny-internvl-hf";
    let uneven = uneven_vision_copy();
    let dirs = [adapter_dir("hf-rslora"), uneven.clone()];
    let specs = [
        reward(DEFAULT_REWARD, None),
        reward("rslora", Some(dirs[0].clone())),
        reward("uneven", Some(dirs[1].clone())),
    ];
    let model = load(base, &specs).expect("loads");
    let per_reward: Vec<Vec<PreparedItem>> =
        (0..3).map(|r| prepared_for(&model, base, r)).collect();
    let n = per_reward[0].len();
    // Every item under every reward, interleaved, in one batch.
    let mixed: Vec<&PreparedItem> = (0..n)
        .flat_map(|k| (0..3).map(move |r| (k, r)))
        .map(|(k, r)| &per_reward[r][k])
        .collect();
    let before = model.feature_cache_stats();
    let scores = model.score_prepared(&mixed).expect("batch");
    let misses = model.feature_cache_stats().misses - before.misses;
    // The distinct images of the batch: what the base alone encodes.
    let plain = load(base, &specs[..1]).unwrap();
    let base_items = prepared_for(&plain, base, 0);
    plain
        .score_prepared(&base_items.iter().collect::<Vec<_>>())
        .unwrap();
    let distinct = plain.feature_cache_stats().misses;
    assert!(distinct > 0);
    assert_eq!(misses, 3 * distinct, "each image once per image side");
    let ckpt = fixtures().checkpoint(base).unwrap();
    for (r, dir) in dirs.iter().enumerate().map(|(i, d)| (i + 1, d)) {
        let merged = RewardModel::load(
            &ckpt,
            LoadOptions {
                adapter: Some(dir.clone()),
                ..LoadOptions::default()
            },
        )
        .unwrap();
        let alone = prepared_for(&merged, base, 0);
        let refs: Vec<&PreparedItem> = alone.iter().collect();
        let want = merged.score_prepared(&refs).unwrap();
        for k in 0..n {
            let got = scores[3 * k + r];
            let d = (got.logit_yes - want[k].logit_yes)
                .abs()
                .max((got.logit_no - want[k].logit_no).abs());
            assert!(
                f64::from(d) <= LOGIT_TOL,
                "reward {r}, item {k}: {d:.2e} from merged"
            );
        }
    }
    // The two adapters differ on every item.
    for k in 0..n {
        let (a, b) = (scores[3 * k + 1], scores[3 * k + 2]);
        assert!(
            (a.logit_yes - b.logit_yes).abs() > 1e-2,
            "item {k}: uneven = rslora"
        );
    }
    let _ = std::fs::remove_dir_all(uneven);
}

#[test]
fn one_adapter_for_every_reward_is_merged() {
    let specs = [
        reward("a", Some(adapter_dir("hf-rslora"))),
        reward("b", Some(adapter_dir("hf-rslora"))),
    ];
    // hf-rslora also adapts the vision tower: fine merged.
    let model = load("tiny-internvl-hf", &specs).expect("loads");
    assert!(model.rewards().iter().all(|r| r.merged));
    assert!(model.adapter().is_some());
}

/// A copy of `ogv-llm-vit-mlp1` that also adapts the output head (`lm_head`).
fn lm_head_copy() -> PathBuf {
    let to = scaled_copy("ogv-llm-vit-mlp1", 1.0, "lm-head");
    let config_path = to.join("adapter_config.json");
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    config["target_modules"]
        .as_array_mut()
        .unwrap()
        .push("lm_head".into());
    std::fs::write(&config_path, config.to_string()).unwrap();
    let path = to.join("adapter_model.safetensors");
    let device = candle_core::Device::Cpu;
    let mut tensors = candle_core::safetensors::load(&path, &device).unwrap();
    let head = "base_model.model.language_model.lm_head";
    let (r, hidden, vocab) = (8, 56, 928);
    let a = candle_core::Tensor::ones((r, hidden), candle_core::DType::F32, &device).unwrap();
    let b = candle_core::Tensor::ones((vocab, r), candle_core::DType::F32, &device).unwrap();
    tensors.insert(format!("{head}.lora_A.weight"), a);
    tensors.insert(format!("{head}.lora_B.weight"), b);
    candle_core::safetensors::save(&tensors, &path).unwrap();
    to
}

fn refused(model: &str, specs: &[RewardSpec]) -> String {
    match load(model, specs) {
        Ok(_) => panic!("loaded"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn an_unmerged_slot_refuses_what_only_merging_applies() {
    // LoRA on a layer the model reads but applies no slot to (the output head).
    let dir = lm_head_copy();
    let err = refused(
        "tiny-internvl-ogv",
        &[reward("a", None), reward("b", Some(dir.clone()))],
    );
    let _ = std::fs::remove_dir_all(dir);
    assert!(
        err.contains("language_model.lm_head.weight")
            && err.contains("not a linear layer of the language model"),
        "{err}"
    );
    // modules_to_save and trained biases.
    let err = refused(
        "tiny-internvl-hf",
        &[
            reward("a", None),
            reward("b", Some(adapter_dir("hf-modules-to-save"))),
        ],
    );
    assert!(err.contains("replaces") && err.contains("whole"), "{err}");
    // Unknown answer tokens and bad names.
    let bad_answer = RewardSpec {
        answers: Some(AnswerTokens {
            yes: "definitely yes".into(),
            no: "no".into(),
        }),
        ..reward("x", None)
    };
    let err = refused("tiny-internvl-hf", &[bad_answer]);
    assert!(
        err.contains("\"x\"") && err.contains("single token"),
        "{err}"
    );
    let err = refused("tiny-internvl-hf", &[reward("a", None), reward("a", None)]);
    assert!(err.contains("twice"), "{err}");
}

#[test]
fn a_rewards_file_resolves_adapters_beside_it() {
    let dir = std::env::temp_dir().join(format!("rd-rewards-file-{}", std::process::id()));
    let adapter = dir.join("adapters/swift");
    std::fs::create_dir_all(&adapter).unwrap();
    for f in ["adapter_config.json", "adapter_model.safetensors"] {
        std::fs::copy(adapter_dir("hf-llm-swift").join(f), adapter.join(f)).unwrap();
    }
    let file = dir.join("rewards.toml");
    std::fs::write(
        &file,
        "[rewards.default]\n\n[rewards.swift]\nadapter = \"adapters/swift\"\n",
    )
    .unwrap();
    let specs = rewarddance_model::pipeline::rewards::read_rewards(&file).expect("reads");
    let model = load("tiny-internvl-hf", &specs).expect("loads");
    assert_eq!(model.reward_index("swift"), Some(1));
    assert_eq!(model.info().rewards.len(), 2);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn gradients_through_an_unmerged_adapter_equal_the_merged_ones() {
    use rewarddance_model::image::{decode, DecodeLimits, FloatImage};
    use rewarddance_model::{Candidate, ImageInput, Mode, ScoreItem};
    let img = decode(
        &common::image_file("fixtures/images/fox_100x60.png"),
        &DecodeLimits::default(),
    )
    .unwrap();
    let item = ScoreItem {
        prompt: "a red fox".into(),
        mode: Mode::Pointwise,
        instruction: None,
        reference: None,
        candidate: Candidate::Image(ImageInput::Float(std::sync::Arc::new(
            FloatImage::from_rgb8(&img),
        ))),
    };
    for (base, adapter) in [
        ("tiny-internvl-hf", "hf-llm-swift"),
        // Through the ViT's stacked q/k/v update and the projector's.
        ("tiny-internvl-hf", "hf-rslora"),
        ("tiny-internvl-ogv", "ogv-llm-vit-mlp1"),
    ] {
        gradient_matches_merged(base, adapter, &item);
    }
}

fn gradient_matches_merged(base: &str, adapter: &str, item: &rewarddance_model::ScoreItem) {
    use rewarddance_model::pipeline::gradient::Objective;
    let dir = adapter_dir(adapter);
    let unmerged = load(
        base,
        &[
            reward(DEFAULT_REWARD, None),
            reward("tuned", Some(dir.clone())),
        ],
    )
    .unwrap();
    let ckpt = fixtures().checkpoint(base).unwrap();
    let merged = RewardModel::load(
        &ckpt,
        LoadOptions {
            adapter: Some(dir),
            ..LoadOptions::default()
        },
    )
    .unwrap();
    let g_unmerged = unmerged
        .score_grad(
            &unmerged.prepare_for(item, 1).unwrap(),
            Objective::LogitMargin,
        )
        .unwrap();
    let g_merged = merged
        .score_grad(&merged.prepare(item).unwrap(), Objective::LogitMargin)
        .unwrap();
    let g_base = unmerged
        .score_grad(
            &unmerged.prepare_for(item, 0).unwrap(),
            Objective::LogitMargin,
        )
        .unwrap();
    let values = |g: &rewarddance_model::pipeline::gradient::ScoreGradient| {
        g.images[0].as_ref().unwrap().values.clone()
    };
    let (a, b, c) = (values(&g_unmerged), values(&g_merged), values(&g_base));
    let scale = b.iter().fold(0f32, |m, x| m.max(x.abs()));
    let diff = a
        .iter()
        .zip(&b)
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    let off = c
        .iter()
        .zip(&b)
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    assert!(
        diff <= 1e-4 * scale,
        "{adapter}: unmerged vs merged: {diff} (max |g| {scale})"
    );
    assert!(
        off > 1e-2 * scale,
        "{adapter}: the adapter changes the gradient: {off}"
    );
}
