//! `Rank`: N candidates for one prompt, ranked pairwise (Bradley-Terry over a schedule of
//! ordered pairs) or pointwise, on top of the same admission path as `Score`.
//!
//! Each candidate image is decoded and tiled once up front, through the engine's admission
//! and preprocessing pool like any item, so a broken one is reported as that candidate's
//! error (not as a failure of every pair it appears in), and N candidates cost N decodes and
//! N images' tiles in memory, not 2 (N - 1) + 1 each. The pairs then go through the engine
//! like any scored items, sharing those tiles, where identical images are encoded once per
//! batch and the shared prefix (system prompt + reference image) is computed once.

use std::sync::Arc;
use std::time::Instant;

use rewarddance_engine::{FailureKind, ItemError, Work};
use rewarddance_model::{Candidate, ImageInput, Mode, PreparedImage, ScoreItem};
use rewarddance_proto::v1;
use rewarddance_ranking::{rank_pairwise, rank_pointwise, schedule_pairs, Schedule};
use tonic::Status;

use crate::convert;
use crate::deadline::{self, engine_deadline};
use crate::service::{collect, RewardApi};
use crate::status;

impl RewardApi {
    /// Handles one `Rank` call (see the proto for the contract).
    pub(crate) async fn rank_candidates(
        &self,
        request: v1::RankRequest,
        deadline: Option<Instant>,
    ) -> Result<v1::RankResponse, Status> {
        let n = request.candidates.len();
        if n < 2 {
            return Err(Status::invalid_argument(
                "ranking needs at least two candidates",
            ));
        }
        // Before any image is decoded or any pair planned: N candidates cost N decodes and up to
        // N x (N - 1) pairs, so an 8 kB request of 4000 empty candidates must not reach either.
        if n > self.limits.max_rank_candidates {
            return Err(Status::invalid_argument(format!(
                "{n} candidates exceed the limit of {} per Rank request \
                 (--max-rank-candidates)",
                self.limits.max_rank_candidates
            )));
        }
        if request.prompt.trim().is_empty() {
            return Err(Status::invalid_argument("prompt is empty"));
        }
        deadline::check_budget(deadline, n)?;
        let item_limits = &self.limits.item;
        let text_ok = convert::text("prompt", &request.prompt, item_limits).and_then(|()| {
            request
                .instruction
                .as_deref()
                .map_or(Ok(()), |i| convert::text("instruction", i, item_limits))
        });
        text_ok.map_err(|e| Status::invalid_argument(e.message))?;
        let pairwise = match v1::RankMethod::try_from(request.method) {
            Ok(v1::RankMethod::Unspecified | v1::RankMethod::Pairwise) => true,
            Ok(v1::RankMethod::Pointwise) => false,
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "unknown rank method {}",
                    request.method
                )))
            }
        };
        // The plan first, refused if too big before any candidate is decoded; failed
        // candidates are only dropped from it later.
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
        if planned.len() > self.limits.max_items_per_request {
            return Err(Status::invalid_argument(format!(
                "{n} candidates need {} comparisons, over the limit of {} per request; set \
                 `opponents` to compare each candidate with fewer others",
                planned.len(),
                self.limits.max_items_per_request
            )));
        }
        let (images, errors, held) = self
            .prepare_candidates(request.candidates, deadline)
            .await?;
        let failed: Vec<bool> = errors.iter().map(Option::is_some).collect();
        // The items to score: ordered pairs (reference i, candidate j) or single candidates.
        let units: Vec<(usize, usize)> = planned
            .into_iter()
            .filter(|&(i, j)| !failed[i] && !failed[j])
            .collect();
        let scores = if units.is_empty() {
            Vec::new()
        } else {
            // Every pair shares its two candidates' prepared tiles: nothing is decoded again.
            let image = |c: usize| images[c].clone().map(ImageInput::Prepared);
            let converted = units
                .iter()
                .map(|&(i, j)| {
                    let item = ScoreItem {
                        prompt: request.prompt.clone(),
                        candidate: Candidate::Image(image(j).ok_or_else(lost)?),
                        reference: if pairwise {
                            Some(image(i).ok_or_else(lost)?)
                        } else {
                            None
                        },
                        instruction: request.instruction.clone(),
                        mode: if pairwise {
                            Mode::Pairwise
                        } else {
                            Mode::Pointwise
                        },
                    };
                    Ok((Work::from(item), false))
                })
                .collect();
            let admitted = self.admit_converted(
                vec![String::new(); units.len()],
                converted,
                deadline,
                &tracing::Span::current(),
                &held,
            )?;
            // The pairs hold their own slots now.
            drop(held);
            drop(images);
            collect(admitted, deadline, &self.model_id, None)
                .await?
                .results
                .into_iter()
                .map(|r| match r.outcome {
                    Some(v1::item_result::Outcome::Score(s)) => Some(s.p_yes),
                    _ => None,
                })
                .collect()
        };

        let mut candidates: Vec<v1::CandidateRanking> = (0..n)
            .map(|c| v1::CandidateRanking {
                index: c as u32,
                error: errors[c].as_ref().map(status::item_error),
                ..Default::default()
            })
            .collect();
        let (order, best, preference) = if pairwise {
            let scored: Vec<_> = units
                .iter()
                .zip(&scores)
                .map(|(&(i, j), &p)| (i, j, p))
                .collect();
            let ranking = rank_pairwise(n, &scored, &failed);
            for (c, out) in candidates.iter_mut().enumerate() {
                out.wins = ranking.wins[c];
                out.strength = ranking.strengths[c];
            }
            let order = ranking.order.clone();
            let preference = ranking
                .preference
                .iter()
                .map(|row| v1::PreferenceRow {
                    p: row.iter().map(|p| p.unwrap_or(f64::NAN)).collect(),
                })
                .collect();
            (order, ranking.best, preference)
        } else {
            let mut p_yes = vec![None; n];
            for (&(c, _), &p) in units.iter().zip(&scores) {
                p_yes[c] = p;
            }
            for (c, out) in candidates.iter_mut().enumerate() {
                out.p_yes = p_yes[c];
            }
            let order = rank_pointwise(&p_yes);
            let best = order.first().copied().filter(|&c| p_yes[c].is_some());
            (order, best, Vec::new())
        };
        Ok(v1::RankResponse {
            candidates,
            order: order.into_iter().map(|c| c as u32).collect(),
            best: best.map(|c| c as u32),
            preference,
            comparisons: units.len() as u32,
            model_id: self.model_id.to_string(),
        })
    }

    /// Decodes and tiles each candidate once, through the engine's admission and
    /// preprocessing pool (as `Score` items are): per candidate, its prepared image or the
    /// error that leaves it out of the ranking. The returned tickets hold the candidates'
    /// slots until the pairs are admitted, so a drain cannot end between the two phases.
    async fn prepare_candidates(
        &self,
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
                self.limits.item.max_image_pixels,
            ) {
                Ok(input) => {
                    inputs.push(input);
                    positions.push(c);
                }
                Err(e) => errors[c] = Some(e),
            }
        }
        self.check_capacity(inputs.len(), "candidates", "rank fewer candidates per call")?;
        let mut tickets = self
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
}

/// Per candidate: its prepared image (absent when it failed) and its error; and the tickets
/// that keep the call admitted until its pairs are.
type Prepared = (
    Vec<Option<Arc<PreparedImage>>>,
    Vec<Option<ItemError>>,
    Vec<rewarddance_engine::ImageTicket>,
);

/// A pair refers to a candidate that has no image (cannot happen: failed ones are left out).
fn lost() -> ItemError {
    ItemError::new(FailureKind::Internal, "a ranked candidate lost its image")
}
