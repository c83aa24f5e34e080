//! Named rewards through the wire: `Info` lists them, an item names one or several and gets
//! one outcome per name (its images decoded once), unknown or repeated names fail only that
//! item, `Rank` ranks by one, and `ScoreGrad` takes at most one per item.

mod common;

use std::path::PathBuf;
use std::sync::atomic::Ordering;

use common::{args, png_image, request, score_of, TestBackend, TestServer};
use rewarddance_model::pipeline::rewards::RewardSpec;
use rewarddance_model::text::prompt::Instructions;
use rewarddance_model::{Checkpoint, LoadOptions, RewardModel};
use rewarddance_proto::v1;
use tonic::Code;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// tiny-internvl-hf with `default`, `swift` (peft's ms-swift-style LoRA, unmerged) and
/// `strict` (the base with its own pointwise instruction).
fn model() -> RewardModel {
    let ckpt = Checkpoint::from_dir(&repo().join("fixtures/models/tiny-internvl-hf")).unwrap();
    let specs = [
        RewardSpec::named("default"),
        RewardSpec {
            adapter: Some(repo().join("fixtures/adapters/hf-llm-swift")),
            ..RewardSpec::named("swift")
        },
        RewardSpec {
            instructions: Instructions {
                pointwise: Some("Is '{prompt}' rendered exactly? Answer yes or no.".into()),
                ..Instructions::default()
            },
            ..RewardSpec::named("strict")
        },
    ];
    RewardModel::load_rewards(&ckpt, LoadOptions::default(), &specs).unwrap()
}

fn item(id: &str, rewards: &[&str]) -> v1::ScoreItem {
    v1::ScoreItem {
        id: id.into(),
        prompt: "a red fox".into(),
        candidate: Some(v1::score_item::Candidate::Image(png_image(70, 50, 3))),
        rewards: rewards.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn outcome_score(o: &v1::RewardOutcome) -> &v1::Score {
    match &o.outcome {
        Some(v1::reward_outcome::Outcome::Score(s)) => s,
        other => panic!("{}: no score: {other:?}", o.reward),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_item_gets_one_outcome_per_named_reward() {
    let backend = TestBackend::with_model(model());
    let server = TestServer::start(backend.clone(), args()).await;
    let mut client = server.client().await;

    let info = client.info(v1::InfoRequest {}).await.unwrap().into_inner();
    let names: Vec<&str> = info.rewards.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["default", "swift", "strict"]);
    let swift = info.rewards[1].adapter.as_ref().expect("swift's adapter");
    assert!(!swift.merged);
    assert_eq!((swift.rank, swift.modules.len()), (8, 21));
    assert!(info.rewards[2].instructions[0]
        .template
        .contains("rendered exactly"));
    // The top-level answers and instructions are the first reward's (what an unnamed item gets).
    assert_eq!(info.default_instructions, info.rewards[0].instructions);
    assert_eq!(info.answer_tokens, info.rewards[0].answer_tokens);

    let before = backend.images_decoded_in_items.load(Ordering::SeqCst);
    let response = client
        .score(request(vec![
            item("all", &["swift", "default", "strict"]),
            item("plain", &[]),
            item("bad", &["swift", "nope"]),
            item("twice", &["swift", "swift"]),
        ]))
        .await
        .unwrap()
        .into_inner();
    // The named item's image is decoded once for its three rewards (plus once for `plain`).
    let decoded = backend.images_decoded_in_items.load(Ordering::SeqCst) - before;
    assert_eq!(decoded, 2);
    let r = &response.results;
    let outcomes: Vec<&str> = r[0].rewards.iter().map(|o| o.reward.as_str()).collect();
    assert_eq!(outcomes, ["swift", "default", "strict"]);
    // The item's own score is the first reward's.
    assert_eq!(score_of(&r[0]).p_yes, outcome_score(&r[0].rewards[0]).p_yes);
    // Each matches the model in-process, and the three differ.
    let m = &backend.model;
    let local = |reward: usize| {
        let item = rewarddance_model::ScoreItem {
            prompt: "a red fox".into(),
            candidate: rewarddance_model::Candidate::Image(common::to_model_image(&png_image(
                70, 50, 3,
            ))),
            reference: None,
            instruction: None,
            mode: rewarddance_model::Mode::Pointwise,
        };
        m.score_prepared(&[&m.prepare_for(&item, reward).unwrap()])
            .unwrap()[0]
    };
    for (k, reward) in [1usize, 0, 2].into_iter().enumerate() {
        let got = outcome_score(&r[0].rewards[k]).p_yes;
        assert!((got - local(reward).p_yes).abs() < 1e-6, "reward {reward}");
    }
    let p: Vec<f64> = r[0]
        .rewards
        .iter()
        .map(|o| outcome_score(o).p_yes)
        .collect();
    assert!(
        (p[0] - p[1]).abs() > 1e-3 && (p[1] - p[2]).abs() > 1e-3,
        "{p:?}"
    );
    // An item naming none: the first reward, no per-reward list.
    assert!(r[1].rewards.is_empty());
    assert!((score_of(&r[1]).p_yes - p[1]).abs() < 1e-6);
    // Unknown and repeated names fail only their items, under every name.
    for bad in &r[2..] {
        let Some(v1::item_result::Outcome::Error(e)) = &bad.outcome else {
            panic!("{} scored", bad.id);
        };
        assert_eq!(
            (e.code, e.reason.as_str()),
            (Code::InvalidArgument as i32, "unknown_reward")
        );
        assert_eq!(bad.rewards.len(), 2);
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rank_and_score_grad_take_one_reward() {
    let backend = TestBackend::with_model(model());
    let server = TestServer::start(backend, args()).await;
    let mut client = server.client().await;
    let rank = |reward: &str| v1::RankRequest {
        prompt: "a red fox".into(),
        candidates: (0..3).map(|s| png_image(60, 40, 10 + s)).collect(),
        method: v1::RankMethod::Pointwise as i32,
        reward: reward.into(),
        ..Default::default()
    };
    let base = client.rank(rank("")).await.unwrap().into_inner();
    let swift = client.rank(rank("swift")).await.unwrap().into_inner();
    let p = |r: &v1::RankResponse| -> Vec<f64> {
        r.candidates.iter().map(|c| c.p_yes.unwrap()).collect()
    };
    assert_ne!(p(&base), p(&swift));
    let err = client.rank(rank("nope")).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("nope"), "{}", err.message());

    let float = v1::Image {
        source: Some(v1::image::Source::Float(v1::FloatImage {
            width: 8,
            height: 8,
            layout: v1::PixelLayout::Hwc as i32,
            data: vec![0u8; 8 * 8 * 3 * 4],
            ..Default::default()
        })),
    };
    let grad_item = |rewards: &[&str]| v1::ScoreItem {
        prompt: "a red fox".into(),
        candidate: Some(v1::score_item::Candidate::Image(float.clone())),
        rewards: rewards.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    let response = client
        .score_grad(v1::ScoreGradRequest {
            items: vec![grad_item(&["swift"]), grad_item(&["swift", "default"])],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(matches!(
        response.results[0].outcome,
        Some(v1::grad_result::Outcome::Score(_))
    ));
    let Some(v1::grad_result::Outcome::Error(e)) = &response.results[1].outcome else {
        panic!("two rewards differentiated");
    };
    assert!(e.message.contains("one reward"), "{}", e.message);
    server.shutdown().await;
}
