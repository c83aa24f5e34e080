//! Logs (`tracing`, human or JSON) and the Prometheus `/metrics` endpoint.

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use rewarddance_engine::metrics as names;
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global `tracing` subscriber (once per process; later calls are no-ops).
pub fn init_logging(format: LogFormat, filter: &str) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

static RECORDER: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the Prometheus recorder (once per process) and returns its handle.
pub fn prometheus() -> anyhow::Result<PrometheusHandle> {
    if let Some(h) = RECORDER.get() {
        return Ok(h.clone());
    }
    let buckets = |b: PrometheusBuilder, name: &str, values: &[f64]| {
        b.set_buckets_for_metric(Matcher::Full(name.to_string()), values)
    };
    let mut builder = PrometheusBuilder::new();
    for name in [
        names::REQUEST_DURATION_SECONDS,
        names::QUEUE_DURATION_SECONDS,
        names::PREPROCESS_DURATION_SECONDS,
        names::INFERENCE_DURATION_SECONDS,
    ] {
        builder = buckets(builder, name, names::DURATION_BUCKETS)?;
    }
    builder = buckets(
        builder,
        names::DECODE_STEP_SECONDS,
        names::DECODE_STEP_BUCKETS,
    )?;
    builder = buckets(builder, names::BATCH_SIZE, names::BATCH_SIZE_BUCKETS)?;
    builder = buckets(builder, names::BATCH_TOKENS, names::BATCH_TOKENS_BUCKETS)?;
    let handle = match builder.install_recorder() {
        Ok(h) => h,
        // Lost a race with another installer in this process: use the winner's handle.
        Err(e) => return RECORDER.get().cloned().ok_or_else(|| anyhow::anyhow!(e)),
    };
    names::describe();
    let handle = RECORDER.get_or_init(|| handle).clone();
    let upkeep = handle.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}

/// Creates the series known at start-up (at zero) and the build-info gauge: every family
/// shows on `/metrics` before the first request. No-op without an installed recorder.
pub fn register_families(info: &rewarddance_proto::v1::InfoResponse) {
    let rewards: Vec<String> = info.rewards.iter().map(|r| r.name.clone()).collect();
    names::register_families(&info.devices, &rewards);
    for method in ["Score", "ScoreStream", "Rank", "Info"] {
        metrics::counter!(names::REQUESTS_TOTAL, "method" => method, "code" => "OK").absolute(0);
    }
    for device in &info.devices {
        metrics::gauge!(
            names::BUILD_INFO,
            "version" => info.server_version.clone(),
            "model" => info.model_id.clone(),
            "dtype" => info.dtype.clone(),
            "device" => device.clone()
        )
        .set(1.0);
    }
}

/// Binds the metrics address and serves `GET /metrics`, and `GET /health` (200 while the
/// process runs: a liveness check for load balancers that cannot speak gRPC; readiness is
/// gRPC health), until the process exits. Returns the bound address.
pub async fn serve_metrics(addr: SocketAddr) -> anyhow::Result<SocketAddr> {
    let handle = prometheus()?;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("binding metrics address {addr}: {e}"))?;
    let bound = listener.local_addr()?;
    let app = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(move || {
                let handle = handle.clone();
                async move { handle.render() }
            }),
        )
        .route("/health", axum::routing::get(|| async { "ok\n" }));
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics endpoint stopped");
        }
    });
    Ok(bound)
}
