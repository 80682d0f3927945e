//! The cache: keys, entries and the two tiers (memory in front of a persistent store).
//!
//! An [`Entry`] holds either a [`Verified`] body or a docs tarball (the one class with nothing to
//! verify against, kept apart as [`Content::Docs`]); there is no third way to build one, so the
//! cache holds nothing that skipped verification. The memory tier (`memory`) is a byte-bounded
//! moka cache of ready-to-serve entries. The persistent tier stores raw bytes and metadata
//! behind the async [`Store`] interface (`store`; the local backend is `disk`); what it returns
//! is *not* an entry: the mirror re-verifies it before it is served (a disk is not trusted more
//! than the network).

pub mod disk;
pub mod memory;
pub mod s3;
pub mod store;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::route::{Kind, Resource};
use crate::verify::{Body, Facts, Verified};

pub use disk::DiskStore;
pub use memory::MemoryTier;
pub use s3::S3Store;
pub use store::{Claim, Listing, NullStore, Purge, Store, StoreError, StoreFuture, Usage};

/// Where an entry lives in the cache.
///
/// Getting a key wrong is cache poisoning: two resources that may differ must never share a key.
/// A key therefore names the scope (private entries live in their own key space and are never
/// keyed by a client's token), the namespace the bytes were verified for (a configured
/// repository, or `hexpm` plus a hex.pm organization: `hexpm~ORG`) and the parsed resource. It is
/// rendered (`SCOPE/NAMESPACE/PATH`, the text the store and bundles use) and parsed here only.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CacheKey {
    /// The rendered key; first, so that keys order by their text.
    text: String,
    private: bool,
    namespace: String,
    resource: Resource,
}

impl CacheKey {
    /// `namespace` is a repository name, or `hexpm~ORG` for a hex.pm organization.
    pub fn new(namespace: &str, resource: &Resource, private: bool) -> Self {
        let scope = if private { "private" } else { "public" };
        CacheKey {
            text: format!("{scope}/{namespace}/{}", resource.path()),
            private,
            namespace: namespace.to_string(),
            resource: resource.clone(),
        }
    }

    /// The inverse of rendering: `SCOPE/NAMESPACE/PATH` with a known scope, a namespace that is a
    /// repository name or `hexpm~ORG`, and a path that is a repository resource written exactly
    /// as hexmirror writes it.
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.splitn(3, '/');
        let (scope, namespace, path) = (parts.next()?, parts.next()?, parts.next()?);
        let private = match scope {
            "public" => false,
            "private" => true,
            _ => return None,
        };
        let namespace_ok = match namespace.split_once('~') {
            Some((repo, org)) => repo == "hexpm" && crate::route::repo_name(org).is_ok(),
            None => crate::route::repo_name(namespace).is_ok(),
        };
        let segments: Vec<&str> = path.split('/').collect();
        let resource = Resource::parse(&segments).ok()?;
        (namespace_ok && resource.path() == path).then(|| CacheKey::new(namespace, &resource, private))
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn is_private(&self) -> bool {
        self.private
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn resource(&self) -> &Resource {
        &self.resource
    }

    /// The same resource in the other scope (`private` → `public` and back).
    pub fn with_scope(&self, private: bool) -> CacheKey {
        CacheKey::new(&self.namespace, &self.resource, private)
    }
}

impl std::fmt::Display for CacheKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// The bytes of an entry: verified, or a docs tarball (unverifiable, labelled as such).
#[derive(Debug, Clone)]
pub enum Content {
    Verified(Verified<Body>),
    Docs(Docs),
}

/// A docs tarball: the one kind of content with nothing to verify it against. It can be built
/// only for a docs resource, so no label (in the store, a bundle or a response) can turn a
/// registry file or a package tarball into unverified content.
#[derive(Debug, Clone)]
pub struct Docs(Bytes);

impl Docs {
    /// `Some` only when `resource` is `/docs/NAME-VERSION.tar.gz`.
    pub fn for_resource(resource: &Resource, bytes: Bytes) -> Option<Docs> {
        matches!(resource, Resource::Docs { .. }).then_some(Docs(bytes))
    }
}

impl Content {
    pub fn bytes(&self) -> &Bytes {
        match self {
            Content::Verified(v) => &v.get().bytes,
            Content::Docs(Docs(bytes)) => bytes,
        }
    }

    pub fn facts(&self) -> &Facts {
        static NONE: Facts = Facts::None;
        match self {
            Content::Verified(v) => &v.get().facts,
            Content::Docs(_) => &NONE,
        }
    }

    pub fn class(&self) -> Class {
        match self {
            Content::Verified(_) => Class::Verified,
            Content::Docs(_) => Class::Docs,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Class {
    Verified,
    Docs,
}

/// What the upstream said about an object, kept for revalidation and for serving.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Validators {
    pub etag: Option<String>,
    pub last_modified: Option<String>,
    pub cache_control: Option<String>,
    /// A detached signature the upstream sent with the object (registry v1, installs CSVs).
    #[serde(default)]
    pub signature: Option<String>,
}

/// A ready-to-serve cache entry.
#[derive(Debug, Clone)]
pub struct Entry {
    pub content: Content,
    pub kind: Kind,
    /// The strong ETag hexmirror serves: the body's sha256, quoted.
    pub etag: String,
    pub sha256: [u8; 32],
    pub upstream: Validators,
    /// Unix seconds of the last time the upstream confirmed this entry.
    pub fetched_at: u64,
    pub private: bool,
    pub pinned: bool,
    /// Unix milliseconds of the last time it was served or stored (for disk eviction).
    last_used: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Digests of the bytes that only some checks need, computed on first use: a check made on
    /// every hit hashes the bytes once per entry, not once per request.
    digests: std::sync::Arc<Digests>,
}

#[derive(Debug, Default)]
struct Digests {
    inner_checksum: std::sync::OnceLock<Option<[u8; 32]>>,
    sha512_hex: std::sync::OnceLock<String>,
}

impl Entry {
    /// Records that the entry was served now.
    pub fn touch(&self) {
        self.last_used.store(unix_now_millis(), std::sync::atomic::Ordering::Relaxed);
    }

    pub fn last_used(&self) -> u64 {
        self.last_used.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn new(content: Content, kind: Kind, upstream: Validators, fetched_at: u64, private: bool) -> Entry {
        let sha256: [u8; 32] = Sha256::digest(content.bytes()).into();
        Entry {
            etag: format!("\"{}\"", hex::encode(sha256)),
            content,
            kind,
            sha256,
            upstream,
            fetched_at,
            private,
            pinned: false,
            last_used: std::sync::Arc::new(std::sync::atomic::AtomicU64::new(unix_now_millis())),
            digests: Default::default(),
        }
    }

    /// The Hex inner checksum of a tarball's bytes (`None` when they are no Hex tarball).
    pub fn inner_checksum(&self) -> Option<[u8; 32]> {
        *self.digests.inner_checksum.get_or_init(|| crate::verify::inner_checksum(self.bytes()).ok())
    }

    /// The sha512 of the bytes, lower-case hex (what an installs list gives an archive).
    pub fn sha512_hex(&self) -> &str {
        self.digests.sha512_hex.get_or_init(|| hex::encode(sha2::Sha512::digest(self.bytes())))
    }

    pub fn bytes(&self) -> &Bytes {
        self.content.bytes()
    }

    /// The record written to the persistent tier beside the body.
    pub fn stored_meta(&self) -> StoredMeta {
        StoredMeta {
            v: StoredMeta::VERSION,
            class: self.content.class(),
            kind: self.kind.as_str().to_string(),
            sha256: hex::encode(self.sha256),
            len: self.bytes().len() as u64,
            upstream: self.upstream.clone(),
            fetched_at: self.fetched_at,
            private: self.private,
            pinned: self.pinned,
        }
    }
}

/// The persistent tier's record of an entry. `v` is the format version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredMeta {
    pub v: u32,
    pub class: Class,
    pub kind: String,
    pub sha256: String,
    pub len: u64,
    pub upstream: Validators,
    pub fetched_at: u64,
    pub private: bool,
    #[serde(default)]
    pub pinned: bool,
}

impl StoredMeta {
    pub const VERSION: u32 = 1;
}

/// Milliseconds since the Unix epoch.
pub fn unix_now_millis() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_separate_scopes_and_namespaces() {
        let a = Resource::Package("a".into());
        let public = CacheKey::new("hexpm", &a, false);
        let private = CacheKey::new("hexpm", &a, true);
        let org = CacheKey::new("hexpm~acme", &a, false);
        assert_ne!(public, private);
        assert_ne!(public, org);
        assert!(private.is_private() && !public.is_private());
        assert_eq!(public.as_str(), "public/hexpm/packages/a");
        assert_eq!((org.namespace(), org.resource()), ("hexpm~acme", &a));
        assert_eq!(CacheKey::parse(public.as_str()), Some(public.clone()));
        assert_eq!(private.with_scope(false), public);
        for bad in [
            "other/x/names",
            "public//names",
            "public/hexpm/",
            "public/hexpm/packages/a/b",
            "public/hexpm/nonsense",
            "public/other~acme/names",
            "public/hexpm~/names",
            "public/hexpm/tarballs/a-1.0.0.tar/",
        ] {
            assert_eq!(CacheKey::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn docs_entries_carry_a_strong_etag_of_their_bytes() {
        let docs = Resource::Docs { name: "a".into(), version: "1.0.0".into() };
        assert!(Docs::for_resource(&Resource::Names, Bytes::from_static(b"abc")).is_none());
        let content = Content::Docs(Docs::for_resource(&docs, Bytes::from_static(b"abc")).unwrap());
        let e = Entry::new(content, Kind::Docs, Validators::default(), 1, false);
        assert_eq!(e.etag, "\"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\"");
        assert_eq!(e.stored_meta().class, Class::Docs);
    }
}
