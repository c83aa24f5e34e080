//! # rewarddance-server
//!
//! The gRPC face of the reward model: `rewarddance.v1.RewardService` (Score, ScoreStream, Rank,
//! Info) over the [`rewarddance_engine`] batcher, the standard `grpc.health.v1` service
//! (per-service status, NOT_SERVING until the warm-up forward ran), server reflection,
//! optional bearer-token auth and TLS, request limits, HTTP/2 connection limits (stream and
//! reset limits, keepalive, adaptive windows; HTTP 415 for non-gRPC requests), Prometheus
//! metrics and a graceful drain.
//!
//! [`run`] is the whole server; the CLI's `serve` subcommand loads the model, builds the
//! engine and calls it with a shutdown signal.
//!
//! # Modules
//! Each depends only on those listed before it (no cycles):
//! - `status`, `deadline`, `transport`, `listen`, `config`, `telemetry`, `auth`, `calls`: the
//!   status-code mapping, the deadline contract, HTTP/2 and TLS, flags, metrics and logs,
//!   bearer auth, per-call accounting.
//! - `limits`: what a request may ask (flags and the engine's `ModelInfo`).
//! - `convert`: proto messages to engine [`Work`](rewarddance_engine::Work) and engine results
//!   to proto messages, each mapping in one place.
//! - `shared`: what every handler shares: the engine, the limits, admission of converted items
//!   and collection of their answers.
//! - `handlers::{score, score_stream, rank, info}`: one RPC each, over `shared`; none imports
//!   another.
//! - `service`: [`RewardApi`], the one `impl` of the generated service trait, routing each
//!   RPC to its handler.

#![warn(missing_docs)]

mod auth;
mod calls;
pub mod config;
mod convert;
mod deadline;
mod handlers;
mod limits;
pub mod listen;
mod service;
mod shared;
pub mod status;
pub mod telemetry;
mod transport;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use rewarddance_engine::{Engine, Health};
use rewarddance_proto::v1::reward_service_server::RewardServiceServer;
use tokio::net::TcpListener;
use tonic::service::interceptor::InterceptedService;
use tonic::service::Routes;
use tonic_health::ServingStatus;

pub use auth::BearerAuth;
pub use config::{LogFormat, ServerArgs};
pub use service::RewardApi;

/// Time allowed to flush the last answers once every accepted item has been answered.
const FLUSH_GRACE: Duration = Duration::from_secs(2);

/// Binds `args.addr`; the listener is passed to [`run`] (split so callers learn the port).
pub async fn bind(args: &ServerArgs) -> anyhow::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(args.addr)
        .await
        .with_context(|| format!("binding {}", args.addr))?;
    let addr = listener.local_addr()?;
    Ok((listener, addr))
}

/// Serves until `shutdown` resolves, then drains: health flips to NOT_SERVING, new calls are
/// refused with UNAVAILABLE, every accepted item is finished and answered, and the function
/// returns (bounded by `args.drain_timeout_s`).
pub async fn run(
    engine: Engine,
    args: &ServerArgs,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let auth = BearerAuth::new(args.token()?);
    let api = RewardApi::new(engine.clone(), args);
    let server = |limit: usize| {
        let checker = auth.clone();
        InterceptedService::new(
            RewardServiceServer::new(api.clone())
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit),
            move |r| checker.check(r),
        )
    };
    let reward = transport::PerMethodLimits {
        rest: server(args.max_message_bytes),
        grad: server(args.max_grad_message_bytes),
    };

    let (reporter, health_service) = tonic_health::server::health_reporter();
    // The reporter starts with "" = SERVING: correct it before the first connection.
    for name in ["", rewarddance_proto::SERVICE_NAME] {
        reporter
            .set_service_status(name, ServingStatus::NotServing)
            .await;
    }
    let health_task = tokio::spawn(mirror_health(engine.clone(), reporter));
    let reflection = transport::reflection()
        .build_v1()
        .context("building the reflection service")?;
    let reflection_v1alpha = transport::reflection()
        .build_v1alpha()
        .context("building the v1alpha reflection service")?;

    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(listen::tls_acceptor(cert, key)?),
        _ => None,
    };
    let addr = listener.local_addr()?;
    tracing::info!(
        %addr,
        tls = args.tls_cert.is_some(),
        auth = auth.enabled(),
        "serving rewarddance.v1.RewardService"
    );

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let drain_engine = engine.clone();
    let drain_started = tokio::spawn(async move {
        shutdown.await;
        tracing::info!("shutdown requested: draining");
        drain_engine.close();
        let _ = stop_tx.send(());
    });
    let routes = Routes::new(health_service)
        .add_service(reflection)
        .add_service(reflection_v1alpha)
        .add_service(reward)
        .prepare();
    let service = transport::GrpcOnly(routes);
    // Its own task: the server must keep being polled through the drain, so the listener
    // closes and every connection gets its GOAWAY the moment the stop signal arrives.
    let mut server = tokio::spawn(listen::serve(
        listener,
        tls,
        service,
        args.http2_settings(),
        async {
            let _ = stop_rx.await;
        },
    ));

    // Serve until the shutdown signal, then bound the drain.
    tokio::select! {
        _ = &mut server => {
            drain_started.abort();
            health_task.abort();
            tracing::info!(unanswered = engine.in_flight(), "server stopped");
            return Ok(());
        }
        _ = wait_draining(&engine) => {}
    }
    let drain = async {
        engine.drained().await;
        tracing::info!("every accepted item answered");
        // In-flight handlers now write their answers; long-lived streams that outlive this
        // (health watches, idle streams) do not hold the process.
        let _ = tokio::time::timeout(FLUSH_GRACE, &mut server).await;
    };
    if tokio::time::timeout(args.drain_timeout(), drain)
        .await
        .is_err()
    {
        tracing::warn!(
            unanswered = engine.in_flight(),
            "drain timeout reached; exiting with items unanswered"
        );
    }
    server.abort();
    drain_started.abort();
    health_task.abort();
    tracing::info!(unanswered = engine.in_flight(), "server stopped");
    Ok(())
}

async fn wait_draining(engine: &Engine) {
    let mut health = engine.health();
    while *health.borrow_and_update() != Health::Draining {
        if health.changed().await.is_err() {
            return;
        }
    }
}

/// Mirrors the engine's health into `grpc.health.v1` for the overall server ("") and for
/// `rewarddance.v1.RewardService`.
async fn mirror_health(engine: Engine, reporter: tonic_health::server::HealthReporter) {
    let mut health = engine.health();
    loop {
        let current = health.borrow_and_update().clone();
        let status = if current.is_serving() {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        for name in ["", rewarddance_proto::SERVICE_NAME] {
            reporter.set_service_status(name, status).await;
        }
        if health.changed().await.is_err() {
            return;
        }
    }
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("Ctrl-C received"),
        _ = term => tracing::info!("SIGTERM received"),
    }
}
