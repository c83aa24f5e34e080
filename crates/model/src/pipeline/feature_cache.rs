//! Never encode the same image twice: projected vision features keyed by the content of the
//! decoded pixels and the preprocessing settings, in a byte-bounded LRU cache per device.
//!
//! Keys are BLAKE3 hashes (a cryptographic hash, so one caller cannot craft an image that
//! collides with another caller's and poison its scores).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use candle_core::Tensor;

pub use crate::image::ImageKey;
pub use crate::info::CacheStats;

struct Lru {
    map: lru::LruCache<ImageKey, Tensor>,
    bytes: usize,
}

/// Byte-bounded LRU of projected features (tiles * tokens_per_tile, hidden) per image.
pub struct FeatureCache {
    capacity_bytes: usize,
    inner: Mutex<Lru>,
    hits: AtomicU64,
    misses: AtomicU64,
    evictions: AtomicU64,
}

impl FeatureCache {
    /// A cache holding at most `capacity_bytes` of features; 0 disables it.
    pub fn new(capacity_bytes: usize) -> Self {
        FeatureCache {
            capacity_bytes,
            inner: Mutex::new(Lru {
                map: lru::LruCache::unbounded(),
                bytes: 0,
            }),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
        }
    }

    /// Whether the cache stores anything.
    pub fn enabled(&self) -> bool {
        self.capacity_bytes > 0
    }

    /// Looks `key` up, counting a hit or a miss.
    pub fn get(&self, key: &ImageKey) -> Option<Tensor> {
        let found = if self.enabled() {
            self.lock().map.get(key).cloned()
        } else {
            None
        };
        let counter = if found.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// Counts images served by an identical image in the same batch.
    pub fn record_batch_hit(&self) {
        self.hits.fetch_add(1, Ordering::Relaxed);
    }

    /// Stores features for `key`, evicting least recently used entries past the budget.
    pub fn insert(&self, key: ImageKey, features: Tensor) {
        let size = features.elem_count() * features.dtype().size_in_bytes();
        if !self.enabled() || size > self.capacity_bytes {
            return;
        }
        let mut lru = self.lock();
        if let Some(old) = lru.map.put(key, features) {
            lru.bytes -= old.elem_count() * old.dtype().size_in_bytes();
        }
        lru.bytes += size;
        while lru.bytes > self.capacity_bytes {
            match lru.map.pop_lru() {
                Some((_, t)) => {
                    lru.bytes -= t.elem_count() * t.dtype().size_in_bytes();
                    self.evictions.fetch_add(1, Ordering::Relaxed);
                }
                None => break,
            }
        }
    }

    /// Current counters.
    pub fn stats(&self) -> CacheStats {
        let lru = self.lock();
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
            bytes: lru.bytes as u64,
            entries: lru.map.len() as u64,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Lru> {
        // The map holds plain data; a panic elsewhere cannot leave it half-updated.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
