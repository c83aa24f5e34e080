//! The HTTP/2 transport: cancelled calls on a shared channel, rapid-reset and stream-error
//! floods, advertised settings, keepalive, the content-type gate, reflection v1alpha, and
//! requests that are not valid protobuf.

mod common;
mod raw_h2;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use prost::Message;
use raw_h2::*;
use rewarddance_proto::v1;
use rewarddance_proto::v1::reward_service_client::RewardServiceClient;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

const SCORE_PATH: &str = "/rewarddance.v1.RewardService/Score";

/// Trainers share one channel per process and give every call a deadline. 16 tasks each make
/// 200 calls with a 1 ms deadline, nearly all cancelled (RST_STREAM CANCEL), while a long call
/// on the same connection waits for its answer. No call may fail for the connection's sake,
/// and the long call must succeed. 3200 cancels in all: more than the pending-reset limit, which
/// counts only the cancelled streams the server has not picked up yet.
///
/// The cancels pile up where a loaded server has not yet picked the streams up: with grpcio
/// against a server busy computing, 2 of 11 runs of this storm lost the connection (GOAWAY
/// `too_many_resets`). Here the server gets its own one-thread runtime, and a task blocks that
/// thread 20 ms at a time (as CPU-heavy work on a loaded machine does), so it happens each run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_calls_do_not_close_a_shared_connection() {
    let server_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("server runtime");
    let backend = TestBackend::new(Duration::from_millis(20));
    let server = server_runtime
        .spawn(TestServer::start(backend.clone(), args()))
        .await
        .expect("server started");
    let stalls = server_runtime.spawn(async {
        loop {
            std::thread::sleep(Duration::from_millis(20));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    let channel = Endpoint::from_shared(server.url())
        .expect("url")
        .connect()
        .await
        .expect("connect");

    // Hold every forward: the long call is in flight for the whole storm, and every storm
    // call outlives its deadline.
    backend.gate_open.store(false, Ordering::SeqCst);
    let mut long = RewardServiceClient::new(channel.clone());
    let long = tokio::spawn(async move {
        let mut call = tonic::Request::new(request(vec![item("long", "a long call", 1)]));
        call.set_timeout(Duration::from_secs(60));
        long.score(call).await
    });

    const TASKS: usize = 16;
    const CALLS: usize = 200;
    const DEADLINE: Duration = Duration::from_millis(1);
    let storm: Vec<_> = (0..TASKS)
        .map(|t| {
            let mut client = RewardServiceClient::new(channel.clone());
            tokio::spawn(async move {
                let mut codes = Vec::with_capacity(CALLS);
                for c in 0..CALLS {
                    let mut call = tonic::Request::new(request(vec![item(
                        &format!("{t}-{c}"),
                        "storm",
                        (c % 7) as u8,
                    )]));
                    // Even tasks send the deadline (grpc-timeout, as grpcio does); odd ones
                    // drop the call after 1 ms (asyncio cancellation, a Rust `select!`).
                    let answer = if t % 2 == 0 {
                        call.set_timeout(DEADLINE);
                        client.score(call).await
                    } else {
                        tokio::time::timeout(DEADLINE, client.score(call))
                            .await
                            .unwrap_or_else(|_| Err(Status::cancelled("dropped")))
                    };
                    codes.push(match answer {
                        Ok(_) => Code::Ok,
                        Err(status) => status.code(),
                    });
                }
                codes
            })
        })
        .collect();
    // A lost connection shows in tonic as UNAVAILABLE, RESOURCE_EXHAUSTED (GOAWAY
    // ENHANCE_YOUR_CALM) or UNKNOWN ("transport error"): anything but the call's own outcome.
    let mut lost = 0;
    let mut by_code = std::collections::BTreeMap::<String, usize>::new();
    for task in storm {
        for code in task.await.expect("storm task") {
            lost += usize::from(!matches!(
                code,
                Code::Ok | Code::Cancelled | Code::DeadlineExceeded
            ));
            *by_code.entry(format!("{code:?}")).or_default() += 1;
        }
    }
    backend.gate_open.store(true, Ordering::SeqCst);
    let long = tokio::time::timeout(Duration::from_secs(60), long)
        .await
        .expect("long call answered")
        .expect("long call task");
    eprintln!(
        "storm of {} calls: {by_code:?}; long call: {:?}",
        TASKS * CALLS,
        long.as_ref().map(|_| "ok").map_err(|s| s.code())
    );
    assert_eq!(lost, 0, "calls lost with the connection: {by_code:?}");
    let long = long.expect("the long call on the shared connection succeeds");
    score_of(&long.get_ref().results[0]);
    stalls.abort();
    server.shutdown().await;
    server_runtime.shutdown_background();
}

/// The HTTP/2 rapid-reset attack (CVE-2023-44487): a client opens streams and resets them at
/// once, far faster than any client cancels calls. The connection is still cut off with
/// GOAWAY ENHANCE_YOUR_CALM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_flood_is_cut_off() {
    let server = TestServer::start(TestBackend::new(Duration::ZERO), args()).await;
    let pairs = 20 * rewarddance_server::config::DEFAULT_HTTP2_MAX_PENDING_RESETS as u32;
    let mut flood = handshake();
    for i in 0..pairs {
        let stream = 2 * i + 1;
        flood.extend(request_headers(
            stream,
            SCORE_PATH,
            "application/grpc",
            false,
        ));
        flood.extend(rst_stream(stream, CANCEL));
    }
    let ending = send_and_watch(server.addr, flood, Duration::from_secs(30)).await;
    eprintln!("rapid reset, {pairs} HEADERS+RST_STREAM pairs: {ending:?}");
    let (code, debug) = ending.goaway.expect("GOAWAY");
    assert_eq!(code, ENHANCE_YOUR_CALM, "{debug}");
    assert_eq!(debug, "too_many_resets");
    assert!(ending.closed, "the connection is closed");
    server.shutdown().await;
}

/// Streams the server must reset for the client's protocol errors (here a PRIORITY frame that
/// makes a stream depend on itself) are a flood too ("MadeYouReset", CVE-2025-8671): past the
/// limit the connection is closed with GOAWAY ENHANCE_YOUR_CALM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_error_flood_is_cut_off() {
    let server = TestServer::start(TestBackend::new(Duration::ZERO), args()).await;
    let frames = 4 * rewarddance_server::config::DEFAULT_HTTP2_MAX_ERROR_RESETS as u32;
    let mut flood = handshake();
    for i in 0..frames {
        flood.extend(self_dependent_priority(2 * i + 1));
    }
    let ending = send_and_watch(server.addr, flood, Duration::from_secs(30)).await;
    eprintln!(
        "{frames} stream errors: goaway {:?}, {} RST_STREAM received, closed {}",
        ending.goaway, ending.resets_received, ending.closed
    );
    let (code, debug) = ending.goaway.expect("GOAWAY");
    assert_eq!(code, ENHANCE_YOUR_CALM, "{debug}");
    assert_eq!(debug, "too_many_internal_resets");
    assert!(ending.resets_received < frames as usize);
    server.shutdown().await;
}

/// The server's first SETTINGS frame advertises the stream limit, so clients queue calls above
/// it rather than have them refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_advertise_the_concurrent_stream_limit() {
    let server = TestServer::start(TestBackend::new(Duration::ZERO), args()).await;
    let mut stream = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connect");
    tokio::io::AsyncWriteExt::write_all(&mut stream, &handshake())
        .await
        .expect("handshake");
    let settings = tokio::time::timeout(Duration::from_secs(10), read_frame(&mut stream))
        .await
        .expect("SETTINGS in time")
        .expect("a frame");
    assert_eq!(settings.kind, SETTINGS, "{settings:?}");
    assert_eq!(
        settings.setting(MAX_CONCURRENT_STREAMS),
        Some(rewarddance_server::config::DEFAULT_MAX_CONCURRENT_STREAMS)
    );

    // And a real client honours it: calls above the limit wait instead of failing.
    let limited = rewarddance_server::ServerArgs {
        max_concurrent_streams: 2,
        ..args()
    };
    let backend = TestBackend::new(Duration::from_millis(50));
    let small = TestServer::start(backend, limited).await;
    let mut client = small.client().await;
    // One round trip first: streams opened before the client has read the server's SETTINGS
    // can exceed the limit and be refused (REFUSED_STREAM; grpcio retries those itself).
    client.info(v1::InfoRequest {}).await.expect("info");
    let calls: Vec<_> = (0..8u8)
        .map(|i| {
            let mut client = client.clone();
            tokio::spawn(async move {
                client
                    .score(request(vec![item(&format!("q{i}"), "queued", i)]))
                    .await
            })
        })
        .collect();
    for call in calls {
        let r = call.await.expect("task").expect("queued call succeeds");
        score_of(&r.get_ref().results[0]);
    }
    small.shutdown().await;
    server.shutdown().await;
}

/// A peer that stops answering (a vanished client, a half-open connection behind a NAT) is
/// found by keepalive PINGs and disconnected, idle or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unresponsive_peer_is_disconnected() {
    let quick = rewarddance_server::ServerArgs {
        http2_keepalive_s: 1,
        http2_keepalive_timeout_s: 1,
        ..args()
    };
    let server = TestServer::start(TestBackend::new(Duration::ZERO), quick).await;
    let mut start = handshake();
    start.extend(frame(SETTINGS, ACK, 0, &[]));
    let started = Instant::now();
    let ending = send_and_watch(server.addr, start, Duration::from_secs(15)).await;
    eprintln!("silent peer: {ending:?} after {:?}", started.elapsed());
    assert!(
        ending.pings >= 1,
        "the server pings a quiet peer: {ending:?}"
    );
    assert!(ending.closed, "and closes the connection: {ending:?}");
    server.shutdown().await;
}

/// Anything that is not gRPC gets HTTP 415 (gRPC errors ride on HTTP 200, which a plain HTTP
/// client would read as a success).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_grpc_content_type_gets_415() {
    let server = TestServer::start(TestBackend::new(Duration::ZERO), args()).await;
    let tcp = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connect");
    let (mut h2, connection) = h2::client::handshake(tcp).await.expect("h2 handshake");
    tokio::spawn(connection);
    for content_type in ["application/json", "text/plain", "application/grpc-web"] {
        let request = http::Request::post(format!("http://{}{SCORE_PATH}", server.addr))
            .header("content-type", content_type)
            .body(())
            .expect("request");
        let (response, mut body) = h2.send_request(request, false).expect("send");
        // The server may answer (and reset the stream) before reading the body: then this
        // fails, as it may in HTTP/2.
        let _ = body.send_data(bytes::Bytes::from_static(b"{\"items\": []}"), true);
        let response = response.await.expect("response");
        assert_eq!(
            response.status(),
            http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "{content_type}"
        );
    }
    // gRPC itself still goes through.
    let info = server.client().await.info(v1::InfoRequest {}).await;
    assert!(info.is_ok(), "{info:?}");
    server.shutdown().await;
}

/// Reflection answers in v1alpha too (many tools speak only v1alpha), listing every service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_v1alpha_lists_the_services() {
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1alpha::ServerReflectionRequest;

    let server = TestServer::start(TestBackend::new(Duration::ZERO), args()).await;
    let channel = Channel::from_shared(server.url())
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let mut client = ServerReflectionClient::new(channel);
    let ask = |request| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    };
    let requests = tokio_stream::iter(vec![
        ask(MessageRequest::ListServices(String::new())),
        ask(MessageRequest::FileContainingSymbol(
            rewarddance_proto::SERVICE_NAME.into(),
        )),
    ]);
    let mut answers = client
        .server_reflection_info(requests)
        .await
        .expect("v1alpha reflection")
        .into_inner();
    let listed = answers.message().await.expect("answer").expect("one");
    let Some(MessageResponse::ListServicesResponse(list)) = listed.message_response else {
        panic!("not a service list: {listed:?}");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    for expected in [
        rewarddance_proto::SERVICE_NAME,
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ] {
        assert!(
            names.contains(&expected),
            "{expected} missing from {names:?}"
        );
    }
    let file = answers.message().await.expect("answer").expect("two");
    let Some(MessageResponse::FileDescriptorResponse(files)) = file.message_response else {
        panic!("no descriptor for the service: {file:?}");
    };
    assert!(!files.file_descriptor_proto.is_empty());
    server.shutdown().await;
}

/// Sends pre-encoded message bytes (what a client in another language might put on the wire)
/// and decodes `ScoreResponse`s.
#[derive(Clone, Default)]
struct RawCodec;

struct RawEncoder;
impl Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(&mut self, item: Vec<u8>, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        bytes::BufMut::put_slice(buf, &item);
        Ok(())
    }
}

struct ResponseDecoder;
impl Decoder for ResponseDecoder {
    type Item = v1::ScoreResponse;
    type Error = Status;
    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<v1::ScoreResponse>, Status> {
        v1::ScoreResponse::decode(buf)
            .map(Some)
            .map_err(|e| Status::internal(e.to_string()))
    }
}

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = v1::ScoreResponse;
    type Encoder = RawEncoder;
    type Decoder = ResponseDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> ResponseDecoder {
        ResponseDecoder
    }
}

/// A protobuf length-delimited field (wire type 2) with a one-byte tag and length.
fn len_field(number: u8, bytes: &[u8]) -> Vec<u8> {
    assert!(bytes.len() < 128 && number < 16);
    let mut out = vec![(number << 3) | 2, bytes.len() as u8];
    out.extend_from_slice(bytes);
    out
}

/// A ScoreRequest with one item whose `prompt` (ScoreItem field 2) is not UTF-8.
fn request_with_invalid_utf8_prompt() -> Vec<u8> {
    let mut item = len_field(1, b"bad-utf8"); // id
    item.extend(len_field(2, &[b'a', 0xff, 0xfe, b'z'])); // prompt
    len_field(1, &item) // ScoreRequest.items
}

fn assert_invalid_argument(status: &Status) {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let message = status.message();
    assert!(
        message.contains("ScoreItem.prompt") && message.contains("UTF-8"),
        "the message names the field and the problem: {message}"
    );
}

/// A prompt that is not valid UTF-8 is the caller's error: INVALID_ARGUMENT naming the field,
/// not INTERNAL. In a stream, the answers before it still arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_prompt_is_invalid_argument() {
    let server = TestServer::start(TestBackend::new(Duration::ZERO), args()).await;
    let channel = Channel::from_shared(server.url())
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let mut grpc = tonic::client::Grpc::new(channel);

    grpc.ready().await.expect("ready");
    let status = grpc
        .unary(
            tonic::Request::new(request_with_invalid_utf8_prompt()),
            http::uri::PathAndQuery::from_static(SCORE_PATH),
            RawCodec,
        )
        .await
        .expect_err("an undecodable request fails");
    assert_invalid_argument(&status);

    let good = request(vec![item("good", "a valid prompt", 2)]).encode_to_vec();
    let messages = tokio_stream::iter(vec![good, request_with_invalid_utf8_prompt()]);
    grpc.ready().await.expect("ready");
    let mut answers = grpc
        .streaming(
            tonic::Request::new(messages),
            http::uri::PathAndQuery::from_static("/rewarddance.v1.RewardService/ScoreStream"),
            RawCodec,
        )
        .await
        .expect("stream opens")
        .into_inner();
    let first = answers.message().await.expect("first answer").expect("one");
    score_of(&first.results[0]);
    let end = answers
        .message()
        .await
        .expect_err("the stream ends with the error");
    assert_invalid_argument(&end);
    server.shutdown().await;
}
