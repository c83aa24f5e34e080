//! Unmerged LoRA: several adapters on one set of base weights, chosen per row of a batch.
//!
//! A linear layer holds its base weight once and, per adapter slot, an optional low-rank
//! update `Δy = s · (x Aᵀ) Bᵀ` (peft's unmerged LoRA forward, dropout off). A batch says which
//! rows use which slot ([`AdapterRows`]); the base matmul runs over all rows at once, each
//! adapter's two thin matmuls over its own rows only (gathered, then added back in place).

use std::collections::BTreeSet;

use candle_core::{Device, Result, Tensor};

use super::layers::Linear;

/// An adapter's LoRA of a checkpoint tensor, by name: `(lora_A, lora_B, scale)`.
pub type LoraLookup<'a> = dyn Fn(&str) -> Option<(Tensor, Tensor, f64)> + 'a;

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

/// `parts(name)`, checked to fit a weight of `rows` x `in_dim`: `lora_A` `(r, in_dim)` and
/// `lora_B` `(rows, r)`.
fn fitting_parts(
    name: &str,
    parts: &LoraLookup<'_>,
    rows: usize,
    in_dim: usize,
) -> Result<Option<(Tensor, Tensor, f64)>> {
    let Some((a, b, scale)) = parts(name) else {
        return Ok(None);
    };
    let (r_a, in_a) = a.dims2()?;
    let (out_b, r_b) = b.dims2()?;
    if in_a != in_dim || out_b != rows || r_a != r_b {
        candle_core::bail!(
            "LoRA of {name} is {:?} x {:?}, which does not fit its ({rows}, {in_dim}) weight",
            b.dims(),
            a.dims(),
        );
    }
    Ok(Some((a, b, scale)))
}

/// Attaches to `linear` as `slot` the update `parts` gives for the checkpoint tensor it was
/// read from (`B` restricted to its rows of a fused weight); returns that tensor's name, or
/// `None` when the adapter leaves the layer alone.
pub fn attach_by_source(
    linear: &mut Linear,
    slot: usize,
    parts: &LoraLookup<'_>,
) -> Result<Option<String>> {
    let Some(source) = linear.source().cloned() else {
        return Ok(None);
    };
    let rows = match source.rows {
        Some(block) => block.groups * block.slots * block.width,
        None => linear.weight().dim(0)?,
    };
    let in_dim = linear.weight().dim(1)?;
    let Some((a, b, scale)) = fitting_parts(&source.tensor, parts, rows, in_dim)? else {
        return Ok(None);
    };
    let b = match source.rows {
        Some(block) => block.take(&b)?,
        None => b,
    };
    let update = LoraUpdate::new(&a, &b, scale, linear.weight())?;
    linear.attach(slot, update);
    Ok(Some(source.tensor))
}

/// [`attach_by_source`] for each of `linears`; returns the names used.
pub fn attach_each<'l>(
    linears: impl IntoIterator<Item = &'l mut Linear>,
    slot: usize,
    parts: &LoraLookup<'_>,
) -> Result<BTreeSet<String>> {
    let mut used = BTreeSet::new();
    for linear in linears {
        used.extend(attach_by_source(linear, slot, parts)?);
    }
    Ok(used)
}

/// Attaches to `linear`, whose weight is the checkpoint tensors `pieces` (name, rows) stacked
/// by rows at load (the HF-layout ViT's q/k/v), the update of `slot` that `parts` gives for
/// any of them: `A` the adapted pieces' `lora_A` stacked `(Σr, in)`, `B` block-diagonal
/// `(Σrows, Σr)` with each piece's scale folded in, zero rows where a piece is not adapted.
/// Returns the names used. The zeros cost memory and thin-matmul work (3x `B`'s for q/k/v
/// adapted alike); it keeps the fused layer one matmul for the base and one update.
pub fn attach_stacked(
    linear: &mut Linear,
    slot: usize,
    pieces: &[(String, usize)],
    parts: &LoraLookup<'_>,
) -> Result<Vec<String>> {
    let in_dim = linear.weight().dim(1)?;
    let mut found = Vec::new();
    for (name, rows) in pieces {
        if let Some(p) = fitting_parts(name, parts, *rows, in_dim)? {
            found.push((name.clone(), *rows, p));
        }
    }
    if found.is_empty() {
        return Ok(Vec::new());
    }
    let like = linear.weight();
    let to = |t: &Tensor| t.to_device(like.device())?.to_dtype(like.dtype());
    let rank: usize = found
        .iter()
        .map(|(_, _, (a, _, _))| a.dim(0))
        .sum::<Result<_>>()?;
    let a = Tensor::cat(
        &found
            .iter()
            .map(|(_, _, (a, _, _))| to(a))
            .collect::<Result<Vec<_>>>()?,
        0,
    )?;
    let mut row_blocks = Vec::with_capacity(pieces.len());
    let mut col = 0;
    for (name, rows) in pieces {
        let zeros = |cols: usize| Tensor::zeros((*rows, cols), like.dtype(), like.device());
        match found.iter().find(|(n, _, _)| n == name) {
            Some((_, _, (a_i, b_i, scale))) => {
                let r = a_i.dim(0)?;
                let mut cols = Vec::with_capacity(3);
                if col > 0 {
                    cols.push(zeros(col)?);
                }
                // Scaled in f32, rounded once into the weight's dtype.
                let scaled = (b_i.to_dtype(candle_core::DType::F32)? * *scale)?;
                cols.push(to(&scaled)?);
                if rank > col + r {
                    cols.push(zeros(rank - col - r)?);
                }
                row_blocks.push(Tensor::cat(&cols, 1)?);
                col += r;
            }
            None => row_blocks.push(zeros(rank)?),
        }
    }
    let b = Tensor::cat(&row_blocks, 0)?;
    linear.attach(slot, LoraUpdate::new(&a, &b, 1.0, like)?);
    Ok(found.into_iter().map(|(n, _, _)| n).collect())
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
    /// Rows `start..start + len` use slot `slot`, as `(slot, start, len)` in row order; other
    /// rows the base. What [`Self::of_runs`] gives when each slot's rows are contiguous: read
    /// as views, no gather or scatter.
    Runs(Vec<(usize, usize, usize)>),
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
        let contiguous = per_slot
            .iter()
            .all(|(_, rows)| rows.windows(2).all(|w| w[1] == w[0] + 1));
        Ok(match per_slot.as_slice() {
            [] => AdapterRows::Base,
            [(s, rows)] if rows.len() == total => AdapterRows::All(*s),
            _ if contiguous => {
                let mut runs: Vec<(usize, usize, usize)> = per_slot
                    .iter()
                    .map(|(s, rows)| (*s, rows[0] as usize, rows.len()))
                    .collect();
                runs.sort_by_key(|r| r.1);
                AdapterRows::Runs(runs)
            }
            _ => AdapterRows::Groups(
                per_slot
                    .into_iter()
                    .map(|(s, rows)| Ok((s, Tensor::new(rows, device)?)))
                    .collect::<Result<_>>()?,
            ),
        })
    }

    /// Every row uses `slot` (`None`: the base weights).
    pub fn of_slot(slot: Option<usize>) -> Self {
        slot.map_or(AdapterRows::Base, AdapterRows::All)
    }

    /// One row per entry of `slots`.
    pub fn of_rows(slots: &[Option<usize>], device: &Device) -> Result<Self> {
        Self::of_runs(&vec![1; slots.len()], slots, device)
    }

    /// `y + Σ_slot delta_slot(x[rows_slot])` placed at those rows, for `x` `(n, in)` and `y`
    /// `(n, out)` (any leading dimensions, flattened, with [`Self::Base`] or [`Self::All`]);
    /// `update(slot)` is the layer's update of a slot, if it has one.
    pub fn add<'a>(
        &self,
        x: &Tensor,
        y: Tensor,
        update: impl Fn(usize) -> Option<&'a LoraUpdate>,
        backward: bool,
    ) -> Result<Tensor> {
        if matches!(self, AdapterRows::Base) {
            return Ok(y);
        }
        if x.rank() != 2 {
            if !matches!(self, AdapterRows::All(_)) {
                candle_core::bail!("per-row adapters need 2-D rows, got {:?}", x.dims());
            }
            let flat = |t: &Tensor| t.flatten_to(t.rank() - 2);
            let shape = y.shape().clone();
            return self
                .add(&flat(x)?, flat(&y)?, update, backward)?
                .reshape(shape);
        }
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
            AdapterRows::Runs(runs) => {
                // One concatenation of views: base rows as they are, adapted rows updated.
                let n = y.dim(0)?;
                let mut pieces = Vec::with_capacity(2 * runs.len() + 1);
                let mut at = 0;
                for &(s, start, len) in runs {
                    let Some(u) = update(s) else { continue };
                    if start > at {
                        pieces.push(y.narrow(0, at, start - at)?);
                    }
                    let d = apply(u, &x.narrow(0, start, len)?)?;
                    pieces.push((y.narrow(0, start, len)? + d)?);
                    at = start + len;
                }
                if pieces.is_empty() {
                    return Ok(y);
                }
                if at < n {
                    pieces.push(y.narrow(0, at, n - at)?);
                }
                Tensor::cat(&pieces, 0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::DType;

    fn seeded(rows: usize, cols: usize, seed: f64) -> Tensor {
        let t = Tensor::arange(0u32, (rows * cols) as u32, &Device::Cpu).unwrap();
        let t = t.to_dtype(DType::F32).unwrap().affine(0.7, seed).unwrap();
        t.sin().unwrap().reshape((rows, cols)).unwrap()
    }

    #[test]
    fn contiguous_runs_are_views_and_equal_the_gathered_groups() {
        let like = seeded(3, 4, 0.0);
        let updates = [
            LoraUpdate::new(&seeded(2, 4, 1.0), &seeded(3, 2, 2.0), 0.5, &like).unwrap(),
            LoraUpdate::new(&seeded(2, 4, 3.0), &seeded(3, 2, 4.0), 2.0, &like).unwrap(),
        ];
        let (x, y) = (seeded(8, 4, 5.0), seeded(8, 3, 6.0));
        let update = |s: usize| updates.get(s);
        let dev = Device::Cpu;
        // Rows 0..5 slot 0, 5 the base, 6..8 slot 1.
        let rows =
            AdapterRows::of_runs(&[2, 3, 1, 2], &[Some(0), Some(0), None, Some(1)], &dev).unwrap();
        assert!(matches!(&rows, AdapterRows::Runs(r) if r == &[(0, 0, 5), (1, 6, 2)]));
        let gathered = AdapterRows::Groups(vec![
            (0, Tensor::new(&[0u32, 1, 2, 3, 4], &dev).unwrap()),
            (1, Tensor::new(&[6u32, 7], &dev).unwrap()),
        ]);
        for backward in [false, true] {
            let (x, y) = if backward {
                (seeded(8, 3, 7.0), seeded(8, 4, 8.0))
            } else {
                (x.clone(), y.clone())
            };
            let a = rows.add(&x, y.clone(), update, backward).unwrap();
            let b = gathered.add(&x, y.clone(), update, backward).unwrap();
            let diff = (a - &b).unwrap().abs().unwrap().max_all().unwrap();
            assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0, "backward {backward}");
            let base_row = |t: &Tensor| t.narrow(0, 5, 1).unwrap().flatten_all().unwrap();
            assert_eq!(
                base_row(&b).to_vec1::<f32>().unwrap(),
                base_row(&y).to_vec1::<f32>().unwrap()
            );
        }
        // Interleaved slots are gathered.
        let mixed = AdapterRows::of_rows(&[Some(0), Some(1), Some(0)], &dev).unwrap();
        assert!(matches!(mixed, AdapterRows::Groups(_)));
    }
}
