//! `hexmirror verify`: checks the whole store and the completeness of what sync and import
//! selected, and optionally repairs it from an upstream.
//!
//! Every stored entry is read from disk and verified again (its checksum on read, then its
//! signature, or its checksum against the stored verified record). Selected entries that are
//! missing or damaged make the audit fail; releases that records list but nobody selected are
//! reported for information only.

use std::collections::HashMap;

use futures::StreamExt;

use serde::{Deserialize, Serialize};

use crate::cache::{CacheKey, StoreError};
use crate::mirror::Mirror;
use crate::route::Resource;
use crate::verify::Facts;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct AuditReport {
    pub checked: usize,
    pub intact: usize,
    /// (key, reason) of stored entries that no longer verify.
    pub damaged: Vec<(String, String)>,
    /// Selected keys that are not stored.
    pub missing: Vec<String>,
    /// Keys repaired from an upstream.
    pub repaired: Vec<String>,
    /// Releases listed by selected records whose tarballs nobody selected (informational).
    pub unselected_releases: usize,
    /// Body bytes of pinned entries, and the disk budget when they exceed it (informational:
    /// everything not pinned is then evicted as soon as it is written).
    #[serde(default)]
    pub pinned_over_budget: Option<(u64, u64)>,
    /// With `--prune`: entries removed because nothing pinned them (neither sync nor import
    /// selected them), and stored bytes that no record named.
    #[serde(default)]
    pub pruned: usize,
    #[serde(default)]
    pub swept: u64,
}

/// What `verify` does besides checking.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Options {
    /// Refetch what is damaged or missing.
    pub repair: bool,
    /// Remove every entry that is not pinned, and stored bytes that no record names: what
    /// bounds a shared store, which has no size budget.
    pub prune: bool,
}

impl AuditReport {
    /// True when everything stored is intact and everything selected is present.
    pub fn ok(&self) -> bool {
        self.damaged.is_empty() && self.missing.is_empty()
    }
}

/// Audits the store; with `repair`, refetches what is damaged or missing (when an upstream is
/// reachable) and reports it as repaired instead. Fails when the store's listing or its
/// selection cannot be read (an audit that could not look is no clean audit).
pub async fn run(mirror: &Mirror, repair: bool) -> Result<AuditReport, StoreError> {
    run_with(mirror, Options { repair, prune: false }).await
}

/// [`run`], pruning first when asked.
pub async fn run_with(mirror: &Mirror, options: Options) -> Result<AuditReport, StoreError> {
    let Options { repair, prune } = options;
    let mut report = AuditReport::default();
    mirror.settle_writes().await;
    let store = mirror.store();
    if prune {
        // Collected first: the listing is not read while entries are removed from it.
        let mut listing = store.list("");
        let mut unpinned = Vec::new();
        while let Some(item) = listing.next().await {
            let (key, meta) = item?;
            if !meta.pinned {
                unpinned.push(key);
            }
        }
        drop(listing);
        for key in unpinned {
            mirror.remove(&key).await?;
            report.pruned += 1;
        }
        report.swept = store.sweep_unreferenced().await?;
    }
    // Walked as a stream beside the selection (both in key order): nothing per entry is kept
    // (a whole repository is 200,000 entries); a selected key the walk passes without seeing
    // is a candidate for missing, confirmed by asking the store for it.
    let selection = store.selected().await?;
    let mut selected = selection.iter().peekable();
    let mut candidates = Vec::new();
    let mut pinned_bytes = 0u64;
    let mut listing = store.list("");
    while let Some(item) = listing.next().await {
        let (key, meta) = item?;
        while let Some(next) = selected.next_if(|next| next.as_str() <= key.as_str()) {
            if next.as_str() != key.as_str() {
                candidates.push(next);
            }
        }
        if meta.pinned {
            pinned_bytes += meta.len;
        }
        report.checked += 1;
        match mirror.check_stored(&key).await {
            Ok(true) => report.intact += 1,
            Ok(false) => {}
            Err(reason) => report.damaged.push((key.to_string(), reason.to_string())),
        }
    }
    drop(listing);
    candidates.extend(selected);
    let budget = mirror.config().disk_cache_bytes;
    if budget > 0 && pinned_bytes > budget {
        report.pinned_over_budget = Some((pinned_bytes, budget));
    }
    let damaged: std::collections::HashSet<&str> = report.damaged.iter().map(|(key, _)| key.as_str()).collect();
    let mut missing = Vec::new();
    for key in candidates {
        // Missing: not a key, or no readable record (what the listing leaves out); a damaged
        // entry (removed when it was found) is reported as damaged only.
        if damaged.contains(key.as_str()) {
            continue;
        }
        let held = match CacheKey::parse(key) {
            Some(parsed) => matches!(store.head(&parsed).await, Ok(Some(_))),
            None => false,
        };
        if !held {
            missing.push(key.clone());
        }
    }
    drop(damaged);
    report.missing = missing;
    // Releases the selected records list that nobody selected, read from the records' verified
    // facts (the stored bytes are verified as anything from outside the mirror's memory is).
    for key in &selection {
        let Some(parsed) = CacheKey::parse(key) else { continue };
        let Resource::Package(name) = parsed.resource() else { continue };
        let Ok(Some((_, body))) = store.get(&parsed).await else { continue };
        let Ok(entry) = mirror.verify_import(&parsed, body, None, None, &HashMap::new()).await else { continue };
        let Facts::Releases(releases) = entry.content.facts() else { continue };
        for release in releases.iter() {
            let resource = Resource::Tarball { name: name.clone(), version: release.version.clone() };
            let tarball = CacheKey::new(parsed.namespace(), &resource, parsed.is_private());
            if !selection.contains(tarball.as_str()) {
                report.unselected_releases += 1;
            }
        }
    }
    if repair && !mirror.config().offline {
        let broken: Vec<String> =
            report.damaged.iter().map(|(k, _)| k.clone()).chain(report.missing.iter().cloned()).collect();
        for key in broken {
            if repair_one(mirror, &key).await {
                report.repaired.push(key.clone());
                report.damaged.retain(|(k, _)| *k != key);
                report.missing.retain(|k| *k != key);
            }
        }
    }
    Ok(report)
}

/// Removes a broken entry and fetches it again through the verified data path.
async fn repair_one(mirror: &Mirror, key: &str) -> bool {
    let Some(parsed) = CacheKey::parse(key) else { return false };
    let _ = mirror.remove(&parsed).await;
    let target = mirror.target_of_namespace(parsed.namespace());
    let resource = parsed.resource().clone();
    match mirror.fetch_internal(&target, &resource).await {
        Ok(reply) => {
            let key = mirror.key_for(&target, &resource, reply.private);
            match mirror.pin(&key).await {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(key = %key, error = %e, "verify --repair: refetched but not stored");
                    false
                }
            }
        }
        Err(e) => {
            tracing::warn!(key, error = %e, "verify --repair: cannot refetch");
            false
        }
    }
}
