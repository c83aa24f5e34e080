//! `Rank`: N candidates for one prompt, ranked pairwise (Bradley-Terry over a schedule of
//! ordered pairs) or pointwise, on top of the same admission path as `Score`.
//!
//! Each candidate image is decoded and tiled once up front, through the engine's admission
//! and preprocessing pool like any item, so a broken one is reported as that candidate's
//! error (not as a failure of every pair it appears in), and N candidates cost N decodes and
//! N images' tiles in memory, not 2 (N - 1) + 1 each. The pairs then go through the engine
//! like any scored items, sharing those tiles, where identical images are encoded once per
//! batch and the shared prefix (system prompt + reference image) is computed once.
//!
//! The steps of a call: [`check`] the request, [`plan`] the comparisons, [`prepare_candidates`],
//! [`score_units`], then [`pairwise_response`] or [`pointwise_response`].

use std::sync::Arc;
use std::time::Instant;

use rewarddance_engine::{FailureKind, ImageTicket, ItemError, Work};
use rewarddance_model::{Candidate, ImageInput, Mode, PreparedImage, ScoreItem};
use rewarddance_proto::v1;
use rewarddance_ranking::{rank_pairwise, rank_pointwise, schedule_pairs, Schedule};
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::calls::Call;
use crate::deadline::{self, engine_deadline, Arrived};
use crate::shared::{collect, Core};
use crate::{convert, status};

/// Handles one `Rank` call (see the proto for the contract).
pub(crate) async fn handle(
    core: &Core,
    request: Request<v1::RankRequest>,
) -> Result<Response<v1::RankResponse>, Status> {
    let mut call = Call::start("Rank", &request);
    let deadline = deadline::deadline_of(request.metadata(), Arrived::of(request.extensions()));
    let body = request.into_inner();
    call.items(body.candidates.len());
    let span = tracing::info_span!("rank", candidates = body.candidates.len());
    let result = rank(core, body, deadline)
        .instrument(span)
        .await
        .map(Response::new);
    call.finish_with(&result);
    result
}

/// The ranking call: each step below, in order.
async fn rank(
    core: &Core,
    request: v1::RankRequest,
    deadline: Option<Instant>,
) -> Result<v1::RankResponse, Status> {
    let n = request.candidates.len();
    let pairwise = check(core, &request, deadline)?;
    let reward = rank_reward(core, &request.reward)?;
    // The plan first, refused if too big before any candidate is decoded; failed candidates
    // are only dropped from it later.
    let planned = plan(core, &request, pairwise)?;
    let v1::RankRequest {
        prompt,
        candidates,
        instruction,
        ..
    } = request;
    let (images, errors, held) = prepare_candidates(core, candidates, deadline).await?;
    let failed: Vec<bool> = errors.iter().map(Option::is_some).collect();
    // The items to score: ordered pairs (reference i, candidate j) or single candidates.
    let units: Vec<(usize, usize)> = planned
        .into_iter()
        .filter(|&(i, j)| !failed[i] && !failed[j])
        .collect();
    let pair = Pair {
        prompt,
        instruction,
        pairwise,
        reward,
    };
    let scores = score_units(core, &pair, &units, images, held, deadline).await?;
    let mut candidates: Vec<v1::CandidateRanking> = (0..n)
        .map(|c| v1::CandidateRanking {
            index: c as u32,
            error: errors[c].as_ref().map(status::item_error),
            ..Default::default()
        })
        .collect();
    let (order, best, preference) = if pairwise {
        pairwise_response(&mut candidates, &units, &scores, &failed)
    } else {
        pointwise_response(&mut candidates, &units, &scores)
    };
    Ok(v1::RankResponse {
        candidates,
        order: order.into_iter().map(|c| c as u32).collect(),
        best: best.map(|c| c as u32),
        preference,
        comparisons: units.len() as u32,
        model_id: core.model_id.to_string(),
    })
}

/// The index of the reward a Rank call names (empty: the first); an unknown one fails the call.
fn rank_reward(core: &Core, name: &str) -> Result<usize, Status> {
    if name.is_empty() {
        return Ok(0);
    }
    convert::reward_indices(&[name.to_string()], &core.limits.rewards)
        .map(|r| r[0])
        .map_err(|e| Status::invalid_argument(e.message))
}

/// Checks what can be checked before any work: the number of candidates, the texts, the
/// deadline's budget and the method. Returns whether the ranking is pairwise.
fn check(
    core: &Core,
    request: &v1::RankRequest,
    deadline: Option<Instant>,
) -> Result<bool, Status> {
    let n = request.candidates.len();
    if n < 2 {
        return Err(Status::invalid_argument(
            "ranking needs at least two candidates",
        ));
    }
    // Before any image is decoded or any pair planned: N candidates cost N decodes and up to
    // N x (N - 1) pairs, so an 8 kB request of 4000 empty candidates must not reach either.
    if n > core.limits.max_rank_candidates {
        return Err(Status::invalid_argument(format!(
            "{n} candidates exceed the limit of {} per Rank request \
             (--max-rank-candidates)",
            core.limits.max_rank_candidates
        )));
    }
    if request.prompt.trim().is_empty() {
        return Err(Status::invalid_argument("prompt is empty"));
    }
    deadline::check_budget(deadline, n)?;
    let item_limits = &core.limits.item;
    let text_ok = convert::text("prompt", &request.prompt, item_limits).and_then(|()| {
        request
            .instruction
            .as_deref()
            .map_or(Ok(()), |i| convert::text("instruction", i, item_limits))
    });
    text_ok.map_err(|e| Status::invalid_argument(e.message))?;
    match v1::RankMethod::try_from(request.method) {
        Ok(v1::RankMethod::Unspecified | v1::RankMethod::Pairwise) => Ok(true),
        Ok(v1::RankMethod::Pointwise) => Ok(false),
        Err(_) => Err(Status::invalid_argument(format!(
            "unknown rank method {}",
            request.method
        ))),
    }
}

/// The comparisons to score: ordered pairs (reference, candidate) on the request's schedule,
/// or each candidate alone; refused when over the per-request item limit.
fn plan(
    core: &Core,
    request: &v1::RankRequest,
    pairwise: bool,
) -> Result<Vec<(usize, usize)>, Status> {
    let n = request.candidates.len();
    let planned: Vec<(usize, usize)> = if pairwise {
        let schedule = match request.opponents {
            0 => Schedule::AllPairs,
            k => Schedule::RandomOpponents {
                k: k as usize,
                seed: request.seed,
            },
        };
        schedule_pairs(n, schedule)
    } else {
        (0..n).map(|c| (c, c)).collect()
    };
    if planned.len() > core.limits.max_items_per_request {
        return Err(Status::invalid_argument(format!(
            "{n} candidates need {} comparisons, over the limit of {} per request; set \
             `opponents` to compare each candidate with fewer others",
            planned.len(),
            core.limits.max_items_per_request
        )));
    }
    Ok(planned)
}

/// Decodes and tiles each candidate once, through the engine's admission and
/// preprocessing pool (as `Score` items are): per candidate, its prepared image or the
/// error that leaves it out of the ranking. The returned tickets hold the candidates'
/// slots until the pairs are admitted, so a drain cannot end between the two phases.
async fn prepare_candidates(
    core: &Core,
    candidates: Vec<v1::Image>,
    deadline: Option<Instant>,
) -> Result<Prepared, Status> {
    let n = candidates.len();
    let mut errors: Vec<Option<ItemError>> = vec![None; n];
    let mut inputs = Vec::with_capacity(n);
    let mut positions = Vec::with_capacity(n);
    for (c, img) in candidates.into_iter().enumerate() {
        match convert::image(
            img,
            &format!("candidate {c}"),
            core.limits.item.max_image_pixels,
        ) {
            Ok(input) => {
                inputs.push(input);
                positions.push(c);
            }
            Err(e) => errors[c] = Some(e),
        }
    }
    core.check_capacity(inputs.len(), "candidates", "rank fewer candidates per call")?;
    let mut tickets = core
        .engine
        .prepare_images(inputs, engine_deadline(deadline))
        .map_err(|e| status::submit_status(&e))?;
    let total = tickets.len();
    let mut images = vec![None; n];
    let mut answered = 0;
    for (c, ticket) in positions.into_iter().zip(tickets.iter_mut()) {
        let answer = match deadline {
            None => ticket.wait().await,
            Some(at) => match tokio::time::timeout_at(at.into(), ticket.wait()).await {
                Ok(answer) => answer,
                Err(_) => return Err(deadline::exceeded(total - answered, total)),
            },
        };
        answered += 1;
        match answer {
            Ok(image) => images[c] = Some(image),
            Err(e) if e.kind == FailureKind::DeadlineExceeded => {
                return Err(deadline::exceeded(total - answered + 1, total))
            }
            Err(mut e) => {
                // Same code and reason as `Score` gives a broken image.
                e.message = format!("candidate {c}: {}", e.message);
                errors[c] = Some(e);
            }
        }
    }
    Ok((images, errors, tickets))
}

/// Per candidate: its prepared image (absent when it failed) and its error; and the tickets
/// that keep the call admitted until its pairs are.
type Prepared = (
    Vec<Option<Arc<PreparedImage>>>,
    Vec<Option<ItemError>>,
    Vec<ImageTicket>,
);

/// What every comparison of a call shares.
struct Pair {
    prompt: String,
    instruction: Option<String>,
    pairwise: bool,
    /// The reward to rank by.
    reward: usize,
}

impl Pair {
    /// The item comparing candidate `j` against reference `i` (pairwise), or scoring
    /// candidate `j` alone; it shares the candidates' prepared tiles, so nothing is decoded
    /// again.
    fn item(
        &self,
        images: &[Option<Arc<PreparedImage>>],
        i: usize,
        j: usize,
    ) -> Result<Work, ItemError> {
        let image = |c: usize| images[c].clone().map(ImageInput::Prepared).ok_or_else(lost);
        let candidate = Candidate::Image(image(j)?);
        let reference = if self.pairwise { Some(image(i)?) } else { None };
        Ok(Work {
            rewards: vec![self.reward],
            ..Work::from(ScoreItem {
                prompt: self.prompt.clone(),
                candidate,
                reference,
                instruction: self.instruction.clone(),
                mode: if self.pairwise {
                    Mode::Pairwise
                } else {
                    Mode::Pointwise
                },
            })
        })
    }
}

/// Scores the units through the engine (admitted as one call, continuing the candidates'
/// admission through `held`). Per unit, in order, its P(yes), or `None` when it failed.
async fn score_units(
    core: &Core,
    pair: &Pair,
    units: &[(usize, usize)],
    images: Vec<Option<Arc<PreparedImage>>>,
    held: Vec<ImageTicket>,
    deadline: Option<Instant>,
) -> Result<Vec<Option<f64>>, Status> {
    if units.is_empty() {
        return Ok(Vec::new());
    }
    let items = units
        .iter()
        .map(|&(i, j)| convert::Item {
            id: String::new(),
            work: pair.item(&images, i, j),
            stream_text: false,
            names: Vec::new(),
        })
        .collect();
    let admitted = core.admit(items, deadline, &tracing::Span::current(), &held)?;
    // The pairs hold their own slots now.
    drop(held);
    drop(images);
    Ok(collect(admitted, deadline, &core.model_id, None)
        .await?
        .results
        .into_iter()
        .map(|r| match r.outcome {
            Some(v1::item_result::Outcome::Score(s)) => Some(s.p_yes),
            _ => None,
        })
        .collect())
}

/// The pairwise ranking (Bradley-Terry): each candidate's wins and strength, the order, the
/// best candidate and the preference matrix.
fn pairwise_response(
    candidates: &mut [v1::CandidateRanking],
    units: &[(usize, usize)],
    scores: &[Option<f64>],
    failed: &[bool],
) -> (Vec<usize>, Option<usize>, Vec<v1::PreferenceRow>) {
    let scored: Vec<_> = units
        .iter()
        .zip(scores)
        .map(|(&(i, j), &p)| (i, j, p))
        .collect();
    let ranking = rank_pairwise(candidates.len(), &scored, failed);
    for (c, out) in candidates.iter_mut().enumerate() {
        out.wins = ranking.wins[c];
        out.strength = ranking.strengths[c];
    }
    let preference = ranking
        .preference
        .iter()
        .map(|row| v1::PreferenceRow {
            p: row.iter().map(|p| p.unwrap_or(f64::NAN)).collect(),
        })
        .collect();
    (ranking.order.clone(), ranking.best, preference)
}

/// The pointwise ranking: each candidate's P(yes), the order and the best candidate.
fn pointwise_response(
    candidates: &mut [v1::CandidateRanking],
    units: &[(usize, usize)],
    scores: &[Option<f64>],
) -> (Vec<usize>, Option<usize>, Vec<v1::PreferenceRow>) {
    let mut p_yes = vec![None; candidates.len()];
    for (&(c, _), &p) in units.iter().zip(scores) {
        p_yes[c] = p;
    }
    for (c, out) in candidates.iter_mut().enumerate() {
        out.p_yes = p_yes[c];
    }
    let order = rank_pointwise(&p_yes);
    let best = order.first().copied().filter(|&c| p_yes[c].is_some());
    (order, best, Vec::new())
}

/// A pair refers to a candidate that has no image (cannot happen: failed ones are left out).
fn lost() -> ItemError {
    ItemError::new(FailureKind::Internal, "a ranked candidate lost its image")
}
