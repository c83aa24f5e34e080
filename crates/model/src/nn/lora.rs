//! Unmerged LoRA: several adapters on one set of base weights, chosen per row of a batch.
//!
//! A linear layer holds its base weight once and, per adapter slot, an optional low-rank
//! update `Δy = s · (x Aᵀ) Bᵀ` (peft's unmerged LoRA forward, dropout off). A batch says which
//! rows use which slot ([`AdapterRows`]); the base matmul runs over all rows at once, each
//! adapter's two thin matmuls over its own rows only (gathered, then added back in place).

use candle_core::{Device, Result, Tensor};

/// One adapter's update of one linear layer.
#[derive(Debug, Clone)]
pub struct LoraUpdate {
    /// `(r, in)`.
    a: Tensor,
    /// `(out, r)`.
    b: Tensor,
    scale: f64,
}

impl LoraUpdate {
    /// From peft's `lora_A` `(r, in)`, `lora_B` `(out, r)` and scale, on `like`'s device and
    /// dtype.
    pub fn new(a: &Tensor, b: &Tensor, scale: f64, like: &Tensor) -> Result<Self> {
        let to = |t: &Tensor| t.to_device(like.device())?.to_dtype(like.dtype());
        Ok(LoraUpdate {
            a: to(a)?,
            b: to(b)?,
            scale,
        })
    }

    /// `s · (x Aᵀ) Bᵀ` for rows `x` `(n, in)`.
    pub fn delta(&self, x: &Tensor) -> Result<Tensor> {
        x.matmul(&self.a.t()?)?.matmul(&self.b.t()?)? * self.scale
    }

    /// The backward of [`Self::delta`]: `s · (dy B) A` for `dy` `(n, out)`.
    pub fn delta_backward(&self, dy: &Tensor) -> Result<Tensor> {
        dy.matmul(&self.b)?.matmul(&self.a)? * self.scale
    }

    /// The update restricted to rows of the output: `B`'s rows `rows` (for a fused weight
    /// split into several layers, e.g. InternLM2's `wqkv`).
    pub fn with_b(&self, b: Tensor) -> LoraUpdate {
        LoraUpdate {
            a: self.a.clone(),
            b,
            scale: self.scale,
        }
    }

    /// `B`, `(out, r)`.
    pub fn b(&self) -> &Tensor {
        &self.b
    }
}

/// Which adapter slot each row of a batch uses.
#[derive(Debug, Clone)]
pub enum AdapterRows {
    /// Every row uses the base weights.
    Base,
    /// Every row uses slot `.0`.
    All(usize),
    /// Rows `.1` (u32 indices) use slot `.0`; other rows the base.
    Groups(Vec<(usize, Tensor)>),
}

impl AdapterRows {
    /// For consecutive runs of rows: `lens[i]` rows use `slots[i]`.
    pub fn of_runs(lens: &[usize], slots: &[Option<usize>], device: &Device) -> Result<Self> {
        let mut per_slot: Vec<(usize, Vec<u32>)> = Vec::new();
        let mut start = 0u32;
        for (&len, &slot) in lens.iter().zip(slots) {
            if let Some(s) = slot {
                let rows = start..start + len as u32;
                match per_slot.iter_mut().find(|(k, _)| *k == s) {
                    Some((_, v)) => v.extend(rows),
                    None => per_slot.push((s, rows.collect())),
                }
            }
            start += len as u32;
        }
        let total = start as usize;
        Ok(match per_slot.as_slice() {
            [] => AdapterRows::Base,
            [(s, rows)] if rows.len() == total => AdapterRows::All(*s),
            _ => AdapterRows::Groups(
                per_slot
                    .into_iter()
                    .map(|(s, rows)| Ok((s, Tensor::new(rows, device)?)))
                    .collect::<Result<_>>()?,
            ),
        })
    }

    /// One row per entry of `slots`.
    pub fn of_rows(slots: &[Option<usize>], device: &Device) -> Result<Self> {
        Self::of_runs(&vec![1; slots.len()], slots, device)
    }

    /// `y + Σ_slot delta_slot(x[rows_slot])` placed at those rows, for 2-D `x` `(n, in)` and
    /// `y` `(n, out)`; `update(slot)` is the layer's update of a slot, if it has one.
    pub fn add<'a>(
        &self,
        x: &Tensor,
        y: Tensor,
        update: impl Fn(usize) -> Option<&'a LoraUpdate>,
        backward: bool,
    ) -> Result<Tensor> {
        let apply = |u: &LoraUpdate, x: &Tensor| {
            if backward {
                u.delta_backward(x)
            } else {
                u.delta(x)
            }
        };
        match self {
            AdapterRows::Base => Ok(y),
            AdapterRows::All(s) => match update(*s) {
                Some(u) => y + apply(u, x)?,
                None => Ok(y),
            },
            AdapterRows::Groups(groups) => {
                let mut y = y;
                for (s, rows) in groups {
                    if let Some(u) = update(*s) {
                        let d = apply(u, &x.index_select(rows, 0)?)?;
                        y = y.index_add(rows, &d, 0)?;
                    }
                }
                Ok(y)
            }
        }
    }
}
