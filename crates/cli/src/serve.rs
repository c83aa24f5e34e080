//! `rewarddance serve`: load the model on each device, start the engine and the gRPC server,
//! serve until SIGTERM / Ctrl-C, then drain.
//!
//! Configuration precedence: flags > `REWARDDANCE_*` environment > `--config` file > defaults.
//! The config file is TOML whose keys are the long flag names (`max-batch-tokens = 8192`,
//! `addr = "0.0.0.0:50051"`); it fills the environment variables of flags that have neither a
//! flag nor a variable set, so the clap struct stays the one source of configuration.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Args, CommandFactory, FromArgMatches, Parser};
use rewarddance_engine::{Backend, Engine};
use rewarddance_server::{telemetry, ServerArgs};

use crate::model_args::ModelArgs;

/// Arguments of `rewarddance serve`.
#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    server: ServerArgs,
    /// TOML config file; keys are long flag names. Flags and environment variables win.
    #[arg(long, env = "REWARDDANCE_CONFIG")]
    config: Option<PathBuf>,
}

/// `serve`'s arguments on their own, for re-parsing after a config file filled the environment.
#[derive(Parser)]
#[command(name = "serve")]
struct Reparse {
    #[command(flatten)]
    args: ServeArgs,
}

/// Runs the server until it has drained after a shutdown signal.
pub fn run(args: ServeArgs) -> Result<ExitCode> {
    let args = match &args.config {
        Some(path) => with_config_file(path)?,
        None => args,
    };
    telemetry::init_logging(args.server.log_format, &args.server.log);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("rd-runtime")
        .build()?;
    runtime.block_on(serve(args))?;
    Ok(ExitCode::SUCCESS)
}

async fn serve(args: ServeArgs) -> Result<()> {
    let devices: Vec<String> = args
        .model
        .device
        .split(',')
        .map(|d| d.trim().to_string())
        .filter(|d| !d.is_empty())
        .collect();
    if devices.is_empty() {
        bail!("--device names no device");
    }
    let mut backends: Vec<Arc<dyn Backend>> = Vec::with_capacity(devices.len());
    for device in &devices {
        let mut per_device = args.model.clone();
        per_device.device = device.clone();
        per_device.check_memory(
            args.server.max_batch_tokens,
            args.server.max_batch_items,
            args.server.max_gradient_tiles,
        )?;
        let model = tokio::task::spawn_blocking(move || per_device.load())
            .await
            .context("model loading task")??;
        tracing::info!(model = model.id(), %device, dtype = ?model.dtype(), "model loaded");
        backends.push(Arc::new(model));
    }
    // The recorder first: the engine publishes its start-up gauges (queue capacity) at once.
    if !args.server.no_metrics {
        let bound = telemetry::serve_metrics(args.server.metrics_addr).await?;
        tracing::info!(addr = %bound, "metrics on http://{bound}/metrics");
    }
    let config = args.server.engine_config();
    tracing::info!(?config, "engine settings");
    let engine = Engine::start(backends, config)?;
    let (listener, addr) = rewarddance_server::bind(&args.server).await?;
    tracing::info!(%addr, "listening");
    let warm = engine.clone();
    tokio::spawn(async move {
        match warm.ready().await {
            Ok(()) => tracing::info!("warm-up done: SERVING"),
            Err(why) => tracing::error!(%why, "warm-up failed: NOT_SERVING"),
        }
    });
    rewarddance_server::run(
        engine,
        &args.server,
        listener,
        rewarddance_server::shutdown_signal(),
    )
    .await
}

/// Reads the config file into the environment of unset flags and parses `serve` again.
/// Errors name the file, the line and the key (`serve.toml:3: ...`).
fn with_config_file(path: &PathBuf) -> Result<ServeArgs> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let table: std::collections::BTreeMap<String, toml::Spanned<toml::Value>> =
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let command = Reparse::command();
    let argv: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    // Long flag name -> where the file set it and to what, for errors found by clap later.
    let mut from_file: Vec<(String, String, String)> = Vec::new();
    for (key, spanned) in table {
        let line = 1 + text[..spanned.span().start.min(text.len())]
            .matches('\n')
            .count();
        let at = format!("{}:{line}", path.display());
        let Some(arg) = command
            .get_arguments()
            .find(|a| a.get_long() == Some(key.as_str()))
        else {
            let dashed = key.replace('_', "-");
            let known = command
                .get_arguments()
                .any(|a| a.get_long() == Some(&dashed));
            if known && dashed != key {
                bail!(
                    "{at}: unknown setting {key:?}; keys are long flag names, with dashes: \
                     did you mean {dashed:?}?"
                );
            }
            bail!("{at}: unknown setting {key:?} (keys are the long flag names of `serve --help`)");
        };
        let Some(env) = arg.get_env() else {
            bail!("{at}: {key:?} cannot be set from a file");
        };
        let given_as_flag = argv.iter().any(|a| {
            let a = a.to_string_lossy();
            a == format!("--{key}") || a.starts_with(&format!("--{key}="))
        });
        if given_as_flag || std::env::var_os(env).is_some() {
            continue;
        }
        let value = match spanned.into_inner() {
            toml::Value::String(s) => s,
            toml::Value::Array(items) => items
                .iter()
                .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
                .collect::<Vec<_>>()
                .join(","),
            other => other.to_string(),
        };
        // Single-threaded here: no runtime or worker threads have started yet.
        std::env::set_var(env, &value);
        from_file.push((key, at, value));
    }
    // clap reads an argument's environment variable when the command is built: build anew.
    let parsed = Reparse::command()
        .try_get_matches_from(std::env::args_os().skip(1))
        .and_then(|m| Reparse::from_arg_matches(&m));
    parsed
        .map(|r| r.args)
        .map_err(|e| config_error(&e, &from_file))
}

/// A clap error about a value the file set, as `FILE:LINE: key = "value": what is wrong`.
fn config_error(err: &clap::Error, from_file: &[(String, String, String)]) -> anyhow::Error {
    let rendered = err.render().to_string();
    let first = rendered.lines().next().unwrap_or_default();
    let what = first.strip_prefix("error: ").unwrap_or(first);
    let flag = match err.get(clap::error::ContextKind::InvalidArg) {
        Some(clap::error::ContextValue::String(s)) => s.clone(),
        _ => String::new(),
    };
    let name = flag
        .trim_start_matches("--")
        .split([' ', '='])
        .next()
        .unwrap_or_default();
    match from_file.iter().find(|(key, _, _)| key == name) {
        Some((key, at, value)) => anyhow::anyhow!("{at}: {key} = {value:?}: {what}"),
        None => anyhow::anyhow!("{what}"),
    }
}
