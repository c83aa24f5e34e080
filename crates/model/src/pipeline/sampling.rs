//! Picking the next token of a rationale: greedy, or seeded temperature / nucleus sampling.

use super::rationale::RationaleOptions;

/// SplitMix64: a tiny, well-known deterministic generator (seeded sampling and `Rank`'s random
/// opponent schedules must be reproducible).
#[derive(Debug, Clone)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    /// The next 64 random bits.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// Greedy at temperature 0; otherwise softmax at `temperature`, nucleus `top_p`, one draw.
pub(crate) fn sample(logits: &[f32], opts: &RationaleOptions, rng: &mut SplitMix64) -> u32 {
    let argmax = || {
        logits
            .iter()
            .enumerate()
            .fold((0usize, f32::NEG_INFINITY), |best, (i, &v)| {
                if v > best.1 {
                    (i, v)
                } else {
                    best
                }
            })
            .0 as u32
    };
    if opts.temperature <= 0.0 {
        return argmax();
    }
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let weight = |v: f32| (((v - max) / opts.temperature) as f64).exp();
    let top_p = opts.top_p.clamp(1e-6, 1.0) as f64;
    if top_p >= 1.0 {
        // The whole distribution: one pass, no sort.
        let total: f64 = logits.iter().map(|&v| weight(v)).sum();
        let mut draw = unit(rng) * total;
        for (i, &v) in logits.iter().enumerate() {
            draw -= weight(v);
            if draw < 0.0 {
                return i as u32;
            }
        }
        return argmax();
    }
    let mut probs: Vec<(u32, f64)> = logits
        .iter()
        .enumerate()
        .map(|(i, &v)| (i as u32, weight(v)))
        .collect();
    probs.sort_by(|a, b| b.1.total_cmp(&a.1));
    let total: f64 = probs.iter().map(|p| p.1).sum();
    let mut kept = 0.0;
    let cutoff = probs
        .iter()
        .position(|p| {
            kept += p.1 / total;
            kept >= top_p
        })
        .map_or(probs.len(), |i| i + 1);
    let mass: f64 = probs[..cutoff].iter().map(|p| p.1).sum();
    let mut draw = unit(rng) * mass;
    for &(id, p) in &probs[..cutoff] {
        if draw < p {
            return id;
        }
        draw -= p;
    }
    probs[cutoff - 1].0
}

/// A uniform draw in [0, 1) with 53 random bits.
fn unit(rng: &mut SplitMix64) -> f64 {
    (rng.next() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_and_seeded_sampling() {
        let logits = [0.1f32, 2.0, 1.9, -3.0];
        let greedy = RationaleOptions::default();
        assert_eq!(sample(&logits, &greedy, &mut SplitMix64(1)), 1);
        let hot = RationaleOptions {
            temperature: 1.0,
            ..greedy
        };
        let draws = |seed| {
            (0..50)
                .map(|_| 0)
                .scan(SplitMix64(seed), |rng, _| Some(sample(&logits, &hot, rng)))
                .collect::<Vec<_>>()
        };
        assert_eq!(draws(7), draws(7));
        assert!(
            draws(7).contains(&2),
            "temperature 1 explores the runner-up"
        );
        let narrow = RationaleOptions {
            temperature: 1.0,
            // The top token holds 0.485 of the mass: a 0.4 nucleus is that token alone.
            top_p: 0.4,
            ..greedy
        };
        let mut rng = SplitMix64(3);
        assert!(
            (0..50).all(|_| sample(&logits, &narrow, &mut rng) == 1),
            "top_p 0.4 keeps the top token only"
        );
    }
}
