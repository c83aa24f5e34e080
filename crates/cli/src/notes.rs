//! Operator notes on stderr (random weights, the memory check, start-up errors) that follow
//! `--log-format`: once `serve` has installed its log subscriber they go through it (one
//! JSON object per line under `--log-format json`, fields as fields); before that, and in
//! the one-shot commands, they are plain `note:` lines.

/// Logs an informational note with the given fields (`key = value` pairs, as `tracing`
/// takes them), or prints `note: MESSAGE` when no subscriber is installed.
macro_rules! note {
    ($($field:ident = $value:expr),* ; $message:expr) => {{
        if tracing::dispatcher::has_been_set() {
            tracing::info!($($field = %$value,)* "{}", $message);
        } else {
            eprintln!("note: {}", $message);
        }
    }};
}

/// The same, at WARN.
macro_rules! warn_note {
    ($($field:ident = $value:expr),* ; $message:expr) => {{
        if tracing::dispatcher::has_been_set() {
            tracing::warn!($($field = %$value,)* "{}", $message);
        } else {
            eprintln!("warning: {}", $message);
        }
    }};
}

/// Reports the error a command ends with: through the log when one is installed (a JSON
/// line under `--log-format json`), else as `error: ...` on stderr.
pub fn fatal(err: &anyhow::Error) {
    if tracing::dispatcher::has_been_set() {
        tracing::error!(error = %format!("{err:#}"), "exiting");
    } else {
        eprintln!("error: {err:#}");
    }
}

pub(crate) use {note, warn_note};
