//! Incremental decoding with a key/value cache, for rationales generated after the answer.
//!
//! A prefill over a packed batch leaves one [`KvCache`] per item (a suffix that continued a
//! shared prefix gets the prefix's keys and values in front of its own). Each decode step then
//! feeds one new token per active sequence, batched across sequences of different lengths:
//! the projections and MLPs run on all rows at once, and so does attention: each cache is a
//! buffer with spare capacity (the new key and value are written in place), the step views the
//! caches padded to the longest and masks each sequence's padding.

use candle_core::{Module, Result, Tensor};

use super::{LanguageModel, Packing, Segment};
use crate::nn::lora::AdapterRows;

/// Rotated keys and values of every layer for one sequence, each (kv_heads, capacity,
/// head_dim) of which the first `len` positions are filled (the rest is zeros or stale values,
/// always masked).
#[derive(Debug)]
pub struct KvCache {
    layers: Vec<(Tensor, Tensor)>,
    len: usize,
    /// The adapter slot the sequence runs with.
    adapter: Option<usize>,
}

impl KvCache {
    /// A deep copy (the buffers are written in place by decode steps, so a copy must not share
    /// them).
    pub fn fork(&self) -> Result<KvCache> {
        let layers = self
            .layers
            .iter()
            .map(|(k, v)| Ok((k.force_contiguous()?, v.force_contiguous()?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(KvCache {
            layers,
            len: self.len,
            adapter: self.adapter,
        })
    }

    /// Positions the buffers hold.
    fn capacity(&self) -> usize {
        self.layers
            .first()
            .map_or(0, |(k, _)| k.dim(1).unwrap_or(0))
    }

    /// Grows every buffer to hold at least `needed` positions (doubling, in steps of 64).
    fn reserve(&mut self, needed: usize) -> Result<()> {
        let cap = self.capacity();
        if cap >= needed {
            return Ok(());
        }
        let new_cap = needed.max(2 * cap).next_multiple_of(64);
        for (k, v) in self.layers.iter_mut() {
            *k = with_room(&[&*k], new_cap)?;
            *v = with_room(&[&*v], new_cap)?;
        }
        Ok(())
    }

    /// Layer `layer`'s filled keys and values, each (kv_heads, len, head_dim).
    pub(super) fn filled(&self, layer: usize) -> Result<(Tensor, Tensor)> {
        let (k, v) = self
            .layers
            .get(layer)
            .ok_or_else(|| candle_core::Error::Msg(format!("the cache holds no layer {layer}")))?;
        Ok((k.narrow(1, 0, self.len)?, v.narrow(1, 0, self.len)?))
    }

    /// Tokens the cache holds (the position of the next token).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the cache holds no token.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// `parts` concatenated along the sequence axis into a fresh (kv_heads, capacity, head_dim)
/// buffer, zeros after them.
fn with_room(parts: &[&Tensor], capacity: usize) -> Result<Tensor> {
    let (kv, _, d) = parts
        .first()
        .ok_or_else(|| candle_core::Error::Msg("no key/value parts".into()))?
        .dims3()?;
    let filled: usize = parts.iter().map(|t| t.dim(1)).sum::<Result<usize>>()?;
    if capacity <= filled {
        // The zeros tail also guarantees `cat` copies (one part alone could come back shared).
        candle_core::bail!("key/value buffer of {capacity} for {filled} positions has no room");
    }
    let mut all: Vec<Tensor> = parts.iter().map(|t| (*t).clone()).collect();
    all.push(Tensor::zeros(
        (kv, capacity - filled, d),
        parts[0].dtype(),
        parts[0].device(),
    )?);
    Tensor::cat(&all, 1)
}

impl LanguageModel {
    /// Prefill that also returns each output sequence's cache: final-normed hidden states at
    /// the output rows, (outputs, H), and one [`KvCache`] per output, in order.
    pub fn prefill_with_cache(
        &self,
        embeds: &Tensor,
        packing: &Packing,
    ) -> Result<(Tensor, Vec<KvCache>)> {
        let mut kv = Vec::with_capacity(self.layers.len());
        let hidden = self.forward_packed(embeds, packing, Some(&mut kv))?;
        let starts = Segment::starts(&packing.segments);
        let mut caches = Vec::with_capacity(packing.outputs.len());
        for &row in &packing.outputs {
            let seg = starts
                .iter()
                .zip(&packing.segments)
                .position(|(&start, s)| row >= start && row < start + s.len)
                .ok_or_else(|| {
                    candle_core::Error::Msg(format!("output row {row} is in no segment"))
                })?;
            let own = &packing.segments[seg];
            let mut layers = Vec::with_capacity(kv.len());
            for (k, v) in &kv {
                // One copy into fresh storage with room for the first decoded tokens (decode
                // steps write into it in place).
                let take = |t: &Tensor| -> Result<Tensor> {
                    let mine = t.narrow(1, starts[seg], own.len)?;
                    let room = (own.position_offset + own.len + 1).next_multiple_of(64);
                    match own.context {
                        Some(c) => with_room(
                            &[&t.narrow(1, starts[c], packing.segments[c].len)?, &mine],
                            room,
                        ),
                        None => with_room(&[&mine], room),
                    }
                };
                layers.push((take(k)?, take(v)?));
            }
            caches.push(KvCache {
                layers,
                len: own.position_offset + own.len,
                adapter: packing.adapter(seg),
            });
        }
        Ok((hidden, caches))
    }

    /// One decode step: token `ids[i]` is appended to sequence `caches[i]`; returns the
    /// final-normed hidden states of the new tokens, (B, H).
    pub fn decode_step(&self, ids: &[u32], caches: &mut [&mut KvCache]) -> Result<Tensor> {
        let b = ids.len();
        if b != caches.len() {
            candle_core::bail!("{b} tokens for {} caches", caches.len());
        }
        let longest = caches.iter().map(|c| c.len + 1).max().unwrap_or(0);
        let half = self.rope.half();
        let mut freqs = Vec::with_capacity(b * half);
        let mut mask = Vec::with_capacity(b * longest);
        for cache in caches.iter_mut() {
            cache.reserve(longest)?;
            self.rope.push_freqs(cache.len, 1, &mut freqs);
            mask.extend((0..longest).map(|j| {
                if j <= cache.len {
                    0f32
                } else {
                    f32::NEG_INFINITY
                }
            }));
        }
        let freqs = Tensor::from_vec(freqs, (b, half), &self.device)?;
        let (cos, sin) = (
            freqs.cos()?.to_dtype(self.dtype)?,
            freqs.sin()?.to_dtype(self.dtype)?,
        );
        let mask =
            Tensor::from_vec(mask, (b, 1, 1, longest), &self.device)?.to_dtype(self.dtype)?;
        let slots: Vec<Option<usize>> = caches.iter().map(|c| c.adapter).collect();
        let rows = AdapterRows::of_rows(&slots, &self.device)?;
        let mut xs = self.embed(&Tensor::new(ids, &self.device)?)?;
        for (l, layer) in self.layers.iter().enumerate() {
            let attn = &layer.attn;
            let d = attn.head_dim;
            let group = attn.heads / attn.kv_heads;
            let h = layer.attn_norm.forward(&xs)?;
            // (B, n * d) -> (1, n, B, d) for rope, then (B, n, d).
            let rotated = |x: Tensor, n: usize| -> Result<Tensor> {
                let x = x
                    .reshape((b, n, d))?
                    .transpose(0, 1)?
                    .unsqueeze(0)?
                    .contiguous()?;
                candle_nn::rotary_emb::rope(&x, &cos, &sin)?
                    .squeeze(0)?
                    .transpose(0, 1)?
                    .contiguous()
            };
            let q = rotated(attn.q.forward_rows(&h, &rows)?, attn.heads)?.reshape((
                b,
                attn.kv_heads,
                group,
                d,
            ))?;
            let k = rotated(attn.k.forward_rows(&h, &rows)?, attn.kv_heads)?.unsqueeze(2)?;
            let v = attn
                .v
                .forward_rows(&h, &rows)?
                .reshape((b, attn.kv_heads, 1, d))?
                .contiguous()?;
            let mut keys = Vec::with_capacity(b);
            let mut values = Vec::with_capacity(b);
            for (i, cache) in caches.iter_mut().enumerate() {
                let at = cache.len;
                let (ck, cv) = &cache.layers[l];
                ck.slice_set(&k.get(i)?, 1, at)?;
                cv.slice_set(&v.get(i)?, 1, at)?;
                keys.push(ck.narrow(1, 0, longest)?);
                values.push(cv.narrow(1, 0, longest)?);
            }
            // (B, kv_heads, longest, d), padding masked per sequence.
            let keys = Tensor::stack(&keys, 0)?;
            let values = Tensor::stack(&values, 0)?;
            let scale = (d as f64).powf(-0.5);
            let scores = (q.matmul(&keys.transpose(2, 3)?)? * scale)?.broadcast_add(&mask)?;
            let probs = crate::nn::layers::softmax_last_dim(&scores)?;
            let out = probs.matmul(&values)?.reshape((b, attn.heads * d))?;
            let out = attn.o.forward_rows(&out, &rows)?;
            xs = layer.mlp_residual(&(xs + out)?, &rows)?;
        }
        for cache in caches.iter_mut() {
            cache.len += 1;
        }
        self.norm.forward(&xs)
    }
}
