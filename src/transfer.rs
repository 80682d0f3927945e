//! Export and import of air-gap bundles (the format is `bundle`).
//!
//! Export writes stored entries that still verify (every one is re-verified from disk before it
//! goes into the bundle). Import reads a bundle, checks its structure and digests, then verifies
//! every object exactly as an upstream answer would be verified (registry signatures and origins
//! with the configured keys, tarballs against verified records of the same bundle or the store)
//! before writing anything: a truncated, altered or forged bundle is refused whole and the store
//! is left exactly as it was. Failures are [`TransferError`]s; the `bundle refused` ones are
//! those that leave the store untouched.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::bundle::{self, BundleError, Manifest};
use crate::cache::{CacheKey, StoreError};
use crate::mirror::{CheckError, Mirror};
use crate::route::Resource;

/// Why an export or an import failed. The `bundle refused` variants leave the store exactly
/// as it was; the others happened while reading or writing the store.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// The bundle's structure or digests are wrong.
    #[error("bundle refused: {0}")]
    Malformed(BundleError),
    #[error("bundle refused: {0}: not a cache key")]
    NotAKey(String),
    /// An object did not verify.
    #[error("bundle refused: {key}: {reason}")]
    Refused { key: String, reason: CheckError },
    #[error("cannot store {key}: {source}")]
    Write { key: CacheKey, source: StoreError },
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Bundle(BundleError),
    /// An entry changed between the two passes of an export.
    #[error("export: {0}")]
    Changed(String),
    /// Nothing matched the request: no bundle is written.
    #[error("export: {0}")]
    Nothing(String),
}

/// What to export.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ExportRequest {
    /// Only keys containing this text.
    pub filter: Option<String>,
    /// Only what sync or import selected (pinned).
    pub selected_only: bool,
    /// The manifest of a previous bundle: export only what is new or changed since.
    pub base: Option<Manifest>,
    /// The digest of that previous bundle.
    pub base_digest: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ImportReport {
    pub digest: String,
    pub objects: usize,
    pub new: usize,
    pub unchanged: usize,
}

/// What [`export_to`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exported {
    /// sha256 of the bundle, lowercase hex.
    pub digest: String,
    pub totals: bundle::Totals,
}

/// Builds a bundle of the store's verified entries in memory (see [`export_to`]).
pub async fn export(mirror: &Mirror, request: &ExportRequest) -> Result<Vec<u8>, TransferError> {
    let mut out = Vec::new();
    export_to(mirror, request, || Ok(&mut out)).await?;
    Ok(out)
}

/// Writes a bundle of the store's verified entries to what `create` opens (only once there is
/// something to write), one object in memory at a time.
///
/// Format 1 puts the manifest, with every object's digest, first: a first pass over the store
/// verifies each entry, describes it and drops its bytes; a second pass reads each entry again
/// and writes it, checked against the manifest (an entry changed between the passes fails the
/// export instead of writing a bundle that would be refused).
pub async fn export_to<W: std::io::Write>(
    mirror: &Mirror,
    request: &ExportRequest,
    create: impl FnOnce() -> std::io::Result<W>,
) -> Result<Exported, TransferError> {
    // Entries answered moments ago may still be on their way to disk.
    mirror.settle_writes().await;
    let store = mirror.store();
    let listed = store.list_all("").await?;
    let selection = store.selected().await?;
    let known: HashMap<&str, &bundle::ObjectInfo> = match &request.base {
        Some(base) => base.objects.iter().map(|o| (o.key.as_str(), o)).collect(),
        None => HashMap::new(),
    };
    let mut described = Vec::new();
    let mut verified = 0usize;
    for (key, meta) in listed {
        if request.filter.as_deref().is_some_and(|f| !key.as_str().contains(f)) {
            continue;
        }
        if request.selected_only && !(meta.pinned || selection.contains(key.as_str())) {
            continue;
        }
        match mirror.check_stored(&key).await {
            Ok(true) => {}
            Ok(false) => continue,
            Err(reason) => {
                tracing::warn!(key = %key, reason = %reason, "export: skipping an entry that no longer verifies");
                continue;
            }
        }
        let Ok(Some((meta, body))) = store.get(&key).await else { continue };
        verified += 1;
        let (info, package) = bundle::describe_object(key.as_str(), &meta.kind, meta.pinned, &body);
        drop(body);
        // An incremental bundle carries what is new, or changed in its bytes or its pin.
        if known.get(info.key.as_str()).is_some_and(|base| base.pinned == info.pinned && base.sha256 == info.sha256) {
            continue;
        }
        described.push((info, package));
    }
    if verified == 0 {
        let what = match (&request.filter, request.selected_only) {
            (Some(filter), true) => format!("no selected entry's key contains {filter:?}"),
            (Some(filter), false) => format!("no stored entry's key contains {filter:?}"),
            (None, true) => "nothing was selected by sync or import".into(),
            (None, false) => "the store holds no verified entry".into(),
        };
        return Err(TransferError::Nothing(format!("{what}; no bundle written")));
    }
    if described.is_empty() {
        return Err(TransferError::Nothing(
            "nothing is new or changed since the base bundle; no bundle written".into(),
        ));
    }
    let base = request
        .base
        .as_ref()
        .map(|manifest| bundle::BaseInfo::of(manifest, request.base_digest.as_deref().unwrap_or_default()));
    let manifest = bundle::manifest_of(described, base.as_ref(), bundle::CREATED_BY);
    let totals = manifest.totals;
    let keys: Vec<String> = manifest.objects.iter().map(|o| o.key.clone()).collect();
    let out = create().map_err(|e| TransferError::Bundle(BundleError::Write(e)))?;
    let mut writer = bundle::Writer::new(manifest, out).map_err(TransferError::Bundle)?;
    for key_text in keys {
        let key = CacheKey::parse(&key_text).ok_or_else(|| TransferError::NotAKey(key_text.clone()))?;
        let body = match store.get(&key).await? {
            Some((_, body)) => body,
            None => Bytes::new(),
        };
        writer.append(&key_text, &body).map_err(|e| match e {
            BundleError::Write(_) => TransferError::Bundle(e),
            e => TransferError::Changed(format!("{e}: the store changed during the export; run it again")),
        })?;
    }
    let digest = writer.finish().map_err(TransferError::Bundle)?;
    Ok(Exported { digest, totals })
}

/// Default limits for a bundle read on import.
pub fn limits() -> bundle::Limits {
    bundle::Limits { max_object_bytes: 64 << 20, max_total_bytes: 64 << 30, max_objects: 10_000_000 }
}

/// Verifies every object of `bytes`, then stores them all (pinned and selected), or nothing.
pub async fn import(mirror: &Mirror, bytes: &[u8]) -> Result<ImportReport, TransferError> {
    let read = bundle::read(bytes, &limits()).map_err(TransferError::Malformed)?;
    let mut objects: HashMap<String, Bytes> = HashMap::new();
    for object in &read.objects {
        objects.insert(object.key.clone(), object.bytes.clone());
    }
    // Registry files first (their verified records vouch for tarballs), then the objects
    // detached signatures sign, then everything else (tarballs, signatures, installers, docs).
    let mut keys = Vec::with_capacity(objects.len());
    for key_text in objects.keys() {
        let key = CacheKey::parse(key_text).ok_or_else(|| TransferError::NotAKey(key_text.clone()))?;
        let rank = match key.resource() {
            Resource::Names | Resource::Versions | Resource::Package(_) | Resource::Policy(_) => 0,
            Resource::InstallsList(_) | Resource::RegistryV1 => 1,
            _ => 2,
        };
        keys.push((rank, key_text.clone(), key));
    }
    keys.sort();
    let mut records = HashMap::new();
    let mut verified = Vec::new();
    for (_, key_text, key) in keys {
        let signature = objects.get(&format!("{key_text}.signed")).and_then(|s| String::from_utf8(s.to_vec()).ok());
        let signs = key_text.strip_suffix(".signed").and_then(|signed| objects.get(signed)).cloned();
        let entry = mirror
            .verify_import(&key, objects[&key_text].clone(), signature, signs, &records)
            .await
            .map_err(|reason| TransferError::Refused { key: key_text.clone(), reason })?;
        let entry = Arc::new(entry);
        if let Resource::Package(name) = key.resource() {
            records.insert((key.namespace().to_string(), name.clone()), entry.clone());
        }
        verified.push((key, entry));
    }
    // Everything verified: now write.
    let mut report = ImportReport { digest: read.digest.clone(), objects: verified.len(), ..Default::default() };
    let mut selected = Vec::new();
    for (key, entry) in verified {
        // Read whole (not just the record): a damaged stored copy is replaced by the import.
        let existing = mirror.store().get(&key).await.ok().flatten().map(|(meta, _)| meta.sha256);
        if existing.as_deref() == Some(hex::encode(entry.sha256).as_str()) {
            report.unchanged += 1;
            mirror.pin(&key).await?;
        } else {
            report.new += 1;
            if let Err(source) = mirror.store_imported(&key, (*entry).clone()).await {
                return Err(TransferError::Write { key, source });
            }
        }
        selected.push(key.to_string());
    }
    mirror.store().select(selected).await?;
    mirror.store().flush().await?;
    mirror.metrics().sync_last_success.set(crate::cache::unix_now() as f64);
    Ok(report)
}
