//! The HTTP/2 transport under the gRPC services: connection settings (stream and reset limits,
//! keepalive, flow-control windows), TCP options, the content-type gate (HTTP 415 for anything
//! that is not gRPC) and server reflection in both versions clients speak.

use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::{self, Either, Ready};
use tokio::net::TcpListener;
use tonic::body::Body;
use tonic::codegen::http::{self, header, HeaderMap, StatusCode};
use tonic::codegen::Service;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;

use crate::ServerArgs;

/// `Some(seconds)`, or `None` for 0 (the flags' "off").
fn seconds(s: u64) -> Option<Duration> {
    (s > 0).then(|| Duration::from_secs(s))
}

/// Applies the HTTP/2 settings of `args` to `builder`.
///
/// tonic leaves both reset limits to hyper only when they are set: unset, the pending-reset
/// limit is h2's 20, and the protocol-error reset limit is switched off. Both are set here.
pub(crate) fn configure(builder: Server, args: &ServerArgs) -> Server {
    let builder = builder
        .max_concurrent_streams(args.max_concurrent_streams)
        .http2_max_pending_accept_reset_streams(Some(args.http2_max_pending_resets))
        .http2_max_local_error_reset_streams(Some(args.http2_max_error_resets))
        .http2_keepalive_interval(seconds(args.http2_keepalive_s))
        .http2_keepalive_timeout(Some(Duration::from_secs(
            args.http2_keepalive_timeout_s.max(1),
        )));
    match args.http2_window_bytes {
        Some(bytes) => builder
            .http2_adaptive_window(Some(false))
            .initial_stream_window_size(bytes)
            .initial_connection_window_size(bytes),
        None => builder.http2_adaptive_window(Some(true)),
    }
}

/// The accepted connections of `listener`, with `TCP_NODELAY` (answers are not held back for
/// the peer's delayed ACK) and TCP keepalive. tonic ignores its own TCP settings for a
/// listener passed in, so they are set here.
pub(crate) fn incoming(listener: TcpListener, args: &ServerArgs) -> TcpIncoming {
    TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(seconds(args.tcp_keepalive_s))
}

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
