//! Finding the item that failed a batch.
//!
//! A packed forward pass fails as a whole: one item that trips a bug (or needs more memory than
//! the batch leaves) fails every neighbour with it. When a batch fails and the device itself
//! still works (the worker checks with its probe item), the batch is split in halves and each
//! half re-run, recursively, until each failing item is alone. Healthy neighbours are then
//! answered from the half they ran in; only items that fail *alone* get an error. With one bad
//! item in a batch of `n` this costs at most `2 log2(n)` extra forwards of shrinking size
//! (about `n` items' worth of extra compute in all).

/// The outcome of isolating: each item with its own result, in no particular order.
pub(crate) type Isolated<T, R, E> = Vec<(T, Result<R, E>)>;

/// Computes a sub-batch: one result per item, in order, or the error of the whole sub-batch.
pub(crate) type RunBatch<'a, T, R, E> = dyn FnMut(&[T]) -> Result<Vec<R>, E> + 'a;

/// Re-runs `items` (which just failed together) in halves until every failure is an item that
/// failed alone. `run` computes a sub-batch and returns one result per item, in order, or the
/// error of the whole sub-batch. `retain` is called before each re-run with the items about to
/// run; it answers and drops those nobody needs any more (caller gone, deadline passed) and
/// returns the rest. Returns how many forwards it ran next to the results.
pub(crate) fn bisect<T, R, E>(
    items: Vec<T>,
    run: &mut RunBatch<'_, T, R, E>,
    retain: &mut dyn FnMut(Vec<T>) -> Vec<T>,
    failure: E,
) -> (Isolated<T, R, E>, usize) {
    let mut out = Vec::with_capacity(items.len());
    let mut runs = 0;
    split(items, failure, run, retain, &mut out, &mut runs);
    (out, runs)
}

/// `items` failed together with `failure`: answer a lone item, or re-run both halves.
fn split<T, R, E>(
    mut items: Vec<T>,
    failure: E,
    run: &mut RunBatch<'_, T, R, E>,
    retain: &mut dyn FnMut(Vec<T>) -> Vec<T>,
    out: &mut Isolated<T, R, E>,
    runs: &mut usize,
) {
    if items.len() <= 1 {
        if let Some(t) = items.pop() {
            out.push((t, Err(failure)));
        }
        return;
    }
    let right = items.split_off(items.len() / 2);
    drop(failure);
    for half in [items, right] {
        let half = retain(half);
        if half.is_empty() {
            continue;
        }
        *runs += 1;
        match run(&half) {
            Ok(results) => out.extend(half.into_iter().zip(results.into_iter().map(Ok))),
            Err(e) => split(half, e, run, retain, out, runs),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A "model" that fails any batch containing a bad item, and counts the items it computed.
    fn model(bad: &'static [u32]) -> impl FnMut(&[u32]) -> Result<Vec<u32>, String> {
        move |batch: &[u32]| match batch.iter().find(|x| bad.contains(x)) {
            Some(x) => Err(format!("item {x} broke the batch")),
            None => Ok(batch.iter().map(|x| x * 10).collect()),
        }
    }

    fn sorted(mut v: Isolated<u32, u32, String>) -> Isolated<u32, u32, String> {
        v.sort_by_key(|(t, _)| *t);
        v
    }

    #[test]
    fn one_bad_item_fails_alone_and_its_neighbours_are_scored() {
        let mut run = model(&[5]);
        let (got, runs) = bisect(
            (0..16).collect(),
            &mut run,
            &mut |v| v,
            "whole batch".into(),
        );
        let got = sorted(got);
        assert_eq!(got.len(), 16);
        for (t, r) in &got {
            if *t == 5 {
                assert_eq!(r.as_ref().unwrap_err(), "item 5 broke the batch");
            } else {
                assert_eq!(r.as_ref().ok(), Some(&(t * 10)));
            }
        }
        // 16 -> two halves of 8 -> 4 -> 2 -> 1: two runs per level, four levels.
        assert_eq!(runs, 8);
    }

    #[test]
    fn several_bad_items_each_fail_alone() {
        let mut run = model(&[0, 7, 8]);
        let (got, _) = bisect((0..9).collect(), &mut run, &mut |v| v, "batch".into());
        let failed: Vec<u32> = sorted(got)
            .into_iter()
            .filter(|(_, r)| r.is_err())
            .map(|(t, _)| t)
            .collect();
        assert_eq!(failed, vec![0, 7, 8]);
    }

    #[test]
    fn a_single_failed_item_is_answered_without_a_rerun() {
        let mut run = model(&[]);
        let (got, runs) = bisect(vec![3], &mut run, &mut |v| v, "alone".into());
        assert_eq!(runs, 0);
        assert_eq!(got[0].1.as_ref().unwrap_err(), "alone");
    }

    #[test]
    fn items_dropped_by_retain_are_not_rerun() {
        let mut computed = Vec::new();
        let mut run = |batch: &[u32]| -> Result<Vec<u32>, String> {
            computed.extend_from_slice(batch);
            if batch.contains(&1) {
                Err("bad".into())
            } else {
                Ok(batch.to_vec())
            }
        };
        // Items 2 and 3 "expire" before the re-run.
        let mut retain = |v: Vec<u32>| v.into_iter().filter(|t| *t < 2).collect();
        let (got, _) = bisect(vec![0, 1, 2, 3], &mut run, &mut retain, "first".into());
        assert!(!computed.contains(&2) && !computed.contains(&3));
        assert_eq!(sorted(got).len(), 2);
    }
}
