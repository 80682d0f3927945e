//! Store maintenance, apart from the request path: pinning, purging, checking stored entries
//! (`hexmirror verify`), importing bundles, refusals and the size gauges.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use futures::future::FutureExt;
use futures::stream::TryStreamExt;

use super::access::ClientCredentials;
use super::freshness::Check;
use super::path::signed_by;
use super::{Mirror, MirrorError, Refusal, Target, REFUSALS_KEPT};
use crate::cache::{unix_now, CacheKey, Entry, StoreError, StoredMeta, Validators};
use crate::config::HEXPM;
use crate::metrics::CacheStatus;
use crate::route::Resource;
use crate::verify::{Facts, VerifyError};

/// Why a stored or imported object does not check out.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("{0} does not name a repository resource")]
    NotAResource(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("no verified record of {0} in the bundle or the store")]
    NoRecord(String),
    #[error("the verified record of {0} does not list {1}")]
    NotListed(String, String),
    #[error("the verified record of {0} lists no releases")]
    NoReleases(String),
    #[error("no verified {0} to check its signature against")]
    NoSigned(String),
    #[error("labelled public, but {0} is private content here (a hex.pm organization or a closed repository); a bundle cannot make it public")]
    LabelledPublic(String),
    #[error(transparent)]
    Refused(#[from] MirrorError),
}

impl Mirror {
    /// Marks an entry as selected by sync or import: disk-size eviction never removes it.
    /// Waits for the entry's background write first, so a pinned entry is durable.
    pub async fn pin(&self, key: &CacheKey) -> Result<(), StoreError> {
        self.inner.writes.settled_key(key).await;
        let in_memory = self.inner.memory.get(key).map(|entry| {
            let mut pinned = (*entry).clone();
            pinned.pinned = true;
            let pinned = Arc::new(pinned);
            self.inner.memory.insert(key.clone(), pinned.clone());
            pinned
        });
        // Eviction looks at an entry's record under the same lock before it removes it.
        let _pinning = self.inner.pinning.lock().await;
        let store = &self.inner.store;
        match store.head(key).await? {
            Some(mut meta) if !meta.pinned => {
                meta.pinned = true;
                store.update_meta(key, &meta).await
            }
            Some(_) => Ok(()),
            // Evicted from disk before it could be pinned (a disk budget smaller than what is
            // being synced): the memory tier's copy, verified like every entry, is written back.
            None => match in_memory {
                Some(entry) => store.put(key, &entry.stored_meta(), entry.bytes().clone()).await,
                None => Err(StoreError::NotStored(key.to_string())),
            },
        }
    }

    /// Removes every entry of package `name` (records, tarballs, docs) in every namespace.
    /// With `repo`, only in that repository's namespace (`hexpm`, a configured repository, or
    /// a hex.pm organization); with `dry_run`, removes nothing and says what it would remove.
    pub async fn purge(&self, name: &str, repo: Option<&str>, dry_run: bool) -> Result<Vec<String>, StoreError> {
        // A write still running behind an answer would put back what is purged.
        self.inner.writes.settled().await;
        let namespace = repo.map(|repo| match repo {
            HEXPM => HEXPM.to_string(),
            other => self.target(Some(other)).namespace,
        });
        let matches = |key: &CacheKey| {
            key_names_package(key, name) && namespace.as_deref().is_none_or(|ns| key.namespace() == ns)
        };
        let store = &self.inner.store;
        let doomed: Vec<CacheKey> = store
            .list("")
            .try_filter_map(|(key, _)| futures::future::ready(Ok(matches(&key).then_some(key))))
            .try_collect()
            .await?;
        let mut removed = std::collections::BTreeSet::new();
        for key in doomed {
            if !dry_run {
                store.remove(&key).await?;
            }
            removed.insert(key.to_string());
        }
        // Also what only the memory tier holds (evicted from disk, or never written to it).
        let in_memory = match dry_run {
            true => self.inner.memory.matching(matches),
            false => self.inner.memory.remove_matching(matches),
        };
        removed.extend(in_memory.iter().map(|key| key.to_string()));
        if !dry_run && store.shared() {
            // The other replicas' memory tiers drop it too (`watch_purges`).
            let purge = crate::cache::Purge { name: name.to_string(), namespace: namespace.clone() };
            store.announce_purge(&purge).await?;
        }
        Ok(removed.into_iter().collect())
    }

    /// For a shared store: applies the purges other replicas announce to this replica's
    /// memory tier, checking every `registry_ttl / 2` (at most every 30 s), so a purge reaches
    /// every replica within `registry_ttl`.
    pub(super) fn watch_purges(&self) {
        let every = (self.inner.config.registry_ttl / 2)
            .clamp(std::time::Duration::from_secs(1), std::time::Duration::from_secs(30));
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut after = crate::cache::unix_now_millis();
            loop {
                tokio::time::sleep(every).await;
                let Some(inner) = weak.upgrade() else { return };
                let mirror = Mirror { inner };
                match mirror.inner.store.purges_after(after).await {
                    Ok(purges) => {
                        for (time, purge) in purges {
                            after = after.max(time);
                            let dropped = mirror.inner.memory.remove_matching(|key| {
                                key_names_package(key, &purge.name)
                                    && purge.namespace.as_deref().is_none_or(|ns| key.namespace() == ns)
                            });
                            tracing::info!(package = %purge.name, namespace = ?purge.namespace, dropped = dropped.len(), "store: purge announced by another replica");
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "store: cannot read announced purges"),
                }
            }
        });
    }

    /// Re-verifies a stored entry from the disk tier alone: its checksum on read, then its
    /// signature or its checksum against the stored verified record. `Ok(false)`: not stored.
    pub async fn check_stored(&self, key: &CacheKey) -> Result<bool, CheckError> {
        let (target, resource) = self.target_and_resource(key)?;
        let Some((meta, body)) = self.inner.store.get(key).await? else { return Ok(false) };
        let check = self.stored_check(&target, &resource, &HashMap::new(), None).await?;
        self.verify_content(&target, &resource, &check, body, &meta.upstream).await?;
        Ok(true)
    }

    /// What stored (or imported) bytes of `resource` must satisfy, from verified records alone:
    /// a tarball's checksum from `records` (of the same bundle) or the stored record; a
    /// signature's object from `signs` or the store; an installer's digest from its listing.
    async fn stored_check(
        &self,
        target: &Target,
        resource: &Resource,
        records: &HashMap<(String, String), Arc<Entry>>,
        signs: Option<Bytes>,
    ) -> Result<Check, CheckError> {
        let internal = ClientCredentials::internal();
        Ok(match resource {
            Resource::Tarball { name, version } => {
                let record = match records.get(&(target.namespace.clone(), name.clone())) {
                    Some(entry) => entry.clone(),
                    None => {
                        self.resolve_stored(target, &Resource::Package(name.clone()), &internal)
                            .await
                            .ok_or_else(|| CheckError::NoRecord(name.clone()))?
                            .0
                    }
                };
                match record.content.facts() {
                    Facts::Releases(releases) => Check::Tarball(
                        *releases.get(version).ok_or_else(|| CheckError::NotListed(name.clone(), version.clone()))?,
                    ),
                    _ => return Err(CheckError::NoReleases(name.clone())),
                }
            }
            Resource::Docs { .. } => Check::Docs,
            Resource::Installer { .. } => Check::Installer(self.installer_digest(target, resource, &internal).await?),
            _ => match signed_by(resource) {
                Some(signed_resource) => {
                    let signed = match signs {
                        Some(bytes) => bytes,
                        None => {
                            let (entry, _) = self
                                .resolve_stored(target, &signed_resource, &internal)
                                .await
                                .ok_or_else(|| CheckError::NoSigned(signed_resource.path()))?;
                            entry.bytes().clone()
                        }
                    };
                    Check::Signature { signed, ttl: None }
                }
                None => Check::Ttl(None),
            },
        })
    }

    /// The target and resource a key names.
    fn target_and_resource(&self, key: &CacheKey) -> Result<(Target, Resource), CheckError> {
        Ok((self.target_of_namespace(key.namespace()), key.resource().clone()))
    }

    /// A stored entry of `resource` (public or private), verified, without asking the upstream.
    pub(super) async fn resolve_stored(
        &self,
        target: &Target,
        resource: &Resource,
        _client: &ClientCredentials,
    ) -> Option<(Arc<Entry>, CacheStatus)> {
        for private in [false, true] {
            let key = CacheKey::new(&target.namespace, resource, private);
            if let Some(entry) = self.lookup(target, &key, resource, &Check::Ttl(None)).await {
                return Some((entry, CacheStatus::Hit));
            }
        }
        None
    }

    /// Verifies bytes brought in from outside (an import bundle) as the resource `key` names.
    /// Tarballs are checked against `records` (verified records of the same bundle) or, failing
    /// that, the stored verified record; registry v1 files and installs CSVs need `signature`;
    /// a signature file needs `signs`, the bytes it signs (from the bundle) or their stored copy.
    /// Whether the entry is private is decided here, not by the bundle: an organization's or a
    /// closed repository's content labelled public is refused.
    pub async fn verify_import(
        &self,
        key: &CacheKey,
        bytes: Bytes,
        signature: Option<String>,
        signs: Option<Bytes>,
        records: &HashMap<(String, String), Arc<Entry>>,
    ) -> Result<Entry, CheckError> {
        let (target, resource) = self.target_and_resource(key)?;
        if !key.is_private() && self.is_private_by_nature(&target) {
            return Err(CheckError::LabelledPublic(target.namespace.clone()));
        }
        let check = self.stored_check(&target, &resource, records, signs).await?;
        let validators = Validators { signature, ..Validators::default() };
        let content = self.verify_content(&target, &resource, &check, bytes, &validators).await?;
        let private = key.is_private() || self.is_private_by_nature(&target);
        let mut entry = Entry::new(content, resource.kind(), validators, unix_now(), private);
        entry.pinned = true;
        Ok(entry)
    }

    /// Stores an imported entry in both tiers, pinned.
    pub async fn store_imported(&self, key: &CacheKey, entry: Entry) -> Result<(), StoreError> {
        let entry = Arc::new(entry);
        self.inner.memory.insert(key.clone(), entry.clone());
        self.inner.store.put(key, &entry.stored_meta(), entry.bytes().clone()).await
    }

    /// Stores an imported entry's verified bytes on disk, pinned, as `meta` (its record when it
    /// was verified) describes them. The memory tier's copy, if any, is dropped: the next read
    /// loads and verifies the new one.
    pub async fn store_imported_bytes(&self, key: &CacheKey, meta: &StoredMeta, body: Bytes) -> Result<(), StoreError> {
        self.inner.memory.remove(key);
        self.inner.store.put(key, meta, body).await
    }

    /// Removes one entry from both tiers.
    pub async fn remove(&self, key: &CacheKey) -> Result<(), StoreError> {
        self.inner.writes.settled_key(key).await;
        self.inner.memory.remove(key);
        self.inner.store.remove(key).await
    }

    /// Refreshes the cache size gauges.
    pub fn update_gauges(&self) {
        let m = &self.inner.metrics;
        let (entries, bytes) = self.inner.memory.usage();
        m.cache_entries.with_label_values(&["memory"]).set(entries as i64);
        m.cache_bytes.with_label_values(&["memory"]).set(bytes as i64);
        let disk = self.inner.store.usage();
        m.cache_entries.with_label_values(&["disk"]).set(disk.entries as i64);
        m.cache_bytes.with_label_values(&["disk"]).set(disk.bytes as i64);
    }

    pub(super) fn note_store_result(&self, result: Result<(), StoreError>) {
        let m = &self.inner.metrics;
        if self.inner.store.reports_health() {
            // The store sets the gauge and logs its own reachability.
            if let Err(e) = result {
                m.store_write_errors.inc();
                tracing::debug!(error = %e, "store: write failed");
            }
            return;
        }
        match result {
            Ok(()) => {
                if self.inner.degraded.swap(false, Ordering::Relaxed) {
                    m.store_degraded.set(0);
                    tracing::info!("store: writes succeed again");
                }
            }
            Err(e) => {
                m.store_write_errors.inc();
                if !self.inner.degraded.swap(true, Ordering::Relaxed) {
                    m.store_degraded.set(1);
                    tracing::error!(error = %e, disk_full = e.is_disk_full(), "store: write failed; serving from memory and upstream until writes succeed");
                }
            }
        }
    }

    /// The most recent refusals of this process, newest first.
    pub fn refusals(&self) -> Vec<Refusal> {
        self.inner.refusals.lock().expect("never poisoned").iter().rev().cloned().collect()
    }

    /// The most recent refusals as the store keeps them (of every replica of a shared store),
    /// newest first: what `hexmirror refusals` shows, with or without a running server.
    pub async fn saved_refusals(&self) -> Result<Vec<Refusal>, StoreError> {
        let mut all: Vec<Refusal> = Vec::new();
        for copy in self.inner.store.read_docs(super::REFUSALS_DOC).await? {
            if let Ok(saved) = serde_json::from_slice::<Vec<Refusal>>(&copy) {
                all.extend(saved);
            }
        }
        // RFC 3339 times in UTC with the same precision order as text.
        all.sort_by(|a, b| b.time.cmp(&a.time));
        all.truncate(REFUSALS_KEPT);
        Ok(all)
    }

    /// Loads the refusals an earlier run of a store of its own saved.
    pub(super) async fn load_refusals(&self) {
        if self.inner.store.shared() {
            return;
        }
        let Ok(saved) = self.saved_refusals().await else { return };
        let mut refusals = self.inner.refusals.lock().expect("never poisoned");
        for refusal in saved.into_iter().rev() {
            if refusals.len() == REFUSALS_KEPT {
                refusals.pop_front();
            }
            refusals.push_back(refusal);
        }
    }

    /// Counts a refusal in `hexmirror_verification_failures_total`.
    pub(super) fn count_refusal(&self, target: &Target, resource: &Resource, reason: &str) {
        self.inner
            .metrics
            .verification_failures
            .with_label_values(&[target.label(), resource.kind().as_str(), reason])
            .inc();
    }

    /// Counts and keeps a refusal of what `url` answered; the store's copy is replaced in the
    /// background (the refused bytes are never kept).
    pub(super) fn record_refusal(&self, target: &Target, resource: &Resource, error: &VerifyError, url: &str) {
        self.count_refusal(target, resource, error.reason());
        let refusal = Refusal {
            time: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            repo: target.namespace.clone(),
            resource: resource.path(),
            upstream: url.to_string(),
            reason: error.to_string(),
        };
        self.keep_refusal(refusal, false);
    }

    /// Keeps a refusal (the last [`REFUSALS_KEPT`]) and saves them in the background, each save
    /// after the one before (shutdown waits for the last); with `skip_repeat`, one that repeats
    /// the newest (same repository, resource and reason) is not kept again.
    pub(super) fn keep_refusal(&self, refusal: Refusal, skip_repeat: bool) {
        let saved = {
            let mut refusals = self.inner.refusals.lock().expect("never poisoned");
            let repeated = refusals.back().is_some_and(|last| {
                (&last.repo, &last.resource, &last.reason) == (&refusal.repo, &refusal.resource, &refusal.reason)
            });
            if skip_repeat && repeated {
                return;
            }
            if refusals.len() == REFUSALS_KEPT {
                refusals.pop_front();
            }
            refusals.push_back(refusal);
            serde_json::to_vec(&*refusals).expect("refusals serialize")
        };
        let store = self.inner.store.clone();
        self.inner.writes.chain(
            async move {
                if let Err(e) = store.write_doc(super::REFUSALS_DOC, saved.into()).await {
                    tracing::warn!(error = %e, "store: cannot save the refusals");
                }
            }
            .boxed(),
        );
    }
}

/// True when `key` is package `name`'s record, tarball or docs in any namespace.
pub fn key_names_package(key: &CacheKey, name: &str) -> bool {
    match key.resource() {
        Resource::Package(n) | Resource::Tarball { name: n, .. } | Resource::Docs { name: n, .. } => n == name,
        _ => false,
    }
}
