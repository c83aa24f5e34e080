//! `Info`: what the server runs (model, dtype, devices), its limits and the prompt contract,
//! computed once at start from the engine's [`ModelInfo`](rewarddance_model::ModelInfo) and
//! the `serve` flags.

use rewarddance_engine::Engine;
use rewarddance_model::info::RewardInfo;
use rewarddance_model::text::prompt::Instructions;
use rewarddance_model::Mode;
use rewarddance_proto::v1;
use tonic::{Request, Response, Status};

use crate::calls::Call;
use crate::config::ServerArgs;

/// Handles one `Info` call with the answer computed at start.
pub(crate) fn handle(
    info: &v1::InfoResponse,
    request: Request<v1::InfoRequest>,
) -> Result<Response<v1::InfoResponse>, Status> {
    Call::start("Info", &request).finish(tonic::Code::Ok);
    Ok(Response::new(info.clone()))
}

/// The Info answer.
pub(crate) fn response(engine: &Engine, args: &ServerArgs) -> v1::InfoResponse {
    let model = engine.model_info();
    // What an item naming no reward gets: the first reward's answers and instructions.
    let rewards: Vec<v1::RewardInfo> = model.rewards.iter().map(reward).collect();
    let (answer_tokens, default_instructions) = match rewards.first() {
        Some(first) => (first.answer_tokens.clone(), first.instructions.clone()),
        None => (
            Some(v1::AnswerTokens {
                yes: model.answers.yes.clone(),
                no: model.answers.no.clone(),
                yes_id: model.answer_ids.0,
                no_id: model.answer_ids.1,
            }),
            instructions(&Instructions::default()),
        ),
    };
    v1::InfoResponse {
        model_id: model.id.clone(),
        layout: model.layout.clone(),
        dtype: format!("{:?}", model.dtype).to_lowercase(),
        devices: engine.devices().to_vec(),
        limits: Some(v1::Limits {
            max_batch_tokens: args.max_batch_tokens as u32,
            max_batch_items: args.max_batch_items as u32,
            max_items_per_request: args.max_items_per_request as u32,
            max_message_bytes: args.max_message_bytes as u64,
            max_grad_message_bytes: args.max_grad_message_bytes as u64,
            max_gradient_tiles: args.max_gradient_tiles as u32,
            max_image_pixels: model.limits.max_image_pixels,
            max_tiles_per_item: model.limits.max_tiles_per_item as u32,
            max_tokens_per_item: model.limits.max_tokens_per_item as u32,
            max_queue_items: args.max_queue_items as u32,
            max_stream_in_flight: args.max_stream_in_flight as u32,
            max_rationale_tokens: args.max_rationale_tokens,
            default_rationale_tokens: args.default_rationale_tokens.min(args.max_rationale_tokens),
            max_decoding_sequences: args.max_decoding_sequences as u32,
        }),
        answer_tokens,
        default_instructions,
        server_version: env!("CARGO_PKG_VERSION").to_string(),
        tile_size: model.tile_size,
        tokens_per_tile: model.tokens_per_tile,
        rewards,
    }
}

/// The instruction per mode and candidate kind under `own` (else the defaults).
fn instructions(own: &Instructions) -> Vec<v1::DefaultInstruction> {
    [
        (Mode::Pointwise, false, v1::Mode::Pointwise),
        (Mode::Pointwise, true, v1::Mode::Pointwise),
        (Mode::Pairwise, false, v1::Mode::Pairwise),
    ]
    .into_iter()
    .map(|(mode, video, proto_mode)| v1::DefaultInstruction {
        mode: proto_mode as i32,
        video,
        template: own.for_item(mode, video).to_string(),
    })
    .collect()
}

/// One named reward on the wire.
fn reward(r: &RewardInfo) -> v1::RewardInfo {
    let (yes_id, no_id) = r.answer_ids;
    v1::RewardInfo {
        name: r.name.clone(),
        adapter: r.adapter.as_ref().map(|a| v1::AdapterInfo {
            path: a.source.clone(),
            rank: a.rank as u32,
            alpha: a.alpha,
            rslora: a.rslora,
            merged: r.merged,
            modules: a.modules.clone(),
            replaced: a.replaced.clone(),
        }),
        answer_tokens: Some(v1::AnswerTokens {
            yes: r.answers.yes.clone(),
            no: r.answers.no.clone(),
            yes_id,
            no_id,
        }),
        instructions: instructions(&r.instructions),
        mode: match r.mode {
            None => v1::Mode::Unspecified,
            Some(Mode::Pointwise) => v1::Mode::Pointwise,
            Some(Mode::Pairwise) => v1::Mode::Pairwise,
        } as i32,
    }
}
