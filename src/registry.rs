//! Hex registry v2 messages (protobuf, proto2) and the names of repository objects.
//!
//! The message structs are derived with `prost`, so no `protoc` is needed at build time. Only the
//! fields a mirror reads are declared; unknown fields and unknown enum values are skipped by the
//! decoder, which keeps hexmirror forward compatible with newer registry payloads. This module does
//! no verification and no I/O: decoding a payload says nothing about who wrote it (see `verify`).

use prost::Message;

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
