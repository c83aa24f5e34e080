//! What the engine reports for health checks (the server mirrors it into `grpc.health.v1`).

/// The engine's health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Workers are loading or warming up.
    Starting,
    /// Every device ran its warm-up forward and is healthy.
    Serving,
    /// A device keeps failing (the message says which and why).
    Failing(String),
    /// Shutdown was requested; no new items are taken.
    Draining,
}

impl Health {
    /// True only for [`Health::Serving`].
    pub fn is_serving(&self) -> bool {
        matches!(self, Health::Serving)
    }
}
