//! Why one item (a row, an image, a rank candidate) could not be scored: a stable
//! machine-readable `reason` and a message for people, as in the server's `ItemError`.

use std::path::Path;

/// One item's failure, printed as `"error": message, "reason": reason`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemFailure {
    /// Stable label: the server's reasons (`invalid_image`, `too_many_tiles`, ...) plus the
    /// CLI's own `unreadable_file` and `bad_row`.
    pub reason: String,
    /// Human-readable explanation.
    pub message: String,
}

impl ItemFailure {
    /// A failure with this reason and message.
    pub fn new(reason: impl Into<String>, message: impl Into<String>) -> Self {
        ItemFailure {
            reason: reason.into(),
            message: message.into(),
        }
    }

    /// A file named by the item could not be read (missing, a directory, no permission).
    pub fn unreadable(path: &Path, err: &std::io::Error) -> Self {
        Self::new(
            "unreadable_file",
            format!("reading {}: {err}", path.display()),
        )
    }

    /// The item is well-formed JSON but not a valid item (`invalid_input`, as the server says).
    pub fn invalid_input(message: impl Into<String>) -> Self {
        Self::new("invalid_input", message)
    }

    /// A manifest line that is not a JSON object of the expected shape.
    pub fn bad_row(message: impl std::fmt::Display) -> Self {
        Self::new("bad_row", format!("bad manifest line: {message}"))
    }

    /// A model error, with the reason the server would report for it.
    pub fn from_model(err: &rewarddance_model::Error) -> Self {
        let e = rewarddance_engine::ItemError::from_model(err);
        Self::new(e.reason, e.message)
    }
}
