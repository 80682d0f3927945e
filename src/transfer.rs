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
    /// Nothing matched the request: no bundle is written.
    #[error("export: {0}")]
    Nothing(String),
    /// An incremental bundle whose base bundle the store does not hold (`base` is its sha256):
    /// nothing is written.
    #[error("bundle refused: this bundle builds on {base}; import that first ({why})")]
    MissingBase { base: String, why: String },
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

/// Builds a bundle of the store's verified entries.
pub async fn export(mirror: &Mirror, request: &ExportRequest) -> Result<Vec<u8>, TransferError> {
    // Entries answered moments ago may still be on their way to disk.
    mirror.settle_writes().await;
    let store = mirror.store();
    let listed = store.list_all("").await?;
    let selection = store.selected().await?;
    let mut objects = Vec::new();
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
        objects.push(bundle::Object {
            key: key.to_string(),
            kind: meta.kind.clone(),
            pinned: meta.pinned,
            bytes: body,
        });
    }
    let base = request
        .base
        .as_ref()
        .map(|manifest| bundle::BaseInfo::of(manifest, request.base_digest.as_deref().unwrap_or_default()));
    if objects.is_empty() {
        let what = match (&request.filter, request.selected_only) {
            (Some(filter), true) => format!("no selected entry's key contains {filter:?}"),
            (Some(filter), false) => format!("no stored entry's key contains {filter:?}"),
            (None, true) => "nothing was selected by sync or import".into(),
            (None, false) => "the store holds no verified entry".into(),
        };
        return Err(TransferError::Nothing(format!("{what}; no bundle written")));
    }
    if let Some(manifest) = &request.base {
        objects = bundle::incremental(objects, manifest);
        if objects.is_empty() {
            return Err(TransferError::Nothing(
                "nothing is new or changed since the base bundle; no bundle written".into(),
            ));
        }
    }
    let mut out = Vec::new();
    bundle::write(&objects, base.as_ref(), &mut out).map_err(TransferError::Bundle)?;
    Ok(out)
}

/// Default limits for a bundle read on import.
pub fn limits() -> bundle::Limits {
    bundle::Limits { max_object_bytes: 64 << 20, max_total_bytes: 64 << 30, max_objects: 10_000_000 }
}

/// Verifies every object of `bytes`, then stores them all (pinned and selected), or nothing.
pub async fn import(mirror: &Mirror, bytes: &[u8]) -> Result<ImportReport, TransferError> {
    let read = bundle::read(bytes, &limits()).map_err(TransferError::Malformed)?;
    let missing_base = |why: String| TransferError::MissingBase {
        base: read.manifest.base.as_ref().map(|b| b.sha256.clone()).unwrap_or_default(),
        why,
    };
    if read.manifest.base.is_some() {
        let selected = mirror.store().selected().await?.len() as u64;
        // What the records it needs say is checked by verification below.
        if let Some(why) = bundle::missing_base(&read.manifest, selected, |_| true) {
            return Err(missing_base(why));
        }
    }
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
        let entry = mirror.verify_import(&key, objects[&key_text].clone(), signature, signs, &records).await.map_err(
            |reason| match reason {
                // What an incremental bundle lacks is what its base carried.
                CheckError::NoRecord(_) | CheckError::NoSigned(_) if read.manifest.base.is_some() => {
                    missing_base(format!("{key_text}: {reason}"))
                }
                reason => TransferError::Refused { key: key_text.clone(), reason },
            },
        )?;
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
