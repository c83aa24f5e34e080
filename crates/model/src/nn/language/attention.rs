//! Attention over a packed batch of segments (CPU/generic path).
//!
//! Each segment attends causally to itself and, when it continues a shared prefix, to all of
//! that prefix's keys and values. GQA: the `group` query heads of one K/V head are viewed as
//! one (group * len, d) matrix against that head's (len, d) keys, so K/V are never repeated.

use std::collections::HashMap;

use candle_core::{DType, Device, Result, Tensor};

use super::Segment;

/// Additive masks for (queries, keys) shapes: 0 where visible, -inf where not. The first
/// `keys - queries` keys (a shared prefix) are visible to every query; the rest are causal.
pub struct Masks {
    masks: HashMap<(usize, usize), Tensor>,
}

impl Masks {
    /// Builds every mask the segments need, once per batch.
    pub fn for_segments(segments: &[Segment], dtype: DType, device: &Device) -> Result<Self> {
        let mut masks = HashMap::new();
        for seg in segments {
            let keys = seg.len + seg.context.map_or(0, |c| segments[c].len);
            if let std::collections::hash_map::Entry::Vacant(e) = masks.entry((seg.len, keys)) {
                let prefix = keys - seg.len;
                let data: Vec<f32> = (0..seg.len)
                    .flat_map(|i| {
                        (0..keys).map(move |j| {
                            if j > prefix + i {
                                f32::NEG_INFINITY
                            } else {
                                0.0
                            }
                        })
                    })
                    .collect();
                e.insert(Tensor::from_vec(data, (seg.len, keys), device)?.to_dtype(dtype)?);
            }
        }
        Ok(Masks { masks })
    }

    pub(super) fn get(&self, queries: usize, keys: usize) -> Result<&Tensor> {
        self.masks.get(&(queries, keys)).ok_or_else(|| {
            candle_core::Error::Msg(format!("no attention mask for {queries}x{keys}"))
        })
    }
}

/// `q` (heads, T, d), `k`/`v` (kv_heads, T, d) over the packed tokens -> (heads, T, d).
pub fn packed_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    segments: &[Segment],
    masks: &Masks,
) -> Result<Tensor> {
    let (heads, _, d) = q.dims3()?;
    let kv_heads = k.dim(0)?;
    let group = heads / kv_heads;
    let scale = (d as f64).powf(-0.5);
    let starts = Segment::starts(segments);
    let mut outputs = Vec::with_capacity(segments.len());
    for (seg, &start) in segments.iter().zip(&starts) {
        let len = seg.len;
        let qs = q
            .narrow(1, start, len)?
            .contiguous()?
            .reshape((kv_heads, group * len, d))?;
        let (ks, vs) = match seg.context {
            Some(c) => {
                let (cs, cl) = (starts[c], segments[c].len);
                (
                    Tensor::cat(&[&k.narrow(1, cs, cl)?, &k.narrow(1, start, len)?], 1)?,
                    Tensor::cat(&[&v.narrow(1, cs, cl)?, &v.narrow(1, start, len)?], 1)?,
                )
            }
            None => (
                k.narrow(1, start, len)?.contiguous()?,
                v.narrow(1, start, len)?.contiguous()?,
            ),
        };
        let keys = ks.dim(1)?;
        let scores = (qs.matmul(&ks.t()?)? * scale)?.reshape((kv_heads, group, len, keys))?;
        let probs =
            crate::nn::layers::softmax_last_dim(&scores.broadcast_add(masks.get(len, keys)?)?)?;
        let out = probs
            .reshape((kv_heads, group * len, keys))?
            .matmul(&vs)?
            .reshape((heads, len, d))?;
        outputs.push(out);
    }
    Tensor::cat(&outputs, 1)
}
