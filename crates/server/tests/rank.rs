//! Rank end to end over loopback: pairwise rankings equal the ranking module applied to
//! in-process pair scores, pointwise ranks by P(yes), broken candidates are isolated, limits.

mod common;

use std::time::Duration;

use common::*;
use rewarddance_model::{Candidate, Mode, ScoreItem};
use rewarddance_proto::v1;
use rewarddance_ranking::{rank_pairwise, schedule_pairs, Schedule};
use tonic::Code;

fn request(candidates: Vec<v1::Image>, method: v1::RankMethod) -> v1::RankRequest {
    v1::RankRequest {
        prompt: "a lighthouse at dusk".into(),
        candidates,
        instruction: None,
        method: method as i32,
        opponents: 0,
        seed: 0,
        reward: String::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pairwise_ranking_matches_in_process_pair_scores() {
    let backend = TestBackend::new(Duration::ZERO);
    let server = TestServer::start(backend.clone(), args()).await;
    let candidates: Vec<v1::Image> = (0..4)
        .map(|s| png_image(40 + 10 * s as u32, 50, s))
        .collect();
    let mut client = server.client().await;
    let got = client
        .rank(request(candidates.clone(), v1::RankMethod::Unspecified))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.comparisons, 12);
    assert_eq!(got.candidates.len(), 4);

    let pairs = schedule_pairs(4, Schedule::AllPairs);
    let items: Vec<ScoreItem> = pairs
        .iter()
        .map(|&(i, j)| ScoreItem {
            prompt: "a lighthouse at dusk".into(),
            candidate: Candidate::Image(to_model_image(&candidates[j])),
            reference: Some(to_model_image(&candidates[i])),
            instruction: None,
            mode: Mode::Pairwise,
        })
        .collect();
    let scores = backend.model.score(&items);
    let scored: Vec<_> = pairs
        .iter()
        .zip(&scores)
        .map(|(&(i, j), s)| (i, j, s.as_ref().ok().map(|s| s.p_yes)))
        .collect();
    let want = rank_pairwise(4, &scored, &[false; 4]);
    assert_eq!(got.best, want.best.map(|b| b as u32));
    for (c, cand) in got.candidates.iter().enumerate() {
        assert_eq!(cand.wins, want.wins[c]);
        assert!((cand.strength.unwrap() - want.strengths[c].unwrap()).abs() < 1e-4);
        for (i, p) in got.preference[c].p.iter().enumerate() {
            match want.preference[c][i] {
                Some(w) => assert!((p - w).abs() < 1e-5),
                None => assert!(p.is_nan()),
            }
        }
    }
    assert_eq!(got.order[0], got.best.unwrap());
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_candidate_is_reported_and_the_rest_are_ranked() {
    let server = TestServer::start(TestBackend::new(Duration::ZERO), args()).await;
    let mut candidates: Vec<v1::Image> = (0..3).map(|s| png_image(48, 48, s)).collect();
    candidates.insert(
        1,
        v1::Image {
            source: Some(v1::image::Source::Encoded(b"not an image".to_vec())),
        },
    );
    let mut client = server.client().await;
    let got = client
        .rank(request(candidates, v1::RankMethod::Pairwise))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.comparisons, 6, "3 good candidates, both orders");
    let broken = &got.candidates[1];
    assert_eq!(
        broken.error.as_ref().unwrap().code,
        Code::InvalidArgument as i32
    );
    assert!(broken.strength.is_none());
    assert_eq!(*got.order.last().unwrap(), 1, "failed candidates rank last");
    assert!(got.best.is_some() && got.best != Some(1));

    let pointwise = client
        .rank(request(
            (0..3).map(|s| png_image(30, 60, s)).collect(),
            v1::RankMethod::Pointwise,
        ))
        .await
        .unwrap()
        .into_inner();
    let p: Vec<f64> = pointwise
        .candidates
        .iter()
        .map(|c| c.p_yes.unwrap())
        .collect();
    let best = pointwise.best.unwrap() as usize;
    assert!(p.iter().all(|&x| x <= p[best]));
    assert_eq!(pointwise.comparisons, 3);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_pairs_and_too_few_candidates_are_refused() {
    let mut a = args();
    a.max_items_per_request = 10;
    let server = TestServer::start(TestBackend::new(Duration::ZERO), a).await;
    let mut client = server.client().await;
    let five: Vec<v1::Image> = (0..5).map(|s| raw_image(32, 32, s)).collect();
    let err = client
        .rank(request(five.clone(), v1::RankMethod::Pairwise))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("opponents"), "{}", err.message());
    let mut k1 = request(five, v1::RankMethod::Pairwise);
    k1.opponents = 1;
    let ok = client.rank(k1).await.unwrap().into_inner();
    assert!(
        ok.comparisons <= 10 && ok.comparisons >= 6,
        "{}",
        ok.comparisons
    );
    let err = client
        .rank(request(vec![raw_image(8, 8, 0)], v1::RankMethod::Pairwise))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    server.shutdown().await;
}

/// The red team's amplification: an 8 kB Rank of 4000 empty candidates reached 876 MiB RSS
/// (the N x N plan and N decodes were built before any limit). Now the count is refused first,
/// and quickly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_candidates_are_refused_before_any_work() {
    let server = TestServer::start(TestBackend::new(Duration::ZERO), args()).await;
    let mut client = server.client().await;
    let empty = v1::Image { source: None };
    let start = std::time::Instant::now();
    let err = client
        .rank(request(vec![empty; 4000], v1::RankMethod::Pairwise))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("max-rank-candidates"),
        "{}",
        err.message()
    );
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    server.shutdown().await;
}

/// Issue #14: six 40 MP PNGs took 25 s as a Rank (each image decoded and tiled 2(N-1)+1
/// times) against 2.5 s as a Score. Each candidate is now prepared once and every pair
/// shares its tiles.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_candidate_is_decoded_once_and_pairs_share_its_tiles() {
    use std::sync::atomic::Ordering;
    let backend = TestBackend::new(Duration::ZERO);
    let server = TestServer::start(backend.clone(), args()).await;
    let mut client = server.client().await;
    let candidates: Vec<v1::Image> = (0..4).map(|s| png_image(60 + 7 * s, 48, s as u8)).collect();
    let before = (
        backend.images_prepared.load(Ordering::SeqCst),
        backend.images_decoded_in_items.load(Ordering::SeqCst),
    );
    let got = client
        .rank(request(candidates, v1::RankMethod::Pairwise))
        .await
        .expect("rank")
        .into_inner();
    assert_eq!(got.comparisons, 12);
    assert!(got.candidates.iter().all(|c| c.error.is_none()));
    assert_eq!(
        backend.images_prepared.load(Ordering::SeqCst) - before.0,
        4,
        "one decode per candidate"
    );
    assert_eq!(
        backend.images_decoded_in_items.load(Ordering::SeqCst) - before.1,
        0,
        "the 12 pairs decoded images again"
    );
    server.shutdown().await;
}

/// Issue #14: Rank decoded its candidates outside the admission bound (8 concurrent Ranks of
/// two 40 MP images: 792 MiB). Preparing them now holds queue slots like Score items, so a
/// full queue refuses the Rank before anything is decoded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rank_preprocessing_goes_through_admission() {
    use std::sync::atomic::Ordering;
    let backend = TestBackend::new(Duration::ZERO);
    let server = TestServer::start(
        backend.clone(),
        rewarddance_server::ServerArgs {
            max_queue_items: 16,
            ..args()
        },
    )
    .await;
    backend.image_delay_ms.store(400, Ordering::SeqCst);
    let mut client = server.client().await;
    let candidates: Vec<v1::Image> = (0..3).map(|s| png_image(50, 40, s)).collect();
    let call = tokio::spawn(async move {
        client
            .rank(request(candidates, v1::RankMethod::Pointwise))
            .await
    });
    // While the candidates are prepared, they hold queue slots.
    let mut held = 0;
    for _ in 0..30 {
        held = held.max(server.engine.in_flight());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(held >= 3, "candidates being prepared held {held} slots");
    let got = call.await.expect("join").expect("rank").into_inner();
    assert_eq!(got.comparisons, 3);
    // A full queue refuses a Rank before any candidate is decoded.
    backend.image_delay_ms.store(0, Ordering::SeqCst);
    backend.gate_open.store(false, Ordering::SeqCst);
    let mut filler = server.client().await;
    let fill = tokio::spawn(async move {
        filler
            .score(common::request(
                (0..16).map(|s| item("", "fill", s)).collect(),
            ))
            .await
    });
    while server.engine.in_flight() < 16 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let prepared = backend.images_prepared.load(Ordering::SeqCst);
    let mut client = server.client().await;
    let err = client
        .rank(request(
            vec![png_image(50, 40, 1), png_image(50, 40, 2)],
            v1::RankMethod::Pairwise,
        ))
        .await
        .expect_err("queue is full");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert_eq!(backend.images_prepared.load(Ordering::SeqCst), prepared);
    backend.gate_open.store(true, Ordering::SeqCst);
    fill.await.expect("join").expect("fill");
    server.shutdown().await;
}

/// Unknown enum values are refused, never mapped to a default (issue #14, item 10).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_rank_method_is_refused() {
    let server = TestServer::start(TestBackend::new(Duration::ZERO), args()).await;
    let mut client = server.client().await;
    let mut req = request(
        vec![raw_image(8, 8, 0), raw_image(8, 8, 1)],
        v1::RankMethod::Pairwise,
    );
    req.method = 7;
    let err = client.rank(req).await.expect_err("unknown method");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("unknown rank method 7"),
        "{}",
        err.message()
    );
    server.shutdown().await;
}

/// A Rank whose pairs or candidates could never fit the queue is the caller's error
/// (INVALID_ARGUMENT), not a RESOURCE_EXHAUSTED to retry forever; a plan over the per-request
/// limit is refused before any candidate is decoded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn impossible_ranks_are_refused_as_invalid_before_decoding() {
    use std::sync::atomic::Ordering;
    let backend = TestBackend::new(Duration::ZERO);
    let server = TestServer::start(
        backend.clone(),
        rewarddance_server::ServerArgs {
            max_queue_items: 64,
            max_items_per_request: 60,
            ..args()
        },
    )
    .await;
    let mut client = server.client().await;
    let prepared = backend.images_prepared.load(Ordering::SeqCst);
    // 9 candidates: 72 pairs, over 60 per request.
    let nine: Vec<v1::Image> = (0..9).map(|s| raw_image(8, 8, s)).collect();
    let err = client
        .rank(request(nine, v1::RankMethod::Pairwise))
        .await
        .expect_err("too many pairs");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert_eq!(backend.images_prepared.load(Ordering::SeqCst), prepared);
    // 65 candidates ranked pointwise: more than the queue holds.
    let many: Vec<v1::Image> = (0..65).map(|s| raw_image(8, 8, s as u8)).collect();
    let mut req = request(many, v1::RankMethod::Pointwise);
    req.candidates.truncate(65);
    let server2 = TestServer::start(
        TestBackend::new(Duration::ZERO),
        rewarddance_server::ServerArgs {
            max_queue_items: 64,
            ..args()
        },
    )
    .await;
    let err = server2
        .client()
        .await
        .rank(req)
        .await
        .expect_err("more candidates than the queue holds");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("queue capacity"), "{err:?}");
    server2.shutdown().await;
    server.shutdown().await;
}

/// A Rank accepted before SIGTERM finishes: its candidates' slots are held until its pairs are
/// admitted, and the pairs are admitted during the drain (they used to get UNAVAILABLE
/// between the two phases, after the decode work was done).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rank_accepted_before_shutdown_is_finished() {
    use std::sync::atomic::Ordering;
    let backend = TestBackend::new(Duration::ZERO);
    let mut server = TestServer::start(backend.clone(), args()).await;
    backend.image_delay_ms.store(300, Ordering::SeqCst);
    let mut client = server.client().await;
    let candidates: Vec<v1::Image> = (0..3).map(|s| png_image(50, 40, s)).collect();
    let call = tokio::spawn(async move {
        client
            .rank(request(candidates, v1::RankMethod::Pairwise))
            .await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    server.begin_shutdown();
    let got = call
        .await
        .expect("join")
        .expect("the accepted Rank is answered")
        .into_inner();
    assert_eq!(got.comparisons, 6);
    assert!(got.best.is_some());
    server.shutdown().await;
}
