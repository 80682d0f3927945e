//! The data path, in the order a request takes it (see the steps in the module docs of
//! `mirror`): `get` → `resolve_entry` → `lookup` → `fetch` → `verify_content` → `persist`.

use std::sync::Arc;

use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt, Shared};
use http::StatusCode;
use sha2::{Digest, Sha256};

use super::access::{ClientCredentials, Credential};
use super::freshness::{self, age_of, content_matches, is_private, validators_of, Check};
use super::{Mirror, MirrorError, Reply, Target};
use crate::cache::{unix_now, CacheKey, Claim, Content, Entry, Validators};
use crate::config::HEXPM;
use crate::metrics::CacheStatus;
use crate::route::{Kind, Resource};
use crate::upstream::{UpstreamError, UpstreamRequest, UpstreamResponse};
use crate::verify::{self, Facts, RegistryFile, VerifyError};

impl Mirror {
    /// Answers a repository request. See the module docs for the steps. What an offline
    /// mirror lacks is noted (`missing.rs`).
    pub async fn get(
        &self,
        target: &Target,
        resource: &Resource,
        client: &ClientCredentials,
    ) -> Result<Reply, MirrorError> {
        let answer = self.answer(target, resource, client).await;
        if let (true, Err(MirrorError::NotFound(_))) = (self.inner.config.offline, &answer) {
            let (package, version) = match resource {
                Resource::Tarball { name, version } => (name, Some(version.as_str())),
                Resource::Package(name) => (name, None),
                _ => return answer,
            };
            let now = crate::cache::unix_now_millis();
            self.inner.missing.note(&target.namespace, package, version, now);
            self.inner.metrics.offline_missing.with_label_values(&[target.label()]).inc();
        }
        answer
    }

    async fn answer(
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
                    stale_age: None,
                })
            }
            Resource::Tarball { name, version } => {
                // With the record cold too, the tarball is asked for at the same time as the
                // record (one round trip instead of two) and verified once both are here.
                let early = self.early_tarball(target, name, resource, client);
                let record = self.listed_release(target, name, version, client);
                let release = match early.clone() {
                    None => record.await?,
                    Some(mut tarball) => {
                        futures::pin_mut!(record);
                        tokio::select! {
                            biased;
                            checksum = &mut record => checksum?,
                            _ = &mut tarball => record.await?,
                        }
                    }
                };
                let check = Check::Tarball(release.checksum);
                let (entry, status) = self.resolve_entry_with(target, resource, client, check, early).await?;
                // The supply-chain policy decides here, on the verified bytes about to be
                // handed out, whichever tier or flight they came from.
                self.enforce_on_tarball(target, name, &release, &entry)?;
                Ok(Reply::from_entry(&entry, status))
            }
            Resource::Installer { .. } => {
                let digest = self.installer_digest(target, resource, client).await?;
                self.resolve(target, resource, client, Check::Installer(digest)).await
            }
            Resource::Docs { .. } => self.resolve(target, resource, client, Check::Docs).await,
            _ => match signed_by(resource) {
                Some(signed) => {
                    // The object a signature signs is public registry content: resolved as
                    // an anonymous client would, then the signature is checked against it.
                    let anonymous = ClientCredentials::default();
                    let (signed, _) = self.resolve_entry(target, &signed, &anonymous, Check::Ttl(None)).await?;
                    let check = Check::Signature { signed: signed.bytes().clone(), ttl: Some(self.ttl()) };
                    self.resolve(target, resource, client, check).await
                }
                None => self.resolve(target, resource, client, Check::Ttl(Some(self.ttl()))).await,
            },
        }
    }

    pub(super) fn ttl(&self) -> u64 {
        self.inner.config.registry_ttl.as_secs()
    }

    /// [`freshness::is_fresh`] now, with this mirror's registry TTL for docs without a max-age.
    pub(super) fn is_fresh(&self, entry: &Entry, check: &Check) -> bool {
        freshness::is_fresh(entry, check, unix_now(), self.ttl())
    }

    /// The release as the verified package record lists it: the checksum its tarball must
    /// have, its retirement. A cached record of any age will do while it lists the release;
    /// otherwise the record is refreshed once.
    pub(super) async fn listed_release(
        &self,
        target: &Target,
        name: &str,
        version: &str,
        client: &ClientCredentials,
    ) -> Result<verify::Release, MirrorError> {
        let package = Resource::Package(name.to_string());
        // Any verified record held lists the release: its checksum decides. A record that does
        // not list it is asked again only when it is older than `registry_ttl` (a release
        // published since); a fresh one answers 404 by itself.
        for check in [Check::Ttl(None), Check::Ttl(Some(0))] {
            let (record, status) = self.resolve_entry(target, &package, client, check).await?;
            if let Facts::Releases(releases) = record.content.facts() {
                if let Some(release) = releases.release(version) {
                    return Ok(release.clone());
                }
            }
            let confirmed_now = matches!(status, CacheStatus::Miss | CacheStatus::Revalidated);
            if confirmed_now || self.is_fresh(&record, &Check::Ttl(Some(self.ttl()))) || self.inner.config.offline {
                break;
            }
        }
        Err(MirrorError::NotFound(format!("release {name} {version} is not in the verified registry")))
    }

    /// The digest an installer archive must have, from the verified installs CSV.
    pub(super) async fn installer_digest(
        &self,
        target: &Target,
        installer: &Resource,
        client: &ClientCredentials,
    ) -> Result<String, MirrorError> {
        let Resource::Installer { elixir, app, version, .. } = installer else {
            return Err(MirrorError::Internal("an installer digest for something else".into()));
        };
        let list = Resource::InstallsList(format!("{app}-1.x"));
        let (entry, _) = self.resolve_entry(target, &list, client, Check::Ttl(None)).await?;
        if let Facts::Installs(rows) = entry.content.facts() {
            let row = rows.iter().find(|r| r.version == *version && r.elixir_versions.iter().any(|e| e == elixir));
            if let Some(row) = row {
                return Ok(row.digest.clone());
            }
        }
        Err(MirrorError::NotFound(format!("{} is not listed in the verified installs list", installer.path())))
    }

    pub(super) async fn resolve(
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
    pub(super) async fn resolve_entry(
        &self,
        target: &Target,
        resource: &Resource,
        client: &ClientCredentials,
        check: Check,
    ) -> Result<(Arc<Entry>, CacheStatus), MirrorError> {
        self.resolve_entry_with(target, resource, client, check, None).await
    }

    /// [`Mirror::resolve_entry`], with the upstream's answer already on its way (`early`) for
    /// a fetch with this client's credential and no cached copy.
    async fn resolve_entry_with(
        &self,
        target: &Target,
        resource: &Resource,
        client: &ClientCredentials,
        check: Check,
        early: Option<Early>,
    ) -> Result<(Arc<Entry>, CacheStatus), MirrorError> {
        let public_key = CacheKey::new(&target.namespace, resource, false);
        let offline = self.inner.config.offline;
        let allowed = self.access_allows(target, client);
        let closed = self.is_closed(target);

        // A public copy serves everyone; a closed repository has none (whatever the store
        // holds under that key). A private copy serves only an authorized client.
        let mut cached = match closed {
            true => None,
            false => self.lookup(target, &public_key, resource, &check).await,
        };
        if cached.is_none() {
            if let Some(entry) = self.lookup(target, &public_key.with_scope(true), resource, &check).await {
                if allowed {
                    cached = Some(entry);
                } else if self.can_recheck(target, client) {
                    entry.touch();
                    return self.recheck(target, resource, client, entry, &check).await;
                } else if closed {
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
            // Expired, but within stale_while_revalidate, or every upstream's circuit breaker
            // is open: answer now and revalidate behind (for an open breaker, that request is
            // its probe when one is due).
            if let Some(credential) = self.background_credential(target, entry) {
                let reason = match () {
                    _ if self.within_stale_window(entry, &check) => Some("revalidating"),
                    _ if !self.inner.upstream.is_healthy(&target.repo) => Some("error"),
                    _ => None,
                };
                if let Some(reason) = reason {
                    self.revalidate_in_background(target, resource, &check, credential, entry.clone());
                    self.count_stale(target, reason);
                    return Ok((entry.clone(), CacheStatus::Stale));
                }
            }
        } else if offline {
            return Err(MirrorError::NotFound(format!("{} is not in this offline mirror's store", resource.path())));
        } else if matches!(credential, Credential::None) && self.inner.negative.contains_key(&public_key) {
            // Only anonymous 404s are remembered, so only anonymous requests are answered so.
            return Err(MirrorError::NotFound(format!("{} (the upstream answered 404 moments ago)", resource.path())));
        }

        let client_credential = matches!(credential, Credential::Client(_));
        let fallback = cached.clone();
        let early = early.filter(|_| cached.is_none());
        let (entry, status) = match self.fetch_coalesced(target, &public_key, &check, credential, cached, early).await {
            // Too many fetches pending: the last verified copy rather than a 503.
            Err(MirrorError::Busy { .. }) if fallback.is_some() => {
                (fallback.expect("checked by the guard"), CacheStatus::Stale)
            }
            fetched => fetched?,
        };
        if status == CacheStatus::Stale {
            self.count_stale(target, "error");
        }
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

    /// The memory tier, then the persistent tier (re-verified before use). A copy whose bytes
    /// no longer match what the verified record says now (a tarball, an installer) is no copy.
    ///
    /// Nothing is taken from the store's own record but validators and times: whether bytes
    /// need verifying follows from the resource (only docs have nothing to verify against), and
    /// whether an entry is private from the key's scope.
    pub(super) async fn lookup(
        &self,
        target: &Target,
        key: &CacheKey,
        resource: &Resource,
        check: &Check,
    ) -> Option<Arc<Entry>> {
        if let Some(entry) = self.inner.memory.get(key) {
            return content_matches(&entry, check).then_some(entry);
        }
        self.load_stored(target, key, resource, check).await
    }

    /// The persistent tier's copy of `key`, re-verified, put in the memory tier.
    async fn load_stored(
        &self,
        target: &Target,
        key: &CacheKey,
        resource: &Resource,
        check: &Check,
    ) -> Option<Arc<Entry>> {
        let (meta, body) = match self.inner.store.get(key).await {
            Ok(Some(found)) => found,
            Ok(None) => return None,
            Err(e) => {
                if matches!(e, crate::cache::StoreError::Damaged(_)) {
                    // Bytes that do not match their record's checksum: a refusal like any.
                    self.count_refusal(target, resource, "checksum_mismatch");
                }
                match e {
                    // Said once by the store when it stops answering, not once per request.
                    crate::cache::StoreError::Unavailable(_) | crate::cache::StoreError::TimedOut(_) => {
                        tracing::debug!(key = %key, error = %e, "store: not read")
                    }
                    _ => tracing::warn!(key = %key, error = %e, "store: entry dropped"),
                }
                return None;
            }
        };
        let content = match self.verify_content(target, resource, check, body, &meta.upstream).await {
            Ok(content) => content,
            Err(e) => {
                tracing::info!(key = %key, error = %e, "store: stored copy does not verify; refetching");
                if let MirrorError::Refused(refusal) = &e {
                    // Counted like the upstream's refusals: the store is trusted no more.
                    self.count_refusal(target, resource, refusal.reason());
                }
                return None;
            }
        };
        let mut entry = Entry::new(content, resource.kind(), meta.upstream, meta.fetched_at, key.is_private());
        entry.pinned = meta.pinned;
        let entry = Arc::new(entry);
        self.inner.memory.insert(key.clone(), entry.clone());
        Some(entry)
    }

    /// Asks the upstream once for any number of concurrent requests with the same credential
    /// (`flights.rs`). The flight hands every waiter the entry itself, so a reply never depends
    /// on the entry still being in a cache tier (a tiny memory budget, a full disk).
    /// `key` is the resource's public key: flights are per resource and credential, whatever
    /// the scope the answer is stored under.
    async fn fetch_coalesced(
        &self,
        target: &Target,
        key: &CacheKey,
        check: &Check,
        credential: Credential,
        stale: Option<Arc<Entry>>,
        early: Option<Early>,
    ) -> Result<(Arc<Entry>, CacheStatus), MirrorError> {
        let flight_key = format!("{key}#{}", credential.fingerprint());
        let this = self.clone();
        let (t, r, c) = (target.clone(), key.resource().clone(), check.clone());
        self.inner
            .flights
            .join(flight_key, &self.inner.metrics, move || {
                async move {
                    // A flight that finished just before this one started may have stored
                    // what we need: look again before asking the upstream.
                    if let Some(entry) = this.stored_since(&t, &r, &c, stale.as_deref()) {
                        return Ok((entry, CacheStatus::Hit));
                    }
                    if this.inner.store.shared() {
                        return this.fetch_shared(&t, &r, c, credential, stale, early).await;
                    }
                    this.fetch(&t, &r, c, credential, stale, early).await
                }
                .boxed()
            })
            .await
    }

    /// [`Mirror::fetch`] for a store shared with other replicas: what another replica stored
    /// since this copy (`stale`) is used first; a cold or expired object is fetched by one
    /// replica at a time where the store supports claims (the others wait for its entry, at
    /// most until its claim expires, then fetch themselves).
    async fn fetch_shared(
        &self,
        target: &Target,
        resource: &Resource,
        check: Check,
        credential: Credential,
        stale: Option<Arc<Entry>>,
        early: Option<Early>,
    ) -> Result<(Arc<Entry>, CacheStatus), MirrorError> {
        // A client's own credential fetches what only it may see: never shared or waited for.
        if matches!(credential, Credential::Client(_)) {
            return self.fetch(target, resource, check, credential, stale, early).await;
        }
        if let Some(entry) = self.shared_copy(target, resource, &check, &credential, stale.as_deref()).await {
            return Ok((entry, CacheStatus::Hit));
        }
        let key = CacheKey::new(&target.namespace, resource, false);
        let store = &self.inner.store;
        match store.claim(&key).await {
            Ok(Claim::Mine) => {
                let result = self.fetch(target, resource, check, credential, stale, early).await;
                // Released once the entry's write has landed, so that the replicas waiting
                // for it find it.
                let this = self.clone();
                tokio::spawn(async move {
                    this.inner.writes.settled_key(&key).await;
                    this.inner.writes.settled_key(&key.with_scope(true)).await;
                    if let Err(e) = this.inner.store.release(&key).await {
                        tracing::debug!(key = %key, error = %e, "store: cannot release a claim; it expires");
                    }
                });
                return result;
            }
            Ok(Claim::Theirs { until }) => {
                let mut polls = 0u32;
                while crate::cache::unix_now_millis() < until {
                    tokio::time::sleep(CLAIM_POLL).await;
                    polls += 1;
                    if let Some(entry) = self.shared_copy(target, resource, &check, &credential, stale.as_deref()).await
                    {
                        self.inner.metrics.shared_waits.inc();
                        return Ok((entry, CacheStatus::Hit));
                    }
                    // The other replica gave up (the upstream answered 404, or refused bytes).
                    if polls % 5 == 0 && !store.claimed(&key).await.unwrap_or(false) {
                        break;
                    }
                }
            }
            Ok(Claim::Unsupported) => {}
            Err(e) => tracing::debug!(key = %key, error = %e, "store: cannot claim a fetch; fetching"),
        }
        self.fetch(target, resource, check, credential, stale, early).await
    }

    /// A copy another replica stored in the shared store that is fresh and newer than
    /// `stale`, verified and put in the memory tier. The same bytes confirmed later by another
    /// replica need no download: this replica's copy takes the newer record's times.
    async fn shared_copy(
        &self,
        target: &Target,
        resource: &Resource,
        check: &Check,
        credential: &Credential,
        stale: Option<&Entry>,
    ) -> Option<Arc<Entry>> {
        let scopes: &[bool] = match (self.is_closed(target), credential) {
            (true, _) => &[true],
            (false, Credential::Own) => &[false, true],
            (false, _) => &[false],
        };
        for &private in scopes {
            let key = CacheKey::new(&target.namespace, resource, private);
            // With a copy in hand, its record alone says whether there is anything newer.
            if let Some(old) = stale.filter(|old| old.private == private) {
                let meta = match self.inner.store.head(&key).await {
                    Ok(Some(meta)) => meta,
                    _ => continue,
                };
                if meta.fetched_at <= old.fetched_at {
                    continue;
                }
                if meta.sha256 == hex::encode(old.sha256) {
                    let mut entry = old.clone();
                    entry.fetched_at = meta.fetched_at;
                    entry.upstream = meta.upstream;
                    if !self.is_fresh(&entry, check) {
                        continue;
                    }
                    let entry = Arc::new(entry);
                    self.inner.memory.insert(key, entry.clone());
                    return Some(entry);
                }
            }
            if let Some(entry) = self.load_stored(target, &key, resource, check).await {
                let newer = stale.is_none_or(|old| entry.fetched_at > old.fetched_at);
                if newer && self.is_fresh(&entry, check) {
                    return Some(entry);
                }
            }
        }
        None
    }

    /// The credential a background revalidation of `entry` uses, when hexmirror can revalidate
    /// it without any client's credential: a public entry, or a private one fetched with
    /// hexmirror's own key. `None`: only a request with the client's credential may.
    fn background_credential(&self, target: &Target, entry: &Entry) -> Option<Credential> {
        let credential = self.credential_for(target, &ClientCredentials::default());
        (!entry.private || matches!(credential, Credential::Own)).then_some(credential)
    }

    /// An expired registry file within `stale_while_revalidate`: it may be answered at once
    /// while a background revalidation runs.
    fn within_stale_window(&self, entry: &Entry, check: &Check) -> bool {
        let window = self.inner.config.stale_while_revalidate.as_secs();
        freshness::within_stale_window(entry, check, unix_now(), window)
    }

    /// Starts one revalidation of `stale` (coalesced with any running for the same key and
    /// credential); its result replaces the copy only when it verifies. Never cancelled: no
    /// client waits for it.
    fn revalidate_in_background(
        &self,
        target: &Target,
        resource: &Resource,
        check: &Check,
        credential: Credential,
        stale: Arc<Entry>,
    ) {
        let (this, target, resource, check) = (self.clone(), target.clone(), resource.clone(), check.clone());
        tokio::spawn(async move {
            let key = CacheKey::new(&target.namespace, &resource, false);
            if let Err(e) = this.fetch_coalesced(&target, &key, &check, credential, Some(stale), None).await {
                tracing::info!(repo = target.label(), resource = %resource.path(), error = %e, "background revalidation failed; the last verified copy stays");
            }
        });
    }

    fn count_stale(&self, target: &Target, reason: &str) {
        self.inner.metrics.stale_served.with_label_values(&[target.label(), reason]).inc();
    }

    /// A fresh public entry in the memory tier that is not the stale copy this request started
    /// from. Never a private one: whoever stored it, it proves nothing about this flight's client.
    pub(super) fn stored_since(
        &self,
        target: &Target,
        resource: &Resource,
        check: &Check,
        stale: Option<&Entry>,
    ) -> Option<Arc<Entry>> {
        if self.is_closed(target) {
            return None;
        }
        let entry = self.inner.memory.get(&CacheKey::new(&target.namespace, resource, false))?;
        let newer = stale.is_none_or(|old| entry.fetched_at > old.fetched_at || entry.etag != old.etag);
        (newer && self.is_fresh(&entry, check)).then_some(entry)
    }

    /// Authorizes a client that is not on the access list for a cached private entry by asking
    /// the upstream with the client's own credential: a 304 (or a new 200) proves access; a
    /// 401/403 denies; no answer is 503 (the copy is never served without the proof).
    pub(super) async fn recheck(
        &self,
        target: &Target,
        resource: &Resource,
        client: &ClientCredentials,
        entry: Arc<Entry>,
        check: &Check,
    ) -> Result<(Arc<Entry>, CacheStatus), MirrorError> {
        let credential = self.credential_for(target, client);
        match self.fetch(target, resource, check.clone(), credential, Some(entry), None).await {
            Ok((entry, status)) if status != CacheStatus::Stale => Ok((entry, status)),
            Ok(_) | Err(MirrorError::Upstream(_)) => {
                Err(MirrorError::Unavailable("the upstream cannot confirm access to private content".into()))
            }
            Err(e) => Err(e),
        }
    }

    /// The upstream's answer for a tarball whose package record is not in memory either,
    /// requested now, while the record is resolved (coalesced: concurrent requests share one).
    /// `None` when the record or the tarball is in memory, or the mirror is offline. Nothing
    /// is trusted from it until [`Mirror::fetch_with`] verifies it against the record.
    fn early_tarball(
        &self,
        target: &Target,
        name: &str,
        tarball: &Resource,
        client: &ClientCredentials,
    ) -> Option<Early> {
        // Offline, nothing to ask; with replicas coordinating their fetches, the claim on the
        // tarball decides who asks.
        if self.inner.config.offline || self.inner.store.coordinates() {
            return None;
        }
        let record = Resource::Package(name.to_string());
        let in_memory = |resource: &Resource| {
            [false, true]
                .into_iter()
                .any(|private| self.inner.memory.contains(&CacheKey::new(&target.namespace, resource, private)))
        };
        if in_memory(&record) || in_memory(tarball) {
            return None;
        }
        let credential = self.credential_for(target, client);
        let public_key = CacheKey::new(&target.namespace, tarball, false);
        let early_key = format!("{public_key}#{}", credential.fingerprint());
        let mut early = self.inner.early.lock().expect("never poisoned: no panics while held");
        if let Some(running) = early.get(&early_key).and_then(|weak| weak.upgrade()) {
            return Some(running);
        }
        early.retain(|_, weak| weak.upgrade().is_some());
        let (this, target, path) = (self.clone(), target.clone(), tarball.path());
        let fetch: Early = async move {
            // A copy on disk (after a restart) needs no upstream request.
            for key in [public_key.clone(), public_key.with_scope(true)] {
                if matches!(this.inner.store.head(&key).await, Ok(Some(_))) {
                    return None;
                }
            }
            let authorization = this.authorization(&target, &credential).await.ok()?;
            let request = UpstreamRequest {
                repo: &target.repo,
                path: format!("{}/{path}", target.prefix),
                validators: None,
                authorization,
                max_bytes: this.inner.config.max_tarball_bytes,
            };
            Some(this.inner.upstream.get(request).await)
        }
        .boxed()
        .shared();
        if let Some(weak) = fetch.downgrade() {
            early.insert(early_key, weak);
        }
        Some(fetch)
    }

    /// Asks the upstream (conditionally when a copy exists), verifies, stores; uses the
    /// upstream's answer to a request made `early` when there is one. Runs inside a flight
    /// (or for a client's re-check).
    pub(super) async fn fetch(
        &self,
        target: &Target,
        resource: &Resource,
        check: Check,
        credential: Credential,
        cached: Option<Arc<Entry>>,
        early: Option<Early>,
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
        let sent = authorization.clone();
        let request = |authorization| UpstreamRequest {
            repo: &target.repo,
            path: format!("{}/{path}", target.prefix),
            validators: cached.as_ref().map(|e| &e.upstream),
            authorization,
            max_bytes,
        };
        let stale = |e: MirrorError| match &cached {
            Some(entry) => {
                tracing::info!(repo = target.label(), resource = %path, error = %e, "serving the last verified copy");
                Ok((entry.clone(), CacheStatus::Stale))
            }
            None => Err(e),
        };
        let answer = match early.filter(|_| cached.is_none()) {
            Some(early) => match early.await {
                Some(answer) => answer,
                None => self.inner.upstream.get(request(authorization)).await,
            },
            None => self.inner.upstream.get(request(authorization)).await,
        };
        // A 401 to hexmirror's OAuth token (revoked, or expired early): one new exchange and one
        // retry, never more.
        let answer = match answer {
            Ok(response) if response.status == StatusCode::UNAUTHORIZED => {
                match self.renewed_authorization(target, &credential, sent.as_ref()).await {
                    Some(Ok(renewed)) => self.inner.upstream.get(request(Some(renewed))).await,
                    Some(Err(e)) => return stale(e),
                    None => Ok(response),
                }
            }
            answer => answer,
        };
        let response = match answer {
            Ok(response) => response,
            Err(e) => return stale(e.into()),
        };
        // When the upstream confirmed these bytes: now, less the `Age` it reports (another
        // cache, such as a central hexmirror answering stale, must not make them look new).
        let now = unix_now().saturating_sub(age_of(&response.headers));
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
                            self.record_refusal(target, resource, &e, &response.url);
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
                self.persist(target, resource, entry.clone()).await;
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
                    self.refresh(target, resource, entry.clone()).await;
                    Ok((entry, CacheStatus::Revalidated))
                }
                None => Err(MirrorError::Upstream(UpstreamError::Status(304))),
            },
            401 => Err(MirrorError::Unauthorized),
            403 if target.namespace != HEXPM || response.sent_credentials => Err(MirrorError::Unauthorized),
            403 | 404 | 410 => {
                // hex.pm answers a missing object with 403 or 404; remember it briefly.
                if !response.sent_credentials {
                    self.inner.negative.insert(CacheKey::new(&target.namespace, resource, false), ());
                }
                Err(MirrorError::NotFoundUpstream(path))
            }
            other => stale(MirrorError::Upstream(UpstreamError::Status(other))),
        }
    }

    /// Verifies upstream (or stored) bytes for `resource`; the only path into [`Content`].
    pub(super) async fn verify_content(
        &self,
        target: &Target,
        resource: &Resource,
        check: &Check,
        body: Bytes,
        validators: &Validators,
    ) -> Result<Content, MirrorError> {
        let key = &target.repo.public_key;
        let limit = self.inner.config.max_registry_bytes;
        let verified = match resource {
            Resource::Names | Resource::Versions | Resource::Package(_) | Resource::Policy(_) => {
                // Memory held per declared byte while verifying: the gunzipped bytes once,
                // and the decoded payload, measured at about 10 times their size for
                // `/versions` (many short strings), the most of any registry file.
                const HELD_PER_BYTE: u64 = 11;
                // A body declaring more than the limit is refused before anything else.
                let declared = verify::declared_size(&body)?;
                if declared > limit {
                    return Err(VerifyError::TooLarge { limit }.into());
                }
                // The rest is inflated off the runtime threads, within the global budget;
                // the reservation is held by the blocking task, so it is given back only
                // when the work ends, even if this future is dropped.
                let reservation = self.inner.verifying.reserve(declared.saturating_mul(HELD_PER_BYTE)).await;
                let (repo, origin, resource) = (target.repo.clone(), target.origin.clone(), resource.clone());
                let verified = tokio::task::spawn_blocking(move || {
                    let _reservation = reservation;
                    let file = match &resource {
                        Resource::Names => RegistryFile::Names,
                        Resource::Versions => RegistryFile::Versions,
                        Resource::Package(name) => RegistryFile::Package(name),
                        Resource::Policy(name) => RegistryFile::Policy(name),
                        _ => return Err(MirrorError::Internal("not a registry file".into())),
                    };
                    Ok(verify::registry_file(file, &origin, body, &repo.public_key, limit)?)
                })
                .await
                .map_err(|e| MirrorError::Internal(format!("verification task failed: {e}")))?;
                verified?
            }
            Resource::Docs { .. } => {
                let docs = crate::cache::Docs::for_resource(resource, body);
                return docs.map(Content::Docs).ok_or(MirrorError::Internal("docs for a docs resource only".into()));
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
            Resource::RegistryV1Signed => match check {
                Check::Signature { signed, .. } => verify::registry_v1_signature(body, signed, key)?,
                _ => return Err(MirrorError::Internal("a signature without what it signs".into())),
            },
            Resource::InstallsList(_) => {
                let signature = validators.signature.as_deref().ok_or(VerifyError::MissingSignature)?;
                verify::installs_csv(body, signature.as_bytes(), &self.inner.config.installs_public_key)?
            }
            Resource::InstallsListSignature(_) => match check {
                Check::Signature { signed, .. } => {
                    verify::installs_signature(body, signed, &self.inner.config.installs_public_key)?
                }
                _ => return Err(MirrorError::Internal("a signature without what it signs".into())),
            },
            Resource::Installer { .. } => match check {
                Check::Installer(digest) => verify::installer(body, digest, self.inner.config.max_tarball_bytes)?,
                _ => return Err(MirrorError::NotFound("installs file without a verified listing".into())),
            },
        };
        Ok(Content::Verified(verified))
    }

    /// Fetches the detached signature of a registry v1 file or an installs CSV (not cached
    /// apart: it is kept with the object it signs).
    pub(super) async fn detached_signature(&self, target: &Target, resource: &Resource) -> Option<String> {
        let path = match resource {
            Resource::RegistryV1 => format!("{}/registry.ets.gz.signed", target.prefix),
            Resource::InstallsList(list) => format!("{}/installs/{list}.csv.signed", target.prefix),
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

    /// Puts a new entry in both tiers: the memory tier now, the persistent tier in the
    /// background (`writes.rs`), then wakes disk eviction (`evict.rs`). A private copy never
    /// replaces or hides a public one (nor the other way round): a lookup prefers the public
    /// copy, which serves everyone.
    pub(super) async fn persist(&self, target: &Target, resource: &Resource, entry: Arc<Entry>) {
        if let (Resource::Package(name), Facts::Releases(releases)) = (resource, entry.content.facts()) {
            // What `cooldown` counts from: when this store first saw each release listed.
            self.note_listed(&target.namespace, name, releases);
        }
        let key = CacheKey::new(&target.namespace, resource, entry.private);
        self.inner.memory.insert(key.clone(), entry.clone());
        let (this, disk_key) = (self.clone(), key.clone());
        let write = async move {
            let result = this.inner.store.put(&disk_key, &entry.stored_meta(), entry.bytes().clone()).await;
            let landed = result.is_ok();
            this.note_store_result(result);
            if let (true, Some(eviction)) = (landed, &this.inner.eviction) {
                eviction.written();
            }
        };
        self.inner.writes.submit(key, write.boxed()).await;
    }

    /// Records a revalidation in both tiers (the persistent tier in the background).
    pub(super) async fn refresh(&self, target: &Target, resource: &Resource, entry: Arc<Entry>) {
        let key = CacheKey::new(&target.namespace, resource, entry.private);
        self.inner.memory.insert(key.clone(), entry.clone());
        let (this, disk_key) = (self.clone(), key.clone());
        let write = async move {
            let result = this.inner.store.update_meta(&disk_key, &entry.stored_meta()).await;
            this.note_store_result(result);
        };
        self.inner.writes.submit(key, write.boxed()).await;
    }
}

/// How often a replica waiting for another replica's fetch looks for its entry.
const CLAIM_POLL: std::time::Duration = std::time::Duration::from_millis(100);

/// An upstream answer requested ahead of its verification (see `early_tarball`); `None` when
/// the request was not made (a stored copy, no credential to send).
pub(super) type Early = Shared<BoxFuture<'static, Option<Result<UpstreamResponse, UpstreamError>>>>;

/// The resource a detached signature resource signs, if `resource` is one.
pub(super) fn signed_by(resource: &Resource) -> Option<Resource> {
    match resource {
        Resource::RegistryV1Signed => Some(Resource::RegistryV1),
        Resource::InstallsListSignature(list) => Some(Resource::InstallsList(list.clone())),
        _ => None,
    }
}
