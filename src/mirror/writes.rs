//! Durable writes behind the answer: a request is answered as soon as its entry is verified and
//! in the memory tier, and the persistent tier's write (temp file, fsync, rename, index) runs
//! in the background. A crash can lose an entry written this way, never corrupt one: the
//! store's own writes are crash-safe, and a lost entry is fetched and verified again.
//!
//! Writes to one key run in the order they were submitted (a revalidation's metadata update
//! never lands before the body it describes). At most [`WRITERS`] run at once; beyond that a
//! new write waits for a slot, which slows the requests that cause writes instead of holding
//! an unbounded queue of bodies in memory. Whoever needs entries to be durable (sync, pinning,
//! purging, shutdown) waits for [`Writes::settled`] first.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::future::{BoxFuture, FutureExt, Shared};
use tokio::sync::Semaphore;

use crate::cache::CacheKey;

/// Background writes that may run at once.
pub(super) const WRITERS: usize = 64;

type Pending = Shared<BoxFuture<'static, ()>>;

pub(super) struct Writes {
    pending: Arc<Mutex<HashMap<CacheKey, (u64, Pending)>>>,
    next_id: AtomicU64,
    slots: Arc<Semaphore>,
    /// The last of the small documents saved with [`Writes::chain`].
    chained: Mutex<Option<Pending>>,
}

impl Default for Writes {
    fn default() -> Self {
        Writes {
            pending: Arc::default(),
            next_id: AtomicU64::new(0),
            slots: Arc::new(Semaphore::new(WRITERS)),
            chained: Mutex::new(None),
        }
    }
}

/// A spawned job as a future any number of waiters can share.
fn shared(task: tokio::task::JoinHandle<()>) -> Pending {
    async move {
        if let Err(e) = task.await {
            tracing::error!(error = %e, "store: background write task failed");
        }
    }
    .boxed()
    .shared()
}

impl Writes {
    /// Runs `job` in the background after any earlier write to `key`. Returns once the job is
    /// queued (waiting only when [`WRITERS`] writes are already running).
    pub(super) async fn submit(&self, key: CacheKey, job: BoxFuture<'static, ()>) {
        let slot = self.slots.clone().acquire_owned().await.expect("the semaphore is never closed");
        let mut pending = self.pending.lock().expect("never poisoned: no panics while held");
        let earlier = pending.get(&key).map(|(_, write)| write.clone());
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (map, task_key) = (self.pending.clone(), key.clone());
        let task = tokio::spawn(async move {
            if let Some(earlier) = earlier {
                earlier.await;
            }
            job.await;
            drop(slot);
            let mut map = map.lock().expect("never poisoned: no panics while held");
            if map.get(&task_key).is_some_and(|(write_id, _)| *write_id == id) {
                map.remove(&task_key);
            }
        });
        pending.insert(key, (id, shared(task)));
    }

    /// Runs `job` in the background after the job chained before it, without waiting for a
    /// slot: for a small document saved whole from code that cannot wait (each save a snapshot,
    /// so a later one must never land first). [`Writes::settled`] waits for it too.
    pub(super) fn chain(&self, job: BoxFuture<'static, ()>) {
        let mut chained = self.chained.lock().expect("never poisoned: no panics while held");
        let earlier = chained.take();
        let task = tokio::spawn(async move {
            if let Some(earlier) = earlier {
                earlier.await;
            }
            job.await;
        });
        *chained = Some(shared(task));
    }

    /// Waits until every write submitted or chained before this call has finished.
    pub(super) async fn settled(&self) {
        let mut writes: Vec<Pending> = {
            let pending = self.pending.lock().expect("never poisoned: no panics while held");
            pending.values().map(|(_, write)| write.clone()).collect()
        };
        writes.extend(self.chained.lock().expect("never poisoned: no panics while held").clone());
        futures::future::join_all(writes).await;
    }

    /// Waits until every write to `key` submitted before this call has finished.
    pub(super) async fn settled_key(&self, key: &CacheKey) {
        let write = self.pending.lock().expect("never poisoned: no panics while held").get(key).map(|(_, w)| w.clone());
        if let Some(write) = write {
            write.await;
        }
    }

    /// Keys with writes queued or running.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.pending.lock().expect("never poisoned: no panics while held").len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::Resource;
    use std::time::Duration;

    fn key(name: &str) -> CacheKey {
        CacheKey::new("hexpm", &Resource::Package(name.into()), false)
    }

    #[tokio::test]
    async fn chained_saves_land_in_order_and_settle_with_the_rest() {
        let writes = Writes::default();
        let log = Arc::new(Mutex::new(Vec::new()));
        // The first save is the slowest: unchained, the later snapshots would land first.
        for (i, delay) in [(1, 80), (2, 0), (3, 30), (4, 0)] {
            let log = log.clone();
            writes.chain(
                async move {
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                    log.lock().unwrap().push(i);
                }
                .boxed(),
            );
        }
        writes.settled().await;
        assert_eq!(*log.lock().unwrap(), [1, 2, 3, 4], "settled before every save landed, or out of order");
    }

    #[tokio::test]
    async fn writes_to_one_key_run_in_order_and_settle() {
        let writes = Writes::default();
        let log = Arc::new(Mutex::new(Vec::new()));
        for (i, delay) in [(1, 60), (2, 0), (3, 20)] {
            let log = log.clone();
            writes
                .submit(
                    key("a"),
                    async move {
                        tokio::time::sleep(Duration::from_millis(delay)).await;
                        log.lock().unwrap().push(i);
                    }
                    .boxed(),
                )
                .await;
        }
        assert_eq!(writes.len(), 1, "one key, one pending chain");
        writes.settled().await;
        assert_eq!(*log.lock().unwrap(), vec![1, 2, 3]);
        assert_eq!(writes.len(), 0);
    }

    #[tokio::test]
    async fn writes_to_different_keys_run_at_once() {
        let writes = Writes::default();
        let started = std::time::Instant::now();
        for name in ["a", "b", "c", "d"] {
            writes.submit(key(name), tokio::time::sleep(Duration::from_millis(100)).boxed()).await;
        }
        writes.settled().await;
        assert!(started.elapsed() < Duration::from_millis(350), "{:?}", started.elapsed());
    }
}
