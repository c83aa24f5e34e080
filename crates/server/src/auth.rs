//! Optional bearer-token authentication for RewardService calls.

use std::sync::Arc;

use tonic::{Request, Status};

/// Checks `authorization: Bearer <token>` when a token is configured; lets everything through
/// otherwise.
#[derive(Clone, Default)]
pub struct BearerAuth {
    expected: Option<Arc<Vec<u8>>>,
}

impl BearerAuth {
    /// `None` disables authentication.
    pub fn new(token: Option<String>) -> Self {
        BearerAuth {
            expected: token.map(|t| Arc::new(format!("Bearer {t}").into_bytes())),
        }
    }

    /// True when a token is required.
    pub fn enabled(&self) -> bool {
        self.expected.is_some()
    }

    /// The tonic interceptor.
    #[allow(clippy::result_large_err)] // the interceptor signature is tonic's
    pub fn check(&self, mut request: Request<()>) -> Result<Request<()>, Status> {
        // Stamped here, before the body is decoded: the call's deadline counts from arrival.
        request
            .extensions_mut()
            .insert(crate::deadline::Arrived(std::time::Instant::now()));
        let Some(expected) = &self.expected else {
            return Ok(request);
        };
        // Every `authorization` header must carry the token: a duplicate that disagrees is
        // refused rather than resolved by position.
        let mut given = request
            .metadata()
            .get_all("authorization")
            .iter()
            .peekable();
        let present = given.peek().is_some();
        if present && given.all(|v| constant_time_eq(v.as_bytes(), expected)) {
            Ok(request)
        } else {
            metrics::counter!(
                rewarddance_engine::metrics::REQUESTS_TOTAL,
                "method" => "auth",
                "code" => crate::status::code_name(tonic::Code::Unauthenticated)
            )
            .increment(1);
            Err(Status::unauthenticated(
                "missing or invalid bearer token (send `authorization: Bearer <token>`)",
            ))
        }
    }
}

/// Compares without an early exit on the first differing byte.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_must_match_exactly() {
        let auth = BearerAuth::new(Some("s3cret".into()));
        let with = |v: &str| {
            let mut r = Request::new(());
            r.metadata_mut()
                .insert("authorization", v.parse().expect("ascii"));
            r
        };
        assert!(auth.check(with("Bearer s3cret")).is_ok());
        assert!(auth.check(with("Bearer s3cre")).is_err());
        assert!(auth.check(with("Bearer s3cret ")).is_err());
        assert!(auth.check(Request::new(())).is_err());
        assert!(BearerAuth::new(None).check(Request::new(())).is_ok());
    }

    #[test]
    fn duplicate_headers_must_all_agree() {
        let auth = BearerAuth::new(Some("s3cret".into()));
        let with = |values: &[&str]| {
            let mut r = Request::new(());
            for v in values {
                r.metadata_mut()
                    .append("authorization", v.parse().expect("ascii"));
            }
            r
        };
        assert!(auth
            .check(with(&["Bearer s3cret", "Bearer s3cret"]))
            .is_ok());
        assert!(auth
            .check(with(&["Bearer s3cret", "Bearer other"]))
            .is_err());
        assert!(auth
            .check(with(&["Bearer other", "Bearer s3cret"]))
            .is_err());
    }
}
