//! `Rank`: N candidates for one prompt, ranked pairwise (Bradley-Terry over a schedule of
//! ordered pairs) or pointwise, on top of the same admission path as `Score`.
//!
//! Each candidate image is decoded once up front so a broken one is reported as that
//! candidate's error (not as a failure of every pair it appears in); the pairs themselves go
//! through the engine like any scored items, where identical images are encoded once per batch
//! and the shared prefix (system prompt + reference image) is computed once.

use std::time::Instant;

use rewarddance_engine::{FailureKind, ItemError};
use rewarddance_model::image::{decode, DecodeLimits};
use rewarddance_model::ranking::{rank_pairwise, rank_pointwise, schedule_pairs, Schedule};
use rewarddance_proto::v1;
use tonic::Status;

use crate::service::{collect, ItemAdmitError, RewardApi};
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
        let pairwise = !matches!(
            v1::RankMethod::try_from(request.method),
            Ok(v1::RankMethod::Pointwise)
        );
        let errors = self.check_candidates(&request.candidates).await;
        let failed: Vec<bool> = errors.iter().map(Option::is_some).collect();

        // The items to score: ordered pairs (reference i, candidate j) or single candidates.
        let units: Vec<(usize, usize)> = if pairwise {
            let schedule = match request.opponents {
                0 => Schedule::AllPairs,
                k => Schedule::RandomOpponents {
                    k: k as usize,
                    seed: request.seed,
                },
            };
            schedule_pairs(n, schedule)
                .into_iter()
                .filter(|&(i, j)| !failed[i] && !failed[j])
                .collect()
        } else {
            (0..n).filter(|&c| !failed[c]).map(|c| (c, c)).collect()
        };
        if units.len() > self.limits.max_items_per_request {
            return Err(Status::invalid_argument(format!(
                "{n} candidates need {} comparisons, over the limit of {} per request; set \
                 `opponents` to compare each candidate with fewer others",
                units.len(),
                self.limits.max_items_per_request
            )));
        }
        let scores = if units.is_empty() {
            Vec::new()
        } else {
            let items = units
                .iter()
                .map(|&(i, j)| v1::ScoreItem {
                    id: String::new(),
                    prompt: request.prompt.clone(),
                    candidate: Some(v1::score_item::Candidate::Image(
                        request.candidates[j].clone(),
                    )),
                    reference: pairwise.then(|| request.candidates[i].clone()),
                    instruction: request.instruction.clone(),
                    mode: if pairwise {
                        v1::Mode::Pairwise
                    } else {
                        v1::Mode::Pointwise
                    } as i32,
                    rationale: None,
                })
                .collect();
            let admitted = self
                .admit(
                    v1::ScoreRequest { items },
                    deadline,
                    &tracing::Span::current(),
                )
                .map_err(|e| match e {
                    ItemAdmitError::Invalid(msg) => Status::invalid_argument(msg),
                    ItemAdmitError::Refused(e) => status::submit_status(&e),
                })?;
            collect(admitted, deadline, &self.model_id, None)
                .await
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

    /// Decodes each candidate once (off the async runtime): `Some(error)` for the broken ones.
    async fn check_candidates(&self, candidates: &[v1::Image]) -> Vec<Option<ItemError>> {
        let limits = DecodeLimits {
            max_pixels: self.limits.max_image_pixels,
        };
        let mut out = Vec::with_capacity(candidates.len());
        for (c, img) in candidates.iter().enumerate() {
            let probe = v1::ScoreItem {
                id: String::new(),
                prompt: "-".into(),
                candidate: Some(v1::score_item::Candidate::Image(img.clone())),
                reference: None,
                instruction: None,
                mode: v1::Mode::Pointwise as i32,
                rationale: None,
            };
            let checked = match crate::convert::item(probe, limits.max_pixels) {
                Err(e) => Some(e),
                Ok(rewarddance_model::ScoreItem {
                    candidate: rewarddance_model::Candidate::Image(input),
                    ..
                }) => tokio::task::spawn_blocking(move || decode(&input, &limits).err())
                    .await
                    .unwrap_or(None)
                    .map(|e| {
                        // Same code and reason as `Score` gives a broken image.
                        let mut err = ItemError::from_model(&e);
                        err.message = format!("candidate {c}: {}", err.message);
                        err
                    }),
                Ok(_) => Some(ItemError::new(
                    FailureKind::InvalidArgument,
                    "candidate is not an image",
                )),
            };
            out.push(checked);
        }
        out
    }
}
