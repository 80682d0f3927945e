//! Request coalescing: one upstream fetch per key, however many requests wait for it (what
//! pingora-cache calls its cache lock). A flight runs in its own task, so one client going away
//! does not cancel a fetch others are waiting for; every waiter gets the entry itself.
//!
//! Bounded work: a flight that no one waits for any more (its clients disconnected) is
//! cancelled, which gives back its place in the upstream queue. Background revalidations and
//! sync wait for their flights until the end, so theirs are never cancelled. At most
//! `max_pending_fetches` flights exist at once; a request that would start one more is
//! answered [`MirrorError::Busy`] at once instead of queueing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use futures::future::{BoxFuture, FutureExt, Shared};
use tokio::task::AbortHandle;

use super::MirrorError;
use crate::cache::Entry;
use crate::metrics::{CacheStatus, Metrics};

pub(super) type Fetched = Result<(Arc<Entry>, CacheStatus), MirrorError>;

type Flight = Shared<BoxFuture<'static, Fetched>>;

struct Running {
    id: u64,
    flight: Flight,
    /// Requests waiting for this flight; the last one to leave before the end cancels it.
    waiters: Arc<AtomicUsize>,
    done: Arc<AtomicBool>,
    abort: AbortHandle,
}

type Map = Arc<Mutex<HashMap<String, Running>>>;

/// Request coalescing: one upstream fetch per key, however many requests wait for it.
#[derive(Clone)]
pub(super) struct Flights {
    map: Map,
    next_id: Arc<AtomicU64>,
    limit: usize,
}

/// One request waiting for a flight. Dropping it (the client went away) before the flight
/// ends, as its last waiter, cancels the flight.
struct Waiter {
    map: Map,
    key: String,
    id: u64,
    waiters: Arc<AtomicUsize>,
    done: Arc<AtomicBool>,
    abort: AbortHandle,
    metrics: Metrics,
}

impl Drop for Waiter {
    fn drop(&mut self) {
        if self.waiters.fetch_sub(1, Ordering::AcqRel) != 1 || self.done.load(Ordering::Acquire) {
            return;
        }
        let mut map = self.map.lock().expect("never poisoned: no panics while held");
        // Someone may have joined between the decrement and the lock.
        if self.waiters.load(Ordering::Acquire) != 0 {
            return;
        }
        if map.get(&self.key).is_some_and(|running| running.id == self.id) {
            map.remove(&self.key);
        }
        drop(map);
        self.abort.abort();
        self.metrics.fetches_cancelled.inc();
    }
}

/// Counts a flight as pending from its start until its task ends or is cancelled.
struct PendingGauge(prometheus::IntGauge);

impl Drop for PendingGauge {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Flights {
    pub(super) fn new(limit: usize) -> Flights {
        Flights { map: Arc::default(), next_id: Arc::default(), limit }
    }

    /// Joins the flight for `key`, or starts one running `work` in its own task. Starting one
    /// when `limit` flights are pending is refused with [`MirrorError::Busy`].
    pub(super) async fn join(
        &self,
        key: String,
        metrics: &Metrics,
        work: impl FnOnce() -> BoxFuture<'static, Fetched>,
    ) -> Fetched {
        let (flight, waiter) = {
            let mut map = self.map.lock().expect("never poisoned: no panics while held");
            if let Some(running) = map.get(&key) {
                metrics.coalesced_waiters.inc();
                running.waiters.fetch_add(1, Ordering::AcqRel);
                let waiter = Waiter {
                    map: self.map.clone(),
                    key,
                    id: running.id,
                    waiters: running.waiters.clone(),
                    done: running.done.clone(),
                    abort: running.abort.clone(),
                    metrics: metrics.clone(),
                };
                (running.flight.clone(), waiter)
            } else {
                if map.len() >= self.limit {
                    metrics.fetches_rejected.inc();
                    return Err(MirrorError::Busy { pending: map.len() });
                }
                let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                let (map_handle, task_key) = (self.map.clone(), key.clone());
                let done = Arc::new(AtomicBool::new(false));
                let task_done = done.clone();
                let work = work();
                metrics.pending_fetches.inc();
                let pending = PendingGauge(metrics.pending_fetches.clone());
                let handle = tokio::spawn(async move {
                    let _pending = pending;
                    let result = work.await;
                    let mut map = map_handle.lock().expect("never poisoned: no panics while held");
                    task_done.store(true, Ordering::Release);
                    if map.get(&task_key).is_some_and(|running| running.id == id) {
                        map.remove(&task_key);
                    }
                    result
                });
                let abort = handle.abort_handle();
                let flight: Flight = async move {
                    handle.await.unwrap_or_else(|e| match e.is_cancelled() {
                        true => Err(MirrorError::Unavailable("the fetch was cancelled".into())),
                        false => Err(MirrorError::Internal(format!("fetch task failed: {e}"))),
                    })
                }
                .boxed()
                .shared();
                let waiters = Arc::new(AtomicUsize::new(1));
                let waiter = Waiter {
                    map: self.map.clone(),
                    key: key.clone(),
                    id,
                    waiters: waiters.clone(),
                    done: done.clone(),
                    abort: abort.clone(),
                    metrics: metrics.clone(),
                };
                map.insert(key, Running { id, flight: flight.clone(), waiters, done, abort });
                (flight, waiter)
            }
        };
        let result = flight.await;
        drop(waiter);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn metrics() -> Metrics {
        Metrics::new(&["hexpm"], &[])
    }

    #[tokio::test]
    async fn a_flight_every_waiter_left_is_cancelled() {
        let flights = Flights::new(10);
        let m = metrics();
        let finished = Arc::new(AtomicBool::new(false));
        let f = finished.clone();
        let join = flights.join("k".into(), &m, move || {
            async move {
                tokio::time::sleep(Duration::from_millis(200)).await;
                f.store(true, Ordering::SeqCst);
                Err(MirrorError::NotFound("never".into()))
            }
            .boxed()
        });
        assert!(tokio::time::timeout(Duration::from_millis(20), join).await.is_err(), "the client gives up");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!finished.load(Ordering::SeqCst), "the abandoned fetch kept running");
        assert_eq!(m.fetches_cancelled.get(), 1);
        assert_eq!(m.pending_fetches.get(), 0);
        assert!(flights.map.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_flight_with_a_waiter_left_runs_to_the_end() {
        let flights = Flights::new(10);
        let m = metrics();
        let work = || {
            async {
                tokio::time::sleep(Duration::from_millis(100)).await;
                Err(MirrorError::NotFound("done".into()))
            }
            .boxed()
        };
        let stays = flights.join("k".into(), &m, work);
        let leaves = flights.join("k".into(), &m, work);
        let (stays, left) = tokio::join!(stays, tokio::time::timeout(Duration::from_millis(10), leaves));
        assert!(left.is_err());
        assert!(matches!(stays, Err(MirrorError::NotFound(ref s)) if s == "done"), "{stays:?}");
        assert_eq!(m.fetches_cancelled.get(), 0);
        assert_eq!(m.coalesced_waiters.get(), 1);
    }

    #[tokio::test]
    async fn beyond_the_limit_a_new_flight_is_refused_at_once_but_joining_is_not() {
        let flights = Flights::new(2);
        let m = metrics();
        let slow = || {
            async {
                tokio::time::sleep(Duration::from_millis(200)).await;
                Err(MirrorError::NotFound("slow".into()))
            }
            .boxed()
        };
        let a = flights.join("a".into(), &m, slow);
        let b = flights.join("b".into(), &m, slow);
        let c = flights.join("c".into(), &m, slow);
        let a2 = flights.join("a".into(), &m, slow);
        let (a, b, c, a2) = tokio::join!(a, b, c, a2);
        assert!(matches!(c, Err(MirrorError::Busy { pending: 2 })), "{c:?}");
        for r in [a, b, a2] {
            assert!(matches!(r, Err(MirrorError::NotFound(_))), "{r:?}");
        }
        assert_eq!(m.fetches_rejected.get(), 1);
        // Once they ended, a new one starts.
        let d = flights.join("c".into(), &m, slow).await;
        assert!(matches!(d, Err(MirrorError::NotFound(_))));
    }
}
