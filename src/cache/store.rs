//! The persistent tier's interface: the one async [`Store`] that every user of stored entries
//! goes through (the data path, disk eviction, sync, import, export, `verify` and the admin
//! commands). No caller ever does blocking work for a store: a backend whose work blocks (the
//! local [`DiskStore`](super::DiskStore): sled and files) moves it off the runtime threads
//! itself, and one that talks to a network (an object store) is async already.
//!
//! Every call is fallible with a typed [`StoreError`], and every call can be cancelled by
//! dropping its future; a cancelled `put` has either landed whole or not at all. A backend
//! bounds the time of its own calls (a networked one reports an overrun as
//! [`StoreError::TimedOut`]). Listing is a stream that a backend fills page by page, so
//! listing a large store never holds it all at once nor blocks for the whole scan.
//!
//! A store returns raw bytes and records, never an `Entry`: callers re-verify what they read.

use std::collections::BTreeSet;
use std::io::ErrorKind;

use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt};
use futures::stream::{BoxStream, StreamExt, TryStreamExt};

use super::{CacheKey, StoredMeta};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("store index error: {0}")]
    Index(#[from] sled::Error),
    /// The index could not be opened because another process holds its file lock. The text is
    /// sled's, as for `Index`; what makes it this variant is the lock itself (`lock_is_held`).
    #[error("store index error: {0}")]
    Locked(sled::Error),
    #[error("store record is damaged: {0}")]
    Damaged(String),
    /// An entry expected in the store is not there (its write failed or it was evicted).
    #[error("not in the store: {0}")]
    NotStored(String),
    /// The store cannot be used at all (no usable data directory), or cannot be reached.
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    /// A call did not finish within the time its backend allows it.
    #[error("store call timed out: {0}")]
    TimedOut(String),
    /// The task doing a call's work ended without finishing it (a panic, a runtime shutting
    /// down).
    #[error("store task failed: {0}")]
    Task(String),
}

impl StoreError {
    /// True when another process holds the store (a running server): never a reason to
    /// degrade, since two writers would corrupt it. Decided when the store was opened, by
    /// asking the operating system whether the index's lock is held, not by reading the text.
    pub fn is_locked(&self) -> bool {
        matches!(self, StoreError::Locked(_))
    }

    /// True when the disk is full: the mirror then keeps serving from memory and upstream.
    pub fn is_disk_full(&self) -> bool {
        match self {
            StoreError::Io(e) => e.raw_os_error() == Some(28) || e.kind() == ErrorKind::StorageFull,
            StoreError::Index(sled::Error::Io(e)) => e.raw_os_error() == Some(28) || e.kind() == ErrorKind::StorageFull,
            _ => false,
        }
    }
}

impl From<tokio::task::JoinError> for StoreError {
    fn from(e: tokio::task::JoinError) -> Self {
        StoreError::Task(e.to_string())
    }
}

/// A store call in progress.
pub type StoreFuture<'a, T> = BoxFuture<'a, Result<T, StoreError>>;

/// The records under a prefix, in key order, as the backend reads them (page by page).
pub type Listing<'a> = BoxStream<'a, Result<(CacheKey, StoredMeta), StoreError>>;

/// What a store holds, as far as it knows without asking anyone (no I/O).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub entries: u64,
    /// Body bytes.
    pub bytes: u64,
}

/// A persistent tier. `put` is atomic: a reader sees the old record or the new one, never a
/// half-written body, and a `put` interrupted (process killed, future dropped) leaves no
/// visible trace. Records and bodies are addressed by [`CacheKey`]; a record's `sha256` names
/// its body.
pub trait Store: Send + Sync + 'static {
    /// The record and body for `key`. A body that does not match its record's checksum is
    /// reported as `Damaged` and removed.
    fn get<'a>(&'a self, key: &'a CacheKey) -> StoreFuture<'a, Option<(StoredMeta, Bytes)>>;

    /// The record for `key`, without its body.
    fn head<'a>(&'a self, key: &'a CacheKey) -> StoreFuture<'a, Option<StoredMeta>>;

    /// Stores `body` under `key` with its record, replacing what was there.
    fn put<'a>(&'a self, key: &'a CacheKey, meta: &'a StoredMeta, body: Bytes) -> StoreFuture<'a, ()>;

    /// Replaces the record of an existing entry whose body is the one `meta` names (after a
    /// revalidation, or to pin it); otherwise does nothing.
    fn update_meta<'a>(&'a self, key: &'a CacheKey, meta: &'a StoredMeta) -> StoreFuture<'a, ()>;

    /// Removes `key`'s record and body; removing what is not there is not an error.
    fn remove<'a>(&'a self, key: &'a CacheKey) -> StoreFuture<'a, ()>;

    /// Every record whose key starts with `prefix`, in key order. Records that cannot be read
    /// are left out; a failure to read the listing itself ends the stream with an error.
    fn list<'a>(&'a self, prefix: &'a str) -> Listing<'a>;

    /// Entries and body bytes held, as far as the store knows without I/O (a store that cannot
    /// know reports zero, and is never evicted by size).
    fn usage(&self) -> Usage;

    /// Makes every completed `put`, `update_meta` and `remove` durable.
    fn flush(&self) -> StoreFuture<'_, ()>;

    /// The keys that sync and import selected (whether or not they are stored), for `verify`.
    fn selected(&self) -> StoreFuture<'_, BTreeSet<String>>;

    /// Adds `keys` to the selection, durably.
    fn select(&self, keys: Vec<String>) -> StoreFuture<'_, ()>;

    /// True for a store shared by several replicas (an object store): another process may
    /// change it at any time, so a stale copy in memory is compared with it before the
    /// upstream is asked, and cold fetches are coordinated through it ([`Store::claim`]).
    fn shared(&self) -> bool {
        false
    }

    /// True when [`Store::claim`] can answer `Mine` or `Theirs` (a shared store that honours
    /// create-only writes): cold fetches then wait for a claim rather than start early.
    fn coordinates(&self) -> bool {
        false
    }

    /// True when the store tracks its own reachability (sets `hexmirror_store_degraded` and
    /// logs the change itself); otherwise the mirror does from the results of its writes.
    fn reports_health(&self) -> bool {
        false
    }

    /// Asks to be the one replica that fetches `key` from the upstream now (a shared store
    /// that honours create-only writes); see [`Claim`].
    fn claim<'a>(&'a self, _key: &'a CacheKey) -> StoreFuture<'a, Claim> {
        futures::future::ready(Ok(Claim::Unsupported)).boxed()
    }

    /// Gives up a claim taken by [`Store::claim`] (after the entry is stored, or the fetch failed).
    fn release<'a>(&'a self, _key: &'a CacheKey) -> StoreFuture<'a, ()> {
        futures::future::ready(Ok(())).boxed()
    }

    /// True while some replica's unexpired claim on `key` stands.
    fn claimed<'a>(&'a self, _key: &'a CacheKey) -> StoreFuture<'a, bool> {
        futures::future::ready(Ok(false)).boxed()
    }

    /// Tells the other replicas sharing the store about a purge (their memory tiers drop it).
    fn announce_purge<'a>(&'a self, _purge: &'a Purge) -> StoreFuture<'a, ()> {
        futures::future::ready(Ok(())).boxed()
    }

    /// Purges announced after `after_ms` (Unix milliseconds), with their times.
    fn purges_after(&self, _after_ms: u64) -> StoreFuture<'_, Vec<(u64, Purge)>> {
        futures::future::ready(Ok(Vec::new())).boxed()
    }

    /// Removes stored bytes that no record names (what an interrupted write leaves in a
    /// shared store); returns how many. The local store does this when it opens.
    fn sweep_unreferenced(&self) -> StoreFuture<'_, u64> {
        futures::future::ready(Ok(0)).boxed()
    }

    /// Writes this process's copy of a small document the mirror keeps beside the entries
    /// (the log of what an offline mirror was asked for and lacked), replacing it whole.
    /// `name` is one of hexmirror's own, never a client's.
    fn write_doc<'a>(&'a self, _name: &'a str, _bytes: Bytes) -> StoreFuture<'a, ()> {
        futures::future::ready(Ok(())).boxed()
    }

    /// Every copy of document `name`: this process's, and in a shared store every replica's.
    fn read_docs<'a>(&'a self, _name: &'a str) -> StoreFuture<'a, Vec<Bytes>> {
        futures::future::ready(Ok(Vec::new())).boxed()
    }

    /// Where the store is, for messages.
    fn describe(&self) -> String {
        "the local store".into()
    }

    /// [`Store::list`], collected.
    fn list_all<'a>(&'a self, prefix: &'a str) -> StoreFuture<'a, Vec<(CacheKey, StoredMeta)>> {
        self.list(prefix).try_collect().boxed()
    }
}

/// The answer to [`Store::claim`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// No coordination: the store is not shared, or ignores create-only writes.
    Unsupported,
    /// This replica fetches; it releases the claim once the entry is stored.
    Mine,
    /// Another replica fetches; its claim stands until `until` (Unix milliseconds).
    Theirs { until: u64 },
}

/// A purge, as announced to other replicas: package `name`, in `namespace` or in all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Purge {
    pub name: String,
    pub namespace: Option<String>,
}

/// A persistent tier that holds nothing and refuses writes: the empty store of a command run
/// on a data directory that holds no store (`Mirror::open_existing`), which creates nothing.
pub struct NullStore {
    pub reason: String,
}

impl NullStore {
    fn unavailable(&self) -> StoreError {
        StoreError::Unavailable(self.reason.clone())
    }
}

impl Store for NullStore {
    fn get<'a>(&'a self, _key: &'a CacheKey) -> StoreFuture<'a, Option<(StoredMeta, Bytes)>> {
        futures::future::ready(Ok(None)).boxed()
    }
    fn head<'a>(&'a self, _key: &'a CacheKey) -> StoreFuture<'a, Option<StoredMeta>> {
        futures::future::ready(Ok(None)).boxed()
    }
    fn put<'a>(&'a self, _key: &'a CacheKey, _meta: &'a StoredMeta, _body: Bytes) -> StoreFuture<'a, ()> {
        futures::future::ready(Err(self.unavailable())).boxed()
    }
    fn update_meta<'a>(&'a self, _key: &'a CacheKey, _meta: &'a StoredMeta) -> StoreFuture<'a, ()> {
        futures::future::ready(Ok(())).boxed()
    }
    fn remove<'a>(&'a self, _key: &'a CacheKey) -> StoreFuture<'a, ()> {
        futures::future::ready(Ok(())).boxed()
    }
    fn list<'a>(&'a self, _prefix: &'a str) -> Listing<'a> {
        futures::stream::empty().boxed()
    }
    fn usage(&self) -> Usage {
        Usage::default()
    }
    fn flush(&self) -> StoreFuture<'_, ()> {
        futures::future::ready(Ok(())).boxed()
    }
    fn selected(&self) -> StoreFuture<'_, BTreeSet<String>> {
        futures::future::ready(Ok(BTreeSet::new())).boxed()
    }
    fn select(&self, _keys: Vec<String>) -> StoreFuture<'_, ()> {
        futures::future::ready(Err(self.unavailable())).boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_null_store_holds_nothing_and_refuses_writes() {
        let store: std::sync::Arc<dyn Store> = std::sync::Arc::new(NullStore { reason: "no data directory".into() });
        let key = CacheKey::parse("public/hexpm/names").unwrap();
        assert!(store.get(&key).await.unwrap().is_none());
        assert!(store.list_all("").await.unwrap().is_empty());
        assert!(store.selected().await.unwrap().is_empty());
        let err = store.select(vec!["public/hexpm/names".into()]).await.unwrap_err();
        assert_eq!(err.to_string(), "the store is unavailable: no data directory");
        assert_eq!(store.usage(), Usage::default());
    }
}
