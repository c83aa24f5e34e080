//! Shared-prefix reuse inside a batch: items whose inputs start the same (system prompt,
//! instruction text, the reference image of a pairwise group) compute that prefix once; each
//! item then runs only its suffix, attending to the shared prefix's keys and values.
//!
//! Token identity is decided on what the decoder actually sees: a text token by its id, an
//! image-context token by the content key of its image and its row in that image's features,
//! so two prefixes are shared only when their embeddings are identical.

pub use crate::nn::language::Segment;

/// How a batch is laid out once shared prefixes are factored out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrefixPlan {
    /// For each packed token: (item, token index within the item) it is taken from.
    pub tokens: Vec<(usize, usize)>,
    /// Segments in packed order: shared prefixes first, then one suffix (or whole item) per item.
    pub segments: Vec<Segment>,
    /// Packed index of each item's last token, in item order.
    pub last_tokens: Vec<usize>,
}

impl PrefixPlan {
    /// Tokens the plan computes (shared prefixes once).
    pub fn packed_len(&self) -> usize {
        self.tokens.len()
    }
}

/// Groups items by shared prefixes of at least `min_shared` tokens and lays the batch out in
/// item order. `signatures[i][t]` is the identity of item i's token t (see the module docs).
/// Every item keeps at least its last token in its own segment. `min_shared == usize::MAX`
/// disables reuse.
pub fn plan(signatures: &[Vec<u64>], min_shared: usize) -> PrefixPlan {
    plan_grouped(signatures, &vec![0; signatures.len()], min_shared)
}

/// [`plan`], with the items laid out by `keys` (stable: item order within a key) and each
/// shared prefix right before its first member, so that the rows of one key are contiguous
/// when its items share prefixes only among themselves (keys = adapter slots, whose tokens
/// never match another slot's). `last_tokens` stays in item order.
pub fn plan_grouped(signatures: &[Vec<u64>], keys: &[u64], min_shared: usize) -> PrefixPlan {
    // Greedy grouping against each group's first member; a group's prefix is the shortest
    // common prefix of its members.
    let mut groups: Vec<(usize, usize, Vec<usize>)> = Vec::new(); // (leader, prefix len, members)
    for (i, sig) in signatures.iter().enumerate() {
        let limit = sig.len().saturating_sub(1);
        let joined = groups.iter_mut().find_map(|(leader, prefix, members)| {
            let lead = &signatures[*leader];
            let cap = limit.min(lead.len().saturating_sub(1));
            let shared = sig
                .iter()
                .zip(lead)
                .take(cap)
                .take_while(|(a, b)| a == b)
                .count();
            (shared >= min_shared && min_shared != usize::MAX).then(|| {
                *prefix = (*prefix).min(shared);
                members.push(i);
            })
        });
        if joined.is_none() {
            groups.push((i, usize::MAX, vec![i]));
        }
    }
    // Which shared group (and its prefix length) each item continues from.
    let mut item_group: Vec<Option<usize>> = vec![None; signatures.len()];
    for (g, (_, _, members)) in groups.iter().enumerate() {
        if members.len() >= 2 {
            for &m in members {
                item_group[m] = Some(g);
            }
        }
    }
    let mut order: Vec<usize> = (0..signatures.len()).collect();
    order.sort_by_key(|&i| keys.get(i).copied().unwrap_or(0));
    let mut tokens = Vec::new();
    let mut segments = Vec::new();
    // The segment of each group's prefix, once laid out.
    let mut prefix_segment: Vec<Option<usize>> = vec![None; groups.len()];
    let mut last_tokens = vec![0; signatures.len()];
    for i in order {
        let sig = &signatures[i];
        let (context, start) = match item_group[i] {
            Some(g) => {
                let (leader, prefix, _) = &groups[g];
                let seg = match prefix_segment[g] {
                    Some(seg) => seg,
                    None => {
                        segments.push(Segment {
                            len: *prefix,
                            position_offset: 0,
                            context: None,
                        });
                        tokens.extend((0..*prefix).map(|t| (*leader, t)));
                        prefix_segment[g] = Some(segments.len() - 1);
                        segments.len() - 1
                    }
                };
                (Some(seg), *prefix)
            }
            None => (None, 0),
        };
        segments.push(Segment {
            len: sig.len() - start,
            position_offset: start,
            context,
        });
        tokens.extend((start..sig.len()).map(|t| (i, t)));
        last_tokens[i] = tokens.len() - 1;
    }
    PrefixPlan {
        tokens,
        segments,
        last_tokens,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_sharing_a_prefix_compute_it_once() {
        let a = vec![1, 2, 3, 4, 10, 11];
        let b = vec![1, 2, 3, 4, 20];
        let c = vec![9, 9, 9];
        let d = vec![1, 2, 3, 4, 30, 31, 32];
        let p = plan(&[a, b, c, d], 3);
        assert_eq!(
            p.segments[0],
            Segment {
                len: 4,
                position_offset: 0,
                context: None
            }
        );
        assert_eq!(
            p.segments[1],
            Segment {
                len: 2,
                position_offset: 4,
                context: Some(0)
            }
        );
        assert_eq!(
            p.segments[2],
            Segment {
                len: 1,
                position_offset: 4,
                context: Some(0)
            }
        );
        assert_eq!(
            p.segments[3],
            Segment {
                len: 3,
                position_offset: 0,
                context: None
            }
        );
        assert_eq!(
            p.segments[4],
            Segment {
                len: 3,
                position_offset: 4,
                context: Some(0)
            }
        );
        assert_eq!(p.packed_len(), 4 + 2 + 1 + 3 + 3);
        assert_eq!(p.tokens[4], (0, 4));
        assert_eq!(p.last_tokens, vec![5, 6, 9, 12]);
    }

    #[test]
    fn items_are_laid_out_by_key_with_each_prefix_before_its_first_member() {
        // Keys 1, 0, 1, 0; items 0 and 2 share a prefix, 1 and 3 another.
        let sigs = [
            vec![5, 6, 7, 1],
            vec![8, 9, 9, 2],
            vec![5, 6, 7, 3],
            vec![8, 9, 9, 4],
        ];
        let p = plan_grouped(&sigs, &[1, 0, 1, 0], 2);
        let item_of = |seg: usize| {
            let start: usize = p.segments[..seg].iter().map(|s| s.len).sum();
            p.tokens[start].0
        };
        // Key 0 first: [prefix of 1 and 3], 1, 3, then key 1: [prefix of 0 and 2], 0, 2.
        let laid: Vec<usize> = (0..p.segments.len()).map(item_of).collect();
        assert_eq!(laid, vec![1, 1, 3, 0, 0, 2]);
        assert_eq!(p.segments[0].context, None);
        assert_eq!(p.segments[1].context, Some(0));
        assert_eq!(p.segments[2].context, Some(0));
        assert_eq!(p.segments[4].context, Some(3));
        assert_eq!(p.segments[5].context, Some(3));
        // last_tokens stays in item order, each at its item's final token.
        for (i, &row) in p.last_tokens.iter().enumerate() {
            assert_eq!(p.tokens[row], (i, 3), "item {i}");
        }
        assert_eq!(p.packed_len(), 3 + 1 + 1 + 3 + 1 + 1);
    }

    #[test]
    fn an_item_equal_to_the_prefix_keeps_its_last_token() {
        let p = plan(&[vec![1, 2, 3], vec![1, 2, 3]], 1);
        assert_eq!(p.segments[0].len, 2);
        assert_eq!(
            p.segments[1],
            Segment {
                len: 1,
                position_offset: 2,
                context: Some(0)
            }
        );
        assert_eq!(p.last_tokens, vec![2, 3]);
    }

    #[test]
    fn disabled_or_short_prefixes_fall_back_to_plain_packing() {
        for min in [usize::MAX, 5] {
            let p = plan(&[vec![1, 2, 3], vec![1, 2, 4]], min);
            assert!(p
                .segments
                .iter()
                .all(|s| s.context.is_none() && s.position_offset == 0));
            assert_eq!(p.packed_len(), 6);
        }
    }
}
