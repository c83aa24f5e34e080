//! `rewarddance bench`: N concurrent gRPC clients against a server (a running one with
//! `--target`, or one started in this process), items/s and p50/p99 latency, next to the same
//! items scored in-process without the server, so the server's overhead is one ratio.
//!
//! The in-process baseline is the best plain use of the model crate: items in chunks of the
//! largest batch the server could form at this load (see `--baseline-batch`), each chunk
//! prepared in parallel (rayon) and scored in one forward pass. Rounds alternate between the
//! two and medians are reported, so other load on the machine affects both alike.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use rayon::prelude::*;
use rewarddance_engine::{Backend, Engine};
use rewarddance_model::{Candidate, ImageInput, Mode, PreparedItem, RewardModel, ScoreItem};
use rewarddance_proto::v1;
use rewarddance_proto::v1::reward_service_client::RewardServiceClient;
use rewarddance_server::ServerArgs;

use crate::model_args::ModelArgs;

/// Arguments of `rewarddance bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    server: ServerArgs,
    /// Benchmark a running server at this URL (e.g. http://host:50051) instead of starting one.
    #[arg(long)]
    target: Option<String>,
    /// Concurrent clients (one connection each).
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Items per Score call.
    #[arg(long, default_value_t = 1)]
    items_per_request: usize,
    /// Items scored per measurement (server and in-process alike).
    #[arg(long, default_value_t = 2048)]
    items: usize,
    /// Side of the generated square PNG candidates, in pixels.
    #[arg(long, default_value_t = 128)]
    image_size: u32,
    /// Distinct images to cycle through; 0: every item has its own image. Each measurement
    /// draws fresh images, so the vision-feature cache never hits across measurements.
    #[arg(long, default_value_t = 0)]
    distinct: usize,
    /// Skip the in-process baseline.
    #[arg(long)]
    no_baseline: bool,
    /// Measurement rounds, alternating server and in-process (medians are reported, so that
    /// other load on the machine hits both sides alike).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// In-process batch size. Default: the largest batch the server can form at this load,
    /// min(concurrency * items-per-request, --max-batch-items).
    #[arg(long)]
    baseline_batch: Option<usize>,
    /// Bearer token for --target (bench's own server takes none).
    #[arg(
        long,
        env = "REWARDDANCE_BENCH_TOKEN",
        hide_env_values = true,
        requires = "target"
    )]
    token: Option<String>,
}

/// Server flags that do nothing in `bench`: its own server listens on a loopback port, plain
/// text, without auth, metrics, logs or a drain, and is sent only unary `Score` calls without
/// rationales; a `--target` server has its own settings.
const UNUSED_SERVER_FLAGS: [&str; 15] = [
    "addr",
    "metrics_addr",
    "no_metrics",
    "log_format",
    "log",
    "drain_timeout_s",
    "tls_cert",
    "tls_key",
    "auth_token",
    "auth_token_file",
    "max_stream_in_flight",
    "max_rank_candidates",
    "max_rationale_tokens",
    "default_rationale_tokens",
    "max_decoding_sequences",
];

/// Hides [`UNUSED_SERVER_FLAGS`] from `bench --help` (they stay parseable so that the
/// `REWARDDANCE_*` variables of a server's environment do not break `bench`).
pub fn without_unused_flags(cli: clap::Command) -> clap::Command {
    cli.mut_subcommand("bench", |bench| {
        UNUSED_SERVER_FLAGS
            .iter()
            .fold(bench, |b, id| b.mut_arg(*id, |a| a.hide(true)))
    })
}

/// Exits with a usage error when one of [`UNUSED_SERVER_FLAGS`] was given on the command line.
pub fn refuse_unused_flags(matches: &clap::ArgMatches) {
    let given = UNUSED_SERVER_FLAGS
        .iter()
        .find(|id| matches.value_source(id) == Some(clap::parser::ValueSource::CommandLine));
    if let Some(id) = given {
        let message = format!(
            "--{} does nothing in `bench`: its own server listens on a loopback port without \
             TLS, auth, metrics or logs and gets only unary Score calls; to benchmark a server \
             with that setting, start `rewarddance serve` with it and pass --target URL",
            id.replace('_', "-")
        );
        clap::Command::new("rewarddance bench")
            .error(clap::error::ErrorKind::ArgumentConflict, message)
            .exit();
    }
}

/// Runs the benchmark and prints a summary (also as one JSON line).
pub fn run(mut args: BenchArgs) -> Result<std::process::ExitCode> {
    if args.concurrency == 0 || args.items_per_request == 0 || args.items == 0 {
        bail!("--concurrency, --items-per-request and --items must be positive");
    }
    let distinct = if args.distinct == 0 {
        args.items
    } else {
        args.distinct
    };
    let mut salt = 0u32;
    let mut fresh = || -> Result<Vec<Vec<u8>>> {
        salt += 1;
        (0..distinct)
            .map(|i| png(args.image_size, i as u32, salt))
            .collect()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let model = Arc::new(args.model.load()?);

    let baseline_batch = args
        .baseline_batch
        .unwrap_or((args.concurrency * args.items_per_request).min(args.server.max_batch_items));
    let url = runtime.block_on(async {
        match &args.target {
            Some(url) => Ok::<_, anyhow::Error>(url.clone()),
            None => {
                args.server.addr = "127.0.0.1:0".parse()?;
                args.server.no_metrics = true;
                start_server(model.clone(), &args.server).await
            }
        }
    })?;
    // Warm-up both paths on a slice of the items.
    runtime.block_on(measure(&url, &fresh()?, &args, args.items.min(256)))?;
    if !args.no_baseline {
        in_process(&model, &fresh()?, args.items.min(256), baseline_batch)?;
    }
    let (mut servers, mut locals) = (Vec::new(), Vec::new());
    for round in 0..args.rounds.max(1) {
        let s = runtime.block_on(measure(&url, &fresh()?, &args, args.items))?;
        eprintln!(
            "round {round}: server {:.1} items/s (p50 {:.1} ms, p99 {:.1} ms)",
            s.items_per_s, s.p50_ms, s.p99_ms
        );
        servers.push(s);
        if !args.no_baseline {
            let b = in_process(&model, &fresh()?, args.items, baseline_batch)?;
            eprintln!("round {round}: in-process {b:.1} items/s");
            locals.push(b);
        }
    }
    servers.sort_by(|a, b| a.items_per_s.total_cmp(&b.items_per_s));
    let server = servers.swap_remove(servers.len() / 2);
    locals.sort_by(f64::total_cmp);
    let baseline = locals.get(locals.len() / 2).copied();

    println!(
        "model {} | {} items | {}px PNG | concurrency {} | {} item(s)/request",
        model.id(),
        args.items,
        args.image_size,
        args.concurrency,
        args.items_per_request
    );
    println!(
        "server:     {:8.1} items/s   p50 {:7.2} ms   p99 {:7.2} ms   ({} failed)",
        server.items_per_s, server.p50_ms, server.p99_ms, server.failed
    );
    let mut json = serde_json::json!({
        "model": model.id(),
        "concurrency": args.concurrency,
        "items_per_request": args.items_per_request,
        "items": args.items,
        "image_size": args.image_size,
        "server_items_per_s": server.items_per_s,
        "server_p50_ms": server.p50_ms,
        "server_p99_ms": server.p99_ms,
        "server_failed": server.failed,
        "rounds": args.rounds.max(1),
    });
    if let Some(b) = baseline {
        println!(
            "in-process: {:8.1} items/s   (batches of {}, parallel prepare)",
            b, baseline_batch
        );
        println!("ratio server / in-process: {:.3}", server.items_per_s / b);
        json["in_process_items_per_s"] = b.into();
        json["in_process_batch"] = baseline_batch.into();
        json["ratio"] = (server.items_per_s / b).into();
    }
    println!("{json}");
    Ok(std::process::ExitCode::SUCCESS)
}

fn png(size: u32, seed: u32, salt: u32) -> Result<Vec<u8>> {
    let img = image::RgbImage::from_fn(size, size, |x, y| {
        let v = x.wrapping_mul(7 + seed) ^ y.wrapping_mul(13 + 2 * seed);
        image::Rgb([
            v as u8,
            (v >> 3) as u8,
            seed.wrapping_mul(37).wrapping_add(salt) as u8,
        ])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)?;
    Ok(out.into_inner())
}

fn model_item(images: &[Vec<u8>], i: usize) -> ScoreItem {
    ScoreItem {
        prompt: format!("a photo of object number {i}"),
        candidate: Candidate::Image(ImageInput::Encoded(images[i % images.len()].clone())),
        reference: None,
        instruction: None,
        mode: Mode::Pointwise,
    }
}

/// Items per second scored in-process.
fn in_process(model: &RewardModel, images: &[Vec<u8>], items: usize, batch: usize) -> Result<f64> {
    let started = Instant::now();
    let batch = batch.max(1);
    let mut done = 0;
    let (mut prep, mut fwd) = (Duration::ZERO, Duration::ZERO);
    while done < items {
        let n = batch.min(items - done);
        let t0 = Instant::now();
        let prepared: Vec<PreparedItem> = (done..done + n)
            .into_par_iter()
            .map(|i| model.prepare(&model_item(images, i)))
            .collect::<rewarddance_model::Result<_>>()?;
        let refs: Vec<&PreparedItem> = prepared.iter().collect();
        let t1 = Instant::now();
        model.score_prepared(&refs)?;
        prep += t1 - t0;
        fwd += t1.elapsed();
        done += n;
    }
    tracing::debug!(
        prepare_ms_per_item = prep.as_secs_f64() * 1e3 / items as f64,
        forward_ms_per_item = fwd.as_secs_f64() * 1e3 / items as f64,
        "in-process round"
    );
    Ok(items as f64 / started.elapsed().as_secs_f64())
}

async fn start_server(model: Arc<RewardModel>, server: &ServerArgs) -> Result<String> {
    let engine = Engine::start(vec![model as Arc<dyn Backend>], server.engine_config())?;
    engine.ready().await.map_err(anyhow::Error::msg)?;
    let (listener, addr) = rewarddance_server::bind(server).await?;
    let server = server.clone();
    tokio::spawn(async move {
        let forever = std::future::pending::<()>();
        if let Err(e) = rewarddance_server::run(engine, &server, listener, forever).await {
            eprintln!("bench server failed: {e:#}");
        }
    });
    Ok(format!("http://{addr}"))
}

struct Measured {
    items_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    failed: usize,
}

/// Closed-loop clients until `total` items were scored.
async fn measure(
    url: &str,
    images: &[Vec<u8>],
    args: &BenchArgs,
    total: usize,
) -> Result<Measured> {
    let requests = total.div_ceil(args.items_per_request);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let images = Arc::new(images.to_vec());
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency {
        let channel = tonic::transport::Endpoint::from_shared(url.to_string())?
            .connect()
            .await
            .with_context(|| format!("connecting to {url}"))?;
        let mut client = RewardServiceClient::new(channel).max_decoding_message_size(64 << 20);
        let (next, images, per, token) = (
            next.clone(),
            images.clone(),
            args.items_per_request,
            args.token.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut failed = 0usize;
            loop {
                let r = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if r >= requests {
                    break;
                }
                let items = (0..per)
                    .map(|k| {
                        let i = r * per + k;
                        v1::ScoreItem {
                            id: i.to_string(),
                            prompt: format!("a photo of object number {i}"),
                            candidate: Some(v1::score_item::Candidate::Image(v1::Image {
                                source: Some(v1::image::Source::Encoded(
                                    images[i % images.len()].clone(),
                                )),
                            })),
                            ..Default::default()
                        }
                    })
                    .collect();
                let mut request = tonic::Request::new(v1::ScoreRequest { items });
                if let Some(t) = &token {
                    if let Ok(v) = format!("Bearer {t}").parse() {
                        request.metadata_mut().insert("authorization", v);
                    }
                }
                let t0 = Instant::now();
                match client.score(request).await {
                    Ok(r) => {
                        failed += r
                            .get_ref()
                            .results
                            .iter()
                            .filter(|x| {
                                matches!(x.outcome, Some(v1::item_result::Outcome::Error(_)))
                            })
                            .count();
                    }
                    Err(_) => failed += per,
                }
                latencies.push(t0.elapsed());
            }
            (latencies, failed)
        }));
    }
    let mut latencies: Vec<Duration> = Vec::new();
    let mut failed = 0;
    for t in tasks {
        let (l, f) = t.await?;
        latencies.extend(l);
        failed += f;
    }
    let wall = started.elapsed().as_secs_f64();
    latencies.sort();
    let pct = |p: f64| {
        let i = ((latencies.len() as f64 - 1.0) * p).round() as usize;
        latencies.get(i).map_or(0.0, |d| d.as_secs_f64() * 1e3)
    };
    Ok(Measured {
        items_per_s: (requests * args.items_per_request) as f64 / wall,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        failed,
    })
}
