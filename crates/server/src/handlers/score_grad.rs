//! `ScoreGrad`: each item's reward and its gradient with respect to its float candidate
//! image(s), for training a generator through the reward. Items are `ScoreItem`s; the engine
//! runs them as [`Task::Gradient`] (batches of their own, taking turns with score batches).

use rewarddance_engine::{ItemError, ItemResult, Task, Work};
use rewarddance_model::image::FloatFormat;
use rewarddance_model::pipeline::gradient::Objective;
use rewarddance_proto::v1;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::calls::Call;
use crate::convert;
use crate::deadline::{self, Arrived};
use crate::limits::Limits;
use crate::shared::{collect_results, Core, ItemAdmitError};

/// Handles one `ScoreGrad` call.
pub(crate) async fn handle(
    core: &Core,
    request: Request<v1::ScoreGradRequest>,
) -> Result<Response<v1::ScoreGradResponse>, Status> {
    let mut call = Call::start("ScoreGrad", &request);
    let deadline = deadline::deadline_of(request.metadata(), Arrived::of(request.extensions()));
    let body = request.into_inner();
    call.items(body.items.len());
    let span = tracing::info_span!("score_grad", items = body.items.len());
    let result = async {
        deadline::check_budget(deadline, body.items.len())?;
        let objective = objective(body.objective)?;
        let f32_out = body.f32_gradients;
        let (items, formats) =
            request_items(body.items, &core.limits, objective).map_err(ItemAdmitError::Invalid)?;
        let pending = core.admit(items, deadline, &tracing::Span::current(), &[])?;
        let answered = collect_results(pending, deadline).await?;
        let results: Vec<v1::GradResult> = answered
            .into_iter()
            .map(|(index, id, r)| result(id, index, &r, &formats[index], f32_out))
            .collect();
        Ok(Response::new(v1::ScoreGradResponse {
            timing: Some(convert::request_timing_of(
                results.iter().map(|r| r.timing.as_ref()),
            )),
            results,
            model_id: core.model_id.to_string(),
        }))
    }
    .instrument(span)
    .await;
    call.finish_with(&result);
    result
}

/// The request's objective (UNSPECIFIED: P_YES); an unknown value fails the call.
fn objective(value: i32) -> Result<Objective, ItemAdmitError> {
    match v1::Objective::try_from(value) {
        Ok(v1::Objective::Unspecified | v1::Objective::PYes) => Ok(Objective::PYes),
        Ok(v1::Objective::LogPYes) => Ok(Objective::LogPYes),
        Ok(v1::Objective::LogitMargin) => Ok(Objective::LogitMargin),
        Err(_) => Err(ItemAdmitError::Invalid(format!(
            "unknown objective {value}"
        ))),
    }
}

/// Each item as gradient work, with the wire format of each of its float candidate images
/// (what its gradients are sent back in); an item without a float candidate, or asking for a
/// rationale, is that item's error.
fn request_items(
    items: Vec<v1::ScoreItem>,
    limits: &Limits,
    objective: Objective,
) -> Result<(Vec<convert::Item>, Vec<Vec<FloatFormat>>), String> {
    convert::check_count(items.len(), limits)?;
    Ok(items
        .into_iter()
        .map(|proto| {
            let id = proto.id.clone();
            let formats = candidate_formats(&proto);
            let work = formats.clone().and_then(|_| {
                if proto.rationale.is_some() {
                    return Err(convert::invalid(
                        "ScoreGrad does not decode rationales: remove `rationale`",
                    ));
                }
                if proto.rewards.len() > 1 {
                    return Err(convert::invalid(
                        "ScoreGrad differentiates one reward per item: name at most one",
                    ));
                }
                let rewards = convert::reward_indices(&proto.rewards, &limits.rewards)?;
                let item = convert::item(proto, &limits.item)?;
                Ok(Work {
                    item,
                    task: Task::Gradient(objective),
                    rewards,
                })
            });
            (
                convert::Item {
                    id,
                    work,
                    stream_text: false,
                    names: Vec::new(),
                },
                formats.unwrap_or_default(),
            )
        })
        .unzip())
}

/// The wire format of every candidate image, which must all be floats.
fn candidate_formats(item: &v1::ScoreItem) -> Result<Vec<FloatFormat>, ItemError> {
    let images: Vec<&v1::Image> = match &item.candidate {
        Some(v1::score_item::Candidate::Image(img)) => vec![img],
        Some(v1::score_item::Candidate::Video(video)) => video.frames.iter().collect(),
        None => return Err(convert::invalid("no candidate: set `image` or `video`")),
    };
    images
        .iter()
        .enumerate()
        .map(|(i, img)| match &img.source {
            Some(v1::image::Source::Float(f)) => convert::float_format(f, "candidate"),
            _ => Err(convert::invalid(format!(
                "candidate image {i} is not a float image: ScoreGrad differentiates \
                 `Image.float` candidates (send the pixels as floats)"
            ))),
        })
        .collect()
}

/// One item's answer: its score, objective and gradients in its candidates' formats.
fn result(
    id: String,
    index: usize,
    r: &ItemResult,
    formats: &[FloatFormat],
    f32_out: bool,
) -> v1::GradResult {
    let base = convert::result(id, index, r);
    let outcome = base.outcome.map(|o| match o {
        v1::item_result::Outcome::Score(s) => v1::grad_result::Outcome::Score(s),
        v1::item_result::Outcome::Error(e) => v1::grad_result::Outcome::Error(e),
    });
    let (objective, gradients) = match &r.gradient {
        Some(g) => {
            let gradients = g
                .images
                .iter()
                .flatten()
                .zip(formats)
                .map(|(image, format)| v1::FloatImage {
                    width: image.width,
                    height: image.height,
                    layout: if format.planar {
                        v1::PixelLayout::Chw
                    } else {
                        v1::PixelLayout::Hwc
                    } as i32,
                    dtype: if format.bf16 && !f32_out {
                        v1::PixelDtype::Bf16
                    } else {
                        v1::PixelDtype::F32
                    } as i32,
                    range: if format.signed {
                        v1::PixelRange::Signed
                    } else {
                        v1::PixelRange::Unit
                    } as i32,
                    data: format.encode_gradient(&image.values, f32_out),
                })
                .collect();
            (g.objective, gradients)
        }
        None => (0.0, Vec::new()),
    };
    v1::GradResult {
        id: base.id,
        index: base.index,
        outcome,
        objective,
        gradients,
        timing: base.timing,
    }
}
