//! Request coalescing: one upstream fetch per key, however many requests wait for it (what
//! pingora-cache calls its cache lock). A flight runs in its own task, so a client going away
//! does not cancel a fetch others are waiting for; every waiter gets the entry itself.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::future::{BoxFuture, FutureExt, Shared};

use super::MirrorError;
use crate::cache::Entry;
use crate::metrics::{CacheStatus, Metrics};

pub(super) type Fetched = Result<(Arc<Entry>, CacheStatus), MirrorError>;

type Flight = Shared<BoxFuture<'static, Fetched>>;

/// Request coalescing: one upstream fetch per key, however many requests wait for it.
#[derive(Clone, Default)]
pub(super) struct Flights {
    map: Arc<Mutex<HashMap<String, (u64, Flight)>>>,
    next_id: Arc<AtomicU64>,
}

impl Flights {
    /// Joins the flight for `key`, or starts one running `work` in its own task (so that a
    /// client going away does not cancel a fetch others are waiting for).
    pub(super) async fn join(
        &self,
        key: String,
        metrics: &Metrics,
        work: impl FnOnce() -> BoxFuture<'static, Fetched>,
    ) -> Fetched {
        let flight = {
            let mut map = self.map.lock().expect("never poisoned: no panics while held");
            if let Some((_, flight)) = map.get(&key) {
                metrics.coalesced_waiters.inc();
                flight.clone()
            } else {
                let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                let map_handle = self.map.clone();
                let task_key = key.clone();
                let work = work();
                let handle = tokio::spawn(async move {
                    let result = work.await;
                    let mut map = map_handle.lock().expect("never poisoned: no panics while held");
                    if map.get(&task_key).is_some_and(|(flight_id, _)| *flight_id == id) {
                        map.remove(&task_key);
                    }
                    result
                });
                let flight: Flight = async move {
                    handle.await.unwrap_or_else(|e| Err(MirrorError::Internal(format!("fetch task failed: {e}"))))
                }
                .boxed()
                .shared();
                map.insert(key, (id, flight.clone()));
                flight
            }
        };
        flight.await
    }
}
