//! Where InternVL's parts live in each layout's checkpoint.

use candle_nn::VarBuilder;

use super::config::CheckpointLayout;

/// The weights of each part of an InternVL checkpoint.
pub(super) struct Parts {
    pub vision: VarBuilder<'static>,
    pub projector: VarBuilder<'static>,
    pub text: VarBuilder<'static>,
    pub head: VarBuilder<'static>,
}

/// Finds each part under `vb`, the checkpoint's root.
pub(super) fn locate(layout: CheckpointLayout, vb: &VarBuilder<'static>) -> Parts {
    let parts = |vision, projector, text, head| Parts {
        vision: vb.pp(vision),
        projector: vb.pp(projector),
        text: vb.pp(text),
        head: vb.pp(head),
    };
    match layout {
        // transformers >= 4.52 in memory (and some saves): `model.*` + `lm_head`.
        CheckpointLayout::HuggingFace
            if vb.contains_tensor("model.vision_tower.embeddings.cls_token") =>
        {
            parts(
                "model.vision_tower",
                "model.multi_modal_projector",
                "model.language_model",
                "lm_head",
            )
        }
        // The published `-hf` checkpoints (and transformers 5 `save_pretrained`).
        CheckpointLayout::HuggingFace => parts(
            "vision_tower",
            "multi_modal_projector",
            "language_model.model",
            "language_model.lm_head",
        ),
        CheckpointLayout::OpenGvLab => parts(
            "vision_model",
            "mlp1",
            "language_model.model",
            "language_model.lm_head",
        ),
    }
}

/// The same parts under the two names the HF layout has: transformers >= 4.52 in memory
/// (what peft and ms-swift name an adapter's modules by) and the published files.
const HF_RENAMES: [(&str, &str); 4] = [
    ("model.language_model.", "language_model.model."),
    ("model.vision_tower.", "vision_tower."),
    ("model.multi_modal_projector.", "multi_modal_projector."),
    ("lm_head.", "language_model.lm_head."),
];

/// The checkpoint's name for the tensor an adapter calls `name` (a module path and its
/// parameter), if `has` it: the name itself, else its HF-layout rename either way.
pub(crate) fn adapter_tensor_name(name: &str, has: &dyn Fn(&str) -> bool) -> Option<String> {
    if has(name) {
        return Some(name.to_string());
    }
    HF_RENAMES
        .iter()
        .flat_map(|&(memory, disk)| [(memory, disk), (disk, memory)])
        .filter_map(|(from, to)| name.strip_prefix(from).map(|rest| format!("{to}{rest}")))
        .find(|candidate| has(candidate))
}
