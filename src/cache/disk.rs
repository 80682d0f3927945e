//! The local persistent tier: a sled index of [`StoredMeta`] records and bodies as files
//! beside it, behind the async [`Store`] interface.
//!
//! Layout under `data_dir`: `index/` (sled, page cache kept small), `blobs/XX/SHA256-KEYHASH`
//! (one file per entry, named by the sha256 of its bytes, so every read is checked against its
//! name), `tmp/` (bodies being written) and `selection.json` (what sync and import selected). A
//! write is crash-safe: temp file, fsync, rename into `blobs/`, fsync the directory, then the
//! index insert; until the index points at a blob, the blob does not exist as far as readers
//! know. `open` sweeps what a crash left: temp files, blobs no index entry points at, and index
//! entries whose blob is missing or damaged.
//!
//! sled and the file system block, so every call runs its work on tokio's blocking threads
//! (`DiskStore::blocking`); the state and the blocking operations themselves are `Local`'s,
//! which nothing outside this module can reach. A call whose future is dropped still finishes
//! its blocking work, so a `put` lands whole or not at all. Listing reads the index a page at a
//! time, one blocking call per page.
//!
//! sled holds an exclusive file lock on `index/db` while a store is open, so one process owns a
//! data directory. When the index cannot be opened, that lock is tried again: if it is held,
//! the error is [`StoreError::Locked`] (another hexmirror runs), otherwise `Index`.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{ErrorKind, Write};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::future::FutureExt;
use futures::stream::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::store::{Listing, Store, StoreError, StoreFuture, Usage};
use super::{CacheKey, StoredMeta};

/// The default persistent tier: sled plus content-named files. A cheap handle to the open
/// store; it closes (and releases the index's lock) when the last handle and the last call
/// in progress are gone.
#[derive(Clone)]
pub struct DiskStore {
    local: Arc<Local>,
}

/// An open store's state and its blocking operations, used only on blocking threads.
struct Local {
    root: PathBuf,
    index: sled::Db,
    entries: AtomicU64,
    bytes: AtomicU64,
    tmp_seq: AtomicU64,
    /// Set for a store opened read-only: the index is a private copy in this scratch
    /// directory (removed on drop), and nothing under `root` is ever written.
    scratch: Option<PathBuf>,
    /// Held while `selection.json` is read, extended and written back.
    selecting: Mutex<()>,
}

impl Drop for Local {
    fn drop(&mut self) {
        if let Some(scratch) = &self.scratch {
            let _ = fs::remove_dir_all(scratch);
        }
    }
}

/// Records read from the index per blocking call when listing.
const PAGE: usize = 1024;

/// The file of what sync and import selected, under the store's root.
const SELECTION_FILE: &str = "selection.json";

#[derive(Debug, Default, Serialize, Deserialize)]
struct SelectionFile {
    keys: BTreeSet<String>,
}

#[cfg(test)]
thread_local! {
    /// Set by tests on the thread that runs their runtime: blocking store work there fails.
    static RUNTIME_THREAD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Called first by every blocking operation: under test, fails on a thread marked as a
/// runtime thread (see the tests), so store work done in place of being moved off the
/// runtime is caught.
fn blocking_work() {
    #[cfg(test)]
    RUNTIME_THREAD.with(|marked| assert!(!marked.get(), "blocking store work on a runtime thread"));
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    fs::create_dir_all(to)?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

/// The file in sled's directory that sled 0.34 locks for as long as a `Db` is open
/// (`Config::db_path`, locked with fs2's `try_lock_exclusive`).
const SLED_DB_FILE: &str = "db";

/// True when another open file description holds the exclusive lock on `path`, the lock sled
/// takes. sled reports a held lock as `io::ErrorKind::Other` with the OS error only in its
/// text, so after sled fails to open, the lock is tried again here, with the same call sled
/// makes: it fails with the platform's "lock contended" error (EWOULDBLOCK on Unix) exactly
/// when someone holds it. A lock taken here is released at once (closing the file).
fn lock_is_held(path: &Path) -> bool {
    use fs2::FileExt;
    let Ok(file) = File::open(path) else { return false };
    match file.try_lock_exclusive() {
        Ok(()) => false,
        Err(e) => e.raw_os_error().is_some() && e.raw_os_error() == fs2::lock_contended_error().raw_os_error(),
    }
}

/// What the start-up sweep cleaned.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Sweep {
    pub temp_files: u64,
    pub orphan_blobs: u64,
    pub dangling_records: u64,
}

/// The 40 bytes a blob's file name (`SHA256-KEYHASH`, lowercase hex) encodes, if it is one.
fn blob_id(name: &str) -> Option<[u8; 40]> {
    // Only the exact spelling `blob_path` writes: an upper-case twin is not the live blob.
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        return None;
    }
    let (sha256, key_hash) = name.split_once('-')?;
    let mut id = [0u8; 40];
    hex::decode_to_slice(sha256, &mut id[..32]).ok()?;
    hex::decode_to_slice(key_hash, &mut id[32..]).ok()?;
    Some(id)
}

impl Local {
    fn open(root: &Path) -> Result<(Local, Sweep), StoreError> {
        blocking_work();
        fs::create_dir_all(root.join("blobs"))?;
        fs::create_dir_all(root.join("tmp"))?;
        let index = sled::Config::new()
            .path(root.join("index"))
            .cache_capacity(8 << 20)
            .flush_every_ms(Some(1000))
            .open()
            .map_err(|e| {
                if lock_is_held(&root.join("index").join(SLED_DB_FILE)) {
                    StoreError::Locked(e)
                } else {
                    StoreError::Index(e)
                }
            })?;
        let store = Self::with_index(root, index, None);
        let sweep = store.sweep()?;
        Ok((store, sweep))
    }

    fn with_index(root: &Path, index: sled::Db, scratch: Option<PathBuf>) -> Local {
        Local {
            root: root.to_path_buf(),
            index,
            entries: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            tmp_seq: AtomicU64::new(0),
            scratch,
            selecting: Mutex::new(()),
        }
    }

    fn open_read_only(root: &Path) -> Result<Local, StoreError> {
        blocking_work();
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let scratch = std::env::temp_dir().join(format!(
            "hexmirror-index-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&scratch);
        copy_dir(&root.join("index"), &scratch)?;
        let index = sled::Config::new().path(&scratch).cache_capacity(8 << 20).open()?;
        let store = Self::with_index(root, index, Some(scratch));
        let (mut entries, mut bytes) = (0, 0);
        for item in store.index.iter() {
            let (_, v) = item?;
            if let Ok(meta) = Self::decode_meta(&v) {
                entries += 1;
                bytes += meta.len;
            }
        }
        store.entries.store(entries, Ordering::Relaxed);
        store.bytes.store(bytes, Ordering::Relaxed);
        Ok(store)
    }

    fn refuse_writes(&self) -> Result<(), StoreError> {
        match self.scratch {
            Some(_) => {
                Err(StoreError::Io(std::io::Error::new(ErrorKind::ReadOnlyFilesystem, "the store is read-only")))
            }
            None => Ok(()),
        }
    }

    fn blob_path(&self, key: &CacheKey, sha256_hex: &str) -> PathBuf {
        let key_hash = hex::encode(&Sha256::digest(key.as_str().as_bytes())[..8]);
        self.root.join("blobs").join(&sha256_hex[..2]).join(format!("{sha256_hex}-{key_hash}"))
    }

    fn decode_meta(bytes: &[u8]) -> Result<StoredMeta, StoreError> {
        let meta: StoredMeta = serde_json::from_slice(bytes).map_err(|e| StoreError::Damaged(e.to_string()))?;
        if meta.v != StoredMeta::VERSION || meta.sha256.len() != 64 {
            return Err(StoreError::Damaged(format!("unsupported record version {}", meta.v)));
        }
        Ok(meta)
    }

    fn sweep(&self) -> Result<Sweep, StoreError> {
        let mut sweep = Sweep::default();
        for entry in fs::read_dir(self.root.join("tmp"))? {
            fs::remove_file(entry?.path())?;
            sweep.temp_files += 1;
        }
        // Each live blob by the 40 bytes its file name encodes (sha256 and key hash), not its
        // path: the set holds every entry of the store.
        let mut live: std::collections::HashSet<[u8; 40]> = std::collections::HashSet::new();
        let (mut entries, mut bytes) = (0, 0);
        for item in self.index.iter() {
            let (k, v) = item?;
            let key = std::str::from_utf8(&k).ok().and_then(CacheKey::parse);
            let meta = Self::decode_meta(&v).ok();
            let blob = match (&key, &meta) {
                (Some(key), Some(meta)) => Some(self.blob_path(key, &meta.sha256)),
                _ => None,
            };
            match (blob, meta) {
                (Some(path), Some(meta)) if fs::metadata(&path).is_ok_and(|m| m.len() == meta.len) => {
                    entries += 1;
                    bytes += meta.len;
                    live.extend(path.file_name().and_then(|name| blob_id(&name.to_string_lossy())));
                }
                _ => {
                    self.index.remove(&k)?;
                    sweep.dangling_records += 1;
                }
            }
        }
        for shard in fs::read_dir(self.root.join("blobs"))? {
            let shard = shard?.path();
            if !shard.is_dir() {
                continue;
            }
            for blob in fs::read_dir(&shard)? {
                let path = blob?.path();
                let id = path.file_name().and_then(|name| blob_id(&name.to_string_lossy()));
                if !id.is_some_and(|id| live.contains(&id)) {
                    fs::remove_file(&path)?;
                    sweep.orphan_blobs += 1;
                }
            }
        }
        self.entries.store(entries, Ordering::Relaxed);
        self.bytes.store(bytes, Ordering::Relaxed);
        self.index.flush()?;
        Ok(sweep)
    }

    fn write_blob(&self, path: &Path, body: &[u8]) -> Result<(), StoreError> {
        let dir = path.parent().expect("blob paths have a shard directory");
        fs::create_dir_all(dir)?;
        let tmp = self.root.join("tmp").join(format!(
            "{}-{}",
            std::process::id(),
            self.tmp_seq.fetch_add(1, Ordering::Relaxed)
        ));
        let result = (|| {
            let mut file = File::create(&tmp)?;
            file.write_all(body)?;
            file.sync_all()?;
            fs::rename(&tmp, path)?;
            File::open(dir)?.sync_all()
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        Ok(result?)
    }

    fn forget(&self, key: &CacheKey, meta: &StoredMeta) -> Result<(), StoreError> {
        if self.index.remove(key.as_str().as_bytes())?.is_some() {
            self.entries.fetch_sub(1, Ordering::Relaxed);
            self.bytes.fetch_sub(meta.len, Ordering::Relaxed);
        }
        if self.scratch.is_some() {
            return Ok(());
        }
        match fs::remove_file(self.blob_path(key, &meta.sha256)) {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    fn get(&self, key: &CacheKey) -> Result<Option<(StoredMeta, Bytes)>, StoreError> {
        blocking_work();
        let Some(raw) = self.index.get(key.as_str().as_bytes())? else { return Ok(None) };
        let meta = Self::decode_meta(&raw)?;
        let body = match fs::read(self.blob_path(key, &meta.sha256)) {
            Ok(body) => body,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                self.forget(key, &meta)?;
                return Err(StoreError::Damaged(format!("{key}: body is missing")));
            }
            Err(e) => return Err(e.into()),
        };
        if hex::encode(Sha256::digest(&body)) != meta.sha256 {
            self.forget(key, &meta)?;
            return Err(StoreError::Damaged(format!("{key}: body does not match its checksum")));
        }
        Ok(Some((meta, Bytes::from(body))))
    }

    fn put(&self, key: &CacheKey, meta: &StoredMeta, body: &[u8]) -> Result<(), StoreError> {
        blocking_work();
        self.refuse_writes()?;
        let path = self.blob_path(key, &meta.sha256);
        self.write_blob(&path, body)?;
        let encoded = serde_json::to_vec(meta).expect("records always serialize");
        let previous = self.index.insert(key.as_str().as_bytes(), encoded)?;
        // Durable before the caller moves on: a killed process keeps what it finished.
        self.index.flush()?;
        match previous.map(|p| Self::decode_meta(&p)) {
            Some(Ok(old)) => {
                self.bytes.fetch_sub(old.len, Ordering::Relaxed);
                if old.sha256 != meta.sha256 {
                    let _ = fs::remove_file(self.blob_path(key, &old.sha256));
                }
            }
            _ => {
                self.entries.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.bytes.fetch_add(meta.len, Ordering::Relaxed);
        Ok(())
    }

    fn update_meta(&self, key: &CacheKey, meta: &StoredMeta) -> Result<(), StoreError> {
        blocking_work();
        self.refuse_writes()?;
        let encoded = serde_json::to_vec(meta).expect("records always serialize");
        // Only an existing record whose body is unchanged may be updated in place.
        let _ = self.index.fetch_and_update(key.as_str().as_bytes(), |old| {
            let old = old?;
            match Self::decode_meta(old) {
                Ok(old) if old.sha256 == meta.sha256 => Some(encoded.clone()),
                _ => Some(old.to_vec()),
            }
        })?;
        Ok(())
    }

    fn remove(&self, key: &CacheKey) -> Result<(), StoreError> {
        blocking_work();
        self.refuse_writes()?;
        match self.index.get(key.as_str().as_bytes())? {
            Some(raw) => match Self::decode_meta(&raw) {
                Ok(meta) => self.forget(key, &meta),
                Err(_) => {
                    self.index.remove(key.as_str().as_bytes())?;
                    Ok(())
                }
            },
            None => Ok(()),
        }
    }

    fn head(&self, key: &CacheKey) -> Result<Option<StoredMeta>, StoreError> {
        blocking_work();
        match self.index.get(key.as_str().as_bytes())? {
            Some(raw) => Ok(Some(Self::decode_meta(&raw)?)),
            None => Ok(None),
        }
    }

    /// Up to `limit` records under `prefix` after the key `after` (from the first when
    /// `None`), and the key to continue after when there may be more.
    #[allow(clippy::type_complexity)]
    fn page(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<(Vec<(CacheKey, StoredMeta)>, Option<Vec<u8>>), StoreError> {
        blocking_work();
        let records = match after {
            None => self.index.scan_prefix(prefix),
            Some(after) => self.index.range::<&[u8], _>((Bound::Excluded(after), Bound::Unbounded)),
        };
        let (mut out, mut last) = (Vec::new(), None);
        for (read, item) in records.enumerate() {
            let (k, v) = item?;
            if !k.starts_with(prefix) {
                break;
            }
            if read == limit {
                return Ok((out, last));
            }
            if let (Some(key), Ok(meta)) =
                (std::str::from_utf8(&k).ok().and_then(CacheKey::parse), Self::decode_meta(&v))
            {
                out.push((key, meta));
            }
            last = Some(k.to_vec());
        }
        Ok((out, None))
    }

    fn flush(&self) -> Result<(), StoreError> {
        blocking_work();
        self.index.flush()?;
        Ok(())
    }

    /// A missing selection file selects nothing; an unreadable or damaged one is an error
    /// (not an empty selection, which would make `verify` check nothing for completeness).
    fn selected(&self) -> Result<BTreeSet<String>, StoreError> {
        blocking_work();
        let bytes = match fs::read(self.root.join(SELECTION_FILE)) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(BTreeSet::new()),
            Err(e) => return Err(e.into()),
        };
        let file: SelectionFile =
            serde_json::from_slice(&bytes).map_err(|e| StoreError::Damaged(format!("{SELECTION_FILE}: {e}")))?;
        Ok(file.keys)
    }

    /// Adds `keys` and writes the file crash-safely (temp file, fsync, rename). The file is
    /// read as a stream, twice: once to find which keys are new (none: it stays as it is),
    /// once to merge them in, in order; only the keys added are held. A file whose keys are
    /// out of order (not as this store writes it) is read whole and written back sorted.
    fn select(&self, keys: Vec<String>) -> Result<(), StoreError> {
        blocking_work();
        self.refuse_writes()?;
        let _selecting = self.selecting.lock().expect("never poisoned: no panics while held");
        let path = self.root.join(SELECTION_FILE);
        let mut keys = keys;
        keys.sort_unstable();
        keys.dedup();
        let mut held = vec![false; keys.len()];
        let mut last: Option<String> = None;
        let mut sorted = true;
        each_selected(&path, |key| {
            if let Ok(i) = keys.binary_search(&key) {
                held[i] = true;
            }
            sorted &= last.as_ref().is_none_or(|last| *last < key);
            last = Some(key);
            Ok(())
        })?;
        let added: Vec<String> = keys.into_iter().zip(held).filter(|(_, held)| !held).map(|(key, _)| key).collect();
        if added.is_empty() {
            // Nothing new (a re-run): the file stays as it is.
            return Ok(());
        }
        let tmp = self.root.join(format!("{SELECTION_FILE}.tmp"));
        {
            let mut file = std::io::BufWriter::new(File::create(&tmp)?);
            let mut first = true;
            let mut write_key = |file: &mut std::io::BufWriter<File>, key: &str| -> std::io::Result<()> {
                file.write_all(if first { b"\n    " } else { b",\n    " })?;
                first = false;
                serde_json::to_writer(&mut *file, key).map_err(std::io::Error::other)
            };
            file.write_all(b"{\n  \"keys\": [")?;
            if sorted {
                let mut added = added.iter().peekable();
                each_selected(&path, |key| {
                    while let Some(new) = added.next_if(|new| **new < key) {
                        write_key(&mut file, new)?;
                    }
                    Ok(write_key(&mut file, &key)?)
                })?;
                for new in added {
                    write_key(&mut file, new)?;
                }
            } else {
                let mut all = self.selected()?;
                all.extend(added);
                for key in &all {
                    write_key(&mut file, key)?;
                }
            }
            file.write_all(if first { b"]\n}\n" } else { b"\n  ]\n}\n" })?;
            file.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        }
        fs::rename(tmp, path)?;
        Ok(())
    }
}

/// Calls `each` with every key of the selection file at `path` as it is parsed, in the file's
/// order (a missing file has none). Damage is [`StoreError::Damaged`], as for `selected`.
fn each_selected(path: &Path, each: impl FnMut(String) -> Result<(), StoreError>) -> Result<(), StoreError> {
    use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

    struct Keys<'a, F>(&'a mut F, &'a mut Option<StoreError>);
    impl<'de, F: FnMut(String) -> Result<(), StoreError>> DeserializeSeed<'de> for Keys<'_, F> {
        type Value = ();
        fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
            deserializer.deserialize_seq(self)
        }
    }
    impl<'de, F: FnMut(String) -> Result<(), StoreError>> Visitor<'de> for Keys<'_, F> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a list of keys")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            while let Some(key) = seq.next_element::<String>()? {
                if let Err(e) = (self.0)(key) {
                    *self.1 = Some(e);
                    return Err(de::Error::custom("stopped"));
                }
            }
            Ok(())
        }
    }
    struct Selection<F>(F, Option<StoreError>);
    impl<'de, F: FnMut(String) -> Result<(), StoreError>> Visitor<'de> for &mut Selection<F> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a selection: {\"keys\": [...]}")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            let mut seen = false;
            while let Some(field) = map.next_key::<String>()? {
                match field.as_str() {
                    "keys" if seen => return Err(de::Error::duplicate_field("keys")),
                    "keys" => {
                        seen = true;
                        map.next_value_seed(Keys(&mut self.0, &mut self.1))?;
                    }
                    _ => {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
            }
            if !seen {
                return Err(de::Error::missing_field("keys"));
            }
            Ok(())
        }
    }

    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let mut reader = serde_json::Deserializer::from_reader(std::io::BufReader::new(file));
    let mut selection = Selection(each, None);
    let parsed = de::Deserializer::deserialize_map(&mut reader, &mut selection).and_then(|()| reader.end());
    match (selection.1, parsed) {
        (Some(stopped), _) => Err(stopped),
        (None, Err(e)) if e.is_io() => Err(StoreError::Io(std::io::Error::other(e))),
        (None, Err(e)) => Err(StoreError::Damaged(format!("{SELECTION_FILE}: {e}"))),
        (None, Ok(())) => Ok(()),
    }
}

impl Local {
    /// `docs/NAME`, or `None` when it was never written.
    fn read_doc(&self, name: &str) -> Result<Option<Bytes>, StoreError> {
        blocking_work();
        match fs::read(self.root.join("docs").join(name)) {
            Ok(bytes) => Ok(Some(Bytes::from(bytes))),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Replaces `docs/NAME` crash-safely (temp file, fsync, rename).
    fn write_doc(&self, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
        blocking_work();
        self.refuse_writes()?;
        let dir = self.root.join("docs");
        fs::create_dir_all(&dir)?;
        let tmp = dir.join(format!(".{name}.tmp"));
        {
            let mut file = File::create(&tmp)?;
            file.write_all(bytes)?;
            file.sync_all()?;
        }
        fs::rename(tmp, dir.join(name))?;
        Ok(())
    }
}

/// Whether `root` holds a store (its `index/`), looked at without creating or changing
/// anything: `Ok(false)` when `root` does not exist or holds no index, an error when `root`
/// cannot be used as a data directory at all (it is not a directory, or cannot be searched).
pub fn holds_store(root: &Path) -> std::io::Result<bool> {
    match fs::metadata(root) {
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
        Ok(meta) if !meta.is_dir() => {
            return Err(std::io::Error::new(ErrorKind::NotADirectory, "not a directory"));
        }
        Ok(_) => {}
    }
    match fs::symlink_metadata(root.join("index")) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

impl DiskStore {
    /// Opens (creating when needed) the store under `root` and sweeps what a crash left.
    pub async fn open(root: &Path) -> Result<(DiskStore, Sweep), StoreError> {
        let root = root.to_path_buf();
        let (local, sweep) = tokio::task::spawn_blocking(move || Local::open(&root)).await??;
        Ok((DiskStore { local: Arc::new(local) }, sweep))
    }

    /// Opens a store on a read-only file system (an air-gapped site's mounted volume): sled
    /// cannot open its index there, so a private copy of the index is opened in the system's
    /// temporary directory; bodies are read in place. Every write fails.
    pub async fn open_read_only(root: &Path) -> Result<DiskStore, StoreError> {
        let root = root.to_path_buf();
        let local = tokio::task::spawn_blocking(move || Local::open_read_only(&root)).await??;
        Ok(DiskStore { local: Arc::new(local) })
    }

    /// Runs `work` on a blocking thread. The only way this store's operations run.
    fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Local) -> Result<T, StoreError> + Send + 'static,
    ) -> StoreFuture<'static, T> {
        let local = self.local.clone();
        async move { tokio::task::spawn_blocking(move || work(&local)).await? }.boxed()
    }
}

impl Store for DiskStore {
    fn get<'a>(&'a self, key: &'a CacheKey) -> StoreFuture<'a, Option<(StoredMeta, Bytes)>> {
        let key = key.clone();
        self.blocking(move |local| local.get(&key))
    }

    fn head<'a>(&'a self, key: &'a CacheKey) -> StoreFuture<'a, Option<StoredMeta>> {
        let key = key.clone();
        self.blocking(move |local| local.head(&key))
    }

    fn put<'a>(&'a self, key: &'a CacheKey, meta: &'a StoredMeta, body: Bytes) -> StoreFuture<'a, ()> {
        let (key, meta) = (key.clone(), meta.clone());
        self.blocking(move |local| local.put(&key, &meta, &body))
    }

    fn update_meta<'a>(&'a self, key: &'a CacheKey, meta: &'a StoredMeta) -> StoreFuture<'a, ()> {
        let (key, meta) = (key.clone(), meta.clone());
        self.blocking(move |local| local.update_meta(&key, &meta))
    }

    fn remove<'a>(&'a self, key: &'a CacheKey) -> StoreFuture<'a, ()> {
        let key = key.clone();
        self.blocking(move |local| local.remove(&key))
    }

    fn list<'a>(&'a self, prefix: &'a str) -> Listing<'a> {
        let (store, prefix) = (self.clone(), prefix.as_bytes().to_vec());
        // The state is where the next page starts: `Some(None)` at first, `None` when done.
        let pages = futures::stream::try_unfold(Some(None), move |cursor: Option<Option<Vec<u8>>>| {
            let (store, prefix) = (store.clone(), prefix.clone());
            async move {
                let Some(after) = cursor else { return Ok::<_, StoreError>(None) };
                let (records, next) = store.blocking(move |local| local.page(&prefix, after.as_deref(), PAGE)).await?;
                Ok(Some((records, next.map(Some))))
            }
        });
        pages.map_ok(|records| futures::stream::iter(records.into_iter().map(Ok))).try_flatten().boxed()
    }

    fn usage(&self) -> Usage {
        Usage { entries: self.local.entries.load(Ordering::Relaxed), bytes: self.local.bytes.load(Ordering::Relaxed) }
    }

    fn flush(&self) -> StoreFuture<'_, ()> {
        self.blocking(|local| local.flush())
    }

    fn selected(&self) -> StoreFuture<'_, BTreeSet<String>> {
        self.blocking(|local| local.selected())
    }

    fn select(&self, keys: Vec<String>) -> StoreFuture<'_, ()> {
        self.blocking(move |local| local.select(keys))
    }

    fn write_doc<'a>(&'a self, name: &'a str, bytes: Bytes) -> StoreFuture<'a, ()> {
        let name = name.to_string();
        self.blocking(move |local| local.write_doc(&name, &bytes))
    }

    fn read_docs<'a>(&'a self, name: &'a str) -> StoreFuture<'a, Vec<Bytes>> {
        let name = name.to_string();
        self.blocking(move |local| Ok(local.read_doc(&name)?.into_iter().collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::{Class, Validators};

    fn meta_for(body: &[u8]) -> StoredMeta {
        StoredMeta {
            v: StoredMeta::VERSION,
            class: Class::Verified,
            kind: "package".into(),
            sha256: hex::encode(Sha256::digest(body)),
            len: body.len() as u64,
            upstream: Validators { etag: Some("\"e\"".into()), ..Validators::default() },
            fetched_at: 7,
            private: false,
            pinned: false,
        }
    }

    fn key(path: &str) -> CacheKey {
        CacheKey::parse(&format!("public/hexpm/{path}")).expect("a resource path")
    }

    async fn put(store: &DiskStore, key: &CacheKey, body: &'static [u8]) -> Result<(), StoreError> {
        store.put(key, &meta_for(body), Bytes::from_static(body)).await
    }

    fn usage(entries: u64, bytes: u64) -> Usage {
        Usage { entries, bytes }
    }

    #[tokio::test]
    async fn a_store_open_elsewhere_is_locked() {
        let dir = tempfile::tempdir().unwrap();
        let (first, _) = DiskStore::open(dir.path()).await.unwrap();
        let second = DiskStore::open(dir.path()).await.err().expect("sled allows one open Db per directory");
        assert!(second.is_locked(), "{second}");
        assert!(matches!(second, StoreError::Locked(_)), "{second:?}");
        drop(first);
        // Once the holder is gone, the same directory opens again.
        let (_again, _) = DiskStore::open(dir.path()).await.unwrap();
    }

    #[tokio::test]
    async fn a_store_that_cannot_be_opened_is_not_locked() {
        // Not a directory where the index should be: an error, but nobody holds a lock.
        let other = tempfile::tempdir().unwrap();
        std::fs::write(other.path().join("index"), b"not a directory").unwrap();
        let err = DiskStore::open(other.path()).await.err().expect("the index cannot be opened");
        assert!(!err.is_locked(), "{err}");
        let err = StoreError::Damaged("a lock file is locked".into());
        assert!(!err.is_locked(), "the text of an error does not make it a lock");
    }

    #[tokio::test]
    async fn put_get_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let body = b"registry bytes";
        {
            let (store, _) = DiskStore::open(dir.path()).await.unwrap();
            put(&store, &key("packages/a"), body).await.unwrap();
            store.flush().await.unwrap();
        }
        let (store, sweep) = DiskStore::open(dir.path()).await.unwrap();
        assert_eq!(sweep, Sweep::default());
        let (meta, got) = store.get(&key("packages/a")).await.unwrap().unwrap();
        assert_eq!(&got[..], body);
        assert_eq!(meta, meta_for(body));
        assert_eq!(store.head(&key("packages/a")).await.unwrap(), Some(meta_for(body)));
        assert_eq!(store.head(&key("packages/b")).await.unwrap(), None);
        assert_eq!(store.usage(), usage(1, body.len() as u64));
    }

    #[tokio::test]
    async fn replacing_an_entry_removes_the_old_body() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = DiskStore::open(dir.path()).await.unwrap();
        put(&store, &key("names"), b"one").await.unwrap();
        put(&store, &key("names"), b"two!").await.unwrap();
        assert_eq!(store.usage(), usage(1, 4));
        let blobs: usize = fs::read_dir(dir.path().join("blobs"))
            .unwrap()
            .map(|d| fs::read_dir(d.unwrap().path()).unwrap().count())
            .sum();
        assert_eq!(blobs, 1);
    }

    #[tokio::test]
    async fn flipped_bit_is_detected_and_the_entry_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = DiskStore::open(dir.path()).await.unwrap();
        let tarball = key("tarballs/a-1.0.0.tar");
        put(&store, &tarball, b"tarball bytes").await.unwrap();
        let path = store.local.blob_path(&tarball, &meta_for(b"tarball bytes").sha256);
        let mut damaged = fs::read(&path).unwrap();
        damaged[3] ^= 0x10;
        fs::write(&path, damaged).unwrap();
        assert!(matches!(store.get(&tarball).await, Err(StoreError::Damaged(_))));
        assert!(store.get(&tarball).await.unwrap().is_none());
        assert_eq!(store.usage(), usage(0, 0));
    }

    #[tokio::test]
    async fn sweep_cleans_what_a_crash_left() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (store, _) = DiskStore::open(dir.path()).await.unwrap();
            put(&store, &key("packages/a"), b"a").await.unwrap();
            put(&store, &key("packages/b"), b"bb").await.unwrap();
            // A crash between rename and index insert leaves an orphan blob...
            let orphan = store.local.blob_path(&key("packages/c"), &meta_for(b"c").sha256);
            fs::create_dir_all(orphan.parent().unwrap()).unwrap();
            fs::write(orphan, b"c").unwrap();
            // ...a crash during the write leaves a temp file...
            fs::write(dir.path().join("tmp").join("123-0"), b"half").unwrap();
            // ...and a lost or truncated blob leaves a dangling record.
            fs::remove_file(store.local.blob_path(&key("packages/b"), &meta_for(b"bb").sha256)).unwrap();
            store.flush().await.unwrap();
        }
        let (store, sweep) = DiskStore::open(dir.path()).await.unwrap();
        assert_eq!(sweep, Sweep { temp_files: 1, orphan_blobs: 1, dangling_records: 1 });
        assert_eq!(store.usage(), usage(1, 1));
        assert!(store.get(&key("packages/a")).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn a_read_only_copy_reads_in_place_and_refuses_writes() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (store, _) = DiskStore::open(dir.path()).await.unwrap();
            put(&store, &key("packages/a"), b"a").await.unwrap();
            store.select(vec!["public/hexpm/packages/a".into()]).await.unwrap();
            store.flush().await.unwrap();
        }
        let store = DiskStore::open_read_only(dir.path()).await.unwrap();
        let scratch = store.local.scratch.clone().unwrap();
        assert_eq!(store.get(&key("packages/a")).await.unwrap().unwrap().1, &b"a"[..]);
        assert_eq!(store.usage(), usage(1, 1));
        assert_eq!(store.selected().await.unwrap().len(), 1);
        assert!(put(&store, &key("packages/b"), b"b").await.is_err());
        assert!(store.remove(&key("packages/a")).await.is_err());
        assert!(store.select(vec!["public/hexpm/packages/b".into()]).await.is_err());
        drop(store);
        assert!(!scratch.exists(), "the private index copy is removed");
    }

    #[tokio::test]
    async fn update_meta_refuses_a_different_body() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = DiskStore::open(dir.path()).await.unwrap();
        put(&store, &key("names"), b"one").await.unwrap();
        let mut newer = meta_for(b"one");
        newer.fetched_at = 99;
        store.update_meta(&key("names"), &newer).await.unwrap();
        assert_eq!(store.get(&key("names")).await.unwrap().unwrap().0.fetched_at, 99);
        let mut wrong = meta_for(b"two");
        wrong.fetched_at = 100;
        store.update_meta(&key("names"), &wrong).await.unwrap();
        assert_eq!(store.get(&key("names")).await.unwrap().unwrap().0.fetched_at, 99);
    }

    #[tokio::test]
    async fn list_by_prefix_and_remove() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = DiskStore::open(dir.path()).await.unwrap();
        put(&store, &key("packages/a"), b"a").await.unwrap();
        put(&store, &CacheKey::parse("public/corp/packages/a").unwrap(), b"a").await.unwrap();
        assert_eq!(store.list_all("public/hexpm/").await.unwrap().len(), 1);
        assert_eq!(store.list_all("public/").await.unwrap().len(), 2);
        store.remove(&key("packages/a")).await.unwrap();
        assert_eq!(store.list_all("public/hexpm/").await.unwrap().len(), 0);
        assert_eq!(store.usage(), usage(1, 1));
    }

    #[tokio::test]
    async fn a_listing_longer_than_a_page_comes_whole_in_key_order() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = DiskStore::open(dir.path()).await.unwrap();
        // Pages end exactly at the prefix's end, one record after it and one before it.
        let count = 2 * PAGE + 1;
        for i in 0..count {
            put(&store, &key(&format!("packages/p{i:05}")), b"p").await.unwrap();
        }
        put(&store, &key("names"), b"n").await.unwrap();
        put(&store, &key("versions"), b"v").await.unwrap();
        let listed = store.list_all("public/hexpm/packages/").await.unwrap();
        let names: Vec<String> = listed.iter().map(|(k, _)| k.to_string()).collect();
        let expected: Vec<String> = (0..count).map(|i| format!("public/hexpm/packages/p{i:05}")).collect();
        assert_eq!(names, expected);
        assert_eq!(store.list_all("public/").await.unwrap().len(), count + 2);
        assert!(store.list_all("private/").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn the_selection_grows_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (store, _) = DiskStore::open(dir.path()).await.unwrap();
            assert!(store.selected().await.unwrap().is_empty());
            store.select(vec!["a".into()]).await.unwrap();
            store.select(vec!["b".into(), "a".into()]).await.unwrap();
        }
        let (store, _) = DiskStore::open(dir.path()).await.unwrap();
        assert_eq!(store.selected().await.unwrap().into_iter().collect::<Vec<_>>(), vec!["a", "b"]);
        // The file's format: `{"keys": [...]}`.
        let file: serde_json::Value =
            serde_json::from_slice(&fs::read(dir.path().join(SELECTION_FILE)).unwrap()).unwrap();
        assert_eq!(file, serde_json::json!({"keys": ["a", "b"]}));
        // A damaged selection is an error, not an empty selection.
        fs::write(dir.path().join(SELECTION_FILE), b"{\"keys\": [").unwrap();
        assert!(matches!(store.selected().await, Err(StoreError::Damaged(_))));
        assert!(store.select(vec!["c".into()]).await.is_err());
    }

    #[tokio::test]
    async fn keys_selected_in_batches_are_merged_in_order_into_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = DiskStore::open(dir.path()).await.unwrap();
        let mut model = BTreeSet::new();
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for batch in 0..12 {
            let keys: Vec<String> = (0..40)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    format!("public/hexpm/tarballs/p{}-1.0.{}.tar", state % 97, batch % 3)
                })
                .collect();
            model.extend(keys.iter().cloned());
            store.select(keys).await.unwrap();
            let text = fs::read_to_string(dir.path().join(SELECTION_FILE)).unwrap();
            let file: SelectionFile = serde_json::from_str(&text).unwrap();
            assert_eq!(file.keys, model, "batch {batch}");
            let listed: Vec<String> = serde_json::from_str::<serde_json::Value>(&text).unwrap()["keys"]
                .as_array()
                .unwrap()
                .iter()
                .map(|k| k.as_str().unwrap().to_string())
                .collect();
            assert_eq!(listed, model.iter().cloned().collect::<Vec<_>>(), "written in order, once each");
        }
        // Nothing new: the file is not written again.
        let before = fs::metadata(dir.path().join(SELECTION_FILE)).unwrap().modified().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        store.select(model.iter().take(5).cloned().collect()).await.unwrap();
        assert_eq!(fs::metadata(dir.path().join(SELECTION_FILE)).unwrap().modified().unwrap(), before);
        // A file out of order (not as the store writes it) is read whole and written sorted;
        // other fields are ignored as before.
        fs::write(dir.path().join(SELECTION_FILE), br#"{"note": [1, {"x": 2}], "keys": ["c", "a", "c"]}"#).unwrap();
        store.select(vec!["b".into(), "d".into()]).await.unwrap();
        assert_eq!(store.selected().await.unwrap().into_iter().collect::<Vec<_>>(), ["a", "b", "c", "d"]);
        let text = fs::read_to_string(dir.path().join(SELECTION_FILE)).unwrap();
        assert_eq!(text, "{\n  \"keys\": [\n    \"a\",\n    \"b\",\n    \"c\",\n    \"d\"\n  ]\n}\n");
        // A key that is not a string, or a second list: damaged, and left as it is.
        for damaged in [&br#"{"keys": ["a", 3]}"#[..], br#"{"keys": ["a"], "keys": ["b"]}"#, br#"{"key": []}"#] {
            fs::write(dir.path().join(SELECTION_FILE), damaged).unwrap();
            assert!(matches!(store.select(vec!["z".into()]).await, Err(StoreError::Damaged(_))));
            assert_eq!(fs::read(dir.path().join(SELECTION_FILE)).unwrap(), damaged);
        }
    }

    /// The blocking work of every operation runs off the runtime's threads: in a
    /// current-thread runtime, the thread running the runtime is marked, and `blocking_work`
    /// fails there.
    #[test]
    fn no_operation_blocks_the_runtime_thread() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        RUNTIME_THREAD.with(|marked| marked.set(true));
        let dir = tempfile::tempdir().unwrap();
        runtime.block_on(async {
            let (store, _) = DiskStore::open(dir.path()).await.unwrap();
            let k = key("packages/a");
            put(&store, &k, b"a").await.unwrap();
            assert!(store.get(&k).await.unwrap().is_some());
            assert!(store.head(&k).await.unwrap().is_some());
            store.update_meta(&k, &meta_for(b"a")).await.unwrap();
            assert_eq!(store.list_all("public/").await.unwrap().len(), 1);
            store.select(vec![k.to_string()]).await.unwrap();
            assert_eq!(store.selected().await.unwrap().len(), 1);
            store.flush().await.unwrap();
            store.remove(&k).await.unwrap();
            drop(store);
            let read_only = DiskStore::open_read_only(dir.path()).await.unwrap();
            assert!(read_only.get(&k).await.unwrap().is_none());
        });
        // The mark itself works: the same work done in place fails.
        let (store, _) = runtime.block_on(DiskStore::open(dir.path())).unwrap();
        let in_place = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| store.local.flush()));
        RUNTIME_THREAD.with(|marked| marked.set(false));
        assert!(in_place.is_err(), "blocking work on the marked thread must fail");
    }
}
