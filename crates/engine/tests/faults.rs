//! One item must never fail its batch neighbours, and health must follow the device, not what
//! callers send: faults injected with `FaultyBackend` (feature `fault-injection`).

use std::sync::Arc;
use std::time::Duration;

use rewarddance_engine::faults::FaultyBackend;
use rewarddance_engine::{Backend, Engine, EngineConfig, FailureKind, Health, ItemResult};
use rewarddance_model::{
    Candidate, Checkpoint, ImageInput, LoadOptions, Mode, RewardModel, ScoreItem,
};
use tracing::Span;

fn item(prompt: &str, seed: u8) -> ScoreItem {
    let (width, height) = (40 + seed as u32, 30 + seed as u32);
    let data = (0..width * height * 3)
        .map(|i| (i as u8).wrapping_mul(seed).wrapping_add(seed))
        .collect();
    ScoreItem {
        prompt: prompt.into(),
        candidate: Candidate::Image(ImageInput::Rgb8 {
            width,
            height,
            data,
        }),
        reference: None,
        instruction: None,
        mode: Mode::Pointwise,
    }
}

/// The bundled model behind a fault injector.
fn faulty() -> Arc<FaultyBackend<RewardModel>> {
    let model = RewardModel::load(&Checkpoint::bundled(), LoadOptions::default()).expect("model");
    Arc::new(FaultyBackend::new(model))
}

/// An engine on `backend` (its warm-up not awaited).
fn engine_on(backend: &Arc<FaultyBackend<RewardModel>>, config: EngineConfig) -> Engine {
    Engine::start(vec![backend.clone() as Arc<dyn Backend>], config).expect("start")
}

/// An engine whose batches collect everything submitted within 200 ms (so a request's items
/// share one batch).
async fn start() -> (Engine, Arc<FaultyBackend<RewardModel>>) {
    let backend = faulty();
    let config = EngineConfig {
        max_batch_delay: Duration::from_millis(200),
        max_consecutive_failures: 3,
        ..EngineConfig::default()
    };
    let engine = engine_on(&backend, config);
    tokio::time::timeout(Duration::from_secs(60), engine.ready())
        .await
        .expect("warm-up in time")
        .expect("warm-up ok");
    (engine, backend)
}

async fn run(engine: &Engine, items: Vec<ScoreItem>) -> Vec<ItemResult> {
    let tickets = engine.submit(items, None, &Span::none()).expect("admitted");
    let mut out = Vec::new();
    for t in tickets {
        out.push(t.wait().await);
    }
    out
}

/// Two callers share one batch: the first sends seven good items, the second one item carrying
/// `marker`. Every good item must get its in-process score; returns the marked item's result.
async fn batch_with(
    engine: &Engine,
    backend: &FaultyBackend<RewardModel>,
    marker: &str,
) -> ItemResult {
    let good: Vec<ScoreItem> = (1..=7)
        .map(|s| item(&format!("a red fox {s}"), s))
        .collect();
    let first = engine
        .submit(good.clone(), None, &Span::none())
        .expect("admitted");
    let second = engine
        .submit(
            vec![item(&format!("a red fox {marker}"), 8)],
            None,
            &Span::none(),
        )
        .expect("admitted");
    let mut bad = None;
    for t in second {
        bad = Some(t.wait().await);
    }
    for (i, (item, ticket)) in good.iter().zip(first).enumerate() {
        let got = ticket.wait().await;
        let expected = backend
            .inner()
            .score(std::slice::from_ref(item))
            .remove(0)
            .expect("alone");
        let score = got
            .outcome
            .as_ref()
            .unwrap_or_else(|e| panic!("item {i} failed: {e}"));
        assert!(
            (score.p_yes - expected.p_yes).abs() < 1e-5,
            "item {i}: {score:?} vs {expected:?}"
        );
        assert_eq!(got.timing.batch_items, 8, "the two calls shared a batch");
    }
    bad.expect("one result")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_item_fails_alone_and_health_stays_serving() {
    let (engine, backend) = start().await;
    // More rounds than max_consecutive_failures: a caller repeating it must not flip health.
    for round in 0..4 {
        let bad = batch_with(&engine, &backend, "[[fault:panic]]").await;
        let err = bad.outcome.expect_err("the panicking item has no score");
        assert_eq!(err.kind, FailureKind::Internal, "round {round}: {err}");
        assert_eq!(*engine.health().borrow(), Health::Serving, "round {round}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_item_refused_at_batch_time_is_the_callers_error() {
    let (engine, backend) = start().await;
    for _ in 0..4 {
        let bad = batch_with(&engine, &backend, "[[fault:invalid]]").await;
        let err = bad.outcome.expect_err("refused");
        assert_eq!(err.kind, FailureKind::InvalidArgument, "{err}");
        assert_eq!(err.reason, "invalid_input");
    }
    // A lone refused item is answered without probing the device.
    let before = backend.forwards();
    let alone = run(&engine, vec![item("[[fault:invalid]]", 9)])
        .await
        .remove(0);
    assert_eq!(
        alone.outcome.expect_err("refused").kind,
        FailureKind::InvalidArgument
    );
    assert_eq!(backend.forwards() - before, 1);
    assert_eq!(*engine.health().borrow(), Health::Serving);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_too_big_for_the_device_is_split_and_every_item_scored() {
    let (engine, backend) = start().await;
    let bad = batch_with(&engine, &backend, "[[fault:oom]]").await;
    let score = bad.outcome.expect("scored once alone");
    assert!(score.p_yes > 0.0 && score.p_yes < 1.0);
    assert_eq!(*engine.health().borrow(), Health::Serving);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_device_still_turns_health_failing_and_recovers() {
    let (engine, backend) = start().await;
    backend.break_device(true);
    for _ in 0..3 {
        let results = run(&engine, vec![item("a cat", 1), item("a dog", 2)]).await;
        for r in results {
            let err = r.outcome.expect_err("device is broken");
            assert_eq!(err.kind, FailureKind::Internal);
            assert!(err.message.contains("device failure"), "{}", err.message);
        }
    }
    // Three failed batches on a device that fails its probe (the batcher folds the worker's
    // report asynchronously).
    let mut health = engine.health();
    tokio::time::timeout(
        Duration::from_secs(5),
        health.wait_for(|h| matches!(h, Health::Failing(_))),
    )
    .await
    .expect("health turns failing")
    .expect("engine alive");
    backend.break_device(false);
    let ok = run(&engine, vec![item("a cat", 1)]).await.remove(0);
    ok.outcome.expect("device works again");
    tokio::time::timeout(
        Duration::from_secs(5),
        health.wait_for(|h| *h == Health::Serving),
    )
    .await
    .expect("health back to serving")
    .expect("engine alive");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_call_frees_its_queue_slots_while_its_items_wait_for_preprocessing() {
    let backend = faulty();
    let config = EngineConfig {
        preprocess_threads: 1,
        max_queue_items: 16,
        ..EngineConfig::default()
    };
    let engine = engine_on(&backend, config);
    engine.ready().await.expect("warm-up");
    // One slow item holds the only preprocessing thread; everything behind it waits.
    let slow = engine
        .submit(
            vec![item("[[fault:prepare_sleep=1500]] a cat", 1)],
            None,
            &Span::none(),
        )
        .expect("admitted");
    for round in 0..20 {
        let cancelled = engine
            .submit(
                (0..15).map(|s| item("gone", s)).collect(),
                None,
                &Span::none(),
            )
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        drop(cancelled);
        assert_eq!(
            engine.in_flight(),
            1,
            "round {round}: slots held by a cancelled call"
        );
    }
    let live = engine
        .submit(
            (0..15).map(|s| item("a dog", s)).collect(),
            None,
            &Span::none(),
        )
        .expect("a live caller is admitted");
    assert!(slow
        .into_iter()
        .next()
        .expect("ticket")
        .wait()
        .await
        .outcome
        .is_ok());
    for t in live {
        assert!(t.wait().await.outcome.is_ok());
    }
}

/// Issue #14: preprocessing served requests first come, first served, so a big request held
/// every preprocessing thread until its last item, and a 1-item call behind it waited for
/// all of it. Submissions are now served round-robin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_call_is_not_starved_by_a_big_one_in_preprocessing() {
    let config = EngineConfig {
        preprocess_threads: 1,
        ..EngineConfig::default()
    };
    let engine = engine_on(&faulty(), config);
    engine.ready().await.expect("warm-up");
    // 30 items x 50 ms of preprocessing each: 1.5 s on the one thread.
    let big: Vec<ScoreItem> = (0..30)
        .map(|s| item("[[fault:prepare_sleep=50]] a cat", s))
        .collect();
    let started = std::time::Instant::now();
    let big = engine.submit(big, None, &Span::none()).expect("admitted");
    let small = engine
        .submit(vec![item("a dog", 1)], None, &Span::none())
        .expect("admitted");
    for t in small {
        t.wait().await.outcome.expect("scored");
    }
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_millis(600),
        "the 1-item call waited {waited:?} behind 1.5 s of another call's preprocessing"
    );
    for t in big {
        t.wait().await.outcome.expect("scored");
    }
}

/// A device whose warm-up fails (a transient start-up error) reports Failing, and its first
/// good batch afterwards brings health back (it used to stay NOT_SERVING for good).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_warm_up_recovers_with_the_first_good_batch() {
    let backend = faulty();
    backend.break_device(true);
    let engine = engine_on(&backend, EngineConfig::default());
    assert!(engine.ready().await.is_err(), "the warm-up failed");
    backend.break_device(false);
    let ok = run(&engine, vec![item("a cat", 1)]).await.remove(0);
    ok.outcome.expect("the device works now");
    let mut health = engine.health();
    tokio::time::timeout(
        Duration::from_secs(5),
        health.wait_for(|h| *h == Health::Serving),
    )
    .await
    .expect("health back to serving")
    .expect("engine alive");
}
