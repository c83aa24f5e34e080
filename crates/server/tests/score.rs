//! Score / Info end to end over loopback: parity with in-process scores, bad items, limits,
//! overload, deadlines, panics, auth, and 64 concurrent clients.

mod common;

use std::time::Duration;

use common::*;
use rewarddance_model::{Candidate, Mode, ScoreItem};
use rewarddance_proto::v1;
use tonic::Code;

fn to_model_item(item: &v1::ScoreItem) -> ScoreItem {
    let candidate = match item.candidate.as_ref().expect("candidate") {
        v1::score_item::Candidate::Image(i) => Candidate::Image(to_model_image(i)),
        v1::score_item::Candidate::Video(v) => {
            Candidate::Video(v.frames.iter().map(to_model_image).collect())
        }
    };
    ScoreItem {
        prompt: item.prompt.clone(),
        candidate,
        reference: item.reference.as_ref().map(to_model_image),
        instruction: item.instruction.clone(),
        mode: if item.reference.is_some() {
            Mode::Pairwise
        } else {
            Mode::Pointwise
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scores_equal_the_model_crates_in_process_scores() {
    let backend = TestBackend::new(Duration::ZERO);
    let server = TestServer::start(backend.clone(), args()).await;
    let mut items: Vec<v1::ScoreItem> = (1..=4)
        .map(|s| item(&format!("r{s}"), "a red fox", s))
        .collect();
    items.push(v1::ScoreItem {
        id: "png".into(),
        prompt: "a blue square".into(),
        candidate: Some(v1::score_item::Candidate::Image(png_image(500, 300, 3))),
        ..Default::default()
    });
    items.push(v1::ScoreItem {
        id: "pair".into(),
        prompt: "two cats".into(),
        candidate: Some(v1::score_item::Candidate::Image(raw_image(64, 48, 5))),
        reference: Some(png_image(60, 60, 9)),
        ..Default::default()
    });
    items.push(v1::ScoreItem {
        id: "video".into(),
        prompt: "a running dog".into(),
        candidate: Some(v1::score_item::Candidate::Video(v1::Video {
            frames: (1..=3).map(|s| raw_image(32, 32, s)).collect(),
        })),
        instruction: Some("Rate this video for {prompt}. Answer yes or no.".into()),
        mode: v1::Mode::Pointwise as i32,
        ..Default::default()
    });
    let mut client = server.client().await;
    let response = client
        .score(request(items.clone()))
        .await
        .expect("score")
        .into_inner();
    assert_eq!(response.model_id, rewarddance_model::BUNDLED_MODEL_ID);
    assert_eq!(response.results.len(), items.len());
    for (i, (item, result)) in items.iter().zip(&response.results).enumerate() {
        assert_eq!(result.id, item.id);
        assert_eq!(result.index as usize, i);
        let expected = backend
            .model
            .score(&[to_model_item(item)])
            .remove(0)
            .expect("in-process");
        let got = score_of(result);
        assert!(
            (got.p_yes - expected.p_yes).abs() < 1e-5,
            "{}: {got:?} vs {expected:?}",
            item.id
        );
        assert!((got.p_yes_vocab - expected.p_yes_vocab).abs() < 1e-5);
        assert!((got.logit_yes - expected.logit_yes).abs() < 1e-4);
        assert!((got.logit_no - expected.logit_no).abs() < 1e-4);
        let timing = result.timing.as_ref().expect("timing");
        assert!(timing.batch_items >= 1 && timing.total_ms > 0.0);
    }
    assert!(response.timing.expect("timing").inference_ms > 0.0);

    let info = client
        .info(v1::InfoRequest {})
        .await
        .expect("info")
        .into_inner();
    assert_eq!(info.model_id, rewarddance_model::BUNDLED_MODEL_ID);
    assert_eq!(info.devices, vec!["cpu".to_string()]);
    assert_eq!(info.dtype, "f32");
    let limits = info.limits.expect("limits");
    assert_eq!(limits.max_items_per_request, 1024);
    assert_eq!(limits.max_batch_tokens, 16_384);
    assert_eq!(info.answer_tokens.expect("answers").yes, "yes");
    assert_eq!(info.default_instructions.len(), 3);
    assert!(!info.server_version.is_empty());
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_item_amid_good_ones_fails_alone() {
    let server = TestServer::start(TestBackend::new(Duration::ZERO), args()).await;
    let mut client = server.client().await;
    let corrupt = v1::ScoreItem {
        id: "corrupt".into(),
        candidate: Some(v1::score_item::Candidate::Image(v1::Image {
            source: Some(v1::image::Source::Encoded(b"\x89PNG nope".to_vec())),
        })),
        ..item("", "x", 1)
    };
    let short = v1::ScoreItem {
        id: "short".into(),
        candidate: Some(v1::score_item::Candidate::Image(v1::Image {
            source: Some(v1::image::Source::Rgb8(v1::RawImage {
                width: 4,
                height: 4,
                data: vec![0; 10],
            })),
        })),
        ..item("", "x", 1)
    };
    let no_candidate = v1::ScoreItem {
        id: "none".into(),
        prompt: "x".into(),
        ..Default::default()
    };
    let pairwise_without_reference = v1::ScoreItem {
        id: "noref".into(),
        mode: v1::Mode::Pairwise as i32,
        ..item("", "x", 2)
    };
    let items = vec![
        item("ok1", "a", 1),
        corrupt,
        short,
        item("ok2", "b", 2),
        no_candidate,
        pairwise_without_reference,
    ];
    let r = client
        .score(request(items))
        .await
        .expect("call ok")
        .into_inner();
    score_of(&r.results[0]);
    score_of(&r.results[3]);
    for (i, reason) in [
        (1, "invalid_image"),
        (2, "invalid_input"),
        (4, "invalid_input"),
        (5, "invalid_input"),
    ] {
        let e = error_of(&r.results[i]);
        assert_eq!(e.code, Code::InvalidArgument as i32, "{e:?}");
        assert_eq!(e.reason, reason, "{e:?}");
        assert!(!e.message.is_empty());
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_limits_are_enforced_with_clear_errors() {
    let limits = rewarddance_server::ServerArgs {
        max_items_per_request: 3,
        max_message_bytes: 64 * 1024,
        ..args()
    };
    let server = TestServer::start(TestBackend::new(Duration::ZERO), limits).await;
    let mut client = server.client().await;
    let e = client
        .score(request((1..=4).map(|s| item("", "p", s)).collect()))
        .await
        .expect_err("too many items");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("limit of 3"), "{}", e.message());
    let e = client.score(request(vec![])).await.expect_err("empty");
    assert_eq!(e.code(), Code::InvalidArgument);
    let big = v1::ScoreItem {
        candidate: Some(v1::score_item::Candidate::Image(raw_image(200, 200, 1))),
        ..item("big", "p", 1)
    };
    let e = client.score(request(vec![big])).await.expect_err("too big");
    // tonic reports an over-long message as OUT_OF_RANGE, naming the limit.
    assert_eq!(e.code(), Code::OutOfRange, "{e:?}");
    assert!(e.message().contains("65536"), "{}", e.message());
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_concurrent_clients_get_every_answer() {
    let server = TestServer::start(TestBackend::new(Duration::ZERO), args()).await;
    let url = server.url();
    let mut tasks = Vec::new();
    for c in 0..64u8 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = v1::reward_service_client::RewardServiceClient::connect(url)
                .await
                .expect("connect");
            let mut scored = 0;
            for round in 0..2u8 {
                let items = (0..3u8)
                    .map(|i| item(&format!("{c}-{round}-{i}"), "a tree", c.wrapping_add(i)))
                    .collect();
                let r = client
                    .score(request(items))
                    .await
                    .expect("score")
                    .into_inner();
                for (i, res) in r.results.iter().enumerate() {
                    assert_eq!(res.id, format!("{c}-{round}-{i}"));
                    score_of(res);
                    scored += 1;
                }
            }
            scored
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += tokio::time::timeout(Duration::from_secs(120), t)
            .await
            .expect("in time")
            .expect("join");
    }
    assert_eq!(total, 64 * 2 * 3);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_returns_resource_exhausted_at_once() {
    let small_queue = rewarddance_server::ServerArgs {
        max_queue_items: 4,
        max_batch_items: 1,
        ..args()
    };
    let backend = TestBackend::new(Duration::from_millis(150));
    let server = TestServer::start(backend, small_queue).await;
    let mut first = server.client().await;
    let busy = tokio::spawn(async move {
        first
            .score(request((1..=4).map(|s| item("", "p", s)).collect()))
            .await
    });
    let mut client = server.client().await;
    // Wait until the first call's items are admitted.
    tokio::time::timeout(Duration::from_secs(10), async {
        while server.engine.in_flight() < 4 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("first call admitted");
    let started = std::time::Instant::now();
    let e = client
        .score(request(vec![item("", "q", 1)]))
        .await
        .expect_err("overloaded");
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    // More items than the queue can ever hold is the caller's error, not a reason to retry.
    let e = client
        .score(request((1..=5).map(|s| item("", "big", s)).collect()))
        .await
        .expect_err("larger than the queue");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("queue capacity"), "{e:?}");
    assert!(started.elapsed() < Duration::from_millis(500));
    let r = busy
        .await
        .expect("join")
        .expect("first call answered")
        .into_inner();
    r.results.iter().for_each(|r| {
        score_of(r);
    });
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_deadline_returns_deadline_exceeded_and_skips_compute() {
    let one_at_a_time = rewarddance_server::ServerArgs {
        max_batch_items: 1,
        ..args()
    };
    let backend = TestBackend::new(Duration::from_millis(400));
    let server = TestServer::start(backend.clone(), one_at_a_time).await;
    let before = backend.scored();
    let mut first = server.client().await;
    let busy = tokio::spawn(async move { first.score(request(vec![item("busy", "p", 1)])).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut client = server.client().await;
    let mut call = tonic::Request::new(request(vec![item("late1", "p", 2), item("late2", "p", 3)]));
    call.set_timeout(Duration::from_millis(150));
    // One contract (issue #14): the call fails as a whole, never with per-item errors.
    let status = client.score(call).await.expect_err("deadline passed");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(
        status.message().contains("2 of 2 items unanswered"),
        "{status:?}"
    );
    busy.await.expect("join").expect("busy call");
    tokio::time::timeout(Duration::from_secs(10), server.engine.drained())
        .await
        .expect("drained");
    assert_eq!(backend.scored() - before, 1, "expired items were computed");
    server.shutdown().await;
}

/// Issue #14: at 0.3-0.5 s the same call came back sometimes with per-item
/// DEADLINE_EXCEEDED, sometimes call-level DEADLINE_EXCEEDED, and sometimes `CANCELLED:
/// Timeout expired` (tonic's server timer). Now every timeout too short for the work gets the
/// server's own call-level DEADLINE_EXCEEDED, and one long enough gets every score.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deadline_answer_is_the_same_at_every_timeout() {
    let backend = TestBackend::new(Duration::from_millis(250));
    let one_at_a_time = rewarddance_server::ServerArgs {
        max_batch_items: 2,
        ..args()
    };
    let server = TestServer::start(backend, one_at_a_time).await;
    let mut calls = Vec::new();
    for (k, ms) in [1u64, 5, 20, 50, 100, 200, 300, 400, 500, 600, 700]
        .into_iter()
        .enumerate()
    {
        let mut client = server.client().await;
        calls.push(tokio::spawn(async move {
            // Eight items at 250 ms per batch of two: about a second of work, whatever the
            // other calls queue.
            let items = (0..8)
                .map(|s| item(&format!("{k}-{s}"), "p", s + 1))
                .collect();
            let mut call = tonic::Request::new(request(items));
            call.set_timeout(Duration::from_millis(ms));
            (ms, client.score(call).await)
        }));
    }
    for call in calls {
        let (ms, got) = call.await.expect("join");
        let status = got.expect_err("no timeout here is long enough");
        // tonic's client arms its own timer from the timeout and answers CANCELLED locally
        // (with the transport error as source) when it fires before the server's answer
        // arrives: at 1-5 ms the round trip can lose that race. That is the client's doing;
        // everything the server answers must follow the contract.
        if std::error::Error::source(&status).is_some() {
            assert!(ms < 20, "{ms} ms: the client timed out first: {status:?}");
            continue;
        }
        assert_eq!(status.code(), Code::DeadlineExceeded, "{ms} ms: {status:?}");
        assert!(
            status.message().contains("items unanswered"),
            "{ms} ms: the server's own answer, not a transport timer: {status:?}"
        );
    }
    let mut client = server.client().await;
    let mut call = tonic::Request::new(request(vec![item("ok", "p", 1)]));
    call.set_timeout(Duration::from_secs(20));
    let r = client.score(call).await.expect("in time").into_inner();
    score_of(&r.results[0]);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_batch_fails_internal_and_the_server_stays_healthy() {
    let server = TestServer::start(TestBackend::new(Duration::ZERO), args()).await;
    let mut client = server.client().await;
    let r = client
        .score(request(vec![item("boom", "PANIC", 1)]))
        .await
        .expect("call ok")
        .into_inner();
    assert_eq!(error_of(&r.results[0]).code, Code::Internal as i32);
    let r = client
        .score(request(vec![item("fine", "a cat", 1)]))
        .await
        .expect("call ok")
        .into_inner();
    score_of(&r.results[0]);
    assert!(server.engine.health().borrow().is_serving());
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_auth_when_configured() {
    let with_token = rewarddance_server::ServerArgs {
        auth_token: Some("s3cret".into()),
        ..args()
    };
    let server = TestServer::start(TestBackend::new(Duration::ZERO), with_token).await;
    let mut client = server.client().await;
    let e = client.info(v1::InfoRequest {}).await.expect_err("no token");
    assert_eq!(e.code(), Code::Unauthenticated);
    let mut wrong = tonic::Request::new(v1::InfoRequest {});
    wrong
        .metadata_mut()
        .insert("authorization", "Bearer nope".parse().expect("ascii"));
    assert_eq!(
        client.info(wrong).await.expect_err("wrong").code(),
        Code::Unauthenticated
    );
    let mut right = tonic::Request::new(request(vec![item("a", "p", 1)]));
    right
        .metadata_mut()
        .insert("authorization", "Bearer s3cret".parse().expect("ascii"));
    let r = client.score(right).await.expect("authorised").into_inner();
    score_of(&r.results[0]);
    // Health checks need no token.
    let channel = tonic::transport::Channel::from_shared(server.url())
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: rewarddance_proto::SERVICE_NAME.into(),
        })
        .await
        .expect("health without token")
        .into_inner()
        .status;
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_call_leaves_no_work_behind() {
    let one_at_a_time = rewarddance_server::ServerArgs {
        max_batch_items: 1,
        ..args()
    };
    let backend = TestBackend::new(Duration::from_millis(100));
    let server = TestServer::start(backend.clone(), one_at_a_time).await;
    let before = backend.scored();
    let mut client = server.client().await;
    let call = tokio::spawn(async move {
        client
            .score(request((1..=20).map(|s| item("", "p", s)).collect()))
            .await
    });
    tokio::time::timeout(Duration::from_secs(10), async {
        while backend.scored() == before {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("work started");
    call.abort(); // the client gives up: its HTTP/2 stream is reset
    tokio::time::timeout(Duration::from_secs(10), server.engine.drained())
        .await
        .expect("queued items dropped");
    let scored = backend.scored() - before;
    assert!(
        scored < 10,
        "{scored} of 20 items computed after the cancel"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(backend.scored() - before, scored, "nothing computed later");
    server.shutdown().await;
}

/// Issue #14: two concurrent 16 MB prompts held both preprocessing threads ~18 s and a good
/// item sent after them waited 16 s. Text over --max-text-bytes is now refused before
/// tokenising, per item, and the good item is answered at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_prompts_are_refused_before_tokenising_and_block_nobody() {
    let server = TestServer::start(TestBackend::new(Duration::ZERO), args()).await;
    let huge = "a cat on a mat ".repeat(16 << 20 >> 4);
    let started = std::time::Instant::now();
    let mut calls = Vec::new();
    for k in 0..2 {
        let mut client = server.client().await;
        let mut it = item(&format!("huge-{k}"), "x", 1);
        it.prompt = huge.clone();
        calls.push(tokio::spawn(async move {
            client.score(request(vec![it])).await
        }));
    }
    let mut client = server.client().await;
    let good = client
        .score(request(vec![item("good", "a cat", 3)]))
        .await
        .expect("good call")
        .into_inner();
    score_of(&good.results[0]);
    for call in calls {
        let r = call
            .await
            .expect("join")
            .expect("call answered")
            .into_inner();
        let e = error_of(&r.results[0]);
        assert_eq!(e.code, Code::InvalidArgument as i32);
        assert_eq!(e.reason, "too_many_tokens");
        assert!(e.message.contains("--max-text-bytes"), "{}", e.message);
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    server.shutdown().await;
}
