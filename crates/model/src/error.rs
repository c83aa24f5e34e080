//! The model crate's one error type.
//!
//! Variants are split by *who* must act: the caller (bad item: `InvalidInput`, `ImageTooLarge`,
//! `TooManyTokens`), the operator (`Checkpoint`, `Tokenizer`, `Template`), or nobody in
//! particular (`Compute`, a bug or device failure). The server maps each variant to one gRPC
//! status in a single place; see [`Error::is_caller_error`].

/// Errors produced while loading a checkpoint or scoring an item.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The item itself is malformed (unknown mode, missing reference, empty prompt, bad frame list...).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The image bytes could not be decoded (corrupt, truncated, unsupported format, zero-size).
    #[error("invalid image: {0}")]
    InvalidImage(String),
    /// The image is larger than the configured pixel limit (decompression-bomb guard).
    #[error(
        "image too large: {width}x{height} = {pixels} pixels exceeds the limit of {limit} pixels"
    )]
    ImageTooLarge {
        /// Declared width in pixels.
        width: u64,
        /// Declared height in pixels.
        height: u64,
        /// width * height.
        pixels: u64,
        /// The configured maximum.
        limit: u64,
    },
    /// The item needs more image tiles than the configured maximum.
    #[error("too many image tiles: {tiles} exceeds the limit of {limit}")]
    TooManyTiles {
        /// Tiles the item would need.
        tiles: usize,
        /// The configured maximum.
        limit: usize,
    },
    /// The rendered prompt is longer than the model's context (or the configured maximum).
    #[error("input too long: {tokens} tokens exceeds the limit of {limit}")]
    TooManyTokens {
        /// Tokens the item would need.
        tokens: usize,
        /// The limit.
        limit: usize,
    },
    /// The checkpoint is missing, malformed, or does not match its config (names the file/tensor).
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// The tokenizer could not be loaded or does not contain a required token.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The chat template could not be parsed or rendered.
    #[error("chat template: {0}")]
    Template(String),
    /// A tensor operation failed (device error, out of memory, or a bug).
    #[error("compute: {}", candle_message(.0))]
    Compute(#[from] candle_core::Error),
}

impl Error {
    /// The same error again (a tensor error by its message), for one failure that answers
    /// several items.
    pub fn duplicate(&self) -> Self {
        match self {
            Error::InvalidInput(m) => Error::InvalidInput(m.clone()),
            Error::InvalidImage(m) => Error::InvalidImage(m.clone()),
            Error::ImageTooLarge {
                width,
                height,
                pixels,
                limit,
            } => Error::ImageTooLarge {
                width: *width,
                height: *height,
                pixels: *pixels,
                limit: *limit,
            },
            Error::TooManyTiles { tiles, limit } => Error::TooManyTiles {
                tiles: *tiles,
                limit: *limit,
            },
            Error::TooManyTokens { tokens, limit } => Error::TooManyTokens {
                tokens: *tokens,
                limit: *limit,
            },
            Error::Checkpoint(m) => Error::Checkpoint(m.clone()),
            Error::Tokenizer(m) => Error::Tokenizer(m.clone()),
            Error::Template(m) => Error::Template(m.clone()),
            Error::Compute(e) => Error::Compute(candle_core::Error::Msg(candle_message(e))),
        }
    }

    /// True when the caller sent something this model cannot score (maps to `INVALID_ARGUMENT`);
    /// false for server-side failures.
    pub fn is_caller_error(&self) -> bool {
        matches!(
            self,
            Error::InvalidInput(_)
                | Error::InvalidImage(_)
                | Error::ImageTooLarge { .. }
                | Error::TooManyTiles { .. }
                | Error::TooManyTokens { .. }
        )
    }
}

/// A candle error's message without the backtrace candle attaches when `RUST_BACKTRACE` is set
/// (those belong in logs, not in messages sent to callers).
pub fn candle_message(err: &candle_core::Error) -> String {
    match err {
        candle_core::Error::WithBacktrace { inner, .. } => candle_message(inner),
        candle_core::Error::Context { inner, context } => {
            format!("{context}: {}", candle_message(inner))
        }
        candle_core::Error::WithPath { inner, path } => {
            format!("{}: {}", path.display(), candle_message(inner))
        }
        other => other.to_string(),
    }
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, Error>;
