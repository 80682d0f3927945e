//! The data path: look up, fetch (coalesced), verify, store, answer.
//!
//! A request for a repository resource is answered by [`Mirror::get`] (in `path.rs`, which
//! reads top-down in this order):
//!
//! 1. **Resolve the target** ([`Mirror::target`], here): which configured repository serves it,
//!    which origin its signed payloads must carry, and the cache namespace. A closed target
//!    (hexmirror's own key, or an access list) turns away an unauthorized client before
//!    anything else (`access::may_enter`).
//! 2. **Decide what a copy must satisfy** (`get`): a registry file is fresh for
//!    `registry_ttl`; a tarball must match the checksum in the verified package record held now
//!    (`release_checksum`), an installer its verified listing (`installer_digest`), a detached
//!    signature the verified bytes it signs; docs follow the upstream's max-age. The rules are
//!    pure, in `freshness.rs` (`Check`, `is_fresh`, `content_matches`).
//! 3. **Look up** the memory tier, then the persistent tier (`resolve_entry` → `lookup`): the
//!    public copy first (it serves everyone), then the private one. Bytes read from disk are
//!    verified again before they become an entry, and their privacy comes from the key.
//! 4. **Authorize** private entries (`access.rs`): hexmirror's access list, the explicit
//!    all-clients opt-in, or a conditional re-check with the upstream using the client's own
//!    credentials (`recheck`); what a coalesced fetch returns is authorized again for each
//!    waiter (end of `resolve_entry`).
//! 5. **Fetch** what is missing or stale, once for any number of concurrent requests
//!    (`flights.rs`), with the credential policy applied (`access::credential_for`),
//!    revalidating with `If-None-Match`/`If-Modified-Since` where a copy exists (`fetch`).
//! 6. **Verify** the upstream's bytes (`verify_content`, calling the pure `verify` module) and
//!    **store** them in both tiers (`persist`); a refusal is answered 502 and never stored or
//!    remembered.
//! 7. When the upstream is down, times out, answers 5xx or 429, **serve the last verified copy**
//!    (the `stale` closure in `fetch`); an anonymous 404 is remembered for `negative_ttl`.
//!
//! Store maintenance (pinning, purging, `hexmirror verify`, import, refusals, gauges) is apart
//! from the request path, in `store.rs`; disk eviction is one background task (`evict.rs`),
//! woken by the writes behind the answers (`writes.rs`). Opening the handle ([`Mirror::open`],
//! [`Mirror::open_for_serving`], [`Mirror::with_store`]) fails with an [`OpenError`]; a store
//! held by another process is always an error, never a reason to degrade.
//!
//! The invariant: a [`Reply`] body is the bytes of an [`Entry`], and an entry holds only
//! verified content or a docs tarball; so nothing unverified is ever served as verified.

mod access;
mod evict;
mod flights;
mod freshness;
pub mod missing;
mod path;
mod policy;
mod store;
mod writes;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::StatusCode;

pub use access::ClientCredentials;
use flights::Flights;
pub use policy::{CheckedRelease, PolicyCheck};
pub use store::{key_names_package, CheckError};

use crate::cache::{CacheKey, Class, DiskStore, Entry, MemoryTier, S3Store, Store, StoreError};
use crate::config::{Config, RepoConfig, HEXPM};
use crate::metrics::{CacheStatus, Metrics};
use crate::route::Resource;
use crate::upstream::{Upstream, UpstreamError, UpstreamSetupError};
use crate::verify::{Facts, VerifyError};

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
    /// For a stale answer, seconds since the upstream last confirmed it (sent as `Age`, with a
    /// `Cache-Control` that keeps a downstream cache from treating it as fresh).
    pub stale_age: Option<u64>,
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
            stale_age: (status == CacheStatus::Stale)
                .then(|| crate::cache::unix_now().saturating_sub(entry.fetched_at)),
        }
    }
}

/// Why a request could not be answered with content. `status()` is the one status mapping.
#[derive(Debug, Clone, thiserror::Error)]
pub enum MirrorError {
    /// Not found, decided by hexmirror without asking (a remembered 404, the verified record,
    /// an offline store).
    #[error("not found: {0}")]
    NotFound(String),
    /// The upstream answered 404 (or hex.pm's 403) to this request.
    #[error("not found: {0}")]
    NotFoundUpstream(String),
    #[error("refused: {0}")]
    Refused(#[from] VerifyError),
    #[error("{0}")]
    Upstream(#[from] UpstreamError),
    #[error("authentication required")]
    Unauthorized,
    /// The supply-chain policy blocks this release (`policy`): one line naming the rule and
    /// its cause.
    #[error("{release} is blocked by policy ({}): {}", .decision.rule.as_str(), .decision.reason)]
    Blocked { release: String, decision: crate::policy::Decision },
    #[error("service unavailable: {0}")]
    Unavailable(String),
    /// `max_pending_fetches` upstream fetches are pending: a cold miss is not queued.
    #[error("service unavailable: {pending} upstream fetches are pending (max_pending_fetches); retry shortly")]
    Busy { pending: usize },
    #[error("internal error: {0}")]
    Internal(String),
}

impl MirrorError {
    pub fn status(&self) -> StatusCode {
        match self {
            MirrorError::NotFound(_) | MirrorError::NotFoundUpstream(_) => StatusCode::NOT_FOUND,
            MirrorError::Refused(_) => StatusCode::BAD_GATEWAY,
            MirrorError::Upstream(UpstreamError::Timeout) => StatusCode::GATEWAY_TIMEOUT,
            MirrorError::Upstream(UpstreamError::RateLimited(_)) => StatusCode::SERVICE_UNAVAILABLE,
            MirrorError::Upstream(_) => StatusCode::BAD_GATEWAY,
            MirrorError::Unauthorized => StatusCode::UNAUTHORIZED,
            MirrorError::Blocked { .. } => StatusCode::FORBIDDEN,
            MirrorError::Unavailable(_) | MirrorError::Busy { .. } => StatusCode::SERVICE_UNAVAILABLE,
            MirrorError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn cache_status(&self) -> CacheStatus {
        match self {
            MirrorError::NotFound(_) => CacheStatus::Negative,
            MirrorError::NotFoundUpstream(_) => CacheStatus::Miss,
            MirrorError::Refused(_) => CacheStatus::Refused,
            MirrorError::Unauthorized => CacheStatus::Denied,
            MirrorError::Blocked { .. } => CacheStatus::Blocked,
            _ => CacheStatus::Error,
        }
    }

    /// Seconds a client should wait, for a 503 caused by upstream rate limiting or by too many
    /// pending fetches.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            MirrorError::Upstream(UpstreamError::RateLimited(s)) => Some(*s),
            MirrorError::Busy { .. } => Some(1),
            _ => None,
        }
    }
}

/// Why a [`Mirror`] could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The data directory can be neither opened nor created (not a directory, no permission,
    /// a damaged index), not even read-only.
    #[error("cannot open or create the store in {}: {source}", data_dir.display())]
    Store { data_dir: std::path::PathBuf, source: StoreError },
    /// Another process (a running server) holds the store: never a reason to degrade.
    #[error("cannot open the store in {}: {source} (is another hexmirror using it?)", data_dir.display())]
    Locked { data_dir: std::path::PathBuf, source: StoreError },
    /// The shared store cannot be used as configured (no such bucket, credentials refused).
    #[error(transparent)]
    SharedStore(#[from] crate::cache::s3::S3SetupError),
    #[error(transparent)]
    Upstream(#[from] UpstreamSetupError),
}

impl OpenError {
    /// True for a mistake in the configuration (exit status 64), not a failure of the moment.
    pub fn is_configuration(&self) -> bool {
        matches!(self, OpenError::SharedStore(_))
    }

    /// True when the local data directory cannot be opened or created at all (EX_CANTCREAT,
    /// exit status 73, for the command line).
    pub fn is_unusable_data_dir(&self) -> bool {
        matches!(self, OpenError::Store { .. })
    }
}

/// A refused upstream answer, kept for the admin view and in the store (`refusals.json`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Refusal {
    /// RFC 3339, in milliseconds.
    pub time: String,
    pub repo: String,
    pub resource: String,
    /// The URL that answered with what was refused.
    pub upstream: String,
    pub reason: String,
}

const REFUSALS_KEPT: usize = 100;

/// The store document that keeps the refusals across restarts.
const REFUSALS_DOC: &str = "refusals.json";

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
    /// Bytes that registry files being verified may hold at once (see `verify_content`).
    verifying: crate::budget::Budget,
    /// Persistent-tier writes running behind the answers (`writes.rs`).
    writes: writes::Writes,
    /// The disk eviction task, when the disk tier has a budget (`evict.rs`).
    eviction: Option<evict::DiskEviction>,
    /// Held by pinning and by eviction around reading and changing one entry's record.
    pinning: Arc<tokio::sync::Mutex<()>>,
    /// Tarball requests made while their package record is resolved (`path::early_tarball`).
    early: Mutex<HashMap<String, futures::future::WeakShared<BoxFutureEarly>>>,
    /// What clients asked an offline mirror for that it lacked (`missing.rs`).
    missing: missing::MissingLog,
    /// The supply-chain policy in force, swapped whole by a rescan (`policy.rs`).
    policy: std::sync::RwLock<Arc<crate::policy::Policy>>,
    /// When this store first saw each release listed (`policy::seen`).
    seen: crate::policy::seen::SeenLog,
}

type BoxFutureEarly = futures::future::BoxFuture<
    'static,
    Option<Result<crate::upstream::UpstreamResponse, crate::upstream::UpstreamError>>,
>;

/// The mirror: a cheap handle shared by every connection.
#[derive(Clone)]
pub struct Mirror {
    inner: Arc<Inner>,
}

impl Mirror {
    /// Opens the persistent tier under `data_dir` and builds the mirror.
    pub async fn open(config: Config, metrics: Metrics) -> Result<Mirror, OpenError> {
        let mirror = if let crate::config::StoreConfig::S3(s3) = &config.store {
            let store = S3Store::open(s3, config.ca_file.as_deref(), Some(metrics.store_degraded.clone())).await?;
            Self::with_store(config, metrics, Arc::new(store))?
        } else {
            let opened = DiskStore::open(&config.data_dir)
                .await
                .map_err(|source| OpenError::Store { data_dir: config.data_dir.clone(), source })?;
            Self::from_disk(config, metrics, opened)?
        };
        mirror.load_seen().await;
        Ok(mirror)
    }

    /// Like [`Mirror::open`] for the commands that read or maintain a store (`verify`, `cache`,
    /// `export`, `inspect`, `refusals`): a local data directory that does not exist or holds no
    /// store is an empty store, and nothing is created; one that cannot be looked at (not a
    /// directory, no permission) is an [`OpenError::Store`].
    pub async fn open_existing(config: Config, metrics: Metrics) -> Result<Mirror, OpenError> {
        if let crate::config::StoreConfig::S3(_) = &config.store {
            return Self::open(config, metrics).await;
        }
        match crate::cache::disk::holds_store(&config.data_dir) {
            Ok(true) => Self::open(config, metrics).await,
            Ok(false) => {
                let reason = format!("no store in {}", config.data_dir.display());
                Self::with_store(config, metrics, Arc::new(crate::cache::NullStore { reason }))
            }
            Err(e) => Err(OpenError::Store { data_dir: config.data_dir.clone(), source: StoreError::Io(e) }),
        }
    }

    fn from_disk(
        config: Config,
        metrics: Metrics,
        (store, sweep): (DiskStore, crate::cache::disk::Sweep),
    ) -> Result<Mirror, OpenError> {
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

    /// Like [`Mirror::open`] for the server: a store that can be read but not written
    /// (read-only file system, no space) degrades to serving what it holds read-only and the
    /// rest from the upstream, loudly. A data directory that can be neither opened nor created
    /// (not a directory, no permission) is an error ([`OpenError::Store`]): serving from memory
    /// would lose the cache at every restart while looking healthy. Another process holding
    /// the store is an error too. Starts disk eviction (with a first pass, for a store over
    /// its budget already).
    pub async fn open_for_serving(config: Config, metrics: Metrics) -> Result<Mirror, OpenError> {
        if let crate::config::StoreConfig::S3(s3) = &config.store {
            let store = S3Store::open(s3, config.ca_file.as_deref(), Some(metrics.store_degraded.clone())).await?;
            tracing::info!(store = %store.describe(), coordination = ?store.coordination(), "store: shared");
            let mirror = Self::with_store(config, metrics, Arc::new(store))?;
            mirror.watch_purges();
            mirror.keep_missing_log().await;
            mirror.load_seen().await;
            mirror.watch_policy();
            return Ok(mirror);
        }
        let mirror = match DiskStore::open(&config.data_dir).await {
            Ok(opened) => Self::from_disk(config, metrics, opened)?,
            Err(source) if source.is_locked() => {
                return Err(OpenError::Locked { data_dir: config.data_dir.clone(), source })
            }
            Err(e) => {
                let store = match DiskStore::open_read_only(&config.data_dir).await {
                    Ok(store) => {
                        tracing::error!(
                            data_dir = %config.data_dir.display(),
                            error = %e,
                            entries = store.usage().entries,
                            "store: the data directory is not writable; serving what it holds read-only, the rest from upstream"
                        );
                        Arc::new(store)
                    }
                    Err(_) => return Err(OpenError::Store { data_dir: config.data_dir.clone(), source: e }),
                };
                metrics.store_degraded.set(1);
                let mirror = Self::with_store(config, metrics, store)?;
                mirror.inner.degraded.store(true, Ordering::Relaxed);
                mirror
            }
        };
        if let Some(eviction) = &mirror.inner.eviction {
            eviction.start();
        }
        mirror.keep_missing_log().await;
        mirror.load_refusals().await;
        mirror.load_seen().await;
        mirror.watch_policy();
        Ok(mirror)
    }

    /// Builds the mirror on `store`. With a disk budget, eviction starts with the first write.
    pub fn with_store(config: Config, metrics: Metrics, store: Arc<dyn Store>) -> Result<Mirror, OpenError> {
        let upstream = Upstream::new(&config, metrics.clone())?;
        let evictions = metrics.cache_evictions.with_label_values(&["memory"]);
        let memory = MemoryTier::new(config.memory_cache_bytes, move || evictions.inc());
        let pinning = Arc::new(tokio::sync::Mutex::new(()));
        let eviction = (config.disk_cache_bytes > 0).then(|| {
            let memory = memory.clone();
            let policy = evict::Policy {
                budget: config.disk_cache_bytes,
                // Milliseconds: the memory tier knows when an entry was last served or
                // stored; an entry only on disk counts from its last confirmation.
                last_used: Box::new(move |key, meta| {
                    memory.get(key).map(|e| e.last_used()).unwrap_or(0).max(meta.fetched_at * 1000)
                }),
                evicted: metrics.cache_evictions.with_label_values(&["disk"]),
                pinned_over: metrics.disk_pinned_over_budget.clone(),
                pinning: pinning.clone(),
            };
            evict::DiskEviction::new(Arc::downgrade(&store), policy)
        });
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
            .filter_map(|repo| Some((repo.name.clone(), crate::oauth::TokenSource::for_repo(repo)?)))
            .collect();
        let verifying = crate::budget::Budget::for_registry_files(config.max_registry_bytes);
        let flights = Flights::new(config.max_pending_fetches);
        let policy = std::sync::RwLock::new(config.policy.clone());
        if !config.policy.is_empty() {
            tracing::info!(advisories = config.policy.advisory_count, "policy: in force");
        }
        let mirror = Mirror {
            inner: Arc::new(Inner {
                verifying,
                tokens,
                config: Arc::new(config),
                repos,
                memory,
                store,
                upstream,
                flights,
                negative,
                metrics,
                degraded: AtomicBool::new(false),
                refusals: Mutex::new(VecDeque::new()),
                writes: writes::Writes::default(),
                eviction,
                pinning,
                early: Mutex::default(),
                missing: missing::MissingLog::default(),
                policy,
                seen: Default::default(),
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

    /// Waits until every persistent-tier write started before this call has finished (they run
    /// behind the answers; see `writes.rs`), and the disk eviction those writes called for.
    pub async fn settle_writes(&self) {
        self.inner.writes.settled().await;
        if let Some(eviction) = &self.inner.eviction {
            eviction.settled().await;
        }
    }

    /// An offline mirror's log of what clients asked for and it lacked: loaded (a store of
    /// its own: what earlier runs saved; each replica of a shared store keeps its own copy),
    /// then saved every [`missing::SAVE_EVERY`] while it changes.
    async fn keep_missing_log(&self) {
        if !self.inner.config.offline {
            return;
        }
        if !self.inner.store.shared() {
            match self.inner.store.read_docs(missing::DOC).await {
                Ok(copies) => self.inner.missing.merge(missing::merged(&copies)),
                Err(e) => tracing::warn!(error = %e, "store: cannot read the log of missing requests"),
            }
        }
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(missing::SAVE_EVERY).await;
                let Some(inner) = weak.upgrade() else { return };
                Mirror { inner }.save_missing().await;
            }
        });
    }

    /// Writes the log of missing requests to the store if it changed.
    pub async fn save_missing(&self) {
        if let Some(bytes) = self.inner.missing.take_changes() {
            if let Err(e) = self.inner.store.write_doc(missing::DOC, bytes.into()).await {
                tracing::warn!(error = %e, "store: cannot save the log of missing requests");
            }
        }
    }

    /// What clients asked this offline mirror (and, in a shared store, every replica) for and
    /// it lacked, as saved in the store; the most asked for first.
    pub async fn missing(&self) -> Result<Vec<missing::Missing>, StoreError> {
        self.save_missing().await;
        Ok(missing::merged(&self.inner.store.read_docs(missing::DOC).await?))
    }

    /// The cache key a reply for `resource` was stored under.
    pub fn key_for(&self, target: &Target, resource: &Resource, private: bool) -> CacheKey {
        CacheKey::new(&target.namespace, resource, private)
    }

    /// The target a cache namespace belongs to (`hexpm`, `hexpm~ORG` or a repository name).
    pub fn target_of_namespace(&self, namespace: &str) -> Target {
        match namespace.split_once('~') {
            Some((_, org)) => self.target(Some(org)),
            None if namespace == HEXPM => self.target(None),
            None => self.target(Some(namespace)),
        }
    }

    /// Answers a repository request on behalf of hexmirror itself (sync, repair).
    pub async fn fetch_internal(&self, target: &Target, resource: &Resource) -> Result<Reply, MirrorError> {
        self.get(target, resource, &ClientCredentials::internal()).await
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
}
