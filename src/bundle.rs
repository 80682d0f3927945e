//! Bundles: the file an air-gapped site carries a mirror's content in with.
//!
//! This module owns the bundle *format*: writing a bundle ([`write()`]), reading one back and
//! checking its structure ([`read`], and [`read_manifest`] for inspection without holding the
//! objects), the manifest ([`manifest_for`]), and comparing a manifest with what a store holds
//! ([`diff`], [`incremental`]). It verifies structure and digests, not signatures: a bundle is a
//! container, and `hexmirror import` verifies every object with [`crate::verify`] (registry
//! signatures, tarball checksums against verified package records) before accepting anything.
//! It does no I/O beyond the reader or writer it is handed, reads no clock and knows no store.
//!
//! Invariant: [`read`] returns a [`Bundle`] only when every member of the archive is accounted
//! for: the manifest first, then exactly the objects it lists, each once, each a regular file
//! under a valid cache key with the listed size and sha256, the archive complete to its end
//! marker, and the manifest exactly what [`manifest_for`] computes from those objects. Anything
//! else is a [`BundleError`] that names the member. Hostile input is bounded by [`Limits`] and
//! never panics. The same objects always make the same bytes, whatever order they come in.
//!
//! # Format (version 1)
//!
//! A bundle is an uncompressed POSIX tar archive (ustar):
//!
//! ```text
//! MANIFEST.json                                      the manifest, always the first member
//! objects/private/hexpm~acme/packages/billing        then one member per object,
//! objects/public/hexpm/names                         named objects/<cache key>,
//! objects/public/hexpm/packages/phoenix              sorted by key (byte order)
//! objects/public/hexpm/tarballs/phoenix-1.7.0.tar
//! ```
//!
//! - Every member is a regular file with mode 0644, uid and gid 0, empty user and group names
//!   and mtime 0. A path too long for the ustar name and prefix fields is carried by a pax
//!   extended header (`x`) holding a single `path` record. There are no other extended headers,
//!   no links, directories or devices. The archive ends with two zero blocks.
//! - A cache key is `SCOPE/NAMESPACE/PATH`: `SCOPE` is `public` or `private`; `NAMESPACE` a
//!   repository name, or `hexpm~ORG` for a hex.pm organization; `PATH` a repository resource
//!   exactly as hexmirror serves it (`names`, `versions`, `packages/NAME`,
//!   `tarballs/NAME-VERSION.tar`, `docs/NAME-VERSION.tar.gz`, `policies/NAME`, `public_key`,
//!   `registry.ets.gz`, `registry.ets.gz.signed`, `installs/...`). Keys use only `A-Z a-z 0-9`,
//!   `_ - . + ~` and `/` between segments, have no empty, `.` or `..` segments, and are at most
//!   512 bytes long.
//! - An object's bytes are the bytes the upstream served, unchanged (gzipped signed registry
//!   files, tarballs as published), so they can be verified again on import.
//! - `MANIFEST.json` is UTF-8 JSON, pretty-printed with two-space indentation, keys sorted, and
//!   a final newline. It holds no timestamps. Shortened:
//!
//! ```json
//! {
//!   "base": { "objects": 42, "sha256": "<sha256 of the bundle this one follows>" },
//!   "created_by": "hexmirror 0.1.0",
//!   "format": 1,
//!   "objects": [
//!     { "key": "public/hexpm/tarballs/hexdemo_base-1.0.0.tar", "kind": "tarball",
//!       "pinned": false, "sha256": "a43f009f…", "size": 5120 }
//!   ],
//!   "packages": [
//!     { "key": "public/hexpm/tarballs/hexdemo_base-1.0.0.tar", "licenses": ["Apache-2.0"],
//!       "name": "hexdemo_base", "outer_checksum": "a43f009f…", "repo": "hexpm",
//!       "size": 5120, "version": "1.0.0" }
//!   ],
//!   "totals": { "bytes": 5120, "objects": 1, "packages": 1 }
//! }
//! ```
//!
//! - `objects`: one entry per `objects/` member, sorted by key. `kind` is the resource kind the
//!   key names (`names`, `versions`, `package`, `tarball`, `docs`, `policy`, `public_key`,
//!   `registry_v1`, `installs`); `sha256` is the lowercase hex digest of the bytes; `size` their
//!   length; `pinned` whether the source mirror had the entry pinned.
//! - `packages`: one entry per tarball object, in key order. `repo` is the key's namespace,
//!   `outer_checksum` the tarball's sha256 (the registry's outer checksum of the release), and
//!   `licenses` the list in the tarball's `metadata.config`, as [`crate::hex_tarball::licenses`]
//!   reads it (empty when it cannot be read).
//! - `totals`: the number of objects, the sum of their sizes, the number of packages.
//! - `base` (incremental bundles only): the sha256 of the bundle file this one follows and that
//!   bundle's object count. An incremental bundle carries only the objects that are new or
//!   changed (bytes or pin) since its base; it never removes anything.
//!
//! A bundle's digest is the sha256 of the whole file. A change to anything above is a new format
//! number; readers refuse any format but 1 and 2, naming it.
//!
//! # Format 2
//!
//! Format 1 plus `first_seen` in the manifest (between `created_by` and `format`): when the
//! writing store first saw each release listed in a verified package record, as
//! `"NAMESPACE/NAME/VERSION": UNIX_SECONDS`, for the importing site's policy cooldown. A manifest
//! carries `first_seen` exactly when its format is 2; without first-seen times a writer makes
//! format 1, byte for byte. The times are not signed: they say what the bundle's writer says.
//! A bundle of either format may be carried as volumes (`crate::volume`).

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::io::{self, Read, Write};
use std::rc::Rc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::cache::CacheKey;
use crate::hex_tarball;
use crate::route::{self, Kind, Resource};

/// The bundle format this module writes for a manifest without first-seen times.
pub const FORMAT: u32 = 1;
/// The format of a manifest that carries first-seen times (otherwise the same as format 1).
pub const FORMAT_FIRST_SEEN: u32 = 2;
/// Most first-seen times a manifest may carry.
pub const MAX_FIRST_SEEN: usize = 2_000_000;

/// The name of the manifest member, the first in every bundle.
pub const MANIFEST_NAME: &str = "MANIFEST.json";

/// The directory the objects are stored under: `objects/<cache key>`.
pub const OBJECTS_DIR: &str = "objects/";

/// The longest cache key accepted, in bytes (well above any key a valid route produces).
pub const MAX_KEY_LEN: usize = 512;

/// What `created_by` says in bundles written by this build.
pub const CREATED_BY: &str = concat!("hexmirror ", env!("CARGO_PKG_VERSION"));

/// Largest pax extended header accepted (it holds one path record).
const MAX_PAX_BYTES: u64 = 2048;
/// Zero bytes accepted after the end-of-archive marker (tar record padding).
const MAX_TRAILER_BYTES: u64 = 64 << 10;
const BLOCK: u64 = 512;
/// The ustar name of the pax header written before a member with a long path.
const PAX_HEADER_NAME: &str = "PaxHeader";

/// One cached object: what [`write()`] takes and [`read`] returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    /// Cache key text, `scope/namespace/path` (see [`CacheKey`]).
    pub key: String,
    /// Resource kind of the key, as [`kind_of`] gives it (`tarball`, `package`, ...).
    pub kind: String,
    /// Whether the entry is pinned in the store it comes from.
    pub pinned: bool,
    /// The object's bytes, exactly as the upstream served them.
    pub bytes: Bytes,
}

/// The bundle an incremental bundle follows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BaseInfo {
    /// How many objects the base bundle holds.
    pub objects: u64,
    /// The base bundle's digest: sha256 of its file, lowercase hex.
    pub sha256: String,
}

impl BaseInfo {
    /// The base information for a bundle that follows the one with this manifest and digest.
    pub fn of(manifest: &Manifest, digest: &str) -> BaseInfo {
        BaseInfo { objects: manifest.totals.objects, sha256: digest.to_string() }
    }
}

/// `MANIFEST.json`. Fields are declared in alphabetical order, so the JSON keys are sorted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Present in an incremental bundle: the bundle it follows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<BaseInfo>,
    /// `hexmirror VERSION` of the writer.
    pub created_by: String,
    /// Format 2: when the writing store first saw each release listed in a verified package
    /// record (`NAMESPACE/NAME/VERSION` to Unix seconds), for the importing site's cooldown.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub first_seen: BTreeMap<String, u64>,
    /// [`FORMAT`], or [`FORMAT_FIRST_SEEN`] when `first_seen` is not empty.
    pub format: u32,
    /// Every object, sorted by key.
    pub objects: Vec<ObjectInfo>,
    /// One entry per tarball object, in key order.
    pub packages: Vec<PackageInfo>,
    pub totals: Totals,
}

/// The manifest's record of one object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectInfo {
    pub key: String,
    pub kind: String,
    pub pinned: bool,
    /// Lowercase hex sha256 of the bytes.
    pub sha256: String,
    pub size: u64,
}

/// The manifest's record of one package release (one tarball object).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackageInfo {
    /// The tarball's cache key.
    pub key: String,
    /// Licences from the tarball's `metadata.config`; empty when it cannot be read.
    pub licenses: Vec<String>,
    pub name: String,
    /// The tarball's sha256, lowercase hex.
    pub outer_checksum: String,
    /// The key's namespace: a repository name, or `hexpm~ORG`.
    pub repo: String,
    pub size: u64,
    pub version: String,
}

/// Counts over the objects of this bundle.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Totals {
    /// Sum of the object sizes.
    pub bytes: u64,
    pub objects: u64,
    pub packages: u64,
}

/// What a reader accepts. A bundle over any limit is refused before its objects are read.
///
/// [`read`] holds every object in memory, so `max_total_bytes` bounds its memory use;
/// [`read_manifest`] holds one object at a time. The manifest itself may be at most
/// 64 KiB + 8 KiB per allowed object, and never more than 512 MiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest single object, in bytes.
    pub max_object_bytes: u64,
    /// Largest sum of all object sizes, in bytes.
    pub max_total_bytes: u64,
    /// Most objects in one bundle.
    pub max_objects: u64,
}

impl Default for Limits {
    /// 64 MiB per object (hexmirror's largest default body limit), 8 GiB in all, a million objects.
    fn default() -> Self {
        Limits { max_object_bytes: 64 << 20, max_total_bytes: 8 << 30, max_objects: 1_000_000 }
    }
}

impl Limits {
    fn max_manifest_bytes(&self) -> u64 {
        self.max_objects.saturating_mul(8 << 10).saturating_add(64 << 10).min(512 << 20)
    }
}

/// A bundle that passed [`read`]: its manifest, its objects in key order, and its digest.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub manifest: Manifest,
    pub objects: Vec<Object>,
    /// sha256 of the whole bundle file, lowercase hex.
    pub digest: String,
}

/// How a manifest compares with a store ([`diff`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diff {
    /// Keys the store does not hold, in key order.
    pub new: Vec<String>,
    /// Keys the store holds with other bytes (another sha256), in key order.
    pub changed: Vec<String>,
    /// How many objects the store already holds with the same sha256.
    pub same: usize,
}

/// Why a bundle could not be written or was refused. Members are named by their path in the
/// archive, objects by their cache key.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("cannot write bundle: {0}")]
    Write(#[source] io::Error),
    #[error("cannot read bundle {context}: {source}")]
    Read {
        context: String,
        #[source]
        source: io::Error,
    },
    /// The tar reader's own text can quote the bytes it choked on: shown printable and short.
    #[error("not a valid tar archive {context} (not a hexmirror bundle?): {}", printable(source))]
    Tar {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("bundle is truncated {context}")]
    Truncated { context: String },
    #[error("unexpected data after the end of the archive at byte {offset}")]
    TrailingData { offset: u64 },
    #[error("bundle has no {MANIFEST_NAME}")]
    ManifestMissing,
    #[error("first member is {found:?}, expected {MANIFEST_NAME}")]
    ManifestNotFirst { found: String },
    #[error("invalid {MANIFEST_NAME}: {reason}")]
    ManifestInvalid { reason: String },
    #[error("unsupported bundle format {found} (this hexmirror reads formats {FORMAT} and {FORMAT_FIRST_SEEN})")]
    UnsupportedFormat { found: u64 },
    #[error("base bundle digest {sha256:?} is not a sha256 (64 lowercase hex digits)")]
    InvalidBase { sha256: String },
    #[error("invalid object key {key:?}: {reason}")]
    InvalidKey { key: String, reason: &'static str },
    #[error("object {key:?} has kind {found:?}, its key names a {expected:?}")]
    WrongKind { key: String, expected: &'static str, found: String },
    #[error("object key {key:?} appears more than once")]
    DuplicateKey { key: String },
    #[error("member {member:?} is a {kind}, only regular files belong in a bundle")]
    NotRegular { member: String, kind: String },
    #[error("unsupported pax header {context}: {reason} (bundles use pax only for one long path)")]
    PaxHeader { context: String, reason: &'static str },
    #[error("unexpected member {member:?}: a bundle holds only {MANIFEST_NAME} and objects/<key>")]
    UnexpectedMember { member: String },
    #[error("member {member:?} appears more than once")]
    DuplicateMember { member: String },
    #[error("member {member:?} is not listed in the manifest")]
    Unlisted { member: String },
    #[error("object {key:?} is listed in the manifest but missing from the bundle")]
    Missing { key: String },
    #[error("member {member:?} is {found} bytes, the manifest lists {expected}")]
    SizeMismatch { member: String, expected: u64, found: u64 },
    #[error("member {member:?} has sha256 {found}, the manifest lists {expected}")]
    DigestMismatch { member: String, expected: String, found: String },
    #[error("{what} is {size} bytes, over the limit of {limit}")]
    TooLarge { what: String, size: u64, limit: u64 },
    #[error("bundle lists {count} objects, over the limit of {limit}")]
    TooManyObjects { count: u64, limit: u64 },
}

/// The resource kind a cache key names (`tarball`, `package`, ...), or why it is not a valid
/// bundle key: it must parse as a [`CacheKey`], use only safe characters, and name a
/// repository resource exactly as hexmirror serves it.
pub fn kind_of(key: &str) -> Result<&'static str, BundleError> {
    let invalid = |reason| BundleError::InvalidKey { key: key.to_string(), reason };
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(invalid("empty or longer than 512 bytes"));
    }
    if !key.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'_' | b'-' | b'.' | b'+' | b'~')) {
        return Err(invalid("only letters, digits, `_ - . + ~` and `/` are allowed"));
    }
    if key.split('/').any(|s| s.is_empty() || s == "." || s == "..") {
        return Err(invalid("empty, `.` or `..` segment"));
    }
    // CacheKey::parse decides; the layers before it only say which part is wrong.
    let mut parts = key.splitn(3, '/');
    let (scope, namespace, path) = (parts.next(), parts.next(), parts.next());
    let (Some("public" | "private"), Some(namespace), Some(path)) = (scope, namespace, path) else {
        return Err(invalid("not scope/namespace/path with scope public or private"));
    };
    let namespace_ok = match namespace.split_once('~') {
        Some((repo, org)) => repo == "hexpm" && route::repo_name(org).is_ok(),
        None => route::repo_name(namespace).is_ok(),
    };
    if !namespace_ok {
        return Err(invalid("namespace is not a repository name or hexpm~ORG"));
    }
    let segments: Vec<&str> = path.split('/').collect();
    if Resource::parse(&segments).is_err() {
        return Err(invalid("path is not a repository resource"));
    }
    match CacheKey::parse(key) {
        Some(key) => Ok(key.resource().kind().as_str()),
        None => Err(invalid("path is not a repository resource")),
    }
}

/// The manifest of a bundle holding `objects` (in any order), following `base` if given.
///
/// Objects are listed in key order; every object whose kind is `tarball` also gets a package
/// entry with the licences of its `metadata.config`. Keys are not validated here ([`write()`]
/// refuses invalid or duplicate keys).
pub fn manifest_for(objects: &[Object], base: Option<&BaseInfo>) -> Manifest {
    manifest_with(objects, base, CREATED_BY)
}

fn manifest_with(objects: &[Object], base: Option<&BaseInfo>, created_by: &str) -> Manifest {
    let mut entries = Vec::with_capacity(objects.len());
    for object in objects {
        entries.push(describe_object(&object.key, &object.kind, object.pinned, &object.bytes));
    }
    manifest_of(entries, base, created_by)
}

/// What the manifest says of one object (and of its release, for a tarball), computed from its
/// bytes: a streaming writer keeps this and drops the bytes ([`manifest_of`], [`Writer`]).
pub fn describe_object(key: &str, kind: &str, pinned: bool, bytes: &[u8]) -> (ObjectInfo, Option<PackageInfo>) {
    let sha256 = hex::encode(Sha256::digest(bytes));
    let package = match kind == Kind::Tarball.as_str() {
        true => package_for(key, &sha256, bytes),
        false => None,
    };
    let info = ObjectInfo { key: key.to_string(), kind: kind.to_string(), pinned, sha256, size: bytes.len() as u64 };
    (info, package)
}

/// The manifest of a bundle whose objects [`describe_object`] described (in any order),
/// written by this build; the same as [`manifest_for`] gives for the objects themselves.
pub fn manifest_of(
    entries: Vec<(ObjectInfo, Option<PackageInfo>)>,
    base: Option<&BaseInfo>,
    created_by: &str,
) -> Manifest {
    let mut infos = Vec::with_capacity(entries.len());
    let mut packages = Vec::new();
    for (info, package) in entries {
        packages.extend(package);
        infos.push(info);
    }
    manifest_from_parts(infos, packages, base, created_by)
}

/// The manifest of objects described by [`describe_object`] and the package entries of its
/// tarballs, each list in any order (what a streaming writer collects: no pairs kept).
pub fn manifest_from_parts(
    mut infos: Vec<ObjectInfo>,
    mut packages: Vec<PackageInfo>,
    base: Option<&BaseInfo>,
    created_by: &str,
) -> Manifest {
    infos.sort_by(|a, b| a.key.cmp(&b.key));
    packages.sort_by(|a, b| a.key.cmp(&b.key));
    infos.shrink_to_fit();
    packages.shrink_to_fit();
    let totals = Totals {
        bytes: infos.iter().map(|o| o.size).sum(),
        objects: infos.len() as u64,
        packages: packages.len() as u64,
    };
    Manifest {
        base: base.cloned(),
        created_by: created_by.to_string(),
        first_seen: BTreeMap::new(),
        format: FORMAT,
        objects: infos,
        packages,
        totals,
    }
}

/// Writes a bundle of `objects` (any order) to `out` and returns its digest: the sha256 of the
/// bytes written, lowercase hex. Refuses invalid keys, duplicate keys, a `kind` that is not the
/// one the key names, and a base whose digest is not a sha256, so that [`read`] accepts whatever
/// this writes. The same objects always give the same bytes.
pub fn write(objects: &[Object], base: Option<&BaseInfo>, out: impl Write) -> Result<String, BundleError> {
    write_with(objects, base, CREATED_BY, out)
}

fn write_with(
    objects: &[Object],
    base: Option<&BaseInfo>,
    created_by: &str,
    out: impl Write,
) -> Result<String, BundleError> {
    check_base(base)?;
    let mut sorted: Vec<&Object> = objects.iter().collect();
    sorted.sort_by(|a, b| a.key.cmp(&b.key));
    for object in &sorted {
        let expected = kind_of(&object.key)?;
        if object.kind != expected {
            return Err(BundleError::WrongKind { key: object.key.clone(), expected, found: object.kind.clone() });
        }
    }
    let mut writer = Writer::new(manifest_with(objects, base, created_by), out)?;
    for object in sorted {
        writer.append(&object.key, &object.bytes)?;
    }
    writer.finish()
}

/// A bundle written one object at a time: the manifest first (computed beforehand, for example
/// by [`manifest_of`] over a first pass that read and dropped every object), then each object
/// in the manifest's order, checked against the manifest as it is appended. Only one object is
/// held at a time, so a bundle of any size is written in the memory of its largest object.
/// The bytes are exactly those [`write()`] makes of the same objects.
pub struct Writer<W: Write> {
    builder: tar::Builder<HashingWriter<W>>,
    manifest: Manifest,
    next: usize,
}

/// Every object's kind follows from its key, and the keys are sorted without duplicates: what
/// the writer promises and the reader checks.
fn check_objects(objects: &[ObjectInfo]) -> Result<(), BundleError> {
    for (i, object) in objects.iter().enumerate() {
        let expected = kind_of(&object.key)?;
        if object.kind != expected {
            return Err(BundleError::WrongKind { key: object.key.clone(), expected, found: object.kind.clone() });
        }
        if i > 0 {
            let previous = &objects[i - 1].key;
            if *previous == object.key {
                return Err(BundleError::DuplicateKey { key: object.key.clone() });
            }
            if *previous > object.key {
                let reason = format!("objects are not sorted by key: {:?} after {previous:?}", object.key);
                return Err(BundleError::ManifestInvalid { reason });
            }
        }
    }
    Ok(())
}

impl<W: Write> Writer<W> {
    /// Checks `manifest` (keys, kinds, order, base) and writes it as the first member.
    pub fn new(manifest: Manifest, out: W) -> Result<Writer<W>, BundleError> {
        check_base(manifest.base.as_ref())?;
        check_first_seen(&manifest).map_err(|reason| BundleError::ManifestInvalid { reason })?;
        check_objects(&manifest.objects)?;
        let mut builder = tar::Builder::new(HashingWriter { inner: out, hasher: Sha256::new() });
        // Serialized straight into the archive (twice: once to count its bytes for the member's
        // header), never held as text: a whole-repository manifest is tens of megabytes.
        let len = canonical_len(&manifest).map_err(BundleError::Write)?;
        append_member_with(&mut builder, MANIFEST_NAME, len, |out| write_canonical(&manifest, out))
            .map_err(BundleError::Write)?;
        Ok(Writer { builder, manifest, next: 0 })
    }

    /// The manifest being written.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Appends the next object of the manifest; its key, size and sha256 must be the listed ones
    /// (the source changed since the manifest was made, otherwise).
    pub fn append(&mut self, key: &str, bytes: &[u8]) -> Result<(), BundleError> {
        let Some(info) = self.manifest.objects.get(self.next) else {
            return Err(BundleError::Unlisted { member: format!("{OBJECTS_DIR}{key}") });
        };
        let member = format!("{OBJECTS_DIR}{key}");
        if info.key != key {
            return Err(BundleError::Missing { key: info.key.clone() });
        }
        if info.size != bytes.len() as u64 {
            return Err(BundleError::SizeMismatch { member, expected: info.size, found: bytes.len() as u64 });
        }
        let found = hex::encode(Sha256::digest(bytes));
        if info.sha256 != found {
            return Err(BundleError::DigestMismatch { member, expected: info.sha256.clone(), found });
        }
        append_member(&mut self.builder, &member, bytes).map_err(BundleError::Write)?;
        self.next += 1;
        Ok(())
    }

    /// Ends the archive once every listed object was appended; returns the bundle's digest.
    pub fn finish(self) -> Result<String, BundleError> {
        if let Some(info) = self.manifest.objects.get(self.next) {
            return Err(BundleError::Missing { key: info.key.clone() });
        }
        let mut writer = self.builder.into_inner().map_err(BundleError::Write)?;
        writer.flush().map_err(BundleError::Write)?;
        Ok(hex::encode(writer.hasher.finalize()))
    }
}

/// The length of the bundle file [`Writer`] makes of `manifest` (known before any object is
/// read: what volumes and a streamed download are sized by).
pub fn archive_len(manifest: &Manifest) -> Result<u64, BundleError> {
    let json_len = canonical_len(manifest).map_err(BundleError::Write)?;
    let padded = |n: u64| n.div_ceil(512) * 512;
    let member = |path: &str, len: u64| -> Result<u64, BundleError> {
        let fits = fixed_header(tar::EntryType::Regular, len).map_err(BundleError::Write)?.set_path(path).is_ok();
        let pax = if fits { 0 } else { 512 + padded(pax_record("path", path).len() as u64) };
        Ok(pax + 512 + padded(len))
    };
    let mut total = member(MANIFEST_NAME, json_len)? + 1024;
    for object in &manifest.objects {
        total += member(&format!("{OBJECTS_DIR}{}", object.key), object.size)?;
    }
    Ok(total)
}

/// The manifest's bytes as every writer produces them (and every reader requires them).
#[cfg(test)]
fn canonical_json(manifest: &Manifest) -> Result<Vec<u8>, serde_json::Error> {
    let mut json = Vec::new();
    write_canonical(manifest, &mut json).map_err(serde_json::Error::io)?;
    Ok(json)
}

/// Writes the manifest's canonical bytes (pretty-printed, keys sorted, a final newline).
fn write_canonical(manifest: &Manifest, out: &mut impl Write) -> io::Result<()> {
    let mut out = io::BufWriter::with_capacity(64 << 10, out);
    serde_json::to_writer_pretty(&mut out, manifest).map_err(io::Error::other)?;
    out.write_all(b"\n")?;
    out.flush()
}

/// The length of the manifest's canonical bytes, counted without keeping them.
fn canonical_len(manifest: &Manifest) -> io::Result<u64> {
    let mut counter = Counter(0);
    write_canonical(manifest, &mut counter)?;
    Ok(counter.0)
}

/// Counts what is written to it.
struct Counter(u64);

impl Write for Counter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn fixed_header(entry_type: tar::EntryType, size: u64) -> io::Result<tar::Header> {
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(entry_type);
    header.set_size(size);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_username("")?;
    header.set_groupname("")?;
    Ok(header)
}

fn append_member<W: Write>(builder: &mut tar::Builder<W>, path: &str, data: &[u8]) -> io::Result<()> {
    append_member_with(builder, path, data.len() as u64, |out| out.write_all(data))
}

/// Appends a member of `len` bytes that `write` writes (exactly that many) after its header:
/// its data need not be held anywhere.
fn append_member_with<W: Write>(
    builder: &mut tar::Builder<W>,
    path: &str,
    len: u64,
    write: impl FnOnce(&mut W) -> io::Result<()>,
) -> io::Result<()> {
    let mut header = fixed_header(tar::EntryType::Regular, len)?;
    if header.set_path(path).is_err() {
        // Too long for ustar's name and prefix fields: a pax header carries the path.
        let record = pax_record("path", path);
        let mut pax = fixed_header(tar::EntryType::XHeader, record.len() as u64)?;
        pax.set_path(PAX_HEADER_NAME)?;
        pax.set_cksum();
        builder.append(&pax, record.as_slice())?;
        // The ustar name is only what readers without pax support see: the file name, cut.
        let name = path.rsplit('/').next().unwrap_or(path);
        header = fixed_header(tar::EntryType::Regular, len)?;
        header.set_path(name.get(..100).unwrap_or(name))?;
    }
    header.set_cksum();
    let out = builder.get_mut();
    out.write_all(header.as_bytes())?;
    write(out)?;
    let padding = (BLOCK - len % BLOCK) % BLOCK;
    out.write_all(&[0u8; BLOCK as usize][..padding as usize])
}

/// One pax record: `LEN key=value\n`, where LEN counts the whole record including itself.
fn pax_record(key: &str, value: &str) -> Vec<u8> {
    let rest = key.len() + value.len() + 3;
    let mut len = rest + 1;
    while len != rest + len.to_string().len() {
        len = rest + len.to_string().len();
    }
    format!("{len} {key}={value}\n").into_bytes()
}

/// Reads a bundle, checks it completely (see the module invariant) and returns its manifest,
/// its objects in key order and its digest. The objects still have to be verified before use.
pub fn read(input: impl Read, limits: &Limits) -> Result<Bundle, BundleError> {
    let mut objects = Vec::new();
    let (manifest, digest) = scan(input, limits, &|_| true, &mut |object| {
        objects.push(object);
        Ok(())
    })?;
    objects.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(Bundle { manifest, objects, digest })
}

/// Reads a bundle with the same checks as [`read`], handing each object whose key `want`
/// accepts to `visit` as soon as its size and digest are checked, in archive order (key order
/// in every bundle hexmirror writes, but a reader does not require it),
/// without keeping it: memory holds one object at a time whatever the bundle's size. An error
/// from `visit` stops the reading and is returned. The bundle is whole and valid only when this
/// returns `Ok`: whatever `visit` did with the objects before must be undone otherwise.
pub fn read_each(
    input: impl Read,
    limits: &Limits,
    want: &dyn Fn(&str) -> bool,
    visit: &mut dyn FnMut(Object) -> Result<(), BundleError>,
) -> Result<(Manifest, String), BundleError> {
    scan(input, limits, want, visit)
}

/// Reads a bundle with the same checks as [`read`] but keeps only the manifest (objects are
/// hashed as they stream past, one tarball at a time in memory for its licences). Returns the
/// manifest and the bundle's digest.
pub fn read_manifest(input: impl Read, limits: &Limits) -> Result<(Manifest, String), BundleError> {
    scan(input, limits, &|_| false, &mut |_| Ok(()))
}

/// Compares a manifest with a store's `key -> sha256 hex` map.
pub fn diff(manifest: &Manifest, store: &BTreeMap<String, String>) -> Diff {
    let mut diff = Diff::default();
    for object in &manifest.objects {
        match store.get(&object.key) {
            None => diff.new.push(object.key.clone()),
            Some(sha) if !sha.eq_ignore_ascii_case(&object.sha256) => diff.changed.push(object.key.clone()),
            Some(_) => diff.same += 1,
        }
    }
    diff
}

/// Keeps the objects an incremental bundle following `base` must carry: those whose key is not
/// in `base`, whose bytes differ (sha256), or whose pin changed. Order is kept.
pub fn incremental(objects: Vec<Object>, base: &Manifest) -> Vec<Object> {
    let known: HashMap<&str, &ObjectInfo> = base.objects.iter().map(|o| (o.key.as_str(), o)).collect();
    objects
        .into_iter()
        .filter(|object| match known.get(object.key.as_str()) {
            None => true,
            Some(info) => info.pinned != object.pinned || info.sha256 != hex::encode(Sha256::digest(&object.bytes)),
        })
        .collect()
}

/// Why a store does not seem to hold what the incremental bundle `manifest` builds on, or
/// `None` when it does (or the bundle is not incremental). The store is described by how many
/// entries sync and import selected there (`selected`: importing a bundle selects every object
/// it carries, and nothing shrinks the selection) and by whether it holds a key (`holds`). It
/// lacks the base when it selected fewer entries than the base alone carries, or when a tarball
/// of the bundle has its package record neither in the bundle nor in the store.
pub fn missing_base(manifest: &Manifest, selected: u64, holds: impl Fn(&str) -> bool) -> Option<String> {
    let base = manifest.base.as_ref()?;
    if selected < base.objects {
        return Some(format!(
            "the store holds {selected} entries selected by sync or import, the base bundle alone {}",
            base.objects
        ));
    }
    let carried: std::collections::HashSet<&str> = manifest.objects.iter().map(|o| o.key.as_str()).collect();
    manifest.packages.iter().find_map(|package| {
        let record = |scope: &str| format!("{scope}/{}/packages/{}", package.repo, package.name);
        let found = ["public", "private"]
            .iter()
            .map(|scope| record(scope))
            .any(|key| carried.contains(key.as_str()) || holds(&key));
        (!found).then(|| {
            format!("neither the bundle nor the store has the package record of {} for {}", package.name, package.key)
        })
    })
}

// --- reading -------------------------------------------------------------------------------

/// Where the reader is: bytes consumed so far and whether the input has ended.
#[derive(Default)]
struct Position {
    offset: Cell<u64>,
    eof: Cell<bool>,
}

/// Hashes and counts everything read through it, so the digest covers the whole file.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    position: Rc<Position>,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() {
            self.position.eof.set(true);
        }
        self.hasher.update(&buf[..n]);
        self.position.offset.set(self.position.offset.get() + n as u64);
        Ok(n)
    }
}

struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The manifest as read, with which of its objects and package entries were met.
struct Listed {
    /// Its objects sorted by key (checked), so a member is found by binary search.
    manifest: Manifest,
    seen: Vec<bool>,
    /// Which of the manifest's packages (sorted by key, checked) a tarball matched.
    packages_seen: Vec<bool>,
}

impl Listed {
    fn index(&self, key: &str) -> Option<usize> {
        self.manifest.objects.binary_search_by(|o| o.key.as_str().cmp(key)).ok()
    }
}

fn scan(
    input: impl Read,
    limits: &Limits,
    want: &dyn Fn(&str) -> bool,
    visit: &mut dyn FnMut(Object) -> Result<(), BundleError>,
) -> Result<(Manifest, String), BundleError> {
    let position = Rc::new(Position::default());
    let reader = HashingReader { inner: input, hasher: Sha256::new(), position: position.clone() };
    let mut archive = tar::Archive::new(reader);
    let mut listed: Option<Listed> = None;
    // The last complete member, for error messages, and where its data (padded) ends.
    let mut last: Option<String> = None;
    let mut last_end = 0u64;
    let context = |last: &Option<String>| match last {
        Some(member) => format!("after member {member:?}"),
        None => "at its start".to_string(),
    };
    let failure = |last: &Option<String>, source: io::Error| {
        if position.eof.get() {
            BundleError::Truncated { context: context(last) }
        } else if source.kind() == io::ErrorKind::Other || source.kind() == io::ErrorKind::InvalidData {
            BundleError::Tar { context: context(last), source }
        } else {
            BundleError::Read { context: context(last), source }
        }
    };
    {
        // Raw mode: extension headers come to us as members, so nothing is read unchecked.
        let entries = archive.entries().map_err(|e| failure(&None, e))?.raw(true);
        let mut pax_path: Option<String> = None;
        for entry in entries {
            let mut entry = entry.map_err(|e| failure(&last, e))?;
            let entry_type = entry.header().entry_type();
            let size = entry.size();
            if entry_type.is_pax_local_extensions() {
                if pax_path.is_some() {
                    let reason = "a second pax header in a row";
                    return Err(BundleError::PaxHeader { context: context(&last), reason });
                }
                pax_path = Some(read_pax_path(&mut entry, size, &last, &failure)?);
                continue;
            }
            let path = match pax_path.take() {
                Some(path) => path,
                None => String::from_utf8_lossy(&entry.path_bytes()).into_owned(),
            };
            if !entry_type.is_file() {
                return Err(BundleError::NotRegular { member: path, kind: describe(entry_type) });
            }
            let end = entry.raw_file_position().saturating_add(size).saturating_add(BLOCK - 1) / BLOCK * BLOCK;
            match &mut listed {
                None => {
                    if path != MANIFEST_NAME {
                        return Err(BundleError::ManifestNotFirst { found: path });
                    }
                    let limit = limits.max_manifest_bytes();
                    if size > limit {
                        return Err(BundleError::TooLarge { what: format!("member {path:?}"), size, limit });
                    }
                    listed = Some(read_manifest_member(&mut entry, size, &path, &failure, &last, limits)?);
                }
                Some(listed) => {
                    if path == MANIFEST_NAME {
                        return Err(BundleError::DuplicateMember { member: path });
                    }
                    let Some(key) = path.strip_prefix(OBJECTS_DIR) else {
                        return Err(BundleError::UnexpectedMember { member: path });
                    };
                    let kind = kind_of(key)?;
                    let Some(i) = listed.index(key) else {
                        return Err(BundleError::Unlisted { member: path });
                    };
                    if listed.seen[i] {
                        return Err(BundleError::DuplicateMember { member: path });
                    }
                    listed.seen[i] = true;
                    let info = &listed.manifest.objects[i];
                    if size != info.size {
                        return Err(BundleError::SizeMismatch { member: path, expected: info.size, found: size });
                    }
                    let is_tarball = kind == Kind::Tarball.as_str();
                    let keep = want(key);
                    let (sha256, bytes) = if keep || is_tarball {
                        let bytes = read_member(&mut entry, size, &path, &failure, &last)?;
                        (hex::encode(Sha256::digest(&bytes)), Some(bytes))
                    } else {
                        (hash_member(&mut entry, size, &path, &failure, &last)?, None)
                    };
                    if sha256 != info.sha256 {
                        return Err(BundleError::DigestMismatch {
                            member: path,
                            expected: info.sha256.clone(),
                            found: sha256,
                        });
                    }
                    if let Some(bytes) = bytes {
                        let bytes = Bytes::from(bytes);
                        if is_tarball {
                            if let Some(package) = package_for(key, &sha256, &bytes) {
                                // Each derived entry is compared with the listed one as it is
                                // made: none is kept.
                                let listed_at =
                                    listed.manifest.packages.binary_search_by(|p| p.key.as_str().cmp(key)).ok();
                                match listed_at {
                                    Some(at) if listed.manifest.packages[at] == package => {
                                        listed.packages_seen[at] = true;
                                    }
                                    _ => return Err(package_mismatch(&package.key)),
                                }
                            }
                        }
                        if keep {
                            visit(Object { key: key.to_string(), kind: kind.to_string(), pinned: info.pinned, bytes })?;
                        }
                    }
                }
            }
            last_end = end;
            last = Some(path);
        }
        if pax_path.is_some() {
            return Err(if position.eof.get() {
                BundleError::Truncated { context: context(&last) }
            } else {
                BundleError::PaxHeader { context: context(&last), reason: "no member follows it" }
            });
        }
    }
    let mut reader = archive.into_inner();
    check_trailer(&mut reader, last_end, &last, &failure)?;
    let Some(listed) = listed else {
        return Err(BundleError::ManifestMissing);
    };
    if let Some(i) = listed.seen.iter().position(|seen| !seen) {
        return Err(BundleError::Missing { key: listed.manifest.objects[i].key.clone() });
    }
    if let Some(i) = listed.packages_seen.iter().position(|seen| !seen) {
        return Err(package_mismatch(&listed.manifest.packages[i].key));
    }
    Ok((listed.manifest, hex::encode(reader.hasher.finalize())))
}

type Failure<'a> = dyn Fn(&Option<String>, io::Error) -> BundleError + 'a;

/// Reads a member's data (its size already checked against a limit) completely.
fn read_member(
    entry: &mut impl Read,
    size: u64,
    path: &str,
    failure: &Failure<'_>,
    last: &Option<String>,
) -> Result<Vec<u8>, BundleError> {
    let mut bytes = Vec::with_capacity(size.min(8 << 20) as usize);
    entry.take(size).read_to_end(&mut bytes).map_err(|e| failure(last, e))?;
    if bytes.len() as u64 != size {
        return Err(BundleError::Truncated { context: format!("in member {path:?}") });
    }
    Ok(bytes)
}

/// Hashes a member's data as it streams past, without holding it.
fn hash_member(
    entry: &mut impl Read,
    size: u64,
    path: &str,
    failure: &Failure<'_>,
    last: &Option<String>,
) -> Result<String, BundleError> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 << 10];
    let mut left = size;
    while left > 0 {
        let want = left.min(buf.len() as u64) as usize;
        let n = match entry.read(&mut buf[..want]) {
            Ok(0) => return Err(BundleError::Truncated { context: format!("in member {path:?}") }),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(failure(last, e)),
        };
        hasher.update(&buf[..n]);
        left -= n as u64;
    }
    Ok(hex::encode(hasher.finalize()))
}

/// A pax extended header may only give the next member's path, and nothing else.
fn read_pax_path(
    entry: &mut impl Read,
    size: u64,
    last: &Option<String>,
    failure: &Failure<'_>,
) -> Result<String, BundleError> {
    let context = match last {
        Some(member) => format!("after member {member:?}"),
        None => "at its start".to_string(),
    };
    if size > MAX_PAX_BYTES {
        return Err(BundleError::TooLarge { what: format!("pax header {context}"), size, limit: MAX_PAX_BYTES });
    }
    let data = read_member(entry, size, "pax header", failure, last)?;
    let refuse = |reason| BundleError::PaxHeader { context: context.clone(), reason };
    let mut path = None;
    for record in tar::PaxExtensions::new(&data) {
        let record = record.map_err(|_| refuse("malformed records"))?;
        match (record.key(), record.value()) {
            (Ok("path"), Ok(value)) if path.is_none() => path = Some(value.to_string()),
            (Ok("path"), _) => return Err(refuse("more than one path, or one that is not utf-8")),
            _ => return Err(refuse("records other than a path")),
        }
    }
    path.ok_or_else(|| refuse("no path record"))
}

/// After the last member: the end-of-archive marker (two zero blocks) must be complete, and
/// nothing but zero padding may follow. Everything is read, so the digest covers the file.
fn check_trailer<R: Read>(
    reader: &mut HashingReader<R>,
    last_end: u64,
    last: &Option<String>,
    failure: &Failure<'_>,
) -> Result<(), BundleError> {
    // The tar reader has consumed the first zero block (or found the end of the input).
    let mut buf = [0u8; 8192];
    loop {
        let offset = reader.position.offset.get();
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(failure(last, e)),
        };
        if let Some(at) = buf[..n].iter().position(|&b| b != 0) {
            return Err(BundleError::TrailingData { offset: offset + at as u64 });
        }
        if reader.position.offset.get() > last_end.saturating_add(MAX_TRAILER_BYTES) {
            return Err(BundleError::TrailingData { offset: last_end.saturating_add(MAX_TRAILER_BYTES) });
        }
    }
    if reader.position.offset.get() < last_end.saturating_add(2 * BLOCK) {
        let context = match last {
            Some(member) => format!("after member {member:?}: the end-of-archive marker is incomplete"),
            None => "at its start".to_string(),
        };
        return Err(BundleError::Truncated { context });
    }
    Ok(())
}

fn describe(entry_type: tar::EntryType) -> String {
    use tar::EntryType::*;
    match entry_type {
        Link => "hard link".into(),
        Symlink => "symbolic link".into(),
        Char => "character device".into(),
        Block => "block device".into(),
        Directory => "directory".into(),
        Fifo => "fifo".into(),
        Continuous => "contiguous file".into(),
        XGlobalHeader => "pax global header".into(),
        GNULongName => "gnu long name header".into(),
        GNULongLink => "gnu long link header".into(),
        GNUSparse => "gnu sparse file".into(),
        other => format!("member of type {:?}", other.as_byte() as char),
    }
}

impl Manifest {
    /// The manifest with `first_seen` times (format 2 when there are any).
    pub fn with_first_seen(mut self, first_seen: BTreeMap<String, u64>) -> Manifest {
        self.format = if first_seen.is_empty() { FORMAT } else { FORMAT_FIRST_SEEN };
        self.first_seen = first_seen;
        self
    }
}

/// First-seen times are in a format 2 manifest only, at most [`MAX_FIRST_SEEN`], each keyed
/// `NAMESPACE/NAME/VERSION` with a namespace, a package name and a version a key could hold.
fn check_first_seen(manifest: &Manifest) -> Result<(), String> {
    match (manifest.format, manifest.first_seen.is_empty()) {
        (FORMAT, false) => return Err("format 1 carries no `first_seen`".into()),
        (FORMAT_FIRST_SEEN, true) => return Err("format 2 without `first_seen`".into()),
        _ => {}
    }
    if manifest.first_seen.len() > MAX_FIRST_SEEN {
        return Err(format!("`first_seen` has {} entries, at most {MAX_FIRST_SEEN}", manifest.first_seen.len()));
    }
    for release in manifest.first_seen.keys() {
        if !is_release_key(release) {
            return Err(format!("`first_seen` key {release:?} is not NAMESPACE/NAME/VERSION of a release"));
        }
    }
    Ok(())
}

/// Whether `release` is `NAMESPACE/NAME/VERSION` with a namespace, a package name and a version
/// a cache key could hold (what a manifest's `first_seen` is keyed by).
pub fn is_release_key(release: &str) -> bool {
    let mut parts = release.splitn(3, '/');
    let (Some(namespace), Some(name), Some(version)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    let key = format!("public/{namespace}/tarballs/{name}-{version}.tar");
    kind_of(&key).is_ok() && crate::route::package_name(name).is_ok() && !version.contains('/')
}

/// The manifest as it is parsed: every field optional and unknown fields named, so that a
/// manifest of an unknown format is refused as such whatever else it holds.
#[derive(Default)]
struct Incoming {
    base: Option<Option<BaseInfo>>,
    created_by: Option<String>,
    first_seen: Option<BTreeMap<String, u64>>,
    format: Option<serde_json::Value>,
    objects: Option<Vec<ObjectInfo>>,
    packages: Option<Vec<PackageInfo>>,
    totals: Option<Totals>,
    unknown: Option<String>,
}

impl<'de> Deserialize<'de> for Incoming {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Fields;
        fn once<T, E: serde::de::Error>(slot: &mut Option<T>, value: T, key: &str) -> Result<(), E> {
            match slot.replace(value) {
                Some(_) => Err(E::custom(format!("duplicate field `{key}`"))),
                None => Ok(()),
            }
        }
        impl<'de> serde::de::Visitor<'de> for Fields {
            type Value = Incoming;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a bundle manifest (a JSON object)")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Incoming, A::Error> {
                let mut m = Incoming::default();
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "base" => once(&mut m.base, map.next_value()?, &key)?,
                        "created_by" => once(&mut m.created_by, map.next_value()?, &key)?,
                        "first_seen" => once(&mut m.first_seen, map.next_value()?, &key)?,
                        "format" => once(&mut m.format, map.next_value()?, &key)?,
                        "objects" => once(&mut m.objects, map.next_value()?, &key)?,
                        "packages" => once(&mut m.packages, map.next_value()?, &key)?,
                        "totals" => once(&mut m.totals, map.next_value()?, &key)?,
                        _ => {
                            map.next_value::<serde::de::IgnoredAny>()?;
                            m.unknown.get_or_insert(key);
                        }
                    }
                }
                Ok(m)
            }
        }
        deserializer.deserialize_map(Fields)
    }
}

/// Parses the manifest member as it streams past (its text is never held: a whole
/// repository's manifest is a hundred megabytes and more), then checks it against itself and
/// the limits, before any object is read. The text must be exactly the canonical form: the
/// same length and sha256 as the manifest re-serialized.
fn read_manifest_member(
    entry: &mut impl Read,
    size: u64,
    path: &str,
    failure: &Failure<'_>,
    last: &Option<String>,
    limits: &Limits,
) -> Result<Listed, BundleError> {
    let invalid = |reason: String| BundleError::ManifestInvalid { reason };
    let read = Rc::new(Position::default());
    let mut text = HashingReader { inner: entry.take(size), hasher: Sha256::new(), position: read.clone() };
    let mut buffered = io::BufReader::with_capacity(64 << 10, &mut text);
    let parsed: Result<Incoming, serde_json::Error> = serde_json::from_reader(&mut buffered);
    // The rest (after a parse error, say) is read too: the member's length is checked whole.
    io::copy(&mut buffered, &mut io::sink()).map_err(|e| failure(last, e))?;
    drop(buffered);
    if read.offset.get() != size {
        return Err(BundleError::Truncated { context: format!("in member {path:?}") });
    }
    let incoming = parsed.map_err(|e| match e.is_io() {
        true => failure(last, io::Error::from(e)),
        false => invalid(e.to_string()),
    })?;
    match &incoming.format {
        None => return Err(invalid("missing field `format`".into())),
        Some(value) => match value.as_u64() {
            Some(found) if found == u64::from(FORMAT) || found == u64::from(FORMAT_FIRST_SEEN) => {}
            Some(found) => return Err(BundleError::UnsupportedFormat { found }),
            None => return Err(invalid(format!("`format` is {value}, not a number"))),
        },
    }
    if let Some(field) = &incoming.unknown {
        return Err(invalid(format!("unknown field `{field}`")));
    }
    let missing = |field: &str| invalid(format!("missing field `{field}`"));
    let manifest = Manifest {
        base: incoming.base.flatten(),
        created_by: incoming.created_by.ok_or_else(|| missing("created_by"))?,
        first_seen: incoming.first_seen.unwrap_or_default(),
        format: incoming.format.and_then(|f| f.as_u64()).unwrap_or_default() as u32,
        objects: incoming.objects.ok_or_else(|| missing("objects"))?,
        packages: incoming.packages.ok_or_else(|| missing("packages"))?,
        totals: incoming.totals.ok_or_else(|| missing("totals"))?,
    };
    let mut canonical = HashingWriter { inner: Counter(0), hasher: Sha256::new() };
    write_canonical(&manifest, &mut canonical).map_err(|e| invalid(e.to_string()))?;
    if canonical.inner.0 != size || canonical.hasher.finalize() != text.hasher.finalize() {
        return Err(invalid("not in canonical form (pretty-printed, sorted keys, final newline)".into()));
    }
    check_manifest(manifest, limits)
}

/// Checks a parsed manifest and makes the reader's view of it.
fn check_manifest(manifest: Manifest, limits: &Limits) -> Result<Listed, BundleError> {
    let invalid = |reason: String| BundleError::ManifestInvalid { reason };
    if manifest.created_by.is_empty()
        || manifest.created_by.len() > 128
        || manifest.created_by.chars().any(char::is_control)
    {
        return Err(invalid("`created_by` must be 1 to 128 printable characters".into()));
    }
    check_base(manifest.base.as_ref())?;
    check_first_seen(&manifest).map_err(invalid)?;
    let count = manifest.objects.len() as u64;
    if count > limits.max_objects {
        return Err(BundleError::TooManyObjects { count, limit: limits.max_objects });
    }
    let mut total = 0u64;
    check_objects(&manifest.objects)?;
    if let Some(pair) = manifest.packages.windows(2).find(|pair| pair[0].key >= pair[1].key) {
        let reason =
            format!("packages are not sorted by key without repeats: {:?} after {:?}", pair[1].key, pair[0].key);
        return Err(invalid(reason));
    }
    for object in manifest.objects.iter() {
        if !is_sha256_hex(&object.sha256) {
            return Err(invalid(format!("sha256 of {:?} is not 64 lowercase hex digits", object.key)));
        }
        if object.size > limits.max_object_bytes {
            return Err(BundleError::TooLarge {
                what: format!("object {:?}", object.key),
                size: object.size,
                limit: limits.max_object_bytes,
            });
        }
        total = total.saturating_add(object.size);
    }
    if total > limits.max_total_bytes {
        return Err(BundleError::TooLarge {
            what: "the sum of the objects".into(),
            size: total,
            limit: limits.max_total_bytes,
        });
    }
    let totals = Totals { bytes: total, objects: count, packages: manifest.packages.len() as u64 };
    if manifest.totals != totals {
        return Err(invalid(format!(
            "totals say {} objects, {} bytes, {} packages; the lists make {}, {}, {}",
            manifest.totals.objects,
            manifest.totals.bytes,
            manifest.totals.packages,
            totals.objects,
            totals.bytes,
            totals.packages
        )));
    }
    let seen = vec![false; manifest.objects.len()];
    let packages_seen = vec![false; manifest.packages.len()];
    Ok(Listed { manifest, seen, packages_seen })
}

/// A package entry that no tarball makes, or a tarball whose entry is missing or differs.
fn package_mismatch(key: &str) -> BundleError {
    BundleError::ManifestInvalid { reason: format!("the package entry of {key:?} does not match its tarball") }
}

fn check_base(base: Option<&BaseInfo>) -> Result<(), BundleError> {
    match base {
        Some(base) if !is_sha256_hex(&base.sha256) => Err(BundleError::InvalidBase { sha256: base.sha256.clone() }),
        _ => Ok(()),
    }
}

fn is_sha256_hex(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

// --- packages ------------------------------------------------------------------------------

/// The manifest entry of a tarball object: release and repository from its key, licences from
/// its `metadata.config` ([`hex_tarball::licenses`]). `None` if the key names no tarball.
fn package_for(key: &str, sha256: &str, bytes: &[u8]) -> Option<PackageInfo> {
    let parsed = CacheKey::parse(key)?;
    let Resource::Tarball { name, version } = parsed.resource().clone() else { return None };
    Some(PackageInfo {
        key: key.to_string(),
        licenses: hex_tarball::licenses(bytes),
        name,
        outer_checksum: sha256.to_string(),
        repo: parsed.namespace().to_string(),
        size: bytes.len() as u64,
        version,
    })
}

/// `error`'s text up to its first character that is not printable ASCII (the bytes the tar
/// reader quotes from a file that is no tar), at most 120 characters.
fn printable(error: &io::Error) -> String {
    let full = error.to_string();
    let text: String = full.chars().take_while(|c| c.is_ascii_graphic() || *c == ' ').take(120).collect();
    match text.len() < full.len() {
        true => format!("{} [...]", text.trim_end()),
        false => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAMES: &[u8] = include_bytes!("../tests/fixtures/demo-repo/hexpm/names");
    const VERSIONS: &[u8] = include_bytes!("../tests/fixtures/demo-repo/hexpm/versions");
    const PKG_BASE: &[u8] = include_bytes!("../tests/fixtures/demo-repo/hexpm/packages/hexdemo_base");
    const PKG_MID: &[u8] = include_bytes!("../tests/fixtures/demo-repo/hexpm/packages/hexdemo_mid");
    const PKG_TOP: &[u8] = include_bytes!("../tests/fixtures/demo-repo/hexpm/packages/hexdemo_top");
    const ACME_BASE: &[u8] = include_bytes!("../tests/fixtures/demo-repo/acme/packages/hexdemo_base");
    const MANIFEST_TXT: &str = include_str!("../tests/fixtures/demo-repo/hexpm/MANIFEST.txt");
    const GLEAM: &[u8] = include_bytes!("../tests/fixtures/hexpm-real/gleam_stdlib-0.14.0.tar");
    const TARBALLS: [(&str, &[u8]); 6] = [
        ("hexdemo_base-1.0.0", include_bytes!("../tests/fixtures/demo-repo/hexpm/tarballs/hexdemo_base-1.0.0.tar")),
        ("hexdemo_base-1.1.0", include_bytes!("../tests/fixtures/demo-repo/hexpm/tarballs/hexdemo_base-1.1.0.tar")),
        ("hexdemo_mid-0.1.0", include_bytes!("../tests/fixtures/demo-repo/hexpm/tarballs/hexdemo_mid-0.1.0.tar")),
        ("hexdemo_mid-0.2.0", include_bytes!("../tests/fixtures/demo-repo/hexpm/tarballs/hexdemo_mid-0.2.0.tar")),
        ("hexdemo_top-2.0.0", include_bytes!("../tests/fixtures/demo-repo/hexpm/tarballs/hexdemo_top-2.0.0.tar")),
        ("hexdemo_top-2.0.1", include_bytes!("../tests/fixtures/demo-repo/hexpm/tarballs/hexdemo_top-2.0.1.tar")),
    ];
    const GOLDEN_PATH: &str = "tests/fixtures/bundles/demo-format1.tar";
    const GOLDEN_DIGEST: &str = "9a55310847b32f14f72efcb3203bc468288bb7c78f98ace5cc13fd77b0bd5685";
    const TARBALL_KEY: &str = "public/hexpm/tarballs/hexdemo_base-1.0.0.tar";

    fn obj(key: &str, bytes: &[u8], pinned: bool) -> Object {
        Object { key: key.into(), kind: kind_of(key).unwrap().into(), pinned, bytes: Bytes::copy_from_slice(bytes) }
    }

    /// The demo repository as a mirror would hold it, plus a private organization record and docs.
    fn demo_objects() -> Vec<Object> {
        let mut objects = vec![
            obj("public/hexpm/names", NAMES, false),
            obj("public/hexpm/versions", VERSIONS, false),
            obj("public/hexpm/packages/hexdemo_base", PKG_BASE, false),
            obj("public/hexpm/packages/hexdemo_mid", PKG_MID, false),
            obj("public/hexpm/packages/hexdemo_top", PKG_TOP, true),
            obj("private/hexpm~acme/packages/hexdemo_base", ACME_BASE, false),
            obj("public/hexpm/docs/hexdemo_base-1.0.0.tar.gz", b"not verifiable docs", false),
        ];
        for (release, bytes) in TARBALLS {
            objects.push(obj(&format!("public/hexpm/tarballs/{release}.tar"), bytes, release.ends_with("1.0.0")));
        }
        objects
    }

    fn bundle_of(objects: &[Object]) -> Vec<u8> {
        let mut out = Vec::new();
        write(objects, None, &mut out).unwrap();
        out
    }

    fn demo_bundle() -> Vec<u8> {
        bundle_of(&demo_objects())
    }

    fn read_err(bytes: &[u8]) -> BundleError {
        read_err_with(bytes, &Limits::default())
    }

    fn read_err_with(bytes: &[u8], limits: &Limits) -> BundleError {
        let err = read(bytes, limits).expect_err("bundle must be refused");
        // Inspection applies the same checks (it only keeps less).
        let inspect = read_manifest(bytes, limits).expect_err("read_manifest must refuse it too");
        assert_eq!(inspect.to_string(), err.to_string());
        err
    }

    /// The members of a tar archive, as (header, path, data), extension headers included.
    fn members(bundle: &[u8]) -> Vec<(tar::Header, String, Vec<u8>)> {
        let mut archive = tar::Archive::new(bundle);
        let mut out = Vec::new();
        for entry in archive.entries().unwrap().raw(true) {
            let mut entry = entry.unwrap();
            let path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let mut data = Vec::new();
            entry.read_to_end(&mut data).unwrap();
            out.push((entry.header().clone(), path, data));
        }
        out
    }

    /// A tar archive of the given members, written the way `write` writes them.
    fn tar_of(members: &[(&str, &[u8])]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, data) in members {
            append_member(&mut builder, path, data).unwrap();
        }
        builder.into_inner().unwrap()
    }

    /// The demo bundle's members as (path, data), to be edited and re-archived with `tar_of`.
    fn demo_members() -> Vec<(String, Vec<u8>)> {
        members(&demo_bundle()).into_iter().map(|(_, path, data)| (path, data)).collect()
    }

    fn tar_of_owned(members: &[(String, Vec<u8>)]) -> Vec<u8> {
        let refs: Vec<(&str, &[u8])> = members.iter().map(|(p, d)| (p.as_str(), d.as_slice())).collect();
        tar_of(&refs)
    }

    fn json(manifest: &Manifest) -> Vec<u8> {
        canonical_json(manifest).unwrap()
    }

    /// Appends a raw member with any entry type after the members of `prefix` (whose end
    /// marker is cut off first), then ends the archive.
    fn with_raw_member(
        prefix: &[u8],
        path: &str,
        entry_type: tar::EntryType,
        data: &[u8],
        link: Option<&str>,
    ) -> Vec<u8> {
        let mut builder = tar::Builder::new(prefix[..prefix.len() - 1024].to_vec());
        let mut header = fixed_header(entry_type, data.len() as u64).unwrap();
        // Written directly: `set_path` rightly refuses absolute paths.
        header.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
        if let Some(link) = link {
            header.set_link_name(link).unwrap();
        }
        header.set_cksum();
        builder.append(&header, data).unwrap();
        builder.into_inner().unwrap()
    }

    fn sha(bytes: &[u8]) -> String {
        hex::encode(Sha256::digest(bytes))
    }

    // --- writing and reading --------------------------------------------------------------

    #[test]
    fn round_trip_returns_the_objects_and_the_written_digest() {
        let objects = demo_objects();
        let mut out = Vec::new();
        let digest = write(&objects, None, &mut out).unwrap();
        assert_eq!(digest, sha(&out), "the digest is the sha256 of the bytes written");
        let bundle = read(&out[..], &Limits::default()).unwrap();
        assert_eq!(bundle.digest, digest);
        let mut expected = objects.clone();
        expected.sort_by(|a, b| a.key.cmp(&b.key));
        assert_eq!(bundle.objects, expected);
        assert_eq!(bundle.manifest, manifest_for(&objects, None));
        assert_eq!(bundle.manifest.totals.objects, 13);
        assert_eq!(bundle.manifest.totals.packages, 6);
        assert_eq!(bundle.manifest.totals.bytes, objects.iter().map(|o| o.bytes.len() as u64).sum::<u64>());
        assert_eq!(bundle.manifest.created_by, CREATED_BY);
        assert!(bundle.manifest.base.is_none());
        let (manifest, inspected) = read_manifest(&out[..], &Limits::default()).unwrap();
        assert_eq!((manifest, inspected), (bundle.manifest, digest));
    }

    #[test]
    fn an_empty_bundle_round_trips() {
        let out = bundle_of(&[]);
        let bundle = read(&out[..], &Limits::default()).unwrap();
        assert!(bundle.objects.is_empty());
        assert_eq!(bundle.manifest.totals, Totals::default());
    }

    #[test]
    fn same_objects_make_the_same_bytes_in_any_order() {
        let objects = demo_objects();
        let first = bundle_of(&objects);
        assert_eq!(first, bundle_of(&objects));
        let mut reversed = objects.clone();
        reversed.reverse();
        assert_eq!(first, bundle_of(&reversed));
        let mut rotated = objects.clone();
        rotated.rotate_left(5);
        let mut out = Vec::new();
        assert_eq!(write(&rotated, None, &mut out).unwrap(), sha(&first));
        assert_eq!(out, first);
        // And a different pin is a different bundle.
        let mut pinned = objects;
        pinned[0].pinned = !pinned[0].pinned;
        assert_ne!(bundle_of(&pinned), first);
    }

    #[test]
    fn members_are_sorted_regular_files_with_fixed_metadata() {
        let members = members(&demo_bundle());
        let paths: Vec<&str> = members.iter().map(|(_, p, _)| p.as_str()).collect();
        assert_eq!(paths[0], MANIFEST_NAME);
        let mut sorted = paths[1..].to_vec();
        sorted.sort();
        assert_eq!(paths[1..], sorted[..]);
        assert!(paths[1..].iter().all(|p| p.starts_with(OBJECTS_DIR)));
        assert!(paths.contains(&"objects/private/hexpm~acme/packages/hexdemo_base"));
        for (header, path, _) in &members {
            assert!(header.as_ustar().is_some(), "{path}: ustar header");
            assert_eq!(header.entry_type(), tar::EntryType::Regular, "{path}");
            assert_eq!(header.mode().unwrap(), 0o644, "{path}");
            assert_eq!((header.uid().unwrap(), header.gid().unwrap()), (0, 0), "{path}");
            assert_eq!(header.mtime().unwrap(), 0, "{path}");
            assert_eq!(header.username_bytes(), Some(&b""[..]), "{path}");
            assert_eq!(header.groupname_bytes(), Some(&b""[..]), "{path}");
        }
        let out = demo_bundle();
        assert_eq!(out.len() % 512, 0);
        assert!(out[out.len() - 1024..].iter().all(|&b| b == 0), "two zero blocks end the archive");
    }

    #[test]
    fn manifest_is_pretty_sorted_and_has_no_timestamps() {
        let members = members(&demo_bundle());
        let text = String::from_utf8(members[0].2.clone()).unwrap();
        assert!(text.starts_with("{\n  \"created_by\": "), "{text}");
        assert!(text.ends_with("}\n"));
        let order = ["\"created_by\"", "\"format\": 1", "\"objects\"", "\"packages\"", "\"totals\""];
        let at: Vec<usize> = order.iter().map(|k| text.find(k).unwrap()).collect();
        assert!(at.windows(2).all(|w| w[0] < w[1]), "top-level keys sorted: {at:?}");
        let object = ["\"key\"", "\"kind\"", "\"pinned\"", "\"sha256\"", "\"size\""];
        let at: Vec<usize> = object.iter().map(|k| text.find(k).unwrap()).collect();
        assert!(at.windows(2).all(|w| w[0] < w[1]), "object keys sorted: {at:?}");
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        let mut fields: Vec<&String> = value.as_object().unwrap().keys().collect();
        fields.sort();
        assert_eq!(fields, ["created_by", "format", "objects", "packages", "totals"]);
        for word in ["time", "date", "created_at", "mtime"] {
            assert!(!text.contains(word), "manifest mentions {word}");
        }
    }

    #[test]
    fn manifest_lists_every_tarball_as_a_package_with_its_licences() {
        let manifest = manifest_for(&demo_objects(), None);
        let listed: Vec<String> = MANIFEST_TXT.lines().map(str::to_string).collect();
        let found: Vec<String> =
            manifest.packages.iter().map(|p| format!("{} {} {}", p.name, p.version, p.outer_checksum)).collect();
        assert_eq!(found, listed, "name, version and outer checksum as the demo repository lists them");
        for package in &manifest.packages {
            assert_eq!(package.repo, "hexpm");
            assert_eq!(package.licenses, ["Apache-2.0"], "{}", package.key);
            assert_eq!(package.size, 5120);
            assert_eq!(package.key, format!("public/hexpm/tarballs/{}-{}.tar", package.name, package.version));
            let object = manifest.objects.iter().find(|o| o.key == package.key).unwrap();
            assert_eq!((object.sha256.as_str(), object.size), (package.outer_checksum.as_str(), package.size));
        }
        let org = manifest_for(&[obj("private/hexpm~acme/tarballs/gleam_stdlib-0.14.0.tar", GLEAM, false)], None);
        let gleam = &org.packages[0];
        assert_eq!(
            (gleam.repo.as_str(), gleam.name.as_str(), gleam.version.as_str()),
            ("hexpm~acme", "gleam_stdlib", "0.14.0")
        );
        assert_eq!(gleam.licenses, ["Apache 2.0"]);
        assert_eq!(gleam.outer_checksum, "9107f6a859cb96945ad9a099085db028ca2bebb3c8ea42eec227b51c614cc2e0");
    }

    #[test]
    fn unreadable_tarball_metadata_means_no_licences_not_an_error() {
        let key = "public/hexpm/tarballs/broken-1.0.0.tar";
        let not_a_tar = obj(key, b"this is not a tarball", false);
        let bad_terms = tar_of(&[("metadata.config", b"{<<\"licenses\">>, [<<\"MIT\">>]"), ("VERSION", b"3")]);
        let garbage = obj("public/hexpm/tarballs/garbled-1.0.0.tar", &bad_terms, false);
        let no_terms = tar_of(&[("metadata.config", b"{<<\"name\">>,<<\"x\">>}.\n")]);
        let unlicensed = obj("public/hexpm/tarballs/unlicensed-1.0.0.tar", &no_terms, false);
        let objects = [not_a_tar, garbage, unlicensed];
        let out = bundle_of(&objects);
        let bundle = read(&out[..], &Limits::default()).unwrap();
        assert_eq!(bundle.manifest.packages.len(), 3);
        assert!(bundle.manifest.packages.iter().all(|p| p.licenses.is_empty()));
        assert_eq!(bundle.manifest.packages[0].name, "broken");
    }

    #[test]
    fn format_1_output_is_stable() {
        // A fixed writer name keeps this independent of the crate version.
        let objects = [
            obj("public/hexpm/names", NAMES, false),
            obj("public/hexpm/packages/hexdemo_base", PKG_BASE, true),
            obj(TARBALL_KEY, TARBALLS[0].1, false),
            obj("private/hexpm~acme/packages/hexdemo_base", ACME_BASE, false),
        ];
        let mut out = Vec::new();
        let digest = write_with(&objects, None, "hexmirror 0.1.0", &mut out).unwrap();
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(GOLDEN_PATH);
        if std::env::var_os("HEXMIRROR_BLESS").is_some() {
            std::fs::write(&path, &out).unwrap();
        }
        let golden = std::fs::read(&path).unwrap();
        assert!(golden == out, "format 1 output changed: a different layout needs a new format number");
        assert_eq!(digest, GOLDEN_DIGEST);
        let bundle = read(&golden[..], &Limits::default()).unwrap();
        assert_eq!(bundle.digest, GOLDEN_DIGEST);
        assert_eq!(bundle.objects.len(), 4);
        assert_eq!(bundle.manifest.packages[0].licenses, ["Apache-2.0"]);
    }

    #[test]
    fn long_keys_are_carried_by_a_pax_path() {
        let name = format!("a{}", "b".repeat(127));
        let version = format!("1.0.0-{}", "c".repeat(122));
        let key = format!("public/hexpm/tarballs/{name}-{version}.tar");
        assert!(key.len() > 255);
        let objects = vec![obj(&key, b"bytes", false), obj("public/hexpm/names", NAMES, false)];
        let out = bundle_of(&objects);
        let raw = members(&out);
        assert_eq!(raw[2].0.entry_type(), tar::EntryType::XHeader);
        assert_eq!(raw[2].2, pax_record("path", &format!("objects/{key}")));
        let bundle = read(&out[..], &Limits::default()).unwrap();
        assert_eq!(bundle.objects[1].key, key);
        assert_eq!(bundle.manifest.packages[0].version, version);
        // The pax record length counts its own digits, across a digit boundary too.
        for len in [1, 90, 93, 94, 95, 996, 997] {
            let value = "x".repeat(len);
            let record = pax_record("path", &value);
            let (count, _) = std::str::from_utf8(&record).unwrap().split_once(' ').unwrap();
            assert_eq!(count.parse::<usize>().unwrap(), record.len(), "value of {len} bytes");
        }
    }

    // --- incremental bundles and diffs --------------------------------------------------------

    #[test]
    fn incremental_carries_only_new_and_changed_objects() {
        let base_objects = demo_objects();
        let mut base_out = Vec::new();
        let base_digest = write(&base_objects, None, &mut base_out).unwrap();
        let base = read(&base_out[..], &Limits::default()).unwrap();

        let mut now = demo_objects();
        let changed = now.iter_mut().find(|o| o.key == "public/hexpm/names").unwrap();
        changed.bytes = Bytes::from_static(b"newer names");
        let repinned = now.iter_mut().find(|o| o.key == "public/hexpm/packages/hexdemo_base").unwrap();
        repinned.pinned = true;
        now.push(obj("public/hexpm/docs/hexdemo_top-2.0.1.tar.gz", b"new docs", false));

        let delta = incremental(now, &base.manifest);
        let mut keys: Vec<&str> = delta.iter().map(|o| o.key.as_str()).collect();
        keys.sort();
        assert_eq!(
            keys,
            ["public/hexpm/docs/hexdemo_top-2.0.1.tar.gz", "public/hexpm/names", "public/hexpm/packages/hexdemo_base"]
        );
        assert!(incremental(demo_objects(), &base.manifest).is_empty(), "nothing changed, nothing carried");

        let info = BaseInfo::of(&base.manifest, &base.digest);
        assert_eq!(info, BaseInfo { objects: 13, sha256: base_digest });
        let mut out = Vec::new();
        write(&delta, Some(&info), &mut out).unwrap();
        let next = read(&out[..], &Limits::default()).unwrap();
        assert_eq!(next.manifest.base, Some(info));
        assert_eq!(next.manifest.totals.objects, 3);
        assert_eq!(next.manifest.totals.packages, 0);
        assert!(String::from_utf8(members(&out)[0].2.clone()).unwrap().starts_with("{\n  \"base\": {\n"));
    }

    #[test]
    fn diff_sorts_a_manifest_against_a_store() {
        let manifest = manifest_for(&demo_objects(), None);
        let mut store = BTreeMap::new();
        for object in &manifest.objects {
            store.insert(object.key.clone(), object.sha256.to_uppercase());
        }
        assert_eq!(diff(&manifest, &store), Diff { new: vec![], changed: vec![], same: 13 });
        store.remove("public/hexpm/versions");
        store.remove("private/hexpm~acme/packages/hexdemo_base");
        store.insert(TARBALL_KEY.into(), sha(b"other bytes"));
        store.insert("public/hexpm/packages/unrelated".into(), sha(b"x"));
        let d = diff(&manifest, &store);
        assert_eq!(d.new, ["private/hexpm~acme/packages/hexdemo_base", "public/hexpm/versions"]);
        assert_eq!(d.changed, [TARBALL_KEY]);
        assert_eq!(d.same, 10);
        assert_eq!(diff(&manifest, &BTreeMap::new()).new.len(), 13);
    }

    // --- keys ---------------------------------------------------------------------------------

    #[test]
    fn keys_must_name_a_repository_resource() {
        for (key, kind) in [
            ("public/hexpm/names", "names"),
            ("public/hexpm/versions", "versions"),
            ("public/hexpm/packages/phoenix", "package"),
            ("public/hexpm/packages/yEnc", "package"),
            ("public/hexpm/tarballs/phoenix-1.7.0.tar", "tarball"),
            ("public/hexpm/tarballs/pkg-1.0.0-rc.1+build.5.tar", "tarball"),
            ("public/hexpm/docs/phoenix-1.7.0.tar.gz", "docs"),
            ("public/hexpm~acme/names", "names"),
            ("private/hexpm~acme/packages/billing", "package"),
            ("public/corp-repo/policies/strict", "policy"),
            ("public/hexpm/public_key", "public_key"),
            ("public/hexpm/registry.ets.gz", "registry_v1"),
            ("public/hexpm/registry.ets.gz.signed", "registry_v1"),
            ("public/hexpm/installs/1.14.0/hex-2.0.6.ez", "installs"),
        ] {
            assert_eq!(kind_of(key).ok(), Some(kind), "{key}");
        }
        for key in [
            "",
            "/public/hexpm/names",
            "public/hexpm/../../etc/passwd",
            "public/hexpm/packages/../names",
            "public/hexpm/./names",
            "public//names",
            "public/hexpm/names/",
            "public/hexpm//names",
            "other/hexpm/names",
            "public/hexpm",
            "public/hexpm/",
            "public/hex pm/names",
            "public/hexpm/packages/a b",
            "public/hexpm/packages/a\0",
            "public/hexpm/packages/caf\u{e9}",
            "public\\hexpm\\names",
            "public/acme~org/names",
            "public/hexpm~/names",
            "public/hexpm~a~b/names",
            "public/-repo/names",
            "public/hexpm/tarballs/phoenix.tar",
            "public/hexpm/tarballs/phoenix-1.0.0",
            "public/hexpm/packages/1abc",
            "public/hexpm/unknown",
            "public/hexpm/installs/.hidden",
        ] {
            assert!(matches!(kind_of(key), Err(BundleError::InvalidKey { .. })), "{key:?} must be refused");
        }
        // Each layer refuses on its own, with its own reason.
        for (key, reason) in [
            ("public/hexpm/packages/a b", "only letters, digits, `_ - . + ~` and `/` are allowed"),
            ("public/hexpm/packages/caf\u{e9}", "only letters, digits, `_ - . + ~` and `/` are allowed"),
            ("public/hexpm/../names", "empty, `.` or `..` segment"),
            ("/public/hexpm/names", "empty, `.` or `..` segment"),
            ("shared/hexpm/names", "not scope/namespace/path with scope public or private"),
            ("public/acme~org/names", "namespace is not a repository name or hexpm~ORG"),
            ("public/hexpm/tarballs/phoenix.tar", "path is not a repository resource"),
        ] {
            match kind_of(key) {
                Err(BundleError::InvalidKey { reason: found, .. }) => assert_eq!(found, reason, "{key:?}"),
                other => panic!("{key:?}: {other:?}"),
            }
        }
        let long = format!("public/hexpm/installs/{}", "a".repeat(MAX_KEY_LEN));
        assert!(kind_of(&long).is_err());
    }

    #[test]
    fn write_refuses_invalid_duplicate_and_mislabelled_objects() {
        let mut out = Vec::new();
        let bad =
            Object { key: "public/hexpm/../names".into(), kind: "names".into(), pinned: false, bytes: Bytes::new() };
        assert!(matches!(write(&[bad], None, &mut out), Err(BundleError::InvalidKey { .. })));
        let twice = [obj("public/hexpm/names", b"a", false), obj("public/hexpm/names", b"b", false)];
        assert!(
            matches!(write(&twice, None, &mut out), Err(BundleError::DuplicateKey { key }) if key == "public/hexpm/names")
        );
        let mut mislabelled = obj(TARBALL_KEY, b"x", false);
        mislabelled.kind = "docs".into();
        let err = write(&[mislabelled], None, &mut out).unwrap_err();
        assert!(matches!(&err, BundleError::WrongKind { expected: "tarball", .. }), "{err:?}");
        let no_digest = BaseInfo { objects: 3, sha256: String::new() };
        let err = write(&[obj("public/hexpm/names", NAMES, false)], Some(&no_digest), &mut out).unwrap_err();
        assert_eq!(err.to_string(), "base bundle digest \"\" is not a sha256 (64 lowercase hex digits)");
        assert!(out.is_empty(), "nothing is written for refused input");
    }

    // --- refusals -------------------------------------------------------------------------------

    #[test]
    fn truncated_bundles_are_refused() {
        let out = demo_bundle();
        let manifest_len = members(&out)[0].2.len();
        let cuts = [
            0,
            1,
            100,
            511,
            512,
            512 + manifest_len / 2,
            512 + manifest_len.div_ceil(512) * 512,
            512 + manifest_len.div_ceil(512) * 512 + 700,
            out.len() / 2,
            out.len() - 1024 - 1,
            out.len() - 1024,
            out.len() - 600,
            out.len() - 512,
            out.len() - 1,
        ];
        for cut in cuts {
            let err = read_err(&out[..cut]);
            assert!(matches!(err, BundleError::Truncated { .. }), "cut at {cut}: {err:?}");
        }
        assert_eq!(read_err(&[]).to_string(), "bundle is truncated at its start");
        assert_eq!(
            read_err(&out[..out.len() - 512]).to_string(),
            "bundle is truncated after member \"objects/public/hexpm/versions\": the end-of-archive marker is incomplete"
        );
    }

    #[test]
    fn a_flipped_object_byte_is_a_digest_mismatch_naming_the_member() {
        let out = demo_bundle();
        let at = find(&out, &TARBALLS[0].1[..64]) + 600;
        let mut damaged = out.clone();
        damaged[at] ^= 0x01;
        match read_err(&damaged) {
            BundleError::DigestMismatch { member, expected, found } => {
                assert_eq!(member, format!("objects/{TARBALL_KEY}"));
                assert_eq!(expected, sha(TARBALLS[0].1));
                assert_ne!(found, expected);
            }
            other => panic!("{other:?}"),
        }
    }

    fn find(haystack: &[u8], needle: &[u8]) -> usize {
        haystack.windows(needle.len()).position(|w| w == needle).expect("needle present")
    }

    #[test]
    fn flipped_manifest_bytes_are_refused() {
        let out = demo_bundle();
        let names_sha = sha(NAMES);
        // A digit of an object's sha256: still valid, canonical JSON, but the object no longer matches.
        let mut damaged = out.clone();
        let at = find(&damaged, names_sha.as_bytes());
        damaged[at] = if damaged[at] == b'0' { b'1' } else { b'0' };
        let err = read_err(&damaged);
        assert!(
            matches!(&err, BundleError::DigestMismatch { member, .. } if member == "objects/public/hexpm/names"),
            "{err:?}"
        );
        // Structure: the opening brace.
        let mut damaged = out.clone();
        damaged[512] ^= 0x01;
        assert!(matches!(read_err(&damaged), BundleError::ManifestInvalid { .. }));
        // A licence: only the recomputed package list can tell.
        let mut damaged = out.clone();
        let at = find(&damaged, b"\"Apache-2.0\"");
        damaged[at + 10] = b'1';
        let err = read_err(&damaged);
        assert!(
            matches!(&err, BundleError::ManifestInvalid { reason } if reason.contains("does not match its tarball")),
            "{err:?}"
        );
        // A size digit: the totals no longer add up.
        let mut damaged = out.clone();
        let at = find(&damaged, b"\"size\": 5120");
        damaged[at + 11] = b'1';
        let err = read_err(&damaged);
        assert!(matches!(&err, BundleError::ManifestInvalid { reason } if reason.contains("totals")), "{err:?}");
    }

    #[test]
    fn a_flipped_header_byte_is_not_a_valid_archive() {
        let mut damaged = demo_bundle();
        damaged[3] ^= 0x20; // inside the first member's name
        let err = read_err(&damaged);
        assert!(matches!(&err, BundleError::Tar { .. }), "{err:?}");
        assert!(err.to_string().starts_with("not a valid tar archive at its start"), "{err}");
        let noise: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
        for junk in [&b"{\"format\": 1}"[..], &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3][..], &[7u8; 2048][..], &noise[..]] {
            let err = read_err(junk);
            assert!(matches!(err, BundleError::Tar { .. } | BundleError::Truncated { .. }), "{err:?}");
            // One short, printable line, whatever bytes the file held.
            let text = err.to_string();
            assert!(text.len() < 300 && text.chars().all(|c| c.is_ascii_graphic() || c == ' '), "{text:?}");
        }
    }

    #[test]
    fn an_unlisted_member_is_refused() {
        let mut members = demo_members();
        members.push(("objects/public/hexpm/packages/intruder".into(), b"evil".to_vec()));
        match read_err(&tar_of_owned(&members)) {
            BundleError::Unlisted { member } => assert_eq!(member, "objects/public/hexpm/packages/intruder"),
            other => panic!("{other:?}"),
        }
        let mut members = demo_members();
        members.push(("README".into(), b"hello".to_vec()));
        assert!(
            matches!(read_err(&tar_of_owned(&members)), BundleError::UnexpectedMember { member } if member == "README")
        );
    }

    #[test]
    fn a_dropped_member_is_missing() {
        let mut members = demo_members();
        members.retain(|(path, _)| path != "objects/public/hexpm/packages/hexdemo_mid");
        match read_err(&tar_of_owned(&members)) {
            BundleError::Missing { key } => assert_eq!(key, "public/hexpm/packages/hexdemo_mid"),
            other => panic!("{other:?}"),
        }
        let mut members = demo_members();
        members.truncate(1);
        assert!(matches!(read_err(&tar_of_owned(&members)), BundleError::Missing { .. }));
    }

    #[test]
    fn a_duplicate_member_is_refused() {
        let mut members = demo_members();
        let copy = members[3].clone();
        members.push(copy.clone());
        assert!(
            matches!(read_err(&tar_of_owned(&members)), BundleError::DuplicateMember { member } if member == copy.0)
        );
        let mut members = demo_members();
        let manifest = members[0].clone();
        members.push(manifest);
        assert!(
            matches!(read_err(&tar_of_owned(&members)), BundleError::DuplicateMember { member } if member == MANIFEST_NAME)
        );
    }

    #[test]
    fn the_manifest_must_come_first_and_exist() {
        let mut members = demo_members();
        members.swap(0, 1);
        match read_err(&tar_of_owned(&members)) {
            BundleError::ManifestNotFirst { found } => assert_eq!(found, members[0].0),
            other => panic!("{other:?}"),
        }
        let empty_archive = tar::Builder::new(Vec::new()).into_inner().unwrap();
        assert!(matches!(read_err(&empty_archive), BundleError::ManifestMissing));
    }

    #[test]
    fn unknown_formats_and_unparsable_manifests_are_refused() {
        let objects = [obj("public/hexpm/names", NAMES, false)];
        let object_member = ("objects/public/hexpm/names".to_string(), NAMES.to_vec());
        let with_manifest = |text: Vec<u8>| tar_of_owned(&[(MANIFEST_NAME.to_string(), text), object_member.clone()]);
        let mut manifest = manifest_for(&objects, None);
        manifest.format = 3;
        assert!(matches!(read_err(&with_manifest(json(&manifest))), BundleError::UnsupportedFormat { found: 3 }));
        // Format 2 is format 1 with first-seen times: without them it is not canonical.
        manifest.format = 2;
        let err = read_err(&with_manifest(json(&manifest))).to_string();
        assert!(err.contains("format 2 without `first_seen`"), "{err}");
        assert_eq!(
            read_err(&with_manifest(b"{\"format\": 7, \"anything\": []}".to_vec())).to_string(),
            "unsupported bundle format 7 (this hexmirror reads formats 1 and 2)"
        );
        let text = String::from_utf8(json(&manifest_for(&objects, None))).unwrap();
        for bad in [
            text.replace("\"format\": 1", "\"format\": \"1\""),
            text.replace("\"format\": 1,", ""),
            text.replace("\"format\": 1,", "\"format\": 1,\n  \"signed_by\": \"me\","),
            serde_json::to_string(&manifest_for(&objects, None)).unwrap(),
            text.trim_end().to_string(),
            "[]".to_string(),
            "not json".to_string(),
            String::new(),
        ] {
            let err = read_err(&with_manifest(bad.clone().into_bytes()));
            assert!(matches!(err, BundleError::ManifestInvalid { .. }), "{bad:?}: {err:?}");
        }
        let mut mislabelled = manifest_for(&objects, None);
        mislabelled.objects[0].kind = "tarball".into();
        assert!(matches!(read_err(&with_manifest(json(&mislabelled))), BundleError::WrongKind { .. }));
        let mut unsorted =
            manifest_for(&[obj("public/hexpm/names", b"a", false), obj("public/hexpm/versions", b"b", false)], None);
        unsorted.objects.swap(0, 1);
        let err = read_err(&with_manifest(json(&unsorted)));
        assert!(matches!(&err, BundleError::ManifestInvalid { reason } if reason.contains("not sorted")), "{err:?}");
        let mut twice = manifest_for(&objects, None);
        twice.objects.push(twice.objects[0].clone());
        twice.totals = Totals { objects: 2, bytes: twice.totals.bytes * 2, packages: 0 };
        assert!(matches!(read_err(&with_manifest(json(&twice))), BundleError::DuplicateKey { .. }));
        let mut bad_base = manifest_for(&objects, Some(&BaseInfo { objects: 1, sha256: "abc".into() }));
        assert!(matches!(read_err(&with_manifest(json(&bad_base))), BundleError::InvalidBase { .. }));
        bad_base.base = None;
        bad_base.objects[0].sha256 = bad_base.objects[0].sha256.to_uppercase();
        assert!(matches!(read_err(&with_manifest(json(&bad_base))), BundleError::ManifestInvalid { .. }));
    }

    /// The package list is checked entry by entry against the tarballs as they are read: an
    /// entry no tarball makes, a tarball without its entry, a repeated or unsorted list.
    #[test]
    fn the_package_list_must_be_exactly_what_the_tarballs_make() {
        let objects = demo_objects();
        let manifest = manifest_for(&objects, None);
        assert!(manifest.packages.len() >= 2, "the demo carries several tarballs");
        let rebuilt = |manifest: &Manifest| {
            let mut members = demo_members();
            members[0].1 = json(manifest);
            tar_of_owned(&members)
        };
        // As written: read back.
        assert_eq!(read(rebuilt(&manifest).as_slice(), &Limits::default()).unwrap().manifest, manifest);
        // An entry no tarball makes (a second copy under another key, totals adjusted).
        let mut extra = manifest.clone();
        let mut ghost = extra.packages[0].clone();
        ghost.key = format!("{}~", ghost.key);
        extra.packages.insert(1, ghost.clone());
        extra.totals.packages += 1;
        let err = read_err(&rebuilt(&extra));
        assert!(
            matches!(&err, BundleError::ManifestInvalid { reason } if reason.contains(&format!("{:?}", ghost.key))),
            "{err:?}"
        );
        // A tarball whose entry is missing.
        let mut missing = manifest.clone();
        let dropped = missing.packages.remove(0);
        missing.totals.packages -= 1;
        let err = read_err(&rebuilt(&missing));
        assert!(
            matches!(&err, BundleError::ManifestInvalid { reason } if reason.contains(&format!("{:?}", dropped.key))),
            "{err:?}"
        );
        // Repeated, and out of order.
        let mut twice = manifest.clone();
        twice.packages.insert(0, twice.packages[0].clone());
        twice.totals.packages += 1;
        let err = read_err(&rebuilt(&twice));
        assert!(matches!(&err, BundleError::ManifestInvalid { reason } if reason.contains("not sorted")), "{err:?}");
        let mut unsorted = manifest.clone();
        unsorted.packages.swap(0, 1);
        let err = read_err(&rebuilt(&unsorted));
        assert!(matches!(&err, BundleError::ManifestInvalid { reason } if reason.contains("not sorted")), "{err:?}");
    }

    /// The manifest is streamed into the archive, never held as text: the bytes are still
    /// exactly its canonical JSON, and `archive_len` counts them without keeping them.
    #[test]
    fn the_streamed_manifest_is_the_canonical_one() {
        let bundle = demo_bundle();
        let members = demo_members();
        let manifest = read(bundle.as_slice(), &Limits::default()).unwrap().manifest;
        assert_eq!(members[0].1, json(&manifest));
        assert_eq!(archive_len(&manifest).unwrap(), bundle.len() as u64);
        // The text is compared by length and digest with the canonical form as it streams past.
        let with_text = |text: Vec<u8>| {
            let mut members = members.clone();
            members[0].1 = text;
            tar_of_owned(&members)
        };
        assert_eq!(read(with_text(json(&manifest)).as_slice(), &Limits::default()).unwrap().manifest, manifest);
        let mut longer = json(&manifest);
        longer.push(b' ');
        // A tab for an indenting space: still the same JSON, the same length.
        let mut same_length = json(&manifest);
        assert_eq!(&same_length[..3], b"{\n ");
        same_length[2] = b'\t';
        for text in [longer, same_length] {
            let err = read_err(&with_text(text));
            assert!(matches!(&err, BundleError::ManifestInvalid { reason } if reason.contains("canonical")), "{err:?}");
        }
    }

    #[test]
    fn keys_that_escape_or_are_malformed_are_refused() {
        // Listed in the manifest: refused before any object is read.
        let evil = Object {
            key: "public/hexpm/../../../etc/passwd".into(),
            kind: "names".into(),
            pinned: false,
            bytes: Bytes::from_static(b"root"),
        };
        let manifest = manifest_for(std::slice::from_ref(&evil), None);
        let out = tar_of(&[(MANIFEST_NAME, &json(&manifest)), ("objects/public/hexpm/../../../etc/passwd", b"root")]);
        match read_err(&out) {
            BundleError::InvalidKey { key, .. } => assert_eq!(key, evil.key),
            other => panic!("{other:?}"),
        }
        // Not listed: the key is checked before the listing.
        let empty = json(&manifest_for(&[], None));
        for path in ["objects/public/hexpm/../names", "objects//etc/passwd", "objects/public/hexpm/packages/a\\b"] {
            let out = tar_of(&[(MANIFEST_NAME, &empty), (path, b"x")]);
            assert!(matches!(read_err(&out), BundleError::InvalidKey { .. }), "{path}");
        }
        let out =
            with_raw_member(&tar_of(&[(MANIFEST_NAME, &empty)]), "/etc/passwd", tar::EntryType::Regular, b"x", None);
        assert!(matches!(read_err(&out), BundleError::UnexpectedMember { .. }));
    }

    #[test]
    fn non_regular_members_are_refused() {
        let prefix = demo_bundle();
        for (entry_type, kind, link) in [
            (tar::EntryType::Symlink, "symbolic link", Some("/etc/passwd")),
            (tar::EntryType::Link, "hard link", Some("MANIFEST.json")),
            (tar::EntryType::Directory, "directory", None),
            (tar::EntryType::Char, "character device", None),
            (tar::EntryType::Fifo, "fifo", None),
            (tar::EntryType::GNULongName, "gnu long name header", None),
            (tar::EntryType::XGlobalHeader, "pax global header", None),
        ] {
            let data: &[u8] = if entry_type == tar::EntryType::GNULongName { b"objects/public/hexpm/x\0" } else { b"" };
            let out = with_raw_member(&prefix, "objects/public/hexpm/packages/link", entry_type, data, link);
            match read_err(&out) {
                BundleError::NotRegular { kind: found, .. } => assert_eq!(found, kind),
                other => panic!("{entry_type:?}: {other:?}"),
            }
        }
        // Before the manifest, too.
        let out = with_raw_member(&tar_of(&[]), "MANIFEST.json", tar::EntryType::Symlink, b"", Some("/etc/passwd"));
        assert!(matches!(read_err(&out), BundleError::NotRegular { member, .. } if member == MANIFEST_NAME));
    }

    #[test]
    fn hostile_pax_headers_are_refused() {
        let empty = json(&manifest_for(&[], None));
        let start = tar_of(&[(MANIFEST_NAME, &empty)]);
        for records in [
            format!("{}{}", String::from_utf8(pax_record("path", "objects/a")).unwrap(), "9 size=1\n"),
            "9 size=1\n".to_string(),
            "garbage".to_string(),
        ] {
            let mut out = with_raw_member(&start, PAX_HEADER_NAME, tar::EntryType::XHeader, records.as_bytes(), None);
            out = with_raw_member(&out, "objects/public/hexpm/names", tar::EntryType::Regular, b"", None);
            assert!(matches!(read_err(&out), BundleError::PaxHeader { .. }), "{records:?}");
        }
        let record = pax_record("path", "objects/public/hexpm/names");
        let twice = with_raw_member(&start, PAX_HEADER_NAME, tar::EntryType::XHeader, &record, None);
        let twice = with_raw_member(&twice, PAX_HEADER_NAME, tar::EntryType::XHeader, &record, None);
        assert!(matches!(read_err(&twice), BundleError::PaxHeader { reason: "a second pax header in a row", .. }));
        let dangling = with_raw_member(&start, PAX_HEADER_NAME, tar::EntryType::XHeader, &record, None);
        assert_eq!(
            read_err(&dangling).to_string(),
            "unsupported pax header after member \"MANIFEST.json\": no member follows it \
             (bundles use pax only for one long path)"
        );
        let huge = vec![b'x'; MAX_PAX_BYTES as usize + 1];
        let out = with_raw_member(&start, PAX_HEADER_NAME, tar::EntryType::XHeader, &huge, None);
        assert!(matches!(read_err(&out), BundleError::TooLarge { .. }));
    }

    #[test]
    fn limits_are_enforced_before_objects_are_read() {
        let out = demo_bundle();
        let limits = Limits::default();
        let err = read_err_with(&out, &Limits { max_object_bytes: 5119, ..limits });
        assert!(
            matches!(&err, BundleError::TooLarge { what, size: 5120, limit: 5119 } if what.contains("tarballs/")),
            "{err:?}"
        );
        let err = read_err_with(&out, &Limits { max_objects: 12, ..limits });
        assert!(matches!(err, BundleError::TooManyObjects { count: 13, limit: 12 }));
        let err = read_err_with(&out, &Limits { max_total_bytes: 1000, ..limits });
        assert!(matches!(&err, BundleError::TooLarge { what, .. } if what == "the sum of the objects"), "{err:?}");
        let total = manifest_for(&demo_objects(), None).totals.bytes;
        assert!(read_err_with(&out, &Limits { max_total_bytes: total - 1, ..limits }).to_string().contains("sum"));
        assert!(read(&out[..], &Limits { max_object_bytes: 5120, max_objects: 13, max_total_bytes: total }).is_ok());
        // The manifest is bounded by the number of objects allowed.
        let many: Vec<Object> = (0..400).map(|i| obj(&format!("public/hexpm/packages/p{i}"), b"x", false)).collect();
        let err = read_err_with(&bundle_of(&many), &Limits { max_objects: 0, ..limits });
        assert!(matches!(&err, BundleError::TooLarge { what, .. } if what == "member \"MANIFEST.json\""), "{err:?}");
    }

    #[test]
    fn a_member_whose_size_differs_from_the_manifest_is_refused() {
        let mut members = demo_members();
        let names = members.iter_mut().find(|(p, _)| p == "objects/public/hexpm/names").unwrap();
        names.1.push(b'!');
        match read_err(&tar_of_owned(&members)) {
            BundleError::SizeMismatch { member, expected, found } => {
                assert_eq!(member, "objects/public/hexpm/names");
                assert_eq!((expected, found), (NAMES.len() as u64, NAMES.len() as u64 + 1));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn data_after_the_end_of_the_archive_is_refused_but_zero_padding_is_not() {
        let out = demo_bundle();
        let mut padded = out.clone();
        padded.resize(out.len() + 10240, 0);
        let bundle = read(&padded[..], &Limits::default()).unwrap();
        assert_eq!(bundle.digest, sha(&padded), "the digest covers the whole file");
        let mut trailing = out.clone();
        trailing.extend_from_slice(b"appended");
        assert!(matches!(read_err(&trailing), BundleError::TrailingData { offset } if offset == out.len() as u64));
        let mut zeros = out.clone();
        zeros.resize(out.len() + MAX_TRAILER_BYTES as usize + 4096, 0);
        assert!(matches!(read_err(&zeros), BundleError::TrailingData { .. }));
    }

    #[test]
    fn hostile_bytes_never_panic_and_never_change_what_is_accepted() {
        let objects = [
            obj("public/hexpm/names", NAMES, false),
            obj(TARBALL_KEY, TARBALLS[0].1, true),
            obj("public/hexpm/packages/hexdemo_base", PKG_BASE, false),
        ];
        let out = bundle_of(&objects);
        let good = read(&out[..], &Limits::default()).unwrap();
        let mut accepted = 0;
        for at in (0..out.len()).step_by(7) {
            let mut damaged = out.clone();
            damaged[at] ^= [0x01u8, 0x80, 0xff][at % 3];
            if at % 2 == 0 {
                let _ = read_manifest(&damaged[..], &Limits::default());
            }
            if let Ok(mut bundle) = read(&damaged[..], &Limits::default()) {
                // Only what nothing is derived from may change (tar padding, the writer's
                // name); never the content.
                bundle.manifest.created_by = good.manifest.created_by.clone();
                assert!(bundle.manifest == good.manifest, "manifest changed by a flip at {at}");
                assert!(bundle.objects == good.objects, "objects changed by a flip at {at}");
                accepted += 1;
            }
            if at % 3 == 0 {
                let _ = read(&out[..at], &Limits::default());
            }
        }
        assert!(accepted < out.len() / 7 / 2, "most flips are refused: {accepted}");
    }

    #[test]
    fn error_messages_are_lower_case_without_a_trailing_period() {
        let out = demo_bundle();
        let mut errors = vec![
            read_err(&out[..700]),
            read_err(b"garbage that is not a tar archive at all, repeated".repeat(20).as_slice()),
            read_err_with(&out, &Limits { max_objects: 1, ..Limits::default() }),
            read_err_with(&out, &Limits { max_object_bytes: 1, ..Limits::default() }),
            kind_of("../x").unwrap_err(),
            BundleError::ManifestMissing,
            BundleError::ManifestNotFirst { found: "x".into() },
            BundleError::Write(io::Error::other("disk full")),
        ];
        let mut trailing = out.clone();
        trailing.push(1);
        errors.push(read_err(&trailing));
        for err in errors {
            let text = err.to_string();
            assert!(text.starts_with(|c: char| c.is_lowercase()), "{text}");
            assert!(!text.ends_with('.'), "{text}");
        }
    }

    #[test]
    fn archive_len_is_the_length_the_writer_makes() {
        let long = format!("public/hexpm/tarballs/a{}-1.0.0-{}.tar", "b".repeat(127), "c".repeat(122));
        let objects = vec![
            obj("public/hexpm/names", &b"n".repeat(700), false),
            obj(&long, &b"t".repeat(513), true),
            obj("public/hexpm/tarballs/x-1.0.0.tar", &b"x".repeat(512), true),
        ];
        let mut out = Vec::new();
        write(&objects, None, &mut out).unwrap();
        let manifest = manifest_for(&objects, None);
        assert_eq!(archive_len(&manifest).unwrap(), out.len() as u64);
    }

    fn written_with(objects: &[Object], manifest: Manifest) -> Vec<u8> {
        let mut sorted: Vec<&Object> = objects.iter().collect();
        sorted.sort_by(|a, b| a.key.cmp(&b.key));
        let mut out = Vec::new();
        let mut writer = Writer::new(manifest, &mut out).unwrap();
        for object in sorted {
            writer.append(&object.key, &object.bytes).unwrap();
        }
        writer.finish().unwrap();
        out
    }

    #[test]
    fn first_seen_times_travel_in_a_format_2_manifest_and_bad_ones_are_refused() {
        let objects = demo_objects();
        let times = BTreeMap::from([
            ("hexpm/hexdemo_base/1.0.0".to_string(), 1_700_000_000u64),
            ("hexpm~acme/billing/0.1.0".to_string(), 1_700_000_100u64),
        ]);
        let manifest = manifest_for(&objects, None).with_first_seen(times.clone());
        assert_eq!(manifest.format, FORMAT_FIRST_SEEN);
        let bytes = written_with(&objects, manifest);
        let bundle = read(&bytes[..], &Limits::default()).unwrap();
        assert_eq!(bundle.manifest.first_seen, times);
        assert_eq!(bundle.manifest.format, 2);
        // Without times, the same objects make the format 1 bundle, byte for byte.
        let mut plain = Vec::new();
        write(&objects, None, &mut plain).unwrap();
        assert!(written_with(&objects, manifest_for(&objects, None).with_first_seen(BTreeMap::new())) == plain);

        let mut format_1 = manifest_for(&objects, None);
        format_1.first_seen = times.clone();
        let err = Writer::new(format_1, Vec::new()).err().unwrap().to_string();
        assert!(err.contains("format 1 carries no `first_seen`"), "{err}");
        for bad in ["hexpm/hexdemo_base", "hexpm/../x/1.0.0", "hex pm/a/1.0.0", "hexpm/a/1.0.0/../b"] {
            let manifest = manifest_for(&objects, None).with_first_seen(BTreeMap::from([(bad.to_string(), 1)]));
            let err = Writer::new(manifest, Vec::new()).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(err.contains("first_seen"), "{bad:?}: {err}");
        }
        // A reader refuses what a writer would not write: times in a format 1 manifest.
        let text = String::from_utf8_lossy(&bytes).replacen("\"format\": 2", "\"format\": 1", 1);
        let err = read(text.as_bytes(), &Limits::default()).unwrap_err().to_string();
        assert!(err.contains("format 1 carries no `first_seen`"), "{err}");
        let text = String::from_utf8_lossy(&bytes).replacen("\"format\": 2", "\"format\": 7", 1);
        let err = read(text.as_bytes(), &Limits::default()).unwrap_err().to_string();
        assert_eq!(err, "unsupported bundle format 7 (this hexmirror reads formats 1 and 2)");
    }
}
