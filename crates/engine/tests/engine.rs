//! Engine behaviour with the bundled model (CPU): parity with in-process scoring, bad items,
//! backpressure, deadlines, cancellation, worker failures and draining.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rewarddance_engine::{
    Backend, Engine, EngineConfig, FailureKind, Health, Model, Output, SubmitError, Task,
};
use rewarddance_model::{
    Candidate, Checkpoint, Generation, ImageInput, LoadOptions, Mode, ModelInfo, PreparedImage,
    PreparedItem, Rationale, ReuseStats, RewardModel, ScoreItem, StopReason, Token,
};
use tracing::Span;

fn model() -> RewardModel {
    RewardModel::load(&Checkpoint::bundled(), LoadOptions::default()).expect("bundled model")
}

fn rgb(width: u32, height: u32, seed: u8) -> ImageInput {
    let data = (0..width * height * 3)
        .map(|i| (i as u8).wrapping_mul(seed).wrapping_add(seed))
        .collect();
    ImageInput::Rgb8 {
        width,
        height,
        data,
    }
}

fn item(prompt: &str, seed: u8) -> ScoreItem {
    ScoreItem {
        prompt: prompt.into(),
        candidate: Candidate::Image(rgb(40 + seed as u32, 30 + 2 * seed as u32, seed)),
        reference: None,
        instruction: None,
        mode: Mode::Pointwise,
    }
}

/// The bundled model, optionally slowed down and made to panic on a marker prompt.
struct TestBackend {
    model: RewardModel,
    delay: Duration,
    scored: AtomicUsize,
}

impl TestBackend {
    fn new(delay: Duration) -> Arc<Self> {
        Arc::new(TestBackend {
            model: model(),
            delay,
            scored: AtomicUsize::new(0),
        })
    }
}

/// The bundled model's own behaviour, with the hooks on score-only forward passes.
impl Model for TestBackend {
    type Prepared = PreparedItem;
    type Sequence = Generation;
    fn info(&self) -> ModelInfo {
        self.model.info()
    }
    fn prepare(&self, item: &ScoreItem, reward: usize) -> rewarddance_model::Result<PreparedItem> {
        self.model.prepare_for(item, reward)
    }
    fn tokens(prepared: &PreparedItem) -> usize {
        prepared.num_tokens()
    }
    fn tiles(prepared: &PreparedItem) -> usize {
        prepared.num_tiles()
    }
    fn prepare_image(&self, input: &ImageInput) -> rewarddance_model::Result<Arc<PreparedImage>> {
        self.model.prepare_image(input)
    }
    fn forward(
        &self,
        batch: &[&PreparedItem],
        tasks: &[Task],
    ) -> rewarddance_model::Result<Vec<Output<Generation>>> {
        if tasks.iter().all(|t| *t == Task::Score) {
            if batch.iter().any(|p| p.user_content.contains("PANIC")) {
                panic!("injected panic");
            }
            std::thread::sleep(self.delay);
            self.scored.fetch_add(batch.len(), Ordering::SeqCst);
        }
        Model::forward(&self.model, batch, tasks)
    }
    fn next_token(&self, generation: &mut Generation) -> rewarddance_model::Result<Token> {
        self.model.next_token(generation)
    }
    fn decode_forward(&self, generations: &mut [&mut Generation]) -> rewarddance_model::Result<()> {
        self.model.decode_forward(generations)
    }
    fn finish(&self, generation: Generation, stop: StopReason) -> Rationale {
        generation.finish(stop)
    }
    fn reuse_stats(&self) -> ReuseStats {
        self.model.reuse_stats()
    }
}

async fn start(backend: Arc<TestBackend>, config: EngineConfig) -> Engine {
    let engine = Engine::start(vec![backend as Arc<dyn Backend>], config).expect("engine");
    tokio::time::timeout(Duration::from_secs(60), engine.ready())
        .await
        .expect("warm-up in time")
        .expect("warm-up ok");
    engine
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scores_equal_in_process_scores_whatever_the_batching() {
    let backend = TestBackend::new(Duration::ZERO);
    let engine = start(backend.clone(), EngineConfig::default()).await;
    let mut items: Vec<ScoreItem> = (1..=12).map(|s| item(&format!("a cat {s}"), s)).collect();
    items.push(ScoreItem {
        reference: Some(rgb(50, 50, 7)),
        mode: Mode::Pairwise,
        ..item("two dogs", 3)
    });
    let mut handles = Vec::new();
    for chunk in items.chunks(3) {
        let engine = engine.clone();
        let chunk = chunk.to_vec();
        handles.push(tokio::spawn(async move {
            let tickets = engine.submit(chunk, None, &Span::none()).expect("admitted");
            let mut out = Vec::new();
            for t in tickets {
                out.push(t.wait().await);
            }
            out
        }));
    }
    let mut got = Vec::new();
    for h in handles {
        got.extend(h.await.expect("join"));
    }
    for (item, result) in items.iter().zip(got) {
        let expected = backend.model.score(std::slice::from_ref(item)).remove(0);
        let expected = expected.expect("in-process score");
        let score = result.outcome.expect("engine score");
        assert!(
            (score.p_yes - expected.p_yes).abs() < 1e-5,
            "{score:?} vs {expected:?}"
        );
        assert!((score.logit_yes - expected.logit_yes).abs() < 1e-4);
        assert!(result.timing.batch_items >= 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_item_fails_alone() {
    let engine = start(TestBackend::new(Duration::ZERO), EngineConfig::default()).await;
    let bad = ScoreItem {
        candidate: Candidate::Image(ImageInput::Encoded(b"not an image".to_vec())),
        ..item("x", 1)
    };
    let tickets = engine
        .submit(vec![item("a", 1), bad, item("b", 2)], None, &Span::none())
        .expect("admitted");
    let mut results = Vec::new();
    for t in tickets {
        results.push(t.wait().await);
    }
    assert!(results[0].outcome.is_ok());
    let err = results[1].outcome.as_ref().expect_err("bad image");
    assert_eq!(err.kind, FailureKind::InvalidArgument);
    assert_eq!(err.reason, "invalid_image");
    assert!(results[2].outcome.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_refuses_at_once_and_finishes_what_it_took() {
    let config = EngineConfig {
        max_queue_items: 4,
        max_batch_items: 1,
        ..EngineConfig::default()
    };
    let engine = start(TestBackend::new(Duration::from_millis(100)), config).await;
    let first = engine
        .submit((1..=4).map(|s| item("p", s)).collect(), None, &Span::none())
        .expect("fits");
    let started = Instant::now();
    let refused = engine.submit(vec![item("q", 9)], None, &Span::none());
    assert!(
        matches!(refused, Err(SubmitError::QueueFull { .. })),
        "{refused:?}"
    );
    assert!(
        started.elapsed() < Duration::from_millis(50),
        "refusal must be immediate"
    );
    for t in first {
        assert!(t.wait().await.outcome.is_ok());
    }
    engine.drained().await;
    assert_eq!(engine.in_flight(), 0);
    assert!(engine
        .submit(vec![item("r", 1)], None, &Span::none())
        .is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_items_are_answered_and_never_computed() {
    let backend = TestBackend::new(Duration::from_millis(300));
    let engine = start(backend.clone(), EngineConfig::default()).await;
    let before = backend.scored.load(Ordering::SeqCst);
    let busy = engine
        .submit(vec![item("busy", 1)], None, &Span::none())
        .expect("admitted");
    tokio::time::sleep(Duration::from_millis(50)).await; // the worker is now busy
    let deadline = Instant::now() + Duration::from_millis(50);
    let late = engine
        .submit(
            vec![item("late", 2), item("late", 3)],
            Some(deadline),
            &Span::none(),
        )
        .expect("admitted");
    for t in late {
        let err = t.wait().await.outcome.expect_err("expired");
        assert_eq!(err.kind, FailureKind::DeadlineExceeded);
    }
    assert!(busy
        .into_iter()
        .next()
        .expect("ticket")
        .wait()
        .await
        .outcome
        .is_ok());
    engine.drained().await;
    assert_eq!(backend.scored.load(Ordering::SeqCst) - before, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_tickets_leave_no_work_behind() {
    let backend = TestBackend::new(Duration::from_millis(200));
    let engine = start(backend.clone(), EngineConfig::default()).await;
    let before = backend.scored.load(Ordering::SeqCst);
    let busy = engine
        .submit(vec![item("busy", 1)], None, &Span::none())
        .expect("admitted");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let gone = engine
        .submit(
            (2..10).map(|s| item("gone", s)).collect(),
            None,
            &Span::none(),
        )
        .expect("admitted");
    drop(gone);
    for t in busy {
        assert!(t.wait().await.outcome.is_ok());
    }
    tokio::time::timeout(Duration::from_secs(10), engine.drained())
        .await
        .expect("drained");
    assert_eq!(backend.scored.load(Ordering::SeqCst) - before, 1);
}

/// Issue #14 changed this contract: repeated panics on items that fail alone, while the
/// device passes its probe, are the items' fault and no longer flip health (a broken device
/// still does: `tests/faults.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_item_fails_alone_and_repeated_ones_do_not_flip_health() {
    let config = EngineConfig {
        max_consecutive_failures: 2,
        ..EngineConfig::default()
    };
    let engine = start(TestBackend::new(Duration::ZERO), config).await;
    let one = |prompt: &'static str| {
        let engine = engine.clone();
        async move {
            let t = engine.submit(vec![item(prompt, 1)], None, &Span::none());
            t.expect("admitted").remove(0).wait().await
        }
    };
    let err = one("PANIC").await.outcome.expect_err("panicked batch");
    assert_eq!(err.kind, FailureKind::Internal);
    assert!(one("fine").await.outcome.is_ok(), "worker goes on");
    assert_eq!(*engine.health().borrow(), Health::Serving);
    for _ in 0..4 {
        let err = one("PANIC").await.outcome.expect_err("panicked batch");
        assert_eq!(err.kind, FailureKind::Internal);
    }
    assert_eq!(*engine.health().borrow(), Health::Serving);
    assert!(one("fine again").await.outcome.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_refuses_new_items_and_finishes_accepted_ones() {
    let engine = start(
        TestBackend::new(Duration::from_millis(20)),
        EngineConfig::default(),
    )
    .await;
    let accepted = engine
        .submit(
            (1..=10).map(|s| item("p", s)).collect(),
            None,
            &Span::none(),
        )
        .expect("admitted");
    engine.close();
    assert_eq!(
        engine
            .submit(vec![item("late", 1)], None, &Span::none())
            .err(),
        Some(SubmitError::ShuttingDown)
    );
    assert_eq!(*engine.health().borrow(), Health::Draining);
    for t in accepted {
        assert!(t.wait().await.outcome.is_ok());
    }
    tokio::time::timeout(Duration::from_secs(10), engine.drained())
        .await
        .expect("drained");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_devices_share_the_queue_data_parallel() {
    let (a, b) = (
        TestBackend::new(Duration::from_millis(60)),
        TestBackend::new(Duration::from_millis(60)),
    );
    let config = EngineConfig {
        max_batch_items: 1,
        ..EngineConfig::default()
    };
    let backends: Vec<Arc<dyn Backend>> = vec![a.clone(), b.clone()];
    let engine = Engine::start(backends, config).expect("engine");
    tokio::time::timeout(Duration::from_secs(60), engine.ready())
        .await
        .expect("warm-up in time")
        .expect("both devices warm");
    let (a0, b0) = (
        a.scored.load(Ordering::SeqCst),
        b.scored.load(Ordering::SeqCst),
    );
    let tickets = engine
        .submit((1..=8).map(|s| item("p", s)).collect(), None, &Span::none())
        .expect("admitted");
    for t in tickets {
        assert!(t.wait().await.outcome.is_ok());
    }
    let (da, db) = (
        a.scored.load(Ordering::SeqCst) - a0,
        b.scored.load(Ordering::SeqCst) - b0,
    );
    assert_eq!(da + db, 8);
    assert!(da > 0 && db > 0, "both workers pulled batches ({da}, {db})");
}
