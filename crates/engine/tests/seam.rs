//! The backend seam: the engine admits, batches, answers and decodes through [`Model`] alone.
//! The backend here has no model at all (no weights, no tokenizer): its "score" is a function
//! of the prompt, its "rationale" counts down, so every answer below can only have come
//! through the trait.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rewarddance_engine::{
    Backend, Engine, EngineConfig, FailureKind, ItemResult, Model, Output, RationaleEnd, Task,
    Ticket, Work,
};
use rewarddance_model::pipeline::gradient::{Objective, ScoreGradient};
use rewarddance_model::{
    AnswerTokens, Candidate, DType, Device, Error, ImageInput, ItemLimits, Mode, ModelInfo,
    PreparedImage, Rationale, RationaleOptions, Result, ReuseStats, Score, ScoreItem, StopReason,
    Token,
};
use tracing::Span;

/// A prepared item: its prompt's length stands for its tokens.
struct Tokens(usize);

/// A rationale that emits `"x"` until `left` runs out.
struct Countdown {
    left: usize,
    ids: Vec<u32>,
    text: String,
}

/// Fixed answers: P(yes) = tokens / 100. `KIND` only tells types apart.
#[derive(Default)]
struct Fixed<const KIND: u8> {
    /// Items per forward pass, in order (the warm-up's included).
    batches: Mutex<Vec<usize>>,
    /// Per forward pass: `G` for a gradient batch, `S` otherwise.
    kinds: Mutex<String>,
    decode_steps: AtomicUsize,
}

fn score(tokens: usize) -> Score {
    Score {
        p_yes: tokens as f64 / 100.0,
        p_yes_vocab: 0.0,
        logit_yes: 0.0,
        logit_no: 0.0,
    }
}

impl<const KIND: u8> Model for Fixed<KIND> {
    type Prepared = Tokens;
    type Sequence = Countdown;

    fn info(&self) -> ModelInfo {
        ModelInfo {
            id: "fixed".into(),
            family: "test",
            layout: "none".into(),
            dtype: DType::F32,
            device: Device::Cpu,
            limits: ItemLimits {
                max_image_pixels: 1,
                max_tiles_per_item: 1,
                max_tokens_per_item: 99,
            },
            answers: AnswerTokens {
                yes: "yes".into(),
                no: "no".into(),
            },
            answer_ids: (1, 2),
            tile_size: 1,
            tokens_per_tile: 1,
            rewards: Vec::new(),
        }
    }

    fn prepare(&self, item: &ScoreItem, _reward: usize) -> Result<Tokens> {
        match item.prompt.len() {
            n if n > 99 => Err(Error::TooManyTokens {
                tokens: n,
                limit: 99,
            }),
            n => Ok(Tokens(n)),
        }
    }

    fn tokens(prepared: &Tokens) -> usize {
        prepared.0
    }

    fn tiles(_: &Tokens) -> usize {
        1
    }

    fn prepare_image(&self, _: &ImageInput) -> Result<Arc<PreparedImage>> {
        Err(Error::InvalidImage("this backend has no images".into()))
    }

    fn forward(&self, batch: &[&Tokens], tasks: &[Task]) -> Result<Vec<Output<Countdown>>> {
        self.batches.lock().unwrap().push(batch.len());
        let gradient = tasks.iter().any(Task::is_gradient);
        self.kinds
            .lock()
            .unwrap()
            .push(if gradient { 'G' } else { 'S' });
        if batch.iter().any(|t| t.0 == 42) {
            // The blocker of the scheduling test: keeps the device busy while work queues.
            std::thread::sleep(Duration::from_millis(300));
        }
        Ok(batch
            .iter()
            .zip(tasks)
            .map(|(t, task)| match task {
                Task::Score => Output::Score(score(t.0)),
                Task::Gradient(_) => Output::Gradient(Box::new(ScoreGradient {
                    score: score(t.0),
                    objective: score(t.0).p_yes,
                    images: Vec::new(),
                })),
                Task::Rationale(o) => Output::Rationale(
                    score(t.0),
                    Countdown {
                        left: o.max_tokens,
                        ids: Vec::new(),
                        text: String::new(),
                    },
                ),
            })
            .collect())
    }

    fn next_token(&self, c: &mut Countdown) -> Result<Token> {
        c.left -= 1;
        c.ids.push(7);
        c.text.push('x');
        Ok(Token {
            text: "x".into(),
            stop: (c.left == 0).then_some(StopReason::MaxTokens),
        })
    }

    fn decode_forward(&self, _: &mut [&mut Countdown]) -> Result<()> {
        self.decode_steps.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn finish(&self, c: Countdown, stop: StopReason) -> Rationale {
        Rationale {
            token_ids: c.ids,
            text: c.text,
            stop,
        }
    }

    fn reuse_stats(&self) -> ReuseStats {
        ReuseStats::default()
    }
}

fn item(prompt: &str) -> ScoreItem {
    ScoreItem {
        prompt: prompt.into(),
        candidate: Candidate::Video(Vec::new()),
        reference: None,
        instruction: None,
        mode: Mode::Pointwise,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_admits_batches_and_answers_through_a_backend_without_a_model() {
    let backend = Arc::new(Fixed::<0>::default());
    let config = EngineConfig {
        // Long enough for the three items of one submission to share a batch.
        max_batch_delay: Duration::from_millis(200),
        ..EngineConfig::default()
    };
    let engine = Engine::start(vec![backend.clone() as Arc<dyn Backend>], config).expect("start");
    tokio::time::timeout(Duration::from_secs(10), engine.ready())
        .await
        .expect("warm-up in time")
        .expect("the warm-up ran through the backend");
    assert_eq!(engine.model_info().id, "fixed");
    assert_eq!(engine.model_info().limits.max_tokens_per_item, 99);
    assert_eq!(engine.devices(), ["cpu".to_string()]);

    let work = vec![
        Work::from(item("abcd")),
        Work {
            item: item("abcdefghij"),
            task: Task::Rationale(RationaleOptions {
                max_tokens: 3,
                ..RationaleOptions::default()
            }),
            rewards: Vec::new(),
        },
        Work::from(item(&"y".repeat(100))),
    ];
    let mut tickets = engine.submit(work, None, &Span::none()).expect("admitted");
    let mut text = tickets[1].take_text().expect("a rationale streams text");
    let results: Vec<_> = wait_all(tickets).await;

    let first = results[0].outcome.as_ref().expect("scored");
    assert_eq!(first.p_yes, 0.04);
    assert!(results[0].rationale.is_none());
    // The two good items shared one forward pass (the oversized one never reached it).
    assert_eq!(results[0].timing.batch_items, 2);

    let second = results[1].outcome.as_ref().expect("scored");
    assert_eq!(second.p_yes, 0.10);
    let rationale = results[1].rationale.as_ref().expect("decoded");
    assert_eq!(
        (
            rationale.text.as_str(),
            rationale.token_ids.len(),
            rationale.end
        ),
        ("xxx", 3, RationaleEnd::MaxTokens)
    );
    let mut streamed = String::new();
    while let Some(piece) = text.recv().await {
        streamed.push_str(&piece);
    }
    assert_eq!(streamed, "xxx");
    // Two decode steps between the three tokens (none after the last).
    assert_eq!(backend.decode_steps.load(Ordering::SeqCst), 2);

    let refused = results[2].outcome.as_ref().expect_err("too long");
    assert_eq!(
        (refused.kind, refused.reason),
        (FailureKind::InvalidArgument, "too_many_tokens")
    );
    assert_eq!(
        *backend.batches.lock().unwrap(),
        [1, 2],
        "warm-up, then one batch"
    );
}

/// Waits for every ticket, in order.
async fn wait_all(tickets: Vec<Ticket>) -> Vec<ItemResult> {
    let mut out = Vec::with_capacity(tickets.len());
    for t in tickets {
        out.push(t.wait().await);
    }
    out
}

#[test]
fn an_engine_refuses_backends_of_different_kinds() {
    // Items prepared on the first backend run on any: two kinds of model cannot share a queue.
    let backends: Vec<Arc<dyn Backend>> = vec![
        Arc::new(Fixed::<0>::default()),
        Arc::new(Fixed::<1>::default()),
    ];
    let err = Engine::start(backends, EngineConfig::default())
        .err()
        .expect("refused");
    assert!(err.to_string().contains("same kind of model"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gradient_batches_and_score_batches_take_turns() {
    // One device, busy with a slow batch while 8 gradient items and then 1 score item queue.
    // First come first served would run the score after all 8 gradient batches; taking turns,
    // it runs after at most one.
    let backend = Arc::new(Fixed::<0>::default());
    let config = EngineConfig {
        max_batch_delay: Duration::ZERO,
        max_gradient_tiles: 1,
        ..EngineConfig::default()
    };
    let engine = Engine::start(vec![backend.clone() as Arc<dyn Backend>], config).expect("start");
    engine.ready().await.expect("warm-up");
    let warm_up = backend.kinds.lock().unwrap().len();
    let blocker = engine
        .submit(vec![Work::from(item(&"b".repeat(42)))], None, &Span::none())
        .expect("admitted");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut work: Vec<Work> = (0..8)
        .map(|i| Work {
            item: item(&"g".repeat(10 + i)),
            task: Task::Gradient(Objective::PYes),
            rewards: Vec::new(),
        })
        .collect();
    work.push(Work::from(item("score me")));
    let tickets = engine.submit(work, None, &Span::none()).expect("admitted");
    let results = wait_all(tickets).await;
    wait_all(blocker).await;
    assert!(
        results[..8].iter().all(|r| r.gradient.is_some()),
        "gradients answered"
    );
    assert!(results[8].gradient.is_none() && results[8].outcome.is_ok());
    let kinds: String = backend.kinds.lock().unwrap()[warm_up..].to_string();
    // The blocker, then at most one gradient batch before the score.
    let score_at = kinds[1..].find('S').expect("the score ran");
    assert!(score_at <= 1, "batches after the blocker: {kinds}");
    assert_eq!(kinds.matches('G').count(), 8, "{kinds}");
}
