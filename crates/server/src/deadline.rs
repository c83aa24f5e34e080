//! The deadline contract (see the proto's service comment): a call's `grpc-timeout` covers
//! every item of it. When it passes before every item is answered, the server itself fails
//! the call with DEADLINE_EXCEEDED, a little before the deadline (so the answer reaches the
//! client in time and no transport timer speaks first); items still queued are dropped
//! before compute. There are no partial answers: a call succeeds with every item's result
//! or fails as a whole, the same way at every timeout. A rationale still decoding at the
//! deadline is cut there and counts as answered (its score is known; stop reason DEADLINE).

use std::time::{Duration, Instant};

use tonic::metadata::MetadataMap;
use tonic::Status;

/// When the call reached the server: stamped into the request's extensions by the
/// interceptor, before the body is decoded (the transport's own timer starts then too).
#[derive(Debug, Clone, Copy)]
pub struct Arrived(pub Instant);

impl Arrived {
    /// The stamp of `extensions`, or now.
    pub fn of(extensions: &tonic::Extensions) -> Instant {
        extensions
            .get::<Arrived>()
            .map_or_else(Instant::now, |a| a.0)
    }
}

/// How much earlier than the call's own deadline the engine stops work: an item still
/// decoding its rationale then is answered with its score and the text so far (stop reason
/// DEADLINE) before the handler's timer fires. Best effort: the engine checks between
/// decode steps.
const ENGINE_DEADLINE_LEAD: Duration = Duration::from_millis(20);

/// Longest margin kept between the handler's answer and the call's deadline.
const MAX_MARGIN: Duration = Duration::from_millis(100);
/// Shortest margin: below twice this, a timeout leaves no time for any work and the call is
/// answered DEADLINE_EXCEEDED at once.
const MIN_MARGIN: Duration = Duration::from_millis(5);

/// When the handler must answer: the call's `grpc-timeout` after arrival, less a margin (a
/// tenth, between 5 and 100 ms) so the answer leaves before the transport's timer and
/// reaches the client before its own.
pub fn deadline_of(metadata: &MetadataMap, arrived: Instant) -> Option<Instant> {
    let timeout = parse_grpc_timeout(metadata.get("grpc-timeout")?.to_str().ok()?)?;
    let margin = (timeout / 10).clamp(MIN_MARGIN, MAX_MARGIN).min(timeout);
    Some(arrived + timeout - margin)
}

/// Refuses a call whose deadline leaves no time for work (it would be answered
/// DEADLINE_EXCEEDED anyway, after taking queue slots).
pub fn check_budget(deadline: Option<Instant>, items: usize) -> Result<(), Status> {
    match deadline {
        // The engine stops ENGINE_DEADLINE_LEAD before the handler: less than that plus a
        // margin leaves the items no time at all.
        Some(d)
            if d.saturating_duration_since(Instant::now()) < ENGINE_DEADLINE_LEAD + MIN_MARGIN =>
        {
            Err(exceeded(items, items))
        }
        _ => Ok(()),
    }
}

/// When the engine stops work on a call's items: [`ENGINE_DEADLINE_LEAD`] before the
/// handler's deadline.
pub fn engine_deadline(deadline: Option<Instant>) -> Option<Instant> {
    deadline.map(|d| d.checked_sub(ENGINE_DEADLINE_LEAD).unwrap_or(d))
}

/// The call-level answer when `unanswered` of `total` items missed the deadline.
pub fn exceeded(unanswered: usize, total: usize) -> Status {
    Status::deadline_exceeded(format!(
        "the call's deadline passed with {unanswered} of {total} items unanswered (the \
         deadline covers every item of a call: retry with a longer timeout or fewer items)"
    ))
}

/// Parses a `grpc-timeout` header value: up to 8 digits and a unit (H M S m u n).
fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (digits, unit) = v.split_at(v.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse() {
        assert_eq!(parse_grpc_timeout("100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("5x"), None);
        assert_eq!(parse_grpc_timeout("123456789S"), None);
    }
}
