//! Disk eviction: one background task keeps the persistent tier within `disk_cache_bytes`.
//!
//! Every landed write wakes it ([`DiskEviction::written`]); it then asks the store's usage
//! (no I/O) and only when the store is over its budget lists the records and removes the least
//! recently used unpinned ones until the store fits. Wake-ups that arrive during a pass are
//! served by the next one, so a burst of writes costs one pass, not one scan per write.
//! [`DiskEviction::settled`] waits for a pass that started after every write noted before the
//! call, which is what `Mirror::settle_writes` adds to the writes themselves.
//!
//! The task holds the store weakly: between passes it keeps nothing open, so a dropped mirror
//! closes its store (and releases its lock) at once; dropping the handle ends the task.
//!
//! Pinning (sync, import) and eviction both take the `pinning` lock around their look at an
//! entry's record and their change to it, so an entry pinned after a pass listed it is kept.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use futures::future::{BoxFuture, FutureExt};
use futures::stream::TryStreamExt;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use crate::cache::{CacheKey, Store, StoreError, StoredMeta};

/// When an entry was last used, in Unix milliseconds, from its key and stored record.
pub(super) type LastUsed = Box<dyn Fn(&CacheKey, &StoredMeta) -> u64 + Send + Sync>;

/// What a pass needs, apart from the store.
pub(super) struct Policy {
    /// Body bytes the store may hold.
    pub budget: u64,
    pub last_used: LastUsed,
    /// Counts every entry evicted.
    pub evicted: prometheus::IntCounter,
    /// 1 while pinned entries alone exceed the budget (`hexmirror_disk_pinned_over_budget`).
    pub pinned_over: prometheus::IntGauge,
    /// Held around looking at an entry's record and changing it (see the module's comment).
    pub pinning: Arc<tokio::sync::Mutex<()>>,
}

/// The handle of the eviction task, kept by the mirror.
pub(super) struct DiskEviction {
    wake: Arc<Notify>,
    /// Writes noted so far.
    requested: Arc<AtomicU64>,
    /// Writes covered by the passes that have ended (the task's progress).
    done: watch::Receiver<u64>,
    /// The task, until it is started (on the first write, or by `start`).
    idle: Mutex<Option<BoxFuture<'static, ()>>>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for DiskEviction {
    fn drop(&mut self) {
        if let Some(task) = self.task.lock().expect("never poisoned: no panics while held").take() {
            task.abort();
        }
    }
}

impl DiskEviction {
    /// The task for `store`; it is spawned by the first [`DiskEviction::written`] or
    /// [`DiskEviction::start`], from within a runtime.
    pub(super) fn new(store: Weak<dyn Store>, policy: Policy) -> DiskEviction {
        let wake = Arc::new(Notify::new());
        let requested = Arc::new(AtomicU64::new(0));
        let (progress, done) = watch::channel(0);
        let task = run(store, policy, wake.clone(), requested.clone(), progress).boxed();
        DiskEviction { wake, requested, done, idle: Mutex::new(Some(task)), task: Mutex::new(None) }
    }

    /// Spawns the task if it is not running yet.
    fn ensure_running(&self) {
        if let Some(task) = self.idle.lock().expect("never poisoned: no panics while held").take() {
            *self.task.lock().expect("never poisoned: no panics while held") = Some(tokio::spawn(task));
        }
    }

    /// Starts the task with a first pass (a store over its budget at start-up is brought
    /// within it without waiting for a write).
    pub(super) fn start(&self) {
        self.written();
    }

    /// Notes that a write landed: the task looks at the store's usage again.
    pub(super) fn written(&self) {
        self.ensure_running();
        self.requested.fetch_add(1, Ordering::AcqRel);
        self.wake.notify_one();
    }

    /// Waits until a pass that started after every write noted before this call has ended.
    pub(super) async fn settled(&self) {
        let wanted = self.requested.load(Ordering::Acquire);
        let mut done = self.done.clone();
        // An error means the task is gone (the mirror is being dropped): nothing to wait for.
        let _ = done.wait_for(|done| *done >= wanted).await;
    }
}

/// The task: waits for writes, and runs a pass for each batch of them.
async fn run(
    store: Weak<dyn Store>,
    policy: Policy,
    wake: Arc<Notify>,
    requested: Arc<AtomicU64>,
    progress: watch::Sender<u64>,
) {
    loop {
        let wanted = requested.load(Ordering::Acquire);
        if wanted == *progress.borrow() {
            wake.notified().await;
            continue;
        }
        let Some(store) = store.upgrade() else { return };
        match pass(&*store, &policy).await {
            Ok(0) => {}
            Ok(evicted) => {
                policy.evicted.inc_by(evicted);
                tracing::info!(evicted, budget = policy.budget, "store: evicted least recently used entries");
            }
            Err(e) => tracing::warn!(error = %e, "store: eviction failed"),
        }
        drop(store);
        progress.send_replace(wanted);
    }
}

/// One pass: nothing when the store is within its budget; otherwise removes least recently
/// used, unpinned entries until it is. Returns how many it removed. Entries being served are
/// untouched: a served reply holds its own bytes.
pub(super) async fn pass(store: &dyn Store, policy: &Policy) -> Result<u64, StoreError> {
    if store.usage().bytes <= policy.budget {
        // Pinned entries are part of what the store holds: within the budget too.
        policy.pinned_over.set(0);
        return Ok(0);
    }
    let mut candidates: Vec<(u64, CacheKey)> = Vec::new();
    let mut pinned_bytes = 0;
    let mut listing = store.list("");
    while let Some((key, meta)) = listing.try_next().await? {
        match meta.pinned {
            true => pinned_bytes += meta.len,
            false => candidates.push(((policy.last_used)(&key, &meta), key)),
        }
    }
    drop(listing);
    policy.pinned_over.set(i64::from(pinned_bytes > policy.budget));
    // Every write then calls for a pass: say it at most once every ten minutes.
    static LAST_WARNED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let now = crate::cache::unix_now();
    let last = LAST_WARNED.load(std::sync::atomic::Ordering::Relaxed);
    if pinned_bytes > policy.budget
        && (last == 0 || now.saturating_sub(last) >= 600)
        && LAST_WARNED
            .compare_exchange(last, now, std::sync::atomic::Ordering::Relaxed, std::sync::atomic::Ordering::Relaxed)
            .is_ok()
    {
        tracing::warn!(
            pinned_bytes,
            disk_cache_bytes = policy.budget,
            "store: pinned entries (synced or imported) alone exceed disk_cache_bytes; every entry that is not pinned is evicted as soon as it is written"
        );
    }
    candidates.sort();
    let mut evicted = 0;
    for (_, key) in candidates {
        if store.usage().bytes <= policy.budget {
            break;
        }
        let _pinning = policy.pinning.lock().await;
        // Pinned (or removed) since it was listed: keep it.
        match store.head(&key).await? {
            Some(meta) if !meta.pinned => {}
            _ => continue,
        }
        store.remove(&key).await?;
        evicted += 1;
    }
    Ok(evicted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::{Class, Listing, StoreFuture, Usage, Validators};
    use bytes::Bytes;
    use futures::stream::StreamExt;
    use std::collections::{BTreeMap, BTreeSet};
    use std::time::Duration;

    /// A store in memory that counts its listings.
    #[derive(Default)]
    struct Counted {
        entries: Mutex<BTreeMap<CacheKey, (StoredMeta, Bytes)>>,
        listings: AtomicU64,
    }

    impl Counted {
        fn keys(&self) -> Vec<String> {
            self.entries.lock().unwrap().keys().map(|k| k.to_string()).collect()
        }
    }

    fn ready<T: Send + 'static>(value: T) -> StoreFuture<'static, T> {
        futures::future::ready(Ok(value)).boxed()
    }

    impl Store for Counted {
        fn get<'a>(&'a self, key: &'a CacheKey) -> StoreFuture<'a, Option<(StoredMeta, Bytes)>> {
            ready(self.entries.lock().unwrap().get(key).cloned())
        }
        fn head<'a>(&'a self, key: &'a CacheKey) -> StoreFuture<'a, Option<StoredMeta>> {
            ready(self.entries.lock().unwrap().get(key).map(|(meta, _)| meta.clone()))
        }
        fn put<'a>(&'a self, key: &'a CacheKey, meta: &'a StoredMeta, body: Bytes) -> StoreFuture<'a, ()> {
            self.entries.lock().unwrap().insert(key.clone(), (meta.clone(), body));
            ready(())
        }
        fn update_meta<'a>(&'a self, key: &'a CacheKey, meta: &'a StoredMeta) -> StoreFuture<'a, ()> {
            if let Some((old, _)) = self.entries.lock().unwrap().get_mut(key) {
                *old = meta.clone();
            }
            ready(())
        }
        fn remove<'a>(&'a self, key: &'a CacheKey) -> StoreFuture<'a, ()> {
            self.entries.lock().unwrap().remove(key);
            ready(())
        }
        fn list<'a>(&'a self, prefix: &'a str) -> Listing<'a> {
            self.listings.fetch_add(1, Ordering::Relaxed);
            let records: Vec<_> = self
                .entries
                .lock()
                .unwrap()
                .iter()
                .filter(|(k, _)| k.as_str().starts_with(prefix))
                .map(|(k, (meta, _))| Ok((k.clone(), meta.clone())))
                .collect();
            futures::stream::iter(records).boxed()
        }
        fn usage(&self) -> Usage {
            let entries = self.entries.lock().unwrap();
            Usage { entries: entries.len() as u64, bytes: entries.values().map(|(m, _)| m.len).sum() }
        }
        fn flush(&self) -> StoreFuture<'_, ()> {
            ready(())
        }
        fn selected(&self) -> StoreFuture<'_, BTreeSet<String>> {
            ready(BTreeSet::new())
        }
        fn select(&self, _keys: Vec<String>) -> StoreFuture<'_, ()> {
            ready(())
        }
    }

    fn key(name: &str) -> CacheKey {
        CacheKey::parse(&format!("public/hexpm/packages/{name}")).unwrap()
    }

    /// An entry of `len` bytes last confirmed at `fetched_at` (seconds).
    async fn add(store: &Counted, name: &str, len: u64, fetched_at: u64, pinned: bool) {
        let meta = StoredMeta {
            v: StoredMeta::VERSION,
            class: Class::Verified,
            kind: "package".into(),
            sha256: "0".repeat(64),
            len,
            upstream: Validators::default(),
            fetched_at,
            private: false,
            pinned,
        };
        store.put(&key(name), &meta, Bytes::new()).await.unwrap();
    }

    fn policy(budget: u64) -> (Policy, prometheus::IntCounter) {
        let evicted = prometheus::IntCounter::new("evicted", "evicted").unwrap();
        let policy = Policy {
            budget,
            last_used: Box::new(|_, meta| meta.fetched_at * 1000),
            evicted: evicted.clone(),
            pinned_over: prometheus::IntGauge::new("pinned_over", "pinned over").unwrap(),
            pinning: Arc::default(),
        };
        (policy, evicted)
    }

    #[tokio::test]
    async fn over_budget_the_least_recently_used_unpinned_entries_go_until_it_fits() {
        let store = Arc::new(Counted::default());
        // Oldest first: a (pinned), b, c, d, e; 100 bytes each, a budget of 250.
        add(&store, "a", 100, 1, true).await;
        add(&store, "b", 100, 2, false).await;
        add(&store, "c", 100, 3, false).await;
        add(&store, "e", 100, 5, false).await;
        add(&store, "d", 100, 4, false).await;
        let (policy, evicted) = policy(250);
        let pinned_over = policy.pinned_over.clone();
        let dyn_store: Arc<dyn Store> = store.clone();
        let eviction = DiskEviction::new(Arc::downgrade(&dyn_store), policy);
        eviction.written();
        eviction.settled().await;
        assert_eq!(store.keys(), ["public/hexpm/packages/a", "public/hexpm/packages/e"]);
        assert_eq!(evicted.get(), 3);
        assert_eq!(pinned_over.get(), 0, "100 pinned bytes within a budget of 250");
        assert_eq!(store.listings.load(Ordering::Relaxed), 1, "one scan for the pass");
        // Within budget now: more writes cost no scan.
        for _ in 0..5 {
            eviction.written();
        }
        eviction.settled().await;
        assert_eq!(store.listings.load(Ordering::Relaxed), 1, "no scan while within budget");
        // Pinned entries stay even when they alone exceed the budget.
        add(&store, "f", 300, 9, true).await;
        eviction.written();
        eviction.settled().await;
        assert_eq!(store.keys(), ["public/hexpm/packages/a", "public/hexpm/packages/f"]);
        assert_eq!(evicted.get(), 4);
        assert_eq!(pinned_over.get(), 1, "400 pinned bytes over a budget of 250");
    }

    #[tokio::test]
    async fn under_budget_a_pass_does_not_scan() {
        let store = Arc::new(Counted::default());
        add(&store, "a", 100, 1, false).await;
        let (policy, evicted) = policy(100);
        assert_eq!(pass(&*store, &policy).await.unwrap(), 0);
        assert_eq!(store.listings.load(Ordering::Relaxed), 0);
        assert_eq!(evicted.get(), 0);
        assert_eq!(store.keys(), ["public/hexpm/packages/a"]);
    }

    #[tokio::test]
    async fn an_entry_pinned_after_the_listing_is_kept() {
        let store = Arc::new(Counted::default());
        add(&store, "a", 100, 1, false).await;
        add(&store, "b", 100, 2, false).await;
        // `last_used` runs while the pass lists: pin `a` there, after it was listed unpinned.
        let pinner = store.clone();
        let (mut policy, _) = policy(100);
        policy.last_used = Box::new(move |key, meta| {
            if key.as_str().ends_with("/a") {
                let mut entries = pinner.entries.lock().unwrap();
                entries.get_mut(key).unwrap().0.pinned = true;
            }
            meta.fetched_at * 1000
        });
        assert_eq!(pass(&*store, &policy).await.unwrap(), 1);
        assert_eq!(store.keys(), ["public/hexpm/packages/a"]);
    }

    #[tokio::test]
    async fn the_task_keeps_no_store_open_and_ends_with_its_handle() {
        let store: Arc<dyn Store> = Arc::new(Counted::default());
        let (mut policy, _) = policy(100);
        // Held by the task for as long as it lives.
        let alive = Arc::new(());
        let held = alive.clone();
        policy.last_used = Box::new(move |_, _| {
            let _ = &held;
            0
        });
        let eviction = DiskEviction::new(Arc::downgrade(&store), policy);
        eviction.written();
        eviction.settled().await;
        assert_eq!(Arc::strong_count(&store), 1, "idle, the task holds the store weakly");
        assert_eq!(Arc::strong_count(&alive), 2);
        drop(eviction);
        tokio::time::timeout(Duration::from_secs(5), async {
            while Arc::strong_count(&alive) > 1 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the task ends when its handle is dropped");
    }
}
