//! The HTTP/2 server under the gRPC routes, on hyper directly rather than through tonic's
//! `Server`, for two reasons:
//! - tonic's `Server` wraps every call in its own `grpc-timeout` timer, which answers
//!   `CANCELLED: Timeout expired` whenever it fires before the handler; the deadline contract
//!   ([`crate::deadline`]) needs the handler to be the one that answers, at every timeout.
//! - The HTTP/2 settings that decide what one connection may do (concurrent streams, reset
//!   limits, keepalive, flow-control windows) are set here, in one place ([`Http2Settings`]).
//!
//! On shutdown the listener is closed at once (a replacement process can bind the port
//! while this one drains), and every connection gets a graceful GOAWAY: streams already open
//! finish, new ones go elsewhere.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hyper::server::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;
use tonic::transport::server::TcpConnectInfo;

/// Longest a TLS handshake may take before the connection is dropped.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What one HTTP/2 connection may do.
#[derive(Debug, Clone)]
pub struct Http2Settings {
    /// `SETTINGS_MAX_CONCURRENT_STREAMS` advertised to clients.
    pub max_concurrent_streams: u32,
    /// Streams a client may open and reset before the server reads them, at once (h2's
    /// `max_pending_accept_reset_streams`; past it the connection gets GOAWAY).
    pub max_pending_accept_reset_streams: usize,
    /// Streams the server may reset for protocol errors on one connection (h2's
    /// `max_local_error_reset_streams`; past it, GOAWAY).
    pub max_local_error_reset_streams: usize,
    /// Interval of HTTP/2 PING keepalives (`None`: off).
    pub keepalive_interval: Option<Duration>,
    /// How long a keepalive PING may go unanswered before the connection is closed.
    pub keepalive_timeout: Duration,
    /// A fixed flow-control window in bytes, per stream and per connection; `None`: adaptive
    /// (h2 sizes the windows from the measured bandwidth-delay product).
    pub window_bytes: Option<u32>,
    /// Seconds of TCP silence before the kernel probes the peer (`None`: off).
    pub tcp_keepalive: Option<Duration>,
}

/// Loads the PEM certificate chain and key into a TLS acceptor that offers HTTP/2.
pub fn tls_acceptor(cert: &std::path::Path, key: &std::path::Path) -> anyhow::Result<TlsAcceptor> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading {}", cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing certificates in {}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("reading the private key in {}", key.display()))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("TLS certificate and key")?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Serves `routes` (the gRPC routes behind their gates) on `listener` until `stop` resolves, then closes the listener, sends every
/// connection a graceful GOAWAY and waits for their open streams to finish.
pub async fn serve<S>(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    routes: S,
    settings: Http2Settings,
    stop: impl std::future::Future<Output = ()>,
) where
    S: tower_service::Service<
            http::Request<hyper::body::Incoming>,
            Response = http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(settings.max_concurrent_streams)
        .max_pending_accept_reset_streams(settings.max_pending_accept_reset_streams)
        .max_local_error_reset_streams(settings.max_local_error_reset_streams)
        .keep_alive_interval(settings.keepalive_interval)
        .keep_alive_timeout(settings.keepalive_timeout);
    match settings.window_bytes {
        Some(bytes) => builder
            .adaptive_window(false)
            .initial_stream_window_size(bytes)
            .initial_connection_window_size(bytes),
        None => builder.adaptive_window(true),
    };
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    tokio::pin!(stop);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) if is_connection_error(&e) => {
                    // One peer's connection failed before it was accepted: next.
                    tracing::debug!(error = %e, "connection reset before accept");
                    continue;
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Answers are not held back for the peer's delayed ACK; dead peers are found by TCP
        // keepalive even on connections that never finished their HTTP/2 handshake.
        let _ = tcp.set_nodelay(true);
        if let Some(time) = settings.tcp_keepalive {
            let keepalive = socket2::TcpKeepalive::new().with_time(time);
            let _ = socket2::SockRef::from(&tcp).set_tcp_keepalive(&keepalive);
        }
        // Handlers read the peer through `Request::remote_addr()`, as under tonic's server.
        let info = TcpConnectInfo {
            local_addr: tcp.local_addr().ok(),
            remote_addr: Some(peer),
        };
        let routes = routes.clone();
        let service = hyper::service::service_fn(move |mut request: http::Request<_>| {
            request.extensions_mut().insert(info.clone());
            // The router is always ready (axum's `Router::poll_ready`), so `call` directly.
            tower_service::Service::call(&mut routes.clone(), request)
        });
        let (builder, tls, watcher) = (builder.clone(), tls.clone(), graceful.watcher());
        tokio::spawn(async move {
            let result = match tls {
                None => {
                    let conn = builder.serve_connection(TokioIo::new(tcp), service);
                    watcher.watch(conn).await
                }
                Some(acceptor) => {
                    let stream =
                        match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
                            .await
                        {
                            Ok(Ok(stream)) => stream,
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!(%peer, "TLS handshake timed out");
                                return;
                            }
                        };
                    let conn = builder.serve_connection(TokioIo::new(stream), service);
                    watcher.watch(conn).await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Errors of one incoming connection (not of the listener), which `accept` can report.
fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset, Interrupted};
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset | Interrupted
    )
}
