//! The supply-chain policy at the point where tarball bytes are handed out (`crate::policy`
//! is the engine): the policy in force and its rescans, the first-seen times, and the verdict
//! on a verified tarball (`enforce_on_tarball`, called by `path.rs` after the tarball was
//! resolved from whichever tier or flight, so no tier can hand out a blocked release).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::{Mirror, MirrorError, Refusal, Target};
use crate::cache::{unix_now, Entry};
use crate::policy::{seen, Decision, Licenses, Policy, Subject};
use crate::verify::{Release, Releases};

/// How often a server saves changed first-seen times (and, on a shared store, reads the other
/// replicas' earlier ones).
pub const SEEN_SAVE_EVERY: Duration = Duration::from_secs(10);

impl Mirror {
    /// The policy in force now.
    pub fn policy(&self) -> Arc<Policy> {
        self.inner.policy.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Puts `policy` in force for every request from now on.
    pub fn set_policy(&self, policy: Arc<Policy>) {
        *self.inner.policy.write().unwrap_or_else(|e| e.into_inner()) = policy;
    }

    /// Reads the configuration file's policy (and its advisories) again and puts it in force;
    /// on a mistake, logs it, counts it and keeps the policy in force.
    pub async fn rescan_policy(&self) -> Result<(), String> {
        let source = self.inner.config.source.clone();
        let loaded = tokio::task::spawn_blocking(move || crate::config::load_policy(source.as_deref()))
            .await
            .map_err(|e| format!("policy rescan task failed: {e}"))
            .and_then(|loaded| loaded.map_err(|e| e.to_string()));
        match loaded {
            Ok(policy) => {
                tracing::debug!(advisories = policy.advisory_count, "policy: rescanned");
                self.set_policy(policy);
                Ok(())
            }
            Err(e) => {
                self.inner.metrics.policy_reload_errors.inc();
                tracing::error!(error = %e, "policy: the rescan failed; the previous policy stays in force");
                Err(e)
            }
        }
    }

    /// A server's policy upkeep: a rescan every `policy_rescan` and on SIGHUP, and the
    /// first-seen times saved every [`SEEN_SAVE_EVERY`] (merged with the other replicas' on a
    /// shared store). Ends when the mirror is dropped.
    pub(super) fn watch_policy(&self) {
        let every = self.inner.config.policy_rescan;
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            #[cfg(unix)]
            let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
            let mut next_rescan = tokio::time::Instant::now() + every;
            loop {
                #[cfg(unix)]
                let hangup_signal = async {
                    match hangup.as_mut() {
                        Some(signal) => signal.recv().await,
                        None => std::future::pending().await,
                    }
                };
                #[cfg(not(unix))]
                let hangup_signal = std::future::pending::<Option<()>>();
                let tick = tokio::time::sleep(SEEN_SAVE_EVERY.min(every.max(Duration::from_millis(100))));
                let hup = tokio::select! {
                    _ = hangup_signal => true,
                    _ = tick => false,
                };
                let Some(inner) = weak.upgrade() else { return };
                let mirror = Mirror { inner };
                if hup {
                    tracing::info!("policy: SIGHUP, rescanning");
                    let _ = mirror.rescan_policy().await;
                } else if !every.is_zero() && tokio::time::Instant::now() >= next_rescan {
                    let _ = mirror.rescan_policy().await;
                    next_rescan = tokio::time::Instant::now() + every;
                }
                if mirror.inner.store.shared() {
                    mirror.load_seen().await;
                }
                mirror.save_seen().await;
            }
        });
    }

    /// Merges the first-seen times saved in the store (every replica's copy), the earliest
    /// winning.
    pub async fn load_seen(&self) {
        match self.inner.store.read_docs(seen::DOC).await {
            Ok(copies) => self.inner.seen.merge_saved(seen::merged(&copies)),
            Err(e) => tracing::warn!(error = %e, "store: cannot read the first-seen times"),
        }
    }

    /// Writes the first-seen times to the store if they changed.
    pub async fn save_seen(&self) {
        if let Some(bytes) = self.inner.seen.take_changes() {
            if let Err(e) = self.inner.store.write_doc(seen::DOC, bytes.into()).await {
                self.inner.seen.mark_dirty();
                tracing::warn!(error = %e, "store: cannot save the first-seen times");
            }
        }
    }

    /// Every first-seen time, `REPO/NAME/VERSION` to Unix seconds (what a bundle carries).
    pub fn seen_export(&self) -> BTreeMap<String, u64> {
        self.inner.seen.export()
    }

    /// The first-seen times of the releases `wanted` accepts (copied, the rest never is).
    pub fn seen_export_where(&self, wanted: impl Fn(&str) -> bool) -> BTreeMap<String, u64> {
        self.inner.seen.export_where(wanted)
    }

    /// Takes the earlier of each given first-seen time and the one held (a bundle's, on
    /// import); returns how many changed. Saved with the next [`Mirror::save_seen`].
    pub fn seen_merge_earlier(&self, map: BTreeMap<String, u64>) -> usize {
        self.inner.seen.merge_earlier(map)
    }

    /// When this store first saw `namespace`/`name`/`version` listed, noting now if never.
    pub fn first_seen(&self, namespace: &str, name: &str, version: &str) -> u64 {
        let key = seen::key(namespace, name, version);
        match self.inner.seen.get(&key) {
            Some(time) => time,
            None => {
                let now = unix_now();
                self.inner.seen.note([key.as_str()], now);
                self.inner.seen.get(&key).unwrap_or(now)
            }
        }
    }

    /// Notes every release a verified package record lists as seen now (those seen before
    /// keep their time).
    pub fn note_listed(&self, namespace: &str, name: &str, releases: &Releases) {
        let keys: Vec<String> = releases.iter().map(|r| seen::key(namespace, name, &r.version)).collect();
        self.inner.seen.note(keys.iter().map(String::as_str), unix_now());
    }

    /// The policy's verdict on one release of a verified record, at this moment. `tarball`:
    /// its verified bytes, when the licence rule should read them (`None`: not decided on).
    pub fn decide(&self, namespace: &str, name: &str, release: &Release, tarball: Option<&[u8]>) -> Option<Decision> {
        let policy = self.policy();
        if policy.is_empty() {
            return None;
        }
        let declared = match tarball {
            Some(bytes) if policy.reads_licenses(namespace) => Some(crate::hex_tarball::licenses(bytes)),
            _ => None,
        };
        let subject = Subject {
            namespace,
            name,
            version: &release.version,
            retirement: release.retirement.as_ref(),
            licenses: declared.as_deref().map_or(Licenses::Unread, Licenses::Declared),
            first_seen: Some(self.first_seen(namespace, name, &release.version)),
        };
        policy.evaluate(&subject, unix_now())
    }

    /// The point where tarball bytes are handed out: a release the policy blocks is refused
    /// (403), counted, logged and listed with the refusals; under `enforce = false` it is
    /// served, and counted and logged as reported.
    pub(super) fn enforce_on_tarball(
        &self,
        target: &Target,
        name: &str,
        release: &Release,
        entry: &Entry,
    ) -> Result<(), MirrorError> {
        let Some(decision) = self.decide(&target.namespace, name, release, Some(entry.bytes())) else {
            return Ok(());
        };
        let labels = [target.label(), decision.rule.as_str()];
        let release_text = format!("{name} {}", release.version);
        if !decision.enforced {
            self.inner.metrics.policy_reported.with_label_values(&labels).inc();
            tracing::info!(
                repo = %target.namespace, release = %release_text, rule = decision.rule.as_str(),
                reason = %decision.reason, "policy: would block (enforce = false); served"
            );
            return Ok(());
        }
        self.inner.metrics.policy_blocks.with_label_values(&labels).inc();
        tracing::warn!(
            repo = %target.namespace, release = %release_text, rule = decision.rule.as_str(),
            reason = %decision.reason, "policy: blocked"
        );
        self.record_blocked(target, name, &release.version, &decision);
        Err(MirrorError::Blocked { release: release_text, decision })
    }

    /// Lists a block with the refusals (`hexmirror refusals`), once per release and reason in
    /// a row.
    fn record_blocked(&self, target: &Target, name: &str, version: &str, decision: &Decision) {
        let refusal = Refusal {
            time: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            repo: target.namespace.clone(),
            resource: format!("tarballs/{name}-{version}.tar"),
            upstream: format!("policy ({})", decision.rule.as_str()),
            reason: decision.reason.clone(),
        };
        self.keep_refusal(refusal, true);
    }
}

impl Mirror {
    /// The verdict on a stored or bundled tarball (`key`, its verified `tarball` bytes) for
    /// `export` and `import`: the release as `records` (package records verified from a
    /// bundle, by namespace and name) or else the store's verified record lists it. `None`
    /// when nothing blocks it, it is not a tarball, or no verified record lists it (then
    /// verification has refused it already).
    pub async fn blocked_tarball(
        &self,
        key: &crate::cache::CacheKey,
        tarball: &[u8],
        records: &std::collections::HashMap<(String, String), Arc<Entry>>,
    ) -> Option<Decision> {
        use crate::route::Resource;
        use crate::verify::Facts;
        let Resource::Tarball { name, version } = key.resource() else { return None };
        if self.policy().is_empty() {
            return None;
        }
        let namespace = key.namespace().to_string();
        let record = match records.get(&(namespace.clone(), name.clone())) {
            Some(entry) => Some(entry.clone()),
            None => {
                let target = self.target_of_namespace(&namespace);
                let package = Resource::Package(name.clone());
                let check = super::freshness::Check::Ttl(None);
                let mut found = None;
                for private in [false, true] {
                    let record_key = crate::cache::CacheKey::new(&namespace, &package, private);
                    if let Some(entry) = self.lookup(&target, &record_key, &package, &check).await {
                        found = Some(entry);
                        break;
                    }
                }
                found
            }
        };
        let record = record?;
        let Facts::Releases(releases) = record.content.facts() else { return None };
        let release = releases.release(version)?;
        self.decide(&namespace, name, release, Some(tarball)).filter(|d| d.enforced)
    }

    /// The verified package record of `name` in `namespace` the store holds, if any.
    async fn stored_record(&self, namespace: &str, name: &str) -> Option<Arc<Releases>> {
        use crate::route::Resource;
        let target = self.target_of_namespace(namespace);
        let package = Resource::Package(name.to_string());
        for private in [false, true] {
            let key = crate::cache::CacheKey::new(namespace, &package, private);
            let check = super::freshness::Check::Ttl(None);
            if let Some(entry) = self.lookup(&target, &key, &package, &check).await {
                if let crate::verify::Facts::Releases(releases) = entry.content.facts() {
                    return Some(releases.clone());
                }
            }
        }
        None
    }

    /// `hexmirror policy check`: every release the store holds a tarball of, or that sync or
    /// import selected, that the policy blocks now (under `enforce = false`, would block), in
    /// key order. Licences are read from the stored tarball where there is one.
    pub async fn policy_check(&self) -> Result<PolicyCheck, crate::cache::StoreError> {
        use crate::route::Resource;
        self.settle_writes().await;
        let mut keys: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
        for (key, _) in self.inner.store.list_all("").await? {
            if matches!(key.resource(), Resource::Tarball { .. }) {
                keys.insert(key.to_string());
            }
        }
        for key in self.inner.store.selected().await? {
            if let Some(parsed) = crate::cache::CacheKey::parse(&key) {
                if matches!(parsed.resource(), Resource::Tarball { .. }) {
                    keys.insert(parsed.to_string());
                }
            }
        }
        let mut report = PolicyCheck::default();
        for text in keys {
            let Some(key) = crate::cache::CacheKey::parse(&text) else { continue };
            let Resource::Tarball { name, version } = key.resource() else { continue };
            report.checked += 1;
            let Some(releases) = self.stored_record(key.namespace(), name).await else {
                report.unlisted.push(text);
                continue;
            };
            let Some(release) = releases.release(version) else {
                report.unlisted.push(text);
                continue;
            };
            let tarball = match self.inner.store.get(&key).await {
                Ok(Some((_, bytes))) => Some(bytes),
                _ => None,
            };
            if let Some(decision) = self.decide(key.namespace(), name, release, tarball.as_deref()) {
                report.blocked.push(CheckedRelease {
                    key: text,
                    repo: key.namespace().to_string(),
                    name: name.clone(),
                    version: version.clone(),
                    decision,
                });
            }
        }
        self.save_seen().await;
        Ok(report)
    }

    /// `hexmirror policy explain`: every rule's verdict on `name` `version` in `target`, from
    /// the verified record (stored, else fetched) and the stored tarball when there is one.
    pub async fn policy_explain(
        &self,
        target: &Target,
        name: &str,
        version: &str,
    ) -> Result<crate::policy::Explanation, MirrorError> {
        use crate::route::Resource;
        let releases = match self.stored_record(&target.namespace, name).await {
            Some(releases) => releases,
            None => match self.fetch_internal(target, &Resource::Package(name.to_string())).await?.facts {
                crate::verify::Facts::Releases(releases) => releases,
                _ => return Err(MirrorError::Internal("a package record without releases".into())),
            },
        };
        let release = releases.release(version).ok_or_else(|| {
            MirrorError::NotFound(format!("release {name} {version} is not in the verified registry record"))
        })?;
        let resource = Resource::Tarball { name: name.to_string(), version: version.to_string() };
        let mut tarball = None;
        for private in [false, true] {
            let key = crate::cache::CacheKey::new(&target.namespace, &resource, private);
            if let Ok(Some((_, bytes))) = self.inner.store.get(&key).await {
                tarball = Some(bytes);
                break;
            }
        }
        let policy = self.policy();
        let declared = tarball.as_deref().map(crate::hex_tarball::licenses);
        let subject = Subject {
            namespace: &target.namespace,
            name,
            version,
            retirement: release.retirement.as_ref(),
            licenses: declared.as_deref().map_or(Licenses::Unread, Licenses::Declared),
            first_seen: Some(self.first_seen(&target.namespace, name, version)),
        };
        let explanation = policy.explain(&subject, unix_now());
        self.save_seen().await;
        Ok(explanation)
    }

    /// `hexmirror policy baseline`: every release the stored package records list is marked as
    /// first seen at `at` (Unix seconds; long ago), unless it was seen earlier. Returns how
    /// many releases it covered and how many times changed.
    pub async fn policy_baseline(&self, at: u64) -> Result<(usize, usize), crate::cache::StoreError> {
        use crate::route::Resource;
        let mut times = BTreeMap::new();
        for (key, _) in self.inner.store.list_all("").await? {
            let Resource::Package(name) = key.resource() else { continue };
            if let Some(releases) = self.stored_record(key.namespace(), name).await {
                for release in releases.iter() {
                    times.insert(seen::key(key.namespace(), name, &release.version), at);
                }
            }
        }
        let covered = times.len();
        let changed = self.seen_merge_earlier(times);
        self.save_seen().await;
        self.inner.store.flush().await?;
        Ok((covered, changed))
    }
}

/// What `hexmirror policy check` found.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct PolicyCheck {
    /// Releases looked at: stored tarballs and selected ones.
    pub checked: usize,
    pub blocked: Vec<CheckedRelease>,
    /// Keys no verified stored record lists (nothing to decide on).
    pub unlisted: Vec<String>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct CheckedRelease {
    pub key: String,
    pub repo: String,
    pub name: String,
    pub version: String,
    pub decision: Decision,
}
