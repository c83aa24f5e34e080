//! Incremental decoding with a key/value cache, for rationales generated after the answer.
//!
//! A prefill over a packed batch leaves one [`KvCache`] per item (a suffix that continued a
//! shared prefix gets the prefix's keys and values in front of its own). Each decode step then
//! feeds one new token per active sequence, batched across sequences of different lengths:
//! the projections and MLPs run on all rows at once, attention per sequence over its own cache.

use candle_core::{Module, Result, Tensor};

use super::{LanguageModel, Packing};

/// Rotated keys and values of every layer for one sequence, each (kv_heads, len, head_dim).
#[derive(Debug, Clone)]
pub struct KvCache {
    layers: Vec<(Tensor, Tensor)>,
    len: usize,
}

impl KvCache {
    /// Tokens the cache holds (the position of the next token).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the cache holds no token.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
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
        let starts: Vec<usize> = packing
            .segments
            .iter()
            .scan(0, |acc, s| {
                let start = *acc;
                *acc += s.len;
                Some(start)
            })
            .collect();
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
                let take = |t: &Tensor| -> Result<Tensor> {
                    let mine = t.narrow(1, starts[seg], own.len)?;
                    match own.context {
                        Some(c) => Tensor::cat(
                            &[&t.narrow(1, starts[c], packing.segments[c].len)?, &mine],
                            1,
                        ),
                        None => mine.contiguous(),
                    }
                };
                layers.push((take(k)?, take(v)?));
            }
            caches.push(KvCache {
                layers,
                len: own.position_offset + own.len,
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
        let half = self.rope.half();
        let mut freqs = Vec::with_capacity(b * half);
        for cache in caches.iter() {
            self.rope.push_freqs(cache.len, 1, &mut freqs);
        }
        let freqs = Tensor::from_vec(freqs, (b, half), &self.device)?;
        let (cos, sin) = (
            freqs.cos()?.to_dtype(self.dtype)?,
            freqs.sin()?.to_dtype(self.dtype)?,
        );
        let mut xs = self.embed(&Tensor::new(ids, &self.device)?)?;
        for (l, layer) in self.layers.iter().enumerate() {
            let attn = &layer.attn;
            let d = attn.head_dim;
            let h = layer.attn_norm.forward(&xs)?;
            let to_heads = |x: Tensor, n: usize| -> Result<Tensor> {
                x.reshape((b, n, d))?
                    .transpose(0, 1)?
                    .unsqueeze(0)?
                    .contiguous()
            };
            let q = candle_nn::rotary_emb::rope(
                &to_heads(attn.q.forward(&h)?, attn.heads)?,
                &cos,
                &sin,
            )?
            .squeeze(0)?;
            let k = candle_nn::rotary_emb::rope(
                &to_heads(attn.k.forward(&h)?, attn.kv_heads)?,
                &cos,
                &sin,
            )?
            .squeeze(0)?;
            let v = to_heads(attn.v.forward(&h)?, attn.kv_heads)?.squeeze(0)?;
            let group = attn.heads / attn.kv_heads;
            let scale = (d as f64).powf(-0.5);
            let mut rows = Vec::with_capacity(b);
            for (i, cache) in caches.iter_mut().enumerate() {
                let (ck, cv) = &cache.layers[l];
                let ck = Tensor::cat(&[ck, &k.narrow(1, i, 1)?], 1)?;
                let cv = Tensor::cat(&[cv, &v.narrow(1, i, 1)?], 1)?;
                let qi = q
                    .narrow(1, i, 1)?
                    .contiguous()?
                    .reshape((attn.kv_heads, group, d))?;
                let probs = candle_nn::ops::softmax_last_dim(&(qi.matmul(&ck.t()?)? * scale)?)?;
                rows.push(probs.matmul(&cv)?.reshape((1, attn.heads * d))?);
                cache.layers[l] = (ck, cv);
            }
            let out = attn.o.forward(&Tensor::cat(&rows, 0)?)?;
            xs = layer.mlp_residual(&(xs + out)?)?;
        }
        for cache in caches.iter_mut() {
            cache.len += 1;
        }
        self.norm.forward(&xs)
    }
}
