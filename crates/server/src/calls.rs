//! One record per RPC: the request counter and duration histogram, and one INFO log line with
//! the call's method, peer, items, status code, duration and request id as fields.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use rewarddance_engine::metrics as names;
use tonic::Code;

use crate::status;

/// Header a caller may set to name its request in the server's logs (echoed in the log line;
/// generated when absent).
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Longest caller-supplied request id kept (longer ones are cut, never trusted for size).
const MAX_REQUEST_ID: usize = 128;

/// An RPC being handled.
#[derive(Debug)]
pub struct Call {
    method: &'static str,
    peer: Option<SocketAddr>,
    request_id: String,
    items: usize,
    started: Instant,
    finished: bool,
}

impl Call {
    /// Starts the record of a call to `method` from `request`'s metadata.
    pub fn start<T>(method: &'static str, request: &tonic::Request<T>) -> Self {
        let request_id = request
            .metadata()
            .get(REQUEST_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
            .map(|v| v.chars().take(MAX_REQUEST_ID).collect())
            .unwrap_or_else(generated_id);
        Call {
            method,
            peer: request.remote_addr(),
            request_id,
            items: 0,
            started: Instant::now(),
            finished: false,
        }
    }

    /// Sets the number of items (or candidates) the call carries.
    pub fn items(&mut self, items: usize) {
        self.items = items;
    }

    /// Adds to the number of items (streams count as they read).
    pub fn add_items(&mut self, items: usize) {
        self.items += items;
    }

    /// Counts the call and logs its line.
    pub fn finish(mut self, code: Code) {
        self.record(code);
    }

    fn record(&mut self, code: Code) {
        self.finished = true;
        let code_name = status::code_name(code);
        metrics::counter!(names::REQUESTS_TOTAL, "method" => self.method, "code" => code_name)
            .increment(1);
        let seconds = self.started.elapsed().as_secs_f64();
        metrics::histogram!(names::REQUEST_DURATION_SECONDS, "method" => self.method)
            .record(seconds);
        let peer = self.peer.map(|p| p.to_string()).unwrap_or_default();
        tracing::info!(
            method = self.method,
            peer = %peer,
            items = self.items,
            code = code_name,
            duration_ms = (seconds * 1e4).round() / 10.0,
            request_id = %self.request_id,
            "call"
        );
    }

    /// Finishes with the code of `result`.
    pub fn finish_with<T>(self, result: &Result<T, tonic::Status>) {
        self.finish(result.as_ref().map_or_else(|s| s.code(), |_| Code::Ok));
    }
}

/// A call dropped unfinished was cancelled by its client (the transport dropped the handler):
/// it is counted and logged as CANCELLED.
impl Drop for Call {
    fn drop(&mut self) {
        if !self.finished {
            self.record(Code::Cancelled);
        }
    }
}

/// `rd-<process>-<n>`: unique within the process's life, and across restarts in practice.
fn generated_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "rd-{:x}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}
