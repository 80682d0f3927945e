//! Export and import of air-gap bundles (the format is `bundle`).
//!
//! Export writes stored entries that still verify (every one is re-verified from disk before it
//! goes into the bundle). Import reads a bundle, checks its structure and digests, then verifies
//! every object exactly as an upstream answer would be verified (registry signatures and origins
//! with the configured keys, tarballs against verified records of the same bundle or the store)
//! before writing anything: a truncated, altered or forged bundle is refused whole and the store
//! is left exactly as it was. Failures are [`TransferError`]s; the `bundle refused` ones are
//! those that leave the store untouched.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::bundle::{self, BundleError, Manifest};
use crate::cache::{CacheKey, Entry, StoreError, StoredMeta};
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
    /// Verified objects could not be staged on disk before being stored.
    #[error("cannot stage the import: {0}")]
    Staging(String),
    /// An entry changed between the two passes of an export.
    #[error("export: {0}")]
    Changed(String),
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
    /// Releases left out because this site's policy blocks them: `KEY: rule: reason`.
    #[serde(default)]
    pub blocked: Vec<String>,
}

/// What [`export_to`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exported {
    /// sha256 of the bundle, lowercase hex.
    pub digest: String,
    pub totals: bundle::Totals,
    /// Stored releases left out because the policy blocks them: `KEY: rule: reason`.
    pub blocked: Vec<String>,
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
    let mut blocked = Vec::new();
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
        // The supply-chain policy: a release it blocks is not carried.
        if let Some(decision) = mirror.blocked_tarball(&key, &body, &HashMap::new()).await {
            tracing::warn!(key = %key, rule = decision.rule.as_str(), reason = %decision.reason, "export: left out, blocked by policy");
            blocked.push(format!("{key}: {}: {}", decision.rule.as_str(), decision.reason));
            continue;
        }
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
    Ok(Exported { digest, totals, blocked })
}

/// Default limits for a bundle read on import.
pub fn limits() -> bundle::Limits {
    // Import and inspection stream the bundle: its total is bounded by the disk, not memory.
    bundle::Limits { max_object_bytes: 64 << 20, max_total_bytes: u64::MAX, max_objects: 10_000_000 }
}

/// Verifies every object of `bytes`, then stores them all (pinned and selected), or nothing.
pub async fn import(mirror: &Mirror, bytes: &[u8]) -> Result<ImportReport, TransferError> {
    let bytes = Bytes::copy_from_slice(bytes);
    import_from(mirror, move || Ok(std::io::Cursor::new(bytes.clone()))).await
}

/// Verifies every object of the bundle file at `path`, then stores them all (pinned and
/// selected), or nothing; the file is read as a stream, never whole.
pub async fn import_file(mirror: &Mirror, path: &Path) -> Result<ImportReport, TransferError> {
    let path = path.to_path_buf();
    import_from(mirror, move || std::fs::File::open(&path).map(std::io::BufReader::new)).await
}

/// The order objects are verified in: registry files first (their verified records vouch for
/// tarballs), then the objects detached signatures sign, then everything else.
fn rank(key: &CacheKey) -> u8 {
    match key.resource() {
        Resource::Names | Resource::Versions | Resource::Package(_) | Resource::Policy(_) => 0,
        Resource::InstallsList(_) | Resource::RegistryV1 => 1,
        _ => 2,
    }
}

fn rank_of(key: &str) -> u8 {
    CacheKey::parse(key).map_or(2, |key| rank(&key))
}

/// One sequential read of the bundle on a blocking thread, handing the objects `want` selects
/// over a channel of one, so at most a few objects are in memory at once.
#[allow(clippy::type_complexity)]
fn read_pass<F, R>(
    open: Arc<F>,
    want: fn(&str) -> bool,
) -> (tokio::sync::mpsc::Receiver<bundle::Object>, tokio::task::JoinHandle<Result<(Manifest, String), BundleError>>)
where
    F: Fn() -> std::io::Result<R> + Send + Sync + 'static,
    R: std::io::Read,
{
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let handle = tokio::task::spawn_blocking(move || {
        let input = open().map_err(|source| BundleError::Read { context: "at its start".into(), source })?;
        bundle::read_each(input, &limits(), &want, &mut |object| {
            tx.blocking_send(object).map_err(|_| BundleError::Read {
                context: "while importing".into(),
                source: std::io::Error::other("the import stopped"),
            })
        })
    });
    (rx, handle)
}

async fn finish_pass(
    handle: tokio::task::JoinHandle<Result<(Manifest, String), BundleError>>,
) -> Result<(Manifest, String), TransferError> {
    match handle.await {
        Ok(result) => result.map_err(TransferError::Malformed),
        Err(e) => Err(TransferError::Bundle(BundleError::Read {
            context: "while importing".into(),
            source: std::io::Error::other(e.to_string()),
        })),
    }
}

/// Verified objects waiting in files under the data directory until the whole bundle has
/// verified; the directory is removed when this is dropped, committed or not.
struct Staging {
    dir: PathBuf,
    staged: BTreeMap<String, (CacheKey, StoredMeta, PathBuf)>,
}

impl Staging {
    async fn new(mirror: &Mirror) -> Result<Staging, TransferError> {
        let parent = mirror.config().data_dir.join("import-staging");
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
        let dir = parent.join(format!("{}-{nanos}", std::process::id()));
        tokio::fs::create_dir_all(&dir).await.map_err(|e| TransferError::Staging(format!("{}: {e}", dir.display())))?;
        Ok(Staging { dir, staged: BTreeMap::new() })
    }

    async fn stage(&mut self, key: CacheKey, entry: &Entry) -> Result<(), TransferError> {
        let path = self.dir.join(self.staged.len().to_string());
        tokio::fs::write(&path, entry.bytes())
            .await
            .map_err(|e| TransferError::Staging(format!("{}: {e}", path.display())))?;
        self.staged.insert(key.to_string(), (key, entry.stored_meta(), path));
        Ok(())
    }

    async fn bytes(&self, path: &Path) -> Result<Bytes, TransferError> {
        tokio::fs::read(path)
            .await
            .map(Bytes::from)
            .map_err(|e| TransferError::Staging(format!("{}: {e}", path.display())))
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Verifies every object of the bundle `open` reads (each call reads it again from its start),
/// staging each verified object on disk, then stores them all (pinned and selected), or nothing.
///
/// Memory holds a few objects at a time, the verified package records (which vouch for the
/// tarballs) and the detached signatures, never the bundle. Two sequential reads: the first
/// checks the whole bundle's structure and digest and verifies the registry files; the second
/// (which must find the same digest) verifies everything else. Signature files are verified
/// last, against the staged bytes they sign.
pub async fn import_from<F, R>(mirror: &Mirror, open: F) -> Result<ImportReport, TransferError>
where
    F: Fn() -> std::io::Result<R> + Send + Sync + 'static,
    R: std::io::Read,
{
    let open = Arc::new(open);
    let mut staging = Staging::new(mirror).await?;
    let mut records = HashMap::new();
    let mut signatures: BTreeMap<String, Bytes> = BTreeMap::new();
    let mut blocked = Vec::new();
    #[allow(clippy::result_large_err)]
    fn parse(text: &str) -> Result<CacheKey, TransferError> {
        CacheKey::parse(text).ok_or_else(|| TransferError::NotAKey(text.to_string()))
    }

    // First read: registry files (each verifies by its own signature), and the signature
    // files kept for the end.
    let (mut rx, handle) = read_pass(open.clone(), |key| key.ends_with(".signed") || rank_of(key) == 0);
    while let Some(object) = rx.recv().await {
        let key = parse(&object.key)?;
        if object.key.ends_with(".signed") && rank(&key) != 0 {
            signatures.insert(object.key, object.bytes);
            continue;
        }
        let entry = mirror
            .verify_import(&key, object.bytes, None, None, &records)
            .await
            .map_err(|reason| TransferError::Refused { key: object.key.clone(), reason })?;
        staging.stage(key.clone(), &entry).await?;
        if let Resource::Package(name) = key.resource() {
            records.insert((key.namespace().to_string(), name.clone()), Arc::new(entry));
        }
    }
    let (manifest, digest) = finish_pass(handle).await?;

    // An incremental bundle needs its base imported first: said before its tarballs and
    // signatures are checked against records only the base carried.
    let base = manifest.base.as_ref().map(|b| b.sha256.clone());
    if let Some(base) = &base {
        let selected = mirror.store().selected().await?.len() as u64;
        // What the records it needs say is checked by verification below.
        if let Some(why) = bundle::missing_base(&manifest, selected, |_| true) {
            return Err(TransferError::MissingBase { base: base.clone(), why });
        }
    }
    let refused = |key: &str| {
        let (key, base) = (key.to_string(), base.clone());
        move |reason| match (reason, base) {
            // What an incremental bundle lacks is what its base carried.
            (reason @ (CheckError::NoRecord(_) | CheckError::NoSigned(_)), Some(base)) => {
                TransferError::MissingBase { base, why: format!("{key}: {reason}") }
            }
            (reason, _) => TransferError::Refused { key, reason },
        }
    };

    // Second read: everything else but the signature files.
    let (mut rx, handle) = read_pass(open.clone(), |key| !key.ends_with(".signed") && rank_of(key) != 0);
    while let Some(object) = rx.recv().await {
        let key = parse(&object.key)?;
        let signature =
            signatures.get(&format!("{}.signed", object.key)).and_then(|s| String::from_utf8(s.to_vec()).ok());
        let entry =
            mirror.verify_import(&key, object.bytes, signature, None, &records).await.map_err(refused(&object.key))?;
        // This site's policy: a release it blocks is left out, and listed.
        if let Some(decision) = mirror.blocked_tarball(&key, entry.bytes(), &records).await {
            blocked.push(format!("{}: {}: {}", object.key, decision.rule.as_str(), decision.reason));
            continue;
        }
        staging.stage(key, &entry).await?;
    }
    let (_, again) = finish_pass(handle).await?;
    if again != digest {
        return Err(TransferError::Malformed(BundleError::Read {
            context: "while importing".into(),
            source: std::io::Error::other(format!(
                "the file changed while it was read (sha256 {digest}, then {again})"
            )),
        }));
    }
    drop(records);

    // The signature files, against the staged bytes they sign.
    for (key_text, bytes) in std::mem::take(&mut signatures) {
        let key = parse(&key_text)?;
        let signs = match key_text.strip_suffix(".signed").and_then(|signed| staging.staged.get(signed)) {
            Some((_, _, path)) => Some(staging.bytes(path).await?),
            None => None,
        };
        let entry =
            mirror.verify_import(&key, bytes, None, signs, &HashMap::new()).await.map_err(refused(&key_text))?;
        staging.stage(key, &entry).await?;
    }

    // Everything verified: now write, one object at a time.
    let mut report = ImportReport { digest, objects: staging.staged.len(), blocked, ..Default::default() };
    debug_assert_eq!((report.objects + report.blocked.len()) as u64, manifest.totals.objects);
    let mut selected = Vec::new();
    for (key_text, (key, meta, path)) in &staging.staged {
        // Read whole (not just the record): a damaged stored copy is replaced by the import.
        let existing = mirror.store().get(key).await.ok().flatten().map(|(meta, _)| meta.sha256);
        if existing.as_deref() == Some(meta.sha256.as_str()) {
            report.unchanged += 1;
            mirror.pin(key).await?;
        } else {
            report.new += 1;
            let bytes = staging.bytes(path).await?;
            if let Err(source) = mirror.store_imported_bytes(key, meta, bytes).await {
                return Err(TransferError::Write { key: key.clone(), source });
            }
        }
        selected.push(key_text.clone());
    }
    mirror.store().select(selected).await?;
    mirror.save_seen().await;
    mirror.store().flush().await?;
    mirror.metrics().sync_last_success.set(crate::cache::unix_now() as f64);
    Ok(report)
}
