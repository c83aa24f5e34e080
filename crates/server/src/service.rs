//! `rewarddance.v1.RewardService`: Score, ScoreStream and Info over the engine.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use futures_util::stream::{FuturesUnordered, StreamExt};
use rewarddance_engine::{Engine, FailureKind, ItemError, ItemResult, Work};
use rewarddance_model::text::prompt::PromptBuilder;
use rewarddance_model::Mode;
use rewarddance_proto::v1;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use crate::calls::Call;
use crate::config::ServerArgs;
use crate::deadline::{self, Arrived};
use crate::{convert, status, stream};

/// Request limits the service enforces (from [`ServerArgs`] and the model).
#[derive(Debug, Clone)]
pub struct Limits {
    /// Most items per request.
    pub max_items_per_request: usize,
    /// Most candidates per Rank request.
    pub max_rank_candidates: usize,
    /// Unanswered items per stream.
    pub max_stream_in_flight: usize,
    /// What a single item may carry (checked before it is queued).
    pub item: convert::ItemLimits,
    /// What an item may ask of the rationale decoder.
    pub rationale: convert::RationaleLimits,
}

/// The service implementation (cheap to clone).
#[derive(Clone)]
pub struct RewardApi {
    pub(crate) engine: Engine,
    pub(crate) limits: Limits,
    pub(crate) model_id: Arc<str>,
    info: Arc<v1::InfoResponse>,
}

impl RewardApi {
    /// Builds the service over a started engine.
    pub fn new(engine: Engine, args: &ServerArgs) -> Self {
        let model = engine.backends()[0].model();
        let limits = Limits {
            max_items_per_request: args.max_items_per_request,
            max_rank_candidates: args.max_rank_candidates,
            max_stream_in_flight: args.max_stream_in_flight.max(1),
            item: convert::ItemLimits {
                max_image_pixels: model.options().max_image_pixels,
                max_text_bytes: args.max_text_bytes(model.max_tokens_per_item()),
            },
            rationale: convert::RationaleLimits {
                max_tokens: args.max_rationale_tokens,
                default_tokens: args.default_rationale_tokens,
            },
        };
        let info = Arc::new(info(&engine, args));
        crate::telemetry::register_families(&info);
        RewardApi {
            model_id: model.id().into(),
            engine,
            limits,
            info,
        }
    }

    /// Validates and converts a request's items, then admits the valid ones. Returns, per
    /// item, its id and either a ticket or its error.
    pub(crate) fn admit(
        &self,
        request: v1::ScoreRequest,
        deadline: Option<Instant>,
        span: &tracing::Span,
    ) -> Result<Vec<(String, Pending)>, ItemAdmitError> {
        let n = request.items.len();
        if n == 0 {
            return Err(ItemAdmitError::Invalid("the request has no items".into()));
        }
        if n > self.limits.max_items_per_request {
            return Err(ItemAdmitError::Invalid(format!(
                "{n} items exceed the limit of {} per request",
                self.limits.max_items_per_request
            )));
        }
        let mut ids = Vec::with_capacity(n);
        let mut converted = Vec::with_capacity(n);
        for item in request.items {
            ids.push(item.id.clone());
            let rationale = convert::rationale(item.rationale, self.limits.rationale);
            converted.push(convert::item(item, &self.limits.item).and_then(|item| {
                let (rationale, stream) = rationale?.unzip();
                Ok((Work { item, rationale }, stream.unwrap_or(false)))
            }));
        }
        self.admit_converted(ids, converted, deadline, span, &[])
    }

    /// Refuses `n` units of work that the queue could never hold at once (INVALID_ARGUMENT, not
    /// a retryable RESOURCE_EXHAUSTED).
    pub(crate) fn check_capacity(
        &self,
        n: usize,
        what: &str,
        advice: &str,
    ) -> Result<(), ItemAdmitError> {
        let capacity = self.engine.config().max_queue_items;
        if n > capacity {
            return Err(ItemAdmitError::Invalid(format!(
                "{n} {what} exceed the server's queue capacity of {capacity} items \
                 (Limits.max_queue_items): {advice}"
            )));
        }
        Ok(())
    }

    /// Admits converted items (the valid ones; the others are answered with their error at
    /// once). `held`: the image tickets of the call's first phase (Rank), which keep it
    /// admitted through a drain. `converted[i]`: the work and whether its rationale text is streamed.
    pub(crate) fn admit_converted(
        &self,
        ids: Vec<String>,
        mut converted: Vec<Result<(Work, bool), ItemError>>,
        deadline: Option<Instant>,
        span: &tracing::Span,
        held: &[rewarddance_engine::ImageTicket],
    ) -> Result<Vec<(String, Pending)>, ItemAdmitError> {
        let n = converted.len();
        self.check_capacity(n, "items", "split the request")?;
        let good: Vec<Work> = converted
            .iter_mut()
            .filter_map(|c| {
                c.as_mut()
                    .ok()
                    .map(|(w, _)| std::mem::replace(w, placeholder()))
            })
            .collect();
        let mut tickets = self
            .engine
            .submit_continuing(good, deadline::engine_deadline(deadline), span, held)
            .map_err(ItemAdmitError::Refused)?
            .into_iter();
        let mut out = Vec::with_capacity(n);
        for (id, c) in ids.into_iter().zip(converted) {
            let pending = match c {
                Ok((_, stream)) => match tickets.next() {
                    Some(ticket) => Pending::Ticket { ticket, stream },
                    None => Pending::Done(Box::new(ItemResult::failed(ItemError::new(
                        rewarddance_engine::FailureKind::Internal,
                        "lost ticket",
                    )))),
                },
                Err(e) => Pending::Done(Box::new(ItemResult::failed(e))),
            };
            out.push((id, pending));
        }
        Ok(out)
    }
}

/// Whole-request refusals.
pub(crate) enum ItemAdmitError {
    /// Malformed request (INVALID_ARGUMENT).
    Invalid(String),
    /// The engine refused the items (queue full or draining).
    Refused(rewarddance_engine::SubmitError),
}

/// The call-level status of a refusal (unary calls; streams answer per item instead).
impl From<ItemAdmitError> for Status {
    fn from(e: ItemAdmitError) -> Self {
        match e {
            ItemAdmitError::Invalid(msg) => Status::invalid_argument(msg),
            ItemAdmitError::Refused(e) => status::submit_status(&e),
        }
    }
}

/// An item's answer, pending or known.
pub(crate) enum Pending {
    /// In the engine; `stream`: the caller wants its rationale text as it is decoded.
    Ticket {
        ticket: rewarddance_engine::Ticket,
        stream: bool,
    },
    Done(Box<ItemResult>),
}

/// Where a stream's rationale text goes while it is decoded.
pub(crate) struct DeltaSink {
    /// The stream's progress channel.
    pub tx: tokio::sync::mpsc::UnboundedSender<v1::RationaleDelta>,
    /// Position of the request message on the stream.
    pub request: u64,
}

impl Pending {
    /// Waits for the answer, forwarding streamed rationale text to `sink` first (so every
    /// delta precedes the result).
    pub(crate) async fn resolve(self, sink: Option<(&DeltaSink, usize, &str)>) -> ItemResult {
        let (mut ticket, stream) = match self {
            Pending::Done(r) => return *r,
            Pending::Ticket { ticket, stream } => (ticket, stream),
        };
        let text = if stream { ticket.take_text() } else { None };
        if let (Some(mut text), Some((sink, index, id))) = (text, sink) {
            while let Some(piece) = text.recv().await {
                let _ = sink.tx.send(v1::RationaleDelta {
                    request: sink.request,
                    index: index as u32,
                    id: id.to_string(),
                    text: piece,
                });
            }
        }
        ticket.wait().await
    }
}

/// A cheap stand-in left behind when an item moves into the engine.
fn placeholder() -> Work {
    rewarddance_model::ScoreItem {
        prompt: String::new(),
        candidate: rewarddance_model::Candidate::Video(Vec::new()),
        reference: None,
        instruction: None,
        mode: Mode::Pointwise,
    }
    .into()
}

/// Answers a request's items into a response (in request order; items resolve concurrently,
/// so one item's streamed text is never held up behind another's). The deadline contract
/// ([`crate::deadline`]): when `until` passes first, or an item comes back expired, the call
/// fails with DEADLINE_EXCEEDED and the items still pending are dropped (their queue slots
/// freed, their compute skipped).
pub(crate) async fn collect(
    items: Vec<(String, Pending)>,
    until: Option<Instant>,
    model_id: &str,
    sink: Option<&DeltaSink>,
) -> Result<v1::ScoreResponse, Status> {
    let total = items.len();
    let answered = std::sync::atomic::AtomicUsize::new(0);
    let all = async {
        let mut pending: FuturesUnordered<_> = items
            .into_iter()
            .enumerate()
            .map(|(index, (id, pending))| async move {
                let r = pending.resolve(sink.map(|s| (s, index, id.as_str()))).await;
                (index, id, r)
            })
            .collect();
        let mut results: Vec<Option<v1::ItemResult>> = (0..total).map(|_| None).collect();
        while let Some((index, id, r)) = pending.next().await {
            if matches!(&r.outcome, Err(e) if e.kind == FailureKind::DeadlineExceeded) {
                return Err(());
            }
            results[index] = Some(convert::result(id, index, &r));
            answered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(results.into_iter().flatten().collect::<Vec<_>>())
    };
    let results = match until {
        None => all.await,
        Some(at) => tokio::time::timeout_at(at.into(), all)
            .await
            .unwrap_or(Err(())),
    }
    .map_err(|()| deadline::exceeded(total - answered.into_inner(), total))?;
    Ok(v1::ScoreResponse {
        timing: Some(convert::request_timing(&results)),
        results,
        model_id: model_id.to_string(),
        rationale_deltas: Vec::new(),
    })
}

#[tonic::async_trait]
impl v1::reward_service_server::RewardService for RewardApi {
    async fn score(
        &self,
        request: Request<v1::ScoreRequest>,
    ) -> Result<Response<v1::ScoreResponse>, Status> {
        let mut call = Call::start("Score", &request);
        let deadline = deadline::deadline_of(request.metadata(), Arrived::of(request.extensions()));
        let body = request.into_inner();
        call.items(body.items.len());
        let span = tracing::info_span!("score", items = body.items.len());
        let result = async {
            deadline::check_budget(deadline, body.items.len())?;
            let items = match self.admit(body, deadline, &tracing::Span::current()) {
                Ok(items) => items,
                Err(ItemAdmitError::Refused(e)) => {
                    tracing::warn!(error = %e, "request refused");
                    return Err(ItemAdmitError::Refused(e).into());
                }
                Err(invalid) => return Err(invalid.into()),
            };
            let response = collect(items, deadline, &self.model_id, None).await?;
            Ok(Response::new(response))
        }
        .instrument(span)
        .await;
        call.finish_with(&result);
        result
    }

    type ScoreStreamStream =
        Pin<Box<dyn Stream<Item = Result<v1::ScoreResponse, Status>> + Send + 'static>>;

    async fn score_stream(
        &self,
        request: Request<Streaming<v1::ScoreRequest>>,
    ) -> Result<Response<Self::ScoreStreamStream>, Status> {
        let call = Call::start("ScoreStream", &request);
        if *self.engine.health().borrow() == rewarddance_engine::Health::Draining {
            call.finish(tonic::Code::Unavailable);
            return Err(status::draining());
        }
        let deadline = deadline::deadline_of(request.metadata(), Arrived::of(request.extensions()));
        let out = stream::spawn(self.clone(), request.into_inner(), deadline, call);
        Ok(Response::new(Box::pin(out)))
    }

    async fn rank(
        &self,
        request: Request<v1::RankRequest>,
    ) -> Result<Response<v1::RankResponse>, Status> {
        let mut call = Call::start("Rank", &request);
        let deadline = deadline::deadline_of(request.metadata(), Arrived::of(request.extensions()));
        let body = request.into_inner();
        call.items(body.candidates.len());
        let span = tracing::info_span!("rank", candidates = body.candidates.len());
        let result = self
            .rank_candidates(body, deadline)
            .instrument(span)
            .await
            .map(Response::new);
        call.finish_with(&result);
        result
    }

    async fn info(
        &self,
        request: Request<v1::InfoRequest>,
    ) -> Result<Response<v1::InfoResponse>, Status> {
        Call::start("Info", &request).finish(tonic::Code::Ok);
        Ok(Response::new((*self.info).clone()))
    }
}

/// The Info answer, computed once.
fn info(engine: &Engine, args: &ServerArgs) -> v1::InfoResponse {
    let model = engine.backends()[0].model();
    let (yes_id, no_id) = model.prompt_builder().answer_ids();
    let answers = &model.options().answers;
    let default_instructions = [
        (Mode::Pointwise, false, v1::Mode::Pointwise),
        (Mode::Pointwise, true, v1::Mode::Pointwise),
        (Mode::Pairwise, false, v1::Mode::Pairwise),
    ]
    .into_iter()
    .map(|(mode, video, proto_mode)| v1::DefaultInstruction {
        mode: proto_mode as i32,
        video,
        template: PromptBuilder::default_instruction(mode, video).to_string(),
    })
    .collect();
    v1::InfoResponse {
        model_id: model.id().to_string(),
        layout: model.config().layout(),
        dtype: format!("{:?}", model.dtype()).to_lowercase(),
        devices: engine.backends().iter().map(|b| b.device_name()).collect(),
        limits: Some(v1::Limits {
            max_batch_tokens: args.max_batch_tokens as u32,
            max_batch_items: args.max_batch_items as u32,
            max_items_per_request: args.max_items_per_request as u32,
            max_message_bytes: args.max_message_bytes as u64,
            max_image_pixels: model.options().max_image_pixels,
            max_tiles_per_item: model.options().max_tiles_per_item as u32,
            max_tokens_per_item: model.max_tokens_per_item() as u32,
            max_queue_items: args.max_queue_items as u32,
            max_stream_in_flight: args.max_stream_in_flight as u32,
            max_rationale_tokens: args.max_rationale_tokens,
            default_rationale_tokens: args.default_rationale_tokens.min(args.max_rationale_tokens),
            max_decoding_sequences: args.max_decoding_sequences as u32,
        }),
        answer_tokens: Some(v1::AnswerTokens {
            yes: answers.yes.clone(),
            no: answers.no.clone(),
            yes_id,
            no_id,
        }),
        default_instructions,
        server_version: env!("CARGO_PKG_VERSION").to_string(),
        tile_size: model.config().tile_size(),
        tokens_per_tile: model.config().tokens_per_tile() as u32,
    }
}
