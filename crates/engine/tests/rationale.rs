//! Rationales through the engine (bundled model, CPU): equal to the model's own decoding,
//! streamed text adds up, new prefills do not wait for running decodes, and cancellation,
//! deadlines and device failures stop decoding without losing the score.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rewarddance_engine::{Backend, Engine, EngineConfig, Model, Output, RationaleEnd, Task, Work};
use rewarddance_model::{
    Candidate, Checkpoint, Generation, ImageInput, LoadOptions, Mode, ModelInfo, PreparedImage,
    PreparedItem, Rationale, RationaleOptions, ReuseStats, RewardModel, ScoreItem, StopReason,
    Token,
};
use tracing::Span;

fn item(prompt: &str, seed: u8) -> ScoreItem {
    let (w, h) = (40 + seed as u32, 30 + seed as u32);
    ScoreItem {
        prompt: prompt.into(),
        candidate: Candidate::Image(ImageInput::Rgb8 {
            width: w,
            height: h,
            data: (0..w * h * 3)
                .map(|i| (i as u8).wrapping_mul(seed))
                .collect(),
        }),
        reference: None,
        instruction: None,
        mode: Mode::Pointwise,
    }
}

fn greedy(max_tokens: usize) -> RationaleOptions {
    RationaleOptions {
        max_tokens,
        ..RationaleOptions::default()
    }
}

/// Decodes `max_tokens` whatever the model says (the bundled model is random).
fn endless(max_tokens: usize) -> RationaleOptions {
    RationaleOptions {
        ignore_end: true,
        ..greedy(max_tokens)
    }
}

/// The bundled model with slow, countable, breakable decode steps.
struct SlowDecoder {
    model: RewardModel,
    step_delay: Duration,
    steps: AtomicUsize,
    fail: AtomicBool,
}

impl SlowDecoder {
    fn new(step_delay: Duration) -> Arc<Self> {
        Arc::new(SlowDecoder {
            model: RewardModel::load(&Checkpoint::bundled(), LoadOptions::default())
                .expect("bundled model"),
            step_delay,
            steps: AtomicUsize::new(0),
            fail: AtomicBool::new(false),
        })
    }
}

/// The bundled model's own behaviour, but for the decode step.
impl Model for SlowDecoder {
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
        Model::forward(&self.model, batch, tasks)
    }
    fn next_token(&self, generation: &mut Generation) -> rewarddance_model::Result<Token> {
        self.model.next_token(generation)
    }
    fn finish(&self, generation: Generation, stop: StopReason) -> Rationale {
        generation.finish(stop)
    }
    fn reuse_stats(&self) -> ReuseStats {
        self.model.reuse_stats()
    }
    fn decode_forward(&self, generations: &mut [&mut Generation]) -> rewarddance_model::Result<()> {
        std::thread::sleep(self.step_delay);
        self.steps.fetch_add(1, Ordering::SeqCst);
        if self.fail.load(Ordering::SeqCst) {
            return Err(rewarddance_model::Error::Compute(candle_core::Error::Msg(
                "injected decode failure".into(),
            )));
        }
        self.model.decode_forward(generations)
    }
}

async fn start(backend: Arc<SlowDecoder>, config: EngineConfig) -> Engine {
    let engine = Engine::start(vec![backend as Arc<dyn Backend>], config).expect("engine");
    tokio::time::timeout(Duration::from_secs(60), engine.ready())
        .await
        .expect("warm-up in time")
        .expect("warm-up ok");
    engine
}

fn work(item: ScoreItem, rationale: Option<RationaleOptions>) -> Work {
    Work {
        item,
        task: rationale.map_or(Task::Score, Task::Rationale),
        rewards: Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rationales_equal_the_models_own_decoding_and_stream_their_text() {
    let backend = SlowDecoder::new(Duration::ZERO);
    let model = RewardModel::load(&Checkpoint::bundled(), LoadOptions::default()).unwrap();
    let engine = start(backend, EngineConfig::default()).await;
    let items: Vec<ScoreItem> = (1..=4).map(|s| item(&format!("a cat {s}"), s)).collect();
    let options = [Some(greedy(12)), None, Some(endless(20)), Some(greedy(3))];
    let submitted: Vec<Work> = items
        .iter()
        .zip(options)
        .map(|(i, o)| work(i.clone(), o))
        .collect();
    let mut tickets = engine.submit(submitted, None, &Span::none()).unwrap();
    let mut streams: Vec<_> = tickets.iter_mut().map(|t| t.take_text()).collect();
    assert!(streams[1].is_none(), "no text stream without a rationale");
    for (i, ticket) in tickets.into_iter().enumerate() {
        let got = ticket.wait().await;
        let prepared = model.prepare(&items[i]).unwrap();
        let want = model
            .score_with_rationales(&[&prepared], &[options[i]], &mut |_, _| true)
            .unwrap()
            .remove(0);
        // Batching moves scores by float rounding only.
        let score = got.outcome.as_ref().unwrap();
        assert!(
            (score.p_yes - want.0.p_yes).abs() < 1e-5,
            "item {i}: same score"
        );
        match (&got.rationale, &want.1) {
            (None, None) => {}
            (Some(g), Some(w)) => {
                assert_eq!(g.token_ids, w.token_ids, "item {i}");
                assert_eq!(g.text, w.text, "item {i}");
                let mut streamed = String::new();
                let rx = streams[i].as_mut().expect("text stream");
                while let Some(piece) = rx.recv().await {
                    streamed += &piece;
                }
                assert_eq!(streamed, g.text, "item {i}: streamed text adds up");
                assert!(got.timing.decode > Duration::ZERO);
            }
            other => panic!("item {i}: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_items_are_scored_while_a_long_rationale_decodes() {
    // 200 steps of >= 10 ms: the rationale takes > 2 s; a score-only item sent meanwhile must
    // be answered long before (one device, so prefill and decode share it).
    let backend = SlowDecoder::new(Duration::from_millis(10));
    let engine = start(backend.clone(), EngineConfig::default()).await;
    let long = engine
        .submit(
            vec![work(item("long", 1), Some(endless(200)))],
            None,
            &Span::none(),
        )
        .unwrap()
        .remove(0);
    while backend.steps.load(Ordering::SeqCst) < 5 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let sent = Instant::now();
    let quick = engine
        .submit(vec![item("quick", 2)], None, &Span::none())
        .unwrap()
        .remove(0)
        .wait()
        .await;
    let waited = sent.elapsed();
    assert!(quick.outcome.is_ok());
    let steps_then = backend.steps.load(Ordering::SeqCst);
    assert!(
        steps_then < 150,
        "the quick item waited for {steps_then} decode steps ({waited:?})"
    );
    let long = long.wait().await;
    let r = long.rationale.expect("rationale");
    assert_eq!((r.token_ids.len(), r.end), (200, RationaleEnd::MaxTokens));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_stops_decoding_and_frees_the_slot() {
    let backend = SlowDecoder::new(Duration::from_millis(5));
    let engine = start(backend.clone(), EngineConfig::default()).await;
    let mut ticket = engine
        .submit(
            vec![work(item("cancel me", 3), Some(endless(1000)))],
            None,
            &Span::none(),
        )
        .unwrap()
        .remove(0);
    let mut text = ticket.take_text().unwrap();
    for _ in 0..3 {
        text.recv().await.expect("some text");
    }
    drop(ticket);
    drop(text);
    // The slot is free the moment the caller lets go (issue #14: cancelled calls must not
    // hold queue slots), before the decoder even notices.
    assert_eq!(
        engine.in_flight(),
        0,
        "the cancelled item's slot is released"
    );
    let stopped_at = backend.steps.load(Ordering::SeqCst);
    // The decoder drops the sequence at its next step: at most the step under way and the
    // next one run (5 ms each), where an uncancelled sequence would run ~60 in 300 ms.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = backend.steps.load(Ordering::SeqCst) - stopped_at;
    assert!(after <= 3, "{after} decode steps after cancellation");
    assert!(stopped_at < 500, "stopped mid-way ({stopped_at} steps)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_stops_decoding_and_keeps_the_score() {
    let backend = SlowDecoder::new(Duration::from_millis(10));
    let engine = start(backend.clone(), EngineConfig::default()).await;
    let deadline = Instant::now() + Duration::from_millis(400);
    let got = engine
        .submit(
            vec![work(item("slow", 4), Some(endless(1000)))],
            Some(deadline),
            &Span::none(),
        )
        .unwrap()
        .remove(0)
        .wait()
        .await;
    let late = Instant::now().saturating_duration_since(deadline);
    assert!(got.outcome.is_ok(), "the score survives: {:?}", got.outcome);
    let r = got.rationale.expect("partial rationale");
    assert_eq!(r.end, RationaleEnd::Deadline);
    assert!(!r.token_ids.is_empty() && r.token_ids.len() < 1000);
    assert!(late < Duration::from_millis(200), "answered {late:?} late");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_decode_step_keeps_the_score_and_the_text_so_far() {
    let backend = SlowDecoder::new(Duration::from_millis(2));
    let engine = start(backend.clone(), EngineConfig::default()).await;
    let mut ticket = engine
        .submit(
            vec![work(item("breaks", 5), Some(endless(1000)))],
            None,
            &Span::none(),
        )
        .unwrap()
        .remove(0);
    let mut text = ticket.take_text().unwrap();
    text.recv().await.expect("some text");
    backend.fail.store(true, Ordering::SeqCst);
    let got = ticket.wait().await;
    assert!(got.outcome.is_ok());
    let r = got.rationale.expect("partial rationale");
    assert_eq!(r.end, RationaleEnd::Failed);
    assert!(!r.token_ids.is_empty());
    // The device keeps serving afterwards.
    backend.fail.store(false, Ordering::SeqCst);
    let next = engine
        .submit(
            vec![work(item("after", 6), Some(greedy(4)))],
            None,
            &Span::none(),
        )
        .unwrap()
        .remove(0)
        .wait()
        .await;
    assert!(next.outcome.is_ok() && next.rationale.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_decoding_cap_more_rationales_wait_and_all_finish() {
    let backend = SlowDecoder::new(Duration::from_millis(1));
    let config = EngineConfig {
        max_decoding_sequences: 1,
        max_batch_items: 1,
        ..EngineConfig::default()
    };
    let engine = start(backend, config).await;
    let tickets = engine
        .submit(
            (1..=3)
                .map(|s| work(item("capped", s), Some(endless(10))))
                .collect(),
            None,
            &Span::none(),
        )
        .unwrap();
    for t in tickets {
        let r = t.wait().await.rationale.expect("rationale");
        assert_eq!((r.token_ids.len(), r.end), (10, RationaleEnd::MaxTokens));
    }
}
