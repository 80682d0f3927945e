//! Export and import of air-gap bundles (the format is `bundle`).
//!
//! Export writes stored entries that still verify (every one is re-verified from disk before it
//! goes into the bundle). Import reads a bundle, checks its structure and digests, then verifies
//! every object exactly as an upstream answer would be verified (registry signatures and origins
//! with the configured keys, tarballs against verified records of the same bundle or the store)
//! before writing anything: a truncated, altered or forged bundle is refused whole and the store
//! is left exactly as it was. Failures are [`TransferError`]s; the `bundle refused` ones are
//! those that leave the store untouched.

// A failed transfer names the key it failed on: the error is large, and rare.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
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
    /// Objects an interrupted import of the same bundle had verified and staged, kept.
    #[serde(default)]
    pub resumed: usize,
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
    /// The bundle's length in bytes.
    pub len: u64,
    /// Stored releases left out because the policy blocks them: `KEY: rule: reason`.
    pub blocked: Vec<String>,
}

/// Builds a bundle of the store's verified entries in memory (see [`export_to`]).
pub async fn export(mirror: &Mirror, request: &ExportRequest) -> Result<Vec<u8>, TransferError> {
    let mut out = Vec::new();
    export_to(mirror, request, |_| Ok(&mut out)).await?;
    Ok(out)
}

/// Writes a bundle of the store's verified entries to what `create` opens (only once there is
/// something to write, and told the bundle's length in bytes), one object in memory at a time.
///
/// Format 1 puts the manifest, with every object's digest, first: a first pass over the store
/// verifies each entry, describes it and drops its bytes; a second pass reads each entry again
/// and writes it, checked against the manifest (an entry changed between the passes fails the
/// export instead of writing a bundle that would be refused).
pub async fn export_to<W: std::io::Write>(
    mirror: &Mirror,
    request: &ExportRequest,
    create: impl FnOnce(u64) -> std::io::Result<W>,
) -> Result<Exported, TransferError> {
    // Entries answered moments ago may still be on their way to disk.
    mirror.settle_writes().await;
    let store = mirror.store();
    let selection = match request.selected_only {
        true => store.selected().await?,
        false => Default::default(),
    };
    let known: HashMap<&str, &bundle::ObjectInfo> = match &request.base {
        Some(base) => base.objects.iter().map(|o| (o.key.as_str(), o)).collect(),
        None => HashMap::new(),
    };
    // The manifest's two lists, built as the store is walked.
    let (mut described, mut packages) = (Vec::new(), Vec::new());
    let mut verified = 0usize;
    let mut blocked = Vec::new();
    // Walked as a stream: what is kept per entry is its description in the manifest.
    let mut listing = store.list("");
    while let Some(item) = listing.next().await {
        let (key, meta) = item?;
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
        described.push(info);
        packages.extend(package);
    }
    drop(listing);
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
    let manifest = bundle::manifest_from_parts(described, packages, base.as_ref(), bundle::CREATED_BY);
    // When this store first saw the releases of the packages the bundle carries (format 2), so
    // that the importing site's cooldown counts from then.
    let packages: std::collections::HashSet<String> = manifest
        .objects
        .iter()
        .filter_map(|o| CacheKey::parse(&o.key))
        .filter_map(|key| match key.resource() {
            Resource::Package(name) | Resource::Tarball { name, .. } => Some(format!("{}/{name}/", key.namespace())),
            _ => None,
        })
        .collect();
    let first_seen: BTreeMap<String, u64> = mirror.seen_export_where(|release| {
        let package = release.rsplit_once('/').map(|(package, _)| format!("{package}/"));
        package.is_some_and(|p| packages.contains(&p)) && bundle::is_release_key(release)
    });
    drop(packages);
    let manifest = manifest.with_first_seen(first_seen);
    let totals = manifest.totals;
    let len = bundle::archive_len(&manifest).map_err(TransferError::Bundle)?;
    let out = create(len).map_err(|e| TransferError::Bundle(BundleError::Write(e)))?;
    let mut writer = bundle::Writer::new(manifest, out).map_err(TransferError::Bundle)?;
    for i in 0.. {
        let Some(key_text) = writer.manifest().objects.get(i).map(|o| o.key.clone()) else { break };
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
    Ok(Exported { digest, totals, len, blocked })
}

/// A file under the import staging directory that belongs to this process while it lives
/// (a bundle received by the admin endpoint, or one written for it to send), removed on drop.
pub struct Spool {
    path: PathBuf,
}

impl Spool {
    pub fn new(mirror: &Mirror, prefix: &str) -> Result<Spool, TransferError> {
        let root = staging_root(&mirror.config().data_dir);
        std::fs::create_dir_all(&root).map_err(|e| TransferError::Staging(format!("{}: {e}", root.display())))?;
        let path = root.join(unique_name(prefix));
        LIVE.lock().unwrap_or_else(|p| p.into_inner()).push(path.clone());
        Ok(Spool { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        LIVE.lock().unwrap_or_else(|p| p.into_inner()).retain(|d| d != &self.path);
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Writes a request body to a [`Spool`] as it arrives: a bundle handed to the admin endpoint
/// is held on disk, never in memory, whatever its size.
pub async fn receive<B>(mirror: &Mirror, mut body: B) -> Result<Spool, TransferError>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    use http_body_util::BodyExt;
    use tokio::io::AsyncWriteExt;
    let spool = Spool::new(mirror, "upload-")?;
    let fail = |e: std::io::Error| TransferError::Staging(format!("{}: {e}", spool.path().display()));
    let mut file = tokio::fs::File::create(spool.path()).await.map_err(fail)?;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            TransferError::Malformed(BundleError::Read {
                context: "while receiving it".into(),
                source: std::io::Error::other(e.to_string()),
            })
        })?;
        if let Ok(data) = frame.into_data() {
            file.write_all(&data).await.map_err(fail)?;
        }
    }
    file.flush().await.map_err(fail)?;
    Ok(spool)
}

/// Writes a bundle to a [`Spool`] for the admin endpoint to send (sized, so a download that
/// stops early is seen as incomplete).
pub async fn export_spooled(mirror: &Mirror, request: &ExportRequest) -> Result<(Spool, Exported), TransferError> {
    let spool = Spool::new(mirror, "export-")?;
    let path = spool.path().to_path_buf();
    let exported = export_to(mirror, request, |_| std::fs::File::create(&path).map(std::io::BufWriter::new)).await?;
    Ok((spool, exported))
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

/// Verifies every object of the bundle `source` names (one file or a set of volumes), then
/// stores them all (pinned and selected), or nothing; read as a stream, never whole.
pub async fn import_source(mirror: &Mirror, source: &crate::volume::Source) -> Result<ImportReport, TransferError> {
    let source = source.clone();
    import_from(mirror, move || source.reader()).await
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

/// Where imports stage verified objects, under the data directory.
pub fn staging_root(data_dir: &Path) -> PathBuf {
    data_dir.join("import-staging")
}

/// Staging directories of imports running in this process: [`recover`] leaves them alone.
static LIVE: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

fn unique_name(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    let mut random = [0u8; 8];
    let _ = getrandom::getrandom(&mut random);
    format!("{prefix}{nanos}-{}", hex::encode(random))
}

/// One staged object: where its verified bytes are in the staging file, what it is stored as,
/// and whether the store already held exactly these bytes when the import was committed.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StagedObject {
    key: String,
    meta: StoredMeta,
    offset: u64,
    len: u64,
    #[serde(default)]
    present: bool,
}

/// The first line of a journal; one [`StagedObject`] per line follows.
#[derive(Debug, Serialize, Deserialize)]
struct JournalHead {
    digest: String,
    objects: u64,
}

/// What a committing import writes before it changes the store: with it, an import interrupted
/// half-way through its commit is completed (or undone) by the next import or server start.
/// One line per object, read one at a time: a whole repository's journal is never in memory.
const JOURNAL: &str = "journal.jsonl";
/// The staged objects, one line each, appended as they are staged.
const INDEX: &str = "staged.jsonl";
const STAGED: &str = "objects";
/// In a staging directory without a journal: the digest of the bundle being imported. An
/// import of the same bundle interrupted before its commit (killed, or its input failing) is
/// resumed from it: what was verified and staged is kept, not verified and staged again.
const RESUME: &str = "bundle.sha256";
/// How long an interrupted import stays resumable before its staging is removed.
const RESUMABLE_FOR: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);
/// Staged bytes between checkpoints: what a resumed import may have to stage again.
const CHECKPOINT_BYTES: u64 = 32 << 20;

/// `value` as one line of a JSON-lines file (the index, the journal).
fn json_line(value: &impl Serialize) -> Result<Vec<u8>, serde_json::Error> {
    let mut line = serde_json::to_vec(value)?;
    line.push(b'\n');
    Ok(line)
}

/// An index line: a staged object, or a checkpoint (every object listed before it is durable).
#[derive(Debug, Serialize, Deserialize)]
#[serde(untagged)]
#[allow(clippy::large_enum_variant)] // one line at a time, never stored in bulk
enum IndexLine {
    Checkpoint { checkpoint: u64 },
    Object(StagedObject),
}

/// Verified objects waiting in one file under the data directory until the whole bundle has
/// verified, described one line each in an index file beside it (memory keeps only the staged
/// objects a detached signature signs, and the keys of a resumed import's objects). The
/// directory is removed when this is dropped, unless a commit was interrupted after its journal
/// was written (see [`recover`]) or the import can be resumed.
struct Staging {
    dir: PathBuf,
    file: std::fs::File,
    written: u64,
    index: std::io::BufWriter<std::fs::File>,
    count: usize,
    since_checkpoint: u64,
    /// Keys whose detached signature (`KEY.signed`) the bundle carries.
    signed: std::collections::HashSet<String>,
    /// The staged objects of `signed`, for their signatures' verification at the end.
    signed_objects: HashMap<String, StagedObject>,
    /// Objects an interrupted import of this bundle verified and staged.
    adopted: std::collections::HashSet<String>,
    /// Adopted objects this site's policy now blocks: left out of the journal.
    dropped: std::collections::HashSet<String>,
    keep: bool,
}

impl Staging {
    /// Staging for the bundle with `digest`: an interrupted import's, when one of the same
    /// bundle is there, or a new one. Staging of other interrupted imports is removed (one
    /// import is resumable at a time: each may hold a whole repository's bytes).
    async fn for_bundle(
        mirror: &Mirror,
        digest: &str,
        signed: std::collections::HashSet<String>,
    ) -> Result<Staging, TransferError> {
        let root = staging_root(&mirror.config().data_dir);
        let mut adopted = None;
        for (dir, of) in resumable(&root) {
            if of == digest && adopted.is_none() {
                match Staging::adopt(&dir, &signed) {
                    Ok(staging) => adopted = Some(staging),
                    Err(e) => {
                        tracing::warn!(dir = %dir.display(), error = %e, "import: cannot resume from an interrupted import's staging; starting again")
                    }
                }
            } else {
                tracing::info!(dir = %dir.display(), sha256 = %of, "import: removing the staging of an interrupted import of another bundle");
            }
            if adopted.as_ref().is_none_or(|s| s.dir != dir) {
                let _ = std::fs::remove_dir_all(&dir);
            }
        }
        let mut staging = match adopted {
            Some(staging) => staging,
            None => Staging::new(&root, signed).await?,
        };
        let marker = staging.dir.join(RESUME);
        std::fs::write(&marker, digest).map_err(|e| staging.fail(RESUME, e))?;
        staging.checkpoint()?;
        Ok(staging)
    }

    async fn new(root: &Path, signed: std::collections::HashSet<String>) -> Result<Staging, TransferError> {
        let dir = root.join(unique_name(""));
        let fail = |e: std::io::Error| TransferError::Staging(format!("{}: {e}", dir.display()));
        tokio::fs::create_dir_all(&dir).await.map_err(fail)?;
        LIVE.lock().unwrap_or_else(|p| p.into_inner()).push(dir.clone());
        let create = |name: &str| {
            std::fs::OpenOptions::new().create_new(true).read(true).append(true).open(dir.join(name)).map_err(fail)
        };
        let file = create(STAGED)?;
        let index = std::io::BufWriter::new(create(INDEX)?);
        Ok(Staging {
            dir,
            file,
            written: 0,
            index,
            count: 0,
            since_checkpoint: 0,
            signed,
            signed_objects: HashMap::new(),
            adopted: Default::default(),
            dropped: Default::default(),
            keep: false,
        })
    }

    /// Takes over an interrupted import's staging: the objects its index lists up to its last
    /// checkpoint (durable, and checked again against their digests when committed); anything
    /// after it is cut off.
    fn adopt(dir: &Path, signed: &std::collections::HashSet<String>) -> std::io::Result<Staging> {
        use std::io::BufRead;
        let open = |name: &str| std::fs::OpenOptions::new().read(true).write(true).open(dir.join(name));
        let (file, index_file) = (open(STAGED)?, open(INDEX)?);
        let (file_len, index_len) = (file.metadata()?.len(), index_file.metadata()?.len());
        let (mut kept, mut kept_end, mut written) = (Vec::new(), 0u64, 0u64);
        let mut pending = Vec::new();
        let (mut at, mut pending_written) = (0u64, 0u64);
        for line in std::io::BufReader::new(&index_file).split(b'\n') {
            let line = line?;
            at += line.len() as u64 + 1;
            match serde_json::from_slice::<IndexLine>(&line) {
                Ok(IndexLine::Object(object))
                    if object.offset == pending_written && object.offset + object.len <= file_len =>
                {
                    pending_written = object.offset + object.len;
                    pending.push(object);
                }
                Ok(IndexLine::Checkpoint { checkpoint })
                    if checkpoint == (kept.len() + pending.len()) as u64 && at <= index_len =>
                {
                    kept.append(&mut pending);
                    (kept_end, written) = (at, pending_written);
                }
                _ => break,
            }
        }
        file.set_len(written)?;
        index_file.set_len(kept_end)?;
        drop((file, index_file));
        // Opened again to append after what is kept.
        let file = std::fs::OpenOptions::new().append(true).read(true).open(dir.join(STAGED))?;
        let signed_objects =
            kept.iter().filter(|o| signed.contains(&o.key)).map(|o| (o.key.clone(), o.clone())).collect();
        let count = kept.len();
        let adopted = kept.into_iter().map(|o| o.key).collect();
        let index = std::fs::OpenOptions::new().append(true).open(dir.join(INDEX))?;
        LIVE.lock().unwrap_or_else(|p| p.into_inner()).push(dir.to_path_buf());
        Ok(Staging {
            dir: dir.to_path_buf(),
            file,
            written,
            index: std::io::BufWriter::new(index),
            count,
            since_checkpoint: 0,
            signed: signed.clone(),
            signed_objects,
            adopted,
            dropped: Default::default(),
            keep: false,
        })
    }

    fn fail(&self, name: &str, e: impl std::fmt::Display) -> TransferError {
        TransferError::Staging(format!("{}: {e}", self.dir.join(name).display()))
    }

    /// Whether an interrupted import of this bundle verified and staged `key` already.
    fn holds(&self, key: &str) -> bool {
        self.adopted.contains(key)
    }

    async fn stage(&mut self, key: CacheKey, entry: &Entry) -> Result<(), TransferError> {
        use std::io::Write;
        if self.holds(key.as_str()) {
            return Ok(());
        }
        let bytes = entry.bytes();
        self.file.write_all(bytes).map_err(|e| self.fail(STAGED, e))?;
        let object = StagedObject {
            key: key.to_string(),
            meta: entry.stored_meta(),
            offset: self.written,
            len: bytes.len() as u64,
            present: false,
        };
        self.written += bytes.len() as u64;
        let line = json_line(&object).map_err(|e| self.fail(INDEX, e))?;
        self.index.write_all(&line).map_err(|e| self.fail(INDEX, e))?;
        self.count += 1;
        if self.signed.contains(&object.key) {
            self.signed_objects.insert(object.key.clone(), object);
        }
        self.since_checkpoint += bytes.len() as u64;
        if self.since_checkpoint >= CHECKPOINT_BYTES {
            self.checkpoint()?;
        }
        Ok(())
    }

    /// Makes what was staged so far durable, then says so in the index: a resumed import
    /// keeps the objects listed before its last checkpoint.
    fn checkpoint(&mut self) -> Result<(), TransferError> {
        use std::io::Write;
        self.index.flush().map_err(|e| self.fail(INDEX, e))?;
        self.file.sync_data().map_err(|e| self.fail(STAGED, e))?;
        let line =
            json_line(&IndexLine::Checkpoint { checkpoint: self.count as u64 }).map_err(|e| self.fail(INDEX, e))?;
        self.index.write_all(&line).map_err(|e| self.fail(INDEX, e))?;
        self.index.flush().map_err(|e| self.fail(INDEX, e))?;
        self.index.get_ref().sync_data().map_err(|e| self.fail(INDEX, e))?;
        self.since_checkpoint = 0;
        Ok(())
    }

    fn bytes(&self, object: &StagedObject) -> Result<Bytes, TransferError> {
        read_staged(&self.file, object).map_err(|e| self.fail(STAGED, e))
    }

    /// Makes the staged bytes durable and writes the journal, noting for each object whether
    /// the store already holds exactly its bytes (`present` says which): from here on the
    /// import is completed even if this process dies.
    async fn write_journal(&mut self, mirror: &Mirror, report: &mut ImportReport) -> Result<(), TransferError> {
        use std::io::{BufRead, Write};
        self.index.flush().map_err(|e| self.fail(INDEX, e))?;
        self.file.sync_all().map_err(|e| self.fail(STAGED, e))?;
        let tmp = self.dir.join("journal.partial");
        let fail = |e: std::io::Error| TransferError::Staging(format!("{}: {e}", tmp.display()));
        let mut out = std::io::BufWriter::new(std::fs::File::create(&tmp).map_err(fail)?);
        let head = JournalHead { digest: report.digest.clone(), objects: (self.count - self.dropped.len()) as u64 };
        out.write_all(&json_line(&head).map_err(|e| self.fail(JOURNAL, e))?).map_err(fail)?;
        let index = std::fs::File::open(self.dir.join(INDEX)).map_err(|e| self.fail(INDEX, e))?;
        let mut objects = 0u64;
        for line in std::io::BufReader::new(index).lines() {
            let line = line.map_err(|e| self.fail(INDEX, e))?;
            let mut object = match serde_json::from_str(&line).map_err(|e| self.fail(INDEX, e))? {
                IndexLine::Object(object) if !self.dropped.contains(&object.key) => object,
                _ => continue,
            };
            objects += 1;
            let key = CacheKey::parse(&object.key).ok_or_else(|| TransferError::NotAKey(object.key.clone()))?;
            // Read whole (not just the record): a damaged stored copy is replaced by the import.
            let existing = mirror.store().get(&key).await.ok().flatten().map(|(meta, _)| meta.sha256);
            object.present = existing.as_deref() == Some(object.meta.sha256.as_str());
            match object.present {
                true => report.unchanged += 1,
                false => report.new += 1,
            }
            out.write_all(&json_line(&object).map_err(|e| self.fail(JOURNAL, e))?).map_err(fail)?;
        }
        debug_assert_eq!(objects, head.objects);
        let file = out.into_inner().map_err(|e| fail(e.into_error()))?;
        file.sync_all().map_err(fail)?;
        std::fs::rename(&tmp, self.dir.join(JOURNAL)).map_err(fail)?;
        if let Ok(dir) = std::fs::File::open(&self.dir) {
            let _ = dir.sync_all();
        }
        self.keep = true;
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        LIVE.lock().unwrap_or_else(|p| p.into_inner()).retain(|d| d != &self.dir);
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn read_staged(file: &std::fs::File, object: &StagedObject) -> std::io::Result<Bytes> {
    use std::os::unix::fs::FileExt;
    let mut bytes = vec![0u8; object.len as usize];
    file.read_exact_at(&mut bytes, object.offset)?;
    Ok(Bytes::from(bytes))
}

/// The journal of earlier versions: one JSON document.
const OLD_JOURNAL: &str = "journal.json";

/// Rewrites a journal of [`OLD_JOURNAL`]'s form as the lines [`JOURNAL`] holds.
fn rewrite_old_journal(old: &[u8], path: &Path) -> Result<(), String> {
    #[derive(Deserialize)]
    struct Journal {
        digest: String,
        objects: Vec<StagedObject>,
    }
    let journal: Journal = serde_json::from_slice(old).map_err(|e| e.to_string())?;
    let head = JournalHead { digest: journal.digest, objects: journal.objects.len() as u64 };
    let mut text = json_line(&head).map_err(|e| e.to_string())?;
    for object in &journal.objects {
        text.extend(json_line(object).map_err(|e| e.to_string())?);
    }
    let tmp = path.with_extension("partial");
    std::fs::write(&tmp, &text).map_err(|e| e.to_string())?;
    std::fs::rename(&tmp, path).map_err(|e| e.to_string())
}

/// A journal read one object at a time: its head, then its objects.
struct JournalReader {
    head: JournalHead,
    lines: std::io::Lines<std::io::BufReader<std::fs::File>>,
    path: PathBuf,
}

impl JournalReader {
    /// The journal under `dir`, or `None` when the import never reached its commit.
    fn open(dir: &Path) -> Option<Result<JournalReader, TransferError>> {
        use std::io::BufRead;
        let path = dir.join(JOURNAL);
        if !path.exists() {
            // Written by an earlier version as one document: rewritten as lines, then read.
            let old = std::fs::read(dir.join(OLD_JOURNAL)).ok()?;
            if let Err(e) = rewrite_old_journal(&old, &path) {
                return Some(Err(TransferError::Staging(format!("{}: {e}", dir.join(OLD_JOURNAL).display()))));
            }
        }
        let file = std::fs::File::open(&path).ok()?;
        let mut lines = std::io::BufReader::new(file).lines();
        let head = lines
            .next()
            .and_then(|line| line.ok())
            .and_then(|line| serde_json::from_str::<JournalHead>(&line).ok())
            .ok_or_else(|| TransferError::Staging(format!("{}: no journal head", path.display())));
        Some(head.map(|head| JournalReader { head, lines, path }))
    }
}

impl Iterator for JournalReader {
    type Item = Result<StagedObject, TransferError>;

    fn next(&mut self) -> Option<Self::Item> {
        let line = self.lines.next()?;
        let fail = |e: String| TransferError::Staging(format!("{}: {e}", self.path.display()));
        Some(
            line.map_err(|e| fail(e.to_string()))
                .and_then(|l| serde_json::from_str(&l).map_err(|e| fail(e.to_string()))),
        )
    }
}

/// Writes a journal's objects to the store. On a failure (a full disk, say) the objects this
/// commit added are removed again, so the store is left as it was, and the error returned.
async fn commit(mirror: &Mirror, dir: &Path, file: &std::fs::File) -> Result<(), TransferError> {
    let reader = || JournalReader::open(dir).unwrap_or_else(|| Err(TransferError::Staging("no journal".into())));
    // How many objects, in the journal's order, the store may have been written for.
    let mut written = 0usize;
    let result: Result<(), TransferError> = async {
        let journal = reader()?;
        let mut selected = Vec::with_capacity(journal.head.objects.min(1 << 20) as usize);
        for (i, object) in journal.enumerate() {
            let object = object?;
            let key = CacheKey::parse(&object.key).ok_or_else(|| TransferError::NotAKey(object.key.clone()))?;
            if object.present {
                mirror.pin(&key).await?;
            } else {
                let bytes = read_staged(file, &object).map_err(|e| TransferError::Staging(e.to_string()))?;
                // Staged bytes are checked again: the journal vouches only for what it describes.
                if hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes)) != object.meta.sha256 {
                    return Err(TransferError::Staging(format!("{}: the staged copy changed", object.key)));
                }
                written = i + 1;
                if let Err(source) = mirror.store_imported_bytes(&key, &object.meta, bytes).await {
                    return Err(TransferError::Write { key, source });
                }
            }
            selected.push(object.key);
        }
        mirror.store().select(selected).await?;
        mirror.store().flush().await?;
        Ok(())
    }
    .await;
    if result.is_err() {
        // What this commit added goes again: the objects up to the last written that were new.
        let undo = reader().into_iter().flatten().take(written).flatten().filter(|object| !object.present);
        for key in undo.filter_map(|object| CacheKey::parse(&object.key)) {
            if let Err(e) = mirror.remove(&key).await {
                tracing::error!(key = %key, error = %e, "import: cannot undo a partly committed import");
            }
        }
    }
    result
}

/// The digest of the bundle whose interrupted import `dir` holds, if it can be resumed: marked,
/// and without a journal (a commit under way is completed instead).
fn resumable_digest(dir: &Path) -> Option<String> {
    if dir.join(JOURNAL).exists() || dir.join(OLD_JOURNAL).exists() {
        return None;
    }
    Some(std::fs::read_to_string(dir.join(RESUME)).ok()?.trim().to_string())
}

/// Staging directories of interrupted imports that can be resumed, with their bundles' digests.
fn resumable(root: &Path) -> Vec<(PathBuf, String)> {
    let live: Vec<PathBuf> = LIVE.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let Ok(entries) = std::fs::read_dir(root) else { return Vec::new() };
    entries
        .flatten()
        .map(|entry| entry.path())
        .filter(|dir| !live.contains(dir))
        .filter_map(|dir| resumable_digest(&dir).map(|digest| (dir, digest)))
        .collect()
}

/// Finishes what interrupted imports left under the data directory: a commit whose journal was
/// written is completed (an import whose staged bytes no longer match is undone instead),
/// staging of an import that can be resumed is kept for a week, and other staging that never
/// reached its journal (the store was not touched) is removed. Called before every import and
/// when the server starts. Returns the number of imports completed.
pub async fn recover(mirror: &Mirror) -> usize {
    let root = staging_root(&mirror.config().data_dir);
    let Ok(entries) = std::fs::read_dir(&root) else { return 0 };
    let live: Vec<PathBuf> = LIVE.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut completed = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        if live.contains(&path) {
            continue;
        }
        if resumable_digest(&path).is_some() {
            let age = entry.metadata().and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok());
            if age.is_some_and(|age| age < RESUMABLE_FOR) {
                // Verified and staged before it was interrupted: kept for a resumed import.
                continue;
            }
        }
        match (JournalReader::open(&path), std::fs::File::open(path.join(STAGED))) {
            (Some(Ok(journal)), Ok(file)) => match commit(mirror, &path, &file).await {
                Ok(()) => {
                    completed += 1;
                    tracing::info!(sha256 = %journal.head.digest, objects = journal.head.objects, "import: completed an interrupted import");
                }
                Err(e) => {
                    tracing::error!(sha256 = %journal.head.digest, error = %e, "import: an interrupted import cannot be completed; undone, import the bundle again")
                }
            },
            _ => {
                tracing::info!(dir = %path.display(), "import: removing an unfinished import's staging (nothing of it was stored)")
            }
        }
        let _ = if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
    }
    completed
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
    recover(mirror).await;
    let mut records = HashMap::new();
    // Verified in the first read, staged once the bundle's digest says where (see `Staging`).
    let mut first: Vec<(CacheKey, Arc<Entry>)> = Vec::new();
    let mut signatures: BTreeMap<String, Bytes> = BTreeMap::new();
    let mut blocked = Vec::new();
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
        let entry = Arc::new(entry);
        if let Resource::Package(name) = key.resource() {
            // A bundle's record is seen when it is imported (once, not per tarball).
            if let crate::verify::Facts::Releases(releases) = entry.content.facts() {
                mirror.note_listed(key.namespace(), name, releases);
            }
            records.insert((key.namespace().to_string(), name.clone()), entry.clone());
        }
        first.push((key, entry));
    }
    let (mut manifest, digest) = finish_pass(handle).await?;
    let signed = signatures.keys().filter_map(|key| key.strip_suffix(".signed")).map(String::from).collect();
    let mut staging = Staging::for_bundle(mirror, &digest, signed).await?;
    let resumed = staging.adopted.len();
    if resumed > 0 {
        tracing::info!(sha256 = %digest, objects = resumed, "import: resuming an interrupted import of this bundle; what it verified and staged is kept");
    }
    for (key, entry) in first {
        staging.stage(key, &entry).await?;
    }

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
    // When the bundle's writer first saw its releases (unsigned, like the rest of the manifest:
    // as trustworthy as whoever wrote the bundle): this store keeps the earlier time, before its
    // cooldown judges the tarballs below.
    mirror.seen_merge_earlier(std::mem::take(&mut manifest.first_seen));
    // Only its counts are needed from here on (the second read checks its own copy).
    let totals = manifest.totals;
    drop(manifest);
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

    // Second read: everything else but the signature files. If it fails on its input (a
    // volume that cannot be read, say), what was staged is kept for a resumed import.
    let second = async {
        let (mut rx, handle) = read_pass(open.clone(), |key| !key.ends_with(".signed") && rank_of(key) != 0);
        while let Some(object) = rx.recv().await {
            let key = parse(&object.key)?;
            // Verified and staged already by an interrupted import of this bundle: not again.
            let held = staging.holds(&object.key);
            let entry = match held {
                true => None,
                false => {
                    let signature = signatures
                        .get(&format!("{}.signed", object.key))
                        .and_then(|s| String::from_utf8(s.to_vec()).ok());
                    let entry = mirror
                        .verify_import(&key, object.bytes.clone(), signature, None, &records)
                        .await
                        .map_err(refused(&object.key))?;
                    Some(entry)
                }
            };
            // This site's policy (judging held objects again): a release it blocks is left
            // out, and listed.
            let bytes = entry.as_ref().map_or(&object.bytes, |entry| entry.bytes());
            if let Some(decision) = mirror.blocked_tarball(&key, bytes, &records).await {
                blocked.push(format!("{}: {}: {}", object.key, decision.rule.as_str(), decision.reason));
                if held {
                    staging.dropped.insert(object.key);
                }
                continue;
            }
            if let Some(entry) = entry {
                staging.stage(key, &entry).await?;
            }
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
        Ok(())
    };
    if let Err(e) = second.await {
        if matches!(e, TransferError::Malformed(BundleError::Read { .. } | BundleError::Truncated { .. })) {
            staging.keep = true;
            staging.checkpoint()?;
            tracing::info!(dir = %staging.dir.display(), "import: what was verified is kept; importing the same bundle again resumes from it");
        }
        return Err(e);
    }
    drop(records);

    // The signature files, against the staged bytes they sign.
    for (key_text, bytes) in std::mem::take(&mut signatures) {
        let key = parse(&key_text)?;
        let signs = match key_text.strip_suffix(".signed").and_then(|signed| staging.signed_objects.get(signed)) {
            Some(object) => Some(staging.bytes(object)?),
            None => None,
        };
        let entry =
            mirror.verify_import(&key, bytes, None, signs, &HashMap::new()).await.map_err(refused(&key_text))?;
        staging.stage(key, &entry).await?;
    }

    // Everything verified: note what the store already holds, write the journal, then write
    // the store one object at a time.
    let objects = staging.count - staging.dropped.len();
    let mut report = ImportReport { digest, objects, resumed, blocked, ..Default::default() };
    debug_assert_eq!((report.objects + report.blocked.len()) as u64, totals.objects);
    staging.write_journal(mirror, &mut report).await?;
    let committed = commit(mirror, &staging.dir, &staging.file).await;
    // Committed, or undone: either way nothing is left to recover.
    staging.keep = false;
    committed?;
    mirror.save_seen().await;
    mirror.metrics().sync_last_success.set(crate::cache::unix_now() as f64);
    Ok(report)
}
