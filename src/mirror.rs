//! The data path: look up, fetch (coalesced), verify, store, answer.
//!
//! A request for a repository resource is answered by [`Mirror::get`]:
//!
//! 1. **Resolve the target**: which configured repository serves it, which origin its signed
//!    payloads must carry, and the cache namespace (`target`). A closed target (hexmirror's own
//!    key, or an access list) turns away an unauthorized client before anything else
//!    (`may_enter`).
//! 2. **Look up** the memory tier, then the persistent tier: the public copy first (it serves
//!    everyone), then the private one. Bytes read from disk are verified again before they
//!    become an entry, and their privacy comes from the key (`lookup`).
//! 3. **Authorize** private entries: hexmirror's access list, the explicit all-clients opt-in,
//!    or a conditional re-check with the upstream using the client's own credentials
//!    (`recheck`); what a coalesced fetch returns is authorized again for each waiter.
//! 4. **Decide freshness**: registry files for `registry_ttl`; a tarball for as long as its
//!    checksum matches the verified package record; docs per the upstream's max-age.
//! 5. **Fetch** what is missing or stale, once for any number of concurrent requests
//!    (`Flights`), with the credential policy applied (`credentials_for`), revalidating with
//!    `If-None-Match`/`If-Modified-Since` where a copy exists.
//! 6. **Verify** the upstream's bytes (`verify_content`, calling the pure `verify` module) and
//!    **store** them in both tiers; a refusal is answered 502 and never stored or remembered.
//! 7. When the upstream is down, times out, answers 5xx or 429, **serve the last verified copy**
//!    (`stale`); a 404 is remembered for `negative_ttl`.
//!
//! The invariant: a [`Reply`] body is the bytes of an [`Entry`], and an entry holds only
//! verified content or a docs tarball; so nothing unverified is ever served as verified.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt, Shared};
use http::header::{HeaderMap, HeaderValue};
use http::StatusCode;
use sha2::{Digest, Sha256};

use crate::cache::{unix_now, CacheKey, Class, Content, DiskStore, Entry, MemoryTier, Store, StoreError, Validators};
use crate::config::{Config, RepoConfig, HEXPM};
use crate::metrics::{CacheStatus, Metrics};
use crate::route::{Kind, Resource};
use crate::upstream::{Upstream, UpstreamError, UpstreamRequest, UpstreamResponse};
use crate::verify::{self, Facts, RegistryFile, ReleaseChecksum, VerifyError};

/// Where a repository request goes and what its payloads must say.
#[derive(Debug, Clone)]
pub struct Target {
    pub repo: Arc<RepoConfig>,
    /// Cache namespace: the repository name, or `hexpm~ORG` for a hex.pm organization.
    pub namespace: String,
    /// The `repository` the signed payloads must carry.
    pub origin: String,
    /// Path prefix at the upstream: empty, or `/repos/ORG` for a hex.pm organization.
    pub prefix: String,
}

impl Target {
    /// The metric label: the configured repository (organizations count under their parent).
    pub fn label(&self) -> &str {
        &self.repo.name
    }
}

/// The credentials a client presented.
#[derive(Clone, Default)]
pub struct ClientCredentials {
    authorization: Option<HeaderValue>,
    /// hexmirror's own work (sync, verify): authorized for every repository it is configured
    /// for. Never built from a request.
    internal: bool,
}

impl std::fmt::Debug for ClientCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.authorization.is_some() {
            "ClientCredentials(<redacted>)"
        } else {
            "ClientCredentials(none)"
        })
    }
}

impl ClientCredentials {
    /// What a client sent in `Authorization`.
    pub fn from_header(authorization: Option<HeaderValue>) -> Self {
        ClientCredentials { authorization, internal: false }
    }

    /// hexmirror's own requests (sync, verify, repair); they use the repository's own
    /// credential, never a client's.
    pub(crate) fn internal() -> Self {
        ClientCredentials { authorization: None, internal: true }
    }

    /// The token a client presents to hexmirror: `Bearer TOKEN`, a raw key, or the password of
    /// HTTP Basic (what `~/.netrc` gives Hex).
    pub fn token(&self) -> Option<String> {
        let value = self.authorization.as_ref()?.to_str().ok()?.trim();
        if let Some(token) = value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer ")) {
            return Some(token.trim().to_string());
        }
        if let Some(encoded) = value.strip_prefix("Basic ").or_else(|| value.strip_prefix("basic ")) {
            use base64::Engine;
            let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
            let text = String::from_utf8(decoded).ok()?;
            return text.split_once(':').map(|(_, password)| password.to_string());
        }
        Some(value.to_string())
    }
}

/// The credential an upstream request carries, decided by the repository's trust policy.
#[derive(Clone)]
enum Credential {
    None,
    /// The client's own `Authorization`, to a trusted upstream.
    Client(HeaderValue),
    /// hexmirror's own key (or the OAuth token obtained with it).
    Own,
}

impl Credential {
    /// Identifies the credential within the in-flight map only (never stored, never logged),
    /// so that one client's credentials never answer another's request.
    fn fingerprint(&self) -> String {
        match self {
            Credential::None => "anonymous".into(),
            Credential::Own => "own".into(),
            Credential::Client(value) => hex::encode(&Sha256::digest(value.as_bytes())[..12]),
        }
    }
}

/// What a client is sent.
#[derive(Debug, Clone)]
pub struct Reply {
    pub body: Bytes,
    pub etag: String,
    pub cache_control: Option<String>,
    pub last_modified: Option<String>,
    pub status: CacheStatus,
    pub private: bool,
    pub docs: bool,
    /// What verification learned from the body (a shared handle, never a second decode).
    pub facts: Facts,
}

impl Reply {
    fn from_entry(entry: &Entry, status: CacheStatus) -> Reply {
        Reply {
            body: entry.bytes().clone(),
            etag: entry.etag.clone(),
            cache_control: entry.upstream.cache_control.clone(),
            last_modified: entry.upstream.last_modified.clone(),
            status,
            private: entry.private,
            docs: entry.content.class() == Class::Docs,
            facts: entry.content.facts().clone(),
        }
    }
}

/// Why a request could not be answered with content. `status()` is the one status mapping.
#[derive(Debug, Clone, thiserror::Error)]
pub enum MirrorError {
    #[error("not found: {0}")]
    NotFound(String),
    #[error("refused: {0}")]
    Refused(#[from] VerifyError),
    #[error("{0}")]
    Upstream(#[from] UpstreamError),
    #[error("authentication required")]
    Unauthorized,
    #[error("service unavailable: {0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl MirrorError {
    pub fn status(&self) -> StatusCode {
        match self {
            MirrorError::NotFound(_) => StatusCode::NOT_FOUND,
            MirrorError::Refused(_) => StatusCode::BAD_GATEWAY,
            MirrorError::Upstream(UpstreamError::Timeout) => StatusCode::GATEWAY_TIMEOUT,
            MirrorError::Upstream(UpstreamError::RateLimited(_)) => StatusCode::SERVICE_UNAVAILABLE,
            MirrorError::Upstream(_) => StatusCode::BAD_GATEWAY,
            MirrorError::Unauthorized => StatusCode::UNAUTHORIZED,
            MirrorError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            MirrorError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn cache_status(&self) -> CacheStatus {
        match self {
            MirrorError::NotFound(_) => CacheStatus::Negative,
            MirrorError::Refused(_) => CacheStatus::Refused,
            MirrorError::Unauthorized => CacheStatus::Denied,
            _ => CacheStatus::Error,
        }
    }

    /// Seconds a client should wait, for a 503 caused by upstream rate limiting.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            MirrorError::Upstream(UpstreamError::RateLimited(s)) => Some(*s),
            _ => None,
        }
    }
}

/// A refused upstream answer, kept for the admin view.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Refusal {
    pub time: u64,
    pub repo: String,
    pub resource: String,
    pub upstream: String,
    pub reason: String,
}

const REFUSALS_KEPT: usize = 100;

/// What must hold for a cached copy to be served, decided before lookup.
#[derive(Debug, Clone)]
enum Check {
    /// Registry files, installs CSVs and signatures: fresh for `ttl` seconds (`None`: any age).
    Ttl(Option<u64>),
    /// A tarball: its checksum must match the verified package record.
    Tarball(ReleaseChecksum),
    /// An installer archive: its sha512 must match the verified installs CSV.
    Installer(String),
    /// Docs: fresh per the upstream's max-age.
    Docs,
}

type Fetched = Result<(Arc<Entry>, CacheStatus), MirrorError>;
type Flight = Shared<BoxFuture<'static, Fetched>>;

/// Request coalescing: one upstream fetch per key, however many requests wait for it.
#[derive(Clone, Default)]
struct Flights {
    map: Arc<Mutex<HashMap<String, (u64, Flight)>>>,
    next_id: Arc<AtomicU64>,
}

impl Flights {
    /// Joins the flight for `key`, or starts one running `work` in its own task (so that a
    /// client going away does not cancel a fetch others are waiting for).
    async fn join(
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

struct Inner {
    config: Arc<Config>,
    repos: HashMap<String, Arc<RepoConfig>>,
    memory: MemoryTier,
    store: Arc<dyn Store>,
    upstream: Upstream,
    flights: Flights,
    negative: moka::sync::Cache<CacheKey, ()>,
    metrics: Metrics,
    tokens: HashMap<String, crate::oauth::TokenSource>,
    degraded: AtomicBool,
    refusals: Mutex<VecDeque<Refusal>>,
}

/// The mirror: a cheap handle shared by every connection.
#[derive(Clone)]
pub struct Mirror {
    inner: Arc<Inner>,
}

impl Mirror {
    /// Opens the persistent tier under `data_dir` and builds the mirror.
    pub fn open(config: Config, metrics: Metrics) -> Result<Mirror, String> {
        let opened = DiskStore::open(&config.data_dir)
            .map_err(|e| format!("cannot open the store in {}: {e}", config.data_dir.display()))?;
        Self::from_disk(config, metrics, opened)
    }

    fn from_disk(
        config: Config,
        metrics: Metrics,
        (store, sweep): (DiskStore, crate::cache::disk::Sweep),
    ) -> Result<Mirror, String> {
        if sweep != Default::default() {
            tracing::info!(
                temp_files = sweep.temp_files,
                orphan_blobs = sweep.orphan_blobs,
                dangling_records = sweep.dangling_records,
                "store: cleaned what an interrupted run left"
            );
        }
        Self::with_store(config, metrics, Arc::new(store))
    }

    /// Like [`Mirror::open`] for the server: a data directory that cannot be used (read-only,
    /// no permission, no space) degrades to serving from memory and the upstream, loudly.
    /// Another process holding the store is still an error.
    pub fn open_for_serving(config: Config, metrics: Metrics) -> Result<Mirror, String> {
        match DiskStore::open(&config.data_dir) {
            Ok(opened) => Self::from_disk(config, metrics, opened),
            Err(e) if e.is_locked() => Err(format!(
                "cannot open the store in {}: {e} (is another hexmirror using it?)",
                config.data_dir.display()
            )),
            Err(e) => {
                let store: Arc<dyn Store> = match DiskStore::open_read_only(&config.data_dir) {
                    Ok(store) => {
                        tracing::error!(
                            data_dir = %config.data_dir.display(),
                            error = %e,
                            entries = store.usage().0,
                            "store: the data directory is not writable; serving what it holds read-only, the rest from upstream"
                        );
                        Arc::new(store)
                    }
                    Err(_) => {
                        tracing::error!(
                            data_dir = %config.data_dir.display(),
                            error = %e,
                            "store: cannot open the data directory; serving from memory and upstream only"
                        );
                        Arc::new(crate::cache::NullStore { reason: e.to_string() })
                    }
                };
                metrics.store_degraded.set(1);
                let mirror = Self::with_store(config, metrics, store)?;
                mirror.inner.degraded.store(true, Ordering::Relaxed);
                Ok(mirror)
            }
        }
    }

    pub fn with_store(config: Config, metrics: Metrics, store: Arc<dyn Store>) -> Result<Mirror, String> {
        let upstream = Upstream::new(&config, metrics.clone())?;
        let evictions = metrics.cache_evictions.with_label_values(&["memory"]);
        let memory = MemoryTier::new(config.memory_cache_bytes, move || evictions.inc());
        let negative = moka::sync::Cache::builder().max_capacity(100_000).time_to_live(config.negative_ttl).build();
        let repos = config.repos.iter().map(|(name, repo)| (name.clone(), Arc::new(repo.clone()))).collect();
        for repo in config.repos.values() {
            if repo.access.allow_all_clients {
                tracing::warn!(
                    repo = %repo.name,
                    "access.allow_all_clients is set: every client of this hexmirror may read this repository's private content"
                );
            }
        }
        let tokens = config
            .repos
            .values()
            .filter_map(|repo| {
                let (url, key) = (repo.oauth_token_url.clone()?, repo.auth_key.clone()?);
                Some((repo.name.clone(), crate::oauth::TokenSource::new(url, key, repo.allow_http)))
            })
            .collect();
        let mirror = Mirror {
            inner: Arc::new(Inner {
                tokens,
                config: Arc::new(config),
                repos,
                memory,
                store,
                upstream,
                flights: Flights::default(),
                negative,
                metrics,
                degraded: AtomicBool::new(false),
                refusals: Mutex::new(VecDeque::new()),
            }),
        };
        mirror.update_gauges();
        Ok(mirror)
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// The most recent refusals, newest first.
    pub fn refusals(&self) -> Vec<Refusal> {
        self.inner.refusals.lock().expect("never poisoned").iter().rev().cloned().collect()
    }

    /// The cache key a reply for `resource` was stored under.
    pub fn key_for(&self, target: &Target, resource: &Resource, private: bool) -> CacheKey {
        CacheKey::new(&target.namespace, &resource.path(), private)
    }

    /// Marks an entry as selected by sync or import: disk-size eviction never removes it.
    pub async fn pin(&self, key: &CacheKey) -> Result<(), StoreError> {
        if let Some(entry) = self.inner.memory.get(key) {
            let mut pinned = (*entry).clone();
            pinned.pinned = true;
            self.inner.memory.insert(key.clone(), Arc::new(pinned));
        }
        let store = self.inner.store.clone();
        let key = key.clone();
        tokio::task::spawn_blocking(move || match store.get(&key)? {
            Some((mut meta, _)) if !meta.pinned => {
                meta.pinned = true;
                store.update_meta(&key, &meta)
            }
            _ => Ok(()),
        })
        .await
        .map_err(|e| StoreError::Damaged(e.to_string()))?
    }

    /// Removes every entry of package `name` (records, tarballs, docs) in every namespace.
    pub async fn purge(&self, name: &str) -> Result<Vec<String>, StoreError> {
        let store = self.inner.store.clone();
        let disk_name = name.to_string();
        let removed = tokio::task::spawn_blocking(move || -> Result<Vec<CacheKey>, StoreError> {
            let mut removed = Vec::new();
            for (key, _) in store.list("")? {
                if key_names_package(&key, &disk_name) {
                    store.remove(&key)?;
                    removed.push(key);
                }
            }
            Ok(removed)
        })
        .await
        .map_err(|e| StoreError::Damaged(e.to_string()))??;
        // Also what only the memory tier holds (evicted from disk, or never written to it).
        let mut removed: std::collections::BTreeSet<String> = removed.into_iter().map(|k| k.to_string()).collect();
        for key in self.inner.memory.remove_matching(|key| key_names_package(key, name)) {
            removed.insert(key.to_string());
        }
        Ok(removed.into_iter().collect())
    }

    /// Evicts least recently used, unpinned entries from the disk tier until it fits its
    /// budget. Entries that are being served are untouched: a served reply holds its own bytes.
    pub async fn evict_disk(&self) -> Result<u64, StoreError> {
        let budget = self.inner.config.disk_cache_bytes;
        if budget == 0 || self.inner.store.usage().1 <= budget {
            return Ok(0);
        }
        let store = self.inner.store.clone();
        let memory = self.inner.memory.clone();
        let evicted = tokio::task::spawn_blocking(move || -> Result<u64, StoreError> {
            let mut candidates: Vec<(u64, CacheKey)> = store
                .list("")?
                .into_iter()
                .filter(|(_, meta)| !meta.pinned)
                .map(|(key, meta)| {
                    // Milliseconds: the memory tier knows when an entry was last served or
                    // stored; an entry only on disk counts from its last confirmation.
                    let used = memory.get(&key).map(|e| e.last_used()).unwrap_or(0).max(meta.fetched_at * 1000);
                    (used, key)
                })
                .collect();
            candidates.sort();
            let mut evicted = 0;
            for (_, key) in candidates {
                if store.usage().1 <= budget {
                    break;
                }
                store.remove(&key)?;
                evicted += 1;
            }
            Ok(evicted)
        })
        .await
        .map_err(|e| StoreError::Damaged(e.to_string()))??;
        if evicted > 0 {
            self.inner.metrics.cache_evictions.with_label_values(&["disk"]).inc_by(evicted);
            tracing::info!(evicted, budget, "store: evicted least recently used entries");
        }
        Ok(evicted)
    }

    /// The target a cache namespace belongs to (`hexpm`, `hexpm~ORG` or a repository name).
    pub fn target_of_namespace(&self, namespace: &str) -> Target {
        match namespace.split_once('~') {
            Some((_, org)) => self.target(Some(org)),
            None if namespace == HEXPM => self.target(None),
            None => self.target(Some(namespace)),
        }
    }

    /// Re-verifies a stored entry from the disk tier alone: its checksum on read, then its
    /// signature or its checksum against the stored verified record. `Ok(false)`: not stored.
    pub async fn check_stored(&self, key: &CacheKey) -> Result<bool, String> {
        let mut parts = key.as_str().splitn(3, '/');
        let (_, namespace, path) = (parts.next(), parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
        let segments: Vec<&str> = path.split('/').collect();
        let resource = Resource::parse(&segments).map_err(|e| format!("not a repository resource: {e}"))?;
        let target = self.target_of_namespace(namespace);
        let store = self.inner.store.clone();
        let disk_key = key.clone();
        let found = tokio::task::spawn_blocking(move || store.get(&disk_key)).await.map_err(|e| e.to_string())?;
        let (meta, body) = match found {
            Ok(Some(found)) => found,
            Ok(None) => return Ok(false),
            Err(e) => return Err(e.to_string()),
        };
        let client = ClientCredentials::internal();
        let check = match &resource {
            Resource::Tarball { name, version } => {
                let record = Resource::Package(name.clone());
                let (entry, _) = self
                    .resolve_stored(&target, &record, &client)
                    .await
                    .ok_or_else(|| format!("no stored verified record of {name} lists it"))?;
                match entry.content.facts() {
                    Facts::Releases(releases) => Check::Tarball(
                        *releases
                            .get(version)
                            .ok_or_else(|| format!("the stored record of {name} does not list {version}"))?,
                    ),
                    _ => return Err("the stored record has no releases".into()),
                }
            }
            Resource::Installs(path) if is_installer_archive(path) => {
                Check::Installer(self.installer_digest(&target, path, &client).await.map_err(|e| e.to_string())?)
            }
            _ => Check::Ttl(None),
        };
        self.verify_content(&target, &resource, &check, body, &meta.upstream).await.map_err(|e| e.to_string())?;
        Ok(true)
    }

    /// A stored entry of `resource` (public or private), verified, without asking the upstream.
    async fn resolve_stored(
        &self,
        target: &Target,
        resource: &Resource,
        _client: &ClientCredentials,
    ) -> Option<(Arc<Entry>, CacheStatus)> {
        let path = resource.path();
        for private in [false, true] {
            let key = CacheKey::new(&target.namespace, &path, private);
            if let Some(entry) = self.lookup(target, &key, resource, &Check::Ttl(None)).await {
                return Some((entry, CacheStatus::Hit));
            }
        }
        None
    }

    /// Answers a repository request on behalf of hexmirror itself (sync, repair).
    pub async fn fetch_internal(&self, target: &Target, resource: &Resource) -> Result<Reply, MirrorError> {
        self.get(target, resource, &ClientCredentials::internal()).await
    }

    /// Verifies bytes brought in from outside (an import bundle) as the resource `key` names.
    /// Tarballs are checked against `records` (verified records of the same bundle) or, failing
    /// that, the stored verified record; registry v1 files and installs CSVs need `signature`.
    pub async fn verify_import(
        &self,
        key: &CacheKey,
        bytes: Bytes,
        signature: Option<String>,
        records: &HashMap<(String, String), Arc<Entry>>,
    ) -> Result<Entry, String> {
        let mut parts = key.as_str().splitn(3, '/');
        let (_, namespace, path) = (parts.next(), parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
        let segments: Vec<&str> = path.split('/').collect();
        let resource = Resource::parse(&segments).map_err(|e| format!("not a repository resource: {e}"))?;
        let target = self.target_of_namespace(namespace);
        if !key.is_private() && self.is_private_by_nature(&target) {
            return Err(format!(
                "labelled public, but {namespace} is private content here (a hex.pm organization or a closed repository); a bundle cannot make it public"
            ));
        }
        let check = match &resource {
            Resource::Tarball { name, version } => {
                let record = match records.get(&(namespace.to_string(), name.clone())) {
                    Some(entry) => entry.clone(),
                    None => {
                        self.resolve_stored(&target, &Resource::Package(name.clone()), &ClientCredentials::internal())
                            .await
                            .ok_or_else(|| format!("no verified record of {name} in the bundle or the store"))?
                            .0
                    }
                };
                match record.content.facts() {
                    Facts::Releases(releases) => Check::Tarball(
                        *releases
                            .get(version)
                            .ok_or_else(|| format!("the record of {name} does not list {version}"))?,
                    ),
                    _ => return Err(format!("the record of {name} lists no releases")),
                }
            }
            Resource::Docs { .. } => Check::Docs,
            Resource::Installs(path) if is_installer_archive(path) => Check::Installer(
                self.installer_digest(&target, path, &ClientCredentials::internal())
                    .await
                    .map_err(|e| e.to_string())?,
            ),
            _ => Check::Ttl(None),
        };
        let validators = Validators { signature, ..Validators::default() };
        let content =
            self.verify_content(&target, &resource, &check, bytes, &validators).await.map_err(|e| e.to_string())?;
        let private = key.is_private() || self.is_private_by_nature(&target);
        let mut entry = Entry::new(content, resource.kind(), validators, unix_now(), private);
        entry.pinned = true;
        Ok(entry)
    }

    /// Stores an imported entry in both tiers, pinned.
    pub async fn store_imported(&self, key: &CacheKey, entry: Entry) -> Result<(), StoreError> {
        let entry = Arc::new(entry);
        self.inner.memory.insert(key.clone(), entry.clone());
        let store = self.inner.store.clone();
        let key = key.clone();
        tokio::task::spawn_blocking(move || store.put(&key, &entry.stored_meta(), entry.bytes()))
            .await
            .map_err(|e| StoreError::Damaged(e.to_string()))?
    }

    /// Removes one entry from both tiers.
    pub async fn remove(&self, key: &CacheKey) -> Result<(), StoreError> {
        self.inner.memory.remove(key);
        let store = self.inner.store.clone();
        let key = key.clone();
        tokio::task::spawn_blocking(move || store.remove(&key)).await.map_err(|e| StoreError::Damaged(e.to_string()))?
    }

    /// Refreshes the cache size gauges.
    pub fn update_gauges(&self) {
        let m = &self.inner.metrics;
        let (entries, bytes) = self.inner.memory.usage();
        m.cache_entries.with_label_values(&["memory"]).set(entries as i64);
        m.cache_bytes.with_label_values(&["memory"]).set(bytes as i64);
        let (entries, bytes) = self.inner.store.usage();
        m.cache_entries.with_label_values(&["disk"]).set(entries as i64);
        m.cache_bytes.with_label_values(&["disk"]).set(bytes as i64);
    }

    /// Which repository serves `/repos/NAME` (or the root when `None`).
    ///
    /// A configured repository wins over a hex.pm organization of the same name.
    pub fn target(&self, repo: Option<&str>) -> Target {
        let inner = &self.inner;
        let hexpm = inner.repos.get(HEXPM).expect("config validation keeps hexpm").clone();
        match repo {
            None => {
                Target { origin: hexpm.repository.clone(), namespace: HEXPM.into(), prefix: String::new(), repo: hexpm }
            }
            Some(name) => match inner.repos.get(name) {
                Some(repo) => Target {
                    origin: repo.repository.clone(),
                    namespace: name.to_string(),
                    prefix: String::new(),
                    repo: repo.clone(),
                },
                None => Target {
                    origin: name.to_string(),
                    namespace: format!("{HEXPM}~{name}"),
                    prefix: format!("/repos/{name}"),
                    repo: hexpm,
                },
            },
        }
    }

    /// Answers a repository request. See the module docs for the steps.
    pub async fn get(
        &self,
        target: &Target,
        resource: &Resource,
        client: &ClientCredentials,
    ) -> Result<Reply, MirrorError> {
        if !matches!(resource, Resource::PublicKey) && !self.may_enter(target, client) {
            return Err(MirrorError::Unauthorized);
        }
        match resource {
            Resource::PublicKey => {
                let pem = Bytes::copy_from_slice(target.repo.public_key.pem().as_bytes());
                Ok(Reply {
                    etag: format!("\"{}\"", hex::encode(Sha256::digest(&pem))),
                    body: pem,
                    cache_control: Some("public, max-age=3600".into()),
                    last_modified: None,
                    status: CacheStatus::Local,
                    private: false,
                    docs: false,
                    facts: Facts::None,
                })
            }
            Resource::Tarball { name, version } => {
                let checksum = self.release_checksum(target, name, version, client).await?;
                self.resolve(target, resource, client, Check::Tarball(checksum)).await
            }
            Resource::Installs(path) if is_installer_archive(path) => {
                let digest = self.installer_digest(target, path, client).await?;
                self.resolve(target, resource, client, Check::Installer(digest)).await
            }
            Resource::Docs { .. } => self.resolve(target, resource, client, Check::Docs).await,
            _ => self.resolve(target, resource, client, Check::Ttl(Some(self.ttl()))).await,
        }
    }

    fn ttl(&self) -> u64 {
        self.inner.config.registry_ttl.as_secs()
    }

    /// The checksum a tarball must have, from the verified package record. A cached record of
    /// any age will do while it lists the release; otherwise the record is refreshed once.
    async fn release_checksum(
        &self,
        target: &Target,
        name: &str,
        version: &str,
        client: &ClientCredentials,
    ) -> Result<ReleaseChecksum, MirrorError> {
        let package = Resource::Package(name.to_string());
        for check in [Check::Ttl(None), Check::Ttl(Some(0))] {
            let record = self.resolve_entry(target, &package, client, check).await?;
            let fresh_from_upstream = record.1 == CacheStatus::Miss || record.1 == CacheStatus::Revalidated;
            if let Facts::Releases(releases) = record.0.content.facts() {
                if let Some(checksum) = releases.get(version) {
                    return Ok(*checksum);
                }
            }
            if fresh_from_upstream || self.inner.config.offline {
                break;
            }
        }
        Err(MirrorError::NotFound(format!("release {name} {version} is not in the verified registry")))
    }

    /// The digest an installer archive must have, from the verified installs CSV.
    async fn installer_digest(
        &self,
        target: &Target,
        path: &str,
        client: &ClientCredentials,
    ) -> Result<String, MirrorError> {
        let (elixir, file) = path.split_once('/').unwrap_or(("", path));
        let stem = file.strip_suffix(".ez").unwrap_or(file);
        let (app, version) = stem.split_once('-').ok_or_else(|| MirrorError::NotFound(format!("installs/{path}")))?;
        let csv = Resource::Installs(format!("{app}-1.x.csv"));
        let (entry, _) = self.resolve_entry(target, &csv, client, Check::Ttl(None)).await?;
        if let Facts::Installs(rows) = entry.content.facts() {
            let row = rows
                .iter()
                .find(|r| r.version == version && (elixir.is_empty() || r.elixir_versions.iter().any(|e| e == elixir)));
            if let Some(row) = row {
                return Ok(row.digest.clone());
            }
        }
        Err(MirrorError::NotFound(format!("installs/{path} is not listed in the verified installs list")))
    }

    async fn resolve(
        &self,
        target: &Target,
        resource: &Resource,
        client: &ClientCredentials,
        check: Check,
    ) -> Result<Reply, MirrorError> {
        let (entry, status) = self.resolve_entry(target, resource, client, check).await?;
        Ok(Reply::from_entry(&entry, status))
    }

    /// Steps 2 to 7 of the module docs for one resource.
    fn resolve_entry<'a>(
        &'a self,
        target: &'a Target,
        resource: &'a Resource,
        client: &'a ClientCredentials,
        check: Check,
    ) -> BoxFuture<'a, Result<(Arc<Entry>, CacheStatus), MirrorError>> {
        async move {
            let path = resource.path();
            let public_key = CacheKey::new(&target.namespace, &path, false);
            let private_key = CacheKey::new(&target.namespace, &path, true);
            let offline = self.inner.config.offline;
            let allowed = self.access_allows(target, client);

            // A public copy serves everyone; a closed repository has none (whatever the store
            // holds under that key). A private copy serves only an authorized client.
            let mut cached = match self.is_closed(target) {
                true => None,
                false => self.lookup(target, &public_key, resource, &check).await,
            };
            if cached.is_none() {
                if let Some(entry) = self.lookup(target, &private_key, resource, &check).await {
                    entry.touch();
                    if allowed {
                        cached = Some(entry);
                    } else if self.can_recheck(target, client) {
                        return self.recheck(target, resource, client, entry, &check).await;
                    } else if self.is_closed(target) {
                        return Err(MirrorError::Unauthorized);
                    }
                    // Otherwise this client may still read a public answer: ask as it would.
                }
            }
            let credential = self.credential_for(target, client);
            if let Some(entry) = &cached {
                entry.touch();
                if offline || self.is_fresh(entry, &check) {
                    return Ok((entry.clone(), CacheStatus::Hit));
                }
            } else if offline {
                return Err(MirrorError::NotFound(format!("{path} is not in this offline mirror's store")));
            } else if matches!(credential, Credential::None) && self.inner.negative.contains_key(&public_key) {
                // Only anonymous 404s are remembered, so only anonymous requests are answered so.
                return Err(MirrorError::NotFound(format!("{path} (the upstream answered 404 moments ago)")));
            }

            let flight_key = format!("{public_key}#{}", credential.fingerprint());
            let client_credential = matches!(credential, Credential::Client(_));
            let this = self.clone();
            let (t, r, c) = (target.clone(), resource.clone(), check.clone());
            let stale = cached.clone();
            // The flight hands every waiter the entry itself, so a reply never depends on the
            // entry still being in a cache tier (a tiny memory budget, a full disk).
            let (entry, status) = self
                .inner
                .flights
                .join(flight_key, &self.inner.metrics, move || {
                    async move {
                        // A flight that finished just before this one started may have stored
                        // what we need: look again before asking the upstream.
                        if let Some(entry) = this.stored_since(&t, &r, &c, stale.as_deref()) {
                            return Ok((entry, CacheStatus::Hit));
                        }
                        this.fetch(&t, &r, c, credential, stale).await
                    }
                    .boxed()
                })
                .await?;
            // A private entry reaches only a client that is authorized, or whose own credential
            // the upstream has just accepted for it (a flight is per credential; an entry found
            // in a tier or handed over by another flight proves nothing about this client).
            let confirmed = client_credential && matches!(status, CacheStatus::Miss | CacheStatus::Revalidated);
            if entry.private && !allowed && !confirmed {
                return Err(match status {
                    CacheStatus::Stale => {
                        MirrorError::Unavailable("the upstream cannot confirm access to private content".into())
                    }
                    _ => MirrorError::Unauthorized,
                });
            }
            Ok((entry, status))
        }
        .boxed()
    }

    /// A fresh public entry in the memory tier that is not the stale copy this request started
    /// from. Never a private one: whoever stored it, it proves nothing about this flight's client.
    fn stored_since(
        &self,
        target: &Target,
        resource: &Resource,
        check: &Check,
        stale: Option<&Entry>,
    ) -> Option<Arc<Entry>> {
        if self.is_closed(target) {
            return None;
        }
        let entry = self.inner.memory.get(&CacheKey::new(&target.namespace, &resource.path(), false))?;
        let newer = stale.is_none_or(|old| entry.fetched_at > old.fetched_at || entry.etag != old.etag);
        (newer && self.is_fresh(&entry, check)).then_some(entry)
    }

    fn is_fresh(&self, entry: &Entry, check: &Check) -> bool {
        let age = unix_now().saturating_sub(entry.fetched_at);
        match check {
            Check::Ttl(None) => true,
            Check::Ttl(Some(ttl)) => age < *ttl,
            Check::Tarball(_) | Check::Installer(_) => content_matches(entry, check),
            Check::Docs => age < max_age(entry.upstream.cache_control.as_deref()).unwrap_or(self.ttl()),
        }
    }

    /// The memory tier, then the persistent tier (re-verified before use). A copy whose bytes
    /// no longer match what the verified record says now (a tarball, an installer) is no copy.
    ///
    /// Nothing is taken from the store's own record but validators and times: whether bytes
    /// need verifying follows from the resource (only docs have nothing to verify against), and
    /// whether an entry is private from the key's scope.
    async fn lookup(&self, target: &Target, key: &CacheKey, resource: &Resource, check: &Check) -> Option<Arc<Entry>> {
        if let Some(entry) = self.inner.memory.get(key) {
            return content_matches(&entry, check).then_some(entry);
        }
        let store = self.inner.store.clone();
        let disk_key = key.clone();
        let found = tokio::task::spawn_blocking(move || store.get(&disk_key)).await.ok()?;
        let (meta, body) = match found {
            Ok(Some(found)) => found,
            Ok(None) => return None,
            Err(e) => {
                tracing::warn!(key = %key, error = %e, "store: entry dropped");
                return None;
            }
        };
        let content = match self.verify_content(target, resource, check, body, &meta.upstream).await {
            Ok(content) => content,
            Err(e) => {
                tracing::info!(key = %key, error = %e, "store: stored copy does not verify; refetching");
                return None;
            }
        };
        let mut entry = Entry::new(content, resource.kind(), meta.upstream, meta.fetched_at, key.is_private());
        entry.pinned = meta.pinned;
        let entry = Arc::new(entry);
        self.inner.memory.insert(key.clone(), entry.clone());
        Some(entry)
    }

    /// Which credential goes upstream for this client: hexmirror's own for the repository if
    /// it has one; the client's own only to a trusted upstream; nothing otherwise.
    fn credential_for(&self, target: &Target, client: &ClientCredentials) -> Credential {
        let repo = &target.repo;
        if repo.strip_headers.contains(&http::header::AUTHORIZATION) {
            return Credential::None;
        }
        if repo.auth_key.is_some() {
            return Credential::Own;
        }
        match (&client.authorization, repo.trusted) {
            (Some(value), true) => Credential::Client(value.clone()),
            _ => Credential::None,
        }
    }

    /// The `Authorization` value for a credential (exchanging hexmirror's key for a token
    /// where the repository uses OAuth).
    async fn authorization(
        &self,
        target: &Target,
        credential: &Credential,
    ) -> Result<Option<HeaderValue>, MirrorError> {
        match credential {
            Credential::None => Ok(None),
            Credential::Client(value) => Ok(Some(value.clone())),
            Credential::Own => {
                if let Some(source) = self.inner.tokens.get(&target.repo.name) {
                    return source
                        .authorization(&self.inner.upstream)
                        .await
                        .map(Some)
                        .map_err(|e| MirrorError::Upstream(UpstreamError::Unreachable(e)));
                }
                let key = target.repo.auth_key.as_ref().map(|k| k.expose()).unwrap_or_default();
                let mut value = HeaderValue::from_str(key)
                    .map_err(|_| MirrorError::Internal("auth_key is not a valid header value".into()))?;
                value.set_sensitive(true);
                Ok(Some(value))
            }
        }
    }

    /// True when hexmirror decides who may read this target (it fetches with its own key, or an
    /// access list guards it): every path under it but `/public_key` needs an authorized client,
    /// and all its content is private. hex.pm's public repository (the root paths) is never
    /// closed, whatever `[repos.hexpm]` says; its organizations are.
    fn is_closed(&self, target: &Target) -> bool {
        let repo = &target.repo;
        let guarded = repo.auth_key.is_some() || !repo.access.tokens.is_empty() || repo.access.allow_all_clients;
        guarded && target.namespace != HEXPM
    }

    /// True when a bundle may not bring this target's content in as public: a closed target, or
    /// a hex.pm organization (private on hex.pm by definition).
    fn is_private_by_nature(&self, target: &Target) -> bool {
        self.is_closed(target) || !target.prefix.is_empty()
    }

    /// True when the upstream can be asked with this client's own credential (a trusted
    /// upstream and no key of hexmirror's), so that its answer proves the client's access.
    fn can_recheck(&self, target: &Target, client: &ClientCredentials) -> bool {
        !self.inner.config.offline && matches!(self.credential_for(target, client), Credential::Client(_))
    }

    /// Whether a request may go any further than `/public_key`: always for an open target; for
    /// a closed one only with the access list, the opt-in, or a credential to re-check upstream.
    /// Decided before anything is looked up, so a stranger learns nothing (same 401 for a
    /// package that exists and one that does not).
    fn may_enter(&self, target: &Target, client: &ClientCredentials) -> bool {
        !self.is_closed(target) || self.access_allows(target, client) || self.can_recheck(target, client)
    }

    /// hexmirror's own access list, or the explicit all-clients opt-in.
    fn access_allows(&self, target: &Target, client: &ClientCredentials) -> bool {
        let access = &target.repo.access;
        if access.allow_all_clients || client.internal {
            return true;
        }
        let Some(token) = client.token() else { return false };
        let mut allowed = subtle::Choice::from(0);
        for candidate in &access.tokens {
            allowed |= constant_time_eq(candidate.expose().as_bytes(), token.as_bytes());
        }
        allowed.into()
    }

    /// Authorizes a client that is not on the access list for a cached private entry by asking
    /// the upstream with the client's own credential: a 304 (or a new 200) proves access; a
    /// 401/403 denies; no answer is 503 (the copy is never served without the proof).
    async fn recheck(
        &self,
        target: &Target,
        resource: &Resource,
        client: &ClientCredentials,
        entry: Arc<Entry>,
        check: &Check,
    ) -> Result<(Arc<Entry>, CacheStatus), MirrorError> {
        let credential = self.credential_for(target, client);
        match self.fetch(target, resource, check.clone(), credential, Some(entry)).await {
            Ok((entry, status)) if status != CacheStatus::Stale => Ok((entry, status)),
            Ok(_) | Err(MirrorError::Upstream(_)) => {
                Err(MirrorError::Unavailable("the upstream cannot confirm access to private content".into()))
            }
            Err(e) => Err(e),
        }
    }

    /// Asks the upstream (conditionally when a copy exists), verifies, stores. Runs inside a flight.
    async fn fetch(
        &self,
        target: &Target,
        resource: &Resource,
        check: Check,
        credential: Credential,
        cached: Option<Arc<Entry>>,
    ) -> Result<(Arc<Entry>, CacheStatus), MirrorError> {
        let path = resource.path();
        let authorization = match self.authorization(target, &credential).await {
            Ok(authorization) => authorization,
            Err(e) => return cached.map(|c| (c, CacheStatus::Stale)).ok_or(e),
        };
        let max_bytes = match resource.kind() {
            Kind::Tarball | Kind::Installs => self.inner.config.max_tarball_bytes,
            _ => self.inner.config.max_registry_bytes,
        };
        let request = UpstreamRequest {
            repo: &target.repo,
            path: format!("{}/{path}", target.prefix),
            validators: cached.as_ref().map(|e| &e.upstream),
            authorization,
            max_bytes,
        };
        let stale = |e: MirrorError| match &cached {
            Some(entry) => {
                self.inner.metrics.stale_served.with_label_values(&[target.label()]).inc();
                tracing::info!(repo = target.label(), resource = %path, error = %e, "serving the last verified copy");
                Ok((entry.clone(), CacheStatus::Stale))
            }
            None => Err(e),
        };
        let response = match self.inner.upstream.get(request).await {
            Ok(response) => response,
            Err(e) => return stale(e.into()),
        };
        let now = unix_now();
        match response.status.as_u16() {
            200 => {
                let mut validators = validators_of(&response.headers);
                if validators.signature.is_none() {
                    validators.signature = self.detached_signature(target, resource).await;
                }
                let content =
                    match self.verify_content(target, resource, &check, response.body.clone(), &validators).await {
                        Ok(content) => content,
                        Err(MirrorError::Refused(e)) => {
                            self.record_refusal(target, &path, &e);
                            return match cached {
                                Some(_) => stale(MirrorError::Refused(e)),
                                None => Err(MirrorError::Refused(e)),
                            };
                        }
                        Err(e) => return stale(e),
                    };
                // A dependency policy that does not declare itself public is private whatever
                // the upstream says (the spec asks the serving edge to require authorization).
                let private_policy = matches!(content.facts(), Facts::Policy { public: false });
                let client_credential = matches!(credential, Credential::Client(_));
                let private = is_private(&response, client_credential) || private_policy || self.is_closed(target);
                let entry = Arc::new(Entry::new(content, resource.kind(), validators, now, private));
                self.persist(target, &path, entry.clone()).await;
                Ok((entry, CacheStatus::Miss))
            }
            304 => match cached {
                Some(old) => {
                    let mut entry = (*old).clone();
                    entry.fetched_at = now;
                    let fresh = validators_of(&response.headers);
                    entry.upstream.etag = fresh.etag.or(entry.upstream.etag);
                    entry.upstream.last_modified = fresh.last_modified.or(entry.upstream.last_modified);
                    entry.upstream.cache_control = fresh.cache_control.or(entry.upstream.cache_control);
                    let entry = Arc::new(entry);
                    self.refresh(target, &path, entry.clone()).await;
                    Ok((entry, CacheStatus::Revalidated))
                }
                None => Err(MirrorError::Upstream(UpstreamError::Status(304))),
            },
            401 => Err(MirrorError::Unauthorized),
            403 if target.namespace != HEXPM || response.sent_credentials => Err(MirrorError::Unauthorized),
            403 | 404 | 410 => {
                // hex.pm answers a missing object with 403 or 404; remember it briefly.
                if !response.sent_credentials {
                    self.inner.negative.insert(CacheKey::new(&target.namespace, &path, false), ());
                }
                Err(MirrorError::NotFound(path))
            }
            other => stale(MirrorError::Upstream(UpstreamError::Status(other))),
        }
    }

    /// Fetches the detached signature of a registry v1 file or an installs CSV (not cached
    /// apart: it is kept with the object it signs).
    async fn detached_signature(&self, target: &Target, resource: &Resource) -> Option<String> {
        let path = match resource {
            Resource::RegistryV1 => format!("{}/registry.ets.gz.signed", target.prefix),
            Resource::Installs(p) if p.ends_with(".csv") => format!("{}/installs/{p}.signed", target.prefix),
            _ => return None,
        };
        let request = UpstreamRequest {
            repo: &target.repo,
            path,
            validators: None,
            authorization: self
                .authorization(target, &self.credential_for(target, &ClientCredentials::default()))
                .await
                .ok()
                .flatten(),
            max_bytes: 64 << 10,
        };
        match self.inner.upstream.get(request).await {
            Ok(response) if response.status == StatusCode::OK => String::from_utf8(response.body.to_vec()).ok(),
            _ => None,
        }
    }

    fn record_refusal(&self, target: &Target, path: &str, error: &VerifyError) {
        self.inner
            .metrics
            .verification_failures
            .with_label_values(&[target.label(), kind_of_path(path), error.reason()])
            .inc();
        let refusal = Refusal {
            time: unix_now(),
            repo: target.namespace.clone(),
            resource: path.to_string(),
            upstream: target.repo.upstreams.iter().map(crate::upstream::upstream_label).collect::<Vec<_>>().join(","),
            reason: error.to_string(),
        };
        let mut refusals = self.inner.refusals.lock().expect("never poisoned");
        if refusals.len() == REFUSALS_KEPT {
            refusals.pop_front();
        }
        refusals.push_back(refusal);
    }

    /// Verifies upstream (or stored) bytes for `resource`; the only path into [`Content`].
    fn verify_content<'a>(
        &'a self,
        target: &'a Target,
        resource: &'a Resource,
        check: &'a Check,
        body: Bytes,
        validators: &'a Validators,
    ) -> BoxFuture<'a, Result<Content, MirrorError>> {
        async move {
            let key = &target.repo.public_key;
            let limit = self.inner.config.max_registry_bytes;
            let origin = target.origin.as_str();
            let verified = match resource {
                Resource::Names => verify::registry_file(RegistryFile::Names, origin, body, key, limit)?,
                Resource::Versions => verify::registry_file(RegistryFile::Versions, origin, body, key, limit)?,
                Resource::Package(name) => {
                    verify::registry_file(RegistryFile::Package(name), origin, body, key, limit)?
                }
                Resource::Policy(name) => verify::registry_file(RegistryFile::Policy(name), origin, body, key, limit)?,
                Resource::Docs { .. } => {
                    let docs = crate::cache::Docs::for_resource(resource, body);
                    return docs
                        .map(Content::Docs)
                        .ok_or(MirrorError::Internal("docs for a docs resource only".into()));
                }
                Resource::PublicKey => return Err(MirrorError::Internal("the public key is never fetched".into())),
                Resource::Tarball { .. } => match check {
                    Check::Tarball(checksum) => verify::tarball(body, checksum, self.inner.config.max_tarball_bytes)?,
                    _ => return Err(MirrorError::Internal("tarball without a checksum".into())),
                },
                Resource::RegistryV1 => {
                    let signature = match &validators.signature {
                        Some(signature) => signature.clone(),
                        None => return Err(VerifyError::MissingSignature.into()),
                    };
                    verify::registry_v1(body, &signature, key)?
                }
                Resource::RegistryV1Signed => {
                    let (ets, _) = self
                        .resolve_entry(target, &Resource::RegistryV1, &ClientCredentials::default(), Check::Ttl(None))
                        .await?;
                    verify::registry_v1_signature(body, ets.bytes(), key)?
                }
                Resource::Installs(path) if path.ends_with(".csv") => {
                    let signature = validators.signature.as_deref().ok_or(VerifyError::MissingSignature)?;
                    verify::installs_csv(body, signature.as_bytes(), &self.inner.config.installs_public_key)?
                }
                Resource::Installs(path) if path.ends_with(".csv.signed") => {
                    let csv = Resource::Installs(path.trim_end_matches(".signed").to_string());
                    let (csv, _) =
                        self.resolve_entry(target, &csv, &ClientCredentials::default(), Check::Ttl(None)).await?;
                    verify::installs_signature(body, csv.bytes(), &self.inner.config.installs_public_key)?
                }
                Resource::Installs(_) => match check {
                    Check::Installer(digest) => verify::installer(body, digest, self.inner.config.max_tarball_bytes)?,
                    _ => return Err(MirrorError::NotFound("installs file without a verified listing".into())),
                },
            };
            Ok(Content::Verified(verified))
        }
        .boxed()
    }

    /// Puts a new entry in both tiers. A private copy never replaces or hides a public one (nor
    /// the other way round): a lookup prefers the public copy, which serves everyone.
    async fn persist(&self, target: &Target, path: &str, entry: Arc<Entry>) {
        let key = CacheKey::new(&target.namespace, path, entry.private);
        self.inner.memory.insert(key.clone(), entry.clone());
        let store = self.inner.store.clone();
        let result = tokio::task::spawn_blocking(move || store.put(&key, &entry.stored_meta(), entry.bytes())).await;
        self.note_store_result(result);
        if self.inner.config.disk_cache_bytes > 0 {
            if let Err(e) = self.evict_disk().await {
                tracing::warn!(error = %e, "store: eviction failed");
            }
        }
    }

    /// Records a revalidation in both tiers.
    async fn refresh(&self, target: &Target, path: &str, entry: Arc<Entry>) {
        let key = CacheKey::new(&target.namespace, path, entry.private);
        self.inner.memory.insert(key.clone(), entry.clone());
        let store = self.inner.store.clone();
        let result = tokio::task::spawn_blocking(move || store.update_meta(&key, &entry.stored_meta())).await;
        self.note_store_result(result);
    }

    fn note_store_result(&self, result: Result<Result<(), StoreError>, tokio::task::JoinError>) {
        let m = &self.inner.metrics;
        match result {
            Ok(Ok(())) => {
                if self.inner.degraded.swap(false, Ordering::Relaxed) {
                    m.store_degraded.set(0);
                    tracing::info!("store: writes succeed again");
                }
            }
            Ok(Err(e)) => {
                m.store_write_errors.inc();
                if !self.inner.degraded.swap(true, Ordering::Relaxed) {
                    m.store_degraded.set(1);
                    tracing::error!(error = %e, disk_full = e.is_disk_full(), "store: write failed; serving from memory and upstream until writes succeed");
                }
            }
            Err(e) => tracing::error!(error = %e, "store: write task failed"),
        }
    }
}

/// False when `entry`'s bytes are not what the verified listing held now says (a tarball's
/// checksum, an installer's digest): such a copy is never served, revalidated or used as stale.
fn content_matches(entry: &Entry, check: &Check) -> bool {
    match check {
        Check::Tarball(ReleaseChecksum::Outer(sum)) => entry.sha256 == *sum,
        Check::Tarball(ReleaseChecksum::Inner(sum)) => verify::inner_checksum(entry.bytes()).is_ok_and(|s| s == *sum),
        Check::Installer(digest) => hex::encode(sha2::Sha512::digest(entry.bytes())).eq_ignore_ascii_case(digest),
        Check::Ttl(_) | Check::Docs => true,
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> subtle::Choice {
    use subtle::ConstantTimeEq;
    // Lengths are not secret enough to hide; contents are compared in constant time.
    if a.len() != b.len() {
        return subtle::Choice::from(0);
    }
    a.ct_eq(b)
}

/// True when `key` is package `name`'s record, tarball or docs in any namespace.
pub fn key_names_package(key: &CacheKey, name: &str) -> bool {
    let path = key.as_str().splitn(3, '/').nth(2).unwrap_or_default();
    let segments: Vec<&str> = path.split('/').collect();
    match Resource::parse(&segments) {
        Ok(Resource::Package(n)) => n == name,
        Ok(Resource::Tarball { name: n, .. } | Resource::Docs { name: n, .. }) => n == name,
        _ => false,
    }
}

fn is_installer_archive(path: &str) -> bool {
    !path.ends_with(".csv") && !path.ends_with(".csv.signed") && path.contains('/')
}

fn kind_of_path(path: &str) -> &'static str {
    let segments: Vec<&str> = path.split('/').collect();
    Resource::parse(&segments).map(|r| r.kind().as_str()).unwrap_or("none")
}

/// A response is private when marked so, or when it answered a client's credentials and is not
/// marked public (RFC 9111 §3.5). hexmirror's own key makes nothing private by itself: where it
/// fetches for an open target (hex.pm's public repository), the operator chose to share it.
fn is_private(response: &UpstreamResponse, client_credential: bool) -> bool {
    let cc = response
        .headers
        .get_all(http::header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(",")
        .to_ascii_lowercase();
    let has = |directive: &str| cc.split(',').any(|d| d.trim().split('=').next() == Some(directive));
    has("private") || (client_credential && response.sent_credentials && !has("public"))
}

fn max_age(cache_control: Option<&str>) -> Option<u64> {
    cache_control?.split(',').find_map(|d| d.trim().strip_prefix("max-age=").and_then(|v| v.trim().parse().ok()))
}

fn validators_of(headers: &HeaderMap) -> Validators {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    Validators {
        etag: text("etag"),
        last_modified: text("last-modified"),
        cache_control: text("cache-control"),
        signature: text("x-hex-signature").or_else(|| text("x-amz-meta-signature")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_tokens_from_bearer_basic_and_raw() {
        let creds = |v: &str| ClientCredentials::from_header(Some(HeaderValue::from_str(v).unwrap()));
        assert_eq!(creds("Bearer abc").token().as_deref(), Some("abc"));
        // "user:s3cret" in base64
        assert_eq!(creds("Basic dXNlcjpzM2NyZXQ=").token().as_deref(), Some("s3cret"));
        assert_eq!(creds("rawkey").token().as_deref(), Some("rawkey"));
        assert_eq!(ClientCredentials::default().token(), None);
        assert!(!format!("{:?}", creds("Bearer abc")).contains("abc"));
    }

    #[test]
    fn privacy_follows_rfc_9111() {
        let response = |cc: Option<&str>, sent: bool| {
            let mut headers = HeaderMap::new();
            if let Some(cc) = cc {
                headers.insert("cache-control", HeaderValue::from_str(cc).unwrap());
            }
            UpstreamResponse { status: StatusCode::OK, headers, body: Bytes::new(), sent_credentials: sent }
        };
        assert!(is_private(&response(Some("private, max-age=3600"), false), false));
        assert!(!is_private(&response(Some("public, max-age=3600"), true), true));
        assert!(is_private(&response(None, true), true));
        assert!(is_private(&response(Some("max-age=60"), true), true));
        assert!(!is_private(&response(None, false), false));
        // hexmirror's own key: private only when the upstream says so.
        assert!(!is_private(&response(Some("max-age=60"), true), false));
        assert!(is_private(&response(Some("private"), true), false));
    }

    #[test]
    fn max_age_parsing() {
        assert_eq!(max_age(Some("public, max-age=86400")), Some(86400));
        assert_eq!(max_age(Some("private")), None);
        assert_eq!(max_age(None), None);
    }

    #[test]
    fn installer_paths() {
        assert!(is_installer_archive("1.14.0/hex-2.0.6.ez"));
        assert!(!is_installer_archive("hex-1.x.csv"));
        assert!(!is_installer_archive("hex-1.x.csv.signed"));
    }
}
