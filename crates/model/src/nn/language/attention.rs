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
                e.insert(causal_after_prefix(seg.len, keys - seg.len, dtype, device)?);
            }
        }
        Ok(Masks { masks })
    }

    /// The one mask of a single sequence of `len` queries continuing a `prefix` of keys.
    pub fn continuing(len: usize, prefix: usize, dtype: DType, device: &Device) -> Result<Self> {
        let mask = causal_after_prefix(len, prefix, dtype, device)?;
        Ok(Masks {
            masks: HashMap::from([((len, len + prefix), mask)]),
        })
    }

    pub(super) fn get(&self, queries: usize, keys: usize) -> Result<&Tensor> {
        self.masks.get(&(queries, keys)).ok_or_else(|| {
            candle_core::Error::Msg(format!("no attention mask for {queries}x{keys}"))
        })
    }
}

/// The additive `(len, prefix + len)` mask: the `prefix` keys visible to every query, the
/// rest causal.
fn causal_after_prefix(len: usize, prefix: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    let keys = prefix + len;
    let data: Vec<f32> = (0..len)
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
    Tensor::from_vec(data, (len, keys), device)?.to_dtype(dtype)
}

/// `q` (heads, T, d), `k`/`v` (kv_heads, T, d) over the packed tokens -> (heads, T, d).
pub fn packed_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    segments: &[Segment],
    masks: &Masks,
) -> Result<Tensor> {
    let starts = Segment::starts(segments);
    let mut outputs = Vec::with_capacity(segments.len());
    for (seg, &start) in segments.iter().zip(&starts) {
        let len = seg.len;
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
        let mask = masks.get(len, ks.dim(1)?)?;
        outputs.push(attend(&q.narrow(1, start, len)?, &ks, &vs, mask)?);
    }
    Tensor::cat(&outputs, 1)
}

/// Softmax attention of one run of queries `q` (heads, len, d) over `k`/`v` (kv_heads, keys,
/// d) with the additive `mask` (len, keys) -> (heads, len, d).
pub fn attend(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let (heads, len, d) = q.dims3()?;
    let (kv_heads, keys, _) = k.dims3()?;
    let group = heads / kv_heads;
    let scale = (d as f64).powf(-0.5);
    let qs = q.contiguous()?.reshape((kv_heads, group * len, d))?;
    let scores = (qs.matmul(&k.t()?)? * scale)?.reshape((kv_heads, group, len, keys))?;
    let probs = crate::nn::layers::softmax_last_dim(&scores.broadcast_add(mask)?)?;
    probs
        .reshape((kv_heads, group * len, keys))?
        .matmul(v)?
        .reshape((heads, len, d))
}
