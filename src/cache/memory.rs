//! The memory tier: a moka cache of ready-to-serve entries, bounded by the bytes it holds.
//!
//! Entries are shared as `Arc<Entry>`, so serving a hit copies no body bytes. Only entries built
//! from verified content (or docs) can be inserted, since an [`Entry`] cannot be built otherwise.

use std::sync::Arc;

use moka::notification::RemovalCause;

use super::{CacheKey, Entry};

/// Bytes counted for an entry beyond its body and its decoded facts (key, metadata,
/// bookkeeping).
const OVERHEAD: usize = 512;

#[derive(Clone)]
pub struct MemoryTier {
    cache: moka::sync::Cache<CacheKey, Arc<Entry>>,
}

impl MemoryTier {
    /// `on_evict` is called for every entry evicted to stay within `max_bytes`.
    pub fn new(max_bytes: u64, on_evict: impl Fn() + Send + Sync + 'static) -> Self {
        let cache = moka::sync::Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|key: &CacheKey, entry: &Arc<Entry>| {
                let facts = entry.content.facts().heap_bytes();
                (entry.bytes().len() + facts + key.as_str().len() + OVERHEAD).try_into().unwrap_or(u32::MAX)
            })
            .eviction_listener(move |_key, _value, cause| {
                if cause == RemovalCause::Size {
                    on_evict();
                }
            })
            .build();
        Self { cache }
    }

    pub fn get(&self, key: &CacheKey) -> Option<Arc<Entry>> {
        self.cache.get(key)
    }

    pub fn insert(&self, key: CacheKey, entry: Arc<Entry>) {
        self.cache.insert(key, entry);
    }

    pub fn remove(&self, key: &CacheKey) {
        self.cache.invalidate(key);
    }

    /// Removes every entry whose key starts with `prefix`.
    pub fn remove_prefix(&self, prefix: &str) {
        self.remove_matching(|key| key.as_str().starts_with(prefix));
    }

    /// Removes every entry whose key satisfies `doomed`, and returns their keys.
    pub fn remove_matching(&self, doomed: impl Fn(&CacheKey) -> bool) -> Vec<CacheKey> {
        let keys: Vec<CacheKey> = self.cache.iter().filter(|(k, _)| doomed(k)).map(|(k, _)| (*k).clone()).collect();
        for key in &keys {
            self.cache.invalidate(key);
        }
        keys
    }

    /// Whether `key` is held, without counting as a use (its place in the eviction order stays).
    pub fn contains(&self, key: &CacheKey) -> bool {
        self.cache.contains_key(key)
    }

    /// The keys for which `wanted` holds, removing nothing.
    pub fn matching(&self, wanted: impl Fn(&CacheKey) -> bool) -> Vec<CacheKey> {
        self.cache.iter().filter(|(k, _)| wanted(k)).map(|(k, _)| (*k).clone()).collect()
    }

    /// (entries, weighted bytes), after pending maintenance has run.
    pub fn usage(&self) -> (u64, u64) {
        self.cache.run_pending_tasks();
        (self.cache.entry_count(), self.cache.weighted_size())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::{Content, Validators};
    use crate::route::Kind;
    use bytes::Bytes;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn entry(size: usize) -> Arc<Entry> {
        let docs = crate::route::Resource::Docs { name: "a".into(), version: "1.0.0".into() };
        let content = Content::Docs(crate::cache::Docs::for_resource(&docs, Bytes::from(vec![0u8; size])).unwrap());
        Arc::new(Entry::new(content, Kind::Docs, Validators::default(), 0, false))
    }

    #[test]
    fn stays_within_its_byte_budget_and_counts_evictions() {
        let evicted = Arc::new(AtomicUsize::new(0));
        let counter = evicted.clone();
        let tier = MemoryTier::new(100_000, move || {
            counter.fetch_add(1, Ordering::Relaxed);
        });
        for i in 0..50 {
            tier.insert(CacheKey::parse(&format!("public/hexpm/docs/x{i}-1.0.0.tar.gz")).unwrap(), entry(10_000));
        }
        let (_, bytes) = tier.usage();
        assert!(bytes <= 100_000, "{bytes}");
        assert!(evicted.load(Ordering::Relaxed) > 0);
    }

    #[test]
    fn remove_prefix_removes_only_matching() {
        let tier = MemoryTier::new(1 << 20, || {});
        tier.insert(CacheKey::parse("public/hexpm/packages/a").unwrap(), entry(1));
        tier.insert(CacheKey::parse("public/corp/packages/a").unwrap(), entry(1));
        tier.remove_prefix("public/hexpm/");
        assert!(tier.get(&CacheKey::parse("public/hexpm/packages/a").unwrap()).is_none());
        assert!(tier.get(&CacheKey::parse("public/corp/packages/a").unwrap()).is_some());
    }
}
