//! CPython's iteration order for InternVL's `target_ratios` set.
//!
//! `dynamic_preprocess` builds `set((i, j) ...)` and sorts it by `i * j`. Python's sort is
//! stable, so grids with the same tile count keep the *set's* order, which is the hash-table
//! slot order. That order decides `find_closest_aspect_ratio`'s tie rule when the image's
//! aspect ratio lies exactly halfway between two grids with the same tile count. With
//! `min_num = 1` such a tie cannot decide the result (a grid with a different tile count lies
//! between any two same-count grids), but with `min_num > 1` it can (e.g. `min = max = 4`,
//! a 5x8 image: `(1, 4)` and `(2, 2)` tie). So the order is reproduced exactly by emulating
//! CPython (3.8+) tuple hashing (`tuplehash`, xxHash-based) and `set_add_entry` /
//! `set_table_resize` (open addressing, 9 linear probes, perturbed probing, growth at 60%
//! fill to 4x the used count). Verified against CPython 3.11 for every `0 <= min <= max + 1`,
//! `max < 70`.

const XXPRIME_1: u64 = 11_400_714_785_074_694_791;
const XXPRIME_2: u64 = 14_029_467_366_897_019_727;
const XXPRIME_5: u64 = 2_870_177_450_012_600_261;
const LINEAR_PROBES: usize = 9;
const PERTURB_SHIFT: u32 = 5;
const SET_MINSIZE: usize = 8;

/// CPython's `hash((i, j))` for small non-negative ints, as the unsigned bit pattern.
fn tuple_hash(i: u64, j: u64) -> u64 {
    let mut acc = XXPRIME_5;
    for lane in [i, j] {
        acc = acc.wrapping_add(lane.wrapping_mul(XXPRIME_2));
        acc = acc.rotate_left(31);
        acc = acc.wrapping_mul(XXPRIME_1);
    }
    acc = acc.wrapping_add(2 ^ (XXPRIME_5 ^ 3_527_539));
    if acc == u64::MAX {
        1_546_275_796
    } else {
        acc
    }
}

/// A set entry: key and hash.
type Entry = ((usize, usize), u64);

/// Minimal model of a CPython `set` without deletions.
struct PySet {
    table: Vec<Option<Entry>>,
    fill: usize,
}

impl PySet {
    fn new() -> Self {
        Self {
            table: vec![None; SET_MINSIZE],
            fill: 0,
        }
    }

    fn mask(&self) -> usize {
        self.table.len() - 1
    }

    /// `set_add_entry`: find the key or the first empty slot along the probe sequence.
    fn add(&mut self, key: (usize, usize)) {
        let hash = tuple_hash(key.0 as u64, key.1 as u64);
        let mask = self.mask();
        let mut perturb = hash;
        let mut i = (hash as usize) & mask;
        let slot = loop {
            let probes = if i + LINEAR_PROBES <= mask {
                LINEAR_PROBES
            } else {
                0
            };
            let mut found = None;
            for k in i..=i + probes {
                match self.table[k] {
                    None => {
                        found = Some(Some(k));
                        break;
                    }
                    Some((existing, h)) if h == hash && existing == key => {
                        found = Some(None);
                        break;
                    }
                    Some(_) => {}
                }
            }
            match found {
                Some(Some(k)) => break k,
                Some(None) => return,
                None => {
                    perturb >>= PERTURB_SHIFT;
                    i = (i
                        .wrapping_mul(5)
                        .wrapping_add(1)
                        .wrapping_add(perturb as usize))
                        & mask;
                }
            }
        };
        self.table[slot] = Some((key, hash));
        self.fill += 1;
        if self.fill * 5 >= mask * 3 {
            // No deletions here, so `used == fill`.
            let used = self.fill;
            self.resize(if used > 50_000 { used * 2 } else { used * 4 });
        }
    }

    /// `set_table_resize` + `set_insert_clean`, old entries reinserted in slot order.
    fn resize(&mut self, min_used: usize) {
        let mut size = SET_MINSIZE;
        while size <= min_used {
            size <<= 1;
        }
        let old = std::mem::replace(&mut self.table, vec![None; size]);
        let mask = size - 1;
        for (key, hash) in old.into_iter().flatten() {
            let mut perturb = hash;
            let mut i = (hash as usize) & mask;
            let slot = loop {
                let last = if i + LINEAR_PROBES <= mask {
                    i + LINEAR_PROBES
                } else {
                    i
                };
                if let Some(k) = (i..=last).find(|&k| self.table[k].is_none()) {
                    break k;
                }
                perturb >>= PERTURB_SHIFT;
                i = (i
                    .wrapping_mul(5)
                    .wrapping_add(1)
                    .wrapping_add(perturb as usize))
                    & mask;
            };
            self.table[slot] = Some((key, hash));
        }
    }
}

/// `sorted(set(...), key=lambda x: x[0] * x[1])` exactly as CPython orders it.
pub(crate) fn python_target_ratios(min_num: usize, max_num: usize) -> Vec<(usize, usize)> {
    // The generator visits (i, j) first at n = max(i, j, min_num), in (i, j) order within
    // each n; later visits are no-ops for the set, so inserting each pair once in that order
    // gives the same table without the generator's O(max^3) loop.
    let mut pairs: Vec<(usize, usize)> = Vec::new();
    for i in 1..=max_num {
        for j in 1..=max_num / i {
            if i * j >= min_num {
                pairs.push((i, j));
            }
        }
    }
    pairs.sort_by_key(|&(i, j)| (i.max(j).max(min_num), i, j));
    let mut set = PySet::new();
    for pair in pairs {
        set.add(pair);
    }
    let mut out: Vec<(usize, usize)> = set.table.into_iter().flatten().map(|(k, _)| k).collect();
    out.sort_by_key(|&(i, j)| i * j); // stable, like Python's sorted
    out
}
