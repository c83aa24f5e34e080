//! `ScoreStream`: one final response per request message, in order, with a bound on
//! unanswered items per stream (past it the server stops reading, so HTTP/2 flow control
//! pushes back on the client). Bad items and a full queue are per-item errors; the stream
//! survives them. When the client goes away, the pending tickets are dropped and the engine
//! drops their items (or stops decoding their rationales).
//!
//! Rationale text that items asked to stream travels on a side channel as progress messages
//! (`rationale_deltas` only). An item's text is forwarded before its result resolves, and
//! progress is sent before finals, so every delta of a request precedes its final message.

use std::time::Instant;

use futures_util::stream::{FuturesOrdered, StreamExt};
use rewarddance_engine::{FailureKind, Health, ItemError, ItemResult, SubmitError};
use rewarddance_proto::v1;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use crate::calls::Call;
use crate::deadline::{self, Arrived};
use crate::shared::{collect, Core, DeltaSink, ItemAdmitError};
use crate::{convert, status};

/// The response stream: one final message per request message, progress in between.
pub(crate) type Responses = ReceiverStream<Result<v1::ScoreResponse, Status>>;

/// Handles one `ScoreStream` call: refused while draining, else the pump task starts.
pub(crate) fn handle(
    core: &Core,
    request: Request<Streaming<v1::ScoreRequest>>,
) -> Result<Response<Responses>, Status> {
    let call = Call::start("ScoreStream", &request);
    if *core.engine.health().borrow() == Health::Draining {
        call.finish(tonic::Code::Unavailable);
        return Err(status::draining());
    }
    let deadline = deadline::deadline_of(request.metadata(), Arrived::of(request.extensions()));
    let (tx, rx) = mpsc::channel(4);
    let span = tracing::info_span!("score_stream");
    tokio::spawn(pump(core.clone(), request.into_inner(), tx, deadline, call).instrument(span));
    Ok(Response::new(ReceiverStream::new(rx)))
}

async fn pump(
    api: Core,
    mut inbound: Streaming<v1::ScoreRequest>,
    out: mpsc::Sender<Result<v1::ScoreResponse, Status>>,
    deadline: Option<Instant>,
    mut call: Call,
) {
    let mut health = api.engine.health();
    let mut pending = FuturesOrdered::new();
    let mut in_flight = 0usize;
    let mut reading = true;
    let mut end: Option<Status> = None;
    let (mut requests, mut items_total) = (0u64, 0u64);
    let (deltas_tx, mut deltas) = mpsc::unbounded_channel::<v1::RationaleDelta>();
    // The stream's deadline ends it even while it is idle (no request pending to time out).
    let expiry = async {
        match deadline {
            Some(at) => tokio::time::sleep_until(at.into()).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(expiry);
    loop {
        if !reading && pending.is_empty() {
            break;
        }
        let can_read = reading && in_flight < api.limits.max_stream_in_flight;
        tokio::select! {
            biased;
            _ = out.closed() => {
                tracing::debug!("client went away; dropping its pending items");
                call.finish(tonic::Code::Cancelled);
                return;
            }
            () = &mut expiry => {
                let status = deadline::exceeded(in_flight, items_total as usize);
                call.finish(status.code());
                let _ = out.send(Err(status)).await;
                return;
            }
            Some(first) = deltas.recv() => {
                if !send_progress(&out, first, &mut deltas).await {
                    call.finish(tonic::Code::Cancelled);
                    return;
                }
            }
            Some((n, answer)) = pending.next(), if !pending.is_empty() => {
                in_flight -= n;
                let response = match answer {
                    Ok(response) => response,
                    Err(status) => {
                        let status: Status = status;
                        // The stream's deadline passed: it ends, as a unary call would.
                        call.finish(status.code());
                        let _ = out.send(Err(status)).await;
                        return;
                    }
                };
                // The request's last deltas may have been queued while its answer resolved
                // within this same poll: they go first.
                let flushed = match deltas.try_recv() {
                    Ok(first) => send_progress(&out, first, &mut deltas).await,
                    Err(_) => true,
                };
                if !flushed || out.send(Ok(response)).await.is_err() {
                    call.finish(tonic::Code::Cancelled);
                    return;
                }
            }
            changed = health.changed(), if reading => {
                if changed.is_err() || *health.borrow_and_update() == Health::Draining {
                    reading = false;
                    end = Some(status::draining());
                }
            }
            message = inbound.message(), if can_read => match message {
                Ok(Some(request)) => {
                    let sink = DeltaSink {
                        tx: deltas_tx.clone(),
                        request: requests,
                    };
                    requests += 1;
                    let n = request.items.len();
                    items_total += n as u64;
                    call.add_items(n);
                    match admit(&api, request, deadline, sink) {
                        Ok(fut) => {
                            in_flight += n;
                            pending.push_back(async move { (n, fut.await) });
                        }
                        Err(stop) => {
                            reading = false;
                            end = Some(stop);
                        }
                    }
                }
                Ok(None) => reading = false,
                Err(e) => {
                    tracing::debug!(error = %e, "stream read failed");
                    reading = false;
                    end = Some(e);
                }
            },
        }
    }
    let code = end.as_ref().map_or(tonic::Code::Ok, |s| s.code());
    tracing::debug!(requests, items = items_total, ?code, "stream finished");
    call.finish(code);
    if let Some(status) = end {
        let _ = out.send(Err(status)).await;
    }
}

/// Sends `first` and every delta already queued as one progress message; false when the
/// client is gone.
async fn send_progress(
    out: &mpsc::Sender<Result<v1::ScoreResponse, Status>>,
    first: v1::RationaleDelta,
    deltas: &mut mpsc::UnboundedReceiver<v1::RationaleDelta>,
) -> bool {
    let mut batch = vec![first];
    while let Ok(more) = deltas.try_recv() {
        batch.push(more);
    }
    let progress = v1::ScoreResponse {
        rationale_deltas: batch,
        ..Default::default()
    };
    out.send(Ok(progress)).await.is_ok()
}

type Answer =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<v1::ScoreResponse, Status>> + Send>>;

/// Admits one request message. `Err(status)` ends the stream (draining);
/// request-level problems become per-item errors in an immediate response.
fn admit(
    api: &Core,
    request: v1::ScoreRequest,
    deadline: Option<Instant>,
    sink: DeltaSink,
) -> Result<Answer, Status> {
    let ids: Vec<String> = request.items.iter().map(|i| i.id.clone()).collect();
    let model_id = api.model_id.clone();
    let error_all = |e: ItemError| -> Answer {
        let results: Vec<v1::ItemResult> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| convert::result(id.clone(), i, &ItemResult::failed(e.clone())))
            .collect();
        let response = v1::ScoreResponse {
            timing: Some(convert::request_timing(&results)),
            results,
            model_id: model_id.to_string(),
            rationale_deltas: Vec::new(),
        };
        Box::pin(async move { Ok(response) })
    };
    let admitted = convert::request(request, &api.limits)
        .map_err(ItemAdmitError::Invalid)
        .and_then(|items| api.admit(items, deadline, &tracing::Span::current(), &[]));
    match admitted {
        Ok(items) => {
            let model_id = api.model_id.clone();
            Ok(Box::pin(async move {
                collect(items, deadline, &model_id, Some(&sink)).await
            }))
        }
        Err(ItemAdmitError::Invalid(msg)) => {
            Ok(error_all(ItemError::new(FailureKind::InvalidArgument, msg)))
        }
        Err(ItemAdmitError::Refused(SubmitError::ShuttingDown)) => Err(status::draining()),
        Err(ItemAdmitError::Refused(e)) => Ok(error_all(status::submit_item_error(&e))),
    }
}
