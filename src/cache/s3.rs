//! The shared persistent tier: one bucket on S3-compatible storage (AWS S3, MinIO, Garage,
//! R2, ...) behind the async [`Store`] interface, shared by any number of replicas.
//!
//! Layout under the configured prefix `P`:
//!
//! - `P/SCOPE/records/NAMESPACE/PATH`: an entry's record (a [`StoredMeta`], JSON), `SCOPE`
//!   being `public` or `private`, so private content lives under `P/private/` only;
//! - `P/SCOPE/blobs/SHA256`: the bytes, named by their sha256, exactly as the upstream sent
//!   them (no compression, no wrapping). A tarball's bytes are therefore written once whichever
//!   replica fetched them;
//! - `P/leases/KEY`: who is fetching a cold object right now (see [`Coordination`]);
//! - `P/purges/TIME-ID`: purges announced to every replica's memory tier;
//! - `P/selection.json`: what sync and import selected; `P/probe/...`: start-up probes.
//!
//! Every object is written with one PUT (never a multipart upload), which S3 makes visible
//! whole or not at all; a record is written after its bytes, so a replica killed between the
//! two leaves an unreferenced blob (removed by `verify --prune`), never a record without bytes.
//!
//! Nothing read from the bucket is trusted: a blob whose bytes do not hash to its name and its
//! record is reported `Damaged` and removed, and the mirror verifies what this store returns
//! (signature, checksum against the verified package record) before serving it, as it does for
//! the upstream's answers. Whether an entry is private comes from its key, never its record.
//!
//! Every call is bounded by `store.timeout`. When calls fail for want of an answer, the store
//! is *degraded*: calls fail at once (the mirror serves from memory and the upstream), the
//! `hexmirror_store_degraded` gauge is 1, and a probe every [`PROBE_EVERY`] notices the
//! bucket's return. The same probe notices a bucket that goes away while nothing is asked.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use futures::future::FutureExt;
use futures::stream::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3Builder, S3ConditionalPut};
use object_store::path::Path;
use object_store::{ClientOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::store::{Claim, Listing, Purge, Store, StoreError, StoreFuture, Usage};
use super::{unix_now_millis, CacheKey, StoredMeta};
use crate::config::S3Config;
use crate::route::Resource;

/// How often the bucket is probed (for a degraded store: how soon its return is noticed).
pub const PROBE_EVERY: Duration = Duration::from_secs(5);

/// How long a lease keeps other replicas waiting for one replica's fetch of a cold object.
/// A replica killed mid-fetch blocks the key no longer than this.
pub const LEASE: Duration = Duration::from_secs(10);

/// Purges announced longer ago than this are removed by the next purge.
const PURGES_KEPT: Duration = Duration::from_secs(24 * 3600);

/// Records read at once when listing.
const LIST_READS: usize = 16;

/// How replicas sharing the bucket avoid asking the upstream for the same cold object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coordination {
    /// Not known yet (the bucket has not answered since start-up).
    Unknown = 0,
    /// The bucket refuses a second create-only PUT (`If-None-Match: *`): a replica takes a
    /// lease object before fetching; the others wait for the entry it stores.
    Leases = 1,
    /// The bucket accepts a second create-only PUT (Garage 2.5): no leases; each replica
    /// fetches a cold object at most once itself (content-named writes are idempotent).
    Independent = 2,
}

impl Coordination {
    fn from_u8(v: u8) -> Coordination {
        match v {
            1 => Coordination::Leases,
            2 => Coordination::Independent,
            _ => Coordination::Unknown,
        }
    }
}

/// Why the bucket cannot be used at all: configuration mistakes, never a reason to degrade.
#[derive(Debug, thiserror::Error)]
pub enum S3SetupError {
    #[error("store: {0}")]
    Client(String),
    #[error("store: bucket `{bucket}` does not exist at {endpoint}")]
    NoBucket { bucket: String, endpoint: String },
    #[error("store: the credentials were refused by {endpoint} (bucket `{bucket}`): {reason}")]
    Credentials { bucket: String, endpoint: String, reason: String },
    #[error("store: cannot read ca_file {path}: {reason}")]
    CaFile { path: String, reason: String },
}

/// The shared store. A cheap handle.
#[derive(Clone)]
pub struct S3Store {
    inner: Arc<Inner>,
}

struct Inner {
    bucket: Arc<dyn ObjectStore>,
    prefix: String,
    timeout: Duration,
    /// Names this process in lease objects.
    replica: String,
    coordination: AtomicU8,
    degraded: AtomicBool,
    gauge: Option<prometheus::IntGauge>,
    /// Held while `selection.json` is read, extended and written back by this process.
    selecting: tokio::sync::Mutex<()>,
    /// `s3://BUCKET/PREFIX at ENDPOINT`, for messages.
    describe: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct SelectionFile {
    keys: BTreeSet<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct LeaseFile {
    owner: String,
    /// Unix milliseconds after which the lease is void.
    until: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct PurgeFile {
    name: String,
    namespace: Option<String>,
}

/// Turns an object store error into the store's: an answer (not found, already there) is
/// not a failure of the bucket; everything else is, and is counted towards degrading.
fn store_error(e: object_store::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn random_id() -> String {
    let mut bytes = [0u8; 8];
    getrandom::getrandom(&mut bytes).expect("the OS random source answers (checked at start-up)");
    hex::encode(bytes)
}

/// A blob's name as a record gives it: 64 lower-case hex digits, nothing else (so a record
/// can never point outside `SCOPE/blobs/`).
fn is_sha256(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

impl S3Store {
    /// Connects to the bucket and probes it: a missing bucket or refused credentials are
    /// [`S3SetupError`]s; a bucket that does not answer starts the store degraded (it keeps
    /// probing). `gauge` is `hexmirror_store_degraded`.
    pub async fn open(
        config: &S3Config,
        ca_file: Option<&std::path::Path>,
        gauge: Option<prometheus::IntGauge>,
    ) -> Result<S3Store, S3SetupError> {
        // reqwest is built without a provider of its own: ring, as everywhere in hexmirror.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut options = ClientOptions::new()
            .with_timeout(config.timeout)
            .with_connect_timeout(config.timeout.min(Duration::from_secs(3)))
            .with_allow_http(config.allow_http);
        if let Some(path) = ca_file {
            let pem = std::fs::read(path)
                .map_err(|e| S3SetupError::CaFile { path: path.display().to_string(), reason: e.to_string() })?;
            let certificates = object_store::Certificate::from_pem_bundle(&pem)
                .map_err(|e| S3SetupError::CaFile { path: path.display().to_string(), reason: e.to_string() })?;
            for certificate in certificates {
                options = options.with_root_certificate(certificate);
            }
        }
        let retry = object_store::RetryConfig {
            backoff: object_store::BackoffConfig {
                init_backoff: Duration::from_millis(50),
                max_backoff: Duration::from_millis(500),
                base: 2.0,
            },
            max_retries: 2,
            retry_timeout: config.timeout,
        };
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(&config.bucket)
            .with_region(&config.region)
            .with_allow_http(config.allow_http)
            .with_virtual_hosted_style_request(false)
            .with_conditional_put(S3ConditionalPut::ETagMatch)
            .with_client_options(options)
            .with_retry(retry);
        if let Some(endpoint) = &config.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        let bucket = builder.build().map_err(|e| S3SetupError::Client(e.to_string()))?;
        let endpoint = config.endpoint.clone().unwrap_or_else(|| format!("AWS S3 ({})", config.region));
        let describe = match config.prefix.as_str() {
            "" => format!("s3://{} at {endpoint}", config.bucket),
            prefix => format!("s3://{}/{prefix} at {endpoint}", config.bucket),
        };
        let store = S3Store {
            inner: Arc::new(Inner {
                bucket: Arc::new(bucket),
                prefix: config.prefix.clone(),
                timeout: config.timeout,
                replica: random_id(),
                coordination: AtomicU8::new(Coordination::Unknown as u8),
                degraded: AtomicBool::new(false),
                gauge,
                selecting: tokio::sync::Mutex::new(()),
                describe,
            }),
        };
        match store.probe().await {
            Ok(mode) => store.set_coordination(mode),
            Err(ProbeError::Setup(e)) => {
                return Err(match e {
                    object_store::Error::NotFound { .. } => {
                        S3SetupError::NoBucket { bucket: config.bucket.clone(), endpoint }
                    }
                    other => {
                        S3SetupError::Credentials { bucket: config.bucket.clone(), endpoint, reason: other.to_string() }
                    }
                })
            }
            Err(ProbeError::Unreachable(e)) => store.failed(&e),
        }
        store.start_probing();
        Ok(store)
    }

    /// `s3://BUCKET/PREFIX at ENDPOINT`.
    pub fn describe(&self) -> &str {
        &self.inner.describe
    }

    pub fn coordination(&self) -> Coordination {
        Coordination::from_u8(self.inner.coordination.load(Ordering::Relaxed))
    }

    fn set_coordination(&self, mode: Coordination) {
        let old = self.inner.coordination.swap(mode as u8, Ordering::Relaxed);
        if old != mode as u8 {
            match mode {
                Coordination::Leases => {
                    tracing::info!(store = %self.describe(), "store: the bucket refuses a second create-only write; replicas coordinate cold fetches with lease objects")
                }
                Coordination::Independent => {
                    tracing::warn!(store = %self.describe(), "store: the bucket accepted a second create-only write (If-None-Match is ignored); each replica fetches a cold object itself, at most once")
                }
                Coordination::Unknown => {}
            }
        }
    }

    pub fn is_degraded(&self) -> bool {
        self.inner.degraded.load(Ordering::Relaxed)
    }

    fn path(&self, rest: &str) -> Path {
        match self.inner.prefix.as_str() {
            "" => Path::from(rest),
            prefix => Path::from(format!("{prefix}/{rest}")),
        }
    }

    fn record_path(&self, key: &CacheKey) -> Path {
        let (scope, rest) = key.as_str().split_once('/').expect("a key has a scope");
        self.path(&format!("{scope}/records/{rest}"))
    }

    fn blob_path(&self, key: &CacheKey, sha256: &str) -> Path {
        let scope = if key.is_private() { "private" } else { "public" };
        self.path(&format!("{scope}/blobs/{sha256}"))
    }

    fn lease_path(&self, key: &CacheKey) -> Path {
        self.path(&format!("leases/{key}"))
    }

    /// The key a listed record names (`P/SCOPE/records/REST` → `SCOPE/REST`).
    fn key_of(&self, location: &Path) -> Option<CacheKey> {
        let text = percent_encoding::percent_decode_str(location.as_ref()).decode_utf8().ok()?;
        let rest = match self.inner.prefix.as_str() {
            "" => &text[..],
            prefix => text.strip_prefix(prefix)?.strip_prefix('/')?,
        };
        let (scope, rest) = rest.split_once('/')?;
        let rest = rest.strip_prefix("records/")?;
        CacheKey::parse(&format!("{scope}/{rest}"))
    }

    /// Runs a bucket call within the timeout; a failure to get an answer degrades the store,
    /// an answer (any, including "not found") ends a degradation.
    async fn call<T>(
        &self,
        what: &str,
        work: impl std::future::Future<Output = object_store::Result<T>>,
    ) -> Result<object_store::Result<T>, StoreError> {
        if self.is_degraded() {
            return Err(StoreError::Unavailable(format!("{} does not answer (degraded)", self.describe())));
        }
        match tokio::time::timeout(self.inner.timeout, work).await {
            Err(_) => {
                let e = StoreError::TimedOut(format!(
                    "{what} on {} took longer than {:?}",
                    self.describe(),
                    self.inner.timeout
                ));
                self.failed(&e.to_string());
                Err(e)
            }
            Ok(Err(e)) if is_failure(&e) => {
                let text = format!("{what} on {}: {e}", self.describe());
                self.failed(&text);
                Err(store_error(e))
            }
            Ok(answer) => Ok(answer),
        }
    }

    fn failed(&self, error: &str) {
        if !self.inner.degraded.swap(true, Ordering::Relaxed) {
            if let Some(gauge) = &self.inner.gauge {
                gauge.set(1);
            }
            tracing::error!(store = %self.describe(), %error, "store: the shared store does not answer; serving from memory and upstream until it does");
        }
    }

    fn answered(&self) {
        if self.inner.degraded.swap(false, Ordering::Relaxed) {
            if let Some(gauge) = &self.inner.gauge {
                gauge.set(0);
            }
            tracing::info!(store = %self.describe(), "store: the shared store answers again");
        }
    }

    /// Writes a probe object twice, create-only, to learn whether the bucket honours
    /// `If-None-Match: *` (a store's word is not taken for it).
    async fn probe(&self) -> Result<Coordination, ProbeError> {
        let path = self.path(&format!("probe/{}-{}", self.inner.replica, random_id()));
        let create = || PutOptions { mode: PutMode::Create, ..Default::default() };
        let bucket = &self.inner.bucket;
        let timed = |work| async move {
            tokio::time::timeout(self.inner.timeout, work)
                .await
                .unwrap_or_else(|_| Err(object_store::Error::Generic { store: "S3", source: "timed out".into() }))
        };
        match timed(bucket.put_opts(&path, PutPayload::from_static(b"probe"), create()).boxed()).await {
            Ok(_) => {}
            Err(
                e @ (object_store::Error::NotFound { .. }
                | object_store::Error::PermissionDenied { .. }
                | object_store::Error::Unauthenticated { .. }),
            ) => return Err(ProbeError::Setup(e)),
            Err(e) => return Err(ProbeError::Unreachable(e.to_string())),
        }
        let second = timed(bucket.put_opts(&path, PutPayload::from_static(b"probe"), create()).boxed()).await;
        let _ = tokio::time::timeout(self.inner.timeout, bucket.delete(&path)).await;
        match second {
            Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => {
                Ok(Coordination::Leases)
            }
            Ok(_) => Ok(Coordination::Independent),
            Err(e) => Err(ProbeError::Unreachable(e.to_string())),
        }
    }

    /// Probes the bucket every [`PROBE_EVERY`] for as long as the store is open.
    fn start_probing(&self) {
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(PROBE_EVERY).await;
                let Some(inner) = weak.upgrade() else { return };
                let store = S3Store { inner };
                let health = store.path("health");
                let answer = tokio::time::timeout(store.inner.timeout, store.inner.bucket.head(&health)).await;
                match answer {
                    Ok(Ok(_)) | Ok(Err(object_store::Error::NotFound { .. })) => {
                        if store.coordination() == Coordination::Unknown {
                            match store.probe().await {
                                Ok(mode) => store.set_coordination(mode),
                                Err(_) => continue,
                            }
                        }
                        store.answered();
                    }
                    Ok(Err(e)) => store.failed(&e.to_string()),
                    Err(_) => store.failed(&format!("no answer within {:?}", store.inner.timeout)),
                }
            }
        });
    }

    /// The bytes at `path`, or `None` when there is no such object.
    async fn read(&self, what: &str, path: &Path) -> Result<Option<Bytes>, StoreError> {
        let bucket = self.inner.bucket.clone();
        let path_owned = path.clone();
        let answer = self
            .call(what, async move {
                match bucket.get(&path_owned).await {
                    Ok(result) => result.bytes().await.map(Some),
                    Err(object_store::Error::NotFound { .. }) => Ok(None),
                    Err(e) => Err(e),
                }
            })
            .await?;
        answer.map_err(store_error)
    }

    async fn write(&self, what: &str, path: &Path, bytes: Bytes, mode: PutMode) -> Result<(), StoreError> {
        let options = PutOptions { mode, ..Default::default() };
        self.call(what, self.inner.bucket.put_opts(path, PutPayload::from_bytes(bytes), options))
            .await?
            .map(|_| ())
            .map_err(store_error)
    }

    async fn delete(&self, what: &str, path: &Path) -> Result<(), StoreError> {
        match self.call(what, self.inner.bucket.delete(path)).await? {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(store_error(e)),
        }
    }

    async fn read_record(&self, key: &CacheKey) -> Result<Option<StoredMeta>, StoreError> {
        let Some(bytes) = self.read("reading a record", &self.record_path(key)).await? else { return Ok(None) };
        match serde_json::from_slice::<StoredMeta>(&bytes) {
            Ok(meta) if meta.v == StoredMeta::VERSION && is_sha256(&meta.sha256) => Ok(Some(meta)),
            _ => {
                // Not a record hexmirror writes: removed, so that the entry is fetched again.
                self.delete("removing a damaged record", &self.record_path(key)).await?;
                Err(StoreError::Damaged(format!(
                    "{key}: the record in {} is not one hexmirror writes",
                    self.describe()
                )))
            }
        }
    }

    async fn get_entry(&self, key: &CacheKey) -> Result<Option<(StoredMeta, Bytes)>, StoreError> {
        let Some(meta) = self.read_record(key).await? else { return Ok(None) };
        let blob = self.blob_path(key, &meta.sha256);
        // A record whose bytes are gone (purged, pruned) is no entry.
        let Some(body) = self.read("reading an entry's bytes", &blob).await? else { return Ok(None) };
        let expected = meta.sha256.clone();
        let matches = tokio::task::spawn_blocking(move || {
            let digest = hex::encode(Sha256::digest(&body));
            (digest == expected).then_some(body)
        })
        .await?;
        match matches {
            Some(body) if body.len() as u64 == meta.len => Ok(Some((meta, body))),
            _ => {
                // Planted or corrupted in the bucket: neither is used again by anyone.
                self.delete("removing a damaged blob", &blob).await?;
                self.delete("removing a damaged record", &self.record_path(key)).await?;
                Err(StoreError::Damaged(format!(
                    "{key}: its bytes in {} do not match their name and record",
                    self.describe()
                )))
            }
        }
    }

    async fn put_entry(&self, key: &CacheKey, meta: &StoredMeta, body: Bytes) -> Result<(), StoreError> {
        if !is_sha256(&meta.sha256) {
            return Err(StoreError::Damaged(format!("{key}: a record without a sha256")));
        }
        // A registry file's previous bytes go once the new record is in place; a tarball's
        // name is its content, so its bytes never change.
        let replaces = match key.resource() {
            Resource::Tarball { .. } | Resource::Docs { .. } => None,
            _ => self.read_record(key).await.ok().flatten().map(|old| old.sha256).filter(|old| *old != meta.sha256),
        };
        self.write("writing an entry's bytes", &self.blob_path(key, &meta.sha256), body, PutMode::Overwrite).await?;
        let record = Bytes::from(serde_json::to_vec(meta).expect("a record serializes"));
        self.write("writing a record", &self.record_path(key), record, PutMode::Overwrite).await?;
        if let Some(old) = replaces {
            self.delete("removing replaced bytes", &self.blob_path(key, &old)).await?;
        }
        Ok(())
    }

    async fn update_entry(&self, key: &CacheKey, meta: &StoredMeta) -> Result<(), StoreError> {
        match self.read_record(key).await? {
            Some(old) if old.sha256 == meta.sha256 => {
                let record = Bytes::from(serde_json::to_vec(meta).expect("a record serializes"));
                self.write("writing a record", &self.record_path(key), record, PutMode::Overwrite).await
            }
            _ => Ok(()),
        }
    }

    async fn remove_entry(&self, key: &CacheKey) -> Result<(), StoreError> {
        let old = self.read_record(key).await.ok().flatten();
        self.delete("removing a record", &self.record_path(key)).await?;
        if let Some(old) = old {
            self.delete("removing an entry's bytes", &self.blob_path(key, &old.sha256)).await?;
        }
        Ok(())
    }

    /// The directory to list for keys starting with `prefix`, and the scopes it covers.
    fn listing_dirs(&self, prefix: &str) -> Vec<Path> {
        let scopes: Vec<&str> = match prefix.split_once('/') {
            Some((scope, _)) => vec![scope],
            None => ["public", "private"].into_iter().filter(|s| s.starts_with(prefix)).collect(),
        };
        scopes
            .into_iter()
            .map(|scope| {
                // Within the scope: whole path segments of the prefix only (the rest filters).
                let rest = prefix.strip_prefix(scope).and_then(|r| r.strip_prefix('/')).unwrap_or("");
                let dir = match rest.rfind('/') {
                    Some(end) => format!("{scope}/records/{}", &rest[..end]),
                    None => format!("{scope}/records"),
                };
                self.path(&dir)
            })
            .collect()
    }

    fn list_entries<'a>(&'a self, prefix: &'a str) -> Listing<'a> {
        if self.is_degraded() {
            let e = StoreError::Unavailable(format!("{} does not answer (degraded)", self.describe()));
            return futures::stream::once(async move { Err(e) }).boxed();
        }
        let dirs = self.listing_dirs(prefix);
        futures::stream::iter(dirs)
            .flat_map(move |dir| self.inner.bucket.list(Some(&dir)))
            .map_err(|e| {
                self.failed(&e.to_string());
                store_error(e)
            })
            .try_filter_map(move |object| {
                let key = self.key_of(&object.location).filter(|key| key.as_str().starts_with(prefix));
                futures::future::ready(Ok(key))
            })
            .map_ok(move |key| async move {
                let meta = self.read_record(&key).await;
                Ok::<_, StoreError>(match meta {
                    Ok(Some(meta)) => Some((key, meta)),
                    // A record removed since it was listed, or damaged: left out.
                    Ok(None) | Err(StoreError::Damaged(_)) => None,
                    Err(e) => return Err(e),
                })
            })
            .try_buffered(LIST_READS)
            .try_filter_map(|found| futures::future::ready(Ok(found)))
            .boxed()
    }

    async fn read_selection(&self) -> Result<SelectionFile, StoreError> {
        match self.read("reading the selection", &self.path("selection.json")).await? {
            None => Ok(SelectionFile::default()),
            Some(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| StoreError::Damaged(format!("selection.json in {}: {e}", self.describe()))),
        }
    }

    async fn add_selection(&self, keys: Vec<String>) -> Result<(), StoreError> {
        let _selecting = self.inner.selecting.lock().await;
        let mut selection = self.read_selection().await?;
        let before = selection.keys.len();
        selection.keys.extend(keys);
        if selection.keys.len() == before {
            return Ok(());
        }
        let bytes = Bytes::from(serde_json::to_vec(&selection).expect("a selection serializes"));
        self.write("writing the selection", &self.path("selection.json"), bytes, PutMode::Overwrite).await
    }

    async fn claim_key(&self, key: &CacheKey) -> Result<Claim, StoreError> {
        if self.coordination() != Coordination::Leases || self.is_degraded() {
            return Ok(Claim::Unsupported);
        }
        let path = self.lease_path(key);
        for _ in 0..2 {
            let lease =
                LeaseFile { owner: self.inner.replica.clone(), until: unix_now_millis() + LEASE.as_millis() as u64 };
            let bytes = Bytes::from(serde_json::to_vec(&lease).expect("a lease serializes"));
            let options = PutOptions { mode: PutMode::Create, ..Default::default() };
            match self
                .call("taking a lease", self.inner.bucket.put_opts(&path, PutPayload::from_bytes(bytes), options))
                .await?
            {
                Ok(_) => return Ok(Claim::Mine),
                Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => {}
                Err(e) => return Err(store_error(e)),
            }
            let held = self.read("reading a lease", &path).await?;
            match held.and_then(|bytes| serde_json::from_slice::<LeaseFile>(&bytes).ok()) {
                Some(lease) if lease.until > unix_now_millis() => return Ok(Claim::Theirs { until: lease.until }),
                // Expired (its replica was killed) or unreadable: removed, then taken once more.
                _ => self.delete("removing an expired lease", &path).await?,
            }
        }
        Ok(Claim::Unsupported)
    }

    async fn release_key(&self, key: &CacheKey) -> Result<(), StoreError> {
        let path = self.lease_path(key);
        let held = self.read("reading a lease", &path).await?;
        match held.and_then(|bytes| serde_json::from_slice::<LeaseFile>(&bytes).ok()) {
            Some(lease) if lease.owner == self.inner.replica => self.delete("releasing a lease", &path).await,
            _ => Ok(()),
        }
    }

    async fn lease_held(&self, key: &CacheKey) -> Result<bool, StoreError> {
        let held = self.read("reading a lease", &self.lease_path(key)).await?;
        Ok(held
            .and_then(|bytes| serde_json::from_slice::<LeaseFile>(&bytes).ok())
            .is_some_and(|lease| lease.until > unix_now_millis()))
    }

    async fn announce(&self, purge: &Purge) -> Result<(), StoreError> {
        let now = unix_now_millis();
        let file = PurgeFile { name: purge.name.clone(), namespace: purge.namespace.clone() };
        let bytes = Bytes::from(serde_json::to_vec(&file).expect("a purge serializes"));
        let path = self.path(&format!("purges/{now:020}-{}", random_id()));
        self.write("announcing a purge", &path, bytes, PutMode::Overwrite).await?;
        // Announcements older than a day have reached every replica: removed.
        let listing = self.inner.bucket.list(Some(&self.path("purges"))).try_filter_map(|object| {
            let time = object.location.filename().and_then(|name| name.split('-').next()?.parse::<u64>().ok());
            let old = time.is_some_and(|t| t + (PURGES_KEPT.as_millis() as u64) < now);
            futures::future::ready(Ok(old.then_some(object.location)))
        });
        let old: Vec<Path> = self.call("listing purges", listing.try_collect()).await?.map_err(store_error)?;
        for path in old {
            self.delete("removing an old purge", &path).await?;
        }
        Ok(())
    }

    async fn list_purges(&self, after_ms: u64) -> Result<Vec<(u64, Purge)>, StoreError> {
        let dir = self.path("purges");
        let offset = self.path(&format!("purges/{after_ms:020}-~"));
        let listed: Vec<Path> = self
            .call(
                "listing purges",
                self.inner.bucket.list_with_offset(Some(&dir), &offset).map_ok(|o| o.location).try_collect(),
            )
            .await?
            .map_err(store_error)?;
        let mut purges = Vec::new();
        for path in listed {
            let time = path.filename().and_then(|name| name.split('-').next()?.parse::<u64>().ok());
            let Some(time) = time.filter(|t| *t > after_ms) else { continue };
            if let Some(bytes) = self.read("reading a purge", &path).await? {
                if let Ok(file) = serde_json::from_slice::<PurgeFile>(&bytes) {
                    purges.push((time, Purge { name: file.name, namespace: file.namespace }));
                }
            }
        }
        Ok(purges)
    }

    /// Removes blobs no record names, older than an hour (a blob is written just before its
    /// record: a younger one may be a write in progress).
    async fn sweep(&self) -> Result<u64, StoreError> {
        let mut named = BTreeSet::new();
        let mut records = self.list_entries("");
        while let Some((key, meta)) = records.try_next().await? {
            named.insert(format!("{}/{}", if key.is_private() { "private" } else { "public" }, meta.sha256));
        }
        // Unix seconds an hour ago.
        let cutoff = super::unix_now() as i64 - 3600;
        let mut removed = 0;
        for scope in ["public", "private"] {
            let blobs: Vec<object_store::ObjectMeta> = self
                .inner
                .bucket
                .list(Some(&self.path(&format!("{scope}/blobs"))))
                .try_collect()
                .await
                .map_err(store_error)?;
            for blob in blobs {
                let Some(name) = blob.location.filename().map(str::to_string) else { continue };
                let young = blob.last_modified.timestamp() > cutoff;
                if !named.contains(&format!("{scope}/{name}")) && !young {
                    self.delete("removing an unreferenced blob", &blob.location).await?;
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }
}

enum ProbeError {
    /// The bucket answered that it cannot be used (missing, credentials refused).
    Setup(object_store::Error),
    /// No answer: the store starts degraded and probes again.
    Unreachable(String),
}

/// True when an error means the bucket gave no usable answer (as opposed to "not found",
/// "already exists": answers).
fn is_failure(e: &object_store::Error) -> bool {
    !matches!(
        e,
        object_store::Error::NotFound { .. }
            | object_store::Error::AlreadyExists { .. }
            | object_store::Error::Precondition { .. }
            | object_store::Error::NotModified { .. }
    )
}

impl Store for S3Store {
    fn get<'a>(&'a self, key: &'a CacheKey) -> StoreFuture<'a, Option<(StoredMeta, Bytes)>> {
        self.get_entry(key).boxed()
    }

    fn head<'a>(&'a self, key: &'a CacheKey) -> StoreFuture<'a, Option<StoredMeta>> {
        self.read_record(key).boxed()
    }

    fn put<'a>(&'a self, key: &'a CacheKey, meta: &'a StoredMeta, body: Bytes) -> StoreFuture<'a, ()> {
        self.put_entry(key, meta, body).boxed()
    }

    fn update_meta<'a>(&'a self, key: &'a CacheKey, meta: &'a StoredMeta) -> StoreFuture<'a, ()> {
        self.update_entry(key, meta).boxed()
    }

    fn remove<'a>(&'a self, key: &'a CacheKey) -> StoreFuture<'a, ()> {
        self.remove_entry(key).boxed()
    }

    fn list<'a>(&'a self, prefix: &'a str) -> Listing<'a> {
        self.list_entries(prefix)
    }

    fn usage(&self) -> Usage {
        Usage::default()
    }

    fn flush(&self) -> StoreFuture<'_, ()> {
        // A PUT that returned is durable.
        futures::future::ready(Ok(())).boxed()
    }

    fn selected(&self) -> StoreFuture<'_, BTreeSet<String>> {
        async move { Ok(self.read_selection().await?.keys) }.boxed()
    }

    fn select(&self, keys: Vec<String>) -> StoreFuture<'_, ()> {
        self.add_selection(keys).boxed()
    }

    fn shared(&self) -> bool {
        true
    }

    fn reports_health(&self) -> bool {
        true
    }

    fn coordinates(&self) -> bool {
        self.coordination() == Coordination::Leases
    }

    fn claim<'a>(&'a self, key: &'a CacheKey) -> StoreFuture<'a, Claim> {
        self.claim_key(key).boxed()
    }

    fn release<'a>(&'a self, key: &'a CacheKey) -> StoreFuture<'a, ()> {
        self.release_key(key).boxed()
    }

    fn claimed<'a>(&'a self, key: &'a CacheKey) -> StoreFuture<'a, bool> {
        self.lease_held(key).boxed()
    }

    fn announce_purge<'a>(&'a self, purge: &'a Purge) -> StoreFuture<'a, ()> {
        self.announce(purge).boxed()
    }

    fn purges_after(&self, after_ms: u64) -> StoreFuture<'_, Vec<(u64, Purge)>> {
        self.list_purges(after_ms).boxed()
    }

    fn sweep_unreferenced(&self) -> StoreFuture<'_, u64> {
        self.sweep().boxed()
    }

    fn describe(&self) -> String {
        self.inner.describe.clone()
    }

    fn write_doc<'a>(&'a self, name: &'a str, bytes: Bytes) -> StoreFuture<'a, ()> {
        async move {
            // One copy per replica: replicas never overwrite each other's.
            let path = self.path(&format!("docs/{name}/{}", self.inner.replica));
            self.write("writing a document", &path, bytes, PutMode::Overwrite).await
        }
        .boxed()
    }

    fn read_docs<'a>(&'a self, name: &'a str) -> StoreFuture<'a, Vec<Bytes>> {
        async move {
            let dir = self.path(&format!("docs/{name}"));
            let listed: Vec<Path> = self
                .call("listing documents", self.inner.bucket.list(Some(&dir)).map_ok(|o| o.location).try_collect())
                .await?
                .map_err(store_error)?;
            let mut docs = Vec::new();
            for path in listed {
                if let Some(bytes) = self.read("reading a document", &path).await? {
                    docs.push(bytes);
                }
            }
            Ok(docs)
        }
        .boxed()
    }
}
