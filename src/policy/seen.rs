//! When this store first saw each release listed in a verified package record: what `cooldown`
//! counts from. Keys are `REPO/NAME/VERSION` (`REPO` the cache namespace: `hexpm`, `hexpm~ORG`
//! or a configured repository), values Unix seconds. Kept in memory and saved in the store as
//! the document [`DOC`]; every copy (one per replica of a shared store) is merged keeping the
//! earliest time, so replicas agree and an earlier time always wins.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// The store document that holds the first-seen times.
pub const DOC: &str = "policy-seen.json";

/// `REPO/NAME/VERSION`.
pub fn key(namespace: &str, name: &str, version: &str) -> String {
    format!("{namespace}/{name}/{version}")
}

#[derive(Debug, Default)]
pub struct SeenLog {
    times: Mutex<HashMap<String, u64>>,
    dirty: AtomicBool,
}

impl SeenLog {
    fn times(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        self.times.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// When `key` was first seen, if it was.
    pub fn get(&self, key: &str) -> Option<u64> {
        self.times().get(key).copied()
    }

    /// Notes that the releases `keys` are listed at `now`; the ones already known keep their
    /// time. Returns how many were new.
    pub fn note<'a>(&self, keys: impl IntoIterator<Item = &'a str>, now: u64) -> usize {
        let mut times = self.times();
        let mut new = 0;
        for key in keys {
            if !times.contains_key(key) {
                times.insert(key.to_string(), now);
                new += 1;
            }
        }
        if new > 0 {
            self.dirty.store(true, Ordering::Relaxed);
        }
        new
    }

    /// Every first-seen time (what a bundle carries).
    pub fn export(&self) -> BTreeMap<String, u64> {
        self.export_where(|_| true)
    }

    /// The first-seen times of the keys `wanted` accepts.
    pub fn export_where(&self, wanted: impl Fn(&str) -> bool) -> BTreeMap<String, u64> {
        self.times().iter().filter(|(k, _)| wanted(k)).map(|(k, v)| (k.clone(), *v)).collect()
    }

    /// Takes the earlier of each time in `map` and the one held (a bundle's, another
    /// replica's, or `policy baseline`'s). Returns how many changed.
    pub fn merge_earlier(&self, map: BTreeMap<String, u64>) -> usize {
        let mut times = self.times();
        let mut changed = 0;
        for (key, time) in map {
            let held = times.entry(key).or_insert(u64::MAX);
            if time < *held {
                *held = time;
                changed += 1;
            }
        }
        if changed > 0 {
            self.dirty.store(true, Ordering::Relaxed);
        }
        changed
    }

    /// Like [`SeenLog::merge_earlier`] for times read from the store itself: nothing to save.
    pub fn merge_saved(&self, map: BTreeMap<String, u64>) {
        let mut times = self.times();
        for (key, time) in map {
            let held = times.entry(key).or_insert(time);
            *held = (*held).min(time);
        }
    }

    pub fn len(&self) -> usize {
        self.times().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The document to save, when anything changed since the last call.
    pub fn take_changes(&self) -> Option<Vec<u8>> {
        self.dirty
            .swap(false, Ordering::Relaxed)
            .then(|| serde_json::to_vec(&self.export()).expect("a map of strings to numbers serializes"))
    }

    /// Marks the log as changed again (a save that failed).
    pub fn mark_dirty(&self) {
        self.dirty.store(true, Ordering::Relaxed);
    }
}

/// Every saved copy merged, the earliest time of each release winning; a damaged copy is
/// left out (logged).
pub fn merged(copies: &[bytes::Bytes]) -> BTreeMap<String, u64> {
    let mut all: BTreeMap<String, u64> = BTreeMap::new();
    for copy in copies {
        match serde_json::from_slice::<BTreeMap<String, u64>>(copy) {
            Ok(saved) => {
                for (key, time) in saved {
                    let held = all.entry(key).or_insert(time);
                    *held = (*held).min(time);
                }
            }
            Err(e) => tracing::warn!(error = %e, "store: a saved copy of the first-seen times is damaged; left out"),
        }
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_time_stays_and_earlier_wins() {
        let log = SeenLog::default();
        assert_eq!(log.note(["hexpm/a/1.0.0", "hexpm/a/1.1.0"], 100), 2);
        assert_eq!(log.note(["hexpm/a/1.0.0"], 200), 0, "seen already");
        assert_eq!(log.get("hexpm/a/1.0.0"), Some(100));
        assert!(log.take_changes().is_some());
        assert!(log.take_changes().is_none());
        let later = BTreeMap::from([("hexpm/a/1.0.0".to_string(), 150), ("hexpm/b/2.0.0".to_string(), 50)]);
        assert_eq!(log.merge_earlier(later), 1, "only the unknown one: 150 is later than 100");
        assert_eq!(log.get("hexpm/b/2.0.0"), Some(50));
        let earlier = BTreeMap::from([("hexpm/a/1.0.0".to_string(), 10)]);
        assert_eq!(log.merge_earlier(earlier), 1);
        assert_eq!(log.export()["hexpm/a/1.0.0"], 10);
        let copies = [
            bytes::Bytes::from_static(br#"{"r/a/1":5,"r/b/1":9}"#),
            bytes::Bytes::from_static(br#"{"r/a/1":7,"r/c/1":1}"#),
            bytes::Bytes::from_static(b"damaged"),
        ];
        let all = merged(&copies);
        assert_eq!((all["r/a/1"], all["r/b/1"], all["r/c/1"]), (5, 9, 1));
    }
}
