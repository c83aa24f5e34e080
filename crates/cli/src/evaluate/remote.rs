//! Batch evaluation against a running server: rows go out as `ScoreStream` requests, several
//! in flight, and come back in request order (the stream's contract).

use std::collections::VecDeque;

use anyhow::{Context, Result};
use rewarddance_model::{Candidate, ImageInput, Mode, RationaleOptions, Score, ScoreItem};
use rewarddance_proto::v1 as pb;
use tokio::sync::mpsc;

use super::manifest::Job;
use super::{BatchScorer, RowResult, Scored, ScoredBatch};
use crate::failure::ItemFailure;
use crate::rationale_args;

/// One sent (or locally failed) batch, waiting for its answer.
struct Pending {
    jobs: Vec<Job>,
    /// Per job: `Ok(index in the request)` or its local failure (file unreadable, bad row).
    slots: Vec<std::result::Result<usize, ItemFailure>>,
    sent: bool,
}

/// A `ScoreStream` session with up to `in_flight` unanswered requests.
pub struct RemoteScorer {
    runtime: tokio::runtime::Runtime,
    /// `None` once the stream was half-closed.
    requests: Option<mpsc::Sender<pb::ScoreRequest>>,
    responses: tonic::Streaming<pb::ScoreResponse>,
    pending: VecDeque<Pending>,
    in_flight: usize,
    rationale: Option<pb::RationaleOptions>,
}

impl RemoteScorer {
    /// Connects to `url` (e.g. `http://127.0.0.1:50051`) and opens the stream; every row asks
    /// for a rationale when `rationale` is set.
    pub fn connect(
        url: &str,
        in_flight: usize,
        token: Option<String>,
        rationale: Option<RationaleOptions>,
    ) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let (tx, rx) = mpsc::channel(in_flight.max(1));
        let responses = runtime.block_on(async {
            let channel = tonic::transport::Endpoint::from_shared(url.to_string())
                .with_context(|| format!("bad server URL {url:?}"))?
                .connect()
                .await
                .with_context(|| format!("connecting to {url}"))?;
            let header = token
                .map(|t| format!("Bearer {t}").parse::<tonic::metadata::MetadataValue<_>>())
                .transpose()
                .context("auth token is not a valid header value")?;
            let mut client = pb::reward_service_client::RewardServiceClient::with_interceptor(
                channel,
                move |mut req: tonic::Request<()>| {
                    if let Some(h) = &header {
                        req.metadata_mut().insert("authorization", h.clone());
                    }
                    Ok(req)
                },
            )
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20);
            let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
            anyhow::Ok(
                client
                    .score_stream(stream)
                    .await
                    .context("opening ScoreStream")?
                    .into_inner(),
            )
        })?;
        Ok(RemoteScorer {
            runtime,
            requests: Some(tx),
            responses,
            pending: VecDeque::new(),
            in_flight: in_flight.max(1),
            rationale: rationale.map(|o| pb::RationaleOptions {
                max_tokens: o.max_tokens as u32,
                temperature: o.temperature,
                top_p: o.top_p,
                seed: o.seed,
                stream: false,
            }),
        })
    }
}

impl BatchScorer for RemoteScorer {
    fn capacity(&self) -> usize {
        self.in_flight
    }

    fn submit(&mut self, jobs: Vec<Job>) -> Result<()> {
        let mut items = Vec::new();
        let slots = jobs
            .iter()
            .map(|job| {
                job.load().map(|item| {
                    let mut item = to_proto(&job.id, &item);
                    item.rationale = self.rationale;
                    item.rewards = job.reward_names().to_vec();
                    items.push(item);
                    items.len() - 1
                })
            })
            .collect();
        let sent = !items.is_empty();
        if sent {
            let requests = self
                .requests
                .as_ref()
                .context("the stream was already closed")?;
            self.runtime
                .block_on(requests.send(pb::ScoreRequest { items }))
                .map_err(|_| anyhow::anyhow!("the server closed the stream"))?;
        }
        self.pending.push_back(Pending { jobs, slots, sent });
        Ok(())
    }

    fn receive(&mut self) -> Result<ScoredBatch> {
        let front = self.pending.pop_front().context("nothing in flight")?;
        let results = if front.sent {
            let response = loop {
                let message = self
                    .runtime
                    .block_on(self.responses.message())
                    .context("ScoreStream failed")?
                    .context("the server ended the stream early")?;
                // Progress messages (streamed rationale text) carry no results.
                if !message.results.is_empty() {
                    break message;
                }
            };
            front
                .slots
                .iter()
                .map(|slot| match slot {
                    Ok(i) => from_proto(response.results.get(*i)),
                    Err(e) => Err(e.clone()),
                })
                .collect()
        } else {
            front
                .slots
                .iter()
                .map(|s| match s {
                    Err(e) => Err(e.clone()),
                    Ok(_) => Err(ItemFailure::new("internal", "row was not sent")),
                })
                .collect()
        };
        Ok((front.jobs, results))
    }

    fn finish(&mut self) -> Result<()> {
        anyhow::ensure!(self.pending.is_empty(), "batches still in flight");
        // Half-close: the server sees the end of the requests, answers what it holds, and ends
        // the call with OK; read its responses to that end.
        drop(self.requests.take());
        loop {
            match self
                .runtime
                .block_on(self.responses.message())
                .context("ScoreStream failed while closing")?
            {
                None => return Ok(()),
                Some(m) if m.results.is_empty() => continue,
                Some(_) => anyhow::bail!("the server answered a request that was never sent"),
            }
        }
    }
}

fn image(input: &ImageInput) -> pb::Image {
    let source = match input {
        // Tiles prepared in this process, and float images, have no wire form here (the
        // manifest reader never makes them): sent without data, the server answers that item
        // with INVALID_ARGUMENT.
        ImageInput::Prepared(_) | ImageInput::Float(_) => return pb::Image { source: None },
        ImageInput::Encoded(bytes) => pb::image::Source::Encoded(bytes.clone()),
        ImageInput::Rgb8 {
            width,
            height,
            data,
        } => pb::image::Source::Rgb8(pb::RawImage {
            width: *width,
            height: *height,
            data: data.clone(),
        }),
    };
    pb::Image {
        source: Some(source),
    }
}

fn to_proto(id: &str, item: &ScoreItem) -> pb::ScoreItem {
    pb::ScoreItem {
        id: id.to_string(),
        prompt: item.prompt.clone(),
        candidate: Some(match &item.candidate {
            Candidate::Image(img) => pb::score_item::Candidate::Image(image(img)),
            Candidate::Video(frames) => pb::score_item::Candidate::Video(pb::Video {
                frames: frames.iter().map(image).collect(),
            }),
        }),
        reference: item.reference.as_ref().map(image),
        instruction: item.instruction.clone(),
        mode: match item.mode {
            Mode::Pointwise => pb::Mode::Pointwise as i32,
            Mode::Pairwise => pb::Mode::Pairwise as i32,
        },
        rationale: None,
        rewards: Vec::new(),
    }
}

/// A score from the wire.
fn score(s: &pb::Score) -> Score {
    Score {
        p_yes: s.p_yes,
        p_yes_vocab: s.p_yes_vocab,
        logit_yes: s.logit_yes,
        logit_no: s.logit_no,
    }
}

/// Each named reward's outcome of a result, in order.
fn reward_outcomes(
    result: Option<&pb::ItemResult>,
) -> Vec<(String, std::result::Result<Score, ItemFailure>)> {
    result
        .map(|r| r.rewards.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|o| {
            let outcome = match &o.outcome {
                Some(pb::reward_outcome::Outcome::Score(s)) => Ok(score(s)),
                Some(pb::reward_outcome::Outcome::Error(e)) => {
                    Err(ItemFailure::new(e.reason.clone(), e.message.clone()))
                }
                None => Err(ItemFailure::new(
                    "internal",
                    "the server returned no outcome",
                )),
            };
            (o.reward.clone(), outcome)
        })
        .collect()
}

fn from_proto(result: Option<&pb::ItemResult>) -> RowResult {
    match result.and_then(|r| r.outcome.as_ref()) {
        Some(pb::item_result::Outcome::Score(s)) => Ok(Scored {
            score: score(s),
            rewards: reward_outcomes(result),
            rationale: result.and_then(|r| r.rationale.as_ref()).map(|r| {
                let stop = pb::RationaleStop::try_from(r.stop)
                    .map_or("unspecified", |s| s.as_str_name())
                    .trim_start_matches("RATIONALE_STOP_")
                    .to_lowercase();
                rationale_args::to_json(&r.text, &stop, r.token_ids.len())
            }),
        }),
        Some(pb::item_result::Outcome::Error(e)) => {
            Err(ItemFailure::new(e.reason.clone(), e.message.clone()))
        }
        None => Err(ItemFailure::new(
            "internal",
            "the server returned no result for this item",
        )),
    }
}
