//! `serve` settings: the one source of configuration for the service (flags, each with a
//! `REWARDDANCE_*` environment variable; the CLI may also fill them from a config file).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use rewarddance_engine::EngineConfig;
use rewarddance_model::RationaleOptions;

/// Default gRPC listen address.
pub const DEFAULT_ADDR: &str = "0.0.0.0:50051";
/// Default Prometheus `/metrics` listen address.
pub const DEFAULT_METRICS_ADDR: &str = "0.0.0.0:9090";

/// Default text byte limit per token of context. Real prompts average 3-5 bytes per token with
/// the Qwen2 and InternLM2 tokenizers, so 16 leaves wide room while a caller can no longer hold
/// a preprocessing thread for seconds with megabytes of text.
pub const TEXT_BYTES_PER_TOKEN: usize = 16;
/// Smallest default text byte limit (for models with short contexts).
pub const MIN_DEFAULT_TEXT_BYTES: usize = 64 << 10;

/// Default SETTINGS_MAX_CONCURRENT_STREAMS. hyper's own default (200) would make a trainer with
/// a 256-wide thread pool queue calls in its client; 1024 is above the fan-out of one trainer
/// process and a quarter of the default queue (a call holds at least one item while it is
/// scored), while still bounding the handler tasks, each holding a decoded request, that one
/// connection can start (tonic's default is no limit).
pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 1024;
/// Default limit on cancelled streams waiting to be picked up, per connection. h2's default (20)
/// is reached by 16 threads cancelling 1 ms-deadline calls on one channel of a busy server
/// (about 100-200 wait at once when the server stops reading for 20 ms); a rapid-reset flood of
/// HEADERS+RST_STREAM pairs queues thousands within one read of the socket.
pub const DEFAULT_HTTP2_MAX_PENDING_RESETS: usize = 1024;
/// Default lifetime limit on protocol-error resets per connection (hyper's default, which tonic
/// turns off unless it is set).
pub const DEFAULT_HTTP2_MAX_ERROR_RESETS: usize = 1024;

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Human,
    /// One JSON object per line.
    Json,
}

/// Everything `rewarddance serve` configures besides the model.
#[derive(Args, Debug, Clone)]
pub struct ServerArgs {
    /// gRPC listen address (`127.0.0.1:0` picks a free port; the bound address is logged).
    #[arg(long, env = "REWARDDANCE_ADDR", default_value = DEFAULT_ADDR)]
    pub addr: SocketAddr,
    /// Prometheus `/metrics` listen address.
    #[arg(long, env = "REWARDDANCE_METRICS_ADDR", default_value = DEFAULT_METRICS_ADDR)]
    pub metrics_addr: SocketAddr,
    /// Do not serve `/metrics`.
    #[arg(long, env = "REWARDDANCE_NO_METRICS")]
    pub no_metrics: bool,
    /// Token budget of one device batch.
    #[arg(long, env = "REWARDDANCE_MAX_BATCH_TOKENS", default_value_t = EngineConfig::DEFAULT_MAX_BATCH_TOKENS)]
    pub max_batch_tokens: usize,
    /// Most items in one device batch.
    #[arg(long, env = "REWARDDANCE_MAX_BATCH_ITEMS", default_value_t = EngineConfig::DEFAULT_MAX_BATCH_ITEMS)]
    pub max_batch_items: usize,
    /// Longest wait, in milliseconds, for a batch to fill under light load (0: never wait).
    #[arg(long, env = "REWARDDANCE_MAX_BATCH_DELAY_MS", default_value_t = EngineConfig::DEFAULT_MAX_BATCH_DELAY_MS)]
    pub max_batch_delay_ms: u64,
    /// Most items held at once (queued, preprocessing or computing); past it, calls get
    /// RESOURCE_EXHAUSTED at once.
    #[arg(long, env = "REWARDDANCE_MAX_QUEUE_ITEMS", default_value_t = EngineConfig::DEFAULT_MAX_QUEUE_ITEMS)]
    pub max_queue_items: usize,
    /// Threads decoding and tiling images (default: one per CPU core).
    #[arg(long, env = "REWARDDANCE_PREPROCESS_THREADS")]
    pub preprocess_threads: Option<usize>,
    /// Most items in one ScoreRequest.
    #[arg(
        long,
        env = "REWARDDANCE_MAX_ITEMS_PER_REQUEST",
        default_value_t = 1024
    )]
    pub max_items_per_request: usize,
    /// Most candidates in one Rank request (refused above it, before any image is looked at).
    #[arg(long, env = "REWARDDANCE_MAX_RANK_CANDIDATES", default_value_t = 256)]
    pub max_rank_candidates: usize,
    /// Most bytes of an item's `prompt` and of its `instruction`, each, checked before
    /// tokenising (default: 16 bytes per token of the model's context, at least 64 KiB).
    #[arg(long, env = "REWARDDANCE_MAX_TEXT_BYTES")]
    pub max_text_bytes: Option<usize>,
    /// Largest request message in bytes.
    #[arg(long, env = "REWARDDANCE_MAX_MESSAGE_BYTES", default_value_t = 64 << 20)]
    pub max_message_bytes: usize,
    /// Largest ScoreGrad request or response message in bytes (float images and their
    /// gradients: a 1024x1024 RGB f32 image is 12.6 MB each way).
    #[arg(long, env = "REWARDDANCE_MAX_GRAD_MESSAGE_BYTES", default_value_t = 256 << 20)]
    pub max_grad_message_bytes: usize,
    /// Most image tiles in one gradient batch (ScoreGrad items run in batches of their own,
    /// taking turns with score batches); a ScoreGrad item with more tiles is refused.
    #[arg(long, env = "REWARDDANCE_MAX_GRADIENT_TILES", default_value_t = EngineConfig::DEFAULT_MAX_GRADIENT_TILES)]
    pub max_gradient_tiles: usize,
    /// Unanswered items one ScoreStream may have before the server stops reading it.
    #[arg(long, env = "REWARDDANCE_MAX_STREAM_IN_FLIGHT", default_value_t = 256)]
    pub max_stream_in_flight: usize,
    /// Most rationale tokens one item may ask for (`RationaleOptions.max_tokens`).
    #[arg(long, env = "REWARDDANCE_MAX_RATIONALE_TOKENS", default_value_t = 1024)]
    pub max_rationale_tokens: u32,
    /// Rationale tokens for items that leave `max_tokens` at 0.
    #[arg(
        long,
        env = "REWARDDANCE_DEFAULT_RATIONALE_TOKENS",
        default_value_t = RationaleOptions::DEFAULT_MAX_TOKENS as u32
    )]
    pub default_rationale_tokens: u32,
    /// Rationales one device decodes at once; at the limit the device takes no new batch
    /// until one finishes (bounds key/value-cache memory).
    #[arg(long, env = "REWARDDANCE_MAX_DECODING_SEQUENCES", default_value_t = EngineConfig::DEFAULT_MAX_DECODING_SEQUENCES)]
    pub max_decoding_sequences: usize,
    /// Consecutive failed batches after which a device reports NOT_SERVING.
    #[arg(long, env = "REWARDDANCE_MAX_WORKER_FAILURES", default_value_t = EngineConfig::DEFAULT_MAX_CONSECUTIVE_FAILURES)]
    pub max_worker_failures: u32,
    /// Seconds to finish accepted items after SIGTERM / Ctrl-C before exiting anyway.
    #[arg(long, env = "REWARDDANCE_DRAIN_TIMEOUT_S", default_value_t = 30)]
    pub drain_timeout_s: u64,
    /// Require `authorization: Bearer <TOKEN>` on RewardService calls.
    #[arg(long, env = "REWARDDANCE_AUTH_TOKEN", hide_env_values = true)]
    pub auth_token: Option<String>,
    /// Read the bearer token from this file (trailing whitespace trimmed).
    #[arg(
        long,
        env = "REWARDDANCE_AUTH_TOKEN_FILE",
        conflicts_with = "auth_token"
    )]
    pub auth_token_file: Option<PathBuf>,
    /// PEM certificate chain: serve TLS (needs --tls-key).
    #[arg(long, env = "REWARDDANCE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, env = "REWARDDANCE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Most calls (HTTP/2 streams) open at once on one connection, advertised to clients in
    /// SETTINGS_MAX_CONCURRENT_STREAMS; clients queue calls above it instead of failing them.
    #[arg(
        long,
        env = "REWARDDANCE_MAX_CONCURRENT_STREAMS",
        default_value_t = DEFAULT_MAX_CONCURRENT_STREAMS
    )]
    pub max_concurrent_streams: u32,
    /// Calls one connection may have cancelled before the server picked them up; past it the
    /// connection is closed with GOAWAY ENHANCE_YOUR_CALM (the HTTP/2 rapid-reset defence).
    #[arg(
        long,
        env = "REWARDDANCE_HTTP2_MAX_PENDING_RESETS",
        default_value_t = DEFAULT_HTTP2_MAX_PENDING_RESETS
    )]
    pub http2_max_pending_resets: usize,
    /// Streams one connection may make the server reset for protocol errors, over its lifetime,
    /// before GOAWAY ENHANCE_YOUR_CALM (a well-behaved client makes none).
    #[arg(
        long,
        env = "REWARDDANCE_HTTP2_MAX_ERROR_RESETS",
        default_value_t = DEFAULT_HTTP2_MAX_ERROR_RESETS
    )]
    pub http2_max_error_resets: usize,
    /// Seconds between HTTP/2 PINGs on a quiet connection, idle or not (0: none); a peer that
    /// does not answer within --http2-keepalive-timeout-s is disconnected.
    #[arg(long, env = "REWARDDANCE_HTTP2_KEEPALIVE_S", default_value_t = 60)]
    pub http2_keepalive_s: u64,
    /// Seconds to wait for a keepalive PING's acknowledgement before closing the connection.
    #[arg(
        long,
        env = "REWARDDANCE_HTTP2_KEEPALIVE_TIMEOUT_S",
        default_value_t = 20
    )]
    pub http2_keepalive_timeout_s: u64,
    /// Seconds of TCP silence before the kernel probes the peer (SO_KEEPALIVE; 0: off).
    #[arg(long, env = "REWARDDANCE_TCP_KEEPALIVE_S", default_value_t = 60)]
    pub tcp_keepalive_s: u64,
    /// Fixed HTTP/2 flow-control window, in bytes, per stream and per connection (default:
    /// adaptive, grown from the measured bandwidth-delay product).
    #[arg(long, env = "REWARDDANCE_HTTP2_WINDOW_BYTES")]
    pub http2_window_bytes: Option<u32>,
    /// Log format.
    #[arg(long, env = "REWARDDANCE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
    /// Log filter (`tracing` env-filter syntax, e.g. `info,rewarddance_engine=debug`).
    #[arg(long, env = "REWARDDANCE_LOG", default_value = "info")]
    pub log: String,
}

impl ServerArgs {
    /// The engine part of the settings.
    pub fn engine_config(&self) -> EngineConfig {
        let defaults = EngineConfig::default();
        EngineConfig {
            max_batch_tokens: self.max_batch_tokens,
            max_batch_items: self.max_batch_items,
            max_batch_delay: Duration::from_millis(self.max_batch_delay_ms),
            max_queue_items: self.max_queue_items,
            preprocess_threads: self
                .preprocess_threads
                .unwrap_or(defaults.preprocess_threads),
            max_consecutive_failures: self.max_worker_failures,
            max_decoding_sequences: self.max_decoding_sequences,
            max_gradient_tiles: self.max_gradient_tiles,
        }
    }

    /// The bearer token, from the flag or the file. An empty or all-whitespace token is refused
    /// (it would turn auth on and accept `authorization: Bearer ` with nothing after it), and so
    /// is one with inner whitespace or control characters (no client could send it).
    pub fn token(&self) -> anyhow::Result<Option<String>> {
        let (token, from) = match (&self.auth_token, &self.auth_token_file) {
            (Some(t), _) => (t.clone(), "--auth-token".to_string()),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    anyhow::anyhow!("reading auth token file {}: {e}", path.display())
                })?;
                (
                    text.trim_end().to_string(),
                    format!("auth token file {}", path.display()),
                )
            }
            (None, None) => return Ok(None),
        };
        if token.trim().is_empty() {
            anyhow::bail!("{from} is empty: refusing to start with an empty bearer token");
        }
        if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
            anyhow::bail!("{from} contains whitespace or control characters");
        }
        Ok(Some(token))
    }

    /// The text byte limit for a model that takes `max_tokens` tokens per item.
    pub fn max_text_bytes(&self, max_tokens: usize) -> usize {
        self.max_text_bytes.unwrap_or_else(|| {
            (max_tokens.saturating_mul(TEXT_BYTES_PER_TOKEN)).max(MIN_DEFAULT_TEXT_BYTES)
        })
    }

    /// The HTTP/2 and TCP settings of every connection.
    pub fn http2_settings(&self) -> crate::listen::Http2Settings {
        let seconds = |s: u64| (s > 0).then(|| Duration::from_secs(s));
        crate::listen::Http2Settings {
            max_concurrent_streams: self.max_concurrent_streams,
            max_pending_accept_reset_streams: self.http2_max_pending_resets,
            max_local_error_reset_streams: self.http2_max_error_resets,
            keepalive_interval: seconds(self.http2_keepalive_s),
            keepalive_timeout: Duration::from_secs(self.http2_keepalive_timeout_s.max(1)),
            window_bytes: self.http2_window_bytes,
            tcp_keepalive: seconds(self.tcp_keepalive_s),
        }
    }

    /// Drain timeout as a duration.
    pub fn drain_timeout(&self) -> Duration {
        Duration::from_secs(self.drain_timeout_s)
    }
}

impl Default for ServerArgs {
    /// The flag defaults, for embedding and tests.
    fn default() -> Self {
        #[derive(clap::Parser)]
        struct Wrapper {
            #[command(flatten)]
            args: ServerArgs,
        }
        <Wrapper as clap::Parser>::parse_from(["serve"]).args
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token_from_file(text: &str) -> anyhow::Result<Option<String>> {
        let path =
            std::env::temp_dir().join(format!("rd-token-{}-{}", std::process::id(), text.len()));
        std::fs::write(&path, text)?;
        let args = ServerArgs {
            auth_token_file: Some(path.clone()),
            ..ServerArgs::default()
        };
        let token = args.token();
        let _ = std::fs::remove_file(path);
        token
    }

    #[test]
    fn empty_or_blank_tokens_refuse_to_start() {
        for text in ["", "\n", "   \t\n"] {
            let err = token_from_file(text).unwrap_err().to_string();
            assert!(err.contains("empty"), "{text:?}: {err}");
        }
        let err = ServerArgs {
            auth_token: Some(" ".into()),
            ..ServerArgs::default()
        }
        .token()
        .unwrap_err()
        .to_string();
        assert!(err.contains("empty"), "{err}");
        assert!(token_from_file("two words\n").is_err());
        assert_eq!(
            token_from_file("s3cret\n").unwrap().as_deref(),
            Some("s3cret")
        );
    }

    #[test]
    fn the_flags_default_to_the_engine_and_model_defaults() {
        // One source for each default: the flags read the engine's and the model's constants,
        // so a server started without flags runs what the engine's own default describes.
        let flags = ServerArgs::default();
        let (from_flags, engine) = (flags.engine_config(), EngineConfig::default());
        assert_eq!(from_flags.max_batch_tokens, engine.max_batch_tokens);
        assert_eq!(from_flags.max_batch_items, engine.max_batch_items);
        assert_eq!(from_flags.max_batch_delay, engine.max_batch_delay);
        assert_eq!(from_flags.max_queue_items, engine.max_queue_items);
        assert_eq!(from_flags.preprocess_threads, engine.preprocess_threads);
        assert_eq!(
            from_flags.max_consecutive_failures,
            engine.max_consecutive_failures
        );
        assert_eq!(
            from_flags.max_decoding_sequences,
            engine.max_decoding_sequences
        );
        assert_eq!(from_flags.max_gradient_tiles, engine.max_gradient_tiles);
        assert_eq!(
            flags.default_rationale_tokens as usize,
            RationaleOptions::default().max_tokens
        );
    }
}
