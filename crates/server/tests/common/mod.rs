//! A real server on a loopback ephemeral port with the bundled model, and a tonic client.

#![allow(dead_code)] // each test binary uses a different subset

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rewarddance_engine::{Backend, Engine, Model, Output, Task};
use rewarddance_model::{
    Candidate, Checkpoint, Generation, ImageInput, LoadOptions, ModelInfo, PreparedImage,
    PreparedItem, Rationale, ReuseStats, RewardModel, ScoreItem, StopReason, Token,
};
use rewarddance_proto::v1;
use rewarddance_proto::v1::reward_service_client::RewardServiceClient;
use rewarddance_server::ServerArgs;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

/// The bundled model with test hooks: a delay per batch, a panic on the prompt "PANIC", a gate
/// that holds every forward (warm-up included) until opened, a count of scored items, and a
/// delay and count per rationale decode step.
pub struct TestBackend {
    pub model: RewardModel,
    pub delay: Duration,
    pub scored: AtomicUsize,
    pub gate_open: AtomicBool,
    pub step_delay: Duration,
    pub decode_steps: AtomicUsize,
    /// Images prepared alone (`prepare_image`: Rank's candidates).
    pub images_prepared: AtomicUsize,
    /// Images decoded while preparing items (not already prepared).
    pub images_decoded_in_items: AtomicUsize,
    /// Sleep in `prepare_image`, in milliseconds.
    pub image_delay_ms: std::sync::atomic::AtomicU64,
}

impl TestBackend {
    pub fn new(delay: Duration) -> Arc<Self> {
        Self::with_step_delay(delay, Duration::ZERO)
    }

    pub fn with_step_delay(delay: Duration, step_delay: Duration) -> Arc<Self> {
        let model = RewardModel::load(&Checkpoint::bundled(), LoadOptions::default())
            .expect("bundled model");
        Self::build(model, delay, step_delay)
    }

    fn build(model: RewardModel, delay: Duration, step_delay: Duration) -> Arc<Self> {
        Arc::new(TestBackend {
            model,
            delay,
            scored: AtomicUsize::new(0),
            gate_open: AtomicBool::new(true),
            step_delay,
            decode_steps: AtomicUsize::new(0),
            images_prepared: AtomicUsize::new(0),
            images_decoded_in_items: AtomicUsize::new(0),
            image_delay_ms: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// A backend over `model` (no delays).
    pub fn with_model(model: RewardModel) -> Arc<Self> {
        Self::build(model, Duration::ZERO, Duration::ZERO)
    }

    /// Counts the images `item` makes preprocessing decode.
    fn count_decodes(&self, item: &ScoreItem) {
        let images = match &item.candidate {
            Candidate::Image(i) => vec![i],
            Candidate::Video(frames) => frames.iter().collect(),
        };
        let decoded = images
            .into_iter()
            .chain(&item.reference)
            .filter(|i| !matches!(i, ImageInput::Prepared(_)))
            .count();
        self.images_decoded_in_items
            .fetch_add(decoded, Ordering::SeqCst);
    }

    pub fn decode_steps(&self) -> usize {
        self.decode_steps.load(Ordering::SeqCst)
    }

    pub fn scored(&self) -> usize {
        self.scored.load(Ordering::SeqCst)
    }
}

/// The bundled model's own behaviour with the hooks above (the batch hooks on score-only
/// forward passes, the warm-up's included).
impl Model for TestBackend {
    type Prepared = PreparedItem;
    type Sequence = Generation;
    fn info(&self) -> ModelInfo {
        self.model.info()
    }
    fn tokens(prepared: &PreparedItem) -> usize {
        prepared.num_tokens()
    }
    fn tiles(prepared: &PreparedItem) -> usize {
        prepared.num_tiles()
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
    fn prepare_image(&self, input: &ImageInput) -> rewarddance_model::Result<Arc<PreparedImage>> {
        std::thread::sleep(Duration::from_millis(
            self.image_delay_ms.load(Ordering::SeqCst),
        ));
        self.images_prepared.fetch_add(1, Ordering::SeqCst);
        self.model.prepare_image(input)
    }
    fn prepare(&self, item: &ScoreItem, reward: usize) -> rewarddance_model::Result<PreparedItem> {
        self.count_decodes(item);
        self.model.prepare_for(item, reward)
    }
    fn prepare_each(
        &self,
        item: &ScoreItem,
        rewards: &[usize],
    ) -> Vec<rewarddance_model::Result<PreparedItem>> {
        self.count_decodes(item);
        self.model.prepare_rewards(item, rewards)
    }
    fn forward(
        &self,
        batch: &[&PreparedItem],
        tasks: &[Task],
    ) -> rewarddance_model::Result<Vec<Output<Generation>>> {
        if tasks.iter().all(|t| *t == Task::Score) {
            while !self.gate_open.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(5));
            }
            if batch.iter().any(|p| p.user_content.contains("PANIC")) {
                panic!("injected panic");
            }
            std::thread::sleep(self.delay);
            self.scored.fetch_add(batch.len(), Ordering::SeqCst);
        }
        Model::forward(&self.model, batch, tasks)
    }
    fn decode_forward(&self, generations: &mut [&mut Generation]) -> rewarddance_model::Result<()> {
        std::thread::sleep(self.step_delay);
        self.decode_steps.fetch_add(1, Ordering::SeqCst);
        self.model.decode_forward(generations)
    }
}

pub struct TestServer {
    pub addr: std::net::SocketAddr,
    pub engine: Engine,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestServer {
    /// Starts a server; does not wait for warm-up.
    pub async fn start_cold(backend: Arc<TestBackend>, mut args: ServerArgs) -> TestServer {
        args.addr = "127.0.0.1:0".parse().expect("addr");
        let engine =
            Engine::start(vec![backend as Arc<dyn Backend>], args.engine_config()).expect("engine");
        let (listener, addr) = rewarddance_server::bind(&args).await.expect("bind");
        let (stop, stopped) = oneshot::channel::<()>();
        let e = engine.clone();
        let task = tokio::spawn(async move {
            rewarddance_server::run(e, &args, listener, async {
                let _ = stopped.await;
            })
            .await
        });
        TestServer {
            addr,
            engine,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Starts a server and waits until it is SERVING.
    pub async fn start(backend: Arc<TestBackend>, args: ServerArgs) -> TestServer {
        let server = Self::start_cold(backend, args).await;
        tokio::time::timeout(Duration::from_secs(60), server.engine.ready())
            .await
            .expect("warm-up in time")
            .expect("warm-up ok");
        server
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn client(&self) -> RewardServiceClient<Channel> {
        RewardServiceClient::connect(self.url())
            .await
            .expect("connect")
    }

    /// Signals shutdown and waits for the drain to finish.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(60), task)
                .await
                .expect("drained in time")
                .expect("join")
                .expect("server ok");
        }
    }

    /// Signals shutdown without waiting.
    pub fn begin_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

pub fn args() -> ServerArgs {
    ServerArgs {
        no_metrics: true,
        ..ServerArgs::default()
    }
}

pub fn raw_image(width: u32, height: u32, seed: u8) -> v1::Image {
    let data = (0..width * height * 3)
        .map(|i| (i as u8).wrapping_mul(seed).wrapping_add(seed))
        .collect();
    v1::Image {
        source: Some(v1::image::Source::Rgb8(v1::RawImage {
            width,
            height,
            data,
        })),
    }
}

pub fn png_image(width: u32, height: u32, seed: u8) -> v1::Image {
    let img = image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([
            (x as u8).wrapping_mul(seed),
            (y as u8).wrapping_add(seed),
            seed,
        ])
    });
    let mut bytes = std::io::Cursor::new(Vec::new());
    img.write_to(&mut bytes, image::ImageFormat::Png)
        .expect("png");
    v1::Image {
        source: Some(v1::image::Source::Encoded(bytes.into_inner())),
    }
}

pub fn item(id: &str, prompt: &str, seed: u8) -> v1::ScoreItem {
    v1::ScoreItem {
        id: id.into(),
        prompt: prompt.into(),
        candidate: Some(v1::score_item::Candidate::Image(raw_image(
            40 + seed as u32,
            30 + seed as u32,
            seed,
        ))),
        ..Default::default()
    }
}

pub fn request(items: Vec<v1::ScoreItem>) -> v1::ScoreRequest {
    v1::ScoreRequest { items }
}

pub fn score_of(r: &v1::ItemResult) -> &v1::Score {
    match &r.outcome {
        Some(v1::item_result::Outcome::Score(s)) => s,
        other => panic!("item {} not scored: {other:?}", r.id),
    }
}

pub fn error_of(r: &v1::ItemResult) -> &v1::ItemError {
    match &r.outcome {
        Some(v1::item_result::Outcome::Error(e)) => e,
        other => panic!("item {} did not fail: {other:?}", r.id),
    }
}

/// The model crate's view of a proto image (for in-process comparisons).
pub fn to_model_image(img: &v1::Image) -> rewarddance_model::ImageInput {
    match img.source.as_ref().expect("source") {
        v1::image::Source::Encoded(b) => rewarddance_model::ImageInput::Encoded(b.clone()),
        v1::image::Source::Rgb8(r) => rewarddance_model::ImageInput::Rgb8 {
            width: r.width,
            height: r.height,
            data: r.data.clone(),
        },
        v1::image::Source::Float(_) => panic!("float images have their own tests"),
    }
}
