//! Hex registry v2 messages (protobuf, proto2) and the names of repository objects.
//!
//! The message structs are derived with `prost`, so no `protoc` is needed at build time. Only the
//! fields a mirror reads are declared; unknown fields and unknown enum values are skipped by the
//! decoder, which keeps hexmirror forward compatible with newer registry payloads. This module does
//! no verification and no I/O: decoding a payload says nothing about who wrote it (see `verify`).
//!
//! [`VersionsSummary`] and [`NamesSummary`] decode `/versions` and `/names` as [`Versions`] and
//! [`Names`] are decoded, keeping only what verification keeps (the origin, the counts, the
//! names in one string) instead of an owned string for each of their many entries.

use prost::bytes::{Buf, BufMut};
use prost::encoding::{self, DecodeContext, WireType};
use prost::{DecodeError, Message};

type DecodeResult = Result<(), DecodeError>;

/// The envelope of every registry v2 file: a payload and its RSA signature.
#[derive(Clone, PartialEq, Message)]
pub struct Signed {
    #[prost(bytes = "vec", required, tag = "1")]
    pub payload: Vec<u8>,
    #[prost(bytes = "vec", optional, tag = "2")]
    pub signature: Option<Vec<u8>>,
}

/// `/names`: every package name in a repository.
#[derive(Clone, PartialEq, Message)]
pub struct Names {
    #[prost(message, repeated, tag = "1")]
    pub packages: Vec<NamesPackage>,
    #[prost(string, required, tag = "2")]
    pub repository: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct NamesPackage {
    #[prost(string, required, tag = "1")]
    pub name: String,
    #[prost(message, optional, tag = "3")]
    pub updated_at: Option<Timestamp>,
}

/// `/versions`: every package with its versions and retired version indexes.
#[derive(Clone, PartialEq, Message)]
pub struct Versions {
    #[prost(message, repeated, tag = "1")]
    pub packages: Vec<VersionsPackage>,
    #[prost(string, required, tag = "2")]
    pub repository: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct VersionsPackage {
    #[prost(string, required, tag = "1")]
    pub name: String,
    #[prost(string, repeated, tag = "2")]
    pub versions: Vec<String>,
    #[prost(int32, repeated, packed = "true", tag = "3")]
    pub retired: Vec<i32>,
    #[prost(int32, repeated, packed = "true", tag = "5")]
    pub with_advisories: Vec<i32>,
}

/// `/packages/NAME`: the releases of one package with their checksums and dependencies.
#[derive(Clone, PartialEq, Message)]
pub struct Package {
    #[prost(message, repeated, tag = "1")]
    pub releases: Vec<Release>,
    #[prost(string, required, tag = "2")]
    pub name: String,
    #[prost(string, required, tag = "3")]
    pub repository: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct Release {
    #[prost(string, required, tag = "1")]
    pub version: String,
    /// sha256 of VERSION ‖ metadata.config ‖ contents.tar.gz (deprecated by `outer_checksum`).
    #[prost(bytes = "vec", required, tag = "2")]
    pub inner_checksum: Vec<u8>,
    #[prost(message, repeated, tag = "3")]
    pub dependencies: Vec<Dependency>,
    #[prost(message, optional, tag = "4")]
    pub retired: Option<RetirementStatus>,
    /// sha256 of the whole tarball: the authoritative checksum.
    #[prost(bytes = "vec", optional, tag = "5")]
    pub outer_checksum: Option<Vec<u8>>,
    #[prost(message, optional, tag = "7")]
    pub published_at: Option<Timestamp>,
}

#[derive(Clone, PartialEq, Message)]
pub struct RetirementStatus {
    #[prost(int32, required, tag = "1")]
    pub reason: i32,
    #[prost(string, optional, tag = "2")]
    pub message: Option<String>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Dependency {
    #[prost(string, required, tag = "1")]
    pub package: String,
    #[prost(string, required, tag = "2")]
    pub requirement: String,
    #[prost(bool, optional, tag = "3")]
    pub optional: Option<bool>,
    #[prost(string, optional, tag = "4")]
    pub app: Option<String>,
    /// Unset means the parent's repository.
    #[prost(string, optional, tag = "5")]
    pub repository: Option<String>,
}

/// `/repos/REPO/policies/NAME`: a signed dependency policy.
#[derive(Clone, PartialEq, Message)]
pub struct Policy {
    #[prost(string, required, tag = "1")]
    pub repository: String,
    #[prost(string, required, tag = "2")]
    pub name: String,
    #[prost(string, optional, tag = "3")]
    pub description: Option<String>,
    /// 0 = private, 1 = public; unknown values are treated as private.
    #[prost(int32, optional, tag = "4")]
    pub visibility: Option<i32>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Timestamp {
    #[prost(int64, required, tag = "1")]
    pub seconds: i64,
    #[prost(int32, optional, tag = "2")]
    pub nanos: Option<i32>,
}

impl Policy {
    pub fn is_public(&self) -> bool {
        self.visibility == Some(1)
    }
}

// Summaries: `/versions` and `/names` read for what verification keeps of them, without an
// owned copy of each of the tens of thousands of names and versions they list.
//
// Each is decoded as its full message is, field by field with prost's own functions (the same
// wire-type checks, length checks, packed and unpacked integers, unknown fields, groups and
// recursion limit), so a payload decodes as a summary if and only if it decodes as the full
// message, and the summary says what the full message would. Only what is kept differs: a
// string is checked where it lies (`merge_str`, `skip_str`) instead of copied out, and a
// repeated nested message is read into one reused value. Decode-only: encoding one writes its
// repository alone.

/// One string field, checked exactly as `prost::encoding::string::merge` checks it (wire type,
/// length within the buffer, UTF-8) and handed to `read` without being copied out of the buffer.
fn merge_str(wire_type: WireType, buf: &mut impl Buf, read: impl FnOnce(&str)) -> DecodeResult {
    str_field(wire_type, buf, |bytes| std::str::from_utf8(bytes).map(read).is_ok())
}

/// One string field checked as [`merge_str`] checks it, and passed over.
fn skip_str(wire_type: WireType, buf: &mut impl Buf) -> DecodeResult {
    str_field(wire_type, buf, is_utf8)
}

/// Whether `bytes` are UTF-8: at once when they are ASCII, as nearly every package name and
/// version is (one pass, no branch per byte), by `std::str::from_utf8` otherwise.
fn is_utf8(bytes: &[u8]) -> bool {
    bytes.iter().fold(0, |all, byte| all | byte) < 0x80 || std::str::from_utf8(bytes).is_ok()
}

fn str_field(wire_type: WireType, buf: &mut impl Buf, utf8: impl FnOnce(&[u8]) -> bool) -> DecodeResult {
    encoding::check_wire_type(WireType::LengthDelimited, wire_type)?;
    let len = encoding::decode_varint(buf)?;
    if len > buf.remaining() as u64 {
        return Err(DecodeError::new("buffer underflow"));
    }
    let len = len as usize;
    let valid = if buf.chunk().len() >= len {
        let valid = utf8(&buf.chunk()[..len]);
        buf.advance(len);
        valid
    } else {
        utf8(&buf.copy_to_bytes(len))
    };
    match valid {
        true => Ok(()),
        false => Err(DecodeError::new("invalid string value: data is not UTF-8 encoded")),
    }
}

/// `/versions` as verification reads it: the origin and the counts ([`Versions`] decoded).
#[derive(Debug, Default)]
pub struct VersionsSummary {
    /// The last `repository` field, as prost keeps it.
    pub repository: String,
    pub packages: usize,
    /// Every version of every package.
    pub releases: usize,
    /// Per package, its versions less its retired indexes (never below zero), summed.
    pub unretired_releases: usize,
    /// The package being read, reused for each.
    package: VersionsPackageSummary,
}

/// A [`VersionsPackage`] counted: its versions and its retired indexes.
#[derive(Debug, Default)]
struct VersionsPackageSummary {
    versions: usize,
    retired: Vec<i32>,
    with_advisories: Vec<i32>,
}

impl Message for VersionsSummary {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        encoding::string::encode(2, &self.repository, buf);
    }

    fn merge_field(&mut self, tag: u32, wire_type: WireType, buf: &mut impl Buf, ctx: DecodeContext) -> DecodeResult {
        match tag {
            1 => {
                // `message::merge_repeated`, into the reused package.
                encoding::check_wire_type(WireType::LengthDelimited, wire_type)?;
                self.package.clear();
                encoding::message::merge(wire_type, &mut self.package, buf, ctx)?;
                let package = &self.package;
                self.packages += 1;
                self.releases += package.versions;
                self.unretired_releases += package.versions.saturating_sub(package.retired.len());
                Ok(())
            }
            2 => encoding::string::merge(wire_type, &mut self.repository, buf, ctx),
            _ => encoding::skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        encoding::string::encoded_len(2, &self.repository)
    }

    fn clear(&mut self) {
        *self = VersionsSummary::default();
    }
}

impl Message for VersionsPackageSummary {
    fn encode_raw(&self, _buf: &mut impl BufMut) {}

    fn merge_field(&mut self, tag: u32, wire_type: WireType, buf: &mut impl Buf, ctx: DecodeContext) -> DecodeResult {
        match tag {
            1 => skip_str(wire_type, buf),
            2 => {
                // `string::merge_repeated`: the wire type, then one string, counted.
                encoding::check_wire_type(WireType::LengthDelimited, wire_type)?;
                skip_str(wire_type, buf)?;
                self.versions += 1;
                Ok(())
            }
            3 => encoding::int32::merge_repeated(wire_type, &mut self.retired, buf, ctx),
            5 => encoding::int32::merge_repeated(wire_type, &mut self.with_advisories, buf, ctx),
            _ => encoding::skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        0
    }

    /// Empties it, keeping its buffers for the next package.
    fn clear(&mut self) {
        self.versions = 0;
        self.retired.clear();
        self.with_advisories.clear();
    }
}

/// `/names` as verification reads it: the origin and every name, in the file's order, in one
/// string ([`Names`] decoded).
#[derive(Debug, Default)]
pub struct NamesSummary {
    /// The last `repository` field, as prost keeps it.
    pub repository: String,
    /// Every package's name (its last `name` field), one after the other.
    pub text: String,
    /// Where each name ends in `text`.
    pub ends: Vec<usize>,
    /// The package being read, reused for each.
    package: NamesPackageSummary,
}

#[derive(Debug, Default)]
struct NamesPackageSummary {
    /// Its last `name` field (empty without one, as prost leaves it).
    text: String,
    updated_at: Timestamp,
}

impl Message for NamesSummary {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        encoding::string::encode(2, &self.repository, buf);
    }

    fn merge_field(&mut self, tag: u32, wire_type: WireType, buf: &mut impl Buf, ctx: DecodeContext) -> DecodeResult {
        match tag {
            1 => {
                encoding::check_wire_type(WireType::LengthDelimited, wire_type)?;
                self.package.clear();
                encoding::message::merge(wire_type, &mut self.package, buf, ctx)?;
                self.text.push_str(&self.package.text);
                self.ends.push(self.text.len());
                Ok(())
            }
            2 => encoding::string::merge(wire_type, &mut self.repository, buf, ctx),
            _ => encoding::skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        encoding::string::encoded_len(2, &self.repository)
    }

    fn clear(&mut self) {
        *self = NamesSummary::default();
    }
}

impl Message for NamesPackageSummary {
    fn encode_raw(&self, _buf: &mut impl BufMut) {}

    fn merge_field(&mut self, tag: u32, wire_type: WireType, buf: &mut impl Buf, ctx: DecodeContext) -> DecodeResult {
        match tag {
            1 => merge_str(wire_type, buf, |name| {
                self.text.clear();
                self.text.push_str(name);
            }),
            3 => encoding::message::merge(wire_type, &mut self.updated_at, buf, ctx),
            _ => encoding::skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        0
    }

    fn clear(&mut self) {
        self.text.clear();
        self.updated_at.clear();
    }
}

/// The file name of a release tarball, as the repository serves it.
pub fn tarball_file_name(name: &str, version: &str) -> String {
    format!("{name}-{version}.tar")
}

/// Decodes a protobuf message, mapping prost's error to a short reason.
pub fn decode<M: Message + Default>(bytes: &[u8]) -> Result<M, prost::DecodeError> {
    M::decode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_roundtrip_keeps_checksums_and_dependencies() {
        let pkg = Package {
            releases: vec![Release {
                version: "1.0.0+build.1".into(),
                inner_checksum: vec![1; 32],
                dependencies: vec![Dependency {
                    package: "dep".into(),
                    requirement: "~> 1.0".into(),
                    optional: Some(true),
                    app: None,
                    repository: Some("acme".into()),
                }],
                retired: None,
                outer_checksum: Some(vec![2; 32]),
                published_at: None,
            }],
            name: "pkg".into(),
            repository: "hexpm".into(),
        };
        let back: Package = decode(&pkg.encode_to_vec()).unwrap();
        assert_eq!(back, pkg);
    }

    #[test]
    fn unknown_fields_are_tolerated() {
        // Field 99 (varint) appended to a valid Names message.
        let mut bytes = Names { packages: vec![], repository: "hexpm".into() }.encode_to_vec();
        bytes.extend_from_slice(&[0x98, 0x06, 0x01]);
        let names: Names = decode(&bytes).unwrap();
        assert_eq!(names.repository, "hexpm");
    }

    #[test]
    fn truncated_message_is_an_error() {
        // Field 1 claims five bytes but only one follows.
        assert!(decode::<Package>(&[0x0a, 0x05, 0x01]).is_err());
        // prost does not enforce proto2 `required`: an empty message decodes to defaults,
        // which the origin checks in `verify` then refuse (an empty repository never matches).
        assert_eq!(decode::<Package>(&[]).unwrap().repository, "");
    }

    /// A `/versions` payload with what the summary must count: retired indexes packed and not,
    /// advisories, a package without versions, more retired indexes than versions, non-ASCII.
    fn versions_sample() -> Vec<u8> {
        let package = |name: &str, versions: &[&str], retired: Vec<i32>| VersionsPackage {
            name: name.into(),
            versions: versions.iter().map(|v| v.to_string()).collect(),
            retired,
            with_advisories: vec![0],
        };
        let versions = Versions {
            packages: vec![
                package("a", &["0.1.0", "1.0.0", "1.1.0-rc.1"], vec![0]),
                package("b", &[], vec![]),
                package("c_é", &["2.0.0"], vec![0, 1, 2]),
                package("d", &["1.0.0", "1.0.1-β"], vec![]),
            ],
            repository: "hexpm".into(),
        };
        versions.encode_to_vec()
    }

    fn names_sample() -> Vec<u8> {
        let names = ["a", "", "b_é", "phoenix"]
            .iter()
            .enumerate()
            .map(|(i, n)| NamesPackage {
                name: n.to_string(),
                updated_at: (i % 2 == 0).then_some(Timestamp { seconds: 1_600_000_000 + i as i64, nanos: Some(7) }),
            })
            .collect();
        Names { packages: names, repository: "hexpm".into() }.encode_to_vec()
    }

    /// The summaries accept exactly what the full decode accepts, and say what it says. Returns
    /// whether `bytes` decode as `Versions`, and as `Names`.
    fn same_as_full_decode(bytes: &[u8]) -> (bool, bool) {
        let decoded = (decode::<Versions>(bytes).is_ok(), decode::<Names>(bytes).is_ok());
        match (decode::<Versions>(bytes), decode::<VersionsSummary>(bytes)) {
            (Ok(full), Ok(summary)) => {
                assert_eq!(summary.repository, full.repository);
                assert_eq!(summary.packages, full.packages.len());
                assert_eq!(summary.releases, full.packages.iter().map(|p| p.versions.len()).sum::<usize>());
                let unretired: usize =
                    full.packages.iter().map(|p| p.versions.len().saturating_sub(p.retired.len())).sum();
                assert_eq!(summary.unretired_releases, unretired);
            }
            (Err(_), Err(_)) => {}
            (full, summary) => {
                panic!("Versions {:?} but VersionsSummary {:?} for {bytes:02x?}", full.err(), summary.err())
            }
        }
        match (decode::<Names>(bytes), decode::<NamesSummary>(bytes)) {
            (Ok(full), Ok(summary)) => {
                assert_eq!(summary.repository, full.repository);
                let names: Vec<&str> = full.packages.iter().map(|p| p.name.as_str()).collect();
                assert_eq!(summary.text, names.concat());
                let ends: Vec<usize> = names
                    .iter()
                    .scan(0, |end, n| {
                        *end += n.len();
                        Some(*end)
                    })
                    .collect();
                assert_eq!(summary.ends, ends);
            }
            (Err(_), Err(_)) => {}
            (full, summary) => panic!("Names {:?} but NamesSummary {:?} for {bytes:02x?}", full.err(), summary.err()),
        }
        decoded
    }

    #[test]
    fn summaries_count_what_the_full_messages_hold() {
        let summary: VersionsSummary = decode(&versions_sample()).unwrap();
        assert_eq!(
            (summary.repository.as_str(), summary.packages, summary.releases, summary.unretired_releases),
            ("hexpm", 4, 6, 4),
            "a: 3 versions, 1 retired; b: none; c_é: 1 version, 3 retired; d: 2, none retired"
        );
        let names: NamesSummary = decode(&names_sample()).unwrap();
        assert_eq!((names.repository.as_str(), names.text.as_str()), ("hexpm", "ab_éphoenix"));
        assert_eq!(names.ends, [1, 1, 5, 12]);
        same_as_full_decode(&versions_sample());
        same_as_full_decode(&names_sample());
    }

    #[test]
    fn summaries_refuse_and_accept_what_the_full_decode_does() {
        let mut outcomes = std::collections::HashSet::new();
        for sample in [versions_sample(), names_sample()] {
            // Every truncation, and every byte replaced by values that change the structure: wire
            // types, lengths, continuation bits, tags, UTF-8 lead and continuation bytes.
            for len in 0..sample.len() {
                same_as_full_decode(&sample[..len]);
            }
            for at in 0..sample.len() {
                let was = sample[at];
                for value in [0x00, 0x01, 0x02, 0x05, 0x08, 0x0a, 0x0b, 0x0c, 0x10, 0x12, 0x18, 0x1a, 0x22, 0x2a]
                    .into_iter()
                    .chain([
                        0x7f,
                        0x80,
                        0xc3,
                        0xe9,
                        0xff,
                        was ^ 1,
                        was ^ 0x80,
                        was.wrapping_add(1),
                        was.wrapping_sub(1),
                    ])
                {
                    let mut mutated = sample.clone();
                    mutated[at] = value;
                    outcomes.insert(same_as_full_decode(&mutated));
                }
            }
        }
        assert_eq!(outcomes.len(), 4, "mutations that decode as either, both and neither");
    }

    #[test]
    fn summaries_follow_prost_on_repeats_unknown_fields_and_groups() {
        let package = |body: &[u8]| [&[0x0a, body.len() as u8][..], body].concat();
        let cases: Vec<Vec<u8>> = vec![
            // `repository` twice: the last one is kept.
            [&b"\x12\x03one\x12\x05hexpm"[..]].concat(),
            // Versions given one at a time, retired indexes unpacked and packed, an unknown
            // varint and fixed32 field; then an unknown fixed64 and group field.
            package(&[&b"\x0a\x01a\x12\x011\x12\x012\x18\x00\x1a\x01\x01"[..], b"\x30\x05\x3d\0\0\0\0"].concat()),
            package(b"\x12\x011\x41\0\0\0\0\0\0\0\0\x4b\x08\x01\x4c"),
            // A version that is not UTF-8 (an unknown field in `/names`); a name given as a
            // varint; an end-group without a start.
            package(b"\x12\x02\xc3\x28"),
            package(b"\x08\x01"),
            package(b"\x4c"),
            // A group left open; a group closed with another tag.
            package(b"\x4b\x08\x01"),
            package(b"\x4b\x54"),
            // `packages` as a varint; a length past the end.
            b"\x08\x01".to_vec(),
            b"\x0a\x10\x0a\x01a".to_vec(),
            // An overlong varint and a tag 0.
            b"\x10\xff\xff\xff\xff\xff\xff\xff\xff\xff\x7f".to_vec(),
            b"\x00\x00".to_vec(),
            // Names' `updated_at` as a varint, its nanos as bytes (both retired indexes in
            // a `/versions`).
            package(b"\x18\x01"),
            package(b"\x1a\x04\x12\x02ab"),
        ];
        let decoded: Vec<(bool, bool)> = cases.iter().map(|case| same_as_full_decode(case)).collect();
        let (both, neither, versions, names) = ((true, true), (false, false), (true, false), (false, true));
        #[rustfmt::skip]
        let expected = [
            both, versions, both, names, neither, neither, neither, neither,
            neither, neither, neither, neither, versions, versions,
        ];
        assert_eq!(decoded, expected);
        assert_eq!(decode::<VersionsSummary>(&cases[0]).unwrap().repository, "hexpm");
        let summary = decode::<VersionsSummary>(&cases[1]).unwrap();
        assert_eq!((summary.packages, summary.releases, summary.unretired_releases), (1, 2, 0));
        // Groups nested past prost's recursion limit, at the top level and inside a package.
        for depth in [98, 99, 100, 101] {
            let group = [vec![0x4b; depth], vec![0x4c; depth]].concat();
            assert_eq!(same_as_full_decode(&group), (depth <= 100, depth <= 100), "{depth}");
            let mut nested = vec![0x0a];
            prost::encoding::encode_varint(group.len() as u64, &mut nested);
            nested.extend_from_slice(&group);
            assert_eq!(same_as_full_decode(&nested), (depth <= 99, depth <= 99), "{depth}");
        }
    }

    #[test]
    fn policy_visibility() {
        let mut p = Policy { repository: "acme".into(), name: "p".into(), description: None, visibility: None };
        assert!(!p.is_public());
        p.visibility = Some(1);
        assert!(p.is_public());
        p.visibility = Some(7);
        assert!(!p.is_public());
    }
}
