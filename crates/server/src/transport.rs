//! What sits between the HTTP/2 server ([`crate::listen`]) and the gRPC services: the
//! content-type gate (HTTP 415 for anything that is not gRPC) and server reflection in both
//! versions clients speak.

use std::task::{Context, Poll};

use futures_util::future::{self, Either, Ready};
use tonic::body::Body;
use tonic::codegen::http::{self, header, HeaderMap, StatusCode};
use tonic::codegen::Service;

/// Server reflection over the API, health and reflection itself. Build it once per version:
/// `grpc.reflection.v1` and `grpc.reflection.v1alpha` (grpcurl before 1.9, Postman and many
/// other tools speak only v1alpha).
pub(crate) fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .include_reflection_service(false)
        .register_encoded_file_descriptor_set(rewarddance_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET)
}

/// Whether `headers` carry a gRPC content-type: `application/grpc`, optionally followed by
/// `+codec` or parameters.
fn is_grpc(headers: &HeaderMap) -> bool {
    let Some(rest) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("application/grpc"))
    else {
        return false;
    };
    rest.is_empty() || rest.starts_with('+') || rest.starts_with(';')
}

/// Answers HTTP 415 to requests that are not gRPC, as the gRPC over HTTP/2 protocol asks
/// (<https://github.com/grpc/grpc/blob/master/doc/PROTOCOL-HTTP2.md>): otherwise a plain HTTP
/// client would read the gRPC error, which rides on HTTP 200, as a success.
#[derive(Debug, Clone)]
pub(crate) struct GrpcOnly<S>(pub(crate) S);

impl<S, B> Service<http::Request<B>> for GrpcOnly<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>>,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Either<Ready<Result<Self::Response, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if is_grpc(request.headers()) {
            return Either::Right(self.0.call(request));
        }
        let mut response = http::Response::new(Body::new(axum::body::Body::from(
            "this is a gRPC server: content-type must be application/grpc\n",
        )));
        *response.status_mut() = StatusCode::UNSUPPORTED_MEDIA_TYPE;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        Either::Left(future::ready(Ok(response)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_content_types() {
        let check = |ct: Option<&str>| {
            let mut headers = HeaderMap::new();
            if let Some(ct) = ct {
                headers.insert(header::CONTENT_TYPE, ct.parse().expect("header"));
            }
            is_grpc(&headers)
        };
        for ok in [
            "application/grpc",
            "application/grpc+proto",
            "application/grpc;x=1",
        ] {
            assert!(check(Some(ok)), "{ok}");
        }
        for bad in ["application/json", "application/grpc-web", "text/plain", ""] {
            assert!(!check(Some(bad)), "{bad}");
        }
        assert!(!check(None));
    }
}

/// The path of the one RPC with its own message limits.
pub(crate) const SCORE_GRAD_PATH: &str = "/rewarddance.v1.RewardService/ScoreGrad";

/// One gRPC service served by two instances that differ in their message limits: `ScoreGrad`
/// (float images and their gradients) goes to `grad`, every other method to `rest`, so the
/// larger limit never applies to Score, ScoreStream or Rank.
#[derive(Debug, Clone)]
pub(crate) struct PerMethodLimits<A, G> {
    /// Every method but ScoreGrad.
    pub rest: A,
    /// ScoreGrad.
    pub grad: G,
}

impl<A, G, B> Service<http::Request<B>> for PerMethodLimits<A, G>
where
    A: Service<http::Request<B>>,
    G: Service<http::Request<B>, Response = A::Response, Error = A::Error>,
{
    type Response = A::Response;
    type Error = A::Error;
    type Future = Either<A::Future, G::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        match (self.rest.poll_ready(cx), self.grad.poll_ready(cx)) {
            (Poll::Ready(Ok(())), Poll::Ready(Ok(()))) => Poll::Ready(Ok(())),
            (Poll::Ready(Err(e)), _) | (_, Poll::Ready(Err(e))) => Poll::Ready(Err(e)),
            _ => Poll::Pending,
        }
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path() == SCORE_GRAD_PATH {
            Either::Right(self.grad.call(request))
        } else {
            Either::Left(self.rest.call(request))
        }
    }
}

impl<A: tonic::server::NamedService, G> tonic::server::NamedService for PerMethodLimits<A, G> {
    const NAME: &'static str = A::NAME;
}
