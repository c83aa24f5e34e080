//! LoRA wrapped inside an OpenGVLab checkpoint, merged as the model loads.
//!
//! InternVL's fine-tuning (`internvl_chat/internvl/model/internvl_chat/modeling_internvl_chat.py`,
//! `wrap_backbone_lora` / `wrap_llm_lora`, OpenGVLab/InternVL) wraps the vision model and/or
//! the language model with peft and saves the wrapped state dict: `config.json` records the
//! ranks (`use_backbone_lora`, `use_llm_lora`), and the tensors are named
//! `<part>.base_model.model.<module>.base_layer.<param>` for adapted modules (their LoRA in
//! `<part>.base_model.model.<module>.lora_{A,B}.default.weight`) and
//! `<part>.base_model.model.<rest>` for the others. Both wraps use `lora_alpha = 2 r`, so the
//! merged weight is `W + 2 · B A`.
//!
//! This weight source answers the plain names the model loads (`language_model.model.…`,
//! `vision_model.…`) from the wrapped ones. A part whose rank is set but that yields no LoRA
//! module fails the load: the checkpoint would otherwise score as its base.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;

use super::config::WrappedLoraRanks;
use crate::error::{Error, Result};
use crate::runtime::adapter::add_low_rank;

/// The wrapped parts, their `config.json` key, and the index of their counter.
const PARTS: [(&str, &str); 2] = [
    ("vision_model.", "use_backbone_lora"),
    ("language_model.", "use_llm_lora"),
];

/// `base` answering plain names with the wrapped LoRA of `ranks` merged in, and the check to
/// run once the model has loaded.
pub fn merged(base: VarBuilder<'static>, ranks: WrappedLoraRanks) -> (WrappedLora, WrappedCheck) {
    let merged = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
    (
        WrappedLora {
            base,
            ranks: [ranks.backbone, ranks.llm],
            merged: merged.clone(),
        },
        WrappedCheck {
            ranks: [ranks.backbone, ranks.llm],
            merged,
        },
    )
}

/// A weight source over a checkpoint with wrapped LoRA.
pub struct WrappedLora {
    base: VarBuilder<'static>,
    ranks: [usize; 2],
    merged: Arc<[AtomicUsize; 2]>,
}

/// Whether every part with a wrapped rank had LoRA modules merged.
pub struct WrappedCheck {
    ranks: [usize; 2],
    merged: Arc<[AtomicUsize; 2]>,
}

impl WrappedCheck {
    /// Fails when a part's rank is set in `config.json` but none of its modules had LoRA.
    pub fn check(&self) -> Result<()> {
        for (i, (part, key)) in PARTS.iter().enumerate() {
            if self.ranks[i] > 0 && self.merged[i].load(Ordering::Relaxed) == 0 {
                return Err(Error::Checkpoint(format!(
                    "config.json sets {key} = {} but no {part}base_model.model.*.lora_A.default.weight \
                     was found for the modules the model loads",
                    self.ranks[i]
                )));
            }
        }
        Ok(())
    }
}

/// Where a plain name lives in the wrapped checkpoint.
struct Wrapped {
    /// The base tensor's stored name.
    stored: String,
    /// `(lora_A, lora_B)` names when the module is adapted.
    lora: Option<(String, String)>,
    part: usize,
}

impl WrappedLora {
    fn locate(&self, name: &str) -> Option<Wrapped> {
        if self.base.contains_tensor(name) {
            return None;
        }
        let (part, prefix) = PARTS
            .iter()
            .enumerate()
            .find(|(i, (p, _))| self.ranks[*i] > 0 && name.starts_with(p))
            .map(|(i, (p, _))| (i, *p))?;
        let rest = &name[prefix.len()..];
        let wrapped = format!("{prefix}base_model.model.");
        let (module, param) = rest.rsplit_once('.')?;
        let layer = format!("{wrapped}{module}.base_layer.{param}");
        if self.base.contains_tensor(&layer) {
            let a = format!("{wrapped}{module}.lora_A.default.weight");
            let b = format!("{wrapped}{module}.lora_B.default.weight");
            let lora = (param == "weight" && self.base.contains_tensor(&a)).then_some((a, b));
            return Some(Wrapped {
                stored: layer,
                lora,
                part,
            });
        }
        let plain = format!("{wrapped}{rest}");
        self.base.contains_tensor(&plain).then_some(Wrapped {
            stored: plain,
            lora: None,
            part,
        })
    }

    fn read(
        &self,
        name: &str,
        shape: Option<(Shape, candle_nn::Init)>,
        dtype: DType,
    ) -> candle_core::Result<Tensor> {
        let get = |stored: &str, dtype: DType| match &shape {
            Some((s, h)) => self.base.get_with_hints_dtype(s.clone(), stored, *h, dtype),
            None => self.base.get_unchecked_dtype(stored, dtype),
        };
        let Some(w) = self.locate(name) else {
            return get(name, dtype);
        };
        let wide = if w.lora.is_some() { DType::F32 } else { dtype };
        let base = get(&w.stored, wide)?;
        let Some((a, b)) = &w.lora else {
            return Ok(base);
        };
        let (a, b) = (
            self.base.get_unchecked_dtype(a, DType::F32)?,
            self.base.get_unchecked_dtype(b, DType::F32)?,
        );
        let rank = self.ranks[w.part];
        let dims = base.dims().to_vec();
        if dims.len() != 2 || a.dims() != [rank, dims[1]] || b.dims() != [dims[0], rank] {
            candle_core::bail!(
                "{}: wrapped LoRA of {name} is {:?} x {:?}, not rank {rank} for {dims:?} ({} = {rank})",
                w.stored,
                b.dims(),
                a.dims(),
                PARTS[w.part].1
            );
        }
        self.merged[w.part].fetch_add(1, Ordering::Relaxed);
        // Both wraps use lora_alpha = 2 r.
        add_low_rank(&base, &a, &b, 2.0, false, dtype)
    }
}

impl SimpleBackend for WrappedLora {
    fn get(
        &self,
        s: Shape,
        name: &str,
        h: candle_nn::Init,
        dtype: DType,
        _: &Device,
    ) -> candle_core::Result<Tensor> {
        self.read(name, Some((s, h)), dtype)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, _: &Device) -> candle_core::Result<Tensor> {
        self.read(name, None, dtype)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.base.contains_tensor(name) || self.locate(name).is_some()
    }
}
