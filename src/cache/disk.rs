//! The persistent tier: a sled index of [`StoredMeta`] records and bodies as files beside it.
//!
//! Layout under `data_dir`: `index/` (sled, page cache kept small), `blobs/XX/SHA256-KEYHASH`
//! (one file per entry, named by the sha256 of its bytes, so every read is checked against its
//! name) and `tmp/` (bodies being written). A write is crash-safe: temp file, fsync, rename into
//! `blobs/`, fsync the directory, then the index insert; until the index points at a blob, the
//! blob does not exist as far as readers know. `open` sweeps what a crash left: temp files,
//! blobs no index entry points at, and index entries whose blob is missing or damaged.
//!
//! The [`Store`] trait is the seam for other persistent tiers (a shared object store for several
//! replicas). A store returns raw bytes, never an `Entry`: callers re-verify what they read.
//!
//! sled holds an exclusive file lock on `index/db` while a store is open, so one process owns a
//! data directory. When the index cannot be opened, that lock is tried again: if it is held,
//! the error is [`StoreError::Locked`] (another hexmirror runs), otherwise `Index`.

use std::fs::{self, File};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use sha2::{Digest, Sha256};

use super::{CacheKey, StoredMeta};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("store index error: {0}")]
    Index(#[from] sled::Error),
    /// The index could not be opened because another process holds its file lock. The text is
    /// sled's, as for `Index`; what makes it this variant is the lock itself (`lock_is_held`).
    #[error("store index error: {0}")]
    Locked(sled::Error),
    #[error("store record is damaged: {0}")]
    Damaged(String),
    /// An entry expected in the store is not there (its write failed or it was evicted).
    #[error("not in the store: {0}")]
    NotStored(String),
}

impl StoreError {
    /// True when another process holds the store (a running server): never a reason to
    /// degrade, since two writers would corrupt it. Decided when the store was opened, by
    /// asking the operating system whether the index's lock is held, not by reading the text.
    pub fn is_locked(&self) -> bool {
        matches!(self, StoreError::Locked(_))
    }

    /// True when the disk is full: the mirror then keeps serving from memory and upstream.
    pub fn is_disk_full(&self) -> bool {
        match self {
            StoreError::Io(e) => e.raw_os_error() == Some(28) || e.kind() == ErrorKind::StorageFull,
            StoreError::Index(sled::Error::Io(e)) => e.raw_os_error() == Some(28) || e.kind() == ErrorKind::StorageFull,
            _ => false,
        }
    }
}

/// A persistent tier. Implementations must make `put` atomic: a reader sees the old record or
/// the new one, never a half-written body.
pub trait Store: Send + Sync + 'static {
    /// The record and body for `key`; a body that does not match its checksum is reported as
    /// `Damaged` and removed.
    fn get(&self, key: &CacheKey) -> Result<Option<(StoredMeta, Bytes)>, StoreError>;
    fn put(&self, key: &CacheKey, meta: &StoredMeta, body: &[u8]) -> Result<(), StoreError>;
    /// Replaces the record of an existing entry (after a revalidation, or to pin it).
    fn update_meta(&self, key: &CacheKey, meta: &StoredMeta) -> Result<(), StoreError>;
    fn remove(&self, key: &CacheKey) -> Result<(), StoreError>;
    /// Every record whose key starts with `prefix`.
    fn list(&self, prefix: &str) -> Result<Vec<(CacheKey, StoredMeta)>, StoreError>;
    /// (entries, body bytes).
    fn usage(&self) -> (u64, u64);
    /// Makes every completed `put` durable.
    fn flush(&self) -> Result<(), StoreError>;
}

/// The persistent tier used when the data directory cannot be used at all (read-only, missing
/// permissions): it stores nothing, so hexmirror serves from memory and the upstream.
pub struct NullStore {
    pub reason: String,
}

impl Store for NullStore {
    fn get(&self, _key: &CacheKey) -> Result<Option<(StoredMeta, Bytes)>, StoreError> {
        Ok(None)
    }
    fn put(&self, _key: &CacheKey, _meta: &StoredMeta, _body: &[u8]) -> Result<(), StoreError> {
        Err(StoreError::Damaged(format!("the store is unavailable: {}", self.reason)))
    }
    fn update_meta(&self, _key: &CacheKey, _meta: &StoredMeta) -> Result<(), StoreError> {
        Ok(())
    }
    fn remove(&self, _key: &CacheKey) -> Result<(), StoreError> {
        Ok(())
    }
    fn list(&self, _prefix: &str) -> Result<Vec<(CacheKey, StoredMeta)>, StoreError> {
        Ok(Vec::new())
    }
    fn usage(&self) -> (u64, u64) {
        (0, 0)
    }
    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// The default persistent tier: sled plus content-named files.
pub struct DiskStore {
    root: PathBuf,
    index: sled::Db,
    entries: AtomicU64,
    bytes: AtomicU64,
    tmp_seq: AtomicU64,
    /// Set for a store opened read-only: the index is a private copy in this scratch
    /// directory (removed on drop), and nothing under `root` is ever written.
    scratch: Option<PathBuf>,
}

impl Drop for DiskStore {
    fn drop(&mut self) {
        if let Some(scratch) = &self.scratch {
            let _ = fs::remove_dir_all(scratch);
        }
    }
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

impl DiskStore {
    /// Opens (creating when needed) the store under `root` and sweeps what a crash left.
    pub fn open(root: &Path) -> Result<(DiskStore, Sweep), StoreError> {
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

    fn with_index(root: &Path, index: sled::Db, scratch: Option<PathBuf>) -> DiskStore {
        DiskStore {
            root: root.to_path_buf(),
            index,
            entries: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            tmp_seq: AtomicU64::new(0),
            scratch,
        }
    }

    /// Opens a store on a read-only file system (an air-gapped site's mounted volume): sled
    /// cannot open its index there, so a private copy of the index is opened in the system's
    /// temporary directory; bodies are read in place. Every write fails.
    pub fn open_read_only(root: &Path) -> Result<DiskStore, StoreError> {
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
        let mut live = std::collections::HashSet::new();
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
                    live.insert(path);
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
                if !live.contains(&path) {
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
}

impl Store for DiskStore {
    fn get(&self, key: &CacheKey) -> Result<Option<(StoredMeta, Bytes)>, StoreError> {
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

    fn list(&self, prefix: &str) -> Result<Vec<(CacheKey, StoredMeta)>, StoreError> {
        let mut out = Vec::new();
        for item in self.index.scan_prefix(prefix.as_bytes()) {
            let (k, v) = item?;
            if let (Some(key), Ok(meta)) =
                (std::str::from_utf8(&k).ok().and_then(CacheKey::parse), Self::decode_meta(&v))
            {
                out.push((key, meta));
            }
        }
        Ok(out)
    }

    fn usage(&self) -> (u64, u64) {
        (self.entries.load(Ordering::Relaxed), self.bytes.load(Ordering::Relaxed))
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.index.flush()?;
        Ok(())
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

    #[test]
    fn a_store_open_elsewhere_is_locked() {
        let dir = tempfile::tempdir().unwrap();
        let (first, _) = DiskStore::open(dir.path()).unwrap();
        let second = DiskStore::open(dir.path()).err().expect("sled allows one open Db per directory");
        assert!(second.is_locked(), "{second}");
        assert!(matches!(second, StoreError::Locked(_)), "{second:?}");
        drop(first);
        // Once the holder is gone, the same directory opens again.
        let (_again, _) = DiskStore::open(dir.path()).unwrap();
    }

    #[test]
    fn a_store_that_cannot_be_opened_is_not_locked() {
        // Not a directory where the index should be: an error, but nobody holds a lock.
        let other = tempfile::tempdir().unwrap();
        std::fs::write(other.path().join("index"), b"not a directory").unwrap();
        let err = DiskStore::open(other.path()).err().expect("the index cannot be opened");
        assert!(!err.is_locked(), "{err}");
        let err = StoreError::Damaged("a lock file is locked".into());
        assert!(!err.is_locked(), "the text of an error does not make it a lock");
    }

    #[test]
    fn put_get_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let body = b"registry bytes";
        {
            let (store, _) = DiskStore::open(dir.path()).unwrap();
            store.put(&key("packages/a"), &meta_for(body), body).unwrap();
            store.flush().unwrap();
        }
        let (store, sweep) = DiskStore::open(dir.path()).unwrap();
        assert_eq!(sweep, Sweep::default());
        let (meta, got) = store.get(&key("packages/a")).unwrap().unwrap();
        assert_eq!(&got[..], body);
        assert_eq!(meta, meta_for(body));
        assert_eq!(store.usage(), (1, body.len() as u64));
    }

    #[test]
    fn replacing_an_entry_removes_the_old_body() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = DiskStore::open(dir.path()).unwrap();
        store.put(&key("names"), &meta_for(b"one"), b"one").unwrap();
        store.put(&key("names"), &meta_for(b"two!"), b"two!").unwrap();
        assert_eq!(store.usage(), (1, 4));
        let blobs: usize = fs::read_dir(dir.path().join("blobs"))
            .unwrap()
            .map(|d| fs::read_dir(d.unwrap().path()).unwrap().count())
            .sum();
        assert_eq!(blobs, 1);
    }

    #[test]
    fn flipped_bit_is_detected_and_the_entry_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = DiskStore::open(dir.path()).unwrap();
        let body = b"tarball bytes".to_vec();
        let meta = meta_for(&body);
        store.put(&key("tarballs/a-1.0.0.tar"), &meta, &body).unwrap();
        let path = store.blob_path(&key("tarballs/a-1.0.0.tar"), &meta.sha256);
        let mut damaged = fs::read(&path).unwrap();
        damaged[3] ^= 0x10;
        fs::write(&path, damaged).unwrap();
        assert!(matches!(store.get(&key("tarballs/a-1.0.0.tar")), Err(StoreError::Damaged(_))));
        assert!(store.get(&key("tarballs/a-1.0.0.tar")).unwrap().is_none());
        assert_eq!(store.usage(), (0, 0));
    }

    #[test]
    fn sweep_cleans_what_a_crash_left() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (store, _) = DiskStore::open(dir.path()).unwrap();
            store.put(&key("packages/a"), &meta_for(b"a"), b"a").unwrap();
            store.put(&key("packages/b"), &meta_for(b"bb"), b"bb").unwrap();
            // A crash between rename and index insert leaves an orphan blob...
            let orphan = store.blob_path(&key("packages/c"), &meta_for(b"c").sha256);
            fs::create_dir_all(orphan.parent().unwrap()).unwrap();
            fs::write(orphan, b"c").unwrap();
            // ...a crash during the write leaves a temp file...
            fs::write(dir.path().join("tmp").join("123-0"), b"half").unwrap();
            // ...and a lost or truncated blob leaves a dangling record.
            fs::remove_file(store.blob_path(&key("packages/b"), &meta_for(b"bb").sha256)).unwrap();
            store.flush().unwrap();
        }
        let (store, sweep) = DiskStore::open(dir.path()).unwrap();
        assert_eq!(sweep, Sweep { temp_files: 1, orphan_blobs: 1, dangling_records: 1 });
        assert_eq!(store.usage(), (1, 1));
        assert!(store.get(&key("packages/a")).unwrap().is_some());
    }

    #[test]
    fn a_read_only_copy_reads_in_place_and_refuses_writes() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (store, _) = DiskStore::open(dir.path()).unwrap();
            store.put(&key("packages/a"), &meta_for(b"a"), b"a").unwrap();
            store.flush().unwrap();
        }
        let store = DiskStore::open_read_only(dir.path()).unwrap();
        let scratch = store.scratch.clone().unwrap();
        assert_eq!(store.get(&key("packages/a")).unwrap().unwrap().1, &b"a"[..]);
        assert_eq!(store.usage(), (1, 1));
        assert!(store.put(&key("packages/b"), &meta_for(b"b"), b"b").is_err());
        assert!(store.remove(&key("packages/a")).is_err());
        drop(store);
        assert!(!scratch.exists(), "the private index copy is removed");
    }

    #[test]
    fn update_meta_refuses_a_different_body() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = DiskStore::open(dir.path()).unwrap();
        store.put(&key("names"), &meta_for(b"one"), b"one").unwrap();
        let mut newer = meta_for(b"one");
        newer.fetched_at = 99;
        store.update_meta(&key("names"), &newer).unwrap();
        assert_eq!(store.get(&key("names")).unwrap().unwrap().0.fetched_at, 99);
        let mut wrong = meta_for(b"two");
        wrong.fetched_at = 100;
        store.update_meta(&key("names"), &wrong).unwrap();
        assert_eq!(store.get(&key("names")).unwrap().unwrap().0.fetched_at, 99);
    }

    #[test]
    fn list_by_prefix_and_remove() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = DiskStore::open(dir.path()).unwrap();
        store.put(&key("packages/a"), &meta_for(b"a"), b"a").unwrap();
        store.put(&CacheKey::parse("public/corp/packages/a").unwrap(), &meta_for(b"a"), b"a").unwrap();
        assert_eq!(store.list("public/hexpm/").unwrap().len(), 1);
        assert_eq!(store.list("public/").unwrap().len(), 2);
        store.remove(&key("packages/a")).unwrap();
        assert_eq!(store.list("public/hexpm/").unwrap().len(), 0);
        assert_eq!(store.usage(), (1, 1));
    }
}
