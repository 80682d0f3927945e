//! Verification: the only place that decides whether upstream bytes may be cached and served.
//!
//! Every function here is pure (bytes and keys in, a verdict out; no I/O, no clock) and is the
//! only way to build a [`Verified`] value. The cache tiers accept nothing else, so an unverified
//! registry file or tarball cannot reach a client through the cache by construction. Docs
//! tarballs have nothing to be verified against and are handled apart, as `cache::Content::Docs`.
//!
//! What is checked:
//! - registry v2 files (`/names`, `/versions`, `/packages/NAME`, policies): exactly one gzip
//!   member with nothing after it, its declared size (the trailer's ISIZE) within a limit and
//!   never exceeded while inflating, decode `Signed`, RSASSA-PKCS1-v1_5 / SHA-512 over the
//!   payload, decode the payload (`/versions` and `/names` as `registry`'s summaries, which
//!   accept exactly what the full messages accept), check its origin (`repository`, and `name`
//!   where the path names one);
//! - tarballs: sha256 of the whole file against the release's outer checksum from a verified
//!   package record (the inner checksum where a release has no outer one), under a size limit;
//! - registry v1 (`/registry.ets.gz`): hex-encoded RSA / SHA-512 signature over the gzip bytes;
//! - installers (`/installs/...`): the CSV's base64 signature by the installs key, and each
//!   archive's sha512 against the digest the verified CSV lists.
//!
//! What verification decodes that others need is returned with the bytes as [`Facts`]: the
//! checksums and dependencies of a record's releases, the names of `/names`, the counts of
//! `/versions`, a policy's visibility, the installs rows. Nothing outside decodes a verified body
//! again. Facts live as long as the cached entry, so they hold only what is read.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use rsa::pkcs1::DecodeRsaPublicKey;
use rsa::pkcs1v15::{Signature, VerifyingKey};
use rsa::pkcs8::DecodePublicKey;
use rsa::signature::Verifier;
use rsa::RsaPublicKey;
use sha2::{Digest, Sha256, Sha512};

use crate::hex_tarball;
use crate::registry::{self, NamesSummary, Package, Policy, VersionsSummary};

/// A repository's RSA public key, with the PEM text it was read from (served at `/public_key`).
#[derive(Clone)]
pub struct PublicKey {
    key: VerifyingKey<Sha512>,
    pem: Arc<str>,
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublicKey").finish_non_exhaustive()
    }
}

/// Why a configured public key cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("not a PKCS#1 RSA public key: {0}")]
    Pkcs1(rsa::pkcs1::Error),
    #[error("not an RSA public key: {0}")]
    Spki(rsa::pkcs8::spki::Error),
    #[error("expected a PEM block `BEGIN PUBLIC KEY` or `BEGIN RSA PUBLIC KEY`")]
    NotPem,
}

impl PublicKey {
    /// Reads an RSA public key in either PEM form: SPKI (`BEGIN PUBLIC KEY`) or PKCS#1
    /// (`BEGIN RSA PUBLIC KEY`, what `mix hex.registry build` writes).
    pub fn from_pem(pem: &str) -> Result<Self, KeyError> {
        let pem = pem.trim();
        let key = if pem.contains("BEGIN RSA PUBLIC KEY") {
            RsaPublicKey::from_pkcs1_pem(pem).map_err(KeyError::Pkcs1)?
        } else if pem.contains("BEGIN PUBLIC KEY") {
            RsaPublicKey::from_public_key_pem(pem).map_err(KeyError::Spki)?
        } else {
            return Err(KeyError::NotPem);
        };
        Ok(Self { key: VerifyingKey::new(key), pem: format!("{pem}\n").into() })
    }

    pub fn pem(&self) -> &str {
        &self.pem
    }

    fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        match Signature::try_from(signature) {
            Ok(sig) => self.key.verify(message, &sig).is_ok(),
            Err(_) => false,
        }
    }
}

/// Why upstream bytes were refused. `reason()` is the closed set used as a metric label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("body is not valid gzip")]
    Gzip,
    /// A registry file is exactly one gzip member. Clients (Erlang's `zlib:gunzip`) decode every
    /// member and protobuf keeps the last `payload`, so bytes after the first member would reach
    /// them unverified.
    #[error("trailing data after the gzip member")]
    TrailingData,
    #[error("body exceeds the size limit of {limit} bytes")]
    TooLarge { limit: u64 },
    /// The member inflates past the size its trailer declares: a false size, or data after the
    /// member (whose last four bytes are then read as the size). Found without inflating more
    /// than the declared size.
    #[error("body inflates past the {declared} bytes its gzip trailer declares")]
    SizeMismatch { declared: u64 },
    #[error("cannot decode {what}")]
    Decode { what: &'static str },
    #[error("signature is missing")]
    MissingSignature,
    #[error("signature does not match the repository key")]
    BadSignature,
    #[error("payload belongs to repository {found:?}, expected {expected:?}")]
    WrongRepository { expected: String, found: String },
    #[error("payload names {found:?}, expected {expected:?}")]
    WrongName { expected: String, found: String },
    #[error("checksum mismatch: registry has {expected}, body has {found}")]
    ChecksumMismatch { expected: String, found: String },
    #[error("release {version} is not in the verified registry record")]
    UnknownRelease { version: String },
}

impl VerifyError {
    pub const REASONS: &'static [&'static str] = &[
        "gzip",
        "trailing_data",
        "too_large",
        "size_mismatch",
        "decode",
        "missing_signature",
        "bad_signature",
        "wrong_repository",
        "wrong_name",
        "checksum_mismatch",
        "unknown_release",
    ];

    pub fn reason(&self) -> &'static str {
        match self {
            Self::Gzip => "gzip",
            Self::TrailingData => "trailing_data",
            Self::TooLarge { .. } => "too_large",
            Self::SizeMismatch { .. } => "size_mismatch",
            Self::Decode { .. } => "decode",
            Self::MissingSignature => "missing_signature",
            Self::BadSignature => "bad_signature",
            Self::WrongRepository { .. } => "wrong_repository",
            Self::WrongName { .. } => "wrong_name",
            Self::ChecksumMismatch { .. } => "checksum_mismatch",
            Self::UnknownRelease { .. } => "unknown_release",
        }
    }
}

/// A value that passed verification. Its field is private: only this module can make one.
#[derive(Debug, Clone)]
pub struct Verified<T>(T);

impl<T> Verified<T> {
    pub fn get(&self) -> &T {
        &self.0
    }
}

/// Verified bytes, exactly as the upstream sent them, and what verification learned from them.
#[derive(Debug, Clone)]
pub struct Body {
    pub bytes: Bytes,
    pub facts: Facts,
}

/// What a verified body tells about other resources, decoded once by verification so that no
/// one decodes a verified body again (the mirror checks tarballs against it; sync resolves
/// releases and dependencies from it). It is kept beside the bytes for as long as the entry
/// lives, so it holds only what is read: no copy of a payload's unread parts.
#[derive(Debug, Clone, Default)]
pub enum Facts {
    #[default]
    None,
    /// `/names`: the package names, in the file's order.
    Names(Arc<PackageNames>),
    /// `/versions`: how many packages and releases it lists (nothing else is read from it).
    Versions(VersionCounts),
    /// A package record: each release with the checksum its tarball must have, its
    /// retirement and its dependencies.
    Releases(Arc<Releases>),
    /// A dependency policy and whether it declares itself public.
    Policy { public: bool },
    /// An installs CSV: the digest each installer archive must have.
    Installs(Arc<Vec<InstallRow>>),
}

impl Facts {
    /// About how many bytes of heap the decoded facts hold beyond the file's own bytes: the
    /// memory tier counts them with the body, since a package record's decoded releases can
    /// take more room than its compressed file.
    pub fn heap_bytes(&self) -> usize {
        match self {
            Facts::None | Facts::Versions(_) | Facts::Policy { .. } => 0,
            Facts::Names(names) => names.text.capacity() + names.ends.capacity() * std::mem::size_of::<usize>(),
            Facts::Releases(releases) => releases.heap_bytes,
            Facts::Installs(rows) => rows
                .iter()
                .map(|row| {
                    std::mem::size_of::<InstallRow>()
                        + row.version.capacity()
                        + row.digest.capacity()
                        + row
                            .elixir_versions
                            .iter()
                            .map(|v| v.capacity() + std::mem::size_of::<String>())
                            .sum::<usize>()
                })
                .sum(),
        }
    }
}

/// The names of a `/names` file, held in one string (a repository can list tens of thousands).
#[derive(Debug, Default)]
pub struct PackageNames {
    text: String,
    /// Where each name ends in `text`.
    ends: Vec<usize>,
}

impl PackageNames {
    fn of(names: NamesSummary) -> PackageNames {
        let NamesSummary { mut text, mut ends, .. } = names;
        text.shrink_to_fit();
        ends.shrink_to_fit();
        PackageNames { text, ends }
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> + '_ {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts.zip(&self.ends).map(|(start, &end)| &self.text[start..end])
    }
    pub fn len(&self) -> usize {
        self.ends.len()
    }
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }
}

/// The counts of a `/versions` file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VersionCounts {
    pub packages: usize,
    /// Every version of every package.
    pub releases: usize,
    /// The versions not retired (per package, its versions less its retired ones).
    pub unretired_releases: usize,
}

/// The releases of one package record, in the record's order, found by version.
#[derive(Debug, Default)]
pub struct Releases {
    list: Vec<Release>,
    /// Index into `list` by version; a version listed twice is found as its last listing.
    by_version: HashMap<String, usize>,
    /// About how many bytes of heap all of this holds (see [`Facts::heap_bytes`]).
    heap_bytes: usize,
}

impl Releases {
    /// The checksum the tarball of `version` must have.
    pub fn get(&self, version: &str) -> Option<&ReleaseChecksum> {
        self.release(version).map(|r| &r.checksum)
    }
    pub fn release(&self, version: &str) -> Option<&Release> {
        self.by_version.get(version).map(|&i| &self.list[i])
    }
    /// Every release, in the record's order.
    pub fn iter(&self) -> std::slice::Iter<'_, Release> {
        self.list.iter()
    }
    /// The number of distinct versions.
    pub fn len(&self) -> usize {
        self.by_version.len()
    }
    pub fn is_empty(&self) -> bool {
        self.by_version.is_empty()
    }
}

/// One release of a verified package record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    pub version: String,
    /// What its tarball must hash to.
    pub checksum: ReleaseChecksum,
    /// The record's inner checksum, as listed (32 bytes in any record hex.pm writes).
    pub inner_checksum: Box<[u8]>,
    pub outer_checksum: Option<[u8; 32]>,
    pub retired: bool,
    /// Why and how it was retired, when it was (the record's `RetirementStatus`).
    pub retirement: Option<Retirement>,
    /// Shared with the other releases of the record that declare the same list.
    pub dependencies: Arc<[Dependency]>,
}

/// A release's retirement, as its verified record states it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retirement {
    pub reason: RetirementReason,
    /// The publisher's message (`use 1.1.0`), when there is one.
    pub message: Option<String>,
}

/// `RetirementReason` of the registry's `RetirementStatus` (an unknown value counts as `other`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RetirementReason {
    Other,
    Invalid,
    Security,
    Deprecated,
    Renamed,
}

impl RetirementReason {
    pub const ALL: [RetirementReason; 5] = [
        RetirementReason::Other,
        RetirementReason::Invalid,
        RetirementReason::Security,
        RetirementReason::Deprecated,
        RetirementReason::Renamed,
    ];

    /// The registry's enum value: `RETIRED_OTHER` = 0 ... `RETIRED_RENAMED` = 4.
    pub fn from_proto(value: i32) -> RetirementReason {
        match value {
            1 => RetirementReason::Invalid,
            2 => RetirementReason::Security,
            3 => RetirementReason::Deprecated,
            4 => RetirementReason::Renamed,
            _ => RetirementReason::Other,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RetirementReason::Other => "other",
            RetirementReason::Invalid => "invalid",
            RetirementReason::Security => "security",
            RetirementReason::Deprecated => "deprecated",
            RetirementReason::Renamed => "renamed",
        }
    }

    /// `security`, `invalid`, ... as `hexmirror`'s configuration names them.
    pub fn parse(text: &str) -> Option<RetirementReason> {
        RetirementReason::ALL.into_iter().find(|r| r.as_str() == text)
    }
}

/// A dependency a release declares.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Dependency {
    pub package: String,
    pub requirement: String,
    pub optional: bool,
    /// The repository, when the record names one (unset: the parent's).
    pub repository: Option<String>,
}

impl Release {
    /// The heap this release holds itself (its dependency list is shared, counted apart).
    fn own_heap_bytes(&self) -> usize {
        self.version.capacity()
            + self.inner_checksum.len()
            + self.retirement.as_ref().and_then(|r| r.message.as_ref()).map_or(0, String::capacity)
    }
}

impl Dependency {
    fn heap_bytes(&self) -> usize {
        std::mem::size_of::<Dependency>()
            + self.package.capacity()
            + self.requirement.capacity()
            + self.repository.as_ref().map_or(0, String::capacity)
    }
}

/// What a tarball must hash to. `Outer` is authoritative; `Inner` only for old releases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReleaseChecksum {
    Outer([u8; 32]),
    Inner([u8; 32]),
}

/// One row of an installs CSV: `artifact_version,sha512 hex digest,elixir versions...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallRow {
    pub version: String,
    pub digest: String,
    pub elixir_versions: Vec<String>,
}

/// Which registry v2 file is being verified, with the origin it must carry.
#[derive(Debug, Clone, Copy)]
pub enum RegistryFile<'a> {
    Names,
    Versions,
    Package(&'a str),
    Policy(&'a str),
}

/// The uncompressed size a gzip body declares: the last four bytes (ISIZE, little-endian), which
/// are its trailer's size field when the body is exactly one member, as a registry file must be.
/// Nothing is inflated; a body without the gzip magic is refused as not gzip.
///
/// ISIZE is the size modulo 2^32, so a member of 4 GiB or more cannot declare its size: such a
/// body (far beyond any `max_registry_bytes` in use) is refused as inflating past what it declares.
pub fn declared_size(body: &[u8]) -> Result<u64, VerifyError> {
    // A 10-byte header, at least 2 bytes of deflate data, the 8-byte trailer.
    if body.len() < 20 || body[..3] != [0x1f, 0x8b, 8] {
        return Err(VerifyError::Gzip);
    }
    let isize: [u8; 4] = body[body.len() - 4..].try_into().expect("four bytes");
    Ok(u64::from(u32::from_le_bytes(isize)))
}

/// Gunzips a body that must be exactly one gzip member with nothing after it (not a second
/// member, not padding). A body declaring more than `limit` bytes is refused before anything is
/// inflated; the output is capped at the declared size, so one that inflates past it is refused
/// having inflated no more than that.
pub fn gunzip(body: &[u8], limit: u64) -> Result<Vec<u8>, VerifyError> {
    let declared = declared_size(body)?;
    if declared > limit {
        return Err(VerifyError::TooLarge { limit });
    }
    let mut out = Vec::with_capacity(declared as usize);
    // The `bufread` decoder reads exactly one member, trailer included, and leaves the rest.
    let mut decoder = flate2::bufread::GzDecoder::new(body).take(declared + 1);
    decoder.read_to_end(&mut out).map_err(|_| VerifyError::Gzip)?;
    if out.len() as u64 > declared {
        return Err(VerifyError::SizeMismatch { declared });
    }
    if !decoder.into_inner().into_inner().is_empty() {
        return Err(VerifyError::TrailingData);
    }
    Ok(out)
}

/// The `Signed` envelope read without copying its payload out of the gunzipped bytes (decoded
/// from [`Bytes`], prost slices them): a registry file is held in memory once while verified.
#[derive(Clone, PartialEq, prost::Message)]
struct SignedView {
    #[prost(bytes = "bytes", required, tag = "1")]
    payload: Bytes,
    #[prost(bytes = "bytes", optional, tag = "2")]
    signature: Option<Bytes>,
}

fn verified_payload(raw: Bytes, key: &PublicKey) -> Result<Bytes, VerifyError> {
    use prost::Message;
    let signed = SignedView::decode(raw).map_err(|_| VerifyError::Decode { what: "Signed" })?;
    let signature = signed.signature.ok_or(VerifyError::MissingSignature)?;
    if !key.verify(&signed.payload, &signature) {
        return Err(VerifyError::BadSignature);
    }
    Ok(signed.payload)
}

/// Decodes and verifies a `Signed` envelope and returns its payload.
pub fn signed_payload(raw: &[u8], key: &PublicKey) -> Result<Vec<u8>, VerifyError> {
    verified_payload(Bytes::copy_from_slice(raw), key).map(Vec::from)
}

fn check_origin(expected: &str, found: &str) -> Result<(), VerifyError> {
    if expected == found {
        Ok(())
    } else {
        Err(VerifyError::WrongRepository { expected: expected.into(), found: found.into() })
    }
}

fn check_name(expected: &str, found: &str) -> Result<(), VerifyError> {
    if expected == found {
        Ok(())
    } else {
        Err(VerifyError::WrongName { expected: expected.into(), found: found.into() })
    }
}

/// Verifies a gzipped registry v2 file signed by `key` for repository `repository`.
pub fn registry_file(
    file: RegistryFile<'_>,
    repository: &str,
    body: Bytes,
    key: &PublicKey,
    max_uncompressed: u64,
) -> Result<Verified<Body>, VerifyError> {
    let payload = verified_payload(gunzip(&body, max_uncompressed)?.into(), key)?;
    let facts = match file {
        RegistryFile::Names => {
            // Decoded as `Names` is, keeping only the origin and the names.
            let names: NamesSummary = registry::decode(&payload).map_err(|_| VerifyError::Decode { what: "Names" })?;
            check_origin(repository, &names.repository)?;
            Facts::Names(Arc::new(PackageNames::of(names)))
        }
        RegistryFile::Versions => {
            // Decoded as `Versions` is, keeping only the origin and the counts.
            let versions: VersionsSummary =
                registry::decode(&payload).map_err(|_| VerifyError::Decode { what: "Versions" })?;
            check_origin(repository, &versions.repository)?;
            Facts::Versions(VersionCounts {
                packages: versions.packages,
                releases: versions.releases,
                unretired_releases: versions.unretired_releases,
            })
        }
        RegistryFile::Package(name) => {
            let package: Package = registry::decode(&payload).map_err(|_| VerifyError::Decode { what: "Package" })?;
            check_origin(repository, &package.repository)?;
            check_name(name, &package.name)?;
            Facts::Releases(Arc::new(releases_of(&package)?))
        }
        RegistryFile::Policy(name) => {
            let policy: Policy = registry::decode(&payload).map_err(|_| VerifyError::Decode { what: "Policy" })?;
            check_origin(repository, &policy.repository)?;
            check_name(name, &policy.name)?;
            Facts::Policy { public: policy.is_public() }
        }
    };
    Ok(Verified(Body { bytes: body, facts }))
}

fn checksum32(bytes: &[u8]) -> Result<[u8; 32], VerifyError> {
    bytes.try_into().map_err(|_| VerifyError::Decode { what: "release checksum" })
}

fn releases_of(package: &Package) -> Result<Releases, VerifyError> {
    let mut list = Vec::with_capacity(package.releases.len());
    let mut by_version = HashMap::with_capacity(package.releases.len());
    // Most releases declare the same dependencies as another of the record: one copy per list.
    let mut shared: HashSet<Arc<[Dependency]>> = HashSet::new();
    for release in &package.releases {
        let outer_checksum = release.outer_checksum.as_deref().map(checksum32).transpose()?;
        let checksum = match outer_checksum {
            Some(outer) => ReleaseChecksum::Outer(outer),
            None => ReleaseChecksum::Inner(checksum32(&release.inner_checksum)?),
        };
        let dependencies: Vec<Dependency> = release
            .dependencies
            .iter()
            .map(|d| Dependency {
                package: d.package.clone(),
                requirement: d.requirement.clone(),
                optional: d.optional.unwrap_or(false),
                repository: d.repository.clone(),
            })
            .collect();
        let dependencies = match shared.get(dependencies.as_slice()) {
            Some(list) => list.clone(),
            None => {
                let list: Arc<[Dependency]> = dependencies.into();
                shared.insert(list.clone());
                list
            }
        };
        by_version.insert(release.version.clone(), list.len());
        list.push(Release {
            version: release.version.clone(),
            checksum,
            inner_checksum: release.inner_checksum.clone().into_boxed_slice(),
            outer_checksum,
            retired: release.retired.is_some(),
            retirement: release.retired.as_ref().map(|status| Retirement {
                reason: RetirementReason::from_proto(status.reason),
                message: status.message.clone().filter(|m| !m.is_empty()),
            }),
            dependencies,
        });
    }
    let heap_bytes = list.iter().map(Release::own_heap_bytes).sum::<usize>()
        + shared.iter().map(|deps| deps.iter().map(Dependency::heap_bytes).sum::<usize>()).sum::<usize>()
        + list.capacity() * std::mem::size_of::<Release>()
        + by_version.keys().map(|v| v.capacity()).sum::<usize>()
        + by_version.capacity() * (std::mem::size_of::<(String, usize)>() + 1);
    Ok(Releases { list, by_version, heap_bytes })
}

/// Verifies a release tarball against the checksum from its verified package record.
pub fn tarball(body: Bytes, expected: &ReleaseChecksum, max_bytes: u64) -> Result<Verified<Body>, VerifyError> {
    if body.len() as u64 > max_bytes {
        return Err(VerifyError::TooLarge { limit: max_bytes });
    }
    let (want, found) = match expected {
        ReleaseChecksum::Outer(want) => (*want, <[u8; 32]>::from(Sha256::digest(&body))),
        ReleaseChecksum::Inner(want) => (*want, inner_checksum(&body)?),
    };
    if want != found {
        return Err(VerifyError::ChecksumMismatch { expected: hex::encode(want), found: hex::encode(found) });
    }
    Ok(Verified(Body { bytes: body, facts: Facts::None }))
}

/// sha256(VERSION ‖ metadata.config ‖ contents.tar.gz) of a Hex tarball (see
/// [`hex_tarball::inner_checksum`]).
pub fn inner_checksum(tarball: &[u8]) -> Result<[u8; 32], VerifyError> {
    hex_tarball::inner_checksum(tarball).ok_or(VerifyError::Decode { what: "tarball" })
}

/// Verifies `/registry.ets.gz` with its hex-encoded signature (from `.signed` or a header).
pub fn registry_v1(body: Bytes, signature_hex: &str, key: &PublicKey) -> Result<Verified<Body>, VerifyError> {
    let signature = hex::decode(signature_hex.trim()).map_err(|_| VerifyError::Decode { what: "hex signature" })?;
    if !key.verify(&body, &signature) {
        return Err(VerifyError::BadSignature);
    }
    Ok(Verified(Body { bytes: body, facts: Facts::None }))
}

/// Verifies `/registry.ets.gz.signed` against the registry bytes it signs.
pub fn registry_v1_signature(signed: Bytes, ets: &[u8], key: &PublicKey) -> Result<Verified<Body>, VerifyError> {
    let text = std::str::from_utf8(&signed).map_err(|_| VerifyError::Decode { what: "hex signature" })?;
    registry_v1(Bytes::copy_from_slice(ets), text, key)?;
    Ok(Verified(Body { bytes: signed, facts: Facts::None }))
}

fn decode_base64_signature(signature: &[u8]) -> Result<Vec<u8>, VerifyError> {
    let compact: Vec<u8> = signature.iter().copied().filter(|b| !b.is_ascii_whitespace()).collect();
    base64::engine::general_purpose::STANDARD
        .decode(compact)
        .map_err(|_| VerifyError::Decode { what: "base64 signature" })
}

/// Verifies an installs CSV (`/installs/hex-1.x.csv`) with its base64 `.signed` signature.
pub fn installs_csv(csv: Bytes, signature_b64: &[u8], key: &PublicKey) -> Result<Verified<Body>, VerifyError> {
    let signature = decode_base64_signature(signature_b64)?;
    if !key.verify(&csv, &signature) {
        return Err(VerifyError::BadSignature);
    }
    let text = std::str::from_utf8(&csv).map_err(|_| VerifyError::Decode { what: "installs csv" })?;
    let rows = text
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let mut cells = line.split(',').map(str::trim);
            let version = cells.next().unwrap_or_default().to_string();
            let digest = cells.next().ok_or(VerifyError::Decode { what: "installs csv" })?.to_ascii_lowercase();
            Ok(InstallRow { version, digest, elixir_versions: cells.map(String::from).collect() })
        })
        .collect::<Result<Vec<_>, VerifyError>>()?;
    Ok(Verified(Body { bytes: csv, facts: Facts::Installs(Arc::new(rows)) }))
}

/// Verifies an installs CSV's `.signed` file against the CSV bytes it signs.
pub fn installs_signature(signed: Bytes, csv: &[u8], key: &PublicKey) -> Result<Verified<Body>, VerifyError> {
    let signature = decode_base64_signature(&signed)?;
    if !key.verify(csv, &signature) {
        return Err(VerifyError::BadSignature);
    }
    Ok(Verified(Body { bytes: signed, facts: Facts::None }))
}

/// Verifies an installer archive against the sha512 hex digest its verified CSV lists.
pub fn installer(body: Bytes, digest_hex: &str, max_bytes: u64) -> Result<Verified<Body>, VerifyError> {
    if body.len() as u64 > max_bytes {
        return Err(VerifyError::TooLarge { limit: max_bytes });
    }
    let found = hex::encode(Sha512::digest(&body));
    if !found.eq_ignore_ascii_case(digest_hex) {
        return Err(VerifyError::ChecksumMismatch { expected: digest_hex.to_string(), found });
    }
    Ok(Verified(Body { bytes: body, facts: Facts::None }))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::registry::{Names, Signed, Versions};
    use prost::Message;
    use rsa::pkcs1v15::SigningKey;
    use rsa::pkcs8::DecodePrivateKey;
    use rsa::signature::{SignatureEncoding, Signer};
    use std::io::Write;

    const REAL_KEY: &str = include_str!("../tests/fixtures/hexpm-real/public_key");
    const REAL_EXFMT: &[u8] = include_bytes!("../tests/fixtures/hexpm-real/packages-exfmt");
    const REAL_VERSIONS: &[u8] = include_bytes!("../tests/fixtures/hexpm-real/versions-2020-06");
    const GLEAM: &[u8] = include_bytes!("../tests/fixtures/hexpm-real/gleam_stdlib-0.14.0.tar");
    pub(crate) const TEST_PRIV: &str = include_str!("../tests/fixtures/demo-repo/keys/priv.pem");
    pub(crate) const TEST_PUB: &str = include_str!("../tests/fixtures/demo-repo/keys/pub.pem");
    const DEMO_MID: &[u8] = include_bytes!("../tests/fixtures/demo-repo/hexpm/packages/hexdemo_mid");
    const DEMO_MID_TAR: &[u8] = include_bytes!("../tests/fixtures/demo-repo/hexpm/tarballs/hexdemo_mid-0.2.0.tar");
    const LIMIT: u64 = 64 << 20;

    fn real_key() -> PublicKey {
        PublicKey::from_pem(REAL_KEY).unwrap()
    }

    fn test_key() -> PublicKey {
        PublicKey::from_pem(TEST_PUB).unwrap()
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        gzip_at(data, flate2::Compression::fast())
    }

    fn gzip_at(data: &[u8], level: flate2::Compression) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), level);
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    fn test_private_key() -> rsa::RsaPrivateKey {
        rsa::RsaPrivateKey::from_pkcs8_pem(TEST_PRIV)
            .or_else(|_| {
                use rsa::pkcs1::DecodeRsaPrivateKey;
                rsa::RsaPrivateKey::from_pkcs1_pem(TEST_PRIV)
            })
            .unwrap()
    }

    /// Signs `payload` with the test key and wraps it as a registry file body.
    pub(crate) fn sign(payload: &[u8]) -> Vec<u8> {
        let key = test_private_key();
        let signature = SigningKey::<Sha512>::new(key).sign(payload).to_vec();
        gzip(&Signed { payload: payload.to_vec(), signature: Some(signature) }.encode_to_vec())
    }

    #[test]
    fn real_hexpm_package_record_verifies_with_its_checksums() {
        let verified =
            registry_file(RegistryFile::Package("exfmt"), "hexpm", Bytes::from_static(REAL_EXFMT), &real_key(), LIMIT)
                .unwrap();
        let Facts::Releases(releases) = &verified.get().facts else { panic!("no releases") };
        assert_eq!(releases.len(), 10);
        let want = hex::decode("97569ddada83f077c6d8caf0411139e454fc3bcff6311615342f338bbe095f6d").unwrap();
        assert_eq!(releases.get("0.5.0"), Some(&ReleaseChecksum::Outer(want.try_into().unwrap())));
        assert_eq!(verified.get().bytes, REAL_EXFMT, "bytes must be served unchanged");
    }

    #[test]
    fn a_records_decoded_releases_are_counted_and_can_outweigh_its_file() {
        // exfmt's real record: ten releases decoded take more heap than its gzip file.
        let verified =
            registry_file(RegistryFile::Package("exfmt"), "hexpm", Bytes::from_static(REAL_EXFMT), &real_key(), LIMIT)
                .unwrap();
        let facts = &verified.get().facts;
        let Facts::Releases(releases) = facts else { panic!("no releases") };
        let least = releases.len() * (std::mem::size_of::<Release>() + "0.0.0".len() + 32);
        assert!(facts.heap_bytes() >= least, "{} bytes counted for {} releases", facts.heap_bytes(), releases.len());
        assert!(facts.heap_bytes() > REAL_EXFMT.len(), "{} <= {}", facts.heap_bytes(), REAL_EXFMT.len());
        // A shared dependency list is counted once: 200 releases declaring the same one.
        let dependency = registry::Dependency {
            package: "a_dependency".into(),
            requirement: "~> 1.0".into(),
            optional: None,
            app: None,
            repository: None,
        };
        let record = |releases: usize| Package {
            releases: (0..releases)
                .map(|i| registry::Release {
                    version: format!("1.{i}.0"),
                    inner_checksum: vec![1; 32],
                    dependencies: vec![dependency.clone()],
                    retired: None,
                    outer_checksum: Some(vec![2; 32]),
                    published_at: None,
                })
                .collect(),
            name: "p".into(),
            repository: "acme".into(),
        };
        let heap = |releases: usize| {
            let body = sign(&record(releases).encode_to_vec()).into();
            let verified = registry_file(RegistryFile::Package("p"), "acme", body, &test_key(), LIMIT).unwrap();
            verified.get().facts.heap_bytes()
        };
        let (one, many) = (heap(1), heap(201));
        let per_release = (many - one) / 200;
        assert!(per_release >= std::mem::size_of::<Release>(), "{per_release} bytes a release");
        assert!(
            per_release < std::mem::size_of::<Release>() + 200,
            "the shared list counted per release: {per_release}"
        );
    }

    #[test]
    fn real_hexpm_versions_verifies() {
        let v = registry_file(RegistryFile::Versions, "hexpm", Bytes::from_static(REAL_VERSIONS), &real_key(), LIMIT);
        assert!(v.is_ok(), "{:?}", v.err());
    }

    #[test]
    fn facts_carry_what_the_payload_says_decoded_once() {
        // /versions: only the counts, checked against a decode of the same payload.
        let v = registry_file(RegistryFile::Versions, "hexpm", Bytes::from_static(REAL_VERSIONS), &real_key(), LIMIT);
        let Facts::Versions(counts) = v.unwrap().get().facts else { panic!("no counts") };
        let raw = gunzip(REAL_VERSIONS, LIMIT).unwrap();
        let versions: Versions = registry::decode(&signed_payload(&raw, &real_key()).unwrap()).unwrap();
        assert_eq!(counts.packages, versions.packages.len());
        assert_eq!(counts.releases, versions.packages.iter().map(|p| p.versions.len()).sum::<usize>());
        let retired: usize = versions.packages.iter().map(|p| p.retired.len()).sum();
        assert!(retired > 0 && counts.unretired_releases == counts.releases - retired, "{counts:?}");

        // /names: every name, in order.
        let names = Names {
            packages: ["b", "", "a_long_name"]
                .iter()
                .map(|n| registry::NamesPackage { name: n.to_string(), updated_at: None })
                .collect(),
            repository: "acme".into(),
        };
        let v = registry_file(RegistryFile::Names, "acme", sign(&names.encode_to_vec()).into(), &test_key(), LIMIT);
        let v = v.unwrap();
        let Facts::Names(listed) = &v.get().facts else { panic!("no names") };
        assert_eq!(listed.iter().collect::<Vec<_>>(), ["b", "", "a_long_name"]);
        assert_eq!(listed.len(), 3);

        // A package record: releases in order, with checksums, retirement and dependencies;
        // releases that declare the same dependencies share one list.
        let dep = |package: &str, optional: Option<bool>, repository: Option<&str>| registry::Dependency {
            package: package.into(),
            requirement: "~> 1.0".into(),
            optional,
            app: Some("ignored".into()),
            repository: repository.map(String::from),
        };
        let release =
            |version: &str, outer: Option<u8>, deps: Vec<registry::Dependency>, retired: bool| registry::Release {
                version: version.into(),
                inner_checksum: vec![1; 32],
                dependencies: deps,
                retired: retired.then_some(registry::RetirementStatus { reason: 1, message: None }),
                outer_checksum: outer.map(|o| vec![o; 32]),
                published_at: None,
            };
        let package = Package {
            releases: vec![
                release("0.9.0", None, vec![dep("a", None, None)], true),
                release("1.0.0", Some(2), vec![dep("a", None, None)], false),
                release("1.1.0", Some(3), vec![dep("a", Some(true), Some("acme"))], false),
            ],
            name: "p".into(),
            repository: "acme".into(),
        };
        let v = registry_file(
            RegistryFile::Package("p"),
            "acme",
            sign(&package.encode_to_vec()).into(),
            &test_key(),
            LIMIT,
        );
        let v = v.unwrap();
        let Facts::Releases(releases) = &v.get().facts else { panic!("no releases") };
        let listed: Vec<(&str, ReleaseChecksum, bool)> =
            releases.iter().map(|r| (r.version.as_str(), r.checksum, r.retired)).collect();
        assert_eq!(
            listed,
            [
                ("0.9.0", ReleaseChecksum::Inner([1; 32]), true),
                ("1.0.0", ReleaseChecksum::Outer([2; 32]), false),
                ("1.1.0", ReleaseChecksum::Outer([3; 32]), false),
            ]
        );
        let (old, new, newest) =
            (releases.release("0.9.0").unwrap(), &releases.iter().nth(1).unwrap(), releases.release("1.1.0").unwrap());
        assert_eq!((&*new.inner_checksum, new.outer_checksum), (&[1u8; 32][..], Some([2; 32])));
        assert!(Arc::ptr_eq(&old.dependencies, &new.dependencies), "equal lists are shared");
        let want = Dependency { package: "a".into(), requirement: "~> 1.0".into(), optional: false, repository: None };
        assert_eq!(&*new.dependencies, std::slice::from_ref(&want));
        let want = Dependency { optional: true, repository: Some("acme".into()), ..want };
        assert_eq!(&*newest.dependencies, [want]);
    }

    #[test]
    fn real_record_served_under_another_name_is_refused() {
        let err =
            registry_file(RegistryFile::Package("ecto"), "hexpm", Bytes::from_static(REAL_EXFMT), &real_key(), LIMIT)
                .unwrap_err();
        assert_eq!(err.reason(), "wrong_name");
    }

    #[test]
    fn real_record_for_another_repository_is_refused() {
        let err =
            registry_file(RegistryFile::Package("exfmt"), "acme", Bytes::from_static(REAL_EXFMT), &real_key(), LIMIT)
                .unwrap_err();
        assert_eq!(err.reason(), "wrong_repository");
    }

    #[test]
    fn real_record_with_another_key_is_refused() {
        let err =
            registry_file(RegistryFile::Package("exfmt"), "hexpm", Bytes::from_static(REAL_EXFMT), &test_key(), LIMIT)
                .unwrap_err();
        assert_eq!(err, VerifyError::BadSignature);
    }

    #[test]
    fn flipped_payload_byte_is_a_bad_signature() {
        let raw = gunzip(REAL_EXFMT, LIMIT).unwrap();
        let mut signed: Signed = registry::decode(&raw).unwrap();
        let mid = signed.payload.len() / 2;
        signed.payload[mid] ^= 1;
        let body = gzip(&signed.encode_to_vec());
        let err = registry_file(RegistryFile::Package("exfmt"), "hexpm", body.into(), &real_key(), LIMIT).unwrap_err();
        assert!(matches!(err, VerifyError::BadSignature | VerifyError::Decode { .. }), "{err:?}");
    }

    #[test]
    fn unsigned_file_is_refused() {
        let raw = gunzip(REAL_EXFMT, LIMIT).unwrap();
        let mut signed: Signed = registry::decode(&raw).unwrap();
        signed.signature = None;
        let body = gzip(&signed.encode_to_vec());
        let err = registry_file(RegistryFile::Package("exfmt"), "hexpm", body.into(), &real_key(), LIMIT).unwrap_err();
        assert_eq!(err, VerifyError::MissingSignature);
    }

    #[test]
    fn not_gzip_is_refused() {
        let err =
            registry_file(RegistryFile::Names, "hexpm", Bytes::from_static(b"<html>oops</html>"), &real_key(), LIMIT)
                .unwrap_err();
        assert_eq!(err, VerifyError::Gzip);
    }

    #[test]
    fn gzip_bomb_stops_at_the_limit() {
        // Compressed as tightly as the deflate encoder can, as a bomb would be (at its fastest
        // level, zlib-rs leaves 8 MiB of zeros at about 80 KB).
        let bomb = gzip_at(&vec![0u8; 8 << 20], flate2::Compression::best());
        assert!(bomb.len() < 64 << 10);
        let err = registry_file(RegistryFile::Names, "hexpm", bomb.into(), &real_key(), 1 << 20).unwrap_err();
        assert_eq!(err, VerifyError::TooLarge { limit: 1 << 20 });
    }

    /// The reasons under which a body that is not exactly one gzip member is refused. What
    /// follows the member takes the place of its size field (the last four bytes), so the
    /// refusal can come from that false size: more than the limit, or less than the member
    /// inflates to.
    const FRAMING: &[&str] = &["trailing_data", "size_mismatch", "too_large"];

    fn demo_mid(body: Vec<u8>) -> Result<Verified<Body>, VerifyError> {
        registry_file(RegistryFile::Package("hexdemo_mid"), "hexpm", body.into(), &test_key(), LIMIT)
    }

    /// hexdemo_mid's record without its newest release, signed with the demo key: a genuine
    /// signed record, as an older snapshot of the registry held it.
    fn older_demo_mid() -> Vec<u8> {
        let raw = gunzip(DEMO_MID, LIMIT).unwrap();
        let signed: Signed = registry::decode(&raw).unwrap();
        let mut package: Package = registry::decode(&signed.payload).unwrap();
        assert!(package.releases.len() > 1);
        package.releases.pop();
        sign(&package.encode_to_vec())
    }

    #[test]
    fn data_after_the_gzip_member_is_refused() {
        assert!(demo_mid(DEMO_MID.to_vec()).is_ok());
        for junk in [&b"<html>junk</html>"[..], b"\0", b"\n"] {
            let err = demo_mid([DEMO_MID, junk].concat()).unwrap_err();
            assert!(FRAMING.contains(&err.reason()), "{junk:?}: {err:?}");
        }
        // Junk that ends with the member's own size field, so it reads as a plausible trailer.
        let isize = &DEMO_MID[DEMO_MID.len() - 4..];
        let err = demo_mid([DEMO_MID, b"junk", isize].concat()).unwrap_err();
        assert_eq!(err.reason(), "trailing_data");
        assert_eq!(err.to_string(), "trailing data after the gzip member");
    }

    #[test]
    fn second_gzip_member_with_another_signed_record_is_refused() {
        let older = older_demo_mid();
        assert!(demo_mid(older.clone()).is_ok(), "the older record verifies on its own");
        let body = [DEMO_MID, &older].concat();
        // What a client that decodes every member (Erlang's zlib:gunzip) would read: protobuf
        // keeps the last `payload`, so the second record, which hexmirror never verified.
        let mut all = Vec::new();
        flate2::read::MultiGzDecoder::new(&body[..]).read_to_end(&mut all).unwrap();
        let seen: Signed = registry::decode(&all).unwrap();
        let older_signed: Signed = registry::decode(&gunzip(&older, LIMIT).unwrap()).unwrap();
        assert_eq!(seen.payload, older_signed.payload);
        let err = demo_mid(body).unwrap_err();
        assert!(FRAMING.contains(&err.reason()), "{err:?}");
        // The other order, and another package's record behind this one.
        let err = demo_mid([&older[..], DEMO_MID].concat()).unwrap_err();
        assert!(FRAMING.contains(&err.reason()), "{err:?}");
        let top = include_bytes!("../tests/fixtures/demo-repo/hexpm/packages/hexdemo_top");
        let err = demo_mid([DEMO_MID, &top[..]].concat()).unwrap_err();
        assert!(FRAMING.contains(&err.reason()), "{err:?}");
    }

    #[test]
    fn empty_second_gzip_member_is_refused() {
        let err = demo_mid([DEMO_MID, &gzip(b"")].concat()).unwrap_err();
        assert!(FRAMING.contains(&err.reason()), "{err:?}");
        // A second member as large as the first decodes within the declared size: the data
        // after the first member is found as such.
        let raw = gunzip(DEMO_MID, LIMIT).unwrap();
        let err = demo_mid([DEMO_MID, &gzip(&raw)].concat()).unwrap_err();
        assert_eq!(err.reason(), "trailing_data");
        assert!(gunzip(&[DEMO_MID, &gzip(b"")].concat(), LIMIT).is_err(), "gunzip itself refuses it");
    }

    /// `body` with its gzip trailer's size field (ISIZE) set to `declared`.
    fn declaring(mut body: Vec<u8>, declared: u32) -> Vec<u8> {
        let at = body.len() - 4;
        body[at..].copy_from_slice(&declared.to_le_bytes());
        body
    }

    #[test]
    fn a_declared_size_over_the_limit_is_refused_without_inflating() {
        // A gzip header, then no valid deflate data at all: only the size field can refuse it.
        let mut body = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3];
        body.extend_from_slice(&[0xff; 64]);
        let body = declaring(body, (1 << 20) + 1);
        assert_eq!(gunzip(&body, 1 << 20).unwrap_err(), VerifyError::TooLarge { limit: 1 << 20 });
        let err = registry_file(RegistryFile::Names, "hexpm", body.into(), &test_key(), 1 << 20).unwrap_err();
        assert_eq!(err, VerifyError::TooLarge { limit: 1 << 20 });
        // Not gzip at all is still reported as such, whatever its last four bytes say.
        assert_eq!(gunzip(b"<html>oops</html>", 1 << 20).unwrap_err(), VerifyError::Gzip);
        assert_eq!(gunzip(b"", 1 << 20).unwrap_err(), VerifyError::Gzip);
    }

    #[test]
    fn a_body_inflating_past_its_declared_size_is_refused_as_lying() {
        let bomb = gzip(&vec![0u8; 8 << 20]);
        assert_eq!(gunzip(&bomb, LIMIT).unwrap().len(), 8 << 20, "the honest bomb is within the limit");
        let liar = declaring(bomb, 1024);
        let err = gunzip(&liar, LIMIT).unwrap_err();
        assert_eq!(err.reason(), "size_mismatch", "{err:?}");
        assert!(err.to_string().contains("1024"), "{err}");
        let err = registry_file(RegistryFile::Names, "hexpm", liar.into(), &test_key(), LIMIT).unwrap_err();
        assert_eq!(err.reason(), "size_mismatch");
        // Declaring more than it holds is a damaged trailer.
        let raw = gunzip(DEMO_MID, LIMIT).unwrap();
        let err = demo_mid(declaring(DEMO_MID.to_vec(), raw.len() as u32 + 1)).unwrap_err();
        assert_eq!(err, VerifyError::Gzip);
    }

    #[test]
    fn gzip_framing_reasons_are_metric_labels() {
        for reason in FRAMING {
            assert!(VerifyError::REASONS.contains(reason), "{reason} is not in VerifyError::REASONS");
        }
    }

    #[test]
    fn demo_record_and_tarball_verify_and_swaps_are_refused() {
        let verified = registry_file(
            RegistryFile::Package("hexdemo_mid"),
            "hexpm",
            Bytes::from_static(DEMO_MID),
            &test_key(),
            LIMIT,
        )
        .unwrap();
        let Facts::Releases(releases) = &verified.get().facts else { panic!() };
        let good = releases.get("0.2.0").unwrap();
        assert!(tarball(Bytes::from_static(DEMO_MID_TAR), good, 16 << 20).is_ok());
        let older = releases.get("0.1.0").unwrap();
        let err = tarball(Bytes::from_static(DEMO_MID_TAR), older, 16 << 20).unwrap_err();
        assert_eq!(err.reason(), "checksum_mismatch");
        let mut damaged = DEMO_MID_TAR.to_vec();
        damaged[600] ^= 1;
        assert_eq!(tarball(damaged.into(), good, 16 << 20).unwrap_err().reason(), "checksum_mismatch");
        let truncated = Bytes::copy_from_slice(&DEMO_MID_TAR[..DEMO_MID_TAR.len() - 512]);
        assert_eq!(tarball(truncated, good, 16 << 20).unwrap_err().reason(), "checksum_mismatch");
    }

    #[test]
    fn demo_record_wrong_repository_is_refused() {
        let err = registry_file(
            RegistryFile::Package("hexdemo_mid"),
            "acme",
            Bytes::from_static(DEMO_MID),
            &test_key(),
            LIMIT,
        )
        .unwrap_err();
        assert_eq!(err.reason(), "wrong_repository");
    }

    #[test]
    fn real_gleam_tarball_outer_and_inner_checksums() {
        let outer: [u8; 32] = hex::decode("9107f6a859cb96945ad9a099085db028ca2bebb3c8ea42eec227b51c614cc2e0")
            .unwrap()
            .try_into()
            .unwrap();
        assert!(tarball(Bytes::from_static(GLEAM), &ReleaseChecksum::Outer(outer), 16 << 20).is_ok());
        assert_eq!(
            tarball(Bytes::from_static(GLEAM), &ReleaseChecksum::Outer(outer), 1024).unwrap_err().reason(),
            "too_large"
        );
        // The tarball's CHECKSUM member holds its inner checksum; recomputing it must agree.
        let inner = inner_checksum(GLEAM).unwrap();
        assert_eq!(hex::encode_upper(inner), crate::hex_tarball::listed_checksum(GLEAM));
        assert!(tarball(Bytes::from_static(GLEAM), &ReleaseChecksum::Inner(inner), 16 << 20).is_ok());
        assert!(tarball(Bytes::from_static(GLEAM), &ReleaseChecksum::Inner([0; 32]), 16 << 20).is_err());
    }

    #[test]
    fn pkcs1_and_spki_keys_both_parse() {
        assert!(PublicKey::from_pem(REAL_KEY).is_ok());
        let rsa = RsaPublicKey::from_public_key_pem(TEST_PUB).unwrap();
        use rsa::pkcs1::EncodeRsaPublicKey;
        let pkcs1 = rsa.to_pkcs1_pem(rsa::pkcs8::LineEnding::LF).unwrap();
        let key = PublicKey::from_pem(&pkcs1).unwrap();
        assert!(registry_file(
            RegistryFile::Package("hexdemo_mid"),
            "hexpm",
            Bytes::from_static(DEMO_MID),
            &key,
            LIMIT
        )
        .is_ok());
        assert!(PublicKey::from_pem("hello").is_err());
        assert!(PublicKey::from_pem("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----").is_err());
    }

    #[test]
    fn policy_origin_and_visibility() {
        let policy =
            Policy { repository: "acme".into(), name: "strict".into(), description: None, visibility: Some(1) };
        let body: Bytes = sign(&policy.encode_to_vec()).into();
        let v = registry_file(RegistryFile::Policy("strict"), "acme", body.clone(), &test_key(), LIMIT).unwrap();
        assert!(matches!(v.get().facts, Facts::Policy { public: true }));
        assert_eq!(
            registry_file(RegistryFile::Policy("other"), "acme", body, &test_key(), LIMIT).unwrap_err().reason(),
            "wrong_name"
        );
    }

    #[test]
    fn registry_v1_signature_is_hex_over_gzip_bytes() {
        let key = test_private_key();
        let ets = gzip(b"ets table");
        let sig = hex::encode(SigningKey::<Sha512>::new(key).sign(&ets).to_vec());
        assert!(registry_v1(ets.clone().into(), &sig, &test_key()).is_ok());
        assert!(registry_v1_signature(sig.clone().into(), &ets, &test_key()).is_ok());
        let mut other = ets.clone();
        other.push(0);
        assert_eq!(registry_v1(other.into(), &sig, &test_key()).unwrap_err(), VerifyError::BadSignature);
        assert!(registry_v1(ets.into(), "zz", &test_key()).is_err());
    }

    #[test]
    fn installs_csv_and_archive_digest() {
        let key = test_private_key();
        let archive = b"archive bytes".to_vec();
        let digest = hex::encode(Sha512::digest(&archive));
        let csv = format!("2.0.0,{digest},1.13.0,1.14.0\n");
        let sig = base64::engine::general_purpose::STANDARD
            .encode(SigningKey::<Sha512>::new(key).sign(csv.as_bytes()).to_vec());
        let v = installs_csv(csv.clone().into(), sig.as_bytes(), &test_key()).unwrap();
        let Facts::Installs(rows) = &v.get().facts else { panic!() };
        assert_eq!(rows[0].elixir_versions, vec!["1.13.0", "1.14.0"]);
        assert!(installer(archive.clone().into(), &rows[0].digest, 1 << 20).is_ok());
        assert!(installer(b"other".to_vec().into(), &rows[0].digest, 1 << 20).is_err());
        assert!(installs_signature(sig.clone().into(), csv.as_bytes(), &test_key()).is_ok());
        assert_eq!(installs_csv("x".into(), sig.as_bytes(), &test_key()).unwrap_err(), VerifyError::BadSignature);
    }
}
