//! Prometheus metric names (one place, so deploy manifests, dashboards and tests can read them)
//! and the helpers that record them through the [`metrics`] facade. Installing a recorder and
//! serving `/metrics` is the server's job; without a recorder every call here is a no-op.
//!
//! All names share the [`PREFIX`]; durations are in seconds (Prometheus convention).

use ::metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};

use crate::job::Timing;

/// Common prefix of every metric name.
pub const PREFIX: &str = "rewarddance_";

/// Counter: RPCs handled, labels `method` and `code` (gRPC code name, e.g. `OK`).
pub const REQUESTS_TOTAL: &str = "rewarddance_requests_total";
/// Histogram: RPC duration in seconds, label `method`.
pub const REQUEST_DURATION_SECONDS: &str = "rewarddance_request_duration_seconds";
/// Counter: items scored successfully (`rate()` of it is items per second).
pub const ITEMS_SCORED_TOTAL: &str = "rewarddance_items_scored_total";
/// Counter: items that failed, label `reason` (`invalid_image`, `deadline_exceeded`, ...).
pub const ITEM_FAILURES_TOTAL: &str = "rewarddance_item_failures_total";
/// Gauge: prepared items waiting for a batch.
pub const QUEUE_DEPTH: &str = "rewarddance_queue_depth";
/// Gauge: admitted items not yet answered (preprocessing, queued or computing).
pub const ITEMS_IN_FLIGHT: &str = "rewarddance_items_in_flight";
/// Histogram: items per batch.
pub const BATCH_SIZE: &str = "rewarddance_batch_size";
/// Histogram: tokens per batch.
pub const BATCH_TOKENS: &str = "rewarddance_batch_tokens";
/// Histogram: time from admission to a batch slot, excluding preprocessing (seconds).
pub const QUEUE_DURATION_SECONDS: &str = "rewarddance_queue_duration_seconds";
/// Histogram: decode + tile + tokenise time per item (seconds).
pub const PREPROCESS_DURATION_SECONDS: &str = "rewarddance_preprocess_duration_seconds";
/// Histogram: forward-pass time per batch (seconds), label `device`.
pub const INFERENCE_DURATION_SECONDS: &str = "rewarddance_inference_duration_seconds";
/// Counter: submissions refused because the queue was full (items).
pub const REJECTED_ITEMS_TOTAL: &str = "rewarddance_rejected_items_total";
/// Counter: batches that failed on a device (error or panic), label `device`.
pub const WORKER_FAILURES_TOTAL: &str = "rewarddance_worker_failures_total";
/// Counter: device worker restarts after a panic, label `device`.
pub const WORKER_RESTARTS_TOTAL: &str = "rewarddance_worker_restarts_total";
/// Gauge: 1 while a device worker is healthy, 0 after repeated failures, label `device`.
pub const WORKER_HEALTHY: &str = "rewarddance_worker_healthy";
/// Gauge: 1 while the service reports SERVING on gRPC health.
pub const SERVING: &str = "rewarddance_serving";

/// Counter: images whose vision features were reused (cache or same batch), label `device`.
pub const FEATURE_CACHE_HITS_TOTAL: &str = "rewarddance_feature_cache_hits_total";
/// Counter: images that had to be encoded, label `device`.
pub const FEATURE_CACHE_MISSES_TOTAL: &str = "rewarddance_feature_cache_misses_total";
/// Counter: feature-cache entries evicted to stay under the byte budget, label `device`.
pub const FEATURE_CACHE_EVICTIONS_TOTAL: &str = "rewarddance_feature_cache_evictions_total";
/// Gauge: bytes held by the feature cache, label `device`.
pub const FEATURE_CACHE_BYTES: &str = "rewarddance_feature_cache_bytes";
/// Counter: language-model tokens not computed thanks to shared prefixes, label `device`.
pub const PREFIX_TOKENS_SAVED_TOTAL: &str = "rewarddance_prefix_tokens_saved_total";

/// Every metric name above, for checks that manifests and dashboards reference real metrics.
pub const ALL: &[&str] = &[
    REQUESTS_TOTAL,
    REQUEST_DURATION_SECONDS,
    ITEMS_SCORED_TOTAL,
    ITEM_FAILURES_TOTAL,
    QUEUE_DEPTH,
    ITEMS_IN_FLIGHT,
    BATCH_SIZE,
    BATCH_TOKENS,
    QUEUE_DURATION_SECONDS,
    PREPROCESS_DURATION_SECONDS,
    INFERENCE_DURATION_SECONDS,
    REJECTED_ITEMS_TOTAL,
    FEATURE_CACHE_HITS_TOTAL,
    FEATURE_CACHE_MISSES_TOTAL,
    FEATURE_CACHE_EVICTIONS_TOTAL,
    FEATURE_CACHE_BYTES,
    PREFIX_TOKENS_SAVED_TOTAL,
    WORKER_FAILURES_TOTAL,
    WORKER_RESTARTS_TOTAL,
    WORKER_HEALTHY,
    SERVING,
];

/// Histogram buckets for durations in seconds (1 ms to 2 min).
pub const DURATION_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0,
];
/// Histogram buckets for items per batch.
pub const BATCH_SIZE_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];
/// Histogram buckets for tokens per batch.
pub const BATCH_TOKENS_BUCKETS: &[f64] = &[
    256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0, 32768.0, 65536.0, 131072.0,
];

/// Registers help texts with the installed recorder (call once, after installing it).
pub fn describe() {
    describe_counter!(REQUESTS_TOTAL, "RPCs handled, by method and gRPC code.");
    describe_histogram!(
        REQUEST_DURATION_SECONDS,
        ::metrics::Unit::Seconds,
        "RPC duration."
    );
    describe_counter!(ITEMS_SCORED_TOTAL, "Items scored successfully.");
    describe_counter!(ITEM_FAILURES_TOTAL, "Items not scored, by reason.");
    describe_gauge!(QUEUE_DEPTH, "Prepared items waiting for a batch.");
    describe_gauge!(ITEMS_IN_FLIGHT, "Admitted items not yet answered.");
    describe_histogram!(BATCH_SIZE, "Items per device batch.");
    describe_histogram!(BATCH_TOKENS, "Tokens per device batch.");
    describe_histogram!(
        QUEUE_DURATION_SECONDS,
        ::metrics::Unit::Seconds,
        "Time from admission to a batch slot, excluding preprocessing."
    );
    describe_histogram!(
        PREPROCESS_DURATION_SECONDS,
        ::metrics::Unit::Seconds,
        "Decode, tile and tokenise time per item."
    );
    describe_histogram!(
        INFERENCE_DURATION_SECONDS,
        ::metrics::Unit::Seconds,
        "Forward-pass time per batch."
    );
    describe_counter!(
        REJECTED_ITEMS_TOTAL,
        "Items refused because the queue was full."
    );
    describe_counter!(WORKER_FAILURES_TOTAL, "Device batches that failed.");
    describe_counter!(
        WORKER_RESTARTS_TOTAL,
        "Device worker restarts after a panic."
    );
    describe_gauge!(WORKER_HEALTHY, "1 while the device worker is healthy.");
    describe_gauge!(SERVING, "1 while gRPC health reports SERVING.");
    describe_counter!(
        FEATURE_CACHE_HITS_TOTAL,
        "Images whose vision features were reused (cache or same batch)."
    );
    describe_counter!(
        FEATURE_CACHE_MISSES_TOTAL,
        "Images encoded by the vision tower."
    );
    describe_counter!(
        FEATURE_CACHE_EVICTIONS_TOTAL,
        "Feature-cache entries evicted to stay under the byte budget."
    );
    describe_gauge!(
        FEATURE_CACHE_BYTES,
        "Bytes held by the vision-feature cache."
    );
    describe_counter!(
        PREFIX_TOKENS_SAVED_TOTAL,
        "Language-model tokens not computed thanks to shared prefixes."
    );
}

pub(crate) fn record_item_ok(timing: &Timing) {
    counter!(ITEMS_SCORED_TOTAL).increment(1);
    histogram!(QUEUE_DURATION_SECONDS).record(timing.queue.as_secs_f64());
}

pub(crate) fn record_item_failure(reason: &'static str) {
    counter!(ITEM_FAILURES_TOTAL, "reason" => reason).increment(1);
}

pub(crate) fn record_preprocess(seconds: f64) {
    histogram!(PREPROCESS_DURATION_SECONDS).record(seconds);
}

pub(crate) fn record_batch(device: &str, items: usize, tokens: usize, seconds: f64) {
    histogram!(BATCH_SIZE).record(items as f64);
    histogram!(BATCH_TOKENS).record(tokens as f64);
    histogram!(INFERENCE_DURATION_SECONDS, "device" => device.to_string()).record(seconds);
}

/// Publishes the model's cumulative reuse counters for `device` (absolute values).
pub(crate) fn record_reuse(
    device: &str,
    cache: &rewarddance_model::CacheStats,
    prefix_tokens_saved: u64,
) {
    let d = device.to_string();
    counter!(FEATURE_CACHE_HITS_TOTAL, "device" => d.clone()).absolute(cache.hits);
    counter!(FEATURE_CACHE_MISSES_TOTAL, "device" => d.clone()).absolute(cache.misses);
    counter!(FEATURE_CACHE_EVICTIONS_TOTAL, "device" => d.clone()).absolute(cache.evictions);
    gauge!(FEATURE_CACHE_BYTES, "device" => d.clone()).set(cache.bytes as f64);
    counter!(PREFIX_TOKENS_SAVED_TOTAL, "device" => d).absolute(prefix_tokens_saved);
}

pub(crate) fn set_queue_depth(depth: usize) {
    gauge!(QUEUE_DEPTH).set(depth as f64);
}

pub(crate) fn set_in_flight(items: usize) {
    gauge!(ITEMS_IN_FLIGHT).set(items as f64);
}

pub(crate) fn record_rejected(items: usize) {
    counter!(REJECTED_ITEMS_TOTAL).increment(items as u64);
}

pub(crate) fn record_worker_failure(device: &str, panicked: bool) {
    counter!(WORKER_FAILURES_TOTAL, "device" => device.to_string()).increment(1);
    if panicked {
        counter!(WORKER_RESTARTS_TOTAL, "device" => device.to_string()).increment(1);
    }
}

pub(crate) fn set_worker_healthy(device: &str, healthy: bool) {
    gauge!(WORKER_HEALTHY, "device" => device.to_string()).set(if healthy { 1.0 } else { 0.0 });
}

/// Sets [`SERVING`].
pub fn set_serving(serving: bool) {
    gauge!(SERVING).set(if serving { 1.0 } else { 0.0 });
}
